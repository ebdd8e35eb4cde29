//! Canary analysis settings and the judge's verdicts, as they appear in `slipway.toml`, the API and the deploy history.

use serde::{Deserialize, Serialize};

/// Which change of a metric is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricKind {
    /// Share of requests answered with 5xx (the router's own included).
    ErrorRate {
        /// The canary may be this much worse, relatively (0.25 = 25%).
        #[serde(default = "default_rel")]
        relative_tolerance: f64,
        /// ...and must be worse by more than this absolute rate to fail
        /// (0.001 = 0.1 percentage points).
        #[serde(default = "default_abs")]
        absolute_tolerance: f64,
        /// A pass needs enough traffic to have caught an error rate this many
        /// times the baseline's.
        #[serde(default = "default_detect_ratio")]
        detectable_ratio: f64,
    },
    /// A latency quantile (0.5 = median, 0.99 = p99), from histograms.
    Latency {
        quantile: f64,
        /// The canary's quantile may be this much higher (0.15 = 15%).
        #[serde(default = "default_latency_tol")]
        tolerance: f64,
        /// A pass needs enough traffic to have caught a slowdown this large
        /// (0.5 = +50%).
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
fn default_detect_increase() -> f64 {
    0.5
}

/// One metric the judge compares. (Flattened with its kind, so unknown keys
/// cannot be refused by serde here.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: MetricKind,
    #[serde(default)]
    pub direction: Direction,
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// A critical metric that fails fails the whole step at once.
    #[serde(default)]
    pub critical: bool,
    /// No pass before the canary (and the baseline) served this many requests.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
}

fn default_weight() -> f64 {
    1.0
}
fn default_min_samples() -> u64 {
    200
}

/// The judge's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// Chance that a metric of a canary inside its tolerance ever fails,
    /// however often it is looked at (always-valid).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_metrics")]
    pub metrics: Vec<MetricConfig>,
}

fn default_alpha() -> f64 {
    0.002
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
            min_samples: default_min_samples(),
        },
        MetricConfig {
            name: "latency_p50".into(),
            kind: MetricKind::Latency {
                quantile: 0.5,
                tolerance: default_latency_tol(),
                detectable_increase: default_detect_increase(),
            },
            direction: Direction::Increase,
            weight: 1.0,
            critical: true,
            min_samples: default_min_samples(),
        },
        MetricConfig {
            name: "latency_p99".into(),
            kind: MetricKind::Latency {
                quantile: 0.99,
                tolerance: default_latency_tol(),
                detectable_increase: default_detect_increase(),
            },
            direction: Direction::Increase,
            weight: 1.0,
            critical: false,
            min_samples: default_min_samples(),
        },
    ]
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            alpha: default_alpha(),
            metrics: default_metrics(),
        }
    }
}

impl JudgeConfig {
    /// Every problem with these settings.
    pub fn problems(&self, at: &str) -> Vec<crate::Problem> {
        use crate::Problem;
        let mut out = Vec::new();
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            out.push(Problem::new(format!("{at}.alpha"), "must be between 0 and 0.5"));
        }
        if self.metrics.is_empty() {
            out.push(Problem::new(format!("{at}.metrics"), "at least one metric is needed"));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            let p = format!("{at}.metrics[{i}]");
            if m.weight.is_nan() || m.weight < 0.0 {
                out.push(Problem::new(format!("{p}.weight"), "must be 0 or more"));
            }
            match &m.kind {
                MetricKind::ErrorRate {
                    relative_tolerance,
                    absolute_tolerance,
                    detectable_ratio,
                } => {
                    if !(*relative_tolerance >= 0.0 && *relative_tolerance < 10.0) {
                        out.push(Problem::new(
                            format!("{p}.relative_tolerance"),
                            "must be between 0 and 10",
                        ));
                    }
                    if !(*absolute_tolerance >= 0.0 && *absolute_tolerance < 1.0) {
                        out.push(Problem::new(
                            format!("{p}.absolute_tolerance"),
                            "must be between 0 and 1",
                        ));
                    }
                    if *detectable_ratio <= 1.0 + relative_tolerance {
                        out.push(Problem::new(
                            format!("{p}.detectable_ratio"),
                            "must be above 1 + relative_tolerance",
                        ));
                    }
                }
                MetricKind::Latency {
                    quantile,
                    tolerance,
                    detectable_increase,
                } => {
                    if !(*quantile > 0.0 && *quantile < 1.0) {
                        out.push(Problem::new(format!("{p}.quantile"), "must be between 0 and 1"));
                    }
                    if !(*tolerance >= 0.0 && *tolerance < 10.0) {
                        out.push(Problem::new(format!("{p}.tolerance"), "must be between 0 and 10"));
                    }
                    if *detectable_increase <= *tolerance {
                        out.push(Problem::new(
                            format!("{p}.detectable_increase"),
                            "must be above the tolerance",
                        ));
                    }
                }
            }
        }
        out
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
    /// For an inconclusive verdict: about how many more canary requests a
    /// decision needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub more_canary_requests: Option<u64>,
}

/// JSON has no NaN: serde_json writes it as null; read null back as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The overall verdict of one analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: String,
    /// Seconds of data judged.
    pub elapsed_s: f64,
    pub metrics: Vec<MetricVerdict>,
}
