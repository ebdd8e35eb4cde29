//! Canary analysis settings and the judge's verdicts, as they appear in `slipway.toml`, the API and the deploy history.

use serde::{Deserialize, Serialize};

use crate::HumanDuration;

/// Which change of a metric is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Only an increase is bad (errors, latency).
    #[default]
    Increase,
    /// Only a decrease is bad.
    Decrease,
    /// Both are bad.
    Either,
}

/// What a metric measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricKind {
    /// Share of requests answered with 5xx (the router's own included).
    ErrorRate {
        /// The canary may be this much worse, relatively (0.25 = 25%)...
        #[serde(default = "default_rel")]
        relative_tolerance: f64,
        /// ...or worse by up to this absolute rate (0.001 = 0.1 percentage
        /// points): a failure needs both to be exceeded.
        #[serde(default = "default_abs")]
        absolute_tolerance: f64,
        /// With `pass = "proven"`, a step passes only once it could have caught
        /// an error rate this many times the baseline's.
        #[serde(default = "default_detect_ratio")]
        detectable_ratio: f64,
    },
    /// A latency quantile (0.5 = median, 0.99 = p99), from histograms.
    Latency {
        quantile: f64,
        /// The canary's quantile may be this much higher (0.15 = 15%)...
        #[serde(default = "default_latency_tol")]
        tolerance: f64,
        /// ...or higher by up to this much ("2ms"): a difference below it is
        /// never a regression, whatever the relative change.
        #[serde(default = "default_latency_abs")]
        absolute_tolerance: HumanDuration,
        /// With `pass = "proven"`, a step passes only once it could have caught
        /// a slowdown this large (0.5 = +50%).
        #[serde(default = "default_detect_increase")]
        detectable_increase: f64,
    },
}

fn default_rel() -> f64 {
    0.25
}
fn default_abs() -> f64 {
    0.001
}
fn default_detect_ratio() -> f64 {
    3.0
}
fn default_latency_tol() -> f64 {
    0.15
}
fn default_latency_abs() -> HumanDuration {
    HumanDuration::from_millis(2)
}
fn default_detect_increase() -> f64 {
    0.5
}

/// One metric the judge compares. (Flattened with its kind, so serde cannot
/// refuse unknown keys here; the schema check does: `unevaluatedProperties`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(extend("unevaluatedProperties" = false))]
pub struct MetricConfig {
    /// The metric's name in verdicts, status and the dashboard.
    pub name: String,
    #[serde(flatten)]
    pub kind: MetricKind,
    /// Which change is bad: `increase` (the default), `decrease` or `either`.
    #[serde(default)]
    pub direction: Direction,
    /// Share of the vote among failing non-critical metrics.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// A critical metric that fails fails the whole step at once; other
    /// failing metrics fail it when they hold at least half of all metrics'
    /// weight (critical ones included).
    #[serde(default = "default_critical")]
    pub critical: bool,
}

fn default_weight() -> f64 {
    1.0
}
fn default_critical() -> bool {
    true
}

/// When a step passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PassRule {
    /// When its hold ends with no metric failed and at least `min_requests`
    /// canary (and baseline) requests seen.
    #[default]
    Hold,
    /// As `hold`, and only once the traffic seen could have caught every
    /// metric's `detectable_ratio` / `detectable_increase` with 95% probability.
    Proven,
}

/// The judge's settings (`[deploy.canary.analysis]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Chance that a canary within every tolerance is failed anywhere in a
    /// deploy: shared by its steps and metrics, however often they are looked at.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// When a step passes: `hold` (its hold ended with no metric failed and enough traffic) or `proven` (as
    /// `hold`, and the traffic could have caught every metric's detectable change).
    #[serde(default)]
    pub pass: PassRule,
    /// Canary requests (and baseline requests) a step needs to pass; with
    /// none at all while the baseline had this many, the step fails with
    /// "canary received no traffic".
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// A new (or restarted) instance is warming up this long after it
    /// started, or after the control plane saw it become ready: its latency
    /// is observed but not judged, its errors count only beyond the warm-up
    /// tolerances.
    #[serde(default = "default_warmup")]
    pub warmup: HumanDuration,
    /// The same for the first part of every step (after a weight change).
    #[serde(default = "default_step_warmup")]
    pub step_warmup: HumanDuration,
    /// Error tolerances while warming up (3x the baseline, and 5 points).
    #[serde(default = "default_warmup_rel")]
    pub warmup_relative_tolerance: f64,
    /// Absolute error-rate tolerance while warming up (0.05 = 5 points).
    #[serde(default = "default_warmup_abs")]
    pub warmup_absolute_tolerance: f64,
    #[serde(default = "default_metrics")]
    pub metrics: Vec<MetricConfig>,
}

fn default_alpha() -> f64 {
    0.01
}
fn default_min_requests() -> u64 {
    50
}
fn default_warmup() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_step_warmup() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_warmup_rel() -> f64 {
    2.0
}
fn default_warmup_abs() -> f64 {
    0.05
}

fn latency(name: &str, quantile: f64) -> MetricConfig {
    MetricConfig {
        name: name.into(),
        kind: MetricKind::Latency {
            quantile,
            tolerance: default_latency_tol(),
            absolute_tolerance: default_latency_abs(),
            detectable_increase: default_detect_increase(),
        },
        direction: Direction::Increase,
        weight: 1.0,
        critical: true,
    }
}

fn default_metrics() -> Vec<MetricConfig> {
    vec![
        MetricConfig {
            name: "error_rate".into(),
            kind: MetricKind::ErrorRate {
                relative_tolerance: default_rel(),
                absolute_tolerance: default_abs(),
                detectable_ratio: default_detect_ratio(),
            },
            direction: Direction::Increase,
            weight: 1.0,
            critical: true,
        },
        latency("latency_p50", 0.5),
        latency("latency_p99", 0.99),
    ]
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            alpha: default_alpha(),
            pass: PassRule::Hold,
            min_requests: default_min_requests(),
            warmup: default_warmup(),
            step_warmup: default_step_warmup(),
            warmup_relative_tolerance: default_warmup_rel(),
            warmup_absolute_tolerance: default_warmup_abs(),
            metrics: default_metrics(),
        }
    }
}

fn in_range(v: f64, lo: f64, hi: f64) -> bool {
    v >= lo && v < hi
}

impl JudgeConfig {
    /// Every problem with these settings.
    pub fn problems(&self, at: &str) -> Vec<crate::Problem> {
        use crate::Problem;
        let mut out = Vec::new();
        let mut check = |ok: bool, key: String, what: &str| {
            if !ok {
                out.push(Problem::new(key, what));
            }
        };
        check(
            in_range(self.alpha, 1e-9, 0.5) && self.alpha > 0.0,
            format!("{at}.alpha"),
            "must be between 0 and 0.5",
        );
        check(
            self.min_requests >= 1,
            format!("{at}.min_requests"),
            "must be at least 1",
        );
        check(
            in_range(self.warmup_relative_tolerance, 0.0, 100.0),
            format!("{at}.warmup_relative_tolerance"),
            "must be between 0 and 100",
        );
        check(
            in_range(self.warmup_absolute_tolerance, 0.0, 1.0),
            format!("{at}.warmup_absolute_tolerance"),
            "must be between 0 and 1",
        );
        check(
            !self.metrics.is_empty(),
            format!("{at}.metrics"),
            "at least one metric is needed",
        );
        for (i, m) in self.metrics.iter().enumerate() {
            let p = format!("{at}.metrics[{i}]");
            check(
                m.weight >= 0.0 && m.weight.is_finite(),
                format!("{p}.weight"),
                "must be 0 or more",
            );
            if self.metrics[..i].iter().any(|o| o.name == m.name) {
                check(false, format!("{p}.name"), "two metrics have this name");
            }
            m.kind.problems(&p, &mut check);
        }
        out
    }
}

impl MetricKind {
    /// The problems with this metric's own settings, reported through `check` under `p`.
    fn problems(&self, p: &str, check: &mut impl FnMut(bool, String, &str)) {
        match self {
            MetricKind::ErrorRate {
                relative_tolerance,
                absolute_tolerance,
                detectable_ratio,
            } => {
                check(
                    in_range(*relative_tolerance, 0.0, 10.0),
                    format!("{p}.relative_tolerance"),
                    "must be between 0 and 10",
                );
                check(
                    in_range(*absolute_tolerance, 0.0, 1.0),
                    format!("{p}.absolute_tolerance"),
                    "must be between 0 and 1",
                );
                check(
                    *detectable_ratio > 1.0 + relative_tolerance && detectable_ratio.is_finite(),
                    format!("{p}.detectable_ratio"),
                    "must be above 1 + relative_tolerance",
                );
            }
            MetricKind::Latency {
                quantile,
                tolerance,
                detectable_increase,
                ..
            } => {
                check(
                    *quantile > 0.0 && *quantile < 1.0,
                    format!("{p}.quantile"),
                    "must be between 0 and 1",
                );
                check(
                    in_range(*tolerance, 0.0, 10.0),
                    format!("{p}.tolerance"),
                    "must be between 0 and 10",
                );
                check(
                    *detectable_increase > *tolerance && detectable_increase.is_finite(),
                    format!("{p}.detectable_increase"),
                    "must be above the tolerance",
                );
            }
        }
    }
}

/// pass, fail, or "not enough data yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
        }
    }
}

/// The verdict on one metric, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricVerdict {
    pub name: String,
    pub outcome: Outcome,
    pub critical: bool,
    /// The reason in words and numbers.
    pub reason: String,
    /// Baseline and canary values (a rate, or a latency in ms); NaN (null
    /// in JSON) while there is no data.
    #[serde(deserialize_with = "null_as_nan")]
    pub baseline: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub canary: f64,
    /// Canary relative to baseline (1.2 = 20% higher); NaN if undefined.
    #[serde(deserialize_with = "null_as_nan")]
    pub effect: f64,
    /// Evidence against "the canary is within tolerance", as odds (the
    /// mixture likelihood ratio); fail when it reaches `bound`.
    pub evidence: f64,
    pub bound: f64,
    pub baseline_samples: u64,
    pub canary_samples: u64,
    /// The smallest regression the data so far would have caught with 95%
    /// probability: a canary error rate, or a relative slowdown (0.3 = +30%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectable: Option<f64>,
}

/// JSON has no NaN: serde_json writes it as null; read null back as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Something wrong with the traffic rather than with the canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alarm {
    /// The baseline is served but the canary gets nothing: cohort rules,
    /// weights or client-version gates send it no one. Never a pass; when
    /// the hold ends like this the step fails.
    NoCanaryTraffic,
    /// The canary is served but the baseline gets nothing to compare with.
    NoBaselineTraffic,
}

impl Alarm {
    pub fn as_str(self) -> &'static str {
        match self {
            Alarm::NoCanaryTraffic => "canary received no traffic",
            Alarm::NoBaselineTraffic => "baseline received no traffic",
        }
    }
}

/// The overall verdict of one analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<Alarm>,
    /// Seconds since the analysis began.
    pub elapsed_s: f64,
    pub metrics: Vec<MetricVerdict>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_every_bad_value_is_listed_at_once() {
        assert!(JudgeConfig::default().problems("a").is_empty());
        let bad: JudgeConfig = toml::from_str(
            r#"
alpha = 0.7
min_requests = 0
warmup_absolute_tolerance = 2.0
metrics = [
  { name = "e", kind = "error_rate", relative_tolerance = 20.0, detectable_ratio = 1.0 },
  { name = "e", kind = "latency", quantile = 1.5, tolerance = 0.3, detectable_increase = 0.2 },
]
"#,
        )
        .unwrap();
        let keys: Vec<String> = bad.problems("a").into_iter().map(|p| p.path).collect();
        for k in [
            "a.alpha",
            "a.min_requests",
            "a.warmup_absolute_tolerance",
            "a.metrics[0].relative_tolerance",
            "a.metrics[0].detectable_ratio",
            "a.metrics[1].name",
            "a.metrics[1].quantile",
            "a.metrics[1].detectable_increase",
        ] {
            assert!(keys.iter().any(|p| p == k), "{k} missing from {keys:?}");
        }
        assert!(toml::from_str::<JudgeConfig>("bogus = 1").is_err());
    }

    #[test]
    fn a_latency_floor_reads_as_a_duration_and_verdicts_read_back_with_nan() {
        let c: JudgeConfig = toml::from_str(
            r#"metrics = [{ name = "p50", kind = "latency", quantile = 0.5, absolute_tolerance = "500us" }]"#,
        )
        .unwrap();
        let MetricKind::Latency { absolute_tolerance, .. } = &c.metrics[0].kind else {
            panic!()
        };
        assert_eq!(absolute_tolerance.0, std::time::Duration::from_micros(500));
        assert!(c.metrics[0].critical, "metrics are critical unless said otherwise");
        let v = Verdict {
            outcome: Outcome::Fail,
            reason: "r".into(),
            alarm: Some(Alarm::NoCanaryTraffic),
            elapsed_s: 1.0,
            metrics: vec![MetricVerdict {
                name: "m".into(),
                outcome: Outcome::Fail,
                critical: true,
                reason: String::new(),
                baseline: f64::NAN,
                canary: 1.0,
                effect: f64::NAN,
                evidence: 1.0,
                bound: 2.0,
                baseline_samples: 0,
                canary_samples: 1,
                detectable: None,
            }],
        };
        let json = serde_json::to_string(&v).unwrap();
        assert!(json.contains("\"alarm\":\"no_canary_traffic\""), "{json}");
        let back: Verdict = serde_json::from_str(&json).unwrap();
        assert!(back.metrics[0].baseline.is_nan() && back.alarm == v.alarm);
    }
}
