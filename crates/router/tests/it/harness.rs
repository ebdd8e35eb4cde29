//! Starts a router on port 0 with a temp state folder, demo apps to route to, and an admin client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use router::RunningRouter;
use testkit::{Client, Reply, TempDir};
use wire::api::DrainStatus;
use wire::metrics::MetricsSnapshot;
use wire::router_config::RouterConfigFile;
use wire::{Release, RouteDiff, RouteTable};

pub struct Harness {
    pub router: Option<RunningRouter>,
    pub dir: TempDir,
    pub web: SocketAddr,
    pub admin: SocketAddr,
    pub token: String,
}

/// Router config used by tests: one HTTP listener "web", admin on loopback,
/// no active health checks unless `extra` sets them.
pub fn config_text(dir: &TempDir, extra: &str) -> String {
    format!(
        r#"
state_dir = "{}"
admin = {{ listen = "127.0.0.1:0" }}
health = {{ kind = "none" }}
{extra}
[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"
"#,
        dir.join("state").display()
    )
}

impl Harness {
    pub async fn start(extra: &str) -> Harness {
        let dir = TempDir::new("router");
        let text = config_text(&dir, extra);
        Harness::start_with_text(dir, &text).await
    }

    pub async fn start_with_text(dir: TempDir, text: &str) -> Harness {
        let raw: RouterConfigFile = toml::from_str(text).expect("test config parses");
        let config = router::Config::from_raw(&raw, dir.path()).expect("test config is valid");
        let router = router::start(config).await.expect("router starts");
        let web = router.listener_addr("web").expect("web listener");
        let admin = router.admin_addr().parse().expect("tcp admin");
        let token = router.token().to_string();
        Harness {
            router: Some(router),
            dir,
            web,
            admin,
            token,
        }
    }

    pub fn router(&self) -> &RunningRouter {
        self.router.as_ref().expect("router running")
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.router.take() {
            r.leave(Duration::from_secs(5)).await;
        }
    }

    pub async fn admin_send(&self, method: &str, path: &str, body: String) -> Reply {
        let auth = format!("Bearer {}", self.token);
        let mut c = Client::connect(self.admin).await.expect("admin connect");
        c.send(
            method,
            path,
            &[("authorization", &auth), ("content-type", "application/json")],
            Bytes::from(body),
        )
        .await
        .expect("admin request")
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        self.admin_send("GET", path, String::new()).await
    }

    /// PUTs a table; returns the raw reply (tests check refusals).
    pub async fn put_raw(&self, table: &RouteTable) -> Reply {
        self.admin_send("PUT", "/v1/routes", serde_json::to_string(table).unwrap())
            .await
    }

    /// PUTs a table that must be accepted; returns the new generation.
    pub async fn put(&self, table: &RouteTable) -> u64 {
        let r = self.put_raw(table).await;
        assert_eq!(r.status, 200, "table refused: {}", r.text());
        let applied: wire::api::Applied = serde_json::from_slice(&r.body).unwrap();
        applied.generation
    }

    pub async fn patch(&self, diff: &RouteDiff) -> Reply {
        self.admin_send("PATCH", "/v1/routes", serde_json::to_string(diff).unwrap())
            .await
    }

    pub async fn routes(&self) -> RouteTable {
        serde_json::from_slice(&self.admin_get("/v1/routes").await.body).unwrap()
    }

    pub async fn metrics(&self) -> MetricsSnapshot {
        serde_json::from_slice(&self.admin_get("/v1/metrics").await.body).unwrap()
    }

    pub async fn drain(&self) -> DrainStatus {
        serde_json::from_slice(&self.admin_get("/v1/drain").await.body).unwrap()
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        testkit::get(self.web, path, headers)
            .await
            .expect("request through router")
    }
}

/// A demo app serving in this test's runtime.
pub struct App {
    pub addr: SocketAddr,
    pub app: Arc<demo_app::App>,
    pub server: Option<demo_app::LocalServer>,
}

impl App {
    pub async fn start(release: &str) -> App {
        App::start_with(demo_app::Config::new(release)).await
    }

    /// Starts an app; its instance name (header `x-instance`) is made unique.
    pub async fn start_with(mut config: demo_app::Config) -> App {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        config.instance = format!(
            "{}#{}",
            config.release,
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let app = demo_app::App::new(config);
        let (addr, server) = demo_app::spawn_local(app.clone()).await.expect("demo app starts");
        App {
            addr,
            app,
            server: Some(server),
        }
    }

    /// Starts again on the same address (after `kill`).
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("rebind");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = self.app.clone();
        tokio::spawn(demo_app::serve(listener, app, async move {
            let _ = rx.await;
        }));
        // Keep the sender alive for the test's duration.
        std::mem::forget(tx);
    }

    pub async fn kill(&mut self) {
        if let Some(s) = self.server.take() {
            s.kill().await;
        }
    }

    /// The `x-instance` header this app answers with.
    pub fn name(&self) -> &str {
        &self.app.config().instance
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

/// A release with one instance per app, named `<release>-<n>`.
pub fn release(id: &str, weight: u32, apps: &[&App]) -> Release {
    let mut r = Release::new(id, weight);
    for (i, a) in apps.iter().enumerate() {
        r = r.with_instance(format!("{id}-{i}"), a.addr());
    }
    r
}

pub fn table(releases: Vec<Release>) -> RouteTable {
    RouteTable {
        generation: 0,
        releases,
        cohorts: Vec::new(),
    }
}

/// Counts which release answered `n` cookie-less requests on one keep-alive connection.
pub async fn tally(web: SocketAddr, n: usize, headers: &[(&str, &str)]) -> std::collections::BTreeMap<String, usize> {
    let mut c = Client::connect(web).await.unwrap();
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = c.get("/", headers).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *out.entry(r.text()).or_insert(0) += 1;
    }
    out
}

/// The session cookie (`name=value`) a reply set, if any.
pub fn set_cookie(r: &Reply) -> Option<String> {
    let v = r.header("set-cookie")?;
    Some(v.split(';').next()?.to_string())
}
