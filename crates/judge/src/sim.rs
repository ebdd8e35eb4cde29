//! Seeded simulation of canary deploys for the bench and the tests: instances serving Poisson traffic with
//! chosen errors and latencies, router-style cumulative snapshots fed through [`Tracker`] step by step, and
//! Flagger- and Kayenta-style reference judges on the same traffic.

use wire::judge::{JudgeConfig, Outcome};
use wire::metrics::{
    BUCKETS, Counters, Histogram, InstanceMetrics, MetricsSnapshot, ReleaseMetrics, bucket_index, bucket_lower_us,
    bucket_upper_us,
};

use crate::{Member, Members, Tracker};

/// Latency of a healthy request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Log-normal with this median (µs) and σ.
    LogNormal { median_us: f64, sigma: f64 },
    /// Pareto with this minimum (µs) and shape (1.5: infinite variance).
    Pareto { min_us: f64, shape: f64 },
}

impl Latency {
    fn cdf(self, us: f64) -> f64 {
        match self {
            Latency::LogNormal { median_us, sigma } => {
                if us <= 0.0 {
                    0.0
                } else {
                    phi((us / median_us).ln() / sigma)
                }
            }
            Latency::Pareto { min_us, shape } => {
                if us <= min_us {
                    0.0
                } else {
                    1.0 - (min_us / us).powf(shape)
                }
            }
        }
    }

    fn sample(self, rng: &mut Rng) -> f64 {
        match self {
            Latency::LogNormal { median_us, sigma } => median_us * (sigma * rng.normal()).exp(),
            Latency::Pareto { min_us, shape } => min_us / (1.0 - rng.f64()).max(1e-12).powf(1.0 / shape),
        }
    }

    /// The healthy `q`-quantile in µs.
    pub fn quantile_us(self, q: f64) -> f64 {
        let (mut lo, mut hi) = (0.0, 1e10);
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if self.cdf(mid) < q { lo = mid } else { hi = mid }
        }
        hi
    }
}

fn phi(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26.
    let t = 1.0 / (1.0 + 0.3275911 * x.abs() / std::f64::consts::SQRT_2);
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
            * t
            * (-(x * x) / 2.0).exp();
    if x >= 0.0 { 0.5 * (1.0 + y) } else { 0.5 * (1.0 - y) }
}

/// A deterministic random source.
pub struct Rng(pub fastrand::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }

    pub fn f64(&mut self) -> f64 {
        self.0.f64()
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.0.f64().max(1e-300), self.0.f64());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn poisson(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 40.0 {
            return (mean + mean.sqrt() * self.normal()).round().max(0.0) as u64;
        }
        let l = (-mean).exp();
        let (mut k, mut p) = (0u64, 1.0);
        loop {
            p *= self.0.f64();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }

    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if n < 30 {
            return (0..n).filter(|_| self.0.f64() < p).count() as u64;
        }
        let mean = n as f64 * p;
        if mean < 25.0 || n as f64 * (1.0 - p) < 25.0 {
            let q = 1.0 - p;
            let mut pmf = q.powf(n as f64);
            if pmf > 0.0 {
                let u = self.0.f64();
                let (mut cdf, mut k) = (pmf, 0u64);
                while cdf < u && k < n {
                    pmf *= (n - k) as f64 / (k + 1) as f64 * p / q;
                    k += 1;
                    cdf += pmf;
                }
                return k;
            }
            return self.poisson(mean).min(n);
        }
        let sd = (mean * (1.0 - p)).sqrt();
        (mean + sd * self.normal()).round().clamp(0.0, n as f64) as u64
    }
}

/// A change that starts at `onset_ms` after the deploy started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regression {
    pub onset_ms: u64,
    /// The canary's error rate from then on.
    pub errors: f64,
    /// The canary's latency multiplier from then on.
    pub slow: f64,
}

/// How a new instance's first seconds differ (from its first request on).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    None,
    /// Latency × `factor` for the first `ms`.
    Slow {
        factor: f64,
        ms: u64,
    },
    /// Latency × (1 + (factor − 1)·e^(−t/τ)).
    Decay {
        factor: f64,
        tau_ms: u64,
    },
    /// This error rate for the first `ms`.
    Errors {
        rate: f64,
        ms: u64,
    },
}

/// A dependency both releases use slows down or fails for a while.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    /// Start, ms after the deploy started.
    pub at_ms: u64,
    pub ms: u64,
    pub slow: f64,
    pub errors: f64,
}

/// Errors in bursts: each instance independently has episodes (a bad
/// upstream) at `per_min` a minute, lasting 2-5 s, during which its error
/// rate rises by `errors`; and errors come in clusters of mean size `cluster`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bursts {
    pub per_min: f64,
    pub errors: f64,
    pub cluster: f64,
}

/// One family of deploys.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Total requests per second, and from `drop.0` ms on `drop.1`.
    pub rps: f64,
    pub drop: Option<(u64, f64)>,
    /// Canary steps: (weight %, hold ms).
    pub steps: Vec<(u32, u64)>,
    pub extension_ms: u64,
    pub max_extensions: u32,
    pub continue_when_inconclusive: bool,
    pub canary_instances: u32,
    pub baseline_instances: u32,
    pub latency: Latency,
    pub base_errors: f64,
    /// The canary's error rate and latency factor from the start.
    pub canary_errors: f64,
    pub canary_slow: f64,
    pub regression: Option<Regression>,
    pub warmup: Warmup,
    pub outage: Option<Outage>,
    pub bursts: Option<Bursts>,
    /// Misrouted: the canary gets no request at all.
    pub no_canary_traffic: bool,
    pub tick_ms: u64,
    pub judge: JudgeConfig,
}

impl Scenario {
    /// The default plan of `[deploy.canary]` at `rps`, identical releases.
    pub fn default_plan(rps: f64) -> Scenario {
        let c = wire::service::CanarySettings::default();
        Scenario {
            rps,
            drop: None,
            steps: c.steps.iter().map(|s| (s.weight, s.hold.as_millis())).collect(),
            extension_ms: c.extension.as_millis(),
            max_extensions: c.max_extensions,
            continue_when_inconclusive: c.on_inconclusive == wire::service::OnInconclusive::Continue,
            canary_instances: 2,
            baseline_instances: 4,
            latency: Latency::LogNormal {
                median_us: 50_000.0,
                sigma: 0.5,
            },
            base_errors: 0.005,
            canary_errors: 0.005,
            canary_slow: 1.0,
            regression: None,
            warmup: Warmup::None,
            outage: None,
            bursts: None,
            no_canary_traffic: false,
            tick_ms: 500,
            judge: c.analysis,
        }
    }

    /// One step of `weight`% held `hold_ms`.
    pub fn one_step(rps: f64, weight: u32, hold_ms: u64) -> Scenario {
        Scenario {
            steps: vec![(weight, hold_ms)],
            max_extensions: 0,
            ..Scenario::default_plan(rps)
        }
    }

    pub fn nominal_ms(&self) -> u64 {
        self.steps.iter().map(|s| s.1).sum()
    }
}

/// How one deploy ended, for each judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Result {
    pub slipway: End,
    pub flagger: End,
    pub kayenta: End,
}

#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// Promoted after this many ms.
    Promoted(u64),
    /// Failed by the judge after this many ms (from the deploy's start), with the reason.
    Failed(u64, String),
    /// Aborted still inconclusive after this many ms, or failed for no traffic.
    Aborted(u64, String),
}

impl End {
    pub fn promoted(&self) -> bool {
        matches!(self, End::Promoted(_))
    }

    pub fn failed_at(&self) -> Option<u64> {
        match self {
            End::Failed(t, _) => Some(*t),
            _ => None,
        }
    }
}

/// Cumulative counters of one simulated instance.
struct Inst {
    release: &'static str,
    id: String,
    canary: bool,
    requests: u64,
    errors: u64,
    dense: Vec<u64>,
    sum_us: u64,
    /// Time of its first request (warm-up shapes count from there).
    first_ms: Option<u64>,
    /// Bad-upstream episode until this time.
    episode_until: u64,
}

impl Inst {
    fn counters(&self) -> Counters {
        let mut c = Counters {
            requests: self.requests,
            latency_us: Histogram::from_dense(&self.dense, self.sum_us),
            ..Counters::default()
        };
        c.responses.c5xx = self.errors;
        c.responses.c2xx = self.requests - self.errors;
        c
    }
}

/// Bucket probabilities of the latency model, scaled by a factor (cached per factor).
struct Buckets {
    base: Latency,
    cache: Vec<(u64, Vec<(usize, f64)>)>,
}

impl Buckets {
    fn probs(&mut self, m: f64) -> &[(usize, f64)] {
        let k = (m * 1000.0).round() as u64;
        if let Some(i) = self.cache.iter().position(|(c, _)| *c == k) {
            return &self.cache[i].1;
        }
        let mut out = Vec::new();
        let mut prev = 0.0;
        for i in 0..BUCKETS - 1 {
            let hi = (bucket_upper_us(i) + 1) as f64 / m;
            let c = self.base.cdf(hi);
            if c - prev > 1e-12 {
                out.push((i, c - prev));
            }
            prev = c;
            if c > 1.0 - 1e-12 {
                break;
            }
        }
        if prev < 1.0 {
            out.push((BUCKETS - 1, 1.0 - prev));
        }
        if self.cache.len() > 64 {
            self.cache.clear();
        }
        self.cache.push((k, out));
        &self.cache.last().map(|c| &c.1).unwrap_or_else(|| unreachable!())[..]
    }
}

fn serve(rng: &mut Rng, buckets: &mut Buckets, inst: &mut Inst, n: u64, err: f64, slow: f64, cluster: f64) {
    inst.requests += n;
    let e = if cluster > 1.0 {
        // Clusters of geometric size with mean `cluster`.
        let mut left = rng.poisson(n as f64 * err / cluster);
        let mut e = 0u64;
        while left > 0 {
            let mut size = 1u64;
            while rng.f64() > 1.0 / cluster {
                size += 1;
            }
            e += size;
            left -= 1;
        }
        e.min(n)
    } else {
        rng.binomial(n, err)
    };
    inst.errors += e;
    if n <= 24 {
        for _ in 0..n {
            let us = buckets.base.sample(rng) * slow;
            let us = us.clamp(1.0, 4e9) as u64;
            inst.dense[bucket_index(us)] += 1;
            inst.sum_us += us;
        }
        return;
    }
    let probs = buckets.probs(slow).to_vec();
    let (mut left, mut mass) = (n, 1.0);
    for (i, p) in probs {
        if left == 0 || mass <= 0.0 {
            break;
        }
        let c = rng.binomial(left, (p / mass).min(1.0));
        inst.dense[i] += c;
        inst.sum_us += c * ((bucket_lower_us(i) + bucket_upper_us(i).min(1 << 40)) / 2);
        left -= c;
        mass -= p;
    }
}

/// Flagger-style: every 60 s the last minute's canary error rate must be
/// ≤ 1% and its p99 ≤ 1.5× the service's healthy p99; a check without
/// canary data fails too; rolled back after 5 failed checks.
struct Flagger {
    requests: u64,
    errors: u64,
    hist: Vec<u64>,
    failed_checks: u32,
    p99_limit_us: f64,
    last_check: u64,
}

impl Flagger {
    fn observe(&mut self, t: u64, n: u64, e: u64, h: &[u64]) -> bool {
        self.requests += n;
        self.errors += e;
        for (a, b) in self.hist.iter_mut().zip(h) {
            *a += b;
        }
        if t < self.last_check + 60_000 {
            return false;
        }
        self.last_check = t;
        let ok = self.requests > 0 && {
            let rate = self.errors as f64 / self.requests as f64;
            let total: u64 = self.hist.iter().sum();
            let rank = ((0.99 * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            let mut p99 = 0.0;
            for (i, c) in self.hist.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    p99 = bucket_upper_us(i) as f64;
                    break;
                }
            }
            rate <= 0.01 && p99 <= self.p99_limit_us
        };
        if !ok {
            self.failed_checks += 1;
        }
        self.requests = 0;
        self.errors = 0;
        self.hist.iter_mut().for_each(|c| *c = 0);
        self.failed_checks >= 5
    }
}

/// Kayenta-style: at the end of each step, per-10-second series of error
/// rate and mean latency are compared with Mann-Whitney (98% confidence
/// interval of the Hodges-Lehmann shift, ±25% of it as tolerance); a
/// metric is High when the lower bound exceeds the tolerance; any High fails.
#[derive(Default)]
struct Kayenta {
    cur: [(u64, u64, f64, u64); 2],
    series: [[Vec<f64>; 2]; 2],
    last_roll: u64,
}

impl Kayenta {
    fn observe(&mut self, t: u64, sides: [(u64, u64, u64, u64); 2]) {
        for (k, (n, e, sum, cnt)) in sides.iter().enumerate() {
            let c = &mut self.cur[k];
            c.0 += n;
            c.1 += e;
            c.2 += *sum as f64;
            c.3 += cnt;
        }
        if t >= self.last_roll + 10_000 {
            self.last_roll = t;
            for k in 0..2 {
                let (n, e, sum, cnt) = self.cur[k];
                // NaN handling "replace": no data counts as 0.
                self.series[0][k].push(if n > 0 { e as f64 / n as f64 } else { 0.0 });
                if cnt > 0 {
                    self.series[1][k].push(sum / cnt as f64);
                }
                self.cur[k] = (0, 0, 0.0, 0);
            }
        }
    }

    fn fails(&self) -> bool {
        self.series.iter().any(|m| mann_whitney_high(&m[0], &m[1]))
    }

    fn next_step(&mut self) {
        self.series = Default::default();
    }
}

fn mann_whitney_high(base: &[f64], canary: &[f64]) -> bool {
    if base.is_empty() || canary.is_empty() {
        return false;
    }
    let mut a = base.to_vec();
    let mut b = canary.to_vec();
    a.sort_by(|x, y| x.total_cmp(y));
    b.sort_by(|x, y| x.total_cmp(y));
    if a == b {
        return false;
    }
    let mut diffs: Vec<f64> = Vec::with_capacity(a.len() * b.len());
    for y in &b {
        for x in &a {
            diffs.push(y - x);
        }
    }
    diffs.sort_by(|x, y| x.total_cmp(y));
    let (m, n) = (a.len() as f64, b.len() as f64);
    let nn = diffs.len();
    let hl = if nn % 2 == 1 {
        diffs[nn / 2]
    } else {
        (diffs[nn / 2 - 1] + diffs[nn / 2]) / 2.0
    };
    let z = 2.326;
    let k = ((m * n / 2.0) - z * (m * n * (m + n + 1.0) / 12.0).sqrt())
        .floor()
        .max(1.0) as usize;
    let lower = diffs[(k - 1).min(nn - 1)];
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ratio = mean(canary) / mean(base);
    lower > 0.25 * hl.abs() && (ratio.is_nan() || ratio >= 1.0)
}

/// The state of the simulated world during one deploy.
struct World<'a> {
    s: &'a Scenario,
    rng: Rng,
    buckets: Buckets,
    insts: Vec<Inst>,
}

impl World<'_> {
    fn rate(&self, t: u64) -> f64 {
        match self.s.drop {
            Some((at, r)) if t >= at => r,
            _ => self.s.rps,
        }
    }

    /// Error rate and latency factor of one instance at `t`.
    fn behaviour(&self, i: usize, t: u64) -> (f64, f64) {
        let s = self.s;
        let inst = &self.insts[i];
        let (mut err, mut slow) = (s.base_errors, 1.0);
        if inst.canary {
            err = s.canary_errors;
            slow = s.canary_slow;
            if let Some(r) = s.regression
                && t >= r.onset_ms
            {
                err = r.errors;
                slow *= r.slow;
            }
            let age = inst.first_ms.map_or(0, |f| t.saturating_sub(f));
            match s.warmup {
                Warmup::None => {}
                Warmup::Slow { factor, ms } if age < ms => slow *= factor,
                Warmup::Slow { .. } => {}
                Warmup::Decay { factor, tau_ms } => {
                    slow *= 1.0 + (factor - 1.0) * (-(age as f64) / tau_ms as f64).exp()
                }
                Warmup::Errors { rate, ms } if age < ms => err = err.max(rate),
                Warmup::Errors { .. } => {}
            }
        }
        if let Some(o) = s.outage
            && t >= o.at_ms
            && t < o.at_ms + o.ms
        {
            slow *= o.slow;
            err = 1.0 - (1.0 - err) * (1.0 - o.errors);
        }
        if inst.episode_until > t
            && let Some(b) = s.bursts
        {
            err = (err + b.errors).min(1.0);
        }
        (err, slow)
    }

    /// Serves one tick ending at `t` with the canary at `weight`%; returns
    /// per-side (requests, errors, latency sum, count, dense latencies).
    fn tick(&mut self, t: u64, weight: u32) -> Sides {
        let s = self.s;
        let dt = s.tick_ms as f64 / 1000.0;
        let w = if s.no_canary_traffic {
            0.0
        } else {
            f64::from(weight) / 100.0
        };
        let rate = self.rate(t);
        let cluster = s.bursts.map_or(1.0, |b| b.cluster);
        let mut out: Sides = Default::default();
        out[0].4 = vec![0; BUCKETS];
        out[1].4 = vec![0; BUCKETS];
        for i in 0..self.insts.len() {
            let canary = self.insts[i].canary;
            let share = if canary {
                w / f64::from(s.canary_instances)
            } else {
                (1.0 - w) / f64::from(s.baseline_instances)
            };
            if let Some(b) = s.bursts
                && self.insts[i].episode_until <= t
                && self.rng.f64() < b.per_min / 60.0 * dt
            {
                self.insts[i].episode_until = t + 2_000 + (self.rng.f64() * 3_000.0) as u64;
            }
            let n = self.rng.poisson(rate * dt * share);
            if n > 0 && self.insts[i].first_ms.is_none() {
                self.insts[i].first_ms = Some(t);
            }
            let (err, slow) = self.behaviour(i, t);
            let before = (
                self.insts[i].requests,
                self.insts[i].errors,
                self.insts[i].sum_us,
                self.insts[i].dense.clone(),
            );
            let inst = &mut self.insts[i];
            serve(&mut self.rng, &mut self.buckets, inst, n, err, slow, cluster);
            let o = &mut out[usize::from(!canary)];
            o.0 += inst.requests - before.0;
            o.1 += inst.errors - before.1;
            o.2 += inst.sum_us - before.2;
            o.3 += inst.requests - before.0;
            for (j, c) in inst.dense.iter().enumerate() {
                o.4[j] += c - before.3[j];
            }
        }
        out
    }

    fn snapshot(&self) -> MetricsSnapshot {
        let mut releases: Vec<ReleaseMetrics> = Vec::new();
        for rel in ["canary", "baseline"] {
            let instances: Vec<InstanceMetrics> = self
                .insts
                .iter()
                .filter(|i| i.release == rel)
                .map(|i| InstanceMetrics {
                    instance: i.id.clone(),
                    addr: String::new(),
                    healthy: true,
                    counters: i.counters(),
                })
                .collect();
            releases.push(ReleaseMetrics {
                release: rel.into(),
                totals: Counters::default(),
                instances,
            });
        }
        MetricsSnapshot {
            router_id: "sim".into(),
            generation: 1,
            uptime_ms: 0,
            releases,
            unrouted: Counters::default(),
        }
    }

    fn members(&self) -> Members {
        let m = |canary: bool| {
            self.insts
                .iter()
                .filter(|i| i.canary == canary)
                .map(|i| Member {
                    release: i.release.into(),
                    instance: i.id.clone(),
                    // Canary instances started 2 s before the deploy's first step.
                    started_at_ms: if canary { START_MS - 2_000 } else { 0 },
                    ready: true,
                })
                .collect()
        };
        Members {
            canary: m(true),
            baseline: m(false),
        }
    }
}

/// The deploy's first step begins at this time on the simulated clock (ms),
/// long after the baseline started.
const START_MS: u64 = 3_600_000;

impl<'a> World<'a> {
    fn new(s: &'a Scenario, seed: u64) -> World<'a> {
        let mut insts = Vec::new();
        for (rel, n, canary) in [
            ("canary", s.canary_instances, true),
            ("baseline", s.baseline_instances, false),
        ] {
            for k in 0..n {
                insts.push(Inst {
                    release: rel,
                    id: format!("{rel}-{k}"),
                    canary,
                    requests: 0,
                    errors: 0,
                    dense: vec![0; BUCKETS],
                    sum_us: 0,
                    first_ms: None,
                    episode_until: 0,
                });
            }
        }
        World {
            s,
            rng: Rng::new(seed),
            buckets: Buckets {
                base: s.latency,
                cache: Vec::new(),
            },
            insts,
        }
    }
}

/// The reference judges and how they ended, if they did.
struct References {
    flagger: Flagger,
    kayenta: Kayenta,
    flagger_end: Option<End>,
    kayenta_end: Option<End>,
}

type Sides = [(u64, u64, u64, u64, Vec<u64>); 2];

impl References {
    fn new(s: &Scenario) -> References {
        References {
            flagger: Flagger {
                requests: 0,
                errors: 0,
                hist: vec![0; BUCKETS],
                failed_checks: 0,
                p99_limit_us: 1.5 * s.latency.quantile_us(0.99),
                last_check: 0,
            },
            kayenta: Kayenta::default(),
            flagger_end: None,
            kayenta_end: None,
        }
    }

    fn observe(&mut self, t: u64, sides: &Sides) {
        let [c, b] = sides;
        if self.flagger_end.is_none() && self.flagger.observe(t, c.0, c.1, &c.4) {
            self.flagger_end = Some(End::Failed(t, "5 failed checks".into()));
        }
        self.kayenta.observe(t, [(b.0, b.1, b.2, b.3), (c.0, c.1, c.2, c.3)]);
    }

    /// Kayenta judges at the end of each nominal hold.
    fn end_step(&mut self, t: u64) {
        if self.kayenta_end.is_none() && self.kayenta.fails() {
            self.kayenta_end = Some(End::Failed(t, "Mann-Whitney High".into()));
        }
        self.kayenta.next_step();
    }
}

/// One step as rollout runs it: its hold (extended while inconclusive).
struct StepRun {
    start: u64,
    hold: u64,
    hold_end: u64,
    extensions: u32,
}

/// What slipway's judge and the plan make of one tick: the step goes on, is
/// done (passed, or inconclusive with `continue`), or the deploy ended.
enum Next {
    Wait,
    Done,
    End(End),
}

fn judge_tick(s: &Scenario, tracker: &mut Tracker, world: &World, members: &Members, t: u64, st: &mut StepRun) -> Next {
    tracker.feed(&world.snapshot(), members, START_MS + t);
    let v = tracker.verdict(START_MS + t, Some(START_MS + st.start + st.hold));
    match v.outcome {
        Outcome::Fail if v.alarm.is_some() => Next::End(End::Aborted(t, v.reason)),
        Outcome::Fail => Next::End(End::Failed(t, v.reason)),
        _ if t < st.hold_end => Next::Wait,
        Outcome::Pass => Next::Done,
        _ if st.extensions < s.max_extensions => {
            st.extensions += 1;
            st.hold_end += s.extension_ms;
            Next::Wait
        }
        _ if s.continue_when_inconclusive => Next::Done,
        _ => Next::End(End::Aborted(t, v.reason)),
    }
}

/// Runs one deploy of `s` with `seed`; every judge sees the same traffic.
pub fn run(s: &Scenario, seed: u64) -> Result {
    let mut world = World::new(s, seed);
    let members = world.members();
    let mut refs = References::new(s);
    let mut ours = None;
    let mut t = 0u64;
    let steps = s.steps.len() as u32;
    let mut previous: Option<Tracker> = None;
    for &(weight, hold) in &s.steps {
        let mut tracker = match previous.take() {
            Some(old) => old.next_step(&s.judge, steps, START_MS + t),
            None => {
                let mut first = Tracker::new(&s.judge, steps, START_MS + t);
                first.feed(&world.snapshot(), &members, START_MS + t);
                first
            }
        };
        let mut st = StepRun {
            start: t,
            hold,
            hold_end: t + hold,
            extensions: 0,
        };
        loop {
            t += s.tick_ms;
            let sides = world.tick(t, weight);
            refs.observe(t, &sides);
            if ours.is_none() {
                match judge_tick(s, &mut tracker, &world, &members, t, &mut st) {
                    Next::Wait => {}
                    Next::Done => break,
                    Next::End(e) => ours = Some(e),
                }
            }
            // The reference judges follow the nominal holds.
            if ours.is_some() && t >= st.start + hold {
                break;
            }
        }
        refs.end_step(t);
        if ours.is_some() && refs.flagger_end.is_some() && refs.kayenta_end.is_some() {
            break;
        }
        previous = Some(tracker);
    }
    let nominal = s.nominal_ms();
    Result {
        slipway: ours.unwrap_or(End::Promoted(t)),
        flagger: refs.flagger_end.unwrap_or(End::Promoted(nominal)),
        kayenta: refs.kayenta_end.unwrap_or(End::Promoted(nominal)),
    }
}
