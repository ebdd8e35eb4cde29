//! What should exist and how traffic should flow, derived from the state: instance groups, route specs, the analysis.

use wire::RouteState;

use crate::deploy::{Deploy, Phase};
use crate::service::Service;

/// An instance group to keep running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub release: String,
    pub group: String,
    pub count: u32,
}

/// One release in the route table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub release: String,
    pub groups: Vec<String>,
    pub weight: u32,
    pub state: RouteState,
    /// Close its long-lived connections now rather than after the drain deadline.
    pub drain_now: bool,
}

/// What the current analysis compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisSpec {
    /// Changes when a new analysis starts (a new judge).
    pub key: String,
    pub canary_groups: Vec<(String, String)>,
    pub baseline_groups: Vec<(String, String)>,
}

/// What should exist and how traffic should flow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub groups: Vec<GroupSpec>,
    /// Newest first (key-affinity buckets are given in this order).
    pub routes: Vec<RouteSpec>,
    pub current: Option<String>,
    pub analysis: Option<AnalysisSpec>,
}

impl Desired {
    fn group(&mut self, release: &str, group: &str, count: u32) {
        self.groups.push(GroupSpec {
            release: release.to_string(),
            group: group.to_string(),
            count,
        });
    }

    fn route(&mut self, release: &str, groups: Vec<String>, weight: u32, state: RouteState, drain_now: bool) {
        self.routes.push(RouteSpec {
            release: release.to_string(),
            groups,
            weight,
            state,
            drain_now,
        });
    }
}

impl Service {
    /// What should exist now.
    pub fn desired(&self) -> Desired {
        let mut out = Desired {
            current: self.current.clone(),
            ..Default::default()
        };
        let d = self.active();
        // The deploy's new release comes first in the table.
        if let Some(d) = d {
            deploy_part(&mut out, d);
        }
        if let Some(cur) = &self.current {
            self.current_part(&mut out, cur, d);
        }
        for r in self.retiring.iter().rev() {
            if r.stopping {
                out.route(&r.release, vec![r.release.clone()], 0, RouteState::Down, r.out_of_time);
            } else {
                out.group(&r.release, &r.release, r.count);
                out.route(&r.release, vec![r.release.clone()], 0, RouteState::Draining, false);
            }
        }
        out
    }

    /// The current release: its instances and its share of new sessions.
    fn current_part(&self, out: &mut Desired, cur: &str, d: Option<&Deploy>) {
        let mut groups = vec![cur.to_string()];
        let mut count = self.count;
        let mut weight = 100;
        if let Some(d) = d
            && d.from.as_deref() == Some(cur)
        {
            if let Phase::Rolling { removed, .. } = &d.phase {
                count = self.count.saturating_sub(*removed);
            }
            if !matches!(d.phase, Phase::Aborting { .. }) {
                weight = 100 - d.canary_weight().min(100);
                groups.extend(d.fresh_group());
            }
        }
        out.group(cur, cur, count);
        out.route(cur, groups, weight, RouteState::Active, false);
    }
}

/// The deploy's release (and fresh baseline): instances, route, analysis.
fn deploy_part(out: &mut Desired, d: &Deploy) {
    let to = &d.release;
    let (state, weight, count) = match &d.phase {
        Phase::Aborting { .. } => (RouteState::Down, 0, 0),
        Phase::Starting | Phase::PreTraffic { .. } | Phase::Checking { .. } if d.from.is_some() => {
            (RouteState::Active, 0, d.target())
        }
        _ if d.from.is_none() => (RouteState::Active, 100, d.plan.count),
        _ => (RouteState::Active, d.canary_weight(), d.target()),
    };
    if count > 0 {
        out.group(to, to, count);
    }
    out.route(to, vec![to.clone()], weight, state, false);
    if let (Some(from), Some(g)) = (&d.from, d.fresh_group())
        && !matches!(d.phase, Phase::Aborting { .. })
    {
        out.group(from, &g, d.plan.canary_count);
    }
    let pair = |r: &str, g: &str| (r.to_string(), g.to_string());
    out.analysis = match (&d.phase, &d.from) {
        (Phase::Step { index, .. }, _) => Some(AnalysisSpec {
            key: format!("{}/step-{}", d.id, index + 1),
            canary_groups: vec![pair(to, to)],
            baseline_groups: match d.fresh_group() {
                Some(g) => vec![pair(d.from.as_deref().unwrap_or_default(), &g)],
                None => d.from.iter().map(|f| pair(f, f)).collect(),
            },
        }),
        (Phase::Rolling { .. }, Some(f)) => Some(AnalysisSpec {
            key: format!("{}/rolling", d.id),
            canary_groups: vec![pair(to, to)],
            baseline_groups: vec![pair(f, f)],
        }),
        _ => None,
    };
}
