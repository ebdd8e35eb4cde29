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
    /// The deploy it belongs to (the next step's analysis carries on from it).
    deploy: Option<i64>,
    tracker: Tracker,
    pub last: Option<Verdict>,
}

/// An analysis as it is journaled: a restarted control plane continues the same test from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedAnalysis {
    pub key: String,
    pub deploy: Option<i64>,
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
    /// The analysis `key` of `deploy` from `now_ms`. When `previous` was the
    /// same deploy's previous step, the new one keeps what it learned about
    /// the traffic and its windowing (see [`Tracker::next_step`]).
    pub fn new(
        key: &str,
        config: &JudgeConfig,
        deploy: Option<&Deploy>,
        previous: Option<Analysis>,
        now_ms: u64,
    ) -> Analysis {
        let id = deploy.map(|d| d.id);
        let tracker = match previous {
            Some(p) if p.deploy.is_some() && p.deploy == id => p.tracker.next_step(config, analyses(deploy), now_ms),
            _ => Tracker::new(config, analyses(deploy), now_ms),
        };
        Analysis {
            key: key.to_string(),
            deploy: id,
            tracker,
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
            deploy: self.deploy,
            tracker: self.tracker.clone(),
        }
    }

    /// Continues a journaled analysis.
    pub fn restore(saved: SavedAnalysis) -> Result<Analysis, RestoreError> {
        saved.tracker.check()?;
        Ok(Analysis {
            key: saved.key,
            deploy: saved.deploy,
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

#[cfg(test)]
pub(crate) mod fixtures {
    //! A canary deploy, its instances and router snapshots, for tests of the analysis and what journals it.

    use rollout::{Deploy, Phase, Plan};
    use wire::agent::InstanceInfo;
    use wire::metrics::{Counters, InstanceMetrics, MetricsSnapshot, ReleaseMetrics};
    use wire::service::Strategy;

    pub(crate) fn deploy(phase: Phase, paused_at: Option<u64>) -> Deploy {
        Deploy {
            id: 7,
            release: "v2".into(),
            from: Some("v1".into()),
            strategy: Strategy::Canary,
            plan: Plan {
                count: 2,
                steps: vec![(10, 60_000), (50, 120_000)],
                canary_count: 1,
                fresh_baseline: false,
                extension_ms: 60_000,
                max_extensions: 3,
                continue_when_inconclusive: false,
                max_surge: 1,
                max_unavailable: 0,
                bake_ms: 0,
                check_ms: 0,
                rollback_window_ms: 0,
                drain_deadline_ms: 0,
                session_idle_ms: 0,
                start_timeout_ms: 0,
                pre_traffic: false,
            },
            phase,
            started_ms: 0,
            held_ms: 0,
            finished_ms: None,
            outcome: None,
            paused_at,
            last_verdict: None,
            log: Vec::new(),
            rollback: false,
        }
    }

    pub(crate) fn snapshot(canary: u64, base: u64) -> MetricsSnapshot {
        let rel = |name: &str, n: u64| {
            let c = Counters {
                requests: n,
                ..Counters::default()
            };
            ReleaseMetrics {
                release: name.into(),
                totals: c.clone(),
                instances: vec![InstanceMetrics {
                    instance: format!("{name}-0"),
                    addr: String::new(),
                    healthy: true,
                    counters: c,
                }],
            }
        };
        MetricsSnapshot {
            router_id: "r1".into(),
            generation: 1,
            uptime_ms: 0,
            releases: vec![rel("v2", canary), rel("v1", base)],
            unrouted: Counters::default(),
        }
    }

    pub(crate) fn instance(release: &str) -> InstanceInfo {
        serde_json::from_value(serde_json::json!({
            "id": format!("{release}-0"), "release": release, "addr": "127.0.0.1:1", "port": 1,
            "pid": 1, "state": "ready", "healthy": true, "restarts": 0, "started_at_ms": 0
        }))
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{deploy, instance, snapshot};
    use super::*;

    #[test]
    fn the_hold_ends_with_the_step_and_paused_time_does_not_count() {
        let step = |index| Phase::Step {
            index,
            since: 1_000,
            extensions: 1,
        };
        assert_eq!(hold_end(Some(&deploy(step(1), None)), 5_000), Some(121_000));
        assert_eq!(hold_end(Some(&deploy(step(0), Some(30_000))), 50_000), Some(81_000));
        let rolling = Phase::Rolling {
            added: 1,
            removed: 0,
            ready_since: None,
        };
        assert_eq!(hold_end(Some(&deploy(rolling.clone(), None)), 5_000), None);
        assert_eq!(analyses(Some(&deploy(step(0), None))), 2);
        assert_eq!(analyses(Some(&deploy(rolling, None))), 1);
    }

    #[test]
    fn a_journaled_analysis_continues_the_same_test_and_a_misrouted_canary_fails_at_the_hold_end() {
        let spec = AnalysisSpec {
            key: "7/step-1".into(),
            canary_groups: vec![("v2".into(), "v2".into())],
            baseline_groups: vec![("v1".into(), "v1".into())],
        };
        let d = deploy(
            Phase::Step {
                index: 0,
                since: 0,
                extensions: 0,
            },
            None,
        );
        let instances = [instance("v2"), instance("v1")];
        let mut a = Analysis::new(&spec.key, &JudgeConfig::default(), Some(&d), None, 0);
        assert_eq!(a.feed(&snapshot(0, 0), &spec, Some(&d), &instances, 0), None);
        let mut restored = None;
        for k in 1..=130u64 {
            let now = k * 500;
            let snap = snapshot(0, k * 100);
            let v = a.feed(&snap, &spec, Some(&d), &instances, now).unwrap();
            if let Some(r) = restored.as_mut() {
                let w = Analysis::feed(r, &snap, &spec, Some(&d), &instances, now).unwrap();
                assert_eq!(serde_json::to_string(&v).unwrap(), serde_json::to_string(&w).unwrap());
            }
            if k == 40 {
                let saved = serde_json::to_string(&a.save()).unwrap();
                restored = Some(Analysis::restore(serde_json::from_str(&saved).unwrap()).unwrap());
            }
        }
        let v = a.last.clone().unwrap();
        assert_eq!(v.outcome, wire::judge::Outcome::Fail, "{v:?}");
        assert_eq!(v.alarm, Some(wire::judge::Alarm::NoCanaryTraffic));
        // The next step of the same deploy carries on without a first look.
        let mut next = Analysis::new("7/step-2", &JudgeConfig::default(), Some(&d), Some(a), 65_000);
        assert!(
            next.feed(&snapshot(10, 13_100), &spec, Some(&d), &instances, 65_500)
                .is_some()
        );
    }
}
