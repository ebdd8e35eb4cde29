//! The control loop: observe the agent and the router, feed the rollout machine (journaling each change before acting), and reconcile instances and routes towards what it wants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use plumbing::client::ApiClient;
use rollout::{Deploy, Desired, Event, GroupObs, Phase, Refused, Service};
use wire::agent::{InstanceInfo, InstanceList, InstanceState, StartRequest, StopRequest};
use wire::api::{DrainStatus, RouterStatus};
use wire::judge::{Outcome, Verdict};
use wire::metrics::MetricsSnapshot;
use wire::service::{DeployInfo, GroupStatus, ServiceStatus};
use wire::{Instance, Release, RouteState, RouteTable, UpstreamProtocol};

use crate::analysis::{Activity, Analysis};
use crate::config::ServiceConfig;
use crate::journal::{Journal, JournalError};

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Refused(#[from] Refused),
    #[error("{0}")]
    NotFound(String),
    #[error("the journal could not record it, nothing changed: {0}")]
    Journal(#[from] JournalError),
    #[error("the data is not ready for this release, nothing started: {0}")]
    Data(String),
}

/// What the loop knows besides the machine's state.
#[derive(Default)]
struct Live {
    instances: Vec<InstanceInfo>,
    agent_ok: bool,
    analysis: Option<Analysis>,
    activity: Activity,
    /// Instances on their way out, since when (ms).
    victims: BTreeMap<String, u64>,
    last_table: Option<RouteTable>,
    router: Option<RouterStatus>,
    verdicts: BTreeMap<i64, Vec<Verdict>>,
    saved: BTreeMap<i64, String>,
    current_link: Option<String>,
    warned: BTreeSet<String>,
    /// The live releases `[data]` was last brought in line with, and when
    /// to try again after a failure.
    data_seen: Option<BTreeSet<String>>,
    data_retry_at: u64,
    data_note: Option<String>,
}

/// The control plane.
pub struct Control {
    pub cfg: Mutex<ServiceConfig>,
    pub token: String,
    state: Mutex<Service>,
    /// The state as of the last reconcile: what the API shows, so that a
    /// deploy is never reported done before its routes are applied.
    published: Mutex<Service>,
    journal: Mutex<Journal>,
    pub agent: ApiClient,
    pub router: ApiClient,
    live: Mutex<Live>,
    /// Held while the data is moved for a starting release until its
    /// deploy is recorded, and while the loop follows the live releases,
    /// so the loop never sees the data moved but not the deploy.
    data_turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Control {
    /// Opens the journal and replays it through the machine.
    pub fn open(
        cfg: ServiceConfig,
        token: String,
        agent: ApiClient,
        router: ApiClient,
    ) -> Result<Arc<Control>, JournalError> {
        let journal = Journal::open(&cfg.layout.journal())?;
        let mut state = Service::default();
        let events = journal.events()?;
        let n = events.len();
        for (ev, at) in &events {
            // Replay goes through the same function; a journaled event was accepted once.
            let _ = state.on(ev, *at);
        }
        if n > 0 {
            tracing::info!(events = n, current = ?state.current, deploy = ?state.active().map(|d| d.id), "journal replayed");
        }
        Ok(Arc::new(Control {
            cfg: Mutex::new(cfg),
            token,
            published: Mutex::new(state.clone()),
            state: Mutex::new(state),
            journal: Mutex::new(journal),
            agent,
            router,
            live: Mutex::new(Live::default()),
            data_turn: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn state(&self) -> Service {
        lock(&self.state).clone()
    }

    /// The state the world has caught up with (see `published`).
    pub fn published(&self) -> Service {
        lock(&self.published).clone()
    }

    /// Applies an event; journals it before anything acts on it.
    pub fn apply(&self, ev: Event, now: u64) -> Result<bool, CommandError> {
        let mut st = lock(&self.state);
        let before = st.clone();
        let changed = st.on(&ev, now)?;
        if changed && let Err(e) = lock(&self.journal).append(&ev, now) {
            *st = before;
            return Err(e.into());
        }
        Ok(changed)
    }

    /// A deploy request: the release must exist on the host.
    pub async fn deploy(
        &self,
        release: &str,
        strategy: Option<wire::service::Strategy>,
    ) -> Result<DeployInfo, CommandError> {
        let rels: wire::agent::ReleaseList = self
            .agent
            .get("/v1/releases")
            .await
            .map_err(|e| CommandError::NotFound(format!("cannot ask the agent for its releases: {e}")))?;
        if !rels.releases.iter().any(|r| r.id == release) {
            return Err(CommandError::NotFound(format!(
                "no release {release} on the host; add it first with `slipway release add <dir|archive> --id {release}`"
            )));
        }
        let (plan, default) = {
            let c = lock(&self.cfg);
            (c.plan(), c.default_strategy())
        };
        let _turn = self.data_turn.lock().await;
        self.prepare_data(release).await?;
        let ev = Event::Deploy {
            release: release.to_string(),
            strategy: strategy.unwrap_or(default),
            plan,
        };
        self.apply(ev, unix_ms())?;
        let st = self.state();
        let d = st
            .deploy
            .as_ref()
            .ok_or_else(|| CommandError::NotFound("deploy vanished".into()))?;
        Ok(self.info(&st, d))
    }

    /// Releases that may read and write the data: those with live
    /// instances, and those the machine wants running (about to start).
    fn live_releases(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.state().desired().groups.into_iter().map(|g| g.release).collect();
        out.extend(
            lock(&self.live)
                .instances
                .iter()
                .filter(|i| agent::supervisor::is_live(i.state))
                .map(|i| i.release.clone()),
        );
        out
    }

    /// Expand migrations and lowered write gates before `release` starts.
    async fn prepare_data(&self, release: &str) -> Result<(), CommandError> {
        let (plan, root) = {
            let c = lock(&self.cfg);
            (c.data(), c.layout.root.clone())
        };
        if plan.is_empty() {
            return Ok(());
        }
        let live = self.live_releases();
        let rel = release.to_string();
        let lines = tokio::task::spawn_blocking(move || crate::data::before_start(&plan, &root, &live, &rel))
            .await
            .map_err(|e| CommandError::Data(e.to_string()))?
            .map_err(|e| CommandError::Data(e.to_string()))?;
        for l in &lines {
            tracing::info!(release, "data: {l}");
        }
        lock(&self.live).data_note = Some(format!("before {release}: {}", summary(&lines)));
        Ok(())
    }

    /// Contract migrations and raised write gates once the live releases changed.
    async fn follow_data(&self, now: u64) {
        let (plan, root) = {
            let c = lock(&self.cfg);
            (c.data(), c.layout.root.clone())
        };
        if plan.is_empty() {
            return;
        }
        let _turn = self.data_turn.lock().await;
        let live = self.live_releases();
        {
            let l = lock(&self.live);
            if l.data_seen.as_ref() == Some(&live) && now < l.data_retry_at {
                return;
            }
        }
        let set = live.clone();
        let out = tokio::task::spawn_blocking(move || crate::data::after_change(&plan, &root, &set)).await;
        let mut l = lock(&self.live);
        l.data_seen = Some(live.clone());
        match out {
            Ok(Ok(lines)) => {
                for line in &lines {
                    tracing::info!("data: {line}");
                }
                // Done, or a contract step waits for a release to go:
                // looked at again when the set of live releases changes.
                l.data_retry_at = u64::MAX;
                if !lines.is_empty() {
                    let names: Vec<&str> = live.iter().map(String::as_str).collect();
                    l.data_note = Some(format!("with {}: {}", names.join(", "), summary(&lines)));
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "data: cannot bring the data in line with the live releases; retrying in 30 s");
                l.data_retry_at = now + 30_000;
                l.data_note = Some(format!("failed, retrying: {e}"));
            }
            Err(e) => {
                l.data_retry_at = now + 30_000;
                l.data_note = Some(format!("failed: {e}"));
            }
        }
    }

    pub async fn rollback(&self) -> Result<(), CommandError> {
        // The previous release may start again: the gates come down first.
        let _turn = self.data_turn.lock().await;
        if let Some(prev) = self.state().previous {
            self.prepare_data(&prev).await?;
        }
        let plan = lock(&self.cfg).plan();
        self.apply(Event::Rollback { plan }, unix_ms())?;
        Ok(())
    }

    /// One turn of the loop.
    pub async fn tick(&self) {
        let now = unix_ms();
        match self.agent.get::<InstanceList>("/v1/instances").await {
            Ok(list) => {
                let groups = observe_groups(&list.instances);
                {
                    let mut live = lock(&self.live);
                    live.instances = list.instances;
                    live.agent_ok = true;
                }
                if let Err(e) = self.apply(Event::Groups { groups }, now) {
                    tracing::error!(error = %e, "cannot record instance observations");
                }
            }
            Err(e) => {
                lock(&self.live).agent_ok = false;
                self.warn_once("agent", &format!("agent unreachable, waiting: {e}"));
            }
        }
        match self.router.get::<MetricsSnapshot>("/v1/metrics").await {
            Ok(snap) => self.analyse(&snap, now),
            Err(e) => self.warn_once("router", &format!("router metrics unreachable: {e}")),
        }
        if let Ok(st) = self.router.get::<RouterStatus>("/v1/status").await {
            lock(&self.live).router = Some(st);
        }
        let before_log = self.state().deploy.as_ref().map_or(0, |d| d.log.len());
        if let Err(e) = self.apply(Event::Tick, now) {
            tracing::error!(error = %e, "cannot record a transition");
        }
        let st = self.state();
        if let Some(d) = st.deploy.as_ref()
            && d.log.len() > before_log
        {
            for (_, line) in &d.log[before_log..] {
                tracing::info!(deploy = d.id, "{line}");
            }
            // The verdict that moved a step is part of the history.
            if d.log[before_log..].iter().any(|(_, l)| l.starts_with("step "))
                && let Some(v) = lock(&self.live).analysis.as_ref().and_then(|a| a.last.clone())
            {
                lock(&self.live).verdicts.entry(d.id).or_default().push(v);
            }
        }
        if lock(&self.live).agent_ok {
            self.reconcile(&st, now).await;
            self.follow_data(now).await;
        }
        *lock(&self.published) = st.clone();
        self.save_history(&st);
    }

    fn warn_once(&self, key: &str, msg: &str) {
        if lock(&self.live).warned.insert(key.to_string()) {
            tracing::warn!("{msg}");
        }
    }

    fn analyse(&self, snap: &MetricsSnapshot, now: u64) {
        let desired = self.state().desired();
        let quiet = lock(&self.live).activity.update(snap, now);
        let judge_cfg = lock(&self.cfg).file.deploy.canary.analysis.clone();
        let mut verdict = None;
        {
            let mut live = lock(&self.live);
            let live = &mut *live;
            match &desired.analysis {
                Some(spec) => {
                    if live.analysis.as_ref().map(|a| a.key.as_str()) != Some(spec.key.as_str()) {
                        live.analysis = Some(Analysis::new(&spec.key, &judge_cfg, now));
                    }
                    if let Some(a) = live.analysis.as_mut() {
                        verdict = a.feed(snap, spec, &live.instances, now);
                    }
                }
                None => live.analysis = None,
            }
        }
        if let Some(v) = verdict {
            let id = self.state().active().map(|d| d.id);
            if let Ok(true) = self.apply(
                Event::Verdict {
                    outcome: v.outcome,
                    reason: v.reason.clone(),
                },
                now,
            ) && v.outcome == Outcome::Fail
                && let Some(id) = id
            {
                lock(&self.live).verdicts.entry(id).or_default().push(v);
            }
        }
        let idle_needed = lock(&self.cfg).file.deploy.session_idle.as_millis();
        for r in self.state().retiring.iter().filter(|r| !r.stopping) {
            if let Some(q) = quiet.get(&r.release)
                && *q >= idle_needed
            {
                let _ = self.apply(
                    Event::Idle {
                        release: r.release.clone(),
                        idle_ms: *q,
                    },
                    now,
                );
            }
        }
    }

    /// Brings instances and routes to what the machine wants.
    async fn reconcile(&self, st: &Service, now: u64) {
        let desired = st.desired();
        let instances = lock(&self.live).instances.clone();
        let running = |release: &str, group: &str| -> Vec<&InstanceInfo> {
            let mut v: Vec<&InstanceInfo> = instances
                .iter()
                .filter(|i| i.release == release && i.group_name() == group)
                .filter(|i| {
                    matches!(
                        i.state,
                        InstanceState::Starting | InstanceState::Ready | InstanceState::Crashed
                    )
                })
                .collect();
            v.sort_by_key(|i| instance_number(&i.id));
            v
        };
        // Start what is missing; mark what is too many as victims.
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for g in &desired.groups {
            let have = running(&g.release, &g.group);
            for i in have.iter().take(g.count as usize) {
                keep.insert(i.id.clone());
            }
            if (have.len() as u32) < g.count {
                let req = StartRequest {
                    release: g.release.clone(),
                    count: g.count - have.len() as u32,
                    group: (g.group != g.release).then(|| g.group.clone()),
                };
                match self.agent.post::<_, InstanceList>("/v1/instances", &req).await {
                    Ok(l) => {
                        for i in &l.instances {
                            tracing::info!(instance = %i.id, release = %i.release, addr = %i.addr, "instance started");
                        }
                    }
                    Err(e) => {
                        tracing::error!(release = %g.release, error = %e, "cannot start instances");
                        if matches!(&e, plumbing::client::ClientError::Api { status, .. } if status.as_u16() == 404)
                            && st.active().is_some_and(|d| d.release == g.release)
                        {
                            let _ = self.apply(
                                Event::Abort {
                                    reason: format!("cannot start {}: {e}", g.release),
                                },
                                now,
                            );
                        }
                    }
                }
            }
        }
        let victims: Vec<&InstanceInfo> = instances
            .iter()
            .filter(|i| {
                matches!(
                    i.state,
                    InstanceState::Starting
                        | InstanceState::Ready
                        | InstanceState::Crashed
                        | InstanceState::CrashLoop
                        | InstanceState::Failed
                )
            })
            .filter(|i| !keep.contains(&i.id))
            .collect();
        {
            let mut live = lock(&self.live);
            let ids: BTreeSet<String> = victims.iter().map(|i| i.id.clone()).collect();
            live.victims.retain(|id, _| ids.contains(id));
            for id in ids {
                live.victims.entry(id).or_insert(now);
            }
        }
        let victim_set: BTreeMap<String, u64> = lock(&self.live).victims.clone();
        // Drain start: instances that take no new sessions from now on (on
        // their way out, or in a draining release) hear it at once through
        // their drain hook, while the drain deadline runs.
        let draining: BTreeSet<&str> = desired
            .routes
            .iter()
            .filter(|r| r.state != RouteState::Active)
            .map(|r| r.release.as_str())
            .collect();
        let leaving: Vec<String> = instances
            .iter()
            .filter(|i| i.state == InstanceState::Ready && !i.drain_notified)
            .filter(|i| victim_set.contains_key(&i.id) || draining.contains(i.release.as_str()))
            .map(|i| i.id.clone())
            .collect();
        if !leaving.is_empty() {
            let req = wire::agent::NotifyDrainRequest { ids: leaving.clone() };
            match self
                .agent
                .post::<_, InstanceList>("/v1/instances/notify-drain", &req)
                .await
            {
                Ok(_) => tracing::info!(instances = ?leaving, "drain started; instances told through their drain hook"),
                Err(e) => tracing::warn!(error = %e, "cannot notify draining instances"),
            }
        }
        // Routes.
        let (cohorts, deadline) = {
            let c = lock(&self.cfg);
            (c.file.routing.cohorts.clone(), c.file.deploy.drain_deadline)
        };
        let table = build_table(&desired, &instances, &victim_set, &cohorts, deadline);
        let unchanged = lock(&self.live).last_table.as_ref() == Some(&table);
        if !unchanged {
            match self
                .router
                .call::<_, wire::api::Applied>(http::Method::PUT, "/v1/routes", Some(&table))
                .await
            {
                Ok(a) => {
                    tracing::info!(generation = a.generation, "routes applied");
                    lock(&self.live).last_table = Some(table);
                }
                Err(e) => tracing::error!(error = %e, "cannot apply routes"),
            }
        }
        // Stop victims once the router has nothing open on them.
        if !victims.is_empty() && lock(&self.live).last_table.is_some() {
            let drain: Option<DrainStatus> = self.router.get("/v1/drain").await.ok();
            // The router closes long-lived connections (WebSocket 1012) at the
            // drain deadline; give it a few seconds past that before stopping.
            let deadline = lock(&self.cfg).file.deploy.drain_deadline.as_millis() + 5_000;
            let mut stop = Vec::new();
            for v in &victims {
                let since = victim_set.get(&v.id).copied().unwrap_or(now);
                let seen = drain.as_ref().and_then(|d| d.instance(&v.release, &v.id));
                // Taken out of traffic: down, removed, or absent from the router.
                let out = seen
                    .is_none_or(|d| matches!(d.state, wire::api::DrainState::Down | wire::api::DrainState::Removed));
                let open = seen.map_or(0, |d| d.open_requests + d.open_long_lived);
                let not_ready = v.state != InstanceState::Ready;
                if not_ready || (out && open == 0) || now.saturating_sub(since) > deadline {
                    stop.push(v.id.clone());
                }
            }
            if !stop.is_empty() {
                let req = StopRequest {
                    ids: stop.clone(),
                    ..Default::default()
                };
                match self.agent.post::<_, InstanceList>("/v1/instances/stop", &req).await {
                    Ok(_) => tracing::info!(instances = ?stop, "instances drained from the router; stopping them"),
                    Err(e) => tracing::error!(error = %e, "cannot stop instances"),
                }
            }
        }
        // The `current` link follows the current release.
        if let Some(cur) = &desired.current
            && lock(&self.live).current_link.as_deref() != Some(cur.as_str())
        {
            #[derive(serde::Serialize)]
            struct SetCurrent<'a> {
                release: &'a str,
            }
            if self
                .agent
                .post::<_, wire::agent::ReleaseList>("/v1/releases/current", &SetCurrent { release: cur })
                .await
                .is_ok()
            {
                lock(&self.live).current_link = Some(cur.clone());
            }
        }
    }

    fn save_history(&self, st: &Service) {
        let Some(d) = st.deploy.as_ref() else { return };
        let info = self.info(st, d);
        let mut stable = info.clone();
        // Live counts change all the time; history records the deploy's course.
        stable.groups.clear();
        stable.last_verdict = None;
        stable.progress = 0.0;
        stable.detail.clear();
        let key = serde_json::to_string(&stable).unwrap_or_default();
        if lock(&self.live).saved.get(&d.id) == Some(&key) {
            return;
        }
        if lock(&self.journal).save_deploy(&info).is_ok() {
            lock(&self.live).saved.insert(d.id, key);
        }
    }

    /// The API's view of a deploy.
    pub fn info(&self, st: &Service, d: &Deploy) -> DeployInfo {
        let live = lock(&self.live);
        let desired = st.desired();
        let active = !d.phase.finished();
        let groups = if active {
            desired
                .groups
                .iter()
                .map(|g| {
                    let route = desired
                        .routes
                        .iter()
                        .find(|r| r.groups.contains(&g.group) && r.release == g.release);
                    let ready = st
                        .groups
                        .get(&format!("{}/{}", g.release, g.group))
                        .map_or(0, |o| o.ready);
                    GroupStatus {
                        release: g.release.clone(),
                        group: g.group.clone(),
                        wanted: g.count,
                        ready,
                        weight: route.map_or(0, |r| r.weight),
                        state: route.map_or("unrouted", |r| r.state.as_str()).to_string(),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let (detail, progress) = describe(st, d, unix_ms());
        DeployInfo {
            id: d.id,
            release: d.release.clone(),
            from: d.from.clone(),
            strategy: d.strategy,
            phase: d.phase.name().to_string(),
            paused: d.paused_at.is_some(),
            detail,
            progress,
            step: match d.phase {
                Phase::Step { index, .. } => Some(index),
                _ => None,
            },
            steps: d.plan.steps.len(),
            canary_weight: d.canary_weight(),
            started_ms: d.started_ms,
            finished_ms: d.finished_ms,
            outcome: d.outcome.clone(),
            groups,
            last_verdict: if active {
                live.analysis.as_ref().and_then(|a| a.last.clone())
            } else {
                None
            },
            verdicts: live.verdicts.get(&d.id).cloned().unwrap_or_default(),
            events: d
                .log
                .iter()
                .map(|(at, l)| format!("+{}s {l}", at.saturating_sub(d.started_ms) / 1000))
                .collect(),
        }
    }

    pub fn status(&self) -> ServiceStatus {
        self.status_of(self.published())
    }

    /// Status including commands accepted since the last turn.
    pub fn status_now(&self) -> ServiceStatus {
        self.status_of(self.state())
    }

    fn status_of(&self, st: Service) -> ServiceStatus {
        let live = lock(&self.live);
        let name = lock(&self.cfg).file.service.name.clone();
        let table = live.last_table.clone();
        let router = live.router.clone();
        let instances = live.instances.clone();
        let data = live.data_note.clone();
        drop(live);
        ServiceStatus {
            service: name,
            current: st.current.clone(),
            previous: st.previous.clone(),
            deploy: st.deploy.as_ref().map(|d| self.info(&st, d)),
            router,
            instances,
            routes: table,
            data,
        }
    }

    pub fn history(&self, limit: usize) -> Vec<DeployInfo> {
        let mut list = lock(&self.journal).deploys(limit).unwrap_or_default();
        // The running deploy's live view replaces its saved one.
        let st = self.published();
        if let Some(d) = st.active()
            && let Some(first) = list.iter_mut().find(|x| x.id == d.id)
        {
            *first = self.info(&st, d);
        }
        list
    }

    pub fn deploy_info(&self, id: i64) -> Option<DeployInfo> {
        // Published first; a deploy accepted since the last turn is shown as it is.
        for st in [self.published(), self.state()] {
            if let Some(d) = st.deploy.as_ref().filter(|d| d.id == id) {
                return Some(self.info(&st, d));
            }
        }
        lock(&self.journal).deploy(id).ok().flatten()
    }
}

/// Lines of what the data did, in one: "nothing to do" when empty.
fn summary(lines: &[String]) -> String {
    if lines.is_empty() {
        "nothing to do".into()
    } else {
        lines.join("; ")
    }
}

fn instance_number(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

/// Groups as the machine sees them.
pub fn observe_groups(instances: &[InstanceInfo]) -> Vec<GroupObs> {
    let mut map: BTreeMap<(String, String), GroupObs> = BTreeMap::new();
    for i in instances {
        let g = map
            .entry((i.release.clone(), i.group_name().to_string()))
            .or_insert_with(|| GroupObs {
                release: i.release.clone(),
                group: i.group_name().to_string(),
                live: 0,
                ready: 0,
                failed: None,
            });
        if agent::supervisor::is_live(i.state) && i.state != InstanceState::Draining {
            g.live += 1;
        }
        if i.state == InstanceState::Ready {
            g.ready += 1;
        }
        if matches!(i.state, InstanceState::CrashLoop | InstanceState::Failed) {
            let why = i.note.clone().unwrap_or_else(|| i.state.as_str().to_string());
            g.failed.get_or_insert(format!("{} {}: {why}", i.id, i.state.as_str()));
        }
    }
    map.into_values().collect()
}

/// The route table for `desired` from the instances that are ready.
pub fn build_table(
    desired: &Desired,
    instances: &[InstanceInfo],
    victims: &BTreeMap<String, u64>,
    cohorts: &[wire::CohortRule],
    drain_deadline: wire::HumanDuration,
) -> RouteTable {
    let mut t = RouteTable::default();
    for spec in &desired.routes {
        let members: Vec<&InstanceInfo> = instances
            .iter()
            .filter(|i| i.release == spec.release && spec.groups.iter().any(|g| g == i.group_name()))
            .filter(|i| i.state == InstanceState::Ready)
            .collect();
        if members.is_empty() && spec.state != RouteState::Active {
            continue;
        }
        let mut r = Release::new(spec.release.clone(), spec.weight);
        r.state = spec.state;
        r.protocol = UpstreamProtocol::Http1;
        r.drain_deadline = Some(if spec.drain_now {
            wire::HumanDuration::from_millis(0)
        } else {
            drain_deadline
        });
        r.client_versions = members.iter().find_map(|i| i.client_versions.clone());
        let mut sorted = members.clone();
        sorted.sort_by_key(|i| instance_number(&i.id));
        r.instances = sorted
            .iter()
            .map(|i| Instance {
                id: i.id.clone(),
                addr: i.addr.clone(),
                // An instance on its way out takes nothing new; in-flight requests
                // finish, long-lived connections get until the drain deadline.
                state: if victims.contains_key(&i.id) {
                    RouteState::Down
                } else {
                    RouteState::Active
                },
            })
            .collect();
        t.releases.push(r);
    }
    let present: BTreeSet<&str> = t.releases.iter().map(|r| r.id.as_str()).collect();
    t.cohorts = cohorts
        .iter()
        .filter(|c| present.contains(c.release.as_str()))
        .cloned()
        .collect();
    t
}

/// Words and a 0..=1 progress for a deploy.
fn describe(st: &Service, d: &Deploy, now: u64) -> (String, f64) {
    let ready = |r: &str| st.groups.get(&format!("{r}/{r}")).map_or(0, |g| g.ready);
    let n = d.plan.count;
    let paused = if d.paused_at.is_some() { " (paused)" } else { "" };
    let k = d.plan.steps.len().max(1) as f64;
    match &d.phase {
        Phase::Starting => {
            let want = match d.strategy {
                wire::service::Strategy::Canary if d.from.is_some() => d.plan.canary_count,
                _ => n,
            };
            (
                format!(
                    "starting {want} instances of {} ({}/{want} ready){paused}",
                    d.release,
                    ready(&d.release)
                ),
                0.05 * ready(&d.release) as f64 / want.max(1) as f64,
            )
        }
        Phase::Step {
            index,
            since,
            extensions,
        } => {
            let (w, hold) = d.plan.steps[*index];
            let total = hold + *extensions as u64 * d.plan.extension_ms;
            let at = d.paused_at.unwrap_or(now);
            let elapsed = at.saturating_sub(*since).min(total);
            let ext = if *extensions > 0 {
                format!(", extended {extensions}x")
            } else {
                String::new()
            };
            (
                format!(
                    "step {} of {}: {w}% of new sessions on {}, {}s of {}s{ext}{paused}",
                    index + 1,
                    d.plan.steps.len(),
                    d.release,
                    elapsed / 1000,
                    total / 1000
                ),
                0.05 + 0.9 * (*index as f64 + elapsed as f64 / total.max(1) as f64) / k,
            )
        }
        Phase::Promoting => (
            format!(
                "promoting: scaling {} to {n} instances ({}/{n} ready){paused}",
                d.release,
                ready(&d.release)
            ),
            0.96,
        ),
        Phase::Checking { since } => {
            let left = (since + d.plan.check_ms).saturating_sub(now) / 1000;
            (
                format!(
                    "all {n} instances of {} up; switching every new session in {left}s{paused}",
                    d.release
                ),
                0.5 + 0.5 * (now.saturating_sub(*since)) as f64 / d.plan.check_ms.max(1) as f64,
            )
        }
        Phase::Rolling { added, removed, .. } => (
            format!(
                "{removed}/{n} old instances replaced, {}/{added} new ready{paused}",
                ready(&d.release)
            ),
            (*added + *removed) as f64 / (2 * n).max(1) as f64,
        ),
        Phase::Aborting { reason } => (format!("aborting: {reason}"), 1.0),
        Phase::Done => ("promoted".to_string(), 1.0),
        Phase::Aborted => (format!("aborted: {}", d.outcome.clone().unwrap_or_default()), 1.0),
    }
}
