//! What runs around a deploy besides the judge, with real processes: the pre-traffic check against the new
//! instances before they get any traffic, and the webhook told of every deploy event.

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
steps = [{{ weight = 50, hold = "4s" }}]
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

/// One POST the webhook server got: its headers (lower-case names) and JSON body.
#[derive(Debug, Clone)]
struct Got {
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

/// A webhook on port 0 that answers the first try of each event 503 (so every event is retried) and the next 200.
async fn webhook_server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<Got>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(std::sync::Mutex::new(Vec::<Got>::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        let mut tries = std::collections::BTreeMap::<String, u32>::new();
        while let Ok((mut c, _)) = l.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let n = c.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break (head, buf[end + 4..end + 4 + len].to_vec());
                }
            };
            let Ok(body) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            let key = format!("{}/{}/{}", body["deploy"], body["event"], body["message"]);
            let n = tries.entry(key).or_insert(0);
            *n += 1;
            let status = if *n == 1 { "503 Service Unavailable" } else { "200 OK" };
            if *n > 1 {
                let headers = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                seen.lock().unwrap().push(Got { headers, body });
            }
            let _ = c
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                .await;
        }
    });
    (addr, got)
}

const SECRET: &str = "whsec-7f3a9c1e55d2";

fn webhook_toml(url: &str) -> String {
    format!(
        "[deploy.webhook]\nurl = \"{url}\"\nsecret_file = \"hook.secret\"\nsecret_header = \"X-Hook-Secret\"\n\
         timeout = \"1s\"\nattempts = 3\n"
    )
}

/// Waits until the webhook got an event named `event` of deploy `deploy`.
async fn wait_event(got: &std::sync::Mutex<Vec<Got>>, deploy: i64, event: &str) -> Got {
    testkit::wait_for(
        &format!("webhook event {event} of deploy {deploy}"),
        Duration::from_secs(20),
        || async {
            got.lock()
                .unwrap()
                .iter()
                .find(|g| g.body["deploy"] == deploy && g.body["event"] == event)
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_events_reach_the_webhook_retried_with_its_secret_and_a_dead_webhook_never_holds_a_deploy_up() {
    let dir = TempDir::new("webhook");
    let (hook, got) = webhook_server().await;
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    service(&dir, &webhook_toml(&format!("http://{hook}/hooks/deploy")));
    for id in ["v1", "v2", "v3"] {
        release(&dir, id, "");
    }
    let addr = up(&dir);
    let _down = Down(&dir);
    let (code, out, err) = run(&dir, &["deploy", "v1"], &[]);
    assert_eq!(code, 0, "{out}{err}");

    // v2 (under load, for the judge): started, step (paused and resumed in it), promoted; then a rollback.
    let load = Load::start(addr);
    let follower = deploy(&dir, "v2");
    testkit::wait_for("v2's step", Duration::from_secs(20), || async {
        let (_, out, _) = run(&dir, &["status", "--json"], &[]);
        out.contains("\"phase\": \"step\"").then_some(())
    })
    .await;
    let (code, _, err) = run(&dir, &["pause"], &[]);
    assert_eq!(code, 0, "{err}");
    wait_event(&got, 2, "paused").await;
    let (code, _, err) = run(&dir, &["resume"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = follower.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0);
    let promoted = wait_event(&got, 2, "promoted").await;
    // Right after a promotion the old release may still be draining; the
    // rollback is refused until it is gone, so it is tried again meanwhile.
    testkit::wait_for("a rollback accepted", Duration::from_secs(30), || async {
        let (code, out, err) = run(&dir, &["rollback"], &[]);
        assert!(code == 0 || err.contains("still shutting down"), "{out}{err}");
        (code == 0).then_some(())
    })
    .await;
    testkit::wait_for("a rolled_back event", Duration::from_secs(20), || async {
        got.lock()
            .unwrap()
            .iter()
            .find(|g| g.body["event"] == "rolled_back")
            .cloned()
    })
    .await;

    let events: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|g| g.body["deploy"] == 2)
        .map(|g| g.body["event"].as_str().unwrap().to_string())
        .collect();
    for e in ["started", "step", "paused", "resumed", "promoted"] {
        assert!(events.contains(&e.to_string()), "{e} in {events:?}");
    }
    assert_eq!(promoted.body["release"], "v2");
    assert_eq!(promoted.body["from"], "v1");
    assert_eq!(promoted.body["service"], "shop");
    assert!(agent::parse_rfc3339(promoted.body["time"].as_str().unwrap()).is_some());
    for g in got.lock().unwrap().iter() {
        let h = |k: &str| g.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(h("x-hook-secret"), Some(SECRET));
        assert_eq!(h("content-type"), Some("application/json"));
        assert_eq!(h("x-slipway-event"), g.body["event"].as_str());
    }

    // The secret is nowhere else: not in status, history, the API's deploy, nor any log or state file.
    for args in [&["status", "--json"][..], &["history", "--json"], &["status", "--all"]] {
        let (_, out, err) = run(&dir, args, &[]);
        assert!(!out.contains(SECRET) && !err.contains(SECRET), "{args:?}");
    }
    for f in walk(&dir.join(".slipway")) {
        let bytes = std::fs::read(&f).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(SECRET),
            "the secret is in {}",
            f.display()
        );
    }

    // A webhook that accepts and never answers: the next deploy goes through in its usual time.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    service(&dir, &webhook_toml(&format!("http://{dead_addr}/")));
    let load = Load::start(addr);
    let started = std::time::Instant::now();
    let (code, out, err) = deploy(&dir, "v3").await.unwrap();
    load.stop().await;
    assert_eq!(code, 0, "{out}{err}");
    // Waiting on it would take over 6 s an event (3 tries of 1 s, 1 s and 2 s apart): started, step, promoted.
    assert!(started.elapsed() < Duration::from_secs(16), "{:?}", started.elapsed());
    drop(dead);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
