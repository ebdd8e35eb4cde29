//! Router self-upgrade with real processes, under HTTP/1.1, HTTP/2 and WebSocket load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plumbing::client::ApiClient;
use testkit::TempDir;
use wire::api::{RouterStatus, UpgradeRequest, Upgraded};

/// A router process tree: the first process, plus every pid that took over.
struct RouterProcs {
    dir: PathBuf,
    first: Child,
    pids: Vec<u32>,
}

impl Drop for RouterProcs {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::SIGKILL);
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

impl RouterProcs {
    fn status(&self) -> Option<RouterStatus> {
        let text = std::fs::read_to_string(self.dir.join("state/router.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn api(&self) -> ApiClient {
        let s = self.status().expect("router status");
        let token = std::fs::read_to_string(self.dir.join("state/admin.token")).unwrap();
        ApiClient::new(&s.admin, Some(token.trim().to_string()))
            .unwrap()
            .with_timeout(Duration::from_secs(30))
    }

    fn web(&self) -> SocketAddr {
        self.status().unwrap().listeners[0].addr.parse().unwrap()
    }

    async fn upgrade(&mut self) -> Upgraded {
        let done: Upgraded = self
            .api()
            .post("/v1/upgrade", &UpgradeRequest::default())
            .await
            .expect("upgrade succeeds");
        self.pids.push(done.new_pid);
        done
    }

    async fn put_routes(&self, routes: &wire::RouteTable) -> u64 {
        let applied: wire::api::Applied = self
            .api()
            .call(http::Method::PUT, "/v1/routes", Some(routes))
            .await
            .expect("routes applied");
        applied.generation
    }
}

/// Starts `slipway router` with one HTTP listener on port 0.
async fn start_router(dir: &TempDir, listener_drain: &str) -> RouterProcs {
    std::fs::write(
        dir.join("router.toml"),
        format!(
            r#"
state_dir = "state"
admin = {{ listen = "127.0.0.1:0" }}
health = {{ kind = "none" }}
[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"
drain_deadline = "{listener_drain}"
"#
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("router.log")).unwrap();
    let first = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["router", "--config"])
        .arg(dir.join("router.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = first.id();
    let procs = RouterProcs {
        dir: dir.path().to_path_buf(),
        first,
        pids: vec![pid],
    };
    testkit::wait_for("the router to serve", Duration::from_secs(20), || async {
        procs.status().filter(|s| s.pid == pid).map(|_| ())
    })
    .await;
    procs
}

fn table(releases: &[(&str, u32, &str, SocketAddr)]) -> wire::RouteTable {
    let mut t = wire::RouteTable::default();
    for (id, weight, state, addr) in releases {
        let mut r = wire::Release::new(id.to_string(), *weight);
        r.state = match *state {
            "down" => wire::RouteState::Down,
            "draining" => wire::RouteState::Draining,
            _ => wire::RouteState::Active,
        };
        r.drain_deadline = Some(wire::HumanDuration::from_secs(2));
        r.instances.push(wire::Instance {
            id: format!("{id}-0"),
            addr: addr.to_string(),
            state: wire::RouteState::Active,
        });
        t.releases.push(r);
    }
    t
}

async fn demo(release: &str) -> (SocketAddr, demo_app::LocalServer) {
    demo_app::spawn_local(demo_app::App::new(demo_app::Config::new(release)))
        .await
        .unwrap()
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("router.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_self_upgrades_under_http1_and_http2_load_fail_no_request() {
    let dir = TempDir::new("upgrade-load");
    let (a, _sa) = demo("v1").await;
    let (b, _sb) = demo("v1").await;
    let mut router = start_router(&dir, "5s").await;
    let mut t = table(&[("v1", 100, "active", a)]);
    t.releases[0].instances.push(wire::Instance {
        id: "v1-1".into(),
        addr: b.to_string(),
        state: wire::RouteState::Active,
    });
    let generation = router.put_routes(&t).await;
    let web = router.web();

    // Keep-alive and new connections over HTTP/1.1, and HTTP/2.
    let mut h1 = loadgen::LoadConfig::new(web, 300.0);
    h1.users = 30;
    h1.keepalive_share = 0.5;
    let mut h2 = loadgen::LoadConfig::new(web, 150.0);
    h2.users = 15;
    h2.keepalive_share = 0.5;
    h2.http2 = true;
    let load1 = loadgen::Load::start(h1);
    let load2 = loadgen::Load::start(h2);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut took = Vec::new();
    for i in 0..50 {
        let before = router.status().unwrap().pid;
        let done = router.upgrade().await;
        assert_eq!(done.old_pid, before, "upgrade {i}");
        assert_ne!(done.new_pid, before);
        assert_eq!(
            done.generation, generation,
            "the table (and its generation) is handed over"
        );
        took.push(done.took_ms);
        let s = router.status().unwrap();
        assert_eq!(s.pid, done.new_pid);
        assert_eq!(s.took_over_from, Some(before));
        // A short pause so each new router serves some requests itself.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r1 = load1.stop().await;
    let r2 = load2.stop().await;
    took.sort_unstable();
    eprintln!(
        "50 upgrades: median {} ms, max {} ms; http/1.1 {} sent {} failed {:?}; http/2 {} sent {} failed {} \
         retried {:?}",
        took[25], took[49], r1.sent, r1.failed, r1.errors, r2.sent, r2.failed, r2.retried, r2.errors
    );
    assert!(
        r1.sent > 2_500 && r2.sent > 1_200,
        "the load ran: {} {}",
        r1.sent,
        r2.sent
    );
    assert_eq!(
        r1.failed,
        0,
        "http/1.1 failures: {:?}\n{}",
        r1.errors,
        log_of(dir.path())
    );
    assert_eq!(r2.failed, 0, "http/2 failures: {:?}\n{}", r2.errors, log_of(dir.path()));
    assert_eq!(r1.ok, r1.sent);
    assert_eq!(r2.ok, r2.sent);

    // Every old process finished its connections and exited.
    let last = *router.pids.last().unwrap();
    let olds: Vec<u32> = router.pids[..router.pids.len() - 1].to_vec();
    testkit::wait_for("old routers to exit", Duration::from_secs(20), || async {
        olds.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    assert!(alive(last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_ride_through_route_changes_and_upgrades_and_reconnect_to_the_new_release() {
    let dir = TempDir::new("upgrade-ws");
    let (v1, _s1) = demo("v1").await;
    let (v2, _s2) = demo("v2").await;
    let mut router = start_router(&dir, "1s").await;
    router
        .put_routes(&table(&[("v1", 100, "active", v1), ("v2", 0, "active", v2)]))
        .await;
    let web = router.web();

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let s = demo_app::ws_client::ReconnectingWs::new(web, Duration::from_millis(500));
        logs.push(s.log());
        tasks.push(tokio::spawn(s.run(stop_rx.clone())));
    }
    let connects = |logs: &[Arc<std::sync::Mutex<demo_app::ws_client::SessionLog>>]| -> Vec<usize> {
        logs.iter().map(|l| l.lock().unwrap().connects.len()).collect()
    };
    testkit::wait_for("100 sessions on v1", Duration::from_secs(20), || async {
        connects(&logs).iter().all(|n| *n == 1).then_some(())
    })
    .await;
    for l in &logs {
        assert_eq!(l.lock().unwrap().release(), Some("v1"));
    }

    // 19 route changes that keep v1 routable (new sessions shift between
    // releases), with 5 self-upgrades among them.
    let mut upgrades = 0;
    for change in 1..=19u32 {
        let w2 = (change * 5) % 60;
        router
            .put_routes(&table(&[("v1", 100 - w2, "active", v1), ("v2", w2, "active", v2)]))
            .await;
        if change % 4 == 0 || change == 19 {
            upgrades += 1;
            let before = connects(&logs);
            let at = Instant::now();
            router.upgrade().await;
            // Each session is held by the old process until the listener
            // deadline (1 s), then gets 1012 and comes back, still on v1.
            testkit::wait_for("every session to reconnect", Duration::from_secs(20), || async {
                connects(&logs)
                    .iter()
                    .zip(&before)
                    .all(|(now, was)| now > was)
                    .then_some(())
            })
            .await;
            for l in &logs {
                let l = l.lock().unwrap();
                let (closed_at, code, _) = l.closes.last().cloned().unwrap();
                assert_eq!(code, 1012);
                let after = closed_at.duration_since(at);
                assert!(
                    after >= Duration::from_secs(1) && after < Duration::from_secs(6),
                    "1012 came {after:?} after the upgrade began; the listener deadline is 1 s"
                );
                assert_eq!(l.release(), Some("v1"), "a v1 session stays on v1 while v1 is routable");
            }
        }
    }
    assert_eq!(upgrades, 5);

    // Change 20: v1 goes down with a 2 s drain deadline. Its sessions stay
    // until then, get 1012, and reconnect to v2.
    let before = connects(&logs);
    let down_at = Instant::now();
    router
        .put_routes(&table(&[("v1", 0, "down", v1), ("v2", 100, "active", v2)]))
        .await;
    testkit::wait_for("every session on v2", Duration::from_secs(20), || async {
        logs.iter()
            .all(|l| l.lock().unwrap().release() == Some("v2"))
            .then_some(())
    })
    .await;
    for (l, was) in logs.iter().zip(&before) {
        let l = l.lock().unwrap();
        assert_eq!(l.connects.len(), was + 1, "one reconnect each");
        let (closed_at, code, reason) = l.closes.last().cloned().unwrap();
        assert_eq!(code, 1012, "{reason}");
        assert!(
            closed_at.duration_since(down_at) >= Duration::from_secs(2),
            "a v1 session was cut before its release's drain deadline"
        );
        assert!(l.errors.is_empty(), "session errors: {:?}", l.errors);
        assert!(l.echoes > 0);
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    for l in &logs {
        let l = l.lock().unwrap();
        assert!(l.errors.is_empty(), "session errors: {:?}", l.errors);
        assert_eq!(
            l.closes.len(),
            6,
            "five upgrades and one drain, nothing else: {:?}",
            l.closes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_router_serving_and_says_why() {
    let dir = TempDir::new("upgrade-fail");
    let (v1, _s1) = demo("v1").await;
    let mut router = start_router(&dir, "5s").await;
    router.put_routes(&table(&[("v1", 100, "active", v1)])).await;
    let web = router.web();
    let pid = router.status().unwrap().pid;
    let serves = || async {
        let r = testkit::get(web, "/", &[]).await.expect("the old router still serves");
        assert_eq!(r.text(), "v1");
    };
    let hang = dir.join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 30\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cases: Vec<(Option<PathBuf>, &str, u16, &str)> = vec![
        (
            Some("/nonexistent/slipway".into()),
            "1s",
            422,
            "new binary /nonexistent/slipway",
        ),
        (
            Some("/bin/false".into()),
            "5s",
            502,
            "exited with exit status: 1 before it was ready",
        ),
        (Some(hang.clone()), "1s", 502, "did not report ready within 1s"),
    ];
    for (binary, timeout, status, says) in cases {
        let req = UpgradeRequest {
            binary,
            timeout: Some(timeout.parse().unwrap()),
        };
        let body = serde_json::to_vec(&req).unwrap();
        let (code, answer) = router
            .api()
            .raw(http::Method::POST, "/v1/upgrade", body.into())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&answer).to_string();
        assert_eq!(code.as_u16(), status, "{text}");
        assert!(text.contains(says) && text.contains("keeps serving"), "{text}");
        assert_eq!(router.status().unwrap().pid, pid);
        serves().await;
    }
    // The hanging binary was stopped, not left behind.
    let out = Command::new("pgrep")
        .args(["-f", &hang.display().to_string()])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "the timed-out process is still there");

    // A config the new process cannot use: the old one keeps serving and
    // the answer carries the new process's reason. The CLI checks the config
    // first and does not touch the router.
    let good = std::fs::read_to_string(dir.join("router.toml")).unwrap();
    std::fs::write(dir.join("router.toml"), format!("{good}\nbogus_key = 1\n")).unwrap();
    let (code, answer) = router
        .api()
        .raw(http::Method::POST, "/v1/upgrade", Vec::new().into())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    assert_eq!(code.as_u16(), 502, "{text}");
    assert!(
        text.contains("could not take over") && text.contains("bogus_key"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["router", "upgrade", "--config"])
        .arg(dir.join("router.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr.contains("bogus_key") && stderr.contains("not touched"),
        "{stderr}"
    );
    assert_eq!(router.status().unwrap().pid, pid);
    serves().await;
    std::fs::write(dir.join("router.toml"), &good).unwrap();

    // The CLI, then SIGUSR2.
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["router", "upgrade", "--config"])
        .arg(dir.join("router.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("router upgraded: pid {pid} -> pid")),
        "{stdout}"
    );
    let second = router.status().unwrap().pid;
    router.pids.push(second);
    assert_ne!(second, pid);
    serves().await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second as i32), nix::sys::signal::SIGUSR2).unwrap();
    let third = testkit::wait_for("SIGUSR2 to upgrade the router", Duration::from_secs(20), || async {
        router.status().map(|s| s.pid).filter(|p| *p != second)
    })
    .await;
    router.pids.push(third);
    serves().await;
    testkit::wait_for("the replaced routers to exit", Duration::from_secs(20), || async {
        (!alive(pid) && !alive(second)).then_some(())
    })
    .await;
}

/// Starts `slipway router` the way systemd socket activation does: the
/// listening socket as fd 3 with LISTEN_FDS=1 and LISTEN_PID set.
fn start_activated(dir: &TempDir, listener: &std::net::TcpListener) -> tokio::process::Child {
    agent::spawn_instance(agent::Launch {
        program: PathBuf::from(env!("CARGO_BIN_EXE_slipway")),
        args: vec![
            "router".into(),
            "--config".into(),
            dir.join("router.toml").display().to_string(),
        ],
        env: Default::default(),
        cwd: dir.path().to_path_buf(),
        log_file: dir.join("router.log"),
        listen_fd: Some(listener.try_clone().unwrap()),
        stamper: None,
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_socket_activation_a_crashed_router_restarts_from_its_table_and_queued_clients_are_served() {
    let dir = TempDir::new("upgrade-activation");
    let (v1, _s1) = demo("v1").await;
    // The socket systemd would hold across restarts of the service.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let web = socket.local_addr().unwrap();
    std::fs::write(
        dir.join("router.toml"),
        format!(
            r#"
state_dir = "state"
admin = {{ listen = "127.0.0.1:0" }}
health = {{ kind = "none" }}
[[listener]]
name = "web"
kind = "http"
addr = "{web}"
"#
        ),
    )
    .unwrap();
    let mut first = start_activated(&dir, &socket);
    let first_pid = first.id().unwrap();
    let procs = RouterProcs {
        dir: dir.path().to_path_buf(),
        first: Command::new("true").spawn().unwrap(),
        pids: vec![first_pid],
    };
    testkit::wait_for("the activated router to serve", Duration::from_secs(20), || async {
        procs.status().filter(|s| s.pid == first_pid).map(|_| ())
    })
    .await;
    assert_eq!(procs.web(), web, "it serves the socket it was given");
    procs.put_routes(&table(&[("v1", 100, "active", v1)])).await;
    assert_eq!(testkit::get(web, "/", &[]).await.unwrap().text(), "v1");

    // Crash. The socket stays open (systemd holds it), so a client that
    // connects now waits in the accept queue instead of being refused.
    first.kill().await.unwrap();
    let _ = first.wait().await;
    let waiting = tokio::spawn(async move { testkit::get(web, "/", &[]).await.map(|r| r.text()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = start_activated(&dir, &socket);
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the queued client is answered")
        .unwrap()
        .expect("no error");
    assert_eq!(answer, "v1", "the restarted router serves its saved table");
    let _ = second.kill().await;
    drop(procs);
}
