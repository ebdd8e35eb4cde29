//! The agent's instance table, and one task per instance carrying out what its lifecycle machine decides.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use wire::agent::{InstanceInfo, InstanceState, ReleaseManifest};

use crate::config::{Config, Spec};
use crate::machine::{Action, Event, Machine, Phase};
use crate::process::{self, Launch, Proc};
use crate::releases::ReleaseStore;
use crate::table::{self, Saved, SavedInstance};

/// Why the agent refused a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error("no release {0} on this host (add it with `slipway release add`)")]
    NoRelease(String),
    #[error("release {release}: {message}")]
    BadRelease { release: String, message: String },
    #[error("no instance {0}")]
    NoInstance(String),
    #[error("no free port: {0}")]
    Port(std::io::Error),
    #[error("cannot create {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A command to an instance's task.
#[derive(Debug)]
enum Ctl {
    Stop { deadline_ms: Option<u64> },
}

struct Slot {
    info: InstanceInfo,
    /// Kernel start time of the process, to tell it from a reused pid.
    start_time: Option<u64>,
    ended_at_ms: Option<u64>,
    ctl: Option<mpsc::UnboundedSender<Ctl>>,
    /// What it runs with; `own` when it was started with a template of its own (saved with it).
    spec: Arc<Spec>,
    own: bool,
}

struct Inner {
    slots: BTreeMap<String, Slot>,
    next_id: BTreeMap<String, u64>,
}

/// Stopped instances stay listed this long.
const KEEP_STOPPED_MS: u64 = 10 * 60 * 1000;

/// Runs instances of releases on this host.
pub struct Agent {
    pub config: Config,
    pub(crate) store: ReleaseStore,
    pub token: String,
    /// Turns true when the agent stops: instance tasks end, processes stay.
    leaving: tokio::sync::watch::Sender<bool>,
    started: Instant,
    inner: Mutex<Inner>,
    state_path: PathBuf,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn state_of(p: Phase) -> InstanceState {
    match p {
        Phase::Starting { .. } => InstanceState::Starting,
        Phase::Ready => InstanceState::Ready,
        Phase::Draining { .. } => InstanceState::Draining,
        Phase::Backoff { .. } => InstanceState::Crashed,
        Phase::CrashLoop => InstanceState::CrashLoop,
        Phase::Failed => InstanceState::Failed,
        Phase::Stopped => InstanceState::Stopped,
    }
}

/// How a saved instance carries on under a new agent: its machine, and its process if that still runs (same pid
/// and kernel start time).
fn adopt(policy: crate::machine::Policy, s: &SavedInstance, now: u64) -> (Machine, Option<Proc>) {
    let proc = match (s.info.pid, s.start_time) {
        (Some(pid), Some(start_time)) if process::is_same_process(pid, start_time) => {
            Some(Proc::Adopted { pid, start_time })
        }
        _ => None,
    };
    let restarts = s.info.restarts;
    let phase = match (s.info.state, proc.is_some()) {
        (InstanceState::Starting, true) => Phase::Starting {
            deadline: now + policy.start_deadline_ms,
        },
        (InstanceState::Ready, true) => Phase::Ready,
        (InstanceState::Draining, true) => Phase::Draining {
            deadline: now + policy.stop_deadline_ms,
            killed: false,
        },
        // Gone while the agent was away: a crash, restarted as usual.
        (InstanceState::Starting | InstanceState::Ready | InstanceState::Crashed, false) => {
            Phase::Backoff { until: now }
        }
        (InstanceState::Draining, false) => Phase::Stopped,
        // Final states stay as they were.
        (InstanceState::CrashLoop, _) => Phase::CrashLoop,
        (InstanceState::Failed, _) => Phase::Failed,
        (InstanceState::Stopped | InstanceState::Crashed, _) => Phase::Stopped,
    };
    // A process is watched only in a phase that has one.
    let proc = proc.filter(|_| phase.has_process());
    (Machine::adopted(policy, phase, restarts), proc)
}

/// Whether an instance in this state holds (or will hold) a process.
pub fn is_live(s: InstanceState) -> bool {
    matches!(
        s,
        InstanceState::Starting | InstanceState::Ready | InstanceState::Draining | InstanceState::Crashed
    )
}

impl Agent {
    /// Loads the saved table and re-adopts instances whose processes still
    /// run (same pid and start time); dead ones are restarted as crashes,
    /// draining ones are marked stopped. Nothing that runs is started twice.
    pub(crate) fn open(config: Config, token: String) -> Result<Arc<Agent>, plumbing::fs::FsError> {
        let state_dir = config.root.join("agent");
        std::fs::create_dir_all(&state_dir).map_err(plumbing::fs::io_err(&state_dir))?;
        let state_path = table::path(&config.root);
        let saved = table::read(&state_path)?;
        let agent = Arc::new(Agent {
            store: ReleaseStore::new(&config.root),
            config,
            token,
            leaving: tokio::sync::watch::channel(false).0,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                slots: BTreeMap::new(),
                next_id: saved.next_id,
            }),
            state_path,
        });
        let now = agent.now_ms();
        let mut running = process::instance_processes(&agent.store.dir());
        for mut s in saved.instances {
            let id = s.info.id.clone();
            let spec = agent.saved_spec(&id, s.template.as_ref());
            // Spawned by an agent that died before it saved the pid: the process is this instance's.
            let saved_runs = matches!((s.info.pid, s.start_time), (Some(p), Some(t)) if process::is_same_process(p, t));
            if !saved_runs
                && is_live(s.info.state)
                && let Some(i) = running.iter().position(|r| r.0 == id)
            {
                let (_, pid, start) = running.remove(i);
                tracing::warn!(instance = %id, pid, "found the instance's process, started before its pid was saved");
                (s.info.pid, s.start_time) = (Some(pid), Some(start));
            }
            running.retain(|r| !(r.0 == id && Some(r.1) == s.info.pid));
            let (machine, proc) = adopt(spec.policy, &s, now);
            let alive = proc.is_some();
            let was = s.info.state;
            let mut info = s.info;
            info.state = state_of(machine.phase);
            if !alive {
                info.pid = None;
            }
            if alive {
                tracing::info!(instance = %id, pid = ?info.pid, "re-adopted running instance");
            } else if s.start_time.is_some() && matches!(was, InstanceState::Ready | InstanceState::Starting) {
                tracing::warn!(instance = %id, "instance process is gone (or its pid was reused); restarting it");
            }
            let mut slot = Slot {
                info,
                start_time: if alive { s.start_time } else { None },
                ended_at_ms: s.ended_at_ms,
                ctl: None,
                own: s.template.is_some(),
                spec,
            };
            if !machine.phase.is_final() {
                let (tx, rx) = mpsc::unbounded_channel();
                slot.ctl = Some(tx);
                tokio::spawn(run_instance(agent.clone(), id.clone(), machine, proc, rx));
            }
            agent.lock().slots.insert(id, slot);
        }
        // Left: instance processes no saved instance owns (started before the table named them): never routed to,
        // and an instance of their id may start again, so they go.
        for (id, pid, _) in running {
            tracing::warn!(instance = %id, pid, "stopping an instance process the saved table does not know");
            process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
        agent.save();
        Ok(agent)
    }

    /// The spec a saved instance runs with: its own template, or the agent's.
    fn saved_spec(&self, id: &str, own: Option<&wire::agent::InstanceTemplate>) -> Arc<Spec> {
        match own.map(Spec::new) {
            None => self.config.spec.clone(),
            Some(Ok(spec)) => Arc::new(spec),
            Some(Err(p)) => {
                let why = p.first().map(|p| p.to_string()).unwrap_or_default();
                tracing::warn!(instance = %id, problem = %why, "saved template is invalid; using the agent's");
                self.config.spec.clone()
            }
        }
    }

    /// What an instance runs with (the agent's template if it is gone).
    fn spec(&self, id: &str) -> Arc<Spec> {
        self.lock()
            .slots
            .get(id)
            .map_or_else(|| self.config.spec.clone(), |s| s.spec.clone())
    }

    /// Stops supervising: instance tasks end and leave their processes
    /// running (a later agent re-adopts them).
    pub(crate) fn leave(&self) {
        let _ = self.leaving.send(true);
        self.save();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Saves the instance table atomically (stopped instances older than ten
    /// minutes are dropped from it).
    pub(crate) fn save(&self) {
        let mut inner = self.lock();
        let now = unix_ms();
        inner.slots.retain(|_, s| {
            !(s.info.state == InstanceState::Stopped
                && s.ended_at_ms.is_some_and(|t| now.saturating_sub(t) > KEEP_STOPPED_MS))
        });
        let saved = Saved {
            format: table::FORMAT,
            next_id: inner.next_id.clone(),
            instances: inner
                .slots
                .values()
                .map(|s| SavedInstance {
                    info: s.info.clone(),
                    start_time: s.start_time,
                    ended_at_ms: s.ended_at_ms,
                    template: s.own.then(|| s.spec.template.clone()),
                })
                .collect(),
        };
        drop(inner);
        if let Err(e) = table::write(&self.state_path, &saved) {
            tracing::error!(error = %e, "cannot save the instance table");
        }
    }

    pub fn list(&self) -> Vec<InstanceInfo> {
        self.lock().slots.values().map(|s| s.info.clone()).collect()
    }

    pub(crate) fn get(&self, id: &str) -> Option<InstanceInfo> {
        self.lock().slots.get(id).map(|s| s.info.clone())
    }

    /// Instances that hold or will hold a process, per release.
    pub(crate) fn running(&self, release: &str) -> u32 {
        self.lock()
            .slots
            .values()
            .filter(|s| s.info.release == release && is_live(s.info.state))
            .count() as u32
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Slot)) {
        if let Some(s) = self.lock().slots.get_mut(id) {
            f(s);
        }
        self.save();
    }

    /// Starts `count` new instances of `release`, each on its own free port, with `own` as their spec (the
    /// agent's when None).
    pub(crate) fn start(
        self: &Arc<Self>,
        release: &str,
        count: u32,
        group: Option<&str>,
        own: Option<Arc<Spec>>,
    ) -> Result<Vec<InstanceInfo>, AgentError> {
        let is_own = own.is_some();
        let spec = own.unwrap_or_else(|| self.config.spec.clone());
        if !self.store.exists(release) {
            return Err(AgentError::NoRelease(release.to_string()));
        }
        let manifest = self.store.manifest(release).map_err(|e| AgentError::BadRelease {
            release: release.to_string(),
            message: e.to_string(),
        })?;
        let mut started = Vec::new();
        for _ in 0..count {
            let listener =
                std::net::TcpListener::bind(SocketAddr::new(self.config.bind, 0)).map_err(AgentError::Port)?;
            let addr = listener.local_addr().map_err(AgentError::Port)?;
            let id = {
                let mut inner = self.lock();
                let n = inner.next_id.entry(release.to_string()).or_insert(0);
                let id = format!("{release}-{n}");
                *n += 1;
                id
            };
            let log_dir = crate::logs::log_dir(&self.config.root, &id);
            std::fs::create_dir_all(&log_dir).map_err(|source| AgentError::Io {
                path: log_dir.clone(),
                source,
            })?;
            let info = InstanceInfo {
                id: id.clone(),
                release: release.to_string(),
                group: group.map(str::to_string),
                addr: addr.to_string(),
                port: addr.port(),
                pid: None,
                state: InstanceState::Starting,
                healthy: false,
                restarts: 0,
                started_at_ms: unix_ms(),
                note: None,
                last_output: Vec::new(),
                client_versions: manifest.client_versions.clone(),
                drain_notified: false,
            };
            let (tx, rx) = mpsc::unbounded_channel();
            self.lock().slots.insert(
                id.clone(),
                Slot {
                    info: info.clone(),
                    start_time: None,
                    ended_at_ms: None,
                    ctl: Some(tx),
                    spec: spec.clone(),
                    own: is_own,
                },
            );
            // The port stays reserved until the instance binds it (or gets it as fd 3).
            if !spec.template.listen_fds {
                drop(listener);
            } else {
                self.reserve(&id, listener);
            }
            let machine = Machine::new(spec.policy, self.now_ms());
            let agent = self.clone();
            tokio::spawn(async move {
                let mut machine = machine;
                let mut proc = None;
                agent.carry_out(&id, &mut machine, &mut proc, vec![Action::Spawn]).await;
                run_instance(agent, id, machine, proc, rx).await;
            });
            started.push(info);
        }
        self.save();
        Ok(started)
    }

    fn reserve(&self, id: &str, l: std::net::TcpListener) {
        RESERVED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), l);
    }

    /// Calls the drain hook of each instance that is running and was not told
    /// yet, without stopping it: a game server can warn its players and save
    /// their state while the router's drain deadline runs.
    pub(crate) async fn notify_drain(&self, ids: &[String]) -> Result<Vec<InstanceInfo>, AgentError> {
        let mut todo = Vec::new();
        {
            let mut inner = self.lock();
            let inner = &mut *inner;
            for id in ids {
                let slot = inner
                    .slots
                    .get_mut(id)
                    .ok_or_else(|| AgentError::NoInstance(id.clone()))?;
                if is_live(slot.info.state) && !slot.info.drain_notified {
                    slot.info.drain_notified = true;
                    let drain = &slot.spec.template.drain;
                    if let Some(path) = drain.path.clone() {
                        todo.push((id.clone(), slot.info.addr.clone(), drain.method, path));
                    }
                }
            }
        }
        {
            let calls = todo.iter().map(|(id, addr, method, path)| async move {
                let Ok(addr) = addr.parse::<SocketAddr>() else { return };
                match crate::probe::notify_drain(addr, *method, path).await {
                    Ok(code) => tracing::info!(instance = %id, status = code, "drain hook called at drain start"),
                    Err(e) => tracing::warn!(instance = %id, error = %e, "drain hook failed"),
                }
            });
            futures_util::future::join_all(calls).await;
        }
        self.save();
        Ok(ids.iter().filter_map(|id| self.get(id)).collect())
    }

    /// Drains and stops instances: by id, or every live instance of a release.
    pub(crate) fn stop(
        &self,
        ids: &[String],
        release: Option<&str>,
        deadline_ms: Option<u64>,
    ) -> Result<Vec<InstanceInfo>, AgentError> {
        let mut inner = self.lock();
        let mut chosen: Vec<String> = ids.to_vec();
        if let Some(r) = release {
            chosen.extend(
                inner
                    .slots
                    .values()
                    .filter(|s| s.info.release == r && s.info.state != InstanceState::Stopped)
                    .map(|s| s.info.id.clone()),
            );
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for id in chosen {
            if !seen.insert(id.clone()) {
                continue;
            }
            let slot = inner
                .slots
                .get_mut(&id)
                .ok_or_else(|| AgentError::NoInstance(id.clone()))?;
            match &slot.ctl {
                Some(tx) if tx.send(Ctl::Stop { deadline_ms }).is_ok() => {}
                _ => {
                    if slot.info.state != InstanceState::Stopped {
                        slot.info.state = InstanceState::Stopped;
                        slot.ended_at_ms = Some(unix_ms());
                    }
                }
            }
            out.push(slot.info.clone());
        }
        drop(inner);
        self.save();
        Ok(out)
    }

    fn launch(&self, id: &str) -> Result<Launch, String> {
        let (release, port) = {
            let inner = self.lock();
            let s = inner.slots.get(id).ok_or("instance vanished")?;
            (s.info.release.clone(), s.info.port)
        };
        let dir = self.store.path(&release);
        if !dir.is_dir() {
            return Err(format!("release folder {} is missing", dir.display()));
        }
        let manifest: ReleaseManifest = self.store.manifest(&release).map_err(|e| e.to_string())?;
        let spec = self.spec(id);
        let t = &spec.template;
        let start = manifest.start.unwrap_or_default();
        let command = start.command.unwrap_or_else(|| t.command.clone());
        if command.is_empty() {
            return Err(
                "no command: set [instance] command in the agent config or [start] command in slipway.release.toml"
                    .into(),
            );
        }
        let args = start.args.unwrap_or_else(|| t.args.clone());
        let mut env = t.env.clone();
        env.extend(start.env);
        env.insert("PORT".into(), port.to_string());
        env.insert("SLIPWAY_RELEASE".into(), release.clone());
        env.insert("SLIPWAY_INSTANCE".into(), id.to_string());
        let listen_fd = if t.listen_fds {
            let reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            match reserved {
                Some(l) => Some(l),
                None => Some(
                    std::net::TcpListener::bind(SocketAddr::new(self.config.bind, port))
                        .map_err(|e| format!("cannot bind port {port} again: {e}"))?,
                ),
            }
        } else {
            None
        };
        Ok(Launch {
            program: process::resolve_program(&command, &dir),
            args,
            env,
            cwd: dir,
            log_file: crate::logs::log_path(&self.config.root, id),
            listen_fd,
            stamper: self.config.stamper.clone(),
        })
    }

    /// Carries out actions, feeding the events they cause back in.
    async fn carry_out(&self, id: &str, m: &mut Machine, proc: &mut Option<Proc>, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            let pid = proc
                .as_ref()
                .and_then(Proc::pid)
                .or_else(|| self.get(id).and_then(|i| i.pid));
            match a {
                Action::Spawn => {
                    let ev = match self
                        .launch(id)
                        .and_then(|l| process::spawn_instance(l).map_err(|e| e.to_string()))
                    {
                        Ok(child) => {
                            let pid = child.id();
                            let st = pid.and_then(process::process_start_time);
                            *proc = Some(Proc::Child(child));
                            self.update(id, |s| {
                                s.info.pid = pid;
                                s.start_time = st;
                                s.info.started_at_ms = unix_ms();
                                s.info.healthy = false;
                            });
                            Event::Spawned
                        }
                        Err(e) => Event::SpawnFailed(e),
                    };
                    queue.extend(m.on(ev, self.now_ms()));
                }
                // Probing follows from the phase: Starting with a process.
                Action::Probe => {}
                Action::NotifyDrain => {
                    // Delivered before the stop signal, which may make the app
                    // stop accepting connections.
                    let drain = self.spec(id).template.drain.clone();
                    if let (Some(path), Some(info)) = (drain.path, self.get(id))
                        && !info.drain_notified
                        && let Ok(addr) = info.addr.parse::<SocketAddr>()
                    {
                        match crate::probe::notify_drain(addr, drain.method, &path).await {
                            Ok(code) => tracing::info!(instance = %id, status = code, "drain hook called"),
                            Err(e) => tracing::warn!(instance = %id, error = %e, "drain hook failed"),
                        }
                    }
                }
                Action::SignalStop => {
                    if let (Some(sig), Some(pid)) = (self.spec(id).stop_signal, pid) {
                        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
                    }
                }
                Action::KillGroup => {
                    if let Some(pid) = pid {
                        process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                    }
                }
                Action::Report { phase, note } => {
                    let tail = matches!(phase, Phase::Failed | Phase::CrashLoop | Phase::Backoff { .. })
                        .then(|| crate::logs::log_tail(&crate::logs::log_dir(&self.config.root, id), 20));
                    tracing::info!(instance = %id, state = phase.name(), note = ?note, "instance state");
                    let restarts = m.restarts;
                    self.update(id, |s| {
                        s.info.state = state_of(phase);
                        s.info.note = note;
                        s.info.restarts = restarts;
                        s.info.healthy = phase == Phase::Ready;
                        if let Some(t) = tail {
                            s.info.last_output = t;
                        }
                        if phase.is_final() {
                            s.ended_at_ms = Some(unix_ms());
                            if phase == Phase::Stopped {
                                s.info.pid = None;
                                s.start_time = None;
                            }
                        }
                    });
                }
            }
        }
    }
}

/// Listeners bound for instances that get their socket as fd 3, by instance id.
static RESERVED: Mutex<BTreeMap<String, std::net::TcpListener>> = Mutex::new(BTreeMap::new());

const TICK: Duration = Duration::from_millis(100);
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Waits for the process to exit (forever when there is none).
async fn exited(proc: Option<&mut Proc>) -> Option<i32> {
    match proc {
        Some(p) => p.wait().await,
        None => std::future::pending().await,
    }
}

/// The life of one instance: waits for its process to exit, for commands,
/// for readiness, and for time to pass; feeds the machine; acts.
async fn run_instance(
    agent: Arc<Agent>,
    id: String,
    mut m: Machine,
    mut proc: Option<Proc>,
    mut rx: mpsc::UnboundedReceiver<Ctl>,
) {
    let mut last_health = Instant::now();
    let readiness = agent.spec(&id).template.readiness.clone();
    let mut leaving = agent.leaving.subscribe();
    loop {
        if m.phase.is_final() && proc.is_none() {
            break;
        }
        if *leaving.borrow() {
            return;
        }
        let ev = tokio::select! {
            _ = leaving.changed() => return,
            ctl = rx.recv() => match ctl {
                Some(Ctl::Stop { deadline_ms }) => Event::Stop { deadline_ms },
                None => Event::Tick,
            },
            code = exited(proc.as_mut()) => {
                proc = None;
                Event::Exited { code }
            }
            _ = tokio::time::sleep(TICK) => {
                let addr = agent.get(&id).and_then(|i| i.addr.parse::<SocketAddr>().ok());
                match (addr, m.phase) {
                    (Some(a), Phase::Starting { .. }) if proc.is_some() => {
                        if crate::probe::ready(a, &readiness).await { Event::ProbeOk } else { Event::Tick }
                    }
                    (Some(a), Phase::Ready) if last_health.elapsed() >= HEALTH_EVERY => {
                        last_health = Instant::now();
                        let ok = crate::probe::ready(a, &readiness).await;
                        if agent.get(&id).is_some_and(|i| i.healthy != ok) {
                            agent.update(&id, |s| s.info.healthy = ok);
                        }
                        Event::Tick
                    }
                    _ => Event::Tick,
                }
            }
        };
        let now = agent.now_ms();
        let actions = m.on(ev, now);
        if !actions.is_empty() {
            agent.carry_out(&id, &mut m, &mut proc, actions).await;
        }
    }
    RESERVED.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}
