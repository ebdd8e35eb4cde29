//! The control loop and the commands: observe, feed the machine (journaled first), judge, plan and execute.
//! The state is published once the router confirmed its routes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rollout::{Deploy, Event, RouteSpec, Service, Transition, Update};
use wire::RouteTable;
use wire::agent::InstanceInfo;
use wire::api::RouterStatus;
use wire::metrics::MetricsSnapshot;
use wire::service::{DeployInfo, Held, HoldReason, ServiceStatus};

use crate::book::{Book, CommandError};
use crate::config::{ConfigError, ServiceConfig};
use crate::executor::{self, Parts};
use crate::journal::JournalError;
use crate::judging::Judging;
use crate::planner::{self, HostDesired, HostObserved, Memory};
use crate::view::{self, Verdicts};

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the loop last saw of the host and did to the data: what `status` shows besides the machine.
#[derive(Debug, Default)]
struct Seen {
    instances: Vec<InstanceInfo>,
    router: Option<RouterStatus>,
    /// The table the router last confirmed.
    routes: Option<RouteTable>,
    /// The machine's routes that table was for. None until the first confirmed turn: a (re)started control plane
    /// holds until the router confirmed its routes.
    confirmed_for: Option<Vec<RouteSpec>>,
    /// What the control plane last did to the data (`[data]`).
    data: Option<String>,
    /// The router's last metrics (the dashboard's request and error rates).
    metrics: Option<MetricsSnapshot>,
}

/// When the loop last brought the data in line with the live releases.
#[derive(Debug, Default)]
struct DataFollow {
    /// The live releases it was last done for, and when to try again after a failure.
    seen: Option<BTreeSet<String>>,
    retry_at: u64,
}

/// What only the loop keeps between its turns.
#[derive(Debug, Default)]
pub(crate) struct LoopState {
    memory: Memory,
    judging: Judging,
    /// Warnings already given (an unreachable agent or router is said once).
    warned: BTreeSet<&'static str>,
    data: DataFollow,
    /// The deploy history as last saved, by deploy.
    saved: BTreeMap<i64, String>,
    /// The pre-traffic check running for a deploy.
    pre_traffic: Option<(i64, tokio::task::JoinHandle<Result<String, String>>)>,
}

/// What a reload changed.
#[derive(Debug, Default)]
pub(crate) struct Reloaded {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
}

/// The control plane.
pub struct Control {
    pub(crate) cfg: Mutex<ServiceConfig>,
    pub token: String,
    book: Mutex<Book>,
    seen: Mutex<Seen>,
    verdicts: Mutex<Verdicts>,
    parts: Parts,
    /// Held while the data is moved for a starting release until its deploy is recorded, and while the loop
    /// follows the live releases, so the loop never sees the data moved but not the deploy.
    data_turn: tokio::sync::Mutex<()>,
    /// The parts the supervision restarted (`slipway up` mode).
    pub(crate) restarts: crate::supervise::Shown,
    /// `[deploy.webhook]`'s queue.
    webhooks: crate::webhook::Webhooks,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lines of what the data did, in one: "nothing to do" when empty.
fn summary(lines: &[String]) -> String {
    if lines.is_empty() {
        "nothing to do".into()
    } else {
        lines.join("; ")
    }
}

impl Control {
    /// Reads slipway.toml again. Cohorts, deploy and instance settings apply at once (the next deploy, the next
    /// route table); listener, affinity, health and log changes need `slipway down` and `up`.
    pub(crate) fn reload(&self) -> Result<Reloaded, ConfigError> {
        let path = self.cfg.lock().map(|g| g.path.clone()).unwrap_or_default();
        let new = ServiceConfig::load(&path)?;
        let mut cur = self.cfg.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = Reloaded::default();
        let (a, b) = (&cur.file, &new.file);
        if a.routing.cohorts != b.routing.cohorts {
            r.applied.push("routing.cohort".into());
        }
        if a.deploy != b.deploy {
            r.applied.push("deploy (from the next deploy on)".into());
        }
        if a.instance.count != b.instance.count {
            r.applied.push("instance.count (from the next deploy on)".into());
        }
        if a.listeners != b.listeners {
            r.needs_restart.push("listener".into());
        }
        if a.routing.affinity != b.routing.affinity
            || a.routing.client_version_header != b.routing.client_version_header
            || a.routing.health != b.routing.health
        {
            r.needs_restart
                .push("routing (affinity, client_version_header, health)".into());
        }
        if a.instance != b.instance {
            r.applied.push("instance (from the next deploy on)".into());
        }
        if a.logs != b.logs {
            r.needs_restart.push("logs".into());
        }
        if a.service != b.service {
            r.needs_restart.push("service".into());
        }
        // Apply what applies live; keep the rest as it runs.
        let mut merged = cur.file.clone();
        merged.routing.cohorts = b.routing.cohorts.clone();
        merged.deploy = b.deploy.clone();
        merged.instance = b.instance.clone();
        cur.file = merged;
        Ok(r)
    }

    /// Opens the journal and replays it through the machine.
    pub(crate) fn open(cfg: ServiceConfig, token: String, parts: Parts) -> Result<Arc<Control>, JournalError> {
        let book = Book::open(&cfg.layout.journal())?;
        Ok(Arc::new(Control {
            cfg: Mutex::new(cfg),
            token,
            book: Mutex::new(book),
            seen: Mutex::new(Seen::default()),
            verdicts: Mutex::new(Verdicts::default()),
            parts,
            data_turn: tokio::sync::Mutex::new(()),
            restarts: Default::default(),
            webhooks: Default::default(),
        }))
    }

    pub(crate) fn state(&self) -> Service {
        lock(&self.book).state().clone()
    }

    /// The state the world has caught up with.
    fn published(&self) -> Service {
        lock(&self.book).published().clone()
    }

    /// Applies an event; journals it before anything acts on it. A state whose routes the router has not confirmed
    /// holds at once, so nothing more is stepped, promoted or retired from it until the router runs them.
    pub(crate) fn apply(&self, ev: Event, now: u64) -> Result<Update, CommandError> {
        let mut update = lock(&self.book).apply(&ev, now)?;
        if !matches!(ev, Event::Hold { .. }) && !self.routes_confirmed() {
            let hold = Event::Hold {
                reason: HoldReason::RoutesUnconfirmed,
            };
            match lock(&self.book).apply(&hold, now) {
                Ok(u) => update.transitions.extend(u.transitions),
                Err(e) => tracing::error!(error = %e, "cannot record the hold"),
            }
        }
        self.tell(&update.transitions);
        Ok(update)
    }

    /// The router runs the routes the machine wants now.
    fn routes_confirmed(&self) -> bool {
        let want = lock(&self.book).state().desired().routes;
        lock(&self.seen).confirmed_for.as_ref() == Some(&want)
    }

    fn tell(&self, transitions: &[Transition]) {
        if transitions.is_empty() {
            return;
        }
        let d = lock(&self.book).state().deploy.clone();
        let deploy = d.as_ref().map(|d| d.id);
        for t in transitions {
            match t {
                // Every new table waits for the router's answer a moment: said only when it is more than that.
                Transition::Held {
                    reason: HoldReason::RoutesUnconfirmed,
                } => tracing::debug!(?deploy, "{t}"),
                Transition::Unheld { held_ms } if *held_ms < 2_000 => tracing::debug!(?deploy, "{t}"),
                _ => tracing::info!(?deploy, "{t}"),
            }
            let Some(d) = &d else { continue };
            self.notify(d, t);
            let from = d.from.clone().unwrap_or_default();
            match t {
                Transition::Promoted { .. } => {
                    crate::hooks::spawn(self.hook("post_deploy", |h| &h.post_deploy, &d.release, &from, "done", ""))
                }
                Transition::Aborted { .. } => {
                    let why = d.outcome.clone().unwrap_or_default();
                    crate::hooks::spawn(self.hook("on_abort", |h| &h.on_abort, &d.release, &from, "aborted", &why))
                }
                _ => {}
            }
        }
    }

    /// Queues the webhook's event for a transition that is one (`[deploy.webhook]`).
    fn notify(&self, d: &Deploy, t: &Transition) {
        let event = match t {
            Transition::Started { .. } if d.rollback => "rolled_back",
            Transition::Started { .. } => "started",
            Transition::StepEntered { .. } => "step",
            Transition::Paused => "paused",
            Transition::Resumed { .. } => "resumed",
            Transition::Promoted { .. } => "promoted",
            Transition::Aborted { .. } => "aborted",
            Transition::RolledBack { .. } => "rolled_back",
            _ => return,
        };
        let (hook, base, service) = {
            let c = lock(&self.cfg);
            (
                c.file.deploy.webhook.clone(),
                c.base.clone(),
                c.file.service.name.clone(),
            )
        };
        let Some(hook) = hook else { return };
        let (step, weight) = match t {
            Transition::StepEntered { index, weight } => (Some(index + 1), Some(*weight)),
            _ => (None, None),
        };
        let body = serde_json::json!({
            "event": event,
            "service": service,
            "deploy": d.id,
            "release": d.release,
            "from": d.from,
            "strategy": d.strategy.as_str(),
            "phase": d.phase.kind().as_str(),
            "step": step,
            "weight": weight,
            "message": t.to_string(),
            "reason": matches!(t, Transition::Aborted { .. }).then(|| d.outcome.clone()).flatten(),
            "time": agent::rfc3339_micros(unix_ms() as i64 * 1000),
        });
        self.webhooks.send(crate::webhook::delivery(&hook, &base, event, body));
    }

    /// A `[deploy.hooks]` command with the deploy in its environment (its id: the running or next one).
    fn hook(
        &self,
        name: &'static str,
        pick: impl Fn(&wire::service::DeployHooks) -> &Vec<String>,
        release: &str,
        from: &str,
        outcome: &str,
        reason: &str,
    ) -> crate::hooks::Hook {
        let st = self.state();
        let id = match &st.deploy {
            Some(d) if outcome != "starting" => d.id,
            _ => st.next_id + 1,
        };
        let c = lock(&self.cfg);
        crate::hooks::Hook {
            name,
            argv: pick(&c.file.deploy.hooks).clone(),
            dir: c.base.clone(),
            env: vec![
                ("SLIPWAY_DEPLOY", id.to_string()),
                ("SLIPWAY_RELEASE", release.to_string()),
                ("SLIPWAY_FROM", from.to_string()),
                ("SLIPWAY_OUTCOME", outcome.to_string()),
                ("SLIPWAY_REASON", reason.to_string()),
            ],
        }
    }

    /// An event of the loop's own: the verdict behind a move it caused is kept in the deploy's history.
    fn record(&self, ev: Event, now: u64, lp: &LoopState) {
        // A step that ends in an abort (still inconclusive, or failed at its hold's end) keeps its verdict too.
        let in_step = lock(&self.book)
            .state()
            .active()
            .is_some_and(|d| matches!(d.phase, rollout::Phase::Step { .. }));
        let moved = |t: &Transition| t.judged() || (in_step && matches!(t, Transition::Aborting { .. }));
        match self.apply(ev, now) {
            Ok(u) if u.transitions.iter().any(moved) => {
                let id = lock(&self.book).state().deploy.as_ref().map(|d| d.id);
                if let (Some(v), Some(id)) = (lp.judging.last(), id) {
                    lock(&self.verdicts).by_deploy.entry(id).or_default().push(v);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot record what the loop saw"),
        }
    }

    /// A deploy request: the release must exist on the host.
    pub(crate) async fn deploy(
        &self,
        release: &str,
        strategy: Option<wire::service::Strategy>,
        template: Option<wire::agent::InstanceTemplate>,
    ) -> Result<DeployInfo, CommandError> {
        let rels = self
            .parts
            .releases()
            .await
            .map_err(|e| CommandError::NotFound(format!("cannot ask the agent for its releases: {e}")))?;
        if !rels.releases.iter().any(|r| r.id == release) {
            return Err(CommandError::NotFound(format!(
                "no release {release} on the host; add it first with `slipway release add <dir|archive> --id {release}`"
            )));
        }
        let template = self.take_config(template)?;
        let (plan, default) = {
            let c = lock(&self.cfg);
            (c.plan(), c.default_strategy())
        };
        let st = self.state();
        // The hook runs only for a deploy the machine would accept (one at a time, not the current release).
        if st.active().is_none() && st.current.as_deref() != Some(release) {
            let from = st.current.clone().unwrap_or_default();
            let pre = self.hook("pre_deploy", |h| &h.pre_deploy, release, &from, "starting", "");
            crate::hooks::run(&pre).await.map_err(CommandError::Hook)?;
        }
        let _turn = self.data_turn.lock().await;
        self.prepare_data(release).await?;
        let ev = Event::Deploy {
            release: release.to_string(),
            strategy: strategy.unwrap_or(default),
            plan,
            template: Some(Box::new(template)),
        };
        self.apply(ev, unix_ms())?;
        let st = self.state();
        let d = st
            .deploy
            .as_ref()
            .ok_or_else(|| CommandError::NotFound("deploy vanished".into()))?;
        Ok(self.info(&st, d))
    }

    /// slipway.toml as it is now, for a deploy: its instance, deploy and cohort settings are taken; a change that
    /// cannot apply live (listeners, affinity, ...) refuses the deploy with the reason. The template is `given`
    /// (resolved by `slipway deploy`) or the file's, resolved in this process's environment.
    fn take_config(
        &self,
        given: Option<wire::agent::InstanceTemplate>,
    ) -> Result<wire::agent::InstanceTemplate, CommandError> {
        let path = lock(&self.cfg).path.clone();
        let new = ServiceConfig::load(&path).map_err(|e| CommandError::Config(e.to_string()))?;
        let mut cur = lock(&self.cfg);
        let fixed = crate::template::not_live(&cur.file, &new.file);
        if !fixed.is_empty() {
            return Err(CommandError::Config(format!(
                "{} changed what a deploy cannot apply live: {}; undo the change, or apply it with `slipway down`                  and `slipway up`",
                path.display(),
                fixed.join(", ")
            )));
        }
        let template = match given {
            Some(t) => t,
            None => new
                .instance_template_here()
                .map_err(|p| CommandError::Config(p.to_string()))?,
        };
        agent::Spec::new(&template).map_err(|p| {
            let words: Vec<String> = p.iter().map(|p| p.to_string()).collect();
            CommandError::Config(words.join("; "))
        })?;
        cur.file.instance = new.file.instance.clone();
        cur.file.deploy = new.file.deploy.clone();
        cur.file.routing.cohorts = new.file.routing.cohorts.clone();
        Ok(template)
    }

    pub(crate) async fn rollback(&self) -> Result<(), CommandError> {
        // The previous release may start again: the gates come down first.
        let _turn = self.data_turn.lock().await;
        if let Some(prev) = self.state().previous {
            self.prepare_data(&prev).await?;
        }
        let plan = lock(&self.cfg).plan();
        self.apply(Event::Rollback { plan }, unix_ms())?;
        Ok(())
    }

    /// Releases that may read and write the data: those with live instances, and those the machine wants running.
    pub(crate) fn live_releases(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.state().desired().groups.into_iter().map(|g| g.release).collect();
        out.extend(
            lock(&self.seen)
                .instances
                .iter()
                .filter(|i| agent::is_live(i.state))
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
        lock(&self.seen).data = Some(format!("before {release}: {}", summary(&lines)));
        Ok(())
    }

    /// Contract migrations and raised write gates once the live releases changed.
    async fn follow_data(&self, lp: &mut LoopState, now: u64) {
        let (plan, root) = {
            let c = lock(&self.cfg);
            (c.data(), c.layout.root.clone())
        };
        if plan.is_empty() {
            return;
        }
        let _turn = self.data_turn.lock().await;
        let live = self.live_releases();
        if lp.data.seen.as_ref() == Some(&live) && now < lp.data.retry_at {
            return;
        }
        let set = live.clone();
        let out = tokio::task::spawn_blocking(move || crate::data::after_change(&plan, &root, &set)).await;
        lp.data.seen = Some(live.clone());
        let note = match out {
            Ok(Ok(lines)) => {
                for line in &lines {
                    tracing::info!("data: {line}");
                }
                // Done, or a contract step waits for a release to go:
                // looked at again when the set of live releases changes.
                lp.data.retry_at = u64::MAX;
                let names: Vec<&str> = live.iter().map(String::as_str).collect();
                (!lines.is_empty()).then(|| format!("with {}: {}", names.join(", "), summary(&lines)))
            }
            Ok(Err(e)) => {
                let what = "data: cannot bring the data in line with the live releases; retrying in 30 s";
                tracing::warn!(error = %e, "{what}");
                lp.data.retry_at = now + 30_000;
                Some(format!("failed, retrying: {e}"))
            }
            Err(e) => {
                lp.data.retry_at = now + 30_000;
                Some(format!("failed: {e}"))
            }
        };
        if let Some(n) = note {
            lock(&self.seen).data = Some(n);
        }
    }

    /// One turn of the loop.
    /// The loop's state for a (re)started control plane: the journaled analysis evidence is offered to the judge.
    pub(crate) fn loop_state(&self) -> LoopState {
        let mut lp = LoopState::default();
        match lock(&self.book).journal().saved_analysis() {
            Ok(Some(saved)) => lp.judging.offer(saved),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the journaled analysis is unreadable; a running canary step starts over")
            }
        }
        lp
    }

    /// Observes, holds the deploy first if a part is unreachable or the routes unconfirmed (so nothing moves on
    /// a world it cannot see or set), feeds the machine, reconciles, and ends the hold once the router confirmed.
    pub(crate) async fn tick(&self, lp: &mut LoopState) {
        let now = unix_ms();
        let instances = self.parts.instances().await;
        let metrics = self.parts.metrics().await;
        let router = self.parts.router_status().await;
        match &router {
            Ok(st) => {
                self.check_generation(st, lp);
                lock(&self.seen).router = Some(st.clone());
            }
            Err(e) => warn_once(lp, "router", &format!("router unreachable, deploy held: {e}")),
        }
        let reach = (instances.is_ok(), metrics.is_ok() && router.is_ok());
        if let Some(reason) = planner::hold_reason(reach.0, reach.1, self.routes_confirmed()) {
            self.record(Event::Hold { reason }, now, lp);
        }
        // The verdict first: any event recorded this turn moves the machine on (a step whose hold ends now),
        // and it must do so on this turn's verdict, not on the last turn's "still watching".
        match metrics {
            Ok(snap) => {
                // The analysis does not advance while held.
                if self.state().held.is_none() {
                    self.judge(&snap, lp, now);
                }
                lock(&self.seen).metrics = Some(snap);
            }
            Err(e) => warn_once(lp, "metrics", &format!("router metrics unreachable: {e}")),
        }
        let instances = self.observe_agent(instances, lp, now);
        self.pre_traffic(lp, now).await;
        self.record(Event::Tick, now, lp);
        if let Some(instances) = instances {
            self.reconcile(instances, lp, now).await;
            self.follow_data(lp, now).await;
        }
        // The hold ends only on the state the router confirmed, not on a command accepted meanwhile.
        match planner::hold_reason(reach.0, reach.1, self.routes_confirmed()) {
            Some(reason) => self.record(Event::Hold { reason }, now, lp),
            None if self.state().held.is_some() => {
                lp.warned.clear();
                self.record(Event::Unhold, now, lp);
            }
            None => {}
        }
        self.save_history(lp);
    }

    /// Starts the pre-traffic check of a deploy that waits for one, and records its result once it ended.
    async fn pre_traffic(&self, lp: &mut LoopState, now: u64) {
        let st = self.state();
        let waiting = st
            .active()
            .filter(|d| matches!(d.phase, rollout::Phase::PreTraffic { .. }));
        if let Some((id, job)) = lp.pre_traffic.take() {
            if !job.is_finished() && waiting.is_some_and(|d| d.id == id) {
                lp.pre_traffic = Some((id, job));
                return;
            }
            if !job.is_finished() {
                job.abort(); // its deploy moved on (an abort by hand)
            } else if waiting.is_some_and(|d| d.id == id) {
                let (passed, output) = match job.await {
                    Ok(Ok(out)) => (true, out),
                    Ok(Err(why)) => (false, why),
                    Err(e) => (false, format!("the check stopped: {e}")),
                };
                self.record(Event::PreTraffic { passed, output }, now, lp);
                return;
            }
        }
        let Some(d) = waiting else { return };
        let Some(check) = lock(&self.cfg).file.deploy.pre_traffic.clone() else {
            let output = "[deploy.pre_traffic] is gone from slipway.toml; nothing to check".to_string();
            return self.record(Event::PreTraffic { passed: true, output }, now, lp);
        };
        let instances: Vec<String> = lock(&self.seen)
            .instances
            .iter()
            .filter(|i| i.release == d.release && i.state == wire::agent::InstanceState::Ready)
            .map(|i| i.addr.clone())
            .collect();
        let job = crate::pretraffic::Job {
            check,
            instances,
            dir: lock(&self.cfg).base.clone(),
            env: vec![
                ("SLIPWAY_DEPLOY", d.id.to_string()),
                ("SLIPWAY_RELEASE", d.release.clone()),
                ("SLIPWAY_FROM", d.from.clone().unwrap_or_default()),
            ],
        };
        tracing::info!(deploy = d.id, instances = ?job.instances, "pre-traffic check started");
        lp.pre_traffic = Some((d.id, tokio::spawn(async move { crate::pretraffic::run(&job).await })));
    }

    /// A router that reports another generation than the one it answered for the confirmed table was restarted
    /// on other routes, or changed by someone else: the table is applied again before anything goes on.
    fn check_generation(&self, st: &RouterStatus, lp: &mut LoopState) {
        if let Some(g) = lp.memory.generation
            && g != st.generation
        {
            tracing::warn!(
                confirmed = g,
                reported = st.generation,
                "the router runs another route generation than the one it confirmed; applying the routes again"
            );
            planner::forget_table(&mut lp.memory);
            lock(&self.seen).confirmed_for = None;
        }
    }

    /// The agent's instances, fed to the machine as its groups (none when the agent is unreachable).
    fn observe_agent(
        &self,
        answer: Result<wire::agent::InstanceList, plumbing::client::ClientError>,
        lp: &mut LoopState,
        now: u64,
    ) -> Option<Vec<InstanceInfo>> {
        match answer {
            Ok(list) => {
                lp.warned.remove("agent");
                let groups = planner::observe_groups(&list.instances);
                lock(&self.seen).instances = list.instances.clone();
                self.record(Event::Groups { groups }, now, lp);
                Some(list.instances)
            }
            Err(e) => {
                warn_once(lp, "agent", &format!("agent unreachable, deploy held: {e}"));
                None
            }
        }
    }

    /// Router metrics to the judge: its verdict, and the retiring releases that went quiet.
    fn judge(&self, snap: &MetricsSnapshot, lp: &mut LoopState, now: u64) {
        let st = self.state();
        let desired = st.desired();
        let (judge_cfg, idle_needed) = {
            let c = lock(&self.cfg);
            (
                c.file.deploy.canary.analysis.clone(),
                c.file.deploy.session_idle.as_millis(),
            )
        };
        let instances = lock(&self.seen).instances.clone();
        let (verdict, quiet) = lp.judging.observe(
            snap,
            desired.analysis.as_ref(),
            st.active(),
            &instances,
            &judge_cfg,
            now,
        );
        lock(&self.verdicts).last = lp.judging.last();
        if let Some(saved) = lp.judging.due_save(now)
            && let Err(e) = lock(&self.book).journal().save_analysis(&saved, now)
        {
            warn_once(lp, "analysis", &format!("cannot journal the analysis: {e}"));
        }
        if let Some(v) = verdict {
            self.record(
                Event::Verdict {
                    outcome: v.outcome,
                    reason: v.reason,
                },
                now,
                lp,
            );
        }
        for r in self.state().retiring.iter().filter(|r| !r.stopping) {
            if let Some(q) = quiet.get(&r.release)
                && *q >= idle_needed
            {
                let idle = Event::Idle {
                    release: r.release.clone(),
                    idle_ms: *q,
                };
                self.record(idle, now, lp);
            }
        }
    }

    /// Brings the host's instances and routes to what the machine wants; publishes the state once the router
    /// confirmed the table for it.
    async fn reconcile(&self, instances: Vec<InstanceInfo>, lp: &mut LoopState, now: u64) {
        let (st, seq, templates) = {
            let b = lock(&self.book);
            let (st, seq) = b.snapshot();
            (st, seq, b.templates().by_release.clone())
        };
        let want = {
            let c = lock(&self.cfg);
            HostDesired::whole(&st.desired(), &c.file.routing.cohorts, c.file.deploy.drain_deadline)
                .with_templates(&templates)
        };
        let seen = HostObserved { instances, drain: None };
        let turn = executor::turn(&self.parts, &want, seen, &mut lp.memory, now).await;
        {
            let mut seen = lock(&self.seen);
            seen.routes = lp.memory.table.clone();
            seen.confirmed_for = turn.confirmed.then(|| want.routes.clone());
        }
        for (release, why) in &turn.missing {
            if st.active().is_some_and(|d| &d.release == release) {
                let reason = format!("cannot start {release}: {why}");
                if let Err(e) = self.apply(Event::Abort { reason }, now) {
                    tracing::error!(error = %e, "cannot abort the deploy");
                }
            }
        }
        if turn.confirmed
            && let Err(e) = lock(&self.book).publish(st, seq)
        {
            tracing::error!(error = %e, "cannot record what the router confirmed");
        }
    }

    /// Saves the published deploy to the history when its course changed.
    fn save_history(&self, lp: &mut LoopState) {
        let st = self.published();
        let Some(d) = st.deploy.as_ref() else { return };
        let info = self.info(&st, d);
        let mut stable = info.clone();
        // Live counts change all the time; history records the deploy's course.
        stable.groups.clear();
        stable.last_verdict = None;
        stable.progress = 0.0;
        stable.detail.clear();
        let key = serde_json::to_string(&stable).unwrap_or_default();
        if lp.saved.get(&d.id) == Some(&key) {
            return;
        }
        if lock(&self.book).journal().save_deploy(&info).is_ok() {
            lp.saved.insert(d.id, key);
        }
    }

    /// The API's view of a deploy.
    /// The API's view of a deploy; a running one says first why it is held, if it is.
    pub(crate) fn info(&self, st: &Service, d: &Deploy) -> DeployInfo {
        let mut info = view::deploy_info(st, d, &lock(&self.verdicts), unix_ms());
        if !d.phase.finished()
            && let Some(h) = self.shown_hold()
        {
            info.detail = format!("{}; {}", h.message, info.detail);
        }
        info.changes = lock(&self.book)
            .templates()
            .changes
            .get(&d.id)
            .cloned()
            .unwrap_or_default();
        info
    }

    /// The hold as the API shows it: every new table waits a moment for the router's answer, which is not shown.
    fn shown_hold(&self) -> Option<Held> {
        let h = lock(&self.book).state().held?;
        let quick = h.reason == HoldReason::RoutesUnconfirmed && unix_ms().saturating_sub(h.since) < 2_000;
        (!quick).then(|| Held::new(h.reason, h.since))
    }

    pub(crate) fn status(&self) -> ServiceStatus {
        self.status_of(self.published())
    }

    /// Status including commands accepted since the last turn.
    pub(crate) fn status_now(&self) -> ServiceStatus {
        self.status_of(self.state())
    }

    fn status_of(&self, st: Service) -> ServiceStatus {
        let (instances, router, routes, data) = {
            let s = lock(&self.seen);
            (s.instances.clone(), s.router.clone(), s.routes.clone(), s.data.clone())
        };
        let held = self.shown_hold();
        ServiceStatus {
            service: lock(&self.cfg).file.service.name.clone(),
            current: st.current.clone(),
            previous: st.previous.clone(),
            deploy: st.deploy.as_ref().map(|d| self.info(&st, d)),
            router,
            instances,
            routes,
            data,
            held,
            restarts: lock(&self.restarts).clone(),
        }
    }

    /// The router's metrics as the loop last read them.
    pub(crate) fn metrics(&self) -> Option<MetricsSnapshot> {
        lock(&self.seen).metrics.clone()
    }

    pub(crate) fn history(&self, limit: usize) -> Vec<DeployInfo> {
        let mut list = lock(&self.book).journal().deploys(limit).unwrap_or_default();
        // The running deploy's live view replaces its saved one.
        let st = self.published();
        if let Some(d) = st.active()
            && let Some(first) = list.iter_mut().find(|x| x.id == d.id)
        {
            *first = self.info(&st, d);
        }
        list
    }

    pub(crate) fn deploy_info(&self, id: i64) -> Option<DeployInfo> {
        // Published first; a deploy accepted since the last turn is shown as it is.
        for st in [self.published(), self.state()] {
            if let Some(d) = st.deploy.as_ref().filter(|d| d.id == id) {
                return Some(self.info(&st, d));
            }
        }
        lock(&self.book).journal().deploy(id).ok().flatten()
    }
}

fn warn_once(lp: &mut LoopState, key: &'static str, msg: &str) {
    if lp.warned.insert(key) {
        tracing::warn!("{msg}");
    }
}
