//! `slipway.toml` validated as a whole (every problem at once).
//! From it come the deploy plan, the agent's and the router's configs, and the state layout.

use std::path::{Path, PathBuf};

use rollout::Plan;
use wire::agent::{AgentConfigFile, InstanceTemplate};
use wire::router_config::{AdminConfig, RouterConfigFile, UpstreamConfig};
use wire::service::{ServiceFile, Strategy};
use wire::{Problem, Problems};

/// A service definition that passed validation.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub(crate) file: ServiceFile,
    /// The file it came from, and its folder (relative paths start there).
    pub path: PathBuf,
    pub(crate) base: PathBuf,
    pub layout: Layout,
    /// The control plane keeps the agent and the router running and holds the router's listening sockets
    /// (`slipway up` runs it so); not a key of the file.
    pub supervise: bool,
}

/// Where everything lives under the state folder.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The agent's root: releases/, current, previous, logs/, agent/.
    pub root: PathBuf,
    pub(crate) router_dir: PathBuf,
    pub(crate) control_dir: PathBuf,
    /// Generated configs and the processes' own logs.
    pub(crate) run_dir: PathBuf,
}

impl Layout {
    pub(crate) fn new(state_dir: &Path) -> Layout {
        Layout {
            root: state_dir.to_path_buf(),
            router_dir: state_dir.join("router"),
            control_dir: state_dir.join("control"),
            run_dir: state_dir.join("run"),
        }
    }

    pub(crate) fn journal(&self) -> PathBuf {
        self.control_dir.join("journal.sqlite")
    }

    pub(crate) fn control_status(&self) -> PathBuf {
        self.control_dir.join("control.json")
    }

    pub fn control_token(&self) -> PathBuf {
        self.control_dir.join("control.token")
    }

    pub(crate) fn agent_status(&self) -> PathBuf {
        self.root.join("agent").join("agent.json")
    }

    pub fn agent_token(&self) -> PathBuf {
        self.root.join("agent.token")
    }

    pub fn router_status(&self) -> PathBuf {
        self.router_dir.join("router.json")
    }

    pub(crate) fn router_token(&self) -> PathBuf {
        self.router_dir.join("admin.token")
    }
}

pub use plumbing::config::ConfigError;

impl ServiceConfig {
    pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
        plumbing::config::load(path, "service definition", |file: ServiceFile, abs| {
            let base = abs.parent().unwrap_or(Path::new(".")).to_path_buf();
            ServiceConfig::from_file(file, abs, &base)
        })
    }

    pub(crate) fn from_file(file: ServiceFile, path: &Path, base: &Path) -> Result<ServiceConfig, Problems> {
        let mut out = Vec::new();
        if file.version != 1 {
            out.push(Problem::new(
                "version",
                format!("unknown version {}; slipway reads version 1", file.version),
            ));
        }
        if let Err(e) = wire::routes::valid_id(&file.service.name) {
            out.push(Problem::new("service.name", e));
        }
        if let Err(p) = plumbing::api::Listen::parse(&file.service.admin, base, "service.admin") {
            out.push(p);
        }
        if let Err(p) = dashboard_addr(&file.service.dashboard) {
            out.push(p);
        }
        if file.instance.count == 0 || file.instance.count > 64 {
            out.push(Problem::new("instance.count", "must be between 1 and 64"));
        }
        if file.instance.command.is_empty() {
            out.push(Problem::new(
                "instance.command",
                "is needed (releases may override it in slipway.release.toml)",
            ));
        }
        out.extend(env_problems(&file.instance, base));
        out.extend(deploy_problems(&file.deploy));
        if let Some(w) = &file.deploy.webhook {
            out.extend(crate::webhook::problems(w, base));
        }
        if file.listeners.is_empty() {
            out.push(Problem::new("listener", "at least one [[listener]] is needed"));
        }
        // The router and agent configs derived from this file must be valid too.
        let layout = Layout::new(&resolve(base, &file.service.state_dir));
        let cfg = ServiceConfig {
            path: path.to_path_buf(),
            base: base.to_path_buf(),
            layout,
            file,
            supervise: false,
        };
        if let Err(p) = router::Config::from_raw(&cfg.router_file(), &cfg.layout.run_dir) {
            out.extend(
                p.problems
                    .into_iter()
                    .map(|p| Problem::new(format!("(router) {}", p.path), p.message)),
            );
        }
        if let Err(p) = agent::Config::from_raw(&cfg.agent_file(), &cfg.layout.run_dir) {
            out.extend(
                p.problems
                    .into_iter()
                    .map(|p| Problem::new(format!("(agent) {}", p.path), p.message)),
            );
        }
        for (i, co) in cfg.file.routing.cohorts.iter().enumerate() {
            // Cohorts name releases that may not exist yet; check their shape only.
            let mut t = wire::RouteTable::default();
            t.releases.push(wire::Release::new(co.release.clone(), 0));
            t.cohorts.push(co.clone());
            for p in t.problems() {
                out.push(Problem::new(format!("routing.cohort[{i}]"), p.message));
            }
        }
        out.extend(cfg.data_problems());
        Problems::check(out)?;
        Ok(cfg)
    }

    /// A database URL from slipway.toml with a relative SQLite path made absolute.
    fn db_url(&self, url: &str) -> String {
        match records::DbUrl::parse(url) {
            Ok(records::DbUrl::Sqlite(p)) => format!("sqlite:{}", resolve(&self.base, &p).display()),
            _ => url.to_string(),
        }
    }

    /// `[data]` with its paths resolved.
    pub(crate) fn data(&self) -> crate::data::DataPlan {
        let d = &self.file.data;
        crate::data::DataPlan {
            database: d.database.as_deref().map(|u| self.db_url(u)),
            migrations: d.migrations.as_ref().map(|p| resolve(&self.base, p)),
            records: d.records.as_deref().map(|u| self.db_url(u)),
            lock_timeout: d
                .lock_timeout
                .map(|t| t.0)
                .unwrap_or(std::time::Duration::from_millis(500)),
        }
    }

    fn data_problems(&self) -> Vec<Problem> {
        let d = &self.file.data;
        let mut out = Vec::new();
        for (field, url) in [("data.database", &d.database), ("data.records", &d.records)] {
            if let Some(u) = url
                && let Err(e) = records::DbUrl::parse(u)
            {
                out.push(Problem::new(field, e.to_string()));
            }
        }
        if d.migrations.is_some() && d.database.is_none() {
            out.push(Problem::new(
                "data.migrations",
                "needs data.database (the database they change)",
            ));
        }
        if let Some(dir) = &self.data().migrations
            && let Err(e) = records::migrate::load_dir(dir)
        {
            out.push(Problem::new("data.migrations", e.to_string()));
        }
        out
    }

    pub fn state_dir(&self) -> &Path {
        &self.layout.root
    }

    /// The plan a new deploy starts with.
    pub(crate) fn plan(&self) -> Plan {
        let d = &self.file.deploy;
        let count = self.file.instance.count;
        Plan {
            count,
            steps: d.canary.steps.iter().map(|s| (s.weight, s.hold.as_millis())).collect(),
            canary_count: d.canary.instances.unwrap_or(count).max(1),
            fresh_baseline: d.canary.fresh_baseline,
            extension_ms: d.canary.extension.as_millis(),
            max_extensions: d.canary.max_extensions,
            continue_when_inconclusive: d.canary.on_inconclusive == wire::service::OnInconclusive::Continue,
            max_surge: d.rolling.max_surge,
            max_unavailable: d.rolling.max_unavailable,
            bake_ms: d.rolling.bake.as_millis(),
            check_ms: d.blue_green.check.as_millis(),
            rollback_window_ms: d.blue_green.rollback_window.as_millis(),
            drain_deadline_ms: d.drain_deadline.as_millis(),
            session_idle_ms: d.session_idle.as_millis(),
            start_timeout_ms: d.start_timeout.as_millis(),
            pre_traffic: d.pre_traffic.is_some(),
        }
    }

    pub(crate) fn default_strategy(&self) -> Strategy {
        self.file.deploy.strategy
    }

    /// The router's config (written to run/router.toml).
    pub(crate) fn router_file(&self) -> RouterConfigFile {
        let r = &self.file.routing;
        RouterConfigFile {
            version: 1,
            state_dir: self.layout.router_dir.clone(),
            workers: 0,
            admin: AdminConfig {
                listen: "127.0.0.1:0".into(),
                token_file: None,
            },
            listeners: self
                .file
                .listeners
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    if let Some(t) = &mut l.tls {
                        t.cert = resolve(&self.base, &t.cert);
                        t.key = resolve(&self.base, &t.key);
                    }
                    l
                })
                .collect(),
            affinity: r.affinity.clone(),
            client_version_header: r.client_version_header.clone(),
            upstream: UpstreamConfig::default(),
            client: Default::default(),
            health: r.health.clone(),
            initial_routes: None,
        }
    }

    /// The instance template a deploy starts its release with: `[instance]` with `env_file` read (`env` wins)
    /// and every `${NAME}` replaced from `vars` (the environment of the command that deploys). Problems are
    /// named as in the file and never show a value.
    pub fn instance_template(&self, vars: &dyn Fn(&str) -> Option<String>) -> Result<InstanceTemplate, Problems> {
        let mut t = self.agent_file().instance;
        let inst = &self.file.instance;
        let mut out = Vec::new();
        let mut env = std::collections::BTreeMap::new();
        if let Some(p) = &inst.env_file {
            match crate::envfile::read(&resolve(&self.base, p)) {
                Ok(file) => {
                    for (k, v) in file {
                        let value = if v.expand {
                            crate::envfile::expand(&v.text, vars)
                        } else {
                            Ok(v.text)
                        };
                        match value {
                            Ok(value) => {
                                env.insert(k, value);
                            }
                            Err(e) => out.push(Problem::new("instance.env_file", format!("{k}: {e}"))),
                        }
                    }
                }
                Err(e) => out.push(Problem::new("instance.env_file", e.to_string())),
            }
        }
        for (k, v) in &inst.env {
            match crate::envfile::expand(v, vars) {
                Ok(value) => {
                    env.insert(k.clone(), value);
                }
                Err(e) => out.push(Problem::new(format!("instance.env.{k}"), e.to_string())),
            }
        }
        Problems::check(out)?;
        t.env = env;
        Ok(t)
    }

    /// The same, from the environment of this process.
    pub fn instance_template_here(&self) -> Result<InstanceTemplate, Problems> {
        self.instance_template(&|k| std::env::var(k).ok())
    }

    /// The agent's config (written to run/agent.toml).
    pub(crate) fn agent_file(&self) -> AgentConfigFile {
        let mut template = self.file.instance.template();
        if template.command.contains('/') && !Path::new(&template.command).is_absolute() {
            // Relative to slipway.toml, unless it names a file inside the release.
            let candidate = self.base.join(&template.command);
            if candidate.exists() {
                template.command = candidate.display().to_string();
            }
        }
        AgentConfigFile {
            version: 1,
            root: self.layout.root.clone(),
            api: AdminConfig {
                listen: "127.0.0.1:0".into(),
                token_file: None,
            },
            instance: template,
            logs: self.file.logs.clone(),
        }
    }
}

/// What is wrong with `[instance] env` and `env_file` (a `${NAME}` that is not set is found when a deploy
/// resolves it).
fn env_problems(inst: &wire::service::InstanceSection, base: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    let any = |_: &str| Some(String::new());
    for (k, v) in &inst.env {
        if let Err(e) = crate::envfile::expand(v, &any) {
            out.push(Problem::new(format!("instance.env.{k}"), e.to_string()));
        }
    }
    if let Some(p) = &inst.env_file {
        match crate::envfile::read(&resolve(base, p)) {
            Ok(vars) => {
                for (k, v) in vars.iter().filter(|(_, v)| v.expand) {
                    if let Err(e) = crate::envfile::expand(&v.text, &any) {
                        out.push(Problem::new("instance.env_file", format!("{k}: {e}")));
                    }
                }
            }
            Err(e) => out.push(Problem::new("instance.env_file", e.to_string())),
        }
    }
    out
}

/// What is wrong with `[deploy]`.
fn deploy_problems(d: &wire::service::DeploySection) -> Vec<Problem> {
    let mut out = Vec::new();
    let c = &d.canary;
    if c.steps.is_empty() {
        out.push(Problem::new("deploy.canary.steps", "at least one step is needed"));
    }
    let mut last = 0;
    for (i, s) in c.steps.iter().enumerate() {
        if s.weight == 0 || s.weight > 100 {
            out.push(Problem::new(
                format!("deploy.canary.steps[{i}].weight"),
                "must be between 1 and 100",
            ));
        } else if s.weight < last {
            out.push(Problem::new(
                format!("deploy.canary.steps[{i}].weight"),
                "weights must not go down (a session never moves backwards)",
            ));
        }
        last = s.weight;
        if s.hold.0.is_zero() {
            out.push(Problem::new(
                format!("deploy.canary.steps[{i}].hold"),
                "must be more than 0",
            ));
        }
    }
    if c.fresh_baseline && c.steps.iter().any(|s| s.weight > 50) {
        out.push(Problem::new(
            "deploy.canary.fresh_baseline",
            "with a fresh baseline, canary weights above 50% leave it no comparable traffic",
        ));
    }
    if c.instances == Some(0) {
        out.push(Problem::new("deploy.canary.instances", "must be at least 1"));
    }
    out.extend(c.analysis.problems("deploy.canary.analysis"));
    if let Some(p) = &d.pre_traffic {
        if p.path.is_none() && p.command.is_empty() {
            out.push(Problem::new(
                "deploy.pre_traffic",
                "give a path to GET, a command, or both",
            ));
        }
        if p.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            out.push(Problem::new("deploy.pre_traffic.path", "must start with '/'"));
        }
        if p.timeout.0.is_zero() {
            out.push(Problem::new("deploy.pre_traffic.timeout", "must be more than 0"));
        }
    }
    if d.rolling.max_surge == 0 && d.rolling.max_unavailable == 0 {
        out.push(Problem::new(
            "deploy.rolling",
            "max_surge or max_unavailable must be above 0",
        ));
    }
    out
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

/// `service.dashboard`: the address to serve the dashboard on, or `None` for `off`.
pub(crate) fn dashboard_addr(text: &str) -> Result<Option<std::net::SocketAddr>, Problem> {
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        Problem::new(
            "service.dashboard",
            format!("{text:?} is neither an ip:port (such as 127.0.0.1:8090) nor \"off\""),
        )
    })
}

#[cfg(test)]
mod dashboard_tests {
    use super::dashboard_addr;

    #[test]
    fn the_dashboard_address_is_an_ip_port_or_off_and_anything_else_is_named() {
        assert_eq!(dashboard_addr("off").unwrap(), None);
        assert_eq!(dashboard_addr("127.0.0.1:0").unwrap(), Some(([127, 0, 0, 1], 0).into()));
        let p = dashboard_addr("localhost:80").unwrap_err();
        assert_eq!(p.path, "service.dashboard");
        assert!(dashboard_addr("").is_err() && dashboard_addr("Off").is_err());
    }
}
