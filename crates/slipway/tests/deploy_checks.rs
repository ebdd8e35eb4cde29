//! What runs around a deploy besides the judge, with real processes: the pre-traffic check against the new
//! instances before they get any traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use testkit::TempDir;

mod common;
use common::{Down, run};

/// slipway.toml with demo-app instances, a one-step canary and `extra` under `[deploy]`'s tables.
fn service(dir: &TempDir, extra: &str) {
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

[deploy]
strategy = "canary"
drain_deadline = "2s"
session_idle = "1s"

[deploy.canary]
instances = 1
steps = [{{ weight = 50, hold = "2s" }}]
analysis = {{ min_requests = 1 }}

{extra}
"#,
        testkit::workspace_bin("demo-app").display()
    );
    std::fs::write(dir.join("slipway.toml"), text).unwrap();
}

/// Adds release `id`, whose instances get `env` (`[start.env]` of its slipway.release.toml).
fn release(dir: &TempDir, id: &str, env: &str) {
    let src = dir.join(format!("src-{id}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("slipway.release.toml"), format!("[start.env]\n{env}\n")).unwrap();
    let (code, _, err) = run(dir, &["release", "add", src.to_str().unwrap(), "--id", id], &[]);
    assert_eq!(code, 0, "{err}");
}

fn up(dir: &TempDir) -> SocketAddr {
    let (code, out, err) = run(dir, &["up"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("listener web"))
        .expect("listener line");
    line.rsplit("://").next().unwrap().trim().parse().unwrap()
}

/// New sessions (no cookie) to `addr` until stopped: (answers per release, failed requests).
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(std::collections::BTreeMap<String, u64>, u64)>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut by, failed) = (std::collections::BTreeMap::new(), AtomicU64::new(0));
            while !s.load(Ordering::Relaxed) {
                match testkit::get(addr, "/", &[]).await {
                    Ok(r) if r.status == 200 => {
                        *by.entry(r.header("x-release").unwrap_or("?").to_string()).or_insert(0) += 1
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (by, failed.load(Ordering::Relaxed))
        });
        Load { stop, task }
    }

    async fn stop(self) -> (std::collections::BTreeMap<String, u64>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// `slipway deploy release` in the background: exit code and output.
fn deploy(dir: &TempDir, release: &str) -> tokio::task::JoinHandle<(i32, String, String)> {
    let dir = dir.path().to_path_buf();
    let release = release.to_string();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
            .current_dir(&dir)
            .env("NO_COLOR", "1")
            .args(["deploy", &release])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_traffic_check_aborts_with_its_output_before_the_canary_got_traffic_and_a_passing_one_goes_on() {
    let dir = TempDir::new("pre-traffic");
    // The HTTP check GETs /smoke on each new instance; the command sleeps a while first, so the load below
    // runs through the whole check.
    service(
        &dir,
        r#"[deploy.pre_traffic]
path = "/smoke"
command = ["sh", "-c", "sleep 1; echo smoke-tested $SLIPWAY_RELEASE at $SLIPWAY_INSTANCES"]
timeout = "20s""#,
    );
    release(&dir, "v1", "");
    release(&dir, "v2", "DEMO_ERROR_RATE = \"1\"");
    release(&dir, "v3", "");
    let addr = up(&dir);
    let _down = Down(&dir);
    let (code, out, err) = run(&dir, &["deploy", "v1"], &[]);
    assert_eq!(code, 0, "{out}{err}");

    // v2 answers 500 to everything but /healthz: its check fails, and it never got a request of the load.
    let load = Load::start(addr);
    let (code, out, err) = deploy(&dir, "v2").await.unwrap();
    let (by, failed) = load.stop().await;
    assert_eq!(code, 1, "a failed check aborts the deploy: {out}{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("pre-traffic check failed"), "{all}");
    assert!(
        all.contains("/smoke: 500"),
        "the check's output is in the reason: {all}"
    );
    assert_eq!(failed, 0, "{by:?}");
    assert_eq!(by.keys().collect::<Vec<_>>(), ["v1"], "only v1 answered: {by:?}");
    assert!(by["v1"] > 20, "{by:?}");
    let (_, out, _) = run(&dir, &["history"], &[]);
    assert!(out.contains("pre-traffic check failed"), "{out}");

    // v3 passes: its check's output is in the deploy's log, then it gets traffic and is promoted.
    let load = Load::start(addr);
    let (code, out, err) = deploy(&dir, "v3").await.unwrap();
    let (by, failed) = load.stop().await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("pre-traffic check passed") && out.contains("smoke-tested v3 at 127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("v3 is now the current release"), "{out}");
    assert_eq!(failed, 0);
    assert!(by.get("v3").is_some_and(|n| *n > 0), "{by:?}");
}
