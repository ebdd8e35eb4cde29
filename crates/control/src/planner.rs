//! The reconcile planner: from what one host should run and what it runs, the calls that get it there. Pure.
//!
//! `plan(desired, observed, memory, now)` reads no clock and does no I/O; the executor carries its actions out
//! against the host's agent and router and hands the answers back through `learn`. Run per host, it is what a
//! cluster runs on every host: each with its own share of the groups, its own observation and its own memory.

use std::collections::{BTreeMap, BTreeSet};

use rollout::{Desired, GroupObs, GroupSpec, RouteSpec};
use wire::agent::{InstanceInfo, InstanceState, InstanceTemplate};
use wire::{CohortRule, HumanDuration, Instance, Release, RouteState, RouteTable, UpstreamProtocol};

#[cfg(test)]
mod tests;

/// How long past its drain deadline an instance that still holds connections is given before it is stopped:
/// the router closes long-lived connections (WebSocket 1012) at the deadline itself.
pub(crate) const STOP_GRACE_MS: u64 = 5_000;

/// What one host should run and how its router should route.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostDesired {
    pub groups: Vec<GroupSpec>,
    /// Newest release first.
    pub routes: Vec<RouteSpec>,
    pub current: Option<String>,
    pub cohorts: Vec<CohortRule>,
    pub drain_deadline: HumanDuration,
    /// The template each release's deploy recorded (a release without one starts with the agent's).
    pub templates: BTreeMap<String, InstanceTemplate>,
}

impl HostDesired {
    /// A single host: everything the machine wants.
    pub fn whole(desired: &Desired, cohorts: &[CohortRule], drain_deadline: HumanDuration) -> HostDesired {
        HostDesired {
            groups: desired.groups.clone(),
            routes: desired.routes.clone(),
            current: desired.current.clone(),
            cohorts: cohorts.to_vec(),
            drain_deadline,
            templates: BTreeMap::new(),
        }
    }

    /// The same, with the templates new instances start with.
    pub fn with_templates(self, templates: &BTreeMap<String, InstanceTemplate>) -> HostDesired {
        let releases: BTreeSet<&str> = self.groups.iter().map(|g| g.release.as_str()).collect();
        let templates = templates
            .iter()
            .filter(|(r, _)| releases.contains(r.as_str()))
            .map(|(r, t)| (r.clone(), t.clone()))
            .collect();
        HostDesired { templates, ..self }
    }
}

/// What the router says of one instance's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traffic {
    /// The router sends it no new requests (down, or no longer in its table).
    pub out: bool,
    /// Requests in flight plus long-lived connections.
    pub open: u64,
}

/// The router's drain state by (release, instance); an instance it does not list takes no traffic.
pub(crate) type DrainView = BTreeMap<(String, String), Traffic>;

/// What the executor has seen of the host during this turn.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostObserved {
    /// The agent's instance table.
    pub instances: Vec<InstanceInfo>,
    /// The router's drain state, read since the last table it confirmed (none: not read yet).
    pub drain: Option<DrainView>,
}

/// What the planner keeps between turns. A restarted control plane starts without it, and that is safe:
/// the table is applied again, and drain deadlines start again (later, never earlier).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Memory {
    /// The table the router last confirmed.
    pub table: Option<RouteTable>,
    /// Instances on their way out, since when a confirmed table took them out of traffic (ms).
    pub out_since: BTreeMap<String, u64>,
    /// The release the host's `current` link was last set to.
    pub current_link: Option<String>,
    /// The generation the router answered for `table` (none: not known, as in a simulated host).
    pub generation: Option<u64>,
}

/// One call to a host's agent or router.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    Agent(AgentCall),
    Router(RouterCall),
}

/// A call to the host's agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AgentCall {
    /// Start `count` more instances of a group.
    Start {
        release: String,
        group: Option<String>,
        count: u32,
        template: Option<Box<InstanceTemplate>>,
    },
    /// Tell instances through their drain hook that they take no new sessions from now on.
    NotifyDrain { ids: Vec<String> },
    /// Stop instances: out of traffic with nothing open, past their deadline, or not serving.
    Stop { ids: Vec<String> },
    /// Point the host's `current` link at a release.
    SetCurrent { release: String },
}

/// A call to the host's router.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RouterCall {
    /// Apply a route table; `out` are the instances it keeps out of traffic.
    PutRoutes { table: RouteTable, out: Vec<String> },
    /// Read the router's drain state.
    ReadDrain,
}

/// What a part answered to an action.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// The agent's view of the instances the action was about (started, notified, stopped).
    Instances(Vec<InstanceInfo>),
    /// The router's drain state.
    Drain(DrainView),
    /// The router applied a route table and runs it as this generation.
    Applied { generation: u64 },
    /// Done (the `current` link set, or a table applied by a host that names no generation).
    Done,
}

/// Why the loop holds the deploy this turn, if it does: a part it cannot reach, or routes the router has not
/// confirmed for the state (`confirmed`: the last turn's table is what the router runs).
pub(crate) fn hold_reason(agent: bool, router: bool, confirmed: bool) -> Option<wire::service::HoldReason> {
    use wire::service::HoldReason;
    match (agent, router, confirmed) {
        (false, _, _) => Some(HoldReason::AgentUnreachable),
        (_, false, _) => Some(HoldReason::RouterUnreachable),
        (_, _, false) => Some(HoldReason::RoutesUnconfirmed),
        _ => None,
    }
}

fn instance_number(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

/// Instances that serve or will serve their group: the oldest `count` of each are kept.
fn serving(s: InstanceState) -> bool {
    matches!(
        s,
        InstanceState::Starting | InstanceState::Ready | InstanceState::Crashed
    )
}

/// Instances to take away: beyond their group's count, or of no wanted group, and not stopping already.
fn victims<'a>(want: &HostDesired, seen: &'a HostObserved) -> Vec<&'a InstanceInfo> {
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    for g in &want.groups {
        keep.extend(members(seen, g).iter().take(g.count as usize).map(|i| i.id.as_str()));
    }
    seen.instances
        .iter()
        .filter(|i| serving(i.state) || matches!(i.state, InstanceState::CrashLoop | InstanceState::Failed))
        .filter(|i| !keep.contains(i.id.as_str()))
        .collect()
}

/// A group's serving instances, oldest first.
fn members<'a>(seen: &'a HostObserved, g: &GroupSpec) -> Vec<&'a InstanceInfo> {
    let mut v: Vec<&InstanceInfo> = seen
        .instances
        .iter()
        .filter(|i| i.release == g.release && i.group_name() == g.group && serving(i.state))
        .collect();
    v.sort_by_key(|i| instance_number(&i.id));
    v
}

/// The calls that bring the host closer to `want`, in the order to make them.
pub(crate) fn plan(want: &HostDesired, seen: &HostObserved, memory: &Memory, now: u64) -> Vec<Action> {
    let mut out = Vec::new();
    for g in &want.groups {
        let have = members(seen, g).len() as u32;
        if have < g.count {
            out.push(Action::Agent(AgentCall::Start {
                release: g.release.clone(),
                group: (g.group != g.release).then(|| g.group.clone()),
                count: g.count - have,
                template: want.templates.get(&g.release).cloned().map(Box::new),
            }));
        }
    }
    let victims = victims(want, seen);
    let leaving = leaving(want, seen, &victims);
    if !leaving.is_empty() {
        out.push(Action::Agent(AgentCall::NotifyDrain { ids: leaving }));
    }
    let taken_out: Vec<String> = victims
        .iter()
        .filter(|v| v.state == InstanceState::Ready)
        .map(|v| v.id.clone())
        .collect();
    let table = route_table(want, seen, &victims);
    let unconfirmed = memory.table.as_ref() != Some(&table);
    if unconfirmed || taken_out.iter().any(|id| !memory.out_since.contains_key(id)) {
        out.push(Action::Router(RouterCall::PutRoutes { table, out: taken_out }));
    } else if memory.table.is_some() {
        // Stops wait for a table the router confirmed.
        let (stop, need_drain) = to_stop(want, seen, memory, &victims, now);
        if need_drain {
            out.push(Action::Router(RouterCall::ReadDrain));
        }
        if !stop.is_empty() {
            out.push(Action::Agent(AgentCall::Stop { ids: stop }));
        }
    }
    if let Some(cur) = &want.current
        && memory.current_link.as_deref() != Some(cur.as_str())
    {
        out.push(Action::Agent(AgentCall::SetCurrent { release: cur.clone() }));
    }
    out
}

/// Ready instances that take no new sessions from now on (on their way out, or in a draining release) and were
/// not told yet: they hear it at once through their drain hook, while the drain deadline runs.
fn leaving(want: &HostDesired, seen: &HostObserved, victims: &[&InstanceInfo]) -> Vec<String> {
    let draining: BTreeSet<&str> = want
        .routes
        .iter()
        .filter(|r| r.state != RouteState::Active)
        .map(|r| r.release.as_str())
        .collect();
    seen.instances
        .iter()
        .filter(|i| i.state == InstanceState::Ready && !i.drain_notified)
        .filter(|i| victims.iter().any(|v| v.id == i.id) || draining.contains(i.release.as_str()))
        .map(|i| i.id.clone())
        .collect()
}

/// Victims to stop now, and whether the router's drain state is needed to decide on the others.
fn to_stop(
    want: &HostDesired,
    seen: &HostObserved,
    memory: &Memory,
    victims: &[&InstanceInfo],
    now: u64,
) -> (Vec<String>, bool) {
    let deadline = want.drain_deadline.as_millis() + STOP_GRACE_MS;
    let mut stop = Vec::new();
    let mut need_drain = false;
    for v in victims {
        if v.state != InstanceState::Ready {
            // Not serving: no session to wait for.
            stop.push(v.id.clone());
            continue;
        }
        let Some(since) = memory.out_since.get(&v.id) else {
            continue;
        };
        if now.saturating_sub(*since) > deadline {
            stop.push(v.id.clone());
            continue;
        }
        match &seen.drain {
            None => need_drain = true,
            Some(drain) => {
                let t = drain.get(&(v.release.clone(), v.id.clone()));
                if t.is_none_or(|t| t.out && t.open == 0) {
                    stop.push(v.id.clone());
                }
            }
        }
    }
    (stop, need_drain)
}

/// The route table for `want`, from the observed instances that are ready (the host's victims marked down).
pub(crate) fn table_for(want: &HostDesired, seen: &HostObserved) -> RouteTable {
    route_table(want, seen, &victims(want, seen))
}

fn route_table(want: &HostDesired, seen: &HostObserved, victims: &[&InstanceInfo]) -> RouteTable {
    let mut t = RouteTable::default();
    for spec in &want.routes {
        let mut members: Vec<&InstanceInfo> = seen
            .instances
            .iter()
            .filter(|i| i.release == spec.release && spec.groups.iter().any(|g| g == i.group_name()))
            .filter(|i| i.state == InstanceState::Ready)
            .collect();
        if members.is_empty() && spec.state != RouteState::Active {
            continue;
        }
        members.sort_by_key(|i| instance_number(&i.id));
        let mut r = Release::new(spec.release.clone(), spec.weight);
        r.state = spec.state;
        r.protocol = UpstreamProtocol::Http1;
        r.drain_deadline = Some(if spec.drain_now {
            HumanDuration::from_millis(0)
        } else {
            want.drain_deadline
        });
        r.client_versions = members.iter().find_map(|i| i.client_versions.clone());
        r.instances = members
            .iter()
            .map(|i| Instance {
                id: i.id.clone(),
                addr: i.addr.clone(),
                // An instance on its way out takes nothing new; in-flight requests
                // finish, long-lived connections get until the drain deadline.
                state: if victims.iter().any(|v| v.id == i.id) {
                    RouteState::Down
                } else {
                    RouteState::Active
                },
            })
            .collect();
        t.releases.push(r);
    }
    let present: BTreeSet<&str> = t.releases.iter().map(|r| r.id.as_str()).collect();
    t.cohorts = want
        .cohorts
        .iter()
        .filter(|c| present.contains(c.release.as_str()))
        .cloned()
        .collect();
    t
}

/// Takes in what a part answered to `action`: the observation and the memory move on.
pub(crate) fn learn(action: &Action, answer: Answer, seen: &mut HostObserved, memory: &mut Memory, now: u64) {
    match (action, answer) {
        (Action::Agent(AgentCall::Start { .. }), Answer::Instances(started)) => seen.instances.extend(started),
        (Action::Agent(AgentCall::NotifyDrain { .. }), Answer::Instances(changed)) => update(seen, changed),
        (Action::Agent(AgentCall::Stop { .. }), Answer::Instances(mut changed)) => {
            // The agent took the stop: the instance drains, even if it has not begun yet.
            for c in changed.iter_mut().filter(|c| c.state != InstanceState::Stopped) {
                c.state = InstanceState::Draining;
            }
            update(seen, changed)
        }
        (Action::Router(RouterCall::PutRoutes { table, out }), answer) => {
            memory.table = Some(table.clone());
            memory.generation = match answer {
                Answer::Applied { generation } => Some(generation),
                _ => None,
            };
            memory.out_since.retain(|id, _| out.contains(id));
            for id in out {
                memory.out_since.entry(id.clone()).or_insert(now);
            }
            // What the router said before this table no longer tells who is out.
            seen.drain = None;
        }
        (Action::Router(RouterCall::ReadDrain), Answer::Drain(view)) => seen.drain = Some(view),
        (Action::Agent(AgentCall::SetCurrent { release }), _) => memory.current_link = Some(release.clone()),
        _ => {}
    }
}

fn update(seen: &mut HostObserved, changed: Vec<InstanceInfo>) {
    for c in changed {
        match seen.instances.iter_mut().find(|i| i.id == c.id) {
            Some(i) => *i = c,
            None => seen.instances.push(c),
        }
    }
}

/// Takes in that `action` failed and may or may not have happened: what it would have confirmed is not known.
pub(crate) fn forget(action: &Action, memory: &mut Memory) {
    match action {
        // The router may run that table, or another: apply one again before stopping anything, and count
        // drain deadlines from then (later, never earlier).
        Action::Router(RouterCall::PutRoutes { .. }) => forget_table(memory),
        Action::Agent(AgentCall::SetCurrent { .. }) => memory.current_link = None,
        _ => {}
    }
}

/// The router's table is not known any more: it is applied again before anything is stopped, and drain deadlines
/// count from then.
pub(crate) fn forget_table(memory: &mut Memory) {
    memory.table = None;
    memory.generation = None;
    memory.out_since.clear();
}

/// The instance groups as the machine sees them.
pub(crate) fn observe_groups(instances: &[InstanceInfo]) -> Vec<GroupObs> {
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
        if agent::is_live(i.state) && i.state != InstanceState::Draining {
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
