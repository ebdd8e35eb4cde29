//! `slipway up` mode: the control plane keeps the agent and the router running, restarting a dead one within a
//! second (with exponential backoff when it keeps dying). It holds the router's listening sockets and hands them
//! to every router it starts (`LISTEN_FDS`, as systemd socket activation does), so while a router restarts clients
//! wait in the accept queue instead of being refused. Started while a router already runs, it asks that router for
//! duplicates of its listening sockets (`POST /v1/listeners/share`, SCM_RIGHTS over a Unix socket in the router's
//! state folder), so the first crash of that router is covered too.

use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wire::service::PartRestarts;

use crate::config::ServiceConfig;
use crate::procs::{self, ProcError, Running};

/// How often the supervisor looks at its parts.
const LOOK_EVERY: Duration = Duration::from_millis(200);
/// The first restart is at once; one that follows a restart within `STABLE` waits twice as long as the last.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE: Duration = Duration::from_secs(30);

use wire::service::SupervisedPart as Part;

/// When a part may be started again: the pure backoff rule.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backoff {
    last_start: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    /// The part is found dead at `now`: when to start it.
    pub fn next_start(&mut self, now: Instant) -> Instant {
        let Some(last) = self.last_start else {
            return now;
        };
        if now.duration_since(last) >= STABLE {
            self.delay = Duration::ZERO;
            return now;
        }
        self.delay = (self.delay * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        (last + self.delay).max(now)
    }

    pub fn started(&mut self, at: Instant) {
        self.last_start = Some(at);
    }
}

/// The router's listening sockets, bound by the supervisor and kept open across router restarts.
#[derive(Debug, Default)]
pub(crate) struct Sockets {
    held: Vec<(String, TcpListener)>,
}

impl Sockets {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Binds every listener, at the address the last router served it on if it had one (a listener on port 0 keeps
    /// its port across restarts), else as configured. A failure names the listener and the real cause.
    fn bind(&mut self, cfg: &ServiceConfig) -> Result<(), ProcError> {
        if !self.held.is_empty() {
            return Ok(());
        }
        let last: Vec<(String, String)> = std::fs::read(cfg.layout.router_status())
            .ok()
            .and_then(|b| serde_json::from_slice::<wire::api::RouterStatus>(&b).ok())
            .map(|st| st.listeners.into_iter().map(|l| (l.name, l.addr)).collect())
            .unwrap_or_default();
        let mut held = Vec::new();
        for l in &cfg.file.listeners {
            let addr = last
                .iter()
                .find(|(n, _)| *n == l.name)
                .map_or(l.addr.as_str(), |x| x.1.as_str());
            let bound = TcpListener::bind(addr).or_else(|e| match addr == l.addr {
                true => Err(e),
                // The last port is taken now: the configured address, as a first start would.
                false => TcpListener::bind(&l.addr),
            });
            match bound {
                Ok(s) => held.push((l.name.clone(), s)),
                Err(cause) => {
                    return Err(ProcError::Bind {
                        listener: l.name.clone(),
                        addr: l.addr.clone(),
                        cause,
                    });
                }
            }
        }
        self.held = held;
        Ok(())
    }
}

/// Removes a file when dropped.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Asks the running `router` for duplicates of its listening sockets (`POST /v1/listeners/share`): it connects to a
/// Unix socket this process listens on in the router's state folder (0700) and sends them with SCM_RIGHTS.
pub(crate) async fn share_from_router(
    cfg: &ServiceConfig,
    router: &Running,
) -> Result<Vec<(String, TcpListener)>, String> {
    use std::os::unix::fs::PermissionsExt;
    let path = cfg.layout.router_dir.join(format!("share-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(at)?;
    let _gone = Remove(path.clone());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(at)?;
    let token = std::fs::read_to_string(cfg.layout.router_token()).map_err(|e| e.to_string())?;
    let api = plumbing::client::ApiClient::new(&router.addr, Some(token.trim().to_string()))
        .map_err(|e| e.to_string())?
        .with_timeout(Duration::from_secs(5));
    let req = wire::api::ShareRequest { socket: path.clone() };
    let answer: wire::api::SharedListeners = api.post("/v1/listeners/share", &req).await.map_err(|e| e.to_string())?;
    // The router sent the sockets before it answered: they wait in the Unix socket's queue.
    let (msg, fds) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let (stream, _) = listener
            .accept()
            .map_err(|e| format!("the router answered but did not connect: {e}"))?;
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        plumbing::fds::recv_msg::<wire::api::SharedListeners>(&stream).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    if msg != answer || msg.format != 1 {
        return Err(format!(
            "the sockets came with {msg:?}, not what the router answered ({answer:?})"
        ));
    }
    let mut fds: Vec<Option<std::os::fd::OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut out = Vec::new();
    for l in msg.listeners {
        let fd = fds.get_mut(l.fd).and_then(Option::take);
        let sock = fd.map(TcpListener::from).filter(|s| s.local_addr().is_ok());
        out.push((
            l.name.clone(),
            sock.ok_or(format!("listener {}: no TCP socket came with it", l.name))?,
        ));
    }
    Ok(out)
}

/// Starts the router with the held sockets, binding them first if need be.
pub(crate) fn start_router(
    cfg: &ServiceConfig,
    exe: &std::path::Path,
    sockets: &mut Sockets,
) -> Result<Running, ProcError> {
    if let Some(r) = procs::router_running(cfg) {
        return Ok(r);
    }
    sockets.bind(cfg)?;
    let names: Vec<&str> = sockets.held.iter().map(|(n, _)| n.as_str()).collect();
    let env = vec![
        ("LISTEN_FDS".to_string(), sockets.held.len().to_string()),
        ("LISTEN_FDNAMES".to_string(), names.join(":")),
        (plumbing::fds::LISTEN_PARENT.to_string(), std::process::id().to_string()),
    ];
    let fds: Vec<_> = sockets.held.iter().map(|(_, s)| s.as_fd()).collect();
    procs::start_router_with(cfg, exe, &env, &fds)
}

/// What `status` shows of the supervision.
pub(crate) type Shown = Arc<Mutex<Vec<PartRestarts>>>;

/// Keeps the agent and the router running until `stop`.
pub(crate) async fn run(
    cfg: ServiceConfig,
    exe: PathBuf,
    sockets: Sockets,
    shown: Shown,
    mut stop: watch::Receiver<bool>,
) {
    let sockets = Arc::new(Mutex::new(sockets));
    let mut backoff = [Backoff::default(), Backoff::default()];
    let mut due: [Option<Instant>; 2] = [None, None];
    let mut share = Backoff::default();
    let mut share_at = Instant::now();
    loop {
        if Instant::now() >= share_at {
            share_at = hold_sockets(&cfg, &sockets, &mut share).await;
        }
        for (i, part) in [Part::Agent, Part::Router].into_iter().enumerate() {
            let running = match part {
                Part::Agent => procs::agent_running(&cfg),
                Part::Router => procs::router_running(&cfg),
            };
            if running.is_some() {
                due[i] = None;
                continue;
            }
            let now = Instant::now();
            let at = *due[i].get_or_insert_with(|| {
                tracing::warn!(
                    part = part.as_str(),
                    "the {} is not running; starting it",
                    part.as_str()
                );
                backoff[i].next_start(now)
            });
            if now < at {
                continue;
            }
            due[i] = None;
            backoff[i].started(now);
            let (c, e, s) = (cfg.clone(), exe.clone(), sockets.clone());
            let started = tokio::task::spawn_blocking(move || match part {
                Part::Agent => procs::ensure_agent(&c, &e),
                Part::Router => start_router(&c, &e, &mut s.lock().unwrap_or_else(|p| p.into_inner())),
            })
            .await;
            let outcome = match started {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            note(&shown, part, &outcome, now.elapsed());
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Makes sure the supervisor holds the router's listening sockets: a router that runs while it holds none (it
/// was started by an earlier control plane) is asked for them. Returns when to look again.
async fn hold_sockets(cfg: &ServiceConfig, sockets: &Mutex<Sockets>, backoff: &mut Backoff) -> Instant {
    let now = Instant::now();
    let held = !sockets.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
    let Some(router) = procs::router_running(cfg).filter(|_| !held) else {
        return now;
    };
    match share_from_router(cfg, &router).await {
        Ok(list) => {
            tracing::info!(
                pid = router.pid,
                listeners = list.len(),
                "holding the running router's listening sockets"
            );
            let mut s = sockets.lock().unwrap_or_else(|p| p.into_inner());
            if s.held.is_empty() {
                s.held = list;
            }
            now
        }
        Err(e) => {
            backoff.started(now);
            let at = backoff.next_start(now);
            tracing::warn!(
                pid = router.pid,
                error = %e,
                "cannot hold the running router's listening sockets; a crash of it would refuse connections \
                 while it restarts"
            );
            at
        }
    }
}

/// Logs a restart and keeps it for `status`.
fn note(shown: &Shown, part: Part, outcome: &Result<Running, String>, took: Duration) {
    let mut list = shown.lock().unwrap_or_else(|e| e.into_inner());
    let entry = match list.iter().position(|p| p.part == part) {
        Some(i) => &mut list[i],
        None => {
            list.push(PartRestarts {
                part,
                ..Default::default()
            });
            list.last_mut().expect("just pushed")
        }
    };
    entry.restarts += 1;
    entry.last_ms = crate::driver::unix_ms();
    match outcome {
        Ok(r) => {
            tracing::warn!(
                part = part.as_str(),
                pid = r.pid,
                restarts = entry.restarts,
                took_ms = took.as_millis() as u64,
                "restarted the {}",
                part.as_str()
            );
            entry.pid = Some(r.pid);
            entry.error = None;
        }
        Err(e) => {
            tracing::error!(part = part.as_str(), error = %e, "cannot restart the {}; trying again", part.as_str());
            entry.error = Some(e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_that_keeps_dying_waits_twice_as_long_each_time_and_a_stable_one_starts_at_once() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(b.next_start(t0), t0, "the first restart is at once");
        b.started(t0);
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..9 {
            now += Duration::from_millis(10);
            let at = b.next_start(now);
            waits.push(at.duration_since(now).as_millis() as u64 + 10);
            b.started(at);
            now = at;
        }
        assert_eq!(waits, [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
        let later = now + STABLE;
        assert_eq!(b.next_start(later), later, "up for a while: at once again");
    }
}
