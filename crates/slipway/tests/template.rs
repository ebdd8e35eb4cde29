//! The instance template ships with each deploy (env, args, command, readiness), a rollback brings the old one
//! back, and secrets from `env_file` and `${NAME}` reach instances without showing up anywhere else.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use testkit::TempDir;

mod common;
use common::{Down, run};

fn service_toml(dir: &TempDir, instance_extra: &str) {
    let demo = testkit::workspace_bin("demo-app");
    let text = format!(
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
readiness = {{ kind = "http", path = "/healthz", start_deadline = "20s" }}
drain = {{ signal = "SIGTERM", stop_deadline = "5s" }}
{instance_extra}

[deploy]
strategy = "rolling"
drain_deadline = "2s"
session_idle = "1s"

[deploy.rolling]
max_surge = 1
bake = "500ms"
"#,
        demo.display()
    );
    std::fs::write(dir.join("slipway.toml"), text).unwrap();
}

/// `slipway up`, with the releases v1 and v2 added; the listener's address.
fn up(dir: &TempDir, env: &[(&str, &str)]) -> SocketAddr {
    for id in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        let (code, _, err) = run(dir, &["release", "add", id, "--id", id], &[]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = run(dir, &["up"], env);
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("listener web"))
        .expect("listener line");
    line.rsplit("://").next().unwrap().trim().parse().unwrap()
}

/// Waits until the router answers `/` from `release` with the `x-greeting` `greeting`.
async fn wait_answer(addr: SocketAddr, release: &str, greeting: &str) {
    testkit::wait_for(
        &format!("{release} answering with greeting {greeting:?}"),
        Duration::from_secs(30),
        || async move {
            let r = testkit::get(addr, "/", &[]).await.ok()?;
            (r.header("x-release") == Some(release) && r.header("x-greeting") == Some(greeting)).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_env_ships_with_the_next_deploy_without_a_failed_request_and_a_rollback_brings_the_old_one_back() {
    let dir = TempDir::new("template-ship");
    service_toml(&dir, "env = { DEMO_GREETING = \"hello\" }");
    let addr = up(&dir, &[]);
    let _down = Down(&dir);
    let (code, out, err) = run(&dir, &["deploy", "v1"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    wait_answer(addr, "v1", "hello").await;

    // The file changes; nothing restarts: the change waits for the next deploy.
    service_toml(&dir, "env = { DEMO_GREETING = \"bye\", DEMO_THREADS = \"1\" }");
    let r = testkit::get(addr, "/", &[]).await.unwrap();
    assert_eq!(r.header("x-greeting"), Some("hello"));

    let mut cfg = loadgen::LoadConfig::new(addr, 200.0);
    cfg.users = 20;
    let load = loadgen::Load::start(cfg);
    let (code, out, err) = run(&dir, &["deploy", "v2"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("instance template changes:"), "{out}");
    assert!(
        out.contains("env DEMO_GREETING changed") && out.contains("env DEMO_THREADS added"),
        "{out}"
    );
    assert!(
        !out.contains("bye") && !out.contains("hello"),
        "env values are not shown: {out}"
    );
    wait_answer(addr, "v2", "bye").await;
    let report = load.stop().await;
    assert!(report.sent > 500, "{report:?}");
    assert_eq!(
        report.sent, report.ok,
        "no request failed while the new env rolled out: {report:?}"
    );

    // v1 has no instance left: a rollback starts it again, with the template its deploy recorded.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = run(&dir, &["rollback"], &[]);
        if code == 0 {
            break;
        }
        assert!(err.contains("still shutting down"), "{out}{err}");
        assert!(std::time::Instant::now() < deadline, "v1 never went: {err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_answer(addr, "v1", "hello").await;
    let (_, status, _) = run(&dir, &["status"], &[]);
    assert!(status.contains("current v1"), "{status}");

    // What a deploy cannot apply live is refused with the reason, and nothing starts.
    let file = std::fs::read_to_string(dir.join("slipway.toml")).unwrap();
    std::fs::write(dir.join("slipway.toml"), file.replace("127.0.0.1:0", "127.0.0.1:1")).unwrap();
    let (code, out, err) = run(&dir, &["deploy", "v2"], &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("cannot apply live: [[listener]]"), "{err}");
    let (_, status, _) = run(&dir, &["status"], &[]);
    assert!(
        status.contains("current v1") && !status.contains("deploy 4"),
        "{status}"
    );
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_an_env_file_and_the_callers_environment_reach_instances_and_nothing_else() {
    use std::os::unix::fs::PermissionsExt;
    const SECRET: &str = "s3cr3t-7f2a91c4";
    let dir = TempDir::new("template-secrets");
    std::fs::write(dir.join("app.env"), "# the app's secrets\nDB_PASSWORD='pw-7f2a91c4'\n").unwrap();
    std::fs::set_permissions(dir.join("app.env"), std::fs::Permissions::from_mode(0o644)).unwrap();
    service_toml(
        &dir,
        "env_file = \"app.env\"\nenv = { DEMO_GREETING = \"${API_TOKEN}\" }",
    );
    // Readable by others: refused like ssh refuses such a key, before anything starts.
    let (code, out, err) = run(&dir, &["validate", "slipway.toml"], &[]);
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("instance.env_file") && err.contains("chmod 600"), "{err}");
    assert!(!err.contains("pw-7f2a91c4"), "{err}");
    std::fs::set_permissions(dir.join("app.env"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = run(&dir, &["validate", "slipway.toml"], &[]);
    assert_eq!(code, 0, "{out}{err}");

    let caller = [("API_TOKEN", SECRET)];
    let addr = up(&dir, &caller);
    let _down = Down(&dir);
    // Without the variable, the deploy says which one is missing and starts nothing.
    let (code, out, err) = run(&dir, &["deploy", "v1"], &[]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("${API_TOKEN} is not set"), "{err}");
    let (code, deploy_out, err) = run(&dir, &["deploy", "v1"], &caller);
    assert_eq!(code, 0, "{deploy_out}{err}");
    wait_answer(addr, "v1", SECRET).await;

    let mut outputs = vec![deploy_out, err];
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["history"],
        &["history", "--json"],
        &["release", "list"],
    ] {
        let (code, out, err) = run(&dir, args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        outputs.push(out + &err);
    }
    for o in &outputs {
        assert!(!o.contains(SECRET) && !o.contains("pw-7f2a91c4"), "a secret shows: {o}");
    }
    // Files that hold the values are the owner's alone; logs hold none.
    let mut all = Vec::new();
    files(&dir.join(".slipway"), &mut all);
    let mut holders = Vec::new();
    for f in &all {
        let bytes = std::fs::read(f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        if text.contains(SECRET) || text.contains("pw-7f2a91c4") {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} holds a secret with mode {mode:o}", f.display());
            assert!(
                f.extension().is_none_or(|e| e != "log"),
                "a log holds a secret: {}",
                f.display()
            );
            holders.push(f.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    assert!(holders.iter().any(|h| h == "agent.toml"), "{holders:?}");
    assert!(holders.iter().any(|h| h == "instances.json"), "{holders:?}");
}
