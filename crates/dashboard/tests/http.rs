//! The dashboard over real HTTP with an in-memory backend: every bad login, cookie and CSRF token gets its answer,
//! pages redirect to the login, commands reach the backend, and a change reaches an open page by server-sent events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use dashboard::{
    Action, Backend, CommandFuture, CrawlPhase, CrawlView, DataStatus, KindCounts, LedgerStep, StepPhase, StepState,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use wire::judge::JudgeConfig;
use wire::service::{DataSection, DeployInfo, DeployPhase, ServiceStatus, Strategy};

const TOKEN: &str = "the-admin-token";

struct Fake {
    deploy: Mutex<DeployInfo>,
    commands: Mutex<Vec<(Action, Option<String>)>>,
    ticks: watch::Sender<u64>,
    log: PathBuf,
    data: Mutex<DataStatus>,
}

/// Players half way from v1 to v2 (a crawl at 25/s with 30 s to go), a gate at v1, one migration done, one waiting.
fn data() -> DataStatus {
    DataStatus {
        kinds: vec![KindCounts {
            kind: "player".into(),
            gate: Some(1),
            readers: vec![("v1".into(), 1), ("v2".into(), 2)],
            versions: vec![(1, 750), (2, 250)],
        }],
        crawls: vec![CrawlView {
            kind: "player".into(),
            target: 2,
            phase: CrawlPhase::Running,
            pause_requested: false,
            total: 1000,
            scanned: 250,
            upgraded: 240,
            skipped_leased: 7,
            conflicts: 3,
            failed: 0,
            started_ms: 1_000,
            updated_ms: 11_000,
            finished_ms: None,
        }],
        ledger: vec![
            LedgerStep {
                migration: "001_email".into(),
                step: 1,
                phase: StepPhase::Expand,
                state: StepState::Done,
                blocked_by: vec![],
            },
            LedgerStep {
                migration: "001_email".into(),
                step: 2,
                phase: StepPhase::Contract,
                state: StepState::Pending,
                blocked_by: vec!["v1 uses users.mail".into()],
            },
        ],
        problems: vec![],
    }
}

fn deploy() -> DeployInfo {
    DeployInfo {
        id: 7,
        release: "v2".into(),
        from: Some("v1".into()),
        strategy: Strategy::Canary,
        phase: DeployPhase::Step,
        paused: false,
        detail: "step 1 of 2".into(),
        progress: 0.2,
        step: Some(0),
        steps: 2,
        canary_weight: 10,
        started_ms: 0,
        finished_ms: None,
        outcome: None,
        groups: vec![],
        last_verdict: None,
        verdicts: vec![],
        events: vec!["+0s deploy 7 started".into()],
        changes: vec![],
    }
}

impl Backend for Fake {
    fn token(&self) -> String {
        TOKEN.into()
    }
    fn status(&self) -> ServiceStatus {
        ServiceStatus {
            service: "shop".into(),
            current: Some("v1".into()),
            previous: None,
            deploy: Some(self.deploy.lock().unwrap().clone()),
            router: None,
            instances: vec![],
            routes: None,
            data: None,
            held: None,
            restarts: Default::default(),
        }
    }
    fn history(&self, _: usize) -> Vec<DeployInfo> {
        vec![self.deploy.lock().unwrap().clone()]
    }
    fn deploy(&self, id: i64) -> Option<DeployInfo> {
        Some(self.deploy.lock().unwrap().clone()).filter(|d| d.id == id)
    }
    fn judge_config(&self) -> JudgeConfig {
        JudgeConfig::default()
    }
    fn data_settings(&self) -> DataSection {
        DataSection::default()
    }
    fn data(&self) -> DataStatus {
        self.data.lock().unwrap().clone()
    }
    fn log_file(&self, instance: &str) -> Option<PathBuf> {
        (instance == "v1-0").then(|| self.log.clone())
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.ticks.subscribe()
    }
    fn command(&self, action: Action, reason: Option<String>) -> CommandFuture<'_> {
        self.commands.lock().unwrap().push((action, reason));
        Box::pin(async move {
            if action == Action::Rollback {
                Err("no previous release".into())
            } else {
                Ok(())
            }
        })
    }
}

struct Up {
    addr: SocketAddr,
    fake: Arc<Fake>,
    _stop: watch::Sender<bool>,
    _dir: testkit::TempDir,
}

async fn up() -> Up {
    let dir = testkit::TempDir::new("dash-http");
    let log = dir.join("output.log");
    std::fs::write(&log, "first line\n").unwrap();
    let fake = Arc::new(Fake {
        deploy: Mutex::new(deploy()),
        commands: Mutex::new(vec![]),
        ticks: watch::channel(0).0,
        log,
        data: Mutex::new(data()),
    });
    let (stop, rx) = watch::channel(false);
    let (addr, _) = dashboard::serve(([127, 0, 0, 1], 0).into(), fake.clone(), rx)
        .await
        .unwrap();
    Up {
        addr,
        fake,
        _stop: stop,
        _dir: dir,
    }
}

async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> testkit::Reply {
    let mut c = testkit::Client::connect(addr).await.unwrap();
    c.send(method, path, headers, Bytes::from(body.to_string()))
        .await
        .unwrap()
}

/// Logs in with the token: `(cookie header value, csrf token)`.
async fn login(addr: SocketAddr) -> (String, String) {
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = send(addr, "POST", "/login", &form, &format!("token={TOKEN}")).await;
    assert_eq!(r.status, 303);
    let set = r.header("set-cookie").unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let page = send(addr, "GET", "/", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    let text = page.text();
    let csrf = text
        .split("<meta name=\"csrf\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    (cookie, csrf.to_string())
}

#[tokio::test]
async fn pages_without_a_valid_cookie_redirect_to_the_login() {
    let u = up().await;
    for path in ["/", "/deploy", "/deploy/7", "/history", "/logs", "/data"] {
        let r = send(u.addr, "GET", path, &[], "").await;
        assert_eq!(
            (r.status.as_u16(), r.header("location")),
            (303, Some("/login")),
            "{path}"
        );
        let forged = send(u.addr, "GET", path, &[("cookie", "slipway_session=forged")], "").await;
        assert_eq!(forged.header("location"), Some("/login"), "{path} with a forged cookie");
    }
    let r = send(u.addr, "GET", "/login", &[], "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    let (cookie, _) = login(u.addr).await;
    let r = send(u.addr, "GET", "/deploy/7", &[("cookie", &cookie)], "").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("data-weight=\"10\""));
}

#[tokio::test]
async fn a_wrong_token_opens_no_session() {
    let u = up().await;
    for body in [
        "token=wrong",
        "token=",
        "",
        "tok=the-admin-token",
        "token=the-admin-token0",
    ] {
        let r = send(u.addr, "POST", "/login", &[], body).await;
        assert_eq!(r.status, 401, "{body}");
        assert!(r.header("set-cookie").is_none(), "{body}");
    }
}

#[tokio::test]
async fn the_api_refuses_no_cookie_a_forged_cookie_and_a_missing_or_forged_csrf_token() {
    let u = up().await;
    let (cookie, csrf) = login(u.addr).await;
    let cases: [(&[(&str, &str)], u16); 5] = [
        (&[], 401),
        (&[("cookie", "slipway_session=forged"), ("x-csrf-token", &csrf)], 401),
        (&[("cookie", &cookie)], 403),
        (&[("cookie", &cookie), ("x-csrf-token", "forged")], 403),
        (&[("cookie", &cookie), ("x-csrf-token", "")], 403),
    ];
    for (headers, want) in cases {
        let r = send(u.addr, "POST", "/api/deploy/pause", headers, "").await;
        assert_eq!(r.status.as_u16(), want, "{headers:?}: {}", r.text());
    }
    assert!(
        u.fake.commands.lock().unwrap().is_empty(),
        "nothing refused reached the control plane"
    );
    let ok = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    assert_eq!(send(u.addr, "POST", "/api/deploy/pause", &ok, "").await.status, 200);
    let r = send(u.addr, "POST", "/api/deploy/abort", &ok, r#"{"reason":"looks bad"}"#).await;
    assert_eq!(r.status, 200);
    let r = send(u.addr, "POST", "/api/deploy/rollback", &ok, "").await;
    assert_eq!(r.status, 409, "a refusal comes back with its reason");
    assert!(r.text().contains("no previous release"));
    assert_eq!(send(u.addr, "POST", "/api/deploy/deploy", &ok, "").await.status, 404);
    let got = u.fake.commands.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            (Action::Pause, None),
            (Action::Abort, Some("looks bad".into())),
            (Action::Rollback, None)
        ]
    );
    // Events need the session too.
    assert_eq!(
        send(u.addr, "GET", "/events?page=deploy&id=7", &[], "").await.status,
        401
    );
}

#[tokio::test]
async fn a_one_time_link_logs_in_once() {
    let u = up().await;
    let r = send(u.addr, "POST", "/api/login-link", &[], "").await;
    assert_eq!(r.status, 401, "the link needs the admin token");
    let r = send(
        u.addr,
        "POST",
        "/api/login-link",
        &[("authorization", "Bearer nope")],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    let auth = format!("Bearer {TOKEN}");
    let r = send(u.addr, "POST", "/api/login-link", &[("authorization", &auth)], "").await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let path = v["path"].as_str().unwrap().to_string();
    let first = send(u.addr, "GET", &path, &[], "").await;
    assert_eq!(first.status, 303);
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(send(u.addr, "GET", "/", &[("cookie", &cookie)], "").await.status, 200);
    let again = send(u.addr, "GET", &path, &[], "").await;
    assert_eq!(again.status, 401, "a reused link");
    assert!(again.header("set-cookie").is_none());
    assert_eq!(
        send(u.addr, "GET", "/login/once?code=made-up", &[], "").await.status,
        401
    );
    assert_eq!(send(u.addr, "GET", "/login/once", &[], "").await.status, 401);
}

#[tokio::test]
async fn logout_needs_the_csrf_token_and_ends_the_session() {
    let u = up().await;
    let (cookie, csrf) = login(u.addr).await;
    let r = send(u.addr, "POST", "/logout", &[("cookie", &cookie)], "csrf=forged").await;
    assert_eq!(r.status, 403);
    assert_eq!(send(u.addr, "GET", "/", &[("cookie", &cookie)], "").await.status, 200);
    let r = send(
        u.addr,
        "POST",
        "/logout",
        &[("cookie", &cookie)],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 303);
    assert_eq!(send(u.addr, "GET", "/", &[("cookie", &cookie)], "").await.status, 303);
}

/// Reads an SSE stream until `want` appears.
async fn read_until(s: &mut tokio::net::TcpStream, buf: &mut String, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !buf.contains(want) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} within 5 s; got {buf}"))
            .unwrap();
        assert!(n > 0, "stream closed; got {buf}");
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}

#[tokio::test]
async fn a_change_reaches_an_open_deploy_page_with_only_the_sections_that_changed() {
    let u = up().await;
    let (cookie, _) = login(u.addr).await;
    let mut s = tokio::net::TcpStream::connect(u.addr).await.unwrap();
    let req = format!("GET /events?page=deploy&id=7 HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    read_until(&mut s, &mut buf, "dep-events").await;
    assert!(buf.contains("text/event-stream"), "{buf}");
    buf.clear();
    {
        let mut d = u.fake.deploy.lock().unwrap();
        d.canary_weight = 25;
        d.step = Some(1);
    }
    u.fake.ticks.send_modify(|n| *n += 1);
    read_until(&mut s, &mut buf, "data-weight=\\\"25\\\"").await;
    assert!(
        !buf.contains("dep-events"),
        "unchanged sections are not sent again: {buf}"
    );
}

#[tokio::test]
async fn the_data_page_shows_records_per_version_the_crawl_with_its_eta_the_gates_and_the_ledger() {
    let u = up().await;
    let (cookie, _) = login(u.addr).await;
    let r = send(u.addr, "GET", "/data", &[("cookie", &cookie)], "").await;
    assert_eq!(r.status, 200);
    let t = r.text();
    for want in [
        concat!(
            r#"<span data-kind="player" data-version="1">v1</span></td>"#,
            r#"<td><span data-count="750">750</span></td><td>75.0%"#
        ),
        concat!(
            r#"<span data-kind="player" data-version="2">v2</span></td>"#,
            r#"<td><span data-count="250">250</span></td><td>25.0%"#
        ),
        r#"<progress max="1000" value="250"></progress> 250/1000"#,
        "240 upgraded, 7 leased, 3 conflicts, 0 failed",
        "<td>25/s</td>",
        r#"<span class="eta">30s</span>"#,
        r#"<span data-gate="1">v1</span></td><td>v1 reads v1, v2 reads v2"#,
        r#"<td>001_email</td><td>1</td><td>expand</td><td><span class="step-done">done</span></td>"#,
        concat!(
            r#"<td>001_email</td><td>2</td><td>contract</td>"#,
            r#"<td><span class="step-pending">pending</span></td><td>v1 uses users.mail"#
        ),
        "[data]",
    ] {
        assert!(t.contains(want), "no {want:?} in {t}");
    }
}

#[tokio::test]
async fn a_crawl_step_reaches_an_open_data_page_with_only_the_sections_that_changed() {
    let u = up().await;
    let (cookie, _) = login(u.addr).await;
    let mut s = tokio::net::TcpStream::connect(u.addr).await.unwrap();
    let req = format!("GET /events?page=data HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    read_until(&mut s, &mut buf, "data-ledger").await;
    buf.clear();
    {
        let mut d = u.fake.data.lock().unwrap();
        d.crawls[0].phase = CrawlPhase::Done;
        d.crawls[0].scanned = 1000;
        d.kinds[0].versions = vec![(2, 1000)];
    }
    u.fake.ticks.send_modify(|n| *n += 1);
    read_until(&mut s, &mut buf, "data-count=\\\"1000\\\"").await;
    read_until(&mut s, &mut buf, "crawl-done").await;
    assert!(
        !buf.contains("data-ledger") && !buf.contains("data-gates"),
        "unchanged sections are not sent again: {buf}"
    );
}

#[tokio::test]
async fn the_log_page_follows_the_instance_log() {
    let u = up().await;
    let (cookie, _) = login(u.addr).await;
    assert_eq!(
        send(u.addr, "GET", "/events/log?instance=nope", &[("cookie", &cookie)], "")
            .await
            .status,
        404
    );
    let mut s = tokio::net::TcpStream::connect(u.addr).await.unwrap();
    let req = format!("GET /events/log?instance=v1-0 HTTP/1.1\r\nhost: x\r\ncookie: {cookie}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    read_until(&mut s, &mut buf, "first line").await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&u.fake.log).unwrap();
    std::io::Write::write_all(&mut f, b"second line\r\n").unwrap();
    read_until(&mut s, &mut buf, "second line").await;
}

#[tokio::test]
async fn assets_are_embedded_and_unknown_paths_are_404() {
    let u = up().await;
    let js = send(u.addr, "GET", "/assets/app.js", &[], "").await;
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").unwrap().starts_with("text/javascript"));
    assert!(js.text().contains("EventSource"));
    assert_eq!(send(u.addr, "GET", "/assets/style.css", &[], "").await.status, 200);
    assert_eq!(send(u.addr, "GET", "/nope", &[], "").await.status, 404);
}
