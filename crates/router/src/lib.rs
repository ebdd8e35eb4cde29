//! slipway's router: the data plane every client connection passes through.
//!
//! It routes each new session to a release (cohort rules, key affinity,
//! signed sticky cookie, weights, client-version gating), forwards HTTP/1.1,
//! HTTP/2 (h2c and TLS with ALPN), WebSocket upgrades and raw TCP, and takes
//! route changes live through its admin API: a change is a diff applied to
//! the current table, saved to disk, compiled and swapped atomically, so it
//! affects new sessions only and never interrupts a request in flight.
//!
//! The router depends on nothing but `wire`: if the control plane dies, it
//! keeps serving the last table it applied, and on start it serves the table
//! saved in its state folder without waiting for anybody.

pub mod admin;
pub mod affinity;
pub mod body;
pub mod config;
pub mod h1;
pub mod health;
pub mod listener;
pub mod longlived;
pub mod proxy;
pub mod route;
pub mod shared;
pub mod state;
pub mod stats;
pub mod table;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wire::api::BoundListener;
use wire::router_config::ListenerKind;

pub use config::{AdminListen, Config, ConfigError};
pub use shared::{ApplyError, Shared};

/// Milliseconds since the router started; the only clock the data plane reads.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { start: Instant::now() }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state folder: {0}")]
    State(#[from] state::StateError),
    #[error("cannot create the state folder {path}: {source}")]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr} for listener {name:?}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} for the admin API: {source}")]
    Admin { addr: String, source: std::io::Error },
    #[error("the saved route table cannot be served: {0}")]
    Table(#[from] ApplyError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A router serving in the current tokio runtime.
pub struct RunningRouter {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    connections: Arc<listener::ConnTracker>,
    tasks: tokio::task::JoinSet<()>,
}

impl std::fmt::Debug for RunningRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRouter")
            .field("status", &admin::status_of(&self.shared))
            .finish()
    }
}

impl RunningRouter {
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Bound address of the listener called `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        let (_, listeners) = self.shared.bound.get()?;
        listeners.iter().find(|l| l.name == name)?.addr.parse().ok()
    }

    /// Admin address as `ip:port` or `unix:/path`.
    pub fn admin_addr(&self) -> String {
        self.shared.bound.get().map(|(a, _)| a.clone()).unwrap_or_default()
    }

    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Stops accepting, then lets open connections finish their current
    /// request (idle keep-alive connections close at once) for up to `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let _ = tokio::time::timeout(grace, self.connections.wait_idle()).await;
    }
}

/// Binds every listener and the admin API, serves the saved (or initial)
/// route table, and returns once the router accepts connections.
pub async fn start(config: Config) -> Result<RunningRouter, StartError> {
    let clock = Clock::new();
    std::fs::create_dir_all(&config.state_dir).map_err(|source| StartError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let signer = affinity::CookieSigner::new(state::cookie_key(&config.state_dir)?);
    let token = state::secret_file(&config.token_file, plumbing::fs::new_token).map_err(state::StateError::from)?;
    let saved = match state::load_table(&config.state_dir) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "saved route table unreadable; starting from the initial routes");
            None
        }
    };
    let initial = saved.or_else(|| config.initial_routes.clone()).unwrap_or_default();
    let shared = Arc::new(Shared::new(config.clone(), signer, token, clock));

    // Bind everything before serving anything, so a bad address fails the start.
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    for l in &config.listeners {
        let sock = listener::bind(l.addr).map_err(|source| StartError::Bind {
            name: l.name.clone(),
            addr: l.addr,
            source,
        })?;
        let addr = sock.local_addr().map_err(|source| StartError::Bind {
            name: l.name.clone(),
            addr: l.addr,
            source,
        })?;
        bound.push(BoundListener {
            name: l.name.clone(),
            kind: match l.kind {
                ListenerKind::Http => "http".into(),
                ListenerKind::Tcp => "tcp".into(),
            },
            addr: addr.to_string(),
            tls: l.tls.is_some(),
        });
        sockets.push((l.clone(), sock));
    }
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let admin_app = admin::router(shared.clone());
    let (admin_addr, admin_task) = plumbing::api::serve(&config.admin, admin_app, stop_rx.clone())
        .await
        .map_err(|source| StartError::Admin {
            addr: config.admin.to_string(),
            source,
        })?;
    tasks.spawn(async move {
        let _ = admin_task.await;
    });
    let _ = shared.bound.set((admin_addr, bound));
    shared.start_from(initial).await?;

    {
        let (shared, mut stop) = (shared.clone(), stop_rx.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => shared.long_lived.sweep(&shared.clock),
                    _ = listener::stopped(&mut stop) => return,
                }
            }
        });
    }
    let connections = Arc::new(listener::ConnTracker::default());
    for (cfg, sock) in sockets {
        tasks.spawn(listener::accept_loop(
            shared.clone(),
            cfg,
            sock,
            stop_rx.clone(),
            connections.clone(),
        ));
    }
    let status = admin::status_of(&shared);
    if let Ok(json) = serde_json::to_vec_pretty(&status) {
        let _ = state::write_atomic(&config.state_dir.join(state::STATUS_FILE), &json, 0o644);
    }
    Ok(RunningRouter {
        shared,
        stop,
        connections,
        tasks,
    })
}

/// Runs the router until SIGTERM or SIGINT, on its own runtime with the
/// configured number of worker threads; then drains for up to 30 s.
pub fn run(config: Config) -> Result<(), StartError> {
    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.workers
    };
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .map_err(StartError::Runtime)?;
    runtime.block_on(async move {
        let router = start(config).await?;
        let status = admin::status_of(router.shared());
        for l in &status.listeners {
            let scheme = match (l.kind.as_str(), l.tls) {
                ("tcp", _) => "tcp",
                (_, true) => "https",
                _ => "http",
            };
            println!("slipway router: listener {} on {scheme}://{}", l.name, l.addr);
        }
        println!(
            "slipway router: admin API on {} (token in {}), serving route generation {}",
            status.admin,
            router.shared().config.token_file.display(),
            status.generation
        );
        wait_for_signal().await;
        println!("slipway router: stopping; open requests get up to 30s to finish");
        router.shutdown(Duration::from_secs(30)).await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
