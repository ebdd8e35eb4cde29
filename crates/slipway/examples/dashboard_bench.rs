//! The dashboard's benchmark (bench/dashboard): page weight, time to first render, and update latency (a control
//! plane change to the pixels in Chromium) with 1 and with 20 open dashboards, against `slipway up` + demo-app.
//!
//! `cargo run -p slipway --example dashboard_bench -- ROUNDS`; prints a Markdown table and writes
//! `bench/out/dashboard.json`.

#[path = "../tests/webdriver/mod.rs"]
#[allow(dead_code)]
mod webdriver;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plumbing::client::ApiClient;
use serde_json::{Value, json};
use testkit::TempDir;
use webdriver::Browser;

fn slipway(dir: &TempDir, args: &[&str]) -> String {
    let exe = testkit::workspace_bin("slipway");
    let out = Command::new(exe)
        .current_dir(dir.path())
        .args(args)
        .env_remove("DISPLAY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "slipway {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `slipway down` when the bench ends, however it ends.
struct Down<'a>(&'a TempDir);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = Command::new(testkit::workspace_bin("slipway"))
            .current_dir(self.0.path())
            .arg("down")
            .output();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

const OBSERVE: &str = "window.__seen = []; window.__last = !!document.getElementById('paused');
  new MutationObserver(() => { const p = !!document.getElementById('paused');
    if (p !== window.__last) { window.__last = p;
      requestAnimationFrame(() => setTimeout(() => window.__seen.push([p, performance.timeOrigin + performance.now()]), 0)); } })
  .observe(document.getElementById('dep-head'), { subtree: true, childList: true, characterData: true });
  return true;";

const WEIGHT: &str =
    "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
  .filter(e => !e.name.includes('/events')).reduce((a, e) => a + e.transferSize, 0);";

const FCP: &str = "const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null;";

/// Pause and resume `rounds` times; the latency of each from the API call to the page's next frame (ms).
async fn latencies(b: &Browser, api: &ApiClient, rounds: usize) -> Vec<f64> {
    b.js(OBSERVE).await;
    let mut out = Vec::new();
    for k in 0..rounds {
        let pause = k % 2 == 0;
        let t0 = now_ms();
        let path = if pause { "/v1/deploy/pause" } else { "/v1/deploy/resume" };
        let _: Value = api.post(path, &json!({})).await.unwrap();
        let script = format!("return window.__seen.find(s => s[0] === {pause})?.[1] ?? null");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let at = loop {
            if let Some(t) = b.js(&script).await.as_f64() {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "no update seen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        b.js("window.__seen = []; return true;").await;
        out.push(at - t0);
        // Land at spread phases of the control loop's 500 ms turn.
        tokio::time::sleep(Duration::from_millis(150 + (k as u64 * 137) % 500)).await;
    }
    out
}

/// Another open dashboard: logs in with the token and reads the deploy page's events until aborted.
async fn viewer(addr: std::net::SocketAddr, token: String, id: i64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = testkit::Client::connect(addr).await.unwrap();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = c
        .send("POST", "/login", &form, bytes::Bytes::from(format!("token={token}")))
        .await
        .unwrap();
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /events?page=deploy&id={id} HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        if s.read(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    // Even: each series of pauses and resumes ends where it started.
    let rounds = rounds.max(2) + rounds % 2;
    let dir = TempDir::new("dash-bench");
    let mut t = testkit::ServiceToml::new("shop", &testkit::workspace_bin("demo-app"));
    t.count = 2;
    t.hold = "600s".into();
    std::fs::write(dir.join("slipway.toml"), t.render()).unwrap();
    for id in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        slipway(&dir, &["release", "add", id, "--id", id, "--root", "state"]);
    }
    slipway(&dir, &["up"]);
    let _down = Down(&dir);
    slipway(&dir, &["deploy", "v1"]);
    eprintln!("service up, v1 deployed");
    let cfg = control::ServiceConfig::load(&dir.join("slipway.toml")).unwrap();
    let token = std::fs::read_to_string(cfg.layout.control_token()).unwrap();
    let api = ApiClient::new(&control::control_running(&cfg).unwrap().addr, Some(token.trim().into())).unwrap();
    let req = wire::service::DeployRequest {
        release: "v2".into(),
        strategy: None,
        template: None,
    };
    let d: wire::service::DeployInfo = api.post("/v1/deploys", &req).await.unwrap();
    let b = Browser::start().await;
    let link = slipway(&dir, &["dashboard", "--no-open"]);
    b.go(link.lines().next().unwrap().trim()).await;
    let page = format!(
        "http://{}/deploy/{}",
        control::dashboard_running(&cfg).unwrap().addr,
        d.id
    );
    b.go(&page).await;
    b.until(
        "the step",
        Duration::from_secs(30),
        "return !!document.getElementById('btn-pause')",
    )
    .await;
    eprintln!("deploy {} in its step; measuring", d.id);
    let (mut kb, mut fcp) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        b.go(&page).await;
        b.until(
            "a paint",
            Duration::from_secs(5),
            "return performance.getEntriesByName('first-contentful-paint').length > 0",
        )
        .await;
        kb.push(b.js(WEIGHT).await.as_f64().unwrap() / 1024.0);
        fcp.push(b.js(FCP).await.as_f64().unwrap());
    }
    eprintln!("page {kb:?} KB, first paint {fcp:?} ms");
    let one = latencies(&b, &api, rounds).await;
    eprintln!("1 open: {one:?}");
    // 19 more open dashboards, each its own session following the page's events (a browser allows 6 connections
    // to one origin, so they are separate clients, as 19 other people's browsers would be).
    let dash: std::net::SocketAddr = control::dashboard_running(&cfg).unwrap().addr.parse().unwrap();
    let mut viewers = Vec::new();
    for _ in 0..19 {
        viewers.push(tokio::spawn(viewer(dash, token.trim().to_string(), d.id)));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let twenty = latencies(&b, &api, rounds).await;
    eprintln!("20 open: {twenty:?}");
    for v in &viewers {
        assert!(!v.is_finished(), "a viewer's stream ended early");
        v.abort();
    }
    let result = json!({
        "rounds": rounds,
        "page_kb": median(kb.clone()),
        "first_contentful_paint_ms": median(fcp.clone()),
        "update_ms_1": { "median": median(one.clone()), "max": one.iter().copied().fold(0.0, f64::max) },
        "update_ms_20": { "median": median(twenty.clone()), "max": twenty.iter().copied().fold(0.0, f64::max) },
    });
    std::fs::create_dir_all("bench/out").ok();
    std::fs::write(
        "bench/out/dashboard.json",
        serde_json::to_string_pretty(&result).unwrap(),
    )
    .ok();
    println!("| page KB | first paint ms | update ms, 1 open (median / max) | 20 open (median / max) |");
    println!("|---|---|---|---|");
    println!(
        "| {:.1} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} |",
        result["page_kb"].as_f64().unwrap(),
        result["first_contentful_paint_ms"].as_f64().unwrap(),
        result["update_ms_1"]["median"].as_f64().unwrap(),
        result["update_ms_1"]["max"].as_f64().unwrap(),
        result["update_ms_20"]["median"].as_f64().unwrap(),
        result["update_ms_20"]["max"].as_f64().unwrap(),
    );
}
