//! A service on a temp folder: agent and router as processes, the control plane in-process, load through the router.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use control::{RunningControl, ServiceConfig};
use plumbing::client::ApiClient;
use testkit::TempDir;
use wire::service::{DeployInfo, DeployRequest, ServiceStatus, Strategy};

pub struct Fixture {
    pub dir: TempDir,
    pub cfg: ServiceConfig,
    pub control: Option<RunningControl>,
    pub api: Option<ApiClient>,
}

pub fn service_toml(dir: &TempDir, extra: &str) -> String {
    let mut t = testkit::ServiceToml::new("test", &testkit::workspace_bin("demo-app"));
    t.extra = extra.to_string();
    t.render().replace("{dir}", &dir.path().display().to_string())
}

impl Fixture {
    /// Writes slipway.toml and the releases v1..v3 (v3 fails 40% of requests).
    pub fn new(extra: &str) -> Fixture {
        Fixture::new_with(extra, |t| t)
    }

    /// Like `new`, with the service file passed through `edit` first.
    pub fn new_with(extra: &str, edit: impl FnOnce(String) -> String) -> Fixture {
        Fixture::build(extra, edit, &[], &[])
    }

    /// Like `new`, with `files` written under the folder first (paths
    /// relative to it) and some releases' slipway.release.toml replaced.
    pub fn with_files(extra: &str, files: &[(&str, &str)], manifests: &[(&str, &str)]) -> Fixture {
        Fixture::build(extra, |t| t, files, manifests)
    }

    /// Like `with_files`, with the service file passed through `edit` first.
    pub fn build(
        extra: &str,
        edit: impl FnOnce(String) -> String,
        files: &[(&str, &str)],
        manifests: &[(&str, &str)],
    ) -> Fixture {
        let dir = TempDir::new("control");
        for (rel, text) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let path = dir.join("slipway.toml");
        std::fs::write(&path, edit(service_toml(&dir, extra))).unwrap();
        let cfg = ServiceConfig::load(&path).expect("test service config is valid");
        let store = agent::ReleaseStore::new(cfg.state_dir());
        for (id, manifest) in [
            ("v1", ""),
            ("v2", ""),
            ("v3", "[start.env]\nDEMO_ERROR_RATE = \"0.4\"\n"),
            ("v4", ""),
        ] {
            let src = dir.join(format!("src-{id}"));
            std::fs::create_dir_all(&src).unwrap();
            let manifest = manifests.iter().find(|m| m.0 == id).map_or(manifest, |m| m.1);
            std::fs::write(src.join("slipway.release.toml"), manifest).unwrap();
            store.add(&src, id).unwrap();
        }
        Fixture {
            dir,
            cfg,
            control: None,
            api: None,
        }
    }

    /// Starts the control plane in-process (agent and router as processes).
    pub async fn start(&mut self) {
        let running = control::start(self.cfg.clone(), testkit::workspace_bin("slipway"))
            .await
            .expect("control starts");
        self.api = Some(ApiClient::new(&running.api_addr, Some(running.control.token.clone())).unwrap());
        self.control = Some(running);
    }

    pub async fn stop_control(&mut self) {
        if let Some(c) = self.control.take() {
            c.shutdown().await;
        }
    }

    pub fn api(&self) -> &ApiClient {
        self.api.as_ref().expect("control plane running")
    }

    /// The router's public listener.
    pub fn web(&self) -> SocketAddr {
        let st: wire::api::RouterStatus =
            serde_json::from_slice(&std::fs::read(self.cfg.layout.router_status()).unwrap()).unwrap();
        st.listeners[0].addr.parse().unwrap()
    }

    pub async fn deploy(&self, release: &str, strategy: Option<Strategy>) -> DeployInfo {
        self.api()
            .post(
                "/v1/deploys",
                &DeployRequest {
                    release: release.into(),
                    strategy,
                    template: None,
                },
            )
            .await
            .expect("deploy accepted")
    }

    pub async fn wait_deploy(&self, id: i64, limit: Duration) -> DeployInfo {
        testkit::wait_for(&format!("deploy {id} to finish"), limit, || async {
            let d: DeployInfo = self.api().get(&format!("/v1/deploys/{id}")).await.ok()?;
            d.finished().then_some(d)
        })
        .await
    }

    pub async fn status(&self) -> ServiceStatus {
        self.api().get("/v1/status").await.unwrap()
    }

    /// The router's current table.
    pub async fn routes(&self) -> wire::RouteTable {
        self.status().await.routes.unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.cfg.state_dir().to_path_buf()
    }
}

impl Drop for Fixture {
    /// Leaves no process behind: instances, router, agent (and a control plane process).
    fn drop(&mut self) {
        if let Ok(list) = agent::saved_instances(self.cfg.state_dir()) {
            for i in list {
                if let Some(pid) = i.pid {
                    agent::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        for r in [
            control::control_running(&self.cfg),
            control::router_running(&self.cfg),
            control::agent_running(&self.cfg),
        ]
        .into_iter()
        .flatten()
        {
            if r.pid != std::process::id() {
                control::stop_process(r.pid, Duration::from_secs(2));
            }
        }
    }
}

/// Load for tests: 150 requests/s, 20 users with sessions of 4 requests, 4 WebSockets. Short sessions: a 10%
/// canary step of 3 s gets new sessions (about 11) for sure; one that gets none is failed by the judge.
pub fn load(web: SocketAddr) -> loadgen::Load {
    let mut c = loadgen::LoadConfig::new(web, 150.0);
    c.users = 20;
    c.session_requests = Some(4);
    c.websockets = 4;
    loadgen::Load::start(c)
}
