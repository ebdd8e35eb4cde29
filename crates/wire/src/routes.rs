//! The route table (releases, instances, weights, cohort rules), its validation, and route diffs.
//!
//! A table is changed only through [`RouteDiff`]s: replacing a table is
//! `apply(diff(old, new))`, and a router that starts applies the diff from the
//! empty table to the one it loaded. So there is one path for every change.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::problem::{Problem, Problems};

/// Number of buckets a session key is hashed into for key affinity.
pub const KEY_BUCKETS: u32 = 10_000;

/// The routing state of the service: which releases exist, how new sessions are
/// split between them, and where their instances listen.
///
/// Release order matters for key affinity: the first release owns the lowest
/// buckets, so list the newest release (the canary) first. Raising its weight
/// then only moves sessions forward to it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Increases by one with every applied change. Set by the router.
    #[serde(default)]
    pub generation: u64,
    #[serde(default, rename = "release")]
    pub releases: Vec<Release>,
    #[serde(default, rename = "cohort")]
    pub cohorts: Vec<CohortRule>,
}

/// Whether an instance or a release takes traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteState {
    /// Takes new sessions (by weight) and its sticky sessions.
    #[default]
    Active,
    /// Takes no new sessions; sticky sessions, open connections and in-flight
    /// requests continue.
    Draining,
    /// Takes no new requests at all; its sticky sessions move to another
    /// release. Requests already in flight still finish.
    Down,
}

impl RouteState {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Active => "active",
            RouteState::Draining => "draining",
            RouteState::Down => "down",
        }
    }
}

/// How the router speaks to a release's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

/// One release of the service as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The release id (`v42`, a git sha): letters, digits, `.`, `_` and `-`.
    pub id: String,
    /// Relative share of new sessions; 0 means none.
    #[serde(default)]
    pub weight: u32,
    /// `active` (takes new sessions), `draining` (keeps its sessions, takes no new ones) or `down`.
    #[serde(default)]
    pub state: RouteState,
    /// Semver range of client versions this release serves (`">=2.0, <3"`);
    /// absent means every client version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_versions: Option<String>,
    /// How the router speaks to the instances: `http1` or `h2c`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Active health check for this release's instances; absent means the
    /// router's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Long-lived connections (WebSocket, TCP) on an instance of this release
    /// that goes down or leaves the table are closed this long after, with a
    /// going-away signal (WebSocket close 1012). Absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline: Option<HumanDuration>,
    #[serde(default, rename = "instance")]
    pub instances: Vec<Instance>,
}

impl Release {
    pub fn new(id: impl Into<String>, weight: u32) -> Release {
        Release {
            id: id.into(),
            weight,
            state: RouteState::Active,
            client_versions: None,
            protocol: UpstreamProtocol::Http1,
            health: None,
            drain_deadline: None,
            instances: Vec::new(),
        }
    }

    pub fn with_instance(mut self, id: impl Into<String>, addr: impl Into<String>) -> Release {
        self.instances.push(Instance {
            id: id.into(),
            addr: addr.into(),
            state: RouteState::Active,
        });
        self
    }

    fn instance_mut(&mut self, id: &str) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| i.id == id)
    }

    /// Equal apart from weight, state and instances, which have their own ops.
    fn same_settings(&self, other: &Release) -> bool {
        self.id == other.id
            && self.client_versions == other.client_versions
            && self.protocol == other.protocol
            && self.health == other.health
            && self.drain_deadline == other.drain_deadline
    }
}

/// One running process of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// The instance id, unique within its release.
    pub id: String,
    /// `ip:port` the instance listens on.
    pub addr: String,
    /// `active`, or `down` (no new requests; open ones finish).
    #[serde(default)]
    pub state: RouteState,
}

/// What kind of active health check to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    /// GET `path`; 2xx and 3xx are healthy.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
    /// No active check; passive ejection still applies.
    None,
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http` (GET `path`), `tcp` (a connect) or `none` (passive ejection only).
    #[serde(default)]
    pub kind: HealthKind,
    /// The HTTP path checked.
    #[serde(default = "default_health_path")]
    pub path: String,
    /// Time between checks of an instance.
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
    /// A check that takes longer than this fails.
    #[serde(default = "default_health_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive successes that make an unhealthy instance healthy.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that make a healthy instance unhealthy.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_health_path() -> String {
    "/healthz".to_string()
}
fn default_health_interval() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_health_timeout() -> HumanDuration {
    HumanDuration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: HealthKind::Tcp,
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

/// Pins matching sessions to a release before weights are looked at.
///
/// Exactly one of `header`, `cookie`, `query` or `cidr` names what is matched;
/// the first three need exactly one of `equals` or `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CohortRule {
    /// A name for the rule, as status shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The release the matching sessions go to.
    pub release: String,
    /// Match on this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Match on this cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Match on this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Client address range, e.g. `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// The matched value must be exactly this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// The matched value must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// One change to a route table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteOp {
    /// Add a release (appended at the end) or replace one with the same id in place.
    UpsertRelease {
        release: Release,
    },
    RemoveRelease {
        release: String,
    },
    SetWeight {
        release: String,
        weight: u32,
    },
    SetReleaseState {
        release: String,
        state: RouteState,
    },
    /// Add an instance to a release or replace the one with the same id.
    UpsertInstance {
        release: String,
        instance: Instance,
    },
    RemoveInstance {
        release: String,
        instance: String,
    },
    SetInstanceState {
        release: String,
        instance: String,
        state: RouteState,
    },
    /// Reorder the releases; must name each release exactly once.
    Order {
        releases: Vec<String>,
    },
    SetCohorts {
        cohorts: Vec<CohortRule>,
    },
}

/// A list of changes applied atomically, optionally only if the table is still
/// at `expect_generation` (compare-and-swap).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDiff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
    pub ops: Vec<RouteOp>,
}

impl RouteTable {
    pub fn release(&self, id: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.id == id)
    }

    fn release_mut(&mut self, id: &str) -> Option<&mut Release> {
        self.releases.iter_mut().find(|r| r.id == id)
    }

    /// Every problem with this table, all at once; empty when it is valid.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut release_ids = HashSet::new();
        let mut instance_ids = HashSet::new();
        let mut addrs: BTreeMap<&str, String> = BTreeMap::new();
        for (ri, r) in self.releases.iter().enumerate() {
            let at = format!("release[{ri}]");
            check_id(&mut out, &format!("{at}.id"), &r.id);
            if !release_ids.insert(r.id.as_str()) {
                out.push(Problem::new(
                    format!("{at}.id"),
                    format!("duplicate release id {:?}", r.id),
                ));
            }
            if r.weight > 1_000_000 {
                out.push(Problem::new(format!("{at}.weight"), "weight must be at most 1000000"));
            }
            if let Some(range) = &r.client_versions
                && let Err(e) = semver::VersionReq::parse(range)
            {
                out.push(Problem::new(
                    format!("{at}.client_versions"),
                    format!("{range:?} is not a semver range: {e}"),
                ));
            }
            if let Some(h) = &r.health {
                health_problems(&mut out, &format!("{at}.health"), h);
            }
            for (ii, inst) in r.instances.iter().enumerate() {
                let at = format!("{at}.instance[{ii}]");
                check_id(&mut out, &format!("{at}.id"), &inst.id);
                if !instance_ids.insert((r.id.as_str(), inst.id.as_str())) {
                    out.push(Problem::new(
                        format!("{at}.id"),
                        format!("duplicate instance id {:?} in release {:?}", inst.id, r.id),
                    ));
                }
                if inst.addr.parse::<SocketAddr>().is_err() {
                    out.push(Problem::new(
                        format!("{at}.addr"),
                        format!("{:?} is not an ip:port address", inst.addr),
                    ));
                } else if let Some(other) = addrs.insert(&inst.addr, format!("{}/{}", r.id, inst.id)) {
                    out.push(Problem::new(
                        format!("{at}.addr"),
                        format!("address {} is also used by instance {other}", inst.addr),
                    ));
                }
            }
        }
        for (ci, c) in self.cohorts.iter().enumerate() {
            cohort_problems(&mut out, &format!("cohort[{ci}]"), c, &release_ids);
        }
        out
    }

    pub fn validate(&self) -> Result<(), Problems> {
        Problems::check(self.problems())
    }

    /// Applies `diff` to a copy of this table and returns the new table with
    /// the next generation, or every problem found (unknown names in the ops,
    /// then whatever is invalid in the result). `self` is never changed.
    pub fn apply(&self, diff: &RouteDiff) -> Result<RouteTable, Problems> {
        if let Some(expected) = diff.expect_generation
            && expected != self.generation
        {
            return Err(Problems::one(
                "expect_generation",
                format!("table is at generation {}, not {expected}", self.generation),
            ));
        }
        let mut next = self.clone();
        let mut out = Vec::new();
        for (i, op) in diff.ops.iter().enumerate() {
            if let Err(msg) = next.apply_op(op) {
                out.push(Problem::new(format!("ops[{i}]"), msg));
            }
        }
        out.extend(next.problems());
        Problems::check(out)?;
        next.generation = self.generation + 1;
        Ok(next)
    }

    fn apply_op(&mut self, op: &RouteOp) -> Result<(), String> {
        let missing = |r: &str| format!("no release {r:?} in the table");
        match op {
            RouteOp::UpsertRelease { release } => match self.release_mut(&release.id) {
                Some(existing) => *existing = release.clone(),
                None => self.releases.push(release.clone()),
            },
            RouteOp::RemoveRelease { release } => {
                let before = self.releases.len();
                self.releases.retain(|r| &r.id != release);
                if self.releases.len() == before {
                    return Err(missing(release));
                }
                if self.cohorts.iter().any(|c| &c.release == release) {
                    return Err(format!(
                        "release {release:?} is still named by a cohort rule; change the cohorts in the same diff"
                    ));
                }
            }
            RouteOp::SetWeight { release, weight } => {
                self.release_mut(release).ok_or_else(|| missing(release))?.weight = *weight
            }
            RouteOp::SetReleaseState { release, state } => {
                self.release_mut(release).ok_or_else(|| missing(release))?.state = *state
            }
            RouteOp::UpsertInstance { release, instance } => {
                let r = self.release_mut(release).ok_or_else(|| missing(release))?;
                match r.instance_mut(&instance.id) {
                    Some(existing) => *existing = instance.clone(),
                    None => r.instances.push(instance.clone()),
                }
            }
            RouteOp::RemoveInstance { release, instance } => {
                let r = self.release_mut(release).ok_or_else(|| missing(release))?;
                let before = r.instances.len();
                r.instances.retain(|i| &i.id != instance);
                if r.instances.len() == before {
                    return Err(format!("release {release:?} has no instance {instance:?}"));
                }
            }
            RouteOp::SetInstanceState {
                release,
                instance,
                state,
            } => {
                let r = self.release_mut(release).ok_or_else(|| missing(release))?;
                r.instance_mut(instance)
                    .ok_or_else(|| format!("release {release:?} has no instance {instance:?}"))?
                    .state = *state;
            }
            RouteOp::Order { releases } => {
                let mut ordered = Vec::with_capacity(releases.len());
                for id in releases {
                    let pos = self
                        .releases
                        .iter()
                        .position(|r| &r.id == id)
                        .ok_or_else(|| missing(id))?;
                    ordered.push(self.releases.remove(pos));
                }
                if !self.releases.is_empty() {
                    let rest: Vec<_> = self.releases.iter().map(|r| r.id.as_str()).collect();
                    return Err(format!("order leaves out releases {rest:?}"));
                }
                self.releases = ordered;
            }
            RouteOp::SetCohorts { cohorts } => self.cohorts = cohorts.clone(),
        }
        Ok(())
    }

    /// The smallest list of ops that turns `self` into `target` (generation
    /// aside): `self.apply(&self.diff(target))` equals `target` with the next
    /// generation.
    pub fn diff(&self, target: &RouteTable) -> RouteDiff {
        let mut ops = Vec::new();
        let target_ids: HashSet<&str> = target.releases.iter().map(|r| r.id.as_str()).collect();
        if self.cohorts != target.cohorts {
            // Cohorts first, so a removed release is no longer named by one.
            ops.push(RouteOp::SetCohorts {
                cohorts: target.cohorts.clone(),
            });
        }
        for r in &self.releases {
            if !target_ids.contains(r.id.as_str()) {
                ops.push(RouteOp::RemoveRelease { release: r.id.clone() });
            }
        }
        for t in &target.releases {
            let Some(cur) = self.release(&t.id) else {
                ops.push(RouteOp::UpsertRelease { release: t.clone() });
                continue;
            };
            if !cur.same_settings(t) {
                ops.push(RouteOp::UpsertRelease { release: t.clone() });
                continue;
            }
            if cur.weight != t.weight {
                ops.push(RouteOp::SetWeight {
                    release: t.id.clone(),
                    weight: t.weight,
                });
            }
            if cur.state != t.state {
                ops.push(RouteOp::SetReleaseState {
                    release: t.id.clone(),
                    state: t.state,
                });
            }
            instance_diff(&mut ops, cur, t);
        }
        // Order as it would be after the ops above; fix it if it differs.
        let mut order: Vec<&str> = self
            .releases
            .iter()
            .map(|r| r.id.as_str())
            .filter(|id| target_ids.contains(id))
            .collect();
        for t in &target.releases {
            if !order.contains(&t.id.as_str()) {
                order.push(&t.id);
            }
        }
        let wanted: Vec<&str> = target.releases.iter().map(|r| r.id.as_str()).collect();
        if order != wanted {
            ops.push(RouteOp::Order {
                releases: wanted.iter().map(|s| s.to_string()).collect(),
            });
        }
        RouteDiff {
            expect_generation: Some(self.generation),
            ops,
        }
    }
}

fn instance_diff(ops: &mut Vec<RouteOp>, cur: &Release, target: &Release) {
    let cur_ids: Vec<&str> = cur.instances.iter().map(|i| i.id.as_str()).collect();
    let target_ids: Vec<&str> = target.instances.iter().map(|i| i.id.as_str()).collect();
    for i in &cur.instances {
        if !target_ids.contains(&i.id.as_str()) {
            ops.push(RouteOp::RemoveInstance {
                release: cur.id.clone(),
                instance: i.id.clone(),
            });
        }
    }
    let kept: Vec<&str> = cur_ids.iter().copied().filter(|id| target_ids.contains(id)).collect();
    let new_ids: Vec<&str> = target_ids.iter().copied().filter(|id| !cur_ids.contains(id)).collect();
    let order_kept = target_ids
        .iter()
        .copied()
        .filter(|id| cur_ids.contains(id))
        .eq(kept.iter().copied());
    // Upserts append, so instance order survives only if kept instances keep
    // their relative order and new ones come after them; otherwise re-upsert.
    let appended_at_end = target_ids.iter().skip(kept.len()).copied().eq(new_ids.iter().copied());
    if !(order_kept && appended_at_end) {
        ops.push(RouteOp::UpsertRelease {
            release: target.clone(),
        });
        return;
    }
    for t in &target.instances {
        match cur.instances.iter().find(|i| i.id == t.id) {
            None => ops.push(RouteOp::UpsertInstance {
                release: target.id.clone(),
                instance: t.clone(),
            }),
            Some(c) if c.addr != t.addr => ops.push(RouteOp::UpsertInstance {
                release: target.id.clone(),
                instance: t.clone(),
            }),
            Some(c) if c.state != t.state => ops.push(RouteOp::SetInstanceState {
                release: target.id.clone(),
                instance: t.id.clone(),
                state: t.state,
            }),
            Some(_) => {}
        }
    }
}

/// Ids appear in cookies, metric labels and file names, so keep them plain.
/// Checks a semver range of client versions such as `">=2.0, <3"`.
pub fn valid_version_range(range: &str) -> Result<(), String> {
    semver::VersionReq::parse(range)
        .map(|_| ())
        .map_err(|e| format!("{range:?} is not a semver range: {e}"))
}

/// Ids appear in cookies, metric labels and file names, so keep them plain:
/// 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'.
pub fn valid_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        Err("must be 1 to 64 characters".to_string())
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Err(format!("{id:?} may only hold letters, digits, '.', '_' and '-'"))
    } else if id.starts_with('.') {
        Err(format!("{id:?} may not start with '.'"))
    } else {
        Ok(())
    }
}

fn check_id(out: &mut Vec<Problem>, path: &str, id: &str) {
    if let Err(msg) = valid_id(id) {
        out.push(Problem::new(path, msg));
    }
}

pub fn health_problems(out: &mut Vec<Problem>, at: &str, h: &HealthCheck) {
    if h.interval.0.is_zero() {
        out.push(Problem::new(format!("{at}.interval"), "must be more than 0"));
    }
    if h.timeout.0.is_zero() {
        out.push(Problem::new(format!("{at}.timeout"), "must be more than 0"));
    }
    if h.rise == 0 {
        out.push(Problem::new(format!("{at}.rise"), "must be at least 1"));
    }
    if h.fall == 0 {
        out.push(Problem::new(format!("{at}.fall"), "must be at least 1"));
    }
    if h.kind == HealthKind::Http && !h.path.starts_with('/') {
        out.push(Problem::new(format!("{at}.path"), "must start with '/'"));
    }
}

fn cohort_problems(out: &mut Vec<Problem>, at: &str, c: &CohortRule, releases: &HashSet<&str>) {
    if !releases.contains(c.release.as_str()) {
        out.push(Problem::new(
            format!("{at}.release"),
            format!("no release {:?} in the table", c.release),
        ));
    }
    let subjects = [
        c.header.is_some(),
        c.cookie.is_some(),
        c.query.is_some(),
        c.cidr.is_some(),
    ];
    match subjects.iter().filter(|s| **s).count() {
        1 => {}
        0 => out.push(Problem::new(at, "needs one of header, cookie, query or cidr")),
        _ => out.push(Problem::new(at, "give only one of header, cookie, query or cidr")),
    }
    if let Some(cidr) = &c.cidr {
        if cidr.parse::<ipnet::IpNet>().is_err() {
            out.push(Problem::new(
                format!("{at}.cidr"),
                format!("{cidr:?} is not a CIDR range"),
            ));
        }
        if c.equals.is_some() || c.regex.is_some() {
            out.push(Problem::new(at, "a cidr rule takes no equals or regex"));
        }
    } else {
        match (&c.equals, &c.regex) {
            (Some(_), Some(_)) => out.push(Problem::new(at, "give only one of equals or regex")),
            (None, None) => out.push(Problem::new(at, "needs one of equals or regex")),
            (None, Some(re)) => {
                if let Err(e) = regex::Regex::new(re) {
                    out.push(Problem::new(format!("{at}.regex"), format!("invalid regex: {e}")));
                }
            }
            (Some(_), None) => {}
        }
    }
    if let Some(h) = &c.header
        && (h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        out.push(Problem::new(
            format!("{at}.header"),
            format!("{h:?} is not a header name"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable {
            generation: 3,
            releases: vec![
                Release::new("v2", 10).with_instance("v2-0", "127.0.0.1:4001"),
                Release::new("v1", 90)
                    .with_instance("v1-0", "127.0.0.1:3001")
                    .with_instance("v1-1", "127.0.0.1:3002"),
            ],
            cohorts: vec![CohortRule {
                release: "v2".into(),
                header: Some("x-beta".into()),
                equals: Some("1".into()),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_valid_table_has_no_problems() {
        assert_eq!(table().problems(), vec![]);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let mut t = table();
        t.releases[0].id = "bad id".into();
        t.releases[1].instances[1].addr = "nowhere".into();
        t.releases[1].client_versions = Some("not a range".into());
        t.cohorts.push(CohortRule {
            release: "v9".into(),
            cidr: Some("10.0.0.0/33".into()),
            regex: Some("(".into()),
            ..Default::default()
        });
        let problems = t.problems();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "release[0].id",
            "release[1].instance[1].addr",
            "release[1].client_versions",
            "cohort[0].release",
            "cohort[1].release",
            "cohort[1].cidr",
            "cohort[1]",
        ] {
            assert!(paths.contains(&want), "missing {want} in {problems:?}");
        }
    }

    #[test]
    fn duplicate_addresses_and_ids_are_refused() {
        let mut t = table();
        t.releases[0].instances[0].addr = "127.0.0.1:3001".into();
        t.releases[1].instances[1].id = "v1-0".into();
        let text = Problems::check(t.problems()).unwrap_err().to_string();
        assert!(text.contains("also used by instance"), "{text}");
        assert!(text.contains("duplicate instance id"), "{text}");
    }

    #[test]
    fn apply_bumps_generation_and_leaves_the_original_alone() {
        let t = table();
        let next = t
            .apply(&RouteDiff {
                expect_generation: Some(3),
                ops: vec![RouteOp::SetWeight {
                    release: "v2".into(),
                    weight: 50,
                }],
            })
            .unwrap();
        assert_eq!(next.generation, 4);
        assert_eq!(next.release("v2").unwrap().weight, 50);
        assert_eq!(t.release("v2").unwrap().weight, 10);
    }

    #[test]
    fn apply_refuses_a_stale_generation_and_unknown_names() {
        let t = table();
        let stale = t.apply(&RouteDiff {
            expect_generation: Some(2),
            ops: vec![],
        });
        assert!(stale.unwrap_err().to_string().contains("generation 3"));
        let err = t
            .apply(&RouteDiff {
                expect_generation: None,
                ops: vec![
                    RouteOp::SetWeight {
                        release: "v7".into(),
                        weight: 1,
                    },
                    RouteOp::RemoveInstance {
                        release: "v1".into(),
                        instance: "v1-9".into(),
                    },
                    RouteOp::RemoveRelease { release: "v2".into() },
                ],
            })
            .unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
    }

    fn random_table(rng: &mut fastrand::Rng) -> RouteTable {
        let mut releases = Vec::new();
        let mut ids: Vec<usize> = (0..5).collect();
        rng.shuffle(&mut ids);
        for &r in ids.iter().take(rng.usize(0..5)) {
            let mut rel = Release::new(format!("v{r}"), rng.u32(0..100));
            rel.state = [RouteState::Active, RouteState::Draining, RouteState::Down][rng.usize(0..3)];
            if rng.bool() {
                rel.client_versions = Some(format!(">={r}.0.0"));
            }
            let mut inst: Vec<usize> = (0..4).collect();
            rng.shuffle(&mut inst);
            for &i in inst.iter().take(rng.usize(0..4)) {
                let port = 3000 + r * 10 + i + if rng.u8(0..4) == 0 { 100 } else { 0 };
                rel.instances.push(Instance {
                    id: format!("v{r}-{i}"),
                    addr: format!("127.0.0.1:{port}"),
                    state: [RouteState::Active, RouteState::Draining][rng.usize(0..2)],
                });
            }
            releases.push(rel);
        }
        let mut cohorts = Vec::new();
        if let Some(first) = releases.first()
            && rng.bool()
        {
            cohorts.push(CohortRule {
                release: first.id.clone(),
                query: Some("beta".into()),
                equals: Some(rng.u8(0..3).to_string()),
                ..Default::default()
            });
        }
        RouteTable {
            generation: rng.u64(0..100),
            releases,
            cohorts,
        }
    }

    #[test]
    fn diff_then_apply_reaches_the_target_for_random_tables() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let a = random_table(&mut rng);
            let b = random_table(&mut rng);
            let d = a.diff(&b);
            let got = a.apply(&d).unwrap_or_else(|e| panic!("{e}\n{a:?}\n{b:?}\n{d:?}"));
            let mut want = b.clone();
            want.generation = a.generation + 1;
            assert_eq!(got, want, "diff {d:?}");
            assert!(got.diff(&b).ops.is_empty());
        }
    }

    #[test]
    fn route_table_reads_from_toml() {
        let t: RouteTable = toml::from_str(
            r#"
            [[release]]
            id = "v1"
            weight = 100
            client_versions = ">=1.0, <2"
            health = { kind = "http", path = "/healthz", interval = "1s" }
            instance = [{ id = "a", addr = "127.0.0.1:3000" }]

            [[cohort]]
            release = "v1"
            cidr = "10.0.0.0/8"
            "#,
        )
        .unwrap();
        assert_eq!(t.problems(), vec![]);
        assert_eq!(
            t.releases[0].health.as_ref().unwrap().interval,
            HumanDuration::from_secs(1)
        );
    }
}
