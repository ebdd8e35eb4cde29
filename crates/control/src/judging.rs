//! The loop's judging state: the analysis of the running canary step and how long releases have been quiet.
//!
//! The one place that calls `analysis`; its evidence is journaled, so a restarted control plane continues it.

use std::collections::BTreeMap;

use rollout::{AnalysisSpec, Deploy};
use wire::agent::InstanceInfo;
use wire::judge::{JudgeConfig, Verdict};
use wire::metrics::MetricsSnapshot;

use crate::analysis::{Activity, Analysis, SavedAnalysis};

/// How often the running analysis's evidence is journaled (and at every new analysis).
const SAVE_EVERY_MS: u64 = 5_000;

/// What the judge has seen so far.
#[derive(Debug, Default)]
pub(crate) struct Judging {
    analysis: Option<Analysis>,
    activity: Activity,
    /// Evidence journaled by an earlier control plane, until an analysis picks it up or another starts.
    restored: Option<SavedAnalysis>,
    /// The analysis last saved, and when.
    saved: Option<(String, u64)>,
}

impl Judging {
    /// Offers the evidence an earlier control plane journaled: the analysis it names continues from it.
    pub fn offer(&mut self, saved: SavedAnalysis) {
        self.saved = Some((saved.key.clone(), 0));
        self.restored = Some(saved);
    }

    /// Feeds a router snapshot: the verdict of the analysis `spec` names (a new one when it changed), and how long
    /// each release has been quiet (ms).
    pub fn observe(
        &mut self,
        snap: &MetricsSnapshot,
        spec: Option<&AnalysisSpec>,
        deploy: Option<&Deploy>,
        instances: &[InstanceInfo],
        config: &JudgeConfig,
        now: u64,
    ) -> (Option<Verdict>, BTreeMap<String, u64>) {
        let quiet = self.activity.update(snap, now);
        let Some(spec) = spec else {
            self.analysis = None;
            return (None, quiet);
        };
        if self.analysis.as_ref().map(|a| a.key.as_str()) != Some(spec.key.as_str()) {
            self.analysis = Some(self.start(spec, config, deploy, now));
        }
        let verdict = self
            .analysis
            .as_mut()
            .and_then(|a| a.feed(snap, spec, deploy, instances, now));
        (verdict, quiet)
    }

    /// The analysis for `spec`: the journaled one when it is the same, else a new one that carries on from the
    /// previous step's.
    fn start(&mut self, spec: &AnalysisSpec, config: &JudgeConfig, deploy: Option<&Deploy>, now: u64) -> Analysis {
        if let Some(saved) = self.restored.take().filter(|s| s.key == spec.key) {
            match Analysis::restore(saved) {
                Ok(a) => {
                    tracing::info!(analysis = %spec.key, "continuing the journaled analysis");
                    return a;
                }
                Err(e) => {
                    tracing::warn!(analysis = %spec.key, error = %e, "journaled analysis unusable; starting over")
                }
            }
        }
        Analysis::new(&spec.key, config, deploy, self.analysis.take(), now)
    }

    /// The evidence to journal now, if it is time: a new analysis at once, the running one every few seconds.
    pub fn due_save(&mut self, now: u64) -> Option<SavedAnalysis> {
        let a = self.analysis.as_ref()?;
        let due = match &self.saved {
            Some((key, at)) => key != &a.key || now.saturating_sub(*at) >= SAVE_EVERY_MS,
            None => true,
        };
        due.then(|| {
            self.saved = Some((a.key.clone(), now));
            a.save()
        })
    }

    /// The running analysis's last verdict.
    pub fn last(&self) -> Option<Verdict> {
        self.analysis.as_ref().and_then(|a| a.last.clone())
    }
}

#[cfg(test)]
mod tests {
    use rollout::Phase;

    use super::*;
    use crate::analysis::fixtures::{deploy, instance, snapshot};
    use crate::journal::Journal;

    #[test]
    fn a_restarted_control_plane_continues_the_journaled_analysis_with_the_same_verdicts() {
        let dir = testkit::TempDir::new("judging");
        let spec = AnalysisSpec {
            key: "7/step-1".into(),
            canary_groups: vec![("v2".into(), "v2".into())],
            baseline_groups: vec![("v1".into(), "v1".into())],
        };
        let step = Phase::Step {
            index: 0,
            since: 0,
            extensions: 0,
        };
        let d = deploy(step, None);
        let instances = [instance("v2"), instance("v1")];
        let cfg = JudgeConfig::default();
        let journal = Journal::open(&dir.join("journal.sqlite")).unwrap();
        let mut first = Judging::default();
        let mut second: Option<Judging> = None;
        let (mut saves, mut compared) = (0, 0);
        for k in 0..=120u64 {
            let now = k * 500;
            let snap = snapshot(k * 10, k * 90);
            let (v, _) = first.observe(&snap, Some(&spec), Some(&d), &instances, &cfg, now);
            if let Some(s) = first.due_save(now) {
                journal.save_analysis(&s, now).unwrap();
                saves += 1;
            } else {
                assert_ne!(k, 60, "the test restarts right after a save");
            }
            if let Some(j) = second.as_mut() {
                let (w, _) = j.observe(&snap, Some(&spec), Some(&d), &instances, &cfg, now);
                assert_eq!(
                    serde_json::to_string(&v).unwrap(),
                    serde_json::to_string(&w).unwrap(),
                    "verdicts differ at {now} ms"
                );
                compared += 1;
            }
            if k == 60 {
                // Saved at this very look (every 5 s); the control plane dies now and a new one opens the journal.
                let mut j = Judging::default();
                j.offer(
                    Journal::open(&dir.join("journal.sqlite"))
                        .unwrap()
                        .saved_analysis()
                        .unwrap()
                        .unwrap(),
                );
                second = Some(j);
            }
        }
        assert!(saves >= 10, "saved every 5 s: {saves}");
        assert_eq!(compared, 60);
        assert!(first.last().is_some());
        // Another deploy's analysis does not pick up this evidence.
        let mut other = Judging::default();
        other.offer(journal.saved_analysis().unwrap().unwrap());
        let spec8 = AnalysisSpec {
            key: "8/step-1".into(),
            ..spec.clone()
        };
        other.observe(&snapshot(0, 0), Some(&spec8), Some(&d), &instances, &cfg, 0);
        assert_eq!(other.due_save(0).unwrap().key, "8/step-1");
    }
}
