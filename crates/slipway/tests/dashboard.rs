//! The web dashboard in a real Chromium (Debian's `chromium` and `chromium-driver`, driven over raw WebDriver HTTP)
//! against a real service (`slipway up` with the demo app under load): login, redirects, refused API calls, a canary
//! deploy followed live, a bad canary's abort, the pause/resume/abort buttons, no JavaScript console error, and
//! screenshots of every page at desktop and phone width under `target/dashboard-screenshots/`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

mod webdriver;

use bytes::Bytes;
use plumbing::client::ApiClient;
use serde_json::json;
use testkit::TempDir;
use webdriver::Browser;
use wire::service::{DeployInfo, DeployPhase};

fn slipway(dir: &TempDir, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "slipway {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The service under test: `slipway up`, v1 deployed, load running.
struct Service {
    dir: TempDir,
    cfg: control::ServiceConfig,
    api: ApiClient,
    dashboard: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .current_dir(self.dir.path())
            .arg("down")
            .output();
    }
}

fn service() -> Service {
    let dir = TempDir::new("dash-browser");
    let mut t = testkit::ServiceToml::new("shop", &testkit::workspace_bin("demo-app"));
    t.count = 2;
    t.hold = "2s".into();
    std::fs::write(dir.join("slipway.toml"), t.render()).unwrap();
    for (id, manifest) in [
        ("v1", ""),
        ("v2", ""),
        ("v3", "[start.env]\nDEMO_ERROR_RATE = \"0.5\"\n"),
        ("v4", ""),
    ] {
        let src = dir.join(format!("src-{id}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("slipway.release.toml"), manifest).unwrap();
        slipway(
            &dir,
            &["release", "add", &format!("src-{id}"), "--id", id, "--root", "state"],
        );
    }
    slipway(&dir, &["up"]);
    let cfg = control::ServiceConfig::load(&dir.join("slipway.toml")).unwrap();
    let running = control::control_running(&cfg).unwrap();
    let token = std::fs::read_to_string(cfg.layout.control_token()).unwrap();
    let api = ApiClient::new(&running.addr, Some(token.trim().to_string())).unwrap();
    let dashboard = format!(
        "http://{}",
        control::dashboard_running(&cfg).expect("dashboard runs").addr
    );
    // Built before anything else can fail, so `slipway down` runs whatever happens next.
    let s = Service {
        dir,
        cfg,
        api,
        dashboard,
    };
    slipway(&s.dir, &["deploy", "v1"]);
    s
}

impl Service {
    fn web(&self) -> SocketAddr {
        let st: wire::api::RouterStatus =
            serde_json::from_slice(&std::fs::read(self.cfg.layout.router_status()).unwrap()).unwrap();
        st.listeners[0].addr.parse().unwrap()
    }

    async fn deploy(&self, release: &str) -> i64 {
        let req = wire::service::DeployRequest {
            release: release.into(),
            strategy: None,
            template: None,
        };
        let d: DeployInfo = self.api.post("/v1/deploys", &req).await.unwrap();
        d.id
    }

    async fn info(&self, id: i64) -> DeployInfo {
        self.api.get(&format!("/v1/deploys/{id}")).await.unwrap()
    }
}

/// Follows deploy `id` on the control plane and checks that the page shows each new weight within 1 s.
async fn follow_weights(b: &Browser, s: &Service, id: i64) -> (DeployInfo, Vec<u32>) {
    let mut shown = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let d = s.info(id).await;
        if shown.last() != Some(&d.canary_weight) && d.phase == DeployPhase::Step {
            let w = d.canary_weight;
            let took = b
                .until(
                    &format!("weight {w}"),
                    Duration::from_secs(1),
                    &format!("return document.getElementById('weight')?.dataset.weight === '{w}'"),
                )
                .await;
            eprintln!("weight {w}% on the page {took:?} after the control plane's change was seen");
            shown.push(w);
        }
        if d.finished() {
            return (d, shown);
        }
        assert!(Instant::now() < deadline, "deploy {id} did not end: {d:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn confirm(b: &Browser, action: &str) {
    b.click(&format!("#btn-{action}")).await;
    b.until(
        "the confirmation",
        Duration::from_secs(2),
        "return !document.getElementById('confirm').hidden",
    )
    .await;
    b.click("#confirm-yes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium_follows_deploys_live_and_its_buttons_work() {
    let s = tokio::task::spawn_blocking(service).await.unwrap();
    let load = loadgen::Load::start({
        let mut c = loadgen::LoadConfig::new(s.web(), 150.0);
        c.users = 20;
        c.session_requests = Some(5);
        c
    });
    let b = Browser::start().await;
    // No cookie: every page sends the browser to the login.
    b.go(&format!("{}/deploy", s.dashboard)).await;
    assert!(b.url().await.ends_with("/login"), "{}", b.url().await);
    // The API refuses a write without a session, and with a session but a forged CSRF token.
    let addr: SocketAddr = s.dashboard.trim_start_matches("http://").parse().unwrap();
    let mut c = testkit::Client::connect(addr).await.unwrap();
    let r = c.send("POST", "/api/deploy/pause", &[], Bytes::new()).await.unwrap();
    assert_eq!(r.status, 401);
    let link = slipway(&s.dir, &["dashboard", "--no-open"]);
    let link = link.lines().next().unwrap().trim();
    b.go(link).await;
    b.until(
        "the service page",
        Duration::from_secs(5),
        "return document.querySelector('h1')?.textContent === 'shop'",
    )
    .await;
    let forged = b
        .js(
            "const x = new XMLHttpRequest(); x.open('POST', '/api/deploy/pause', false); \
             x.setRequestHeader('x-csrf-token', 'forged'); x.send(); return x.status;",
        )
        .await;
    assert_eq!(forged, 403);
    b.go(link).await;
    b.until(
        "the refused reused link",
        Duration::from_secs(5),
        "return !!document.getElementById('login-error')",
    )
    .await;
    // The console has the two refusals asked for above, and nothing else (reading the log empties it).
    let expected = b.console_errors().await;
    assert_eq!(expected.len(), 2, "{expected:?}");
    assert!(
        expected[0].contains("403") && expected[1].contains("401"),
        "{expected:?}"
    );
    b.go(&format!("{}/", s.dashboard)).await;
    assert!(!b.url().await.ends_with("/login"), "the session still works");
    b.until(
        "request-rate sparklines with points",
        Duration::from_secs(5),
        "return [...document.querySelectorAll('#svc-rates svg.spark path')].some(p => +p.dataset.points > 2)",
    )
    .await;
    b.screenshot("service").await;

    // A canary deploy, followed live.
    let id = s.deploy("v2").await;
    b.go(&format!("{}/deploy/{id}", s.dashboard)).await;
    let (done, shown) = follow_weights(&b, &s, id).await;
    assert_eq!(done.phase, DeployPhase::Done, "{done:?}");
    assert_eq!(shown, [10, 50], "each step's weight was shown");
    b.until(
        "plots with points",
        Duration::from_secs(2),
        "return [...document.querySelectorAll('#dep-plots path.line')].filter(p => +p.dataset.points > 1).length >= 2",
    )
    .await;
    let reason = done.verdicts.last().expect("the steps' verdicts").reason.clone();
    let script = format!(
        "return document.getElementById('decisions').textContent.includes({})",
        json!(reason)
    );
    b.until("the verdict's reason", Duration::from_secs(2), &script).await;
    b.screenshot("deploy").await;

    // A bad canary: the abort and its reason.
    let id = s.deploy("v3").await;
    b.go(&format!("{}/deploy/{id}", s.dashboard)).await;
    let (bad, _) = follow_weights(&b, &s, id).await;
    assert_eq!(bad.phase, DeployPhase::Aborted, "{bad:?}");
    let outcome = bad.outcome.clone().unwrap();
    let script = format!(
        "return document.getElementById('phase').textContent === 'aborted' && \
         document.getElementById('outcome')?.textContent === {}",
        json!(outcome)
    );
    b.until("the abort and its reason", Duration::from_secs(2), &script)
        .await;
    b.screenshot("deploy-aborted").await;

    // Pause, resume, abort from the buttons.
    let id = s.deploy("v4").await;
    b.go(&format!("{}/deploy/{id}", s.dashboard)).await;
    b.until(
        "the pause button",
        Duration::from_secs(10),
        "return !!document.getElementById('btn-pause')",
    )
    .await;
    confirm(&b, "pause").await;
    b.until(
        "paused",
        Duration::from_secs(3),
        "return !!document.getElementById('paused')",
    )
    .await;
    assert!(s.info(id).await.paused, "the control plane paused");
    confirm(&b, "resume").await;
    b.until(
        "resumed",
        Duration::from_secs(3),
        "return !!document.getElementById('btn-pause')",
    )
    .await;
    assert!(!s.info(id).await.paused);
    confirm(&b, "abort").await;
    b.until(
        "aborted by the button",
        Duration::from_secs(5),
        "return document.getElementById('outcome')?.textContent === 'aborted from the dashboard'",
    )
    .await;
    assert_eq!(s.info(id).await.outcome.as_deref(), Some("aborted from the dashboard"));

    // The other pages.
    for (name, path, ready) in [
        (
            "history",
            "/history",
            "return document.querySelectorAll('table.history tbody tr').length >= 4",
        ),
        (
            "logs",
            "/logs",
            "return document.querySelectorAll('.pick a').length >= 1",
        ),
        (
            "data",
            "/data",
            "return ['data-note', 'data-kinds', 'data-crawls', 'data-gates', 'data-ledger']\
                .every(i => document.getElementById(i))",
        ),
    ] {
        b.go(&format!("{}{path}", s.dashboard)).await;
        b.until(name, Duration::from_secs(3), ready).await;
        b.screenshot(name).await;
    }
    b.go(&format!("{}/logs", s.dashboard)).await;
    b.click(".pick a").await;
    b.until(
        "a live log",
        Duration::from_secs(5),
        "return document.getElementById('log')?.textContent.length > 0",
    )
    .await;
    b.screenshot("logs-instance").await;
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "JavaScript console errors: {errors:?}");
    load.stop().await;
}
