//! slipway's router: the data plane every client connection passes through.
//!
//! It routes each new session to a release (cohort rules, key affinity,
//! signed sticky cookie, weights, client-version gating), forwards HTTP/1.1,
//! HTTP/2 (h2c and TLS with ALPN), WebSocket upgrades and raw TCP, and takes
//! route changes live through its admin API: a change is a diff applied to
//! the current table, saved to disk, compiled and swapped atomically, so it
//! affects new sessions only and never interrupts a request in flight.
//!
//! The router depends on no other part of slipway but `wire` and `plumbing`:
//! if the control plane dies, it keeps serving the last table it applied, and
//! on start it serves the table saved in its state folder without waiting.

mod admin;
mod affinity;
mod body;
mod clock;
mod config;
mod conn;
mod h1;
mod h2path;
mod handover;
mod health;
mod listener;
mod longlived;
mod reply;
mod route;
mod send;
mod shared;
mod slots;
mod state;
mod stats;
mod table;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plumbing::lifecycle::{Signals, Stop};
use tokio::sync::{mpsc, watch};
use wire::api::{BoundListener, UpgradeRequest, Upgraded};
use wire::router_config::ListenerKind;

pub use config::{Config, ConfigError};
pub use handover::{TakeoverError, report_failure};
pub use shared::ApplyError;
pub use state::{StateError, read_status};

use clock::Clock;
use handover::{Inherited, UpgradeError};
use shared::Shared;

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
    #[error(transparent)]
    Takeover(#[from] handover::TakeoverError),
}

/// A router serving in the current tokio runtime.
pub struct RunningRouter {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    connections: Arc<listener::ConnTracker>,
    tasks: tokio::task::JoinSet<()>,
    /// Duplicates of the listening sockets, for a self-upgrade.
    sockets: handover::Sockets,
    upgrades: mpsc::Receiver<handover::UpgradeJob>,
    /// Published to the admin API once [`serve`](Self::serve) takes requests.
    upgrade_tx: Option<mpsc::Sender<handover::UpgradeJob>>,
    /// Dropping it ends the long-lived connection sweeper.
    _sweeper: watch::Sender<()>,
    /// Caught from the start, before the router is published anywhere: a
    /// signal sent as soon as the new pid shows (SIGUSR2 right after an
    /// upgrade) must not meet the default action, which ends the process.
    signals: Signals,
}

impl std::fmt::Debug for RunningRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRouter")
            .field("status", &admin::status_of(&self.shared))
            .finish()
    }
}

/// Why the router stopped serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM or SIGINT.
    Signal,
    /// A new process took the sockets over.
    HandedOver(Upgraded),
}

impl RunningRouter {
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

    /// Starts a new router process from `req.binary` (default: this binary)
    /// and hands it the sockets and state. On success the new process
    /// serves and this one should [`leave`](Self::leave); on failure this
    /// one keeps serving as before.
    async fn upgrade(&self, req: UpgradeRequest) -> Result<Upgraded, UpgradeError> {
        let table = self.shared.current();
        let out = handover::Outgoing {
            config: &self.shared.config,
            table: &table,
            cookie_key: self.shared.signer.key(),
            health: self.shared.health_states(),
        };
        let mut done = handover::hand_over(out, &self.sockets, req).await?;
        done.old_connections = self.connections.count() as u64;
        tracing::info!(
            new_pid = done.new_pid,
            took_ms = done.took_ms,
            open = done.old_connections,
            "handed the sockets over to the new router; leaving"
        );
        Ok(done)
    }

    /// Serves until SIGTERM/SIGINT or a successful self-upgrade (admin API
    /// or SIGUSR2), then leaves: see [`leave`](Self::leave).
    async fn serve(mut self, grace: Duration) -> Exit {
        let mut signals = std::mem::take(&mut self.signals);
        if let Some(tx) = self.upgrade_tx.take() {
            let _ = self.shared.upgrades.set(tx);
        }
        let exit = loop {
            let (req, reply) = tokio::select! {
                stop = signals.next() => match stop {
                    Stop::Terminate | Stop::Interrupt => {
                        tracing::info!(signal = ?stop, "stopping; open requests get {grace:?} to finish");
                        break Exit::Signal;
                    }
                    Stop::Upgrade => {
                        tracing::info!("SIGUSR2: upgrading to a new router process");
                        (UpgradeRequest::default(), None)
                    }
                },
                job = self.upgrades.recv() => match job {
                    Some((req, reply)) => (req, Some(reply)),
                    None => std::future::pending().await,
                },
            };
            self.shared.upgrading.store(true, std::sync::atomic::Ordering::Relaxed);
            let result = self.upgrade(req).await;
            self.shared.upgrading.store(false, std::sync::atomic::Ordering::Relaxed);
            let done = match &result {
                Ok(u) => Some(u.clone()),
                Err(e) => {
                    tracing::error!(error = %e, "upgrade failed; this router keeps serving");
                    None
                }
            };
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
            if let Some(u) = done {
                break Exit::HandedOver(u);
            }
        };
        // Anything still queued is refused with the reason.
        self.upgrades.close();
        while let Ok((_, reply)) = self.upgrades.try_recv() {
            let _ = reply.send(Err(match &exit {
                Exit::HandedOver(u) => UpgradeError::HandedOver(u.new_pid),
                Exit::Signal => UpgradeError::Unavailable,
            }));
        }
        self.leave(grace).await;
        exit
    }

    /// Stops accepting and lets open connections finish: in-flight requests
    /// complete (for up to `grace`), idle keep-alive connections close
    /// between requests, HTTP/2 connections get a two-phase GOAWAY, and
    /// WebSocket/TCP connections stay until their listener's drain deadline,
    /// then get a 1012 close.
    pub async fn leave(mut self, grace: Duration) {
        self.shared.long_lived.start_leaving(self.shared.clock.now_ms());
        self.shared.listening.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        drop(std::mem::take(&mut self.sockets));
        // Long-lived connections are cut at their deadline (plus a moment
        // for the close handshake); unlimited ones are waited for.
        let mut limit = Some(grace);
        for l in &self.shared.config.listeners {
            limit = match (limit, l.drain_deadline.duration()) {
                (Some(g), Some(d)) => Some(g.max(d + Duration::from_secs(5))),
                _ => None,
            };
        }
        match limit {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, self.connections.wait_idle()).await;
            }
            None => self.connections.wait_idle().await,
        }
    }
}

/// Binds every listener and the admin API, serves the saved (or initial)
/// route table, and returns once the router accepts connections.
pub async fn start(config: Config) -> Result<RunningRouter, StartError> {
    start_with(config, Inherited::default()).await
}

/// Like [`start`], but serves on inherited sockets where they fit the
/// config (binding the rest) and starts from inherited state when given.
async fn start_with(config: Config, mut inherited: Inherited) -> Result<RunningRouter, StartError> {
    let signals = Signals::catch(true);
    let clock = Clock::new();
    state::private_dir(&config.state_dir).map_err(|source| StartError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let key = match inherited.cookie_key {
        Some(k) => k,
        None => state::cookie_key(&config.state_dir)?,
    };
    let signer = affinity::CookieSigner::new(key);
    let token = state::secret_file(&config.token_file, plumbing::fs::new_token).map_err(state::StateError::from)?;
    let initial = match inherited.table.take() {
        Some(t) => t,
        None => saved_or_initial(&config)?,
    };
    let shared = Arc::new(Shared::new(config.clone(), signer, token, clock));
    if let Some(pid) = inherited.from_pid {
        let _ = shared.took_over_from.set(pid);
    }

    // Bind (or take over) everything before serving anything, so a bad
    // address fails the start.
    let (bound, sockets, mut keep) = bind_listeners(&config, &mut inherited)?;
    share_listeners(&shared, &keep)?;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let admin_err = |source| StartError::Admin {
        addr: config.admin.to_string(),
        source,
    };
    let admin_bound = match inherited.take_admin(&config.admin) {
        Some(b) => b,
        None => plumbing::api::Bound::bind(&config.admin).map_err(admin_err)?,
    };
    let admin_addr = admin_bound.addr().map_err(admin_err)?;
    let admin_dup = admin_bound.try_clone().map_err(admin_err)?;
    keep.admin = Some((admin_addr.clone(), admin_dup.into_owned_fd()));
    let admin_task =
        plumbing::api::serve_bound(admin_bound, admin::router(shared.clone()), stop_rx.clone()).map_err(admin_err)?;
    tasks.spawn(async move {
        let _ = admin_task.await;
    });
    let _ = shared.bound.set((admin_addr, bound));
    shared.start_from(initial).await?;
    shared.restore_health(&inherited.health);
    let (upgrade_tx, upgrades) = mpsc::channel(4);

    let sweeper = spawn_sweeper(shared.clone());
    let connections = Arc::new(listener::ConnTracker::default());
    let fd_limit = slots::raise_fd_limit();
    let n_listeners = sockets.len();
    for (cfg, sock) in sockets {
        let cap = cfg
            .max_connections
            .unwrap_or_else(|| slots::default_max_connections(fd_limit, n_listeners));
        tracing::debug!(listener = %cfg.name, max_connections = cap, fd_limit, "listening");
        let slots = Arc::new(slots::Slots::new(cap));
        tasks.spawn(listener::accept_loop(
            shared.clone(),
            cfg,
            sock,
            stop_rx.clone(),
            connections.clone(),
            slots,
        ));
    }
    if let Err(e) = state::write_status(&config.state_dir, admin::status_of(&shared)) {
        tracing::warn!(error = %e, "cannot write the router status file");
    }
    Ok(RunningRouter {
        shared,
        stop,
        connections,
        tasks,
        sockets: keep,
        upgrades,
        upgrade_tx: Some(upgrade_tx),
        _sweeper: sweeper,
        signals,
    })
}

/// The table saved in the state folder, else the config's initial routes.
/// A saved table of a newer format fails the start rather than be overwritten.
fn saved_or_initial(config: &Config) -> Result<wire::RouteTable, StartError> {
    let saved = match state::load_table(&config.state_dir) {
        Ok(t) => t,
        Err(e @ state::StateError::NewerFormat { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "saved route table unreadable; starting from the initial routes");
            None
        }
    };
    Ok(saved.or_else(|| config.initial_routes.clone()).unwrap_or_default())
}

type Listening = (
    Vec<BoundListener>,
    Vec<(config::Listener, tokio::net::TcpListener)>,
    handover::Sockets,
);

/// Binds (or takes over from `inherited`) every listener of the config;
/// also returns duplicates of the sockets for a later handover.
fn bind_listeners(config: &Config, inherited: &mut Inherited) -> Result<Listening, StartError> {
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    let mut keep = handover::Sockets::default();
    for l in &config.listeners {
        let bind_err = |source| StartError::Bind {
            name: l.name.clone(),
            addr: l.addr,
            source,
        };
        let std_listener = match inherited.take_listener(&l.name, l.addr) {
            Some(s) => s,
            None => listener::bind_std(l.addr).map_err(bind_err)?,
        };
        let addr = std_listener.local_addr().map_err(bind_err)?;
        let dup = std::os::fd::OwnedFd::from(std_listener.try_clone().map_err(bind_err)?);
        keep.listeners.push((l.name.clone(), addr.to_string(), dup));
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let sock = tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?;
        bound.push(BoundListener {
            name: l.name.clone(),
            kind: l.kind,
            addr: addr.to_string(),
            tls: l.tls.is_some(),
        });
        sockets.push((l.clone(), sock));
    }
    for (name, l) in inherited.listeners.drain(..) {
        tracing::warn!(
            listener = name.as_deref().unwrap_or("?"),
            addr = ?l.local_addr().ok(),
            "an inherited socket fits no listener in the config; it is closed"
        );
    }
    Ok((bound, sockets, keep))
}

/// Keeps duplicates of the listening sockets for `POST /v1/listeners/share`.
fn share_listeners(shared: &Shared, keep: &handover::Sockets) -> Result<(), StartError> {
    let mut list = Vec::new();
    for (name, addr, fd) in &keep.listeners {
        let dup = fd.try_clone().map_err(|source| StartError::Bind {
            name: name.clone(),
            addr: addr.parse().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
            source,
        })?;
        list.push((name.clone(), addr.clone(), dup));
    }
    *shared.listening.lock().unwrap_or_else(|e| e.into_inner()) = list;
    Ok(())
}

/// Cuts long-lived connections past their deadlines every 200 ms, until the
/// returned sender is dropped.
fn spawn_sweeper(shared: Arc<Shared>) -> watch::Sender<()> {
    let (sweeper, mut sweeper_rx) = watch::channel(());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => shared.long_lived.sweep(&shared.clock),
                r = sweeper_rx.changed() => if r.is_err() { return },
            }
        }
    });
    sweeper
}

/// Prints where the router serves; returns its status.
fn announce(router: &RunningRouter) -> wire::api::RouterStatus {
    let status = admin::status_of(&router.shared);
    for l in &status.listeners {
        let scheme = match (l.kind, l.tls) {
            (ListenerKind::Tcp, _) => "tcp",
            (_, true) => "https",
            _ => "http",
        };
        println!("slipway router: listener {} on {scheme}://{}", l.name, l.addr);
    }
    println!(
        "slipway router: admin API on {} (token in {}), serving route generation {}",
        status.admin,
        router.shared.config.token_file.display(),
        status.generation
    );
    status
}

/// Runs the router until SIGTERM or SIGINT (or a self-upgrade hands it
/// over), on its own runtime with the configured number of worker threads;
/// then leaves, giving requests up to 30 s.
///
/// With `takeover`, it first takes the sockets and state over from the old
/// router waiting on that Unix socket, and tells it once it serves.
/// Otherwise it serves sockets systemd passed (socket activation) where
/// they fit, and binds the rest.
pub fn run(config: Config, takeover: Option<PathBuf>) -> Result<Exit, StartError> {
    let workers = if config.workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.workers
    };
    let mut takeover = match takeover {
        Some(path) => Some(handover::Takeover::connect(&path)?),
        None => None,
    };
    let inherited = match takeover.as_mut() {
        Some(t) => match t.inherited() {
            Ok(i) => i,
            Err(e) => {
                t.failed(&e.to_string());
                return Err(e.into());
            }
        },
        None => Inherited::from_systemd(),
    };
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
    .map_err(StartError::Runtime);
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            if let Some(t) = &takeover {
                t.failed(&e.to_string());
            }
            return Err(e);
        }
    };
    runtime.block_on(async move {
        let router = match start_with(config, inherited).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(t) = &takeover {
                    t.failed(&e.to_string());
                }
                return Err(e);
            }
        };
        let status = announce(&router);
        if let Some(t) = takeover.take() {
            let from = t.handover.from_pid;
            if let Err(e) = t.ready(status.generation) {
                // The old router gave up on us (timeout) and keeps serving.
                tracing::error!(error = %e, "the old router is gone from the handover; leaving");
                router.leave(Duration::from_secs(1)).await;
                return Err(StartError::Takeover(handover::TakeoverError::Protocol(e)));
            }
            println!("slipway router: took over from pid {from} (pid {})", std::process::id());
        }
        plumbing::fds::sd_notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        let exit = router.serve(Duration::from_secs(30)).await;
        match &exit {
            Exit::Signal => println!("slipway router: stopped"),
            Exit::HandedOver(u) => println!(
                "slipway router: handed over to pid {}; finished its open connections",
                u.new_pid
            ),
        }
        Ok(exit)
    })
}
