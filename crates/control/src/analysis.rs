//! Turns router metrics snapshots into judge windows for the instance groups being compared, and tracks when retiring releases go quiet.

use std::collections::{BTreeMap, BTreeSet};

use judge::{Judge, Observation, Window};
use rollout::AnalysisSpec;
use wire::agent::InstanceInfo;
use wire::judge::{JudgeConfig, Verdict};
use wire::metrics::{Counters, MetricsSnapshot};

/// The analysis of one canary step (or one rolling deploy).
pub struct Analysis {
    pub key: String,
    judge: Judge,
    started_ms: u64,
    router_id: Option<String>,
    /// Last counters per (release, instance).
    prev: BTreeMap<(String, String), Counters>,
    pub last: Option<Verdict>,
}

impl std::fmt::Debug for Analysis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analysis").field("key", &self.key).finish()
    }
}

fn counters(snap: &MetricsSnapshot) -> BTreeMap<(String, String), Counters> {
    let mut out = BTreeMap::new();
    for r in &snap.releases {
        for i in &r.instances {
            out.insert((r.release.clone(), i.instance.clone()), i.counters.clone());
        }
    }
    out
}

impl Analysis {
    pub fn new(key: &str, config: &JudgeConfig, now_ms: u64) -> Analysis {
        Analysis {
            key: key.to_string(),
            judge: Judge::new(config),
            started_ms: now_ms,
            router_id: None,
            prev: BTreeMap::new(),
            last: None,
        }
    }

    /// Feeds the window since the last snapshot; returns the verdict.
    pub fn feed(
        &mut self,
        snap: &MetricsSnapshot,
        spec: &AnalysisSpec,
        instances: &[InstanceInfo],
        now_ms: u64,
    ) -> Option<Verdict> {
        let now = counters(snap);
        if self.router_id.as_deref() != Some(snap.router_id.as_str()) {
            // First look, or the router restarted (its counters began again).
            self.router_id = Some(snap.router_id.clone());
            self.prev = now;
            return self.last.clone();
        }
        let members = |groups: &[(String, String)]| -> BTreeSet<(String, String)> {
            instances
                .iter()
                .filter(|i| groups.iter().any(|(r, g)| &i.release == r && i.group_name() == g))
                .map(|i| (i.release.clone(), i.id.clone()))
                .collect()
        };
        let window = |set: &BTreeSet<(String, String)>| {
            let mut w = Counters::default();
            for k in set {
                if let Some(c) = now.get(k) {
                    let d = match self.prev.get(k) {
                        Some(p) => c.since(p),
                        None => c.clone(),
                    };
                    w.add(&d);
                }
            }
            Window {
                requests: w.requests,
                errors: w.errors(),
                latency: w.latency_us,
            }
        };
        let canary = window(&members(&spec.canary_groups));
        let baseline = window(&members(&spec.baseline_groups));
        self.prev = now;
        self.judge.observe(&Observation {
            at_ms: now_ms.saturating_sub(self.started_ms),
            baseline,
            canary,
        });
        let v = self.judge.verdict();
        self.last = Some(v.clone());
        Some(v)
    }
}

/// When each release last saw traffic (requests, or open connections).
#[derive(Debug, Default)]
pub struct Activity {
    last: BTreeMap<String, (u64, u64)>,
}

impl Activity {
    /// Updates from a snapshot; returns how long each release has been quiet (ms).
    pub fn update(&mut self, snap: &MetricsSnapshot, now_ms: u64) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for r in &snap.releases {
            let t = &r.totals;
            let busy = t.open_requests > 0 || t.open_long_lived > 0;
            let e = self.last.entry(r.release.clone()).or_insert((t.requests, now_ms));
            if busy || t.requests != e.0 {
                *e = (t.requests, now_ms);
            }
            out.insert(r.release.clone(), now_ms.saturating_sub(e.1));
        }
        out
    }
}
