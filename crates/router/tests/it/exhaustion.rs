//! Connection exhaustion: a real `slipway router` process under a 256-descriptor limit, flooded with
//! slow heads, slow bodies, idle HTTP/2 and idle keep-alive connections past that limit, still
//! answers legitimate requests fast, keeps its instance up and does not flood its log.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{App, release, table};

/// A router process started with `ulimit -n <fds>` (soft and hard), its log in `log`.
struct Proc {
    child: std::process::Child,
    web: SocketAddr,
    admin: SocketAddr,
    token: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(dir: &Path, app: &App, fds: u32) -> Proc {
    let routes = dir.join("routes.json");
    std::fs::write(
        &routes,
        serde_json::to_vec(&table(vec![release("v1", 100, &[app])])).unwrap(),
    )
    .unwrap();
    let config = dir.join("router.toml");
    let text = format!(
        r#"
state_dir = "{state}"
initial_routes = "{routes}"
admin = {{ listen = "127.0.0.1:0" }}
health = {{ kind = "http", path = "/", interval = "100ms", timeout = "1s", fall = 2 }}
[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"
"#,
        state = dir.join("state").display(),
        routes = routes.display(),
    );
    std::fs::write(&config, text).unwrap();
    let log = std::fs::File::create(dir.join("router.log")).unwrap();
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {fds} && exec \"$0\" router --config \"$1\""))
        .arg(testkit::workspace_bin("slipway"))
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the router");
    let state = dir.join("state");
    let status = testkit::wait_for("the router's status file", Duration::from_secs(20), || {
        let state = state.clone();
        async move { router::read_status(&state).ok().filter(|s| !s.listeners.is_empty()) }
    })
    .await;
    let token = std::fs::read_to_string(state.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    Proc {
        child,
        web: status.listeners[0].addr.parse().unwrap(),
        admin: status.admin.parse().unwrap(),
        token,
    }
}

/// Opens `n` connections of one hostile kind; they are held until dropped.
async fn hostile(web: SocketAddr, kind: usize, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(web).await else {
            continue;
        };
        let first: &[u8] = match kind {
            // A slow head: part of a request line.
            0 => b"GET / HTTP/1.1\r\nX-Slow: ",
            // A slow body.
            1 => b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab",
            // An idle HTTP/2 connection: preface and empty SETTINGS only.
            2 => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
            // An idle keep-alive connection after one request.
            _ => b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        };
        if s.write_all(first).await.is_ok() {
            out.push(s);
        }
    }
    out
}

/// One legitimate request on a new connection: its latency, if it got a 200.
async fn legit(web: SocketAddr) -> Option<Duration> {
    let t0 = Instant::now();
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(web))
        .await
        .ok()?
        .ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    out.starts_with(b"HTTP/1.1 200").then(|| t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_with_256_descriptors_under_a_slow_and_idle_flood_still_answers_fast_and_keeps_its_instance() {
    let app = App::start("v1").await;
    let dir = testkit::TempDir::new("exhaustion");
    let p = start(dir.path(), &app, 256).await;
    assert!(legit(p.web).await.is_some(), "the router answers before the flood");
    // 4 kinds x 100 = 400 connections against 256 descriptors, in waves, while legitimate
    // requests keep coming.
    let mut held = Vec::new();
    let mut latencies = Vec::new();
    let mut failed = 0;
    for wave in 0..8 {
        held.extend(hostile(p.web, wave % 4, 50).await);
        for _ in 0..25 {
            match legit(p.web).await {
                Some(d) => latencies.push(d),
                None => failed += 1,
            }
        }
    }
    // Held past a few health-check rounds (100 ms each, two failures mark the instance down).
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        match legit(p.web).await {
            Some(d) => latencies.push(d),
            None => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The cap held: most of the flood was closed by the router to make room.
    let mut closed = 0;
    for s in &mut held {
        let mut tmp = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(5), s.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
    }
    assert!(
        held.len() >= 390 && closed >= held.len() - 100,
        "{closed} of {} closed",
        held.len()
    );
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let auth = format!("Bearer {}", p.token);
    let mut c = testkit::Client::connect(p.admin).await.unwrap();
    let m = c.get("/v1/metrics", &[("authorization", &auth)]).await.unwrap();
    let m: wire::metrics::MetricsSnapshot = serde_json::from_slice(&m.body).unwrap();
    drop(held);
    let log = std::fs::read_to_string(dir.join("router.log")).unwrap();
    eprintln!(
        "{} legitimate requests, {failed} failed, p99 {p99:?}; log {} lines",
        latencies.len(),
        log.lines().count()
    );
    assert_eq!(failed, 0, "legitimate requests failed; log:\n{log}");
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    let inst = &m.release("v1").unwrap().instances[0];
    assert!(inst.healthy, "the instance was marked down; log:\n{log}");
    assert!(log.lines().count() < 40, "the log flooded:\n{log}");
}
