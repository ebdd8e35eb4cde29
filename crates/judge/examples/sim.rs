//! bench/judge: seeded simulation of canary deploys judged by slipway's judge and by Flagger-style and Kayenta-style reference judges (implemented here only).
//!
//! Usage: cargo run --release -p judge --example sim -- [--deploys N] [--seconds S] [--threads T] [--out FILE]
//!
//! Traffic models: total 50, 200, 2000 requests/s (Poisson per second);
//! canary weight 1%, 10%, 50%; baseline errors 0.5%; canary errors 0.5, 0.6,
//! 1, 2, 20%; canary latency ×1, 1.05, 1.2, 1.5, 2 of a log-normal with
//! median 50 ms and σ = 0.5 (in the router's histogram buckets). Each deploy
//! lasts `seconds` (600) with one window per second.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use judge::{Judge, Observation, Window};
use wire::judge::{JudgeConfig, Outcome};
use wire::metrics::{BUCKETS, Histogram, bucket_index, bucket_lower_us, bucket_upper_us};

const RPS: [f64; 3] = [50.0, 200.0, 2000.0];
const WEIGHTS: [f64; 3] = [0.01, 0.10, 0.50];
const ERRORS: [f64; 5] = [0.005, 0.006, 0.01, 0.02, 0.20];
const SLOW: [f64; 5] = [1.0, 1.05, 1.2, 1.5, 2.0];
const BASE_ERR: f64 = 0.005;
const MEDIAN_US: f64 = 50_000.0;
const SIGMA: f64 = 0.5;

struct Rng(fastrand::Rng);

impl Rng {
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.0.f64().max(1e-300), self.0.f64());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn poisson(&mut self, mean: f64) -> u64 {
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

    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        let mean = n as f64 * p;
        if n < 40 {
            return (0..n).filter(|_| self.0.f64() < p).count() as u64;
        }
        if mean < 25.0 || n as f64 * (1.0 - p) < 25.0 {
            // Inversion with the pmf recursion.
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

fn phi(x: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 via erf.
    let t = 1.0 / (1.0 + 0.3275911 * x.abs() / std::f64::consts::SQRT_2);
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
            * t
            * (-(x * x) / 2.0).exp();
    if x >= 0.0 { 0.5 * (1.0 + y) } else { 0.5 * (1.0 - y) }
}

/// Bucket probabilities of the latency model slowed by `m`.
fn bucket_probs(m: f64) -> Vec<(usize, f64)> {
    let mu = (MEDIAN_US * m).ln();
    let mut out = Vec::new();
    for i in 0..BUCKETS - 1 {
        let lo = bucket_lower_us(i).max(1) as f64;
        let hi = (bucket_upper_us(i) + 1) as f64;
        let p = phi((hi.ln() - mu) / SIGMA) - phi((lo.ln() - mu) / SIGMA);
        if p > 1e-10 {
            out.push((i, p));
        }
    }
    out
}

fn sample_hist(rng: &mut Rng, n: u64, probs: &[(usize, f64)], mult: f64) -> (Histogram, Vec<f64>) {
    let mut dense = vec![0u64; BUCKETS];
    let mut samples_for_mean = Vec::new();
    if n <= 64 {
        for _ in 0..n {
            let us = (MEDIAN_US * mult * (SIGMA * rng.normal()).exp()) as u64;
            dense[bucket_index(us)] += 1;
            samples_for_mean.push(us as f64);
        }
    } else {
        let mut left = n;
        let mut mass: f64 = probs.iter().map(|(_, p)| p).sum();
        for (i, p) in probs {
            if left == 0 {
                break;
            }
            let c = rng.binomial(left, (p / mass).min(1.0));
            dense[*i] += c;
            left -= c;
            mass -= p;
            if mass <= 0.0 {
                break;
            }
        }
    }
    let sum: u64 = dense
        .iter()
        .enumerate()
        .map(|(i, c)| c * ((bucket_lower_us(i) + bucket_upper_us(i).min(1 << 40)) / 2))
        .sum();
    (Histogram::from_dense(&dense, sum), samples_for_mean)
}

/// Flagger-style: every 60 s, the last minute's canary error rate must be
/// ≤ 1% and its p99 ≤ 250 ms (about 1.5x this service's healthy p99); a
/// check without canary data fails too; the canary is rolled back after 5
/// failed checks (counted over the whole run).
struct Flagger {
    requests: u64,
    errors: u64,
    hist: Vec<u64>,
    failed_checks: u32,
    failed_at: Option<u64>,
}

impl Flagger {
    fn new() -> Flagger {
        Flagger {
            requests: 0,
            errors: 0,
            hist: vec![0; BUCKETS],
            failed_checks: 0,
            failed_at: None,
        }
    }

    fn observe(&mut self, t: u64, c: &Window) {
        self.requests += c.requests;
        self.errors += c.errors;
        for b in &c.latency.buckets {
            self.hist[bucket_index(b.le_us)] += b.count;
        }
        if !t.is_multiple_of(60) || self.failed_at.is_some() {
            return;
        }
        let ok = if self.requests == 0 {
            false
        } else {
            let rate = self.errors as f64 / self.requests as f64;
            let total: u64 = self.hist.iter().sum();
            let rank = ((0.99 * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            let mut p99_ms = 0.0;
            for (i, c) in self.hist.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    p99_ms = bucket_upper_us(i) as f64 / 1000.0;
                    break;
                }
            }
            rate <= 0.01 && (total == 0 || p99_ms <= 250.0)
        };
        if !ok {
            self.failed_checks += 1;
            if self.failed_checks >= 5 {
                self.failed_at = Some(t);
            }
        }
        self.requests = 0;
        self.errors = 0;
        self.hist.iter_mut().for_each(|c| *c = 0);
    }
}

/// Kayenta-style: at the end of the step, per-10-second series of error rate
/// and mean latency are compared with Mann-Whitney (98% confidence interval
/// of the Hodges-Lehmann shift, ±25% tolerance around it); a metric is High
/// when the lower bound exceeds the tolerance; any High fails.
struct Kayenta {
    cur: [(u64, u64, f64, u64); 2],
    series: [[Vec<f64>; 2]; 2],
}

impl Kayenta {
    fn new() -> Kayenta {
        Kayenta {
            cur: [(0, 0, 0.0, 0); 2],
            series: Default::default(),
        }
    }

    fn observe(&mut self, t: u64, b: &Window, c: &Window) {
        for (k, w) in [b, c].iter().enumerate() {
            let cur = &mut self.cur[k];
            cur.0 += w.requests;
            cur.1 += w.errors;
            cur.2 += w.latency.sum_us as f64;
            cur.3 += w.latency.count;
        }
        if t.is_multiple_of(10) {
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
}

/// Kayenta's classification of one metric: High iff the 98% CI's lower end
/// of the HL shift (canary − baseline) is above 0.25·|HL| and the canary's
/// mean is not below the baseline's.
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
    let z = 2.326; // 98% two-sided
    let k = ((m * n / 2.0) - z * (m * n * (m + n + 1.0) / 12.0).sqrt())
        .floor()
        .max(1.0) as usize;
    let lower = diffs[(k - 1).min(nn - 1)];
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ratio = mean(canary) / mean(base);
    lower > 0.25 * hl.abs() && (ratio.is_nan() || ratio >= 1.0)
}

#[derive(Clone, Default)]
struct Tally {
    failed: u32,
    fail_times: Vec<u64>,
    passed: u32,
    pass_times: Vec<u64>,
    inconclusive_end: u32,
}

fn pct(v: &mut [u64], q: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1])
}

struct Cell {
    rps: f64,
    weight: f64,
    err: f64,
    slow: f64,
    ours: Tally,
    flagger: Tally,
    kayenta: Tally,
}

fn run_cell(rps: f64, weight: f64, err: f64, slow: f64, deploys: u32, seconds: u64, seed: u64) -> Cell {
    let mut rng = Rng(fastrand::Rng::with_seed(seed));
    let base_probs = bucket_probs(1.0);
    let canary_probs = bucket_probs(slow);
    let config = JudgeConfig::default();
    let (mut ours, mut flagger, mut kayenta) = (Tally::default(), Tally::default(), Tally::default());
    for _ in 0..deploys {
        let mut j = Judge::new(&config);
        let mut f = Flagger::new();
        let mut k = Kayenta::new();
        let (mut failed_at, mut passed_at) = (None, None);
        for t in 1..=seconds {
            let n_b = rng.poisson(rps * (1.0 - weight));
            let n_c = rng.poisson(rps * weight);
            let (hb, _) = sample_hist(&mut rng, n_b, &base_probs, 1.0);
            let (hc, _) = sample_hist(&mut rng, n_c, &canary_probs, slow);
            let b = Window {
                requests: n_b,
                errors: rng.binomial(n_b, BASE_ERR),
                latency: hb,
            };
            let c = Window {
                requests: n_c,
                errors: rng.binomial(n_c, err),
                latency: hc,
            };
            let obs = Observation {
                at_ms: t * 1000,
                baseline: b,
                canary: c,
            };
            if failed_at.is_none() {
                j.observe(&obs);
                match j.verdict().outcome {
                    Outcome::Fail => failed_at = Some(t),
                    Outcome::Pass if passed_at.is_none() => passed_at = Some(t),
                    _ => {}
                }
            }
            f.observe(t, &obs.canary);
            k.observe(t, &obs.baseline, &obs.canary);
        }
        match failed_at {
            Some(t) => {
                ours.failed += 1;
                ours.fail_times.push(t);
            }
            None => {
                if let Some(t) = passed_at {
                    ours.passed += 1;
                    ours.pass_times.push(t);
                }
                if j.verdict().outcome == Outcome::Inconclusive {
                    ours.inconclusive_end += 1;
                }
            }
        }
        if let Some(t) = f.failed_at {
            flagger.failed += 1;
            flagger.fail_times.push(t);
        }
        if k.fails() {
            kayenta.failed += 1;
            kayenta.fail_times.push(seconds);
        }
    }
    Cell {
        rps,
        weight,
        err,
        slow,
        ours,
        flagger,
        kayenta,
    }
}

fn main() {
    let mut deploys = 1000u32;
    let mut seconds = 600u64;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = String::from("bench/out/judge.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--deploys" => deploys = val().parse().expect("--deploys N"),
            "--seconds" => seconds = val().parse().expect("--seconds S"),
            "--threads" => threads = val().parse().expect("--threads T"),
            "--out" => out = val(),
            "--help" | "-h" => {
                println!("sim [--deploys N (1000)] [--seconds S (600)] [--threads T] [--out FILE]");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let mut cells = Vec::new();
    for &rps in &RPS {
        for &w in &WEIGHTS {
            for &e in &ERRORS {
                for &s in &SLOW {
                    cells.push((rps, w, e, s));
                }
            }
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<Option<Cell>>>> = Arc::new(Mutex::new((0..cells.len()).map(|_| None).collect()));
    let started = std::time::Instant::now();
    let cells = Arc::new(cells);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (next, results, cells) = (next.clone(), results.clone(), cells.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(rps, w, e, s)) = cells.get(i) else { return };
                    let cell = run_cell(rps, w, e, s, deploys, seconds, 1_000 + i as u64);
                    eprintln!(
                        "[{:>4.0}s] cell {}/{}: {rps} rps, {:.0}% canary, errors {:.1}%, latency x{s}",
                        started.elapsed().as_secs_f64(),
                        i + 1,
                        cells.len(),
                        w * 100.0,
                        e * 100.0
                    );
                    results.lock().unwrap()[i] = Some(cell);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let cells: Vec<Cell> = Arc::try_unwrap(results)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let n = deploys as f64;
    let mut json = Vec::new();
    println!(
        "| rps | canary | errors | latency | good? | slipway fail | slipway median/p95 s to fail | slipway pass (median s) | inconclusive at end | Flagger fail | Flagger median s | Kayenta fail (at {seconds} s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in &cells {
        let good = c.err <= 0.006 && c.slow <= 1.05;
        let mut of = c.ours.fail_times.clone();
        let mut op = c.ours.pass_times.clone();
        let mut ff = c.flagger.fail_times.clone();
        let fmt = |v: Option<u64>| v.map_or("-".to_string(), |x| x.to_string());
        let (om, o95, opm, fm) = (
            pct(&mut of, 0.5),
            pct(&mut of, 0.95),
            pct(&mut op, 0.5),
            pct(&mut ff, 0.5),
        );
        println!(
            "| {} | {:.0}% | {:.1}% | x{} | {} | {:.1}% | {}/{} | {:.1}% ({}) | {:.1}% | {:.1}% | {} | {:.1}% |",
            c.rps,
            c.weight * 100.0,
            c.err * 100.0,
            c.slow,
            if good { "yes" } else { "no" },
            100.0 * c.ours.failed as f64 / n,
            fmt(om),
            fmt(o95),
            100.0 * c.ours.passed as f64 / n,
            fmt(opm),
            100.0 * c.ours.inconclusive_end as f64 / n,
            100.0 * c.flagger.failed as f64 / n,
            fmt(fm),
            100.0 * c.kayenta.failed as f64 / n,
        );
        json.push(format!(
            "{{\"rps\":{},\"weight\":{},\"canary_error\":{},\"latency_factor\":{},\"good\":{},\"slipway\":{{\"fail_rate\":{},\"fail_median_s\":{},\"fail_p95_s\":{},\"pass_rate\":{},\"pass_median_s\":{},\"inconclusive_at_end\":{}}},\"flagger\":{{\"fail_rate\":{},\"fail_median_s\":{}}},\"kayenta\":{{\"fail_rate\":{}}}}}",
            c.rps, c.weight, c.err, c.slow, good,
            c.ours.failed as f64 / n, om.map_or("null".into(), |x| x.to_string()), o95.map_or("null".into(), |x| x.to_string()),
            c.ours.passed as f64 / n, opm.map_or("null".into(), |x| x.to_string()), c.ours.inconclusive_end as f64 / n,
            c.flagger.failed as f64 / n, fm.map_or("null".into(), |x| x.to_string()), c.kayenta.failed as f64 / n
        ));
    }
    if let Some(dir) = std::path::Path::new(&out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(
        &out,
        format!(
            "{{\"deploys\":{deploys},\"seconds\":{seconds},\"cells\":[\n{}\n]}}\n",
            json.join(",\n")
        ),
    )
    .expect("write results");
    eprintln!("wrote {out} in {:.0}s", started.elapsed().as_secs_f64());
}
