//! The loop's judging state: the analysis of the running canary step and how long releases have been quiet.
//!
//! The one place that calls `analysis`.

use std::collections::BTreeMap;

use rollout::{AnalysisSpec, Deploy};
use wire::agent::InstanceInfo;
use wire::judge::{JudgeConfig, Verdict};
use wire::metrics::MetricsSnapshot;

use crate::analysis::{Activity, Analysis};

/// What the judge has seen so far.
#[derive(Debug, Default)]
pub(crate) struct Judging {
    analysis: Option<Analysis>,
    activity: Activity,
}

impl Judging {
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
            // A new step carries on from the previous step's analysis.
            self.analysis = Some(Analysis::new(&spec.key, config, deploy, self.analysis.take(), now));
        }
        let verdict = self
            .analysis
            .as_mut()
            .and_then(|a| a.feed(snap, spec, deploy, instances, now));
        (verdict, quiet)
    }

    /// The running analysis's last verdict.
    pub fn last(&self) -> Option<Verdict> {
        self.analysis.as_ref().and_then(|a| a.last.clone())
    }
}
