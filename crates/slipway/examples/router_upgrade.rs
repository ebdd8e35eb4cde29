//! bench/router-upgrade: the proxy replaces itself again and again under load, against nginx and HAProxy reloads.
//!
//! Usage: cargo run --release -p slipway --example router_upgrade --
//!        [--runs 3] [--reloads 10] [--rate 600] [--websockets 100]
//! (bench/router-upgrade/run.sh builds what it needs and installs nginx and haproxy if missing.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::{Load, LoadConfig, Report};

/// How long each proxy lets long-lived connections stay after a reload.
const LONG_LIVED_LIMIT_S: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Slipway,
    Nginx,
    Haproxy,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Slipway => "slipway `router upgrade`",
            Proxy::Nginx => "nginx `-s reload`",
            Proxy::Haproxy => "HAProxy `-x sock -sf pid`",
        }
    }
}

struct Outcome {
    proxy: Proxy,
    h1: Report,
    h2: Report,
    reload_ms: Vec<f64>,
}

/// Waits up to 10 s for a loopback port to accept connections.
async fn wait_port(port: u16) {
    testkit::wait_port(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10)).await
}

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null())
}

/// A proxy under test: the processes it runs as, and how to reload it.
struct Running {
    proxy: Proxy,
    h1: SocketAddr,
    h2: SocketAddr,
    dir: PathBuf,
    children: Vec<Child>,
    /// Pids that are not our children (slipway's successors).
    pids: Vec<u32>,
}

impl Running {
    async fn start(proxy: Proxy, dir: &Path, upstreams: &[u16]) -> Running {
        let dir = dir.join(format!("{proxy:?}").to_lowercase());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (p1, p2) = (testkit::free_port(), testkit::free_port());
        let ups = |fmt: &dyn Fn(usize, u16) -> String| -> String {
            upstreams.iter().enumerate().map(|(i, p)| fmt(i, *p)).collect()
        };
        let mut children = Vec::new();
        let (h1, h2) = match proxy {
            Proxy::Slipway => {
                let routes = ups(&|i, p| format!("{{ id = \"v1-{i}\", addr = \"127.0.0.1:{p}\" }},"));
                std::fs::write(
                    dir.join("routes.toml"),
                    format!("[[release]]\nid = \"v1\"\nweight = 100\ninstance = [{routes}]\n"),
                )
                .unwrap();
                std::fs::write(
                    dir.join("router.toml"),
                    format!(
                        "state_dir = \"state\"\nadmin = {{ listen = \"127.0.0.1:0\" }}\ninitial_routes = \
                         \"routes.toml\"\nhealth = {{ kind = \"none\" }}\n\
                         [[listener]]\nname = \"web\"\nkind = \"http\"\naddr = \"127.0.0.1:{p1}\"\n\
                         drain_deadline = \"{LONG_LIVED_LIMIT_S}s\"\n"
                    ),
                )
                .unwrap();
                children.push(
                    quiet(Command::new(testkit::profile_bin("slipway")).args(["router", "--config"]))
                        .arg(dir.join("router.toml"))
                        .spawn()
                        .expect("start slipway router"),
                );
                // h1 and h2c share the port.
                (p1, p1)
            }
            Proxy::Nginx => {
                let servers = ups(&|_, p| format!("server 127.0.0.1:{p}; "));
                std::fs::write(
                    dir.join("nginx.conf"),
                    format!(
                        r#"worker_processes 2; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
worker_shutdown_timeout {LONG_LIVED_LIMIT_S}s;
events {{ worker_connections 8192; }}
http {{ access_log off;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream app {{ {servers} keepalive 64; }}
  server {{ listen 127.0.0.1:{p1}; listen 127.0.0.1:{p2} http2;
    location / {{ proxy_pass http://app; proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s; }} }} }}
"#,
                        d = dir.display()
                    ),
                )
                .unwrap();
                children.push(
                    quiet(
                        Command::new("nginx")
                            .arg("-c")
                            .arg(dir.join("nginx.conf"))
                            .arg("-p")
                            .arg(&dir),
                    )
                    .spawn()
                    .expect("start nginx"),
                );
                (p1, p2)
            }
            Proxy::Haproxy => {
                let servers = ups(&|i, p| format!("  server s{i} 127.0.0.1:{p}\n"));
                std::fs::write(
                    dir.join("haproxy.cfg"),
                    format!(
                        "global\n  maxconn 8000\n  nbthread 2\n  stats socket {d}/admin.sock mode 600 level \
                         admin expose-fd listeners\n  hard-stop-after {LONG_LIVED_LIMIT_S}s\n\
                         defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server \
                          60s\n  timeout tunnel 1h\n\
                         frontend web\n  bind 127.0.0.1:{p1}\n  default_backend app\n\
                         backend app\n  balance roundrobin\n{servers}",
                        d = dir.display()
                    ),
                )
                .unwrap();
                let ok = haproxy(&dir, None).wait().expect("start haproxy");
                assert!(ok.success(), "haproxy did not start");
                // HAProxy detects the HTTP/2 preface on a clear bind line.
                (p1, p1)
            }
        };
        wait_port(h1).await;
        wait_port(h2).await;
        let mut r = Running {
            proxy,
            h1: SocketAddr::from(([127, 0, 0, 1], h1)),
            h2: SocketAddr::from(([127, 0, 0, 1], h2)),
            dir,
            children,
            pids: Vec::new(),
        };
        if proxy == Proxy::Haproxy {
            r.pids.extend(haproxy_pids(&r.dir));
        }
        if proxy == Proxy::Slipway {
            // Serving once router.json is there.
            for _ in 0..400 {
                if r.slipway_status().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            r.pids.push(r.slipway_status().expect("router status").pid);
        }
        r
    }

    fn slipway_status(&self) -> Option<wire::api::RouterStatus> {
        serde_json::from_slice(&std::fs::read(self.dir.join("state/router.json")).ok()?).ok()
    }

    /// One reload; returns how long the command took.
    async fn reload(&mut self) -> Duration {
        let t = Instant::now();
        match self.proxy {
            Proxy::Slipway => {
                let s = self.slipway_status().expect("router status");
                let token = std::fs::read_to_string(self.dir.join("state/admin.token")).unwrap();
                let api = plumbing::client::ApiClient::new(&s.admin, Some(token.trim().to_string()))
                    .unwrap()
                    .with_timeout(Duration::from_secs(20));
                let done: wire::api::Upgraded = api
                    .post("/v1/upgrade", &wire::api::UpgradeRequest::default())
                    .await
                    .expect("upgrade");
                self.pids.push(done.new_pid);
            }
            Proxy::Nginx => {
                let ok = quiet(
                    Command::new("nginx")
                        .arg("-c")
                        .arg(self.dir.join("nginx.conf"))
                        .arg("-p")
                        .arg(&self.dir),
                )
                .args(["-s", "reload"])
                .status()
                .expect("nginx -s reload");
                assert!(ok.success());
            }
            Proxy::Haproxy => {
                let old = haproxy_pids(&self.dir);
                let old: Vec<String> = old.iter().map(u32::to_string).collect();
                let ok = haproxy(&self.dir, Some(&old)).wait().expect("haproxy reload");
                assert!(ok.success(), "haproxy reload failed");
                self.pids.extend(haproxy_pids(&self.dir));
            }
        }
        t.elapsed()
    }

    fn stop(mut self) {
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::SIGKILL);
        }
        if self.proxy == Proxy::Nginx {
            // The master stops its workers (a SIGKILL would orphan them).
            let _ = quiet(
                Command::new("nginx")
                    .arg("-c")
                    .arg(self.dir.join("nginx.conf"))
                    .arg("-p")
                    .arg(&self.dir),
            )
            .args(["-s", "stop"])
            .status();
            for c in &mut self.children {
                for _ in 0..200 {
                    if c.try_wait().ok().flatten().is_some() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pids in HAProxy's pid file.
fn haproxy_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("haproxy.pid"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Starts HAProxy as a daemon (the command returns once it serves and wrote
/// its pid file); with `old`, as the replacement of those pids, taking
/// their listeners over the stats socket (`expose-fd listeners`).
fn haproxy(dir: &Path, old: Option<&[String]>) -> Child {
    let mut c = Command::new("haproxy");
    c.arg("-D")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .arg("-p")
        .arg(dir.join("haproxy.pid"));
    if let Some(old) = old {
        c.arg("-x").arg(dir.join("admin.sock")).arg("-sf").args(old);
    }
    quiet(&mut c).spawn().expect("start haproxy")
}

async fn scenario(
    proxy: Proxy,
    dir: &Path,
    upstreams: &[u16],
    reloads: usize,
    rate: f64,
    websockets: usize,
) -> Outcome {
    let mut p = Running::start(proxy, dir, upstreams).await;
    let mut h1 = LoadConfig::new(p.h1, rate);
    h1.users = 60;
    h1.keepalive_share = 0.5;
    h1.session_requests = Some(20);
    h1.websockets = websockets;
    let mut h2 = LoadConfig::new(p.h2, rate / 2.0);
    h2.users = 20;
    h2.keepalive_share = 0.5;
    h2.http2 = true;
    let l1 = Load::start(h1);
    let l2 = Load::start(h2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (b1, b2) = (l1.report(), l2.report());
    let mut reload_ms = Vec::new();
    for _ in 0..reloads {
        reload_ms.push(p.reload().await.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Long-lived connections of the last old process reach their limit.
    tokio::time::sleep(Duration::from_secs(LONG_LIVED_LIMIT_S + 3)).await;
    let r1 = l1.stop().await.since(&b1);
    let r2 = l2.stop().await.since(&b2);
    p.stop();
    Outcome {
        proxy,
        h1: r1,
        h2: r2,
        reload_ms,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (mut runs, mut reloads, mut rate, mut websockets) = (3usize, 10usize, 600.0, 100usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().and_then(|v| v.parse::<f64>().ok()).expect("a number");
        match a.as_str() {
            "--runs" => runs = val() as usize,
            "--reloads" => reloads = val() as usize,
            "--rate" => rate = val(),
            "--websockets" => websockets = val() as usize,
            _ => panic!("usage: router_upgrade [--runs N] [--reloads N] [--rate N] [--websockets N]"),
        }
    }
    let demo = testkit::profile_bin("demo-app");
    assert!(
        testkit::profile_bin("slipway").exists() && demo.exists(),
        "build first: cargo build --release -p slipway -p demo-app"
    );
    let mut proxies = vec![Proxy::Slipway];
    for (p, bin) in [(Proxy::Nginx, "nginx"), (Proxy::Haproxy, "haproxy")] {
        if Command::new(bin).arg("-v").output().is_ok() {
            proxies.push(p);
        } else {
            eprintln!("{bin} not installed: skipping it");
        }
    }
    let dir = std::env::temp_dir().join(format!("slipway-upgrade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ports = [testkit::free_port(), testkit::free_port()];
    let mut apps: Vec<Child> = ports
        .iter()
        .map(|p| {
            quiet(
                Command::new(&demo)
                    .env("PORT", p.to_string())
                    .env("SLIPWAY_RELEASE", "v1")
                    .env("DEMO_THREADS", "1"),
            )
            .spawn()
            .expect("start demo-app")
        })
        .collect();
    for p in ports {
        wait_port(p).await;
    }
    let mut all: Vec<Outcome> = Vec::new();
    for run in 1..=runs {
        for &p in &proxies {
            let o = scenario(p, &dir, &ports, reloads, rate, websockets).await;
            eprintln!(
                "run {run} {}: http/1.1 {} sent {} failed; http/2 {} sent {} failed ({} retried); ws dropped {} \
                 closed-1012 {}; reload median {:.0} ms; errors {:?} {:?}",
                p.name(),
                o.h1.sent,
                o.h1.failed,
                o.h2.sent,
                o.h2.failed,
                o.h2.retried,
                o.h1.ws_dropped,
                o.h1.ws_closed_1012,
                median(o.reload_ms.clone()),
                o.h1.errors,
                o.h2.errors
            );
            all.push(o);
        }
    }
    for a in &mut apps {
        let _ = a.kill();
        let _ = a.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\n{reloads} reloads, 2 s apart, under {rate:.0} HTTP/1.1 requests/s (half keep-alive) + {:.0} HTTP/2 \
         requests/s + {websockets} WebSockets; long-lived limit {LONG_LIVED_LIMIT_S} s; medians of {runs} runs\n",
        rate / 2.0
    );
    println!(
        "| proxy | HTTP/1.1 requests | failed | HTTP/2 requests | failed | HTTP/2 retried (refused unprocessed) \
         | WebSockets dropped | WebSockets closed with 1012 | reload command ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for &p in &proxies {
        let mine: Vec<&Outcome> = all.iter().filter(|o| o.proxy == p).collect();
        let m = |f: &dyn Fn(&Outcome) -> f64| median(mine.iter().map(|o| f(o)).collect());
        let row = serde_json::json!({
            "proxy": p.name(),
            "h1_sent": m(&|o| o.h1.sent as f64),
            "h1_failed": m(&|o| o.h1.failed as f64),
            "h2_sent": m(&|o| o.h2.sent as f64),
            "h2_failed": m(&|o| o.h2.failed as f64),
            "h2_retried": m(&|o| o.h2.retried as f64),
            "ws_dropped": m(&|o| o.h1.ws_dropped as f64),
            "ws_1012": m(&|o| o.h1.ws_closed_1012 as f64),
            "reload_ms": m(&|o| median(o.reload_ms.clone())),
            "runs_failed": mine.iter().map(|o| o.h1.failed + o.h2.failed).collect::<Vec<_>>(),
            "runs_ws_dropped": mine.iter().map(|o| o.h1.ws_dropped).collect::<Vec<_>>(),
        });
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            p.name(),
            row["h1_sent"],
            row["h1_failed"],
            row["h2_sent"],
            row["h2_failed"],
            row["h2_retried"],
            row["ws_dropped"],
            row["ws_1012"],
            row["reload_ms"].as_f64().unwrap_or(0.0)
        );
        json.push(row);
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/out");
    if std::fs::create_dir_all(&out).is_ok() {
        let _ = std::fs::write(
            out.join("router-upgrade.json"),
            serde_json::to_vec_pretty(&json).unwrap_or_default(),
        );
    }
}
