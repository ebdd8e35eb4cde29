//! Parts of the service killed with SIGKILL and brought back by `slipway up`: the control plane finds them
//! again on their new addresses without being restarted.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use wire::service::{DeployInfo, Strategy};

use crate::harness::Fixture;

async fn kill9(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    testkit::wait_for(&format!("pid {pid} gone"), Duration::from_secs(5), || async {
        agent::process_start_time(pid).is_none().then_some(())
    })
    .await;
}

/// `slipway up` as the operator runs it: starts what is missing.
fn slipway_up(f: &Fixture) {
    let out = std::process::Command::new(testkit::workspace_bin("slipway"))
        .arg("up")
        .arg("-c")
        .arg(&f.cfg.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// What the router serves at `/` now (the demo app answers with its release).
async fn served(f: &Fixture) -> Option<String> {
    testkit::get(f.web(), "/", &[]).await.ok().map(|r| r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_kept_calling_a_killed_agent_and_router_on_their_old_ports() {
    let mut f = Fixture::new("");
    f.start().await;
    let d: DeployInfo = f.deploy("v1", Some(Strategy::Rolling)).await;
    f.wait_deploy(d.id, Duration::from_secs(30)).await;
    let (agent, router) = (
        control::agent_running(&f.cfg).unwrap(),
        control::router_running(&f.cfg).unwrap(),
    );
    kill9(agent.pid).await;
    kill9(router.pid).await;
    slipway_up(&f);
    let (agent2, router2) = (
        control::agent_running(&f.cfg).unwrap(),
        control::router_running(&f.cfg).unwrap(),
    );
    assert_ne!(agent2.addr, agent.addr, "the new agent listens elsewhere");
    assert_ne!(router2.addr, router.addr, "the new router listens elsewhere");
    // The same control plane, not restarted, deploys through the new ones.
    let d: DeployInfo = f.deploy("v2", Some(Strategy::Rolling)).await;
    let end = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    assert_eq!(end.outcome.as_deref(), Some("promoted"), "{end:?}");
    testkit::wait_for("the new router serves v2", Duration::from_secs(10), || async {
        (served(&f).await.as_deref() == Some("v2")).then_some(())
    })
    .await;
    let s = f.status().await;
    let gen_shown = s.router.as_ref().map(|r| (r.pid, r.generation));
    assert_eq!(gen_shown.map(|g| g.0), Some(router2.pid), "status shows the new router");
    let r = s.routes.unwrap();
    assert_eq!(
        r.releases.iter().map(|r| (r.id.as_str(), r.weight)).collect::<Vec<_>>(),
        vec![("v2", 100)],
        "{r:?}"
    );
}
