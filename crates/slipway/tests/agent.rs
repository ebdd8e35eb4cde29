//! The agent as a real process: `release add`, `slipway agent`, and an agent killed while its instances serve.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use plumbing::client::ApiClient;
use testkit::{TempDir, wait_for};
use wire::agent::{InstanceList, InstanceState, StartRequest, StopRequest};

fn slipway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
}

fn agent_pid(root: &std::path::Path) -> Option<(u32, String)> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("agent/agent.json")).ok()?).ok()?;
    Some((v["pid"].as_u64()? as u32, v["api"].as_str()?.to_string()))
}

/// Processes whose working folder is inside `dir` (instances run in their release folder).
fn processes_under(dir: &std::path::Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd"))
            && cwd.starts_with(dir)
        {
            out.push(pid);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_instances_serving_and_its_successor_adopts_them_all() {
    let dir = TempDir::new("agent-kill");
    let root = dir.join("root");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("README"), "demo release\n").unwrap();
    let out = slipway()
        .args(["release", "add"])
        .arg(&src)
        .args(["--id", "v1", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "root = \"root\"\napi = {{ listen = \"127.0.0.1:0\" }}\n[instance]\ncommand = \"{}\"\nreadiness = \
             {{ kind = \"http\", path = \"/healthz\" }}\n",
            testkit::workspace_bin("demo-app").display()
        ),
    )
    .unwrap();
    let spawn_agent = || {
        slipway()
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = spawn_agent();
    let first_pid = first.id();
    let (_, api_addr) = wait_for("agent up", Duration::from_secs(10), || async {
        agent_pid(&root).filter(|(p, _)| *p == first_pid)
    })
    .await;
    let token = std::fs::read_to_string(root.join("agent.token"))
        .unwrap()
        .trim()
        .to_string();
    let api = ApiClient::new(&api_addr, Some(token.clone())).unwrap();
    let _: InstanceList = api
        .post(
            "/v1/instances",
            &StartRequest {
                release: "v1".into(),
                count: 4,
                group: None,
                template: None,
            },
        )
        .await
        .unwrap();
    let ready: Vec<wire::agent::InstanceInfo> = wait_for("4 ready", Duration::from_secs(15), || async {
        let l: InstanceList = api.get("/v1/instances").await.ok()?;
        (l.instances.len() == 4 && l.instances.iter().all(|i| i.state == InstanceState::Ready)).then_some(l.instances)
    })
    .await;
    let before = processes_under(&root);
    assert_eq!(before.len(), 4, "{before:?}");

    // Steady traffic to every instance: half keep-alive, half new connections.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for (n, i) in ready.iter().enumerate() {
        let addr: std::net::SocketAddr = i.addr.parse().unwrap();
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut conn = testkit::Client::connect(addr).await.ok();
            while !stop.load(Ordering::Relaxed) {
                let r = if n % 2 == 0 {
                    match conn.as_mut() {
                        Some(c) => c.get("/", &[]).await,
                        None => testkit::get(addr, "/", &[]).await,
                    }
                } else {
                    testkit::get(addr, "/", &[]).await
                };
                match r {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let during_gap = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        ok.load(Ordering::Relaxed) > during_gap + 100,
        "instances stopped answering without their agent"
    );

    let mut second = spawn_agent();
    let second_pid = second.id();
    let (_, api_addr) = wait_for("agent up again", Duration::from_secs(10), || async {
        agent_pid(&root).filter(|(p, _)| *p == second_pid)
    })
    .await;
    let api = ApiClient::new(&api_addr, Some(token)).unwrap();
    // An adopted instance is probed again before it counts as ready.
    let adopted: InstanceList = wait_for("adopted instances ready", Duration::from_secs(10), || async {
        let list: InstanceList = api.get("/v1/instances").await.ok()?;
        list.instances
            .iter()
            .all(|i| i.state != InstanceState::Starting)
            .then_some(list)
    })
    .await;
    assert_eq!(adopted.instances.len(), 4);
    for (a, b) in adopted.instances.iter().zip(&ready) {
        assert_eq!(
            (a.id.as_str(), a.pid, a.state, a.restarts),
            (b.id.as_str(), b.pid, InstanceState::Ready, 0)
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(processes_under(&root), before, "an instance was started twice");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed while the agent was down"
    );
    assert!(ok.load(Ordering::Relaxed) > 500);

    // `slipway logs` reads the instance's output.
    let out = slipway().args(["logs", "v1-0", "--root"]).arg(&root).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = slipway()
        .args(["release", "list", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("v1") && text.contains("        4"), "{text}");

    let _: InstanceList = api
        .post(
            "/v1/instances/stop",
            &StopRequest {
                release: Some("v1".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    wait_for("all stopped", Duration::from_secs(15), || async {
        processes_under(&root).is_empty().then_some(())
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
}
