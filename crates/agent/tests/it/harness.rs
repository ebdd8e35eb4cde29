//! An in-process agent on a temp root whose instances are real demo-app processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::RunningAgent;
use plumbing::client::ApiClient;
use testkit::TempDir;
use wire::agent::{AgentConfigFile, InstanceInfo, InstanceList, InstanceState, StartRequest, StopRequest};

pub struct Harness {
    pub agent: Option<RunningAgent>,
    pub dir: TempDir,
    pub api: ApiClient,
}

pub fn demo_app() -> PathBuf {
    testkit::workspace_bin("demo-app")
}

/// Agent config for tests: demo-app as the command, fast probes and restarts.
pub fn config_text(root: &Path, extra: &str) -> String {
    format!(
        r#"
root = "{root}"
api = {{ listen = "127.0.0.1:0" }}

[instance]
command = "{demo}"
readiness = {{ kind = "http", path = "/healthz", start_deadline = "10s" }}
drain = {{ signal = "SIGTERM", stop_deadline = "5s" }}
restart = {{ backoff = "50ms", max_backoff = "1s", crash_loop_count = 3, crash_loop_window = "30s" }}
{extra}
"#,
        root = root.display(),
        demo = demo_app().display(),
    )
}

impl Harness {
    pub async fn start(extra: &str) -> Harness {
        Harness::start_in(TempDir::new("agent"), extra).await
    }

    /// Starts with the test config changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut AgentConfigFile)) -> Harness {
        let dir = TempDir::new("agent");
        let mut raw: AgentConfigFile = toml::from_str(&config_text(&dir.join("root"), "")).unwrap();
        f(&mut raw);
        Harness::start_raw(dir, raw).await
    }

    pub async fn start_in(dir: TempDir, extra: &str) -> Harness {
        let text = config_text(&dir.join("root"), extra);
        let raw: AgentConfigFile = toml::from_str(&text).expect("test config parses");
        Harness::start_raw(dir, raw).await
    }

    pub async fn start_raw(dir: TempDir, raw: AgentConfigFile) -> Harness {
        let config = agent::Config::from_raw(&raw, dir.path()).expect("test config valid");
        let running = agent::start(config).await.expect("agent starts");
        let api = ApiClient::new(&running.api_addr, Some(running.agent.token.clone())).unwrap();
        Harness {
            agent: Some(running),
            dir,
            api,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Adds release `id` from a folder holding `manifest` as slipway.release.toml.
    pub fn add_release(&self, id: &str, manifest: &str) {
        let src = self.dir.join(format!("src-{id}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("slipway.release.toml"), manifest).unwrap();
        agent::ReleaseStore::new(self.root())
            .add(&src, id)
            .expect("release added");
    }

    pub async fn start_instances(&self, release: &str, count: u32) -> Vec<InstanceInfo> {
        let r: InstanceList = self
            .api
            .post(
                "/v1/instances",
                &StartRequest {
                    release: release.into(),
                    count,
                    group: None,
                    template: None,
                },
            )
            .await
            .expect("start instances");
        r.instances
    }

    pub async fn stop(&self, req: StopRequest) -> Vec<InstanceInfo> {
        let r: InstanceList = self.api.post("/v1/instances/stop", &req).await.expect("stop");
        r.instances
    }

    pub async fn list(&self) -> Vec<InstanceInfo> {
        let r: InstanceList = self.api.get("/v1/instances").await.expect("list");
        r.instances
    }

    pub async fn instance(&self, id: &str) -> InstanceInfo {
        self.api.get(&format!("/v1/instances/{id}")).await.expect("instance")
    }

    /// Waits until instance `id` is in `state`.
    pub async fn wait_state(&self, id: &str, state: InstanceState, limit: Duration) -> InstanceInfo {
        testkit::wait_for(&format!("{id} to be {}", state.as_str()), limit, || async {
            let i = self.instance(id).await;
            (i.state == state).then_some(i)
        })
        .await
    }

    pub async fn shutdown(&mut self) {
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    agent::process_start_time(pid).is_some()
}

/// Kills every process of an instance's group at the end of a test.
pub fn kill_group(pid: Option<u32>) {
    if let Some(p) = pid {
        agent::signal_group(p, nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for Harness {
    /// Tests leave no process behind, whatever they asserted.
    fn drop(&mut self) {
        if let Some(a) = &self.agent {
            for i in a.agent.list() {
                kill_group(i.pid);
            }
        }
        if let Ok(saved) = agent::saved_instances(&self.root()) {
            for i in saved {
                kill_group(i.pid);
            }
        }
    }
}
