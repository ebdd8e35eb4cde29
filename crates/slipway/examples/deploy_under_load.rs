//! bench/deploy-under-load: open-loop load through every kind of deploy, then through nginx reloads.
//!
//! Usage: cargo run --release -p slipway --example deploy_under_load -- [--rate 1000] [--websockets 20]
//! (bench/deploy-under-load/run.sh builds what it needs and installs nginx if missing.)

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::{Load, LoadConfig, Report};
use wire::service::{DeployInfo, DeployRequest, Strategy};

struct Row {
    name: String,
    r: Report,
    note: String,
}

fn service_toml(demo: &Path) -> String {
    let mut t = testkit::ServiceToml::new("bench", demo);
    t.count = 4;
    t.hold = "5s".into();
    t.drain_deadline = "5s".into();
    t.latency = "tolerance = 0.5, detectable_increase = 1.0".into();
    t.rolling_bake = "1s".into();
    t.blue_green_check = "2s".into();
    t.rollback_window = "120s".into();
    t.extra = "\n[routing]\nhealth = { kind = \"http\", path = \"/healthz\", interval = \"1s\" }\n".into();
    t.render()
}

async fn run_deploy(api: &plumbing::client::ApiClient, release: &str, strategy: Strategy) -> DeployInfo {
    let d: DeployInfo = api
        .post(
            "/v1/deploys",
            &DeployRequest {
                release: release.into(),
                strategy: Some(strategy),
                template: None,
            },
        )
        .await
        .expect("deploy accepted");
    loop {
        let now: DeployInfo = api.get(&format!("/v1/deploys/{}", d.id)).await.unwrap();
        if now.finished() {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until only `release` has live instances (old ones drained and stopped).
async fn settle(api: &plumbing::client::ApiClient, release: &str, limit: Duration) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let s: wire::service::ServiceStatus = api.get("/v1/status").await.unwrap();
        if s.instances
            .iter()
            .filter(|i| agent::is_live(i.state) || i.state == wire::agent::InstanceState::Draining)
            .all(|i| i.release == release)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn start_demo(demo: &Path, release: &str, port: u16) -> Child {
    Command::new(demo)
        .env("PORT", port.to_string())
        .env("SLIPWAY_RELEASE", release)
        .env("DEMO_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo-app")
}

/// Waits up to 10 s for a loopback port to accept connections.
async fn wait_port(port: u16) {
    testkit::wait_port(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10)).await
}

fn nginx_conf(dir: &Path, listen: u16, ports: &[u16]) -> String {
    let servers: String = ports.iter().map(|p| format!("server 127.0.0.1:{p};")).collect();
    format!(
        r#"worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream app {{ {servers} keepalive 64; }}
  server {{ listen 127.0.0.1:{listen};
    location / {{ proxy_pass http://app; proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s; }} }} }}
"#,
        d = dir.display()
    )
}

/// The same load through nginx while its upstreams are replaced three times
/// (start the new set, rewrite the config, `nginx -s reload`, stop the old set).
async fn nginx_run(demo: &Path, rate: f64, websockets: usize, dir: &Path) -> Option<Row> {
    if Command::new("nginx").arg("-v").output().is_err() {
        eprintln!("nginx not installed: skipping the comparison");
        return None;
    }
    let listen = testkit::free_port();
    let mut ports: Vec<u16> = (0..4).map(|_| testkit::free_port()).collect();
    let mut apps: Vec<Child> = ports.iter().map(|p| start_demo(demo, "v1", *p)).collect();
    for p in &ports {
        wait_port(*p).await;
    }
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, listen, &ports)).unwrap();
    let mut nginx = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_port(listen).await;
    let mut cfg = LoadConfig::new(SocketAddr::from(([127, 0, 0, 1], listen)), rate);
    cfg.users = 100;
    cfg.session_requests = Some(20);
    cfg.websockets = websockets;
    let load = Load::start(cfg);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = load.report();
    for round in 2..=4 {
        let new_ports: Vec<u16> = (0..4).map(|_| testkit::free_port()).collect();
        let new_apps: Vec<Child> = new_ports
            .iter()
            .map(|p| start_demo(demo, &format!("v{round}"), *p))
            .collect();
        for p in &new_ports {
            wait_port(*p).await;
        }
        std::fs::write(&conf, nginx_conf(dir, listen, &new_ports)).unwrap();
        let _ = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir)
            .args(["-s", "reload"])
            .status();
        tokio::time::sleep(Duration::from_secs(5)).await;
        for mut a in apps.drain(..) {
            let _ = Command::new("kill").arg("-TERM").arg(a.id().to_string()).status();
            let _ = a.wait();
        }
        apps = new_apps;
        ports = new_ports;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let r = load.stop().await.since(&before);
    let _ = nginx.kill();
    let _ = nginx.wait();
    for mut a in apps {
        let _ = a.kill();
        let _ = a.wait();
    }
    let _ = ports;
    Some(Row {
        name: "nginx: 3 upstream swaps by `nginx -s reload`".into(),
        r,
        note: "old upstreams stopped 5 s after each reload".into(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut rate = 1000.0;
    let mut websockets = 20;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rate" => rate = args.next().and_then(|v| v.parse().ok()).expect("--rate N"),
            "--websockets" => websockets = args.next().and_then(|v| v.parse().ok()).expect("--websockets N"),
            _ => panic!("usage: deploy_under_load [--rate N] [--websockets N]"),
        }
    }
    let slipway = testkit::profile_bin("slipway");
    let demo = testkit::profile_bin("demo-app");
    assert!(
        slipway.exists() && demo.exists(),
        "build first: cargo build --release -p slipway -p demo-app"
    );
    let dir = std::env::temp_dir().join(format!("slipway-dul-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("slipway.toml"), service_toml(&demo)).unwrap();
    let cfg = control::ServiceConfig::load(&dir.join("slipway.toml")).unwrap();
    let store = agent::ReleaseStore::new(cfg.state_dir());
    for (id, m) in [
        ("v1", ""),
        ("v2", ""),
        ("v3", ""),
        ("v4", ""),
        ("bad", "[start.env]\nDEMO_ERROR_RATE = \"0.3\"\n"),
    ] {
        let src = dir.join(format!("src-{id}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("slipway.release.toml"), m).unwrap();
        store.add(&src, id).unwrap();
    }
    let running = control::start(cfg.clone(), slipway).await.expect("control plane");
    let api = plumbing::client::ApiClient::new(&running.api_addr, Some(running.control.token.clone())).unwrap();
    let web: SocketAddr = {
        let st: wire::api::RouterStatus =
            serde_json::from_slice(&std::fs::read(cfg.layout.router_status()).unwrap()).unwrap();
        st.listeners[0].addr.parse().unwrap()
    };
    run_deploy(&api, "v1", Strategy::Canary).await;
    let mut lc = LoadConfig::new(web, rate);
    lc.users = 100;
    lc.session_requests = Some(20);
    lc.websockets = websockets;
    let load = Load::start(lc);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut rows = Vec::new();
    let b = load.report();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let steady = load.report().since(&b);
    rows.push(Row {
        name: "steady state (10 s)".into(),
        r: steady.clone(),
        note: String::new(),
    });
    for (name, release, strategy, settle_on) in [
        ("rolling deploy v1 -> v2", "v2", Strategy::Rolling, "v2"),
        ("canary deploy v2 -> v3, promoted", "v3", Strategy::Canary, "v3"),
        ("blue-green switch v3 -> v4", "v4", Strategy::BlueGreen, ""),
        ("canary of a bad release, aborted", "bad", Strategy::Canary, ""),
    ] {
        let before = load.report();
        let t = Instant::now();
        let d = run_deploy(&api, release, strategy).await;
        if !settle_on.is_empty() {
            settle(&api, settle_on, Duration::from_secs(60)).await;
        } else {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let r = load.report().since(&before);
        let note = format!(
            "{} in {:.0} s{}",
            d.phase,
            t.elapsed().as_secs_f64(),
            d.outcome
                .map(|o| format!(" ({})", o.chars().take(60).collect::<String>()))
                .unwrap_or_default()
        );
        rows.push(Row {
            name: name.into(),
            r,
            note,
        });
    }
    let before = load.report();
    let t = Instant::now();
    let s: wire::service::ServiceStatus = api.post("/v1/rollback", &serde_json::json!({})).await.unwrap();
    settle(&api, s.current.as_deref().unwrap_or("v3"), Duration::from_secs(60)).await;
    rows.push(Row {
        name: format!("rollback v4 -> {} (route swap)", s.current.clone().unwrap_or_default()),
        r: load.report().since(&before),
        note: format!("settled in {:.0} s", t.elapsed().as_secs_f64()),
    });
    let total = load.stop().await;
    running.shutdown().await;
    // Stop everything the bench started.
    if let Ok(list) = agent::saved_instances(cfg.state_dir()) {
        for i in list {
            if let Some(pid) = i.pid {
                agent::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    for r in [control::router_running(&cfg), control::agent_running(&cfg)]
        .into_iter()
        .flatten()
    {
        control::stop_process(r.pid, Duration::from_secs(3));
    }
    if let Some(row) = nginx_run(&demo, rate, websockets, &dir).await {
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "| phase | requests | failed | of which injected by the bad release | WebSockets dropped | WebSockets \
         closed with 1012 | p99 ms | p99 vs steady | notes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let sp99 = steady.p99_ms().max(0.001);
    for row in &rows {
        let r = &row.r;
        let injected = if row.name.contains("bad") {
            r.statuses.get(&500).copied().unwrap_or(0)
        } else {
            0
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} |",
            row.name,
            r.sent,
            r.failed,
            injected,
            r.ws_dropped,
            r.ws_closed_1012,
            r.p99_ms(),
            r.p99_ms() / sp99,
            row.note
        );
    }
    eprintln!(
        "total: {} requests, {} failed, errors {:?}",
        total.sent, total.failed, total.errors
    );
}
