//! The planner and the executor against simulated hosts with failing calls and crashes between any two calls.

use std::cell::RefCell;
use std::collections::BTreeMap;

use rollout::{Event, Plan, Service, Transition};
use wire::agent::{InstanceInfo, InstanceState};
use wire::judge::Outcome;
use wire::service::{HoldReason, Strategy};
use wire::{HumanDuration, RouteState, RouteTable};

use super::*;
use crate::executor::{self, CallError, Host};

const DEADLINE_MS: u64 = 10_000;

fn info(id: &str, release: &str, group: Option<&str>, state: InstanceState) -> InstanceInfo {
    InstanceInfo {
        id: id.into(),
        release: release.into(),
        group: group.map(str::to_string),
        addr: format!("127.0.0.1:{}", 10_000 + id.len()),
        port: 10_000,
        pid: Some(1),
        state,
        healthy: state == InstanceState::Ready,
        restarts: 0,
        started_at_ms: 0,
        note: None,
        last_output: Vec::new(),
        client_versions: None,
        drain_notified: false,
    }
}

fn want(groups: &[(&str, u32)], routes: &[(&str, u32, RouteState)]) -> HostDesired {
    HostDesired {
        groups: groups
            .iter()
            .map(|(r, n)| GroupSpec {
                release: r.to_string(),
                group: r.to_string(),
                count: *n,
            })
            .collect(),
        routes: routes
            .iter()
            .map(|(r, w, s)| RouteSpec {
                release: r.to_string(),
                groups: vec![r.to_string()],
                weight: *w,
                state: *s,
                drain_now: false,
            })
            .collect(),
        current: groups.first().map(|g| g.0.to_string()),
        cohorts: Vec::new(),
        drain_deadline: HumanDuration::from_millis(DEADLINE_MS),
        templates: BTreeMap::new(),
    }
}

fn stops(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::Agent(AgentCall::Stop { ids }) => ids.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// v2 is current; v1's instance is still ready but no longer wanted.
fn v1_retired() -> (HostDesired, HostObserved) {
    let w = want(&[("v2", 1)], &[("v2", 100, RouteState::Active)]);
    let seen = HostObserved {
        instances: vec![
            info("v2-0", "v2", None, InstanceState::Ready),
            info("v1-0", "v1", None, InstanceState::Ready),
        ],
        drain: None,
    };
    (w, seen)
}

#[test]
fn a_ready_instance_taken_out_of_traffic_waits_for_its_connections_or_its_deadline() {
    // v1 is retired: its instance is ready, the router took it out, a WebSocket is still open.
    let (w, mut seen) = v1_retired();
    seen.instances[1].drain_notified = true;
    let mut memory = Memory::default();
    let first = plan(&w, &seen, &memory, 1_000);
    assert!(
        first
            .iter()
            .any(|a| matches!(a, Action::Router(RouterCall::PutRoutes { out, .. }) if out == &["v1-0"])),
        "{first:?}"
    );
    assert!(
        stops(&first).is_empty(),
        "nothing stops before the router confirmed a table: {first:?}"
    );
    for a in &first {
        learn(a, Answer::Done, &mut seen, &mut memory, 1_000);
    }
    // The router's drain state is needed before the ready instance can stop.
    let second = plan(&w, &seen, &memory, 2_000);
    assert_eq!(second, vec![Action::Router(RouterCall::ReadDrain)]);
    let open = |n: u64| DrainView::from([(("v1".to_string(), "v1-0".to_string()), Traffic { out: true, open: n })]);
    learn(&second[0], Answer::Drain(open(1)), &mut seen, &mut memory, 2_000);
    assert!(
        plan(&w, &seen, &memory, 2_000).is_empty(),
        "a connection is open inside the deadline"
    );
    // A router that cannot say changes nothing; past the deadline (and its grace) it stops anyway.
    seen.drain = None;
    let late = 1_000 + DEADLINE_MS + STOP_GRACE_MS + 1;
    assert_eq!(stops(&plan(&w, &seen, &memory, late - 2)), Vec::<String>::new());
    assert_eq!(stops(&plan(&w, &seen, &memory, late)), vec!["v1-0".to_string()]);
    // Or at once when nothing is open.
    learn(&second[0], Answer::Drain(open(0)), &mut seen, &mut memory, 3_000);
    assert_eq!(stops(&plan(&w, &seen, &memory, 3_000)), vec!["v1-0".to_string()]);
}

#[test]
fn a_route_table_whose_answer_was_lost_is_applied_again_and_restarts_the_drain_clocks() {
    let (w, mut seen) = v1_retired();
    let mut memory = Memory::default();
    let put = plan(&w, &seen, &memory, 1_000)
        .into_iter()
        .find(|a| matches!(a, Action::Router(_)))
        .unwrap();
    learn(&put, Answer::Done, &mut seen, &mut memory, 1_000);
    assert_eq!(memory.out_since.get("v1-0"), Some(&1_000));
    forget(&put, &mut memory);
    assert_eq!(memory, Memory::default(), "what the router runs is unknown again");
    assert!(plan(&w, &seen, &memory, 60_000).contains(&put), "applied again");
}

/// One simulated instance: what the agent reports, and its traffic through the router.
struct Inst {
    info: InstanceInfo,
    /// Starting: ready (or failed) at; Crashed: restarted at; Draining: gone at.
    next_at: u64,
    requests: u64,
    long_lived: u64,
    /// Since when the router sends it nothing new (none: it takes traffic, or never did).
    out_since: Option<u64>,
    routed: bool,
}

/// A host: an agent and a router that answer the executor, with noise.
struct Fake {
    seed: u64,
    now: u64,
    rng: fastrand::Rng,
    noisy: bool,
    instances: BTreeMap<String, Inst>,
    next_id: BTreeMap<String, u64>,
    table: RouteTable,
    current_link: Option<String>,
    /// What the loop asked for this turn (starts are judged against it).
    want: Option<HostDesired>,
    /// The control plane died during this turn: no call reaches the host any more.
    crashed: bool,
    /// The router does not answer this turn (killed, restarting).
    router_down: bool,
    /// Out of 16: how often this world's router refuses a route table besides the common noise.
    put_fail: u8,
}

impl Fake {
    fn call(&mut self, a: &Action) -> Result<Answer, CallError> {
        if self.crashed {
            return Err(CallError::Failed("the control plane is gone".into()));
        }
        if matches!(a, Action::Router(_)) && self.router_down {
            return Err(CallError::Failed("cannot reach the router: connection refused".into()));
        }
        if matches!(a, Action::Router(RouterCall::PutRoutes { .. })) && self.noisy && self.rng.u8(0..16) < self.put_fail
        {
            return Err(CallError::Failed("the router refused the table".into()));
        }
        let fate = if self.noisy { self.rng.u8(0..16) } else { u8::MAX };
        match fate {
            0 => return Err(CallError::Failed("refused before it did anything".into())),
            1 => {
                self.crashed = true;
                return Err(CallError::Failed("the control plane died before the call".into()));
            }
            _ => {}
        }
        let answer = self.perform(a);
        match fate {
            2 => Err(CallError::Failed("done, but the answer was lost".into())),
            3 => {
                self.crashed = true;
                Err(CallError::Failed("the control plane died after the call".into()))
            }
            _ => Ok(answer),
        }
    }

    fn serving(&self, release: &str, group: &str) -> u32 {
        self.instances
            .values()
            .filter(|i| i.info.release == release && i.info.group_name() == group)
            .filter(|i| {
                matches!(
                    i.info.state,
                    InstanceState::Starting | InstanceState::Ready | InstanceState::Crashed
                )
            })
            .count() as u32
    }

    fn perform(&mut self, a: &Action) -> Answer {
        match a {
            Action::Agent(AgentCall::Start {
                release, group, count, ..
            }) => self.start(release, group.as_deref(), *count),
            Action::Agent(AgentCall::NotifyDrain { ids }) => {
                let mut out = Vec::new();
                for id in ids {
                    let i = self.instances.get_mut(id).expect("a known instance");
                    if agent::is_live(i.info.state) {
                        i.info.drain_notified = true;
                    }
                    out.push(i.info.clone());
                }
                Answer::Instances(out)
            }
            Action::Agent(AgentCall::Stop { ids }) => Answer::Instances(ids.iter().map(|id| self.stop(id)).collect()),
            Action::Agent(AgentCall::SetCurrent { release }) => {
                self.current_link = Some(release.clone());
                Answer::Done
            }
            Action::Router(RouterCall::PutRoutes { table, .. }) => {
                self.table = table.clone();
                self.route();
                Answer::Done
            }
            Action::Router(RouterCall::ReadDrain) => Answer::Drain(self.drain()),
        }
    }

    /// The agent starts instances; never more than the loop wants of a group.
    fn start(&mut self, release: &str, group: Option<&str>, count: u32) -> Answer {
        let (seed, g) = (self.seed, group.unwrap_or(release));
        let wanted = self.want.as_ref().and_then(|w| {
            w.groups
                .iter()
                .find(|s| s.release == release && s.group == g)
                .map(|s| s.count)
        });
        let have = self.serving(release, g);
        assert!(
            wanted.is_some_and(|n| have + count <= n),
            "seed {seed}: started twice: {count} more of {release}/{g} with {have} serving, {wanted:?} wanted"
        );
        let mut out = Vec::new();
        for _ in 0..count {
            let n = self.next_id.entry(release.to_string()).or_insert(0);
            let id = format!("{release}-{n}");
            *n += 1;
            let i = info(&id, release, group, InstanceState::Starting);
            out.push(i.clone());
            let next_at = self.now + self.rng.u64(100..4_000);
            let inst = Inst {
                info: i,
                next_at,
                requests: 0,
                long_lived: 0,
                out_since: None,
                routed: false,
            };
            self.instances.insert(id, inst);
        }
        Answer::Instances(out)
    }

    /// The agent stops an instance; never one with connections open inside its drain deadline.
    fn stop(&mut self, id: &str) -> InstanceInfo {
        let (seed, now) = (self.seed, self.now);
        let i = self.instances.get_mut(id).expect("a known instance");
        let open = i.requests + i.long_lived;
        if i.info.state == InstanceState::Ready && open > 0 {
            let cut = i.out_since.is_some_and(|s| now >= s + DEADLINE_MS);
            assert!(
                cut,
                "seed {seed}: {id} stopped with {open} open inside its drain deadline (out since {:?}, now {now})",
                i.out_since
            );
        }
        // The agent answers at once; the instance drains after.
        let answer = i.info.clone();
        i.info.state = match i.info.state {
            InstanceState::CrashLoop | InstanceState::Failed | InstanceState::Stopped => InstanceState::Stopped,
            _ => InstanceState::Draining,
        };
        i.next_at = now + 500;
        answer
    }

    /// What the router says: the instances it routes, and those out of traffic with something still open.
    fn drain(&self) -> DrainView {
        self.instances
            .values()
            .filter(|i| i.routed || i.out_since.is_some() && i.requests + i.long_lived > 0)
            .map(|i| {
                let t = Traffic {
                    out: i.out_since.is_some(),
                    open: i.requests + i.long_lived,
                };
                ((i.info.release.clone(), i.info.id.clone()), t)
            })
            .collect()
    }

    /// Which instances the router's table sends traffic to.
    fn route(&mut self) {
        let now = self.now;
        for i in self.instances.values_mut() {
            let takes = self.table.releases.iter().any(|r| {
                r.id == i.info.release
                    && r.state != RouteState::Down
                    && r.instances
                        .iter()
                        .any(|x| x.id == i.info.id && x.state == RouteState::Active)
            });
            if takes {
                i.routed = true;
                i.out_since = None;
            } else if i.routed {
                i.routed = false;
                i.out_since = Some(now);
            }
        }
    }

    /// Time passes: instances start, crash, drain and stop; traffic comes and goes.
    fn advance(&mut self, now: u64) {
        self.now = now;
        let noisy = self.noisy;
        for i in self.instances.values_mut() {
            let r = self.rng.u8(0..100);
            match i.info.state {
                InstanceState::Starting if now >= i.next_at => {
                    i.info.state = match r {
                        0..=2 if noisy => InstanceState::Failed,
                        3..=5 if noisy => InstanceState::Crashed,
                        _ => InstanceState::Ready,
                    };
                    i.next_at = now + 1_000;
                }
                InstanceState::Ready if noisy && r < 2 => i.info.state = InstanceState::Crashed,
                InstanceState::Ready if noisy && r == 2 => i.info.state = InstanceState::CrashLoop,
                InstanceState::Crashed if now >= i.next_at => {
                    i.info.state = InstanceState::Starting;
                    i.next_at = now + self.rng.u64(100..2_000);
                }
                InstanceState::Draining if now >= i.next_at => i.info.state = InstanceState::Stopped,
                _ => {}
            }
            if i.info.state != InstanceState::Ready {
                // No process, no connections (a crash or a stop drops them).
                i.requests = 0;
                i.long_lived = 0;
            } else if i.routed {
                i.requests = self.rng.u64(0..4);
                i.long_lived = (i.long_lived + self.rng.u64(0..2)).saturating_sub(self.rng.u64(0..2));
            } else {
                // Out of traffic: requests finish; long-lived ones are cut at the drain deadline.
                if self.rng.bool() {
                    i.requests = i.requests.saturating_sub(1);
                }
                if i.out_since.is_some_and(|s| now >= s + DEADLINE_MS) {
                    i.long_lived = 0;
                }
            }
        }
    }

    fn list(&self) -> Vec<InstanceInfo> {
        self.instances.values().map(|i| i.info.clone()).collect()
    }
}

struct World(RefCell<Fake>);

impl Host for World {
    async fn call(&self, a: &Action) -> Result<Answer, CallError> {
        self.0.borrow_mut().call(a)
    }
}

fn deploy_plan() -> Plan {
    Plan {
        count: 2,
        steps: vec![(10, 5_000), (50, 5_000)],
        canary_count: 1,
        fresh_baseline: false,
        extension_ms: 2_000,
        max_extensions: 1,
        continue_when_inconclusive: true,
        max_surge: 1,
        max_unavailable: 0,
        bake_ms: 1_000,
        check_ms: 2_000,
        rollback_window_ms: 20_000,
        drain_deadline_ms: DEADLINE_MS,
        session_idle_ms: 3_000,
        start_timeout_ms: 30_000,
        pre_traffic: false,
    }
}

/// The operator, now and then.
fn command(rng: &mut fastrand::Rng, next_release: &mut u32) -> Option<Event> {
    let strategies = [Strategy::Canary, Strategy::Rolling, Strategy::BlueGreen];
    Some(match rng.u8(0..30) {
        0..=2 => {
            *next_release += 1;
            let mut plan = deploy_plan();
            plan.fresh_baseline = rng.bool();
            Event::Deploy {
                release: format!("v{next_release}"),
                strategy: strategies[rng.usize(0..3)],
                plan,
                template: None,
            }
        }
        3 => Event::Abort {
            reason: "operator".into(),
        },
        4 => Event::Pause,
        5 => Event::Resume,
        6 => Event::Promote,
        7 => Event::Rollback { plan: deploy_plan() },
        _ => return None,
    })
}

/// Every active route of `st` is in the router's table with its weight.
fn router_has(table: &RouteTable, st: &Service) -> Result<(), String> {
    for r in st.desired().routes.iter().filter(|r| r.state == RouteState::Active) {
        let found = table.releases.iter().find(|x| x.id == r.release);
        if found.map(|x| (x.weight, x.state)) != Some((r.weight, RouteState::Active)) {
            return Err(format!(
                "{} at {}% is not in the router's table: {table:?}",
                r.release, r.weight
            ));
        }
    }
    Ok(())
}

/// The control loop's reconcile half against one simulated host.
struct Sim {
    seed: u64,
    rng: fastrand::Rng,
    world: World,
    machine: Service,
    /// What the API shows (and a restarted control plane reads back from the journal).
    published: Service,
    memory: Memory,
    now: u64,
    next_release: u32,
    crashes: u32,
    published_turns: u32,
    /// The machine's routes the router last confirmed (none after a crash, as in the driver).
    confirmed_for: Option<Vec<rollout::RouteSpec>>,
    /// The router answers this turn.
    router_up: bool,
    /// Steps, promotions and retirements recorded, and holds begun.
    moves: u32,
    holds: u32,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let world = World(RefCell::new(Fake {
            seed,
            now: 0,
            rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
            noisy: true,
            instances: BTreeMap::new(),
            next_id: BTreeMap::new(),
            table: RouteTable::default(),
            current_link: None,
            want: None,
            crashed: false,
            router_down: false,
            put_fail: (seed % 8) as u8,
        }));
        let mut sim = Sim {
            seed,
            rng: fastrand::Rng::with_seed(seed),
            world,
            machine: Service::default(),
            published: Service::default(),
            memory: Memory::default(),
            now: 0,
            next_release: 1,
            crashes: 0,
            published_turns: 0,
            confirmed_for: None,
            router_up: true,
            moves: 0,
            holds: 0,
        };
        sim.apply(Event::Deploy {
            release: "v1".into(),
            strategy: Strategy::Canary,
            plan: deploy_plan(),
            template: None,
        });
        sim
    }

    /// Feeds the machine as the driver does: a state whose routes are not confirmed holds at once. Nothing but the
    /// operator's commands moves the deploy from a state whose routes the router did not confirm.
    fn apply(&mut self, ev: Event) {
        let seed = self.seed;
        let command = matches!(
            ev,
            Event::Deploy { .. }
                | Event::Rollback { .. }
                | Event::Pause
                | Event::Resume
                | Event::Promote
                | Event::Abort { .. }
        );
        let before = self.machine.desired().routes;
        let Ok(u) = self.machine.on(&ev, self.now) else { return };
        let moved: Vec<&Transition> = u
            .transitions
            .iter()
            .filter(|t| !matches!(t, Transition::Held { .. } | Transition::Unheld { .. }))
            .collect();
        if !command && !moved.is_empty() {
            assert_eq!(
                Some(&before),
                self.confirmed_for.as_ref(),
                "seed {seed}: {moved:?} recorded on {ev:?} from routes the router had not confirmed"
            );
            self.moves += moved.len() as u32;
        }
        self.holds += u
            .transitions
            .iter()
            .filter(|t| matches!(t, Transition::Held { .. }))
            .count() as u32;
        if !matches!(ev, Event::Hold { .. }) && self.confirmed_for.as_ref() != Some(&self.machine.desired().routes) {
            self.apply(Event::Hold {
                reason: HoldReason::RoutesUnconfirmed,
            });
        }
    }

    /// The driver's hold: a part unreachable, or the routes the machine wants not confirmed.
    fn hold_or_go(&mut self, agent: bool) {
        let confirmed = self.confirmed_for.as_ref() == Some(&self.machine.desired().routes);
        match hold_reason(agent, self.router_up, confirmed) {
            Some(reason) => self.apply(Event::Hold { reason }),
            None if self.machine.held.is_some() => self.apply(Event::Unhold),
            None => {}
        }
    }

    /// Time passes; the loop observes the agent (unreachable now and then) and feeds the machine with it, the
    /// judge's verdict and the operator's commands. The instances seen, if the agent answered.
    fn observe(&mut self, calm: bool) -> Option<Vec<InstanceInfo>> {
        self.now += self.rng.u64(200..2_500);
        {
            let mut w = self.world.0.borrow_mut();
            w.noisy = !calm;
            w.advance(self.now);
        }
        let instances = (calm || self.rng.u8(0..10) > 0).then(|| self.world.0.borrow().list());
        self.router_up = calm || self.rng.u8(0..8) > 0;
        self.world.0.borrow_mut().router_down = !self.router_up;
        self.hold_or_go(instances.is_some());
        if let Some(list) = &instances {
            self.apply(Event::Groups {
                groups: observe_groups(list),
            });
        }
        let fail = !calm && self.rng.u8(0..25) == 0;
        self.apply(Event::Verdict {
            outcome: if fail { Outcome::Fail } else { Outcome::Pass },
            reason: "sim".into(),
        });
        for r in self.machine.retiring.clone() {
            if calm || self.rng.bool() {
                let idle_ms = self.rng.u64(0..6_000);
                self.apply(Event::Idle {
                    release: r.release,
                    idle_ms,
                });
            }
        }
        if !calm && let Some(cmd) = command(&mut self.rng, &mut self.next_release) {
            self.apply(cmd);
        } else if calm && self.machine.active().is_some_and(|d| d.paused_at.is_some()) {
            self.apply(Event::Resume);
        }
        self.apply(Event::Tick);
        instances
    }

    /// One turn of planning and executing, and the publication that follows it, as the driver does them.
    fn turn(&mut self, rt: &tokio::runtime::Runtime, instances: Vec<InstanceInfo>, step: u32) {
        let seed = self.seed;
        let st = self.machine.clone();
        let want = HostDesired::whole(&st.desired(), &[], HumanDuration::from_millis(DEADLINE_MS));
        self.world.0.borrow_mut().want = Some(want.clone());
        let seen = HostObserved { instances, drain: None };
        let turn = rt.block_on(executor::turn(&self.world, &want, seen, &mut self.memory, self.now));
        let mut w = self.world.0.borrow_mut();
        if w.crashed {
            // Started again: the journal rebuilds the machine and what was published; the memory is gone.
            w.crashed = false;
            self.memory = Memory::default();
            self.confirmed_for = None;
            self.crashes += 1;
            return;
        }
        self.confirmed_for = turn.confirmed.then(|| want.routes.clone());
        if turn.confirmed {
            assert_eq!(
                self.memory.table.as_ref(),
                Some(&w.table),
                "seed {seed} step {step}: confirmed a table the router does not run"
            );
            if let Err(e) = router_has(&w.table, &st) {
                panic!("seed {seed} step {step}: published ahead of the router: {e}");
            }
            self.published = st;
            self.published_turns += 1;
        }
    }

    /// After the calm: the deploys are done, published, and the host runs and routes what the machine wants.
    fn check_settled(&self) {
        let seed = self.seed;
        assert!(
            self.machine.active().is_none(),
            "seed {seed}: deploy never finished: {:?}",
            self.machine.deploy.as_ref().map(|d| (&d.phase, &d.log))
        );
        assert_eq!(
            self.published, self.machine,
            "seed {seed}: the published state caught up"
        );
        let w = self.world.0.borrow();
        let want = HostDesired::whole(&self.machine.desired(), &[], HumanDuration::from_millis(DEADLINE_MS));
        for g in &want.groups {
            assert_eq!(w.serving(&g.release, &g.group), g.count, "seed {seed}: {g:?}");
        }
        let wanted = |i: &InstanceInfo| {
            want.groups
                .iter()
                .any(|g| g.release == i.release && g.group == i.group_name())
        };
        let extra: Vec<&str> = w
            .instances
            .values()
            .filter(|i| agent::is_live(i.info.state) && !wanted(&i.info))
            .map(|i| i.info.id.as_str())
            .collect();
        assert!(extra.is_empty(), "seed {seed}: still running: {extra:?}");
        let seen = HostObserved {
            instances: w.list(),
            drain: None,
        };
        assert_eq!(
            self.memory.table.as_ref(),
            Some(&table_for(&want, &seen)),
            "seed {seed}"
        );
        assert_eq!(
            w.table,
            table_for(&want, &seen),
            "seed {seed}: the router runs the wanted table"
        );
        assert_eq!(w.current_link, want.current, "seed {seed}");
    }
}

/// Seeded simulation of the control loop's reconcile half: a noisy host (slow, failing and crashing instances,
/// traffic, agent and router calls refused or answered into the void), a control plane that dies between any
/// two calls and starts again without its memory, a router down now and then and refusing tables at a rate of
/// its own in each world, and a busy operator; then a calm spell. No step, promotion or retirement is recorded
/// from a state whose routes the router did not confirm (the driver's hold, checked at every event).
/// Throughout, nothing starts twice and no instance stops with connections open inside its drain deadline (both
/// checked by the host at each call), and the state is published only when the router really runs its routes.
/// In the calm, the host converges to what the machine wants.
#[test]
fn random_hosts_with_failing_calls_and_crashes_between_any_two_calls_converge_safely() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (mut crashes, mut published_turns, mut moves, mut holds) = (0, 0, 0, 0);
    for seed in 0..120u64 {
        let mut sim = Sim::new(seed);
        for step in 0..400 {
            let instances = sim.observe(step >= 250);
            let agent = instances.is_some();
            if let Some(instances) = instances {
                sim.turn(&rt, instances, step);
            }
            sim.hold_or_go(agent);
        }
        sim.check_settled();
        crashes += sim.crashes;
        published_turns += sim.published_turns;
        moves += sim.moves;
        holds += sim.holds;
    }
    // The noise did what it is there for.
    assert!(crashes > 500, "only {crashes} crashes");
    assert!(published_turns > 10_000, "only {published_turns} turns published");
    assert!(moves > 2_000 && holds > 5_000, "only {moves} moves and {holds} holds");
}
