//! Router snapshots to verdicts for the instance groups a deploy compares (through the judge's tracker), the
//! step's hold and error-budget share from the deploy, and when retiring releases go quiet.

use std::collections::BTreeMap;

use judge::{Member, Members, RestoreError, Tracker};
use rollout::{AnalysisSpec, Deploy, Phase};
use serde::{Deserialize, Serialize};
use wire::agent::{InstanceInfo, InstanceState};
use wire::judge::{JudgeConfig, Verdict};
use wire::metrics::MetricsSnapshot;

/// The analysis of one canary step (or one rolling deploy).
#[derive(Debug)]
pub struct Analysis {
    pub key: String,
    tracker: Tracker,
    pub last: Option<Verdict>,
}

/// An analysis as it is journaled: a restarted control plane continues the same test from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedAnalysis {
    pub key: String,
    pub tracker: Tracker,
}

/// How many analyses share the deploy's error budget: one per canary step, one for a rolling deploy.
fn analyses(deploy: Option<&Deploy>) -> u32 {
    deploy.map_or(1, |d| match d.phase {
        Phase::Rolling { .. } => 1,
        _ => d.plan.steps.len().max(1) as u32,
    })
}

/// When the current step's hold ends (later while paused: paused time does not count).
fn hold_end(deploy: Option<&Deploy>, now_ms: u64) -> Option<u64> {
    let d = deploy?;
    let Phase::Step { index, since, .. } = d.phase else {
        return None;
    };
    let paused = d.paused_at.map_or(0, |p| now_ms.saturating_sub(p));
    Some(since + d.plan.steps.get(index)?.1 + paused)
}

fn members(instances: &[InstanceInfo], groups: &[(String, String)]) -> Vec<Member> {
    instances
        .iter()
        .filter(|i| groups.iter().any(|(r, g)| &i.release == r && i.group_name() == g))
        .map(|i| Member {
            release: i.release.clone(),
            instance: i.id.clone(),
            started_at_ms: i.started_at_ms,
            ready: i.state == InstanceState::Ready,
        })
        .collect()
}

impl Analysis {
    pub fn new(key: &str, config: &JudgeConfig, deploy: Option<&Deploy>, now_ms: u64) -> Analysis {
        Analysis {
            key: key.to_string(),
            tracker: Tracker::new(config, analyses(deploy), now_ms),
            last: None,
        }
    }

    /// Feeds the window since the last snapshot; returns the verdict.
    pub fn feed(
        &mut self,
        snap: &MetricsSnapshot,
        spec: &AnalysisSpec,
        deploy: Option<&Deploy>,
        instances: &[InstanceInfo],
        now_ms: u64,
    ) -> Option<Verdict> {
        let m = Members {
            canary: members(instances, &spec.canary_groups),
            baseline: members(instances, &spec.baseline_groups),
        };
        if !self.tracker.feed(snap, &m, now_ms) {
            return self.last.clone();
        }
        let v = self.tracker.verdict(now_ms, hold_end(deploy, now_ms));
        self.last = Some(v.clone());
        Some(v)
    }

    /// The state to journal with the deploy.
    pub fn save(&self) -> SavedAnalysis {
        SavedAnalysis {
            key: self.key.clone(),
            tracker: self.tracker.clone(),
        }
    }

    /// Continues a journaled analysis.
    pub fn restore(saved: SavedAnalysis) -> Result<Analysis, RestoreError> {
        saved.tracker.check()?;
        Ok(Analysis {
            key: saved.key,
            tracker: saved.tracker,
            last: None,
        })
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
