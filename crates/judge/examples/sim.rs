//! bench/judge: seeded simulation of canary deploys, judged by slipway's judge (through its real windowing)
//! and by Flagger-style and Kayenta-style reference judges on the same traffic.
//!
//! Usage: cargo run --release -p judge --features sim --example sim -- [--deploys N] [--threads T]
//! [--only FAMILY] [--seed N] [--out FILE]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use judge::sim::{Bursts, End, Latency, Outage, Regression, Scenario, Warmup, run};

/// One cell of the grid: a family, a case, whether the release is healthy,
/// and when its regression starts (to time the failure from).
struct Cell {
    family: &'static str,
    case: String,
    good: bool,
    onset_ms: u64,
    s: Scenario,
}

fn cell(family: &'static str, case: impl Into<String>, good: bool, s: Scenario) -> Cell {
    let onset_ms = s.regression.map_or(0, |r| r.onset_ms);
    Cell {
        family,
        case: case.into(),
        good,
        onset_ms,
        s,
    }
}

fn bad(s: Scenario, errors: f64, slow: f64) -> Scenario {
    Scenario {
        canary_errors: errors,
        canary_slow: slow,
        ..s
    }
}

fn onset(s: Scenario, at_s: u64, errors: f64, slow: f64) -> Scenario {
    Scenario {
        regression: Some(Regression {
            onset_ms: at_s * 1000,
            errors,
            slow,
        }),
        ..s
    }
}

fn grid() -> Vec<Cell> {
    let mut out = Vec::new();
    plan_cells(&mut out);
    warmup_and_outage_cells(&mut out);
    onset_cells(&mut out);
    burst_cells(&mut out);
    traffic_cells(&mut out);
    out
}

/// Cells for the default plan end to end, healthy and bad.
fn plan_cells(out: &mut Vec<Cell>) {
    let d = Scenario::default_plan;
    for rps in [20.0, 200.0, 2000.0] {
        out.push(cell("default plan", format!("identical, {rps} rps"), true, d(rps)));
        out.push(cell(
            "default plan",
            format!("20% errors, {rps} rps"),
            false,
            bad(d(rps), 0.2, 1.0),
        ));
        out.push(cell(
            "default plan",
            format!("2% errors, {rps} rps"),
            false,
            bad(d(rps), 0.02, 1.0),
        ));
        out.push(cell(
            "default plan",
            format!("+50% latency, {rps} rps"),
            false,
            bad(d(rps), 0.005, 1.5),
        ));
    }
    out.push(cell(
        "default plan",
        "+5% latency, 200 rps",
        true,
        bad(d(200.0), 0.005, 1.05),
    ));
}

/// Cells for warm-up shapes and outages shared by both releases.
fn warmup_and_outage_cells(out: &mut Vec<Cell>) {
    let d = Scenario::default_plan;
    let warm = |w| Scenario { warmup: w, ..d(200.0) };
    out.push(cell(
        "warm-up",
        "latency x4 for 20 s",
        true,
        warm(Warmup::Slow {
            factor: 4.0,
            ms: 20_000,
        }),
    ));
    out.push(cell(
        "warm-up",
        "latency x1.5 for 10 s",
        true,
        warm(Warmup::Slow {
            factor: 1.5,
            ms: 10_000,
        }),
    ));
    out.push(cell(
        "warm-up",
        "latency x2 decaying (tau 10 s)",
        true,
        warm(Warmup::Decay {
            factor: 2.0,
            tau_ms: 10_000,
        }),
    ));
    out.push(cell(
        "warm-up",
        "3% errors for 10 s",
        true,
        warm(Warmup::Errors { rate: 0.03, ms: 10_000 }),
    ));
    out.push(cell(
        "warm-up",
        "latency x4 for 20 s, 20 rps",
        true,
        Scenario {
            warmup: Warmup::Slow {
                factor: 4.0,
                ms: 20_000,
            },
            ..d(20.0)
        },
    ));
    for w in [10, 50] {
        let o = Outage {
            at_ms: 40_000,
            ms: 30_000,
            slow: 3.0,
            errors: 0.05,
        };
        out.push(cell(
            "shared outage",
            format!("x3 latency + 5% errors for 30 s, {w}% canary"),
            true,
            Scenario {
                outage: Some(o),
                ..Scenario::one_step(200.0, w, 120_000)
            },
        ));
    }
    out.push(cell(
        "shared outage",
        "during the default plan, 200 rps",
        true,
        Scenario {
            outage: Some(Outage {
                at_ms: 100_000,
                ms: 30_000,
                slow: 3.0,
                errors: 0.05,
            }),
            ..d(200.0)
        },
    ));
}

/// Cells for regressions that start at 0, 30 or 60 s.
fn onset_cells(out: &mut Vec<Cell>) {
    let d = Scenario::default_plan;
    for rps in [200.0, 2000.0] {
        for at in [0, 30, 60] {
            let one = Scenario::one_step(rps, 10, 120_000);
            out.push(cell(
                "onset",
                format!("2% errors at {at} s of a 120 s hold, 10%, {rps} rps"),
                false,
                onset(one.clone(), at, 0.02, 1.0),
            ));
            out.push(cell(
                "onset",
                format!("+50% latency at {at} s of a 120 s hold, 10%, {rps} rps"),
                false,
                onset(one, at, 0.005, 1.5),
            ));
        }
    }
    for at in [0, 30, 60] {
        out.push(cell(
            "onset",
            format!("2% errors at {at} s, default plan, 200 rps"),
            false,
            onset(d(200.0), at, 0.02, 1.0),
        ));
    }
}

/// Cells for bursty errors, and canaries at the tolerance limit.
fn burst_cells(out: &mut Vec<Cell>) {
    let d = Scenario::default_plan;
    let bursty = Bursts {
        per_min: 1.0,
        errors: 0.05,
        cluster: 4.0,
    };
    let clustered = Bursts {
        per_min: 0.0,
        errors: 0.0,
        cluster: 4.0,
    };
    let episodes = Bursts {
        per_min: 1.0,
        errors: 0.05,
        cluster: 1.0,
    };
    for rps in [200.0, 2000.0] {
        out.push(cell(
            "bursts",
            format!("identical, bursty errors, {rps} rps"),
            true,
            Scenario {
                bursts: Some(bursty),
                ..d(rps)
            },
        ));
        out.push(cell(
            "bursts",
            format!("identical, clustered errors, {rps} rps"),
            true,
            Scenario {
                bursts: Some(clustered),
                ..d(rps)
            },
        ));
        out.push(cell(
            "bursts",
            format!("identical, episodes, {rps} rps"),
            true,
            Scenario {
                bursts: Some(episodes),
                ..d(rps)
            },
        ));
    }
    out.push(cell(
        "tolerance limit",
        "errors 1.25x, 2000 rps",
        true,
        bad(d(2000.0), 0.00625, 1.0),
    ));
    out.push(cell(
        "tolerance limit",
        "errors 1.25x, bursty, 2000 rps",
        true,
        Scenario {
            bursts: Some(bursty),
            ..bad(d(2000.0), 0.00625, 1.0)
        },
    ));
    out.push(cell(
        "tolerance limit",
        "latency x1.15, 2000 rps",
        true,
        bad(d(2000.0), 0.005, 1.15),
    ));
}

/// Cells for heavy tails, low and zero canary traffic, a traffic drop.
fn traffic_cells(out: &mut Vec<Cell>) {
    let d = Scenario::default_plan;
    let pareto = |s: Scenario| Scenario {
        latency: Latency::Pareto {
            min_us: 10_000.0,
            shape: 1.5,
        },
        ..s
    };
    out.push(cell("pareto", "identical, 1000 rps", true, pareto(d(1000.0))));
    out.push(cell(
        "pareto",
        "+50% latency, 1000 rps",
        false,
        pareto(bad(d(1000.0), 0.005, 1.5)),
    ));
    for rps in [5.0, 2.0] {
        out.push(cell("low traffic", format!("identical, {rps} rps"), true, d(rps)));
    }
    for rps in [20.0, 200.0] {
        out.push(cell(
            "zero canary traffic",
            format!("{rps} rps"),
            false,
            Scenario {
                no_canary_traffic: true,
                ..d(rps)
            },
        ));
        out.push(cell(
            "zero canary traffic",
            format!("{rps} rps, on_inconclusive = continue"),
            false,
            Scenario {
                no_canary_traffic: true,
                continue_when_inconclusive: true,
                ..d(rps)
            },
        ));
    }
    let drop = |s: Scenario| Scenario {
        drop: Some((90_000, 20.0)),
        ..s
    };
    out.push(cell(
        "traffic drop",
        "identical, 200 -> 20 rps at 90 s",
        true,
        drop(d(200.0)),
    ));
    out.push(cell(
        "traffic drop",
        "2% errors, 200 -> 20 rps at 90 s",
        false,
        drop(bad(d(200.0), 0.02, 1.0)),
    ));
}

#[derive(Default)]
struct Tally {
    promoted: u32,
    promote_ms: Vec<u64>,
    failed: u32,
    fail_ms: Vec<u64>,
    aborted: u32,
}

impl Tally {
    fn add(&mut self, e: &End, onset_ms: u64) {
        match e {
            End::Promoted(t) => {
                self.promoted += 1;
                self.promote_ms.push(*t);
            }
            End::Failed(t, _) => {
                self.failed += 1;
                self.fail_ms.push(t.saturating_sub(onset_ms));
            }
            End::Aborted(..) => self.aborted += 1,
        }
    }
}

fn pct(v: &mut [u64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0)
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.1}"))
}

fn json_num(v: Option<f64>) -> String {
    v.map_or("null".into(), |s| format!("{s}"))
}

struct Row {
    ours: Tally,
    flagger: Tally,
    kayenta: Tally,
    first_reason: Option<String>,
}

fn run_cell(c: &Cell, deploys: u32, seed: u64) -> Row {
    let mut row = Row {
        ours: Tally::default(),
        flagger: Tally::default(),
        kayenta: Tally::default(),
        first_reason: None,
    };
    for k in 0..deploys {
        let r = run(&c.s, seed * 1_000_003 + u64::from(k));
        if row.first_reason.is_none()
            && let End::Failed(_, why) | End::Aborted(_, why) = &r.slipway
            && c.good
        {
            row.first_reason = Some(why.clone());
        }
        row.ours.add(&r.slipway, c.onset_ms);
        row.flagger.add(&r.flagger, c.onset_ms);
        row.kayenta.add(&r.kayenta, c.onset_ms);
    }
    row
}

struct Args {
    deploys: u32,
    threads: usize,
    out: String,
    only: Option<String>,
    seed: u64,
}

fn args() -> Option<Args> {
    let mut a = Args {
        deploys: 1000,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        out: String::from("bench/out/judge.json"),
        only: None,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--deploys" => a.deploys = val().parse().expect("--deploys N"),
            "--threads" => a.threads = val().parse().expect("--threads T"),
            "--only" => a.only = Some(val()),
            "--seed" => a.seed = val().parse().expect("--seed N"),
            "--out" => a.out = val(),
            "--help" | "-h" => {
                println!("sim [--deploys N (1000)] [--threads T] [--only FAMILY] [--seed N (1)] [--out FILE]");
                return None;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    Some(a)
}

/// Runs every cell on `a.threads` threads; rows in the cells' order.
fn run_all(cells: Arc<Vec<Cell>>, a: &Args, started: std::time::Instant) -> Vec<Row> {
    let next = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<Option<Row>>>> = Arc::new(Mutex::new((0..cells.len()).map(|_| None).collect()));
    let (deploys, seed) = (a.deploys, a.seed);
    let workers: Vec<_> = (0..a.threads)
        .map(|_| {
            let (next, results, cells) = (next.clone(), results.clone(), cells.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = cells.get(i) else { return };
                    let row = run_cell(c, deploys, seed * 1_000 + i as u64);
                    eprintln!(
                        "[{:>5.0}s] {}/{}: {} / {}",
                        started.elapsed().as_secs_f64(),
                        i + 1,
                        cells.len(),
                        c.family,
                        c.case
                    );
                    results.lock().unwrap()[i] = Some(row);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let rows = std::mem::take(&mut *results.lock().unwrap());
    rows.into_iter().map(Option::unwrap).collect()
}

/// Prints one row of the markdown table and returns it as JSON.
fn report(c: &Cell, r: &Row, deploys: u32) -> String {
    let n = f64::from(deploys);
    let share = |x: u32| 100.0 * f64::from(x) / n;
    let (mut of, mut op, mut ff) = (
        r.ours.fail_ms.clone(),
        r.ours.promote_ms.clone(),
        r.flagger.fail_ms.clone(),
    );
    let (f50, f95, p50, fl50) = (
        pct(&mut of, 0.5),
        pct(&mut of, 0.95),
        pct(&mut op, 0.5),
        pct(&mut ff, 0.5),
    );
    println!(
        "| {} | {} | {} | {:.1}% ({}) | {:.1}% | {} / {} | {:.1}% | {:.1}% / {:.1}% ({}) | {:.1}% / {:.1}% |",
        c.family,
        c.case,
        if c.good { "yes" } else { "no" },
        share(r.ours.promoted),
        secs(p50),
        share(r.ours.failed),
        secs(f50),
        secs(f95),
        share(r.ours.aborted),
        share(r.flagger.promoted),
        share(r.flagger.failed),
        secs(fl50),
        share(r.kayenta.promoted),
        share(r.kayenta.failed),
    );
    if let Some(why) = &r.first_reason {
        eprintln!("  first healthy failure in {}: {why}", c.case);
    }
    format!(
        "{{\"family\":\"{}\",\"case\":\"{}\",\"good\":{},\"slipway\":{{\"promoted\":{},\"promote_median_s\":{},\
         \"failed\":{},\"fail_median_s\":{},\"fail_p95_s\":{},\"aborted\":{}}},\"flagger\":{{\"promoted\":{},\
         \"failed\":{},\"fail_median_s\":{}}},\"kayenta\":{{\"promoted\":{},\"failed\":{}}}}}",
        c.family,
        c.case,
        c.good,
        f64::from(r.ours.promoted) / n,
        json_num(p50),
        f64::from(r.ours.failed) / n,
        json_num(f50),
        json_num(f95),
        f64::from(r.ours.aborted) / n,
        f64::from(r.flagger.promoted) / n,
        f64::from(r.flagger.failed) / n,
        json_num(fl50),
        f64::from(r.kayenta.promoted) / n,
        f64::from(r.kayenta.failed) / n,
    )
}

fn main() {
    let Some(a) = args() else { return };
    let cells: Vec<Cell> = grid()
        .into_iter()
        .filter(|c| {
            a.only
                .as_deref()
                .is_none_or(|f| c.family.contains(f) || c.case.contains(f))
        })
        .collect();
    let cells = Arc::new(cells);
    let started = std::time::Instant::now();
    let rows = run_all(cells.clone(), &a, started);
    println!(
        "{} deploys per case; times in s (to fail: from the regression's onset).\n",
        a.deploys
    );
    println!(
        "| family | case | healthy? | slipway promoted (median s) | failed | median / p95 s to fail | aborted | \
         Flagger-style promoted / failed (median s) | Kayenta-style promoted / failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let json: Vec<String> = cells.iter().zip(&rows).map(|(c, r)| report(c, r, a.deploys)).collect();
    if let Some(dir) = std::path::Path::new(&a.out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = format!("{{\"deploys\":{},\"cells\":[\n{}\n]}}\n", a.deploys, json.join(",\n"));
    std::fs::write(&a.out, text).expect("write results");
    eprintln!("wrote {} in {:.0}s", a.out, started.elapsed().as_secs_f64());
}
