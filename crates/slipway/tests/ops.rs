//! `slipway up`, `deploy`, `status`, `abort`, `history`, `down` as an operator runs them, with real processes.

use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::TempDir;

mod common;
use common::Down;

fn slipway(dir: &TempDir) -> Command {
    common::slipway(dir, &[])
}

fn run(dir: &TempDir, args: &[&str]) -> (i32, String, String) {
    common::run(dir, args, &[])
}

#[test]
fn an_operator_session_from_up_to_down() {
    let dir = TempDir::new("ops");
    let demo = testkit::workspace_bin("demo-app");
    std::fs::write(
        dir.join("slipway.toml"),
        format!(
            r#"
[service]
name = "shop"

[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"

[instance]
count = 2
command = "{}"

[deploy.canary]
instances = 1
steps = [{{ weight = 10, hold = "30s" }}]
"#,
            demo.display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(&dir, &["validate", "slipway.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("valid service definition"));
    for id in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        let (code, _, err) = run(&dir, &["release", "add", id, "--id", id]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&dir, &["up"]);
    let _down = Down(&dir);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("control plane") && out.contains("listener web"), "{out}");
    let (code, out, err) = run(&dir, &["deploy", "v1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("deploy 1 done: v1 is the current release"), "{out}");
    // A second deploy while one runs is refused with the reason.
    let mut follower = slipway(&dir)
        .args(["deploy", "v2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = run(&dir, &["status", "--json"]);
        if out.contains("\"phase\": \"step\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "canary never reached its step: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, _, err) = run(&dir, &["deploy", "v1", "--detach"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("only one deploy") || err.contains("already the current"),
        "{err}"
    );
    assert!(
        !err.contains("409") && !err.contains("Conflict"),
        "plain words, no HTTP status: {err}"
    );
    let (code, out, err) = run(&dir, &["abort", "--reason", "changed my mind"]);
    assert_eq!(code, 0, "{out}{err}");
    let status = follower.wait().unwrap();
    assert_eq!(status.code(), Some(1), "an aborted deploy exits 1");
    let (code, out, _) = run(&dir, &["history"]);
    assert_eq!(code, 0);
    assert!(out.contains("aborted") && out.contains("changed my mind"), "{out}");
    let (code, out, _) = run(&dir, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("current v1"), "{out}");
    let (code, out, err) = run(&dir, &["down"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("router stopped") && out.contains("agent stopped"), "{out}");
    let (code, _, err) = run(&dir, &["status"]);
    assert_eq!(code, 69, "the control plane is not running: {err}");
    assert!(err.contains("slipway up"), "{err}");
    let (code, _, err) = run(&dir, &["abort"]);
    assert_eq!(code, 69, "{err}");
}

#[test]
fn ctrl_c_during_a_deploy_leaves_it_running_and_watch_follows_it_to_its_end_from_another_terminal() {
    let dir = TempDir::new("ops-watch");
    let demo = testkit::workspace_bin("demo-app");
    std::fs::write(
        dir.join("slipway.toml"),
        format!(
            r#"
[service]
name = "shop"

[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"

[instance]
count = 2
command = "{}"

[deploy]
strategy = "rolling"
drain_deadline = "1s"

[deploy.rolling]
max_surge = 1
bake = "3s"
"#,
            demo.display()
        ),
    )
    .unwrap();
    for id in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        let (code, _, err) = run(&dir, &["release", "add", id, "--id", id]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&dir, &["up"]);
    let _down = Down(&dir);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&dir, &["deploy", "v1"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&dir, &["watch"]);
    assert_eq!(code, 0);
    assert!(out.contains("no deploy is running; the last was deploy 1"), "{out}");

    let follower = slipway(&dir)
        .args(["deploy", "v2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = run(&dir, &["status", "--json"]);
        if out.contains("\"phase\": \"rolling\"") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the deploy never rolled: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let kill = Command::new("kill")
        .args(["-INT", &follower.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = follower.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("the deploy goes on; `slipway watch` to follow it, `slipway abort` to stop it"),
        "{err}"
    );
    let (_, status, _) = run(&dir, &["status"]);
    assert!(status.contains("deploy 2 rolling of v2"), "it goes on: {status}");

    let (code, out, err) = run(&dir, &["watch", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["event"].is_string()), "{out}");
    assert!(
        lines.iter().any(|l| l["phase"] == "rolling" && l["groups"].is_array()),
        "{out}"
    );
    let last = lines.last().unwrap();
    assert_eq!(
        (last["deploy"].as_i64(), last["finished"].as_bool()),
        (Some(2), Some(true)),
        "{out}"
    );
    assert_eq!(last["phase"], "done", "{out}");
    let (code, out, err) = run(&dir, &["down"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inconclusive_abort_keeps_its_verdict_in_a_history_read_from_the_journal_with_the_control_plane_down() {
    let dir = TempDir::new("ops-history");
    let demo = testkit::workspace_bin("demo-app");
    std::fs::write(
        dir.join("slipway.toml"),
        format!(
            r#"
[service]
name = "shop"

[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"

[instance]
count = 2
command = "{}"

[deploy]
drain_deadline = "1s"

[deploy.canary]
instances = 1
steps = [{{ weight = 50, hold = "4s" }}]
max_extensions = 0
on_inconclusive = "abort"

[deploy.canary.analysis]
min_requests = 1000000
"#,
            demo.display()
        ),
    )
    .unwrap();
    for id in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        let (code, _, err) = run(&dir, &["release", "add", id, "--id", id]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&dir, &["up"]);
    let _down = Down(&dir);
    assert_eq!(code, 0, "{out}{err}");
    let listener: std::net::SocketAddr = out
        .lines()
        .find(|l| l.starts_with("listener web"))
        .and_then(|l| l.rsplit("://").next())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (_, out, _) = run(&dir, &["status"]);
    assert!(out.contains("next: `slipway release add <dir> --id v1`"), "{out}");
    let (code, out, err) = run(&dir, &["deploy", "v1"]);
    assert_eq!(code, 0, "{out}{err}");
    // New sessions all along, so the canary gets traffic (a canary with none fails instead).
    let mut lc = loadgen::LoadConfig::new(listener, 100.0);
    lc.session_requests = Some(4);
    let load = loadgen::Load::start(lc);
    let (code, out, err) = run(&dir, &["deploy", "v2"]);
    let _ = load.stop().await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("still inconclusive"), "{out}");
    let (_, status, _) = run(&dir, &["status"]);
    assert!(
        status.contains("next: deploy 2 of v2 was aborted; `slipway history` shows why"),
        "{status}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let all = loop {
        let (_, all, _) = run(&dir, &["status", "--all"]);
        if all.contains(" stopped ") {
            break all;
        }
        assert!(std::time::Instant::now() < deadline, "the canary never stopped: {all}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, status, _) = run(&dir, &["status"]);
    assert!(!status.contains(" stopped "), "{status}");
    assert!(
        status.contains("stopped, hidden; `slipway status --all` lists them"),
        "{status}\n{all}"
    );

    let (code, out, err) = run(&dir, &["down"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&dir, &["history"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("no control plane runs: the history as the journal has it"),
        "{err}"
    );
    let deploy_2 = out
        .lines()
        .skip_while(|l| !l.starts_with("#2"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        deploy_2.contains("aborted") && deploy_2.contains("still inconclusive"),
        "{out}"
    );
    assert!(
        deploy_2.contains("verdict inconclusive"),
        "the verdict behind the abort is kept: {out}"
    );
}

#[test]
fn deploy_hooks_run_with_the_deploy_in_their_environment_and_a_failing_pre_deploy_refuses_it() {
    let dir = TempDir::new("ops-hooks");
    let demo = testkit::workspace_bin("demo-app");
    let note = r#"["sh", "-c", "echo \"$SLIPWAY_OUTCOME $SLIPWAY_DEPLOY $SLIPWAY_RELEASE from=$SLIPWAY_FROM $SLIPWAY_REASON\" >> hooks.log"]"#;
    std::fs::write(
        dir.join("slipway.toml"),
        format!(
            r#"
[service]
name = "shop"

[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"

[instance]
count = 1
command = "{}"

[deploy]
strategy = "rolling"
drain_deadline = "1s"

[deploy.rolling]
bake = "30s"

[deploy.hooks]
pre_deploy = ["sh", "-c", "if [ -e block ]; then echo blocked by the block file; exit 3; fi"]
post_deploy = {note}
on_abort = {note}
"#,
            demo.display()
        ),
    )
    .unwrap();
    for id in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        let (code, _, err) = run(&dir, &["release", "add", id, "--id", id]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(&dir, &["up"]);
    let _down = Down(&dir);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&dir, &["deploy", "v1"]);
    assert_eq!(code, 0, "{out}{err}");
    let log = || std::fs::read_to_string(dir.join("hooks.log")).unwrap_or_default();
    let wait_log = |line: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !log().contains(line) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {line:?} in hooks.log: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_log("done 1 v1 from= ");

    std::fs::write(dir.join("block"), "").unwrap();
    let (code, out, err) = run(&dir, &["deploy", "v2"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("pre_deploy hook failed") && err.contains("blocked by the block file"),
        "{err}"
    );
    let (_, status, _) = run(&dir, &["status"]);
    assert!(
        status.contains("current v1") && !status.contains("v2"),
        "nothing started: {status}"
    );

    std::fs::remove_file(dir.join("block")).unwrap();
    let (code, out, err) = run(&dir, &["deploy", "v2", "--detach"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&dir, &["abort", "--reason", "not today"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_log("aborted 2 v2 from=v1 not today");
    let (code, out, err) = run(&dir, &["down"]);
    assert_eq!(code, 0, "{out}{err}");
}
