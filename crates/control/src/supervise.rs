//! `slipway up` mode: the control plane keeps the agent and the router running, restarting a dead one within a
//! second (with exponential backoff when it keeps dying). It holds the router's listening sockets and hands them
//! to every router it starts (`LISTEN_FDS`, as systemd socket activation does), so while a router restarts clients
//! wait in the accept queue instead of being refused.

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
    loop {
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
