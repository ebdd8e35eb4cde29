//! bench/records: a stop-the-world rewrite vs the crawler on N player records, and read p99 during a crawl.
//!
//! The chain has six steps of two alternating shapes (odd: move hp/mana into
//! `stats`, mark every inventory item; even: move them back out, unmark,
//! compute `power`), so each phase rewrites every record with two steps of
//! the same cost: stop-the-world 1→3, crawler 3→5, crawler under read load 5→7.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use records::{AnyBackend, Backend, CrawlOptions, Expect, Format, KindSchema, Schema, Store, Write};
use serde_json::{Value, json};

const CLASSES: &[&str] = &["warrior", "mage", "rogue"];
const STATES: &[&str] = &["active", "done", "failed"];
const ITEMS: &[&str] = &[
    "sword", "shield", "potion", "bow", "arrow", "helmet", "boots", "ring", "amulet", "scroll",
];
const SKILLS: &[&str] = &[
    "mining",
    "smithing",
    "fishing",
    "cooking",
    "archery",
    "magic",
    "stealth",
    "trading",
    "herbalism",
    "riding",
    "swimming",
    "tailoring",
];

fn player(i: u64) -> Value {
    json!({
        "name": format!("player{i}"), "level": i % 60 + 1, "gold": i * 13 % 100_000, "hp": 100, "mana": 50,
        "class": CLASSES[(i % 3) as usize], "guild": format!("guild{}", i % 500),
        "inventory": (0..16u64).map(|j| json!({"id": j * 31 + i % 97, "name": ITEMS[((i + j) % 10) as usize],
            "qty": (i + j) % 20, "durability": (i * j) % 100})).collect::<Vec<_>>(),
        "skills": (0..12u64).map(|j| json!({"name": SKILLS[j as usize], "level": (i + j) % 10, "xp": (i * j) % 5000}))
            .collect::<Vec<_>>(),
        "quests": (0..10u64).map(|j| json!({"id": format!("q{}", (i + j * 7) % 300),
            "state": STATES[((i + j) % 3) as usize], "progress": (i * j) % 100}))
            .collect::<Vec<_>>(),
        "settings": {"sound": true, "music": 0.5, "language": "en", "chat": "friends"},
        "created_at": 1_600_000_000 + i,
    })
}

fn odd(v: &mut Value, n: u32) -> Result<(), String> {
    let o = v.as_object_mut().ok_or("not an object")?;
    let hp = o.remove("hp").unwrap_or(Value::Null);
    let mana = o.remove("mana").unwrap_or(Value::Null);
    o.insert("stats".into(), json!({"hp": hp, "mana": mana}));
    o.insert(format!("f{n}"), json!(n));
    for item in o
        .get_mut("inventory")
        .and_then(Value::as_array_mut)
        .ok_or("no inventory")?
    {
        item["bound"] = json!(false);
    }
    Ok(())
}

fn even(v: &mut Value) -> Result<(), String> {
    let o = v.as_object_mut().ok_or("not an object")?;
    let stats = o.remove("stats").ok_or("no stats")?;
    o.insert("hp".into(), stats["hp"].clone());
    o.insert("mana".into(), stats["mana"].clone());
    let power = o.get("level").and_then(Value::as_i64).unwrap_or(0) * 2;
    o.insert("power".into(), json!(power));
    for item in o
        .get_mut("inventory")
        .and_then(Value::as_array_mut)
        .ok_or("no inventory")?
    {
        item.as_object_mut().ok_or("bad item")?.remove("bound");
    }
    Ok(())
}

fn schema() -> Schema {
    let mut k = KindSchema::new("player", 1);
    for v in 1..7u32 {
        k = if v % 2 == 1 {
            k.up(v, move |x| odd(x, v))
        } else {
            k.up(v, even)
        };
    }
    Schema::new().with(k).unwrap()
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1e6
}

/// Reads random players at `rate`/s over `threads` threads until `stop`; returns latencies (µs) and errors.
fn readers(store: Arc<Store<AnyBackend>>, n: u64, rate: u64, stop: Arc<AtomicBool>) -> (Vec<u64>, u64) {
    let errors = Arc::new(AtomicU64::new(0));
    // For finding what slow reads coincide with: each read over 1 ms, with its wall-clock time, on stderr.
    let slow_log = std::env::var_os("RECORDS_BENCH_SLOW_LOG").is_some();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (store, stop, errors) = (store.clone(), stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                let every = Duration::from_secs_f64(2.0 / rate as f64);
                let mut next = Instant::now();
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    next += every;
                    let key = format!("p{:07}", rng.u64(0..n));
                    let t0 = Instant::now();
                    match store.read_value("player", &key, 7) {
                        Ok(Some(_)) => {
                            let took = t0.elapsed();
                            lat.push(took.as_nanos() as u64);
                            if slow_log && took > Duration::from_millis(1) {
                                let at = std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .unwrap();
                                eprintln!("SLOW {:.3} {}", at.as_secs_f64(), took.as_micros());
                            }
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort_unstable();
    (all, errors.load(Ordering::Relaxed))
}

fn measure_reads(store: &Arc<Store<AnyBackend>>, n: u64, rate: u64, during: impl FnOnce()) -> (Vec<u64>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let r = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || readers(store, n, rate, stop))
    };
    during();
    stop.store(true, Ordering::Relaxed);
    r.join().unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut db, mut n, mut read_secs, mut rate) = (String::new(), 1_000_000u64, 10u64, 1000u64);
    let (mut crawl_rate, mut batch_ms): (Option<f64>, u64) = (None, 50);
    let mut step_rows = CrawlOptions::default().step_rows;
    let mut crawl_to: Option<u32> = None;
    let mut tidy = true;
    while let Some(a) = args.next() {
        let mut val = || args.next().expect("a value after the flag");
        match a.as_str() {
            "--db" => db = val(),
            "--records" => n = val().parse().unwrap(),
            "--read-secs" => read_secs = val().parse().unwrap(),
            "--read-rate" => rate = val().parse().unwrap(),
            "--crawl-rate" => crawl_rate = Some(val().parse().unwrap()),
            "--batch-time" => batch_ms = val().parse().unwrap(),
            "--step-rows" => step_rows = val().parse().unwrap(),
            "--crawl-to" => crawl_to = Some(val().parse().unwrap()),
            "--no-vacuum" => tidy = false,
            _ => panic!(
                "usage: records_bench --db URL [--records N] [--read-secs S] [--read-rate R] [--crawl-rate R] \
                 [--batch-time MS] [--step-rows N] [--no-vacuum]"
            ),
        }
    }
    assert!(!db.is_empty(), "--db sqlite:PATH or postgres://...");
    let crawl_opts = CrawlOptions {
        batch_time: Duration::from_millis(batch_ms),
        rate: crawl_rate,
        step_rows,
        tidy,
        ..CrawlOptions::default()
    };
    if let Some(to) = crawl_to {
        // The crawler as its own process, as `slipway records crawl` runs beside the servers.
        let backend = records::open(&db).unwrap();
        let st = records::run_crawl(
            &Store::new(backend, schema(), "crawler"),
            "player",
            to,
            &crawl_opts,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        println!("{}", st.upgraded);
        return;
    }
    let backend = records::open(&db).unwrap();
    let sample = Format::Json.encode(&player(12345)).unwrap();
    println!("record size: {} bytes of JSON", sample.len());

    // Upgrade on read, in process: decode, then 0, 1 or 6 steps.
    let s = schema();
    let k = s.kind("player").unwrap();
    let mut at7 = player(1);
    k.convert(&mut at7, 1, 7).unwrap();
    let at7 = Format::Json.encode(&at7).unwrap();
    let cost = |payload: &[u8], from: u32| {
        let iters = 20_000;
        let t0 = Instant::now();
        for _ in 0..iters {
            let mut v = Format::Json.decode(payload).unwrap();
            k.convert(&mut v, from, 7).unwrap();
            std::hint::black_box(&v);
        }
        t0.elapsed().as_nanos() as f64 / iters as f64 / 1000.0
    };
    let mut at6 = player(1);
    k.convert(&mut at6, 1, 6).unwrap();
    let at6 = Format::Json.encode(&at6).unwrap();
    let (c0, c1, c6) = (cost(&at7, 7), cost(&at6, 6), cost(&sample, 1));
    println!(
        "upgrade on read: decode only {c0:.1} µs, decode + 1 step {c1:.1} µs, decode + 6 steps {c6:.1} µs; \
         {:.1} µs per step",
        (c6 - c0) / 6.0
    );

    // Load.
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let ws: Vec<Write> = (i..(i + 5000).min(n))
            .map(|i| Write {
                kind: "player".into(),
                key: format!("p{i:07}"),
                version: 1,
                min_reader: 1,
                format: Format::Json,
                payload: Format::Json.encode(&player(i)).unwrap(),
                writer: "seed".into(),
                expect: Expect::Absent,
                last_active: Some(1_000_000_000 + fastrand::i64(0..1_000_000)),
                reader: None,
            })
            .collect();
        backend.write_batch(&ws, None).unwrap();
        i += 5000;
    }
    println!("loaded {n} records in {:.1} s", t0.elapsed().as_secs_f64());
    // Every timed phase starts from the same steady state: the previous
    // phase's dead rows vacuumed, its checkpoint done and its dirty pages
    // written out by the OS, so no phase pays for the one before it.
    let settle = || {
        if db.starts_with("postgres") {
            let mut c = postgres::Client::connect(&db, postgres::NoTls).unwrap();
            c.batch_execute("VACUUM ANALYZE records").unwrap();
            c.batch_execute("CHECKPOINT").unwrap();
        } else if let Some(path) = db.strip_prefix("sqlite:") {
            let c = rusqlite::Connection::open(path).unwrap();
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        }
        let synced = std::process::Command::new("sync").status();
        assert!(synced.is_ok_and(|s| s.success()), "sync failed");
    };
    settle();

    let store = Arc::new(Store::new(records::open(&db).unwrap(), schema(), "bench"));
    // The readers' connections opened before measuring, not inside the idle window.
    measure_reads(&store, n, rate, || std::thread::sleep(Duration::from_secs(1)));
    let (idle, idle_err) = measure_reads(&store, n, rate, || std::thread::sleep(Duration::from_secs(read_secs)));
    println!(
        "reads idle: {} reads, p50 {:.2} ms, p99 {:.2} ms, {idle_err} errors",
        idle.len(),
        pct(&idle, 0.5),
        pct(&idle, 0.99)
    );

    settle();
    // Stop-the-world 1→3: every record read, upgraded and rewritten with the service down.
    let t0 = Instant::now();
    let mut after = 0;
    loop {
        let page = backend.page("player", after, 5000).unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        let ws: Vec<Write> = page
            .iter()
            .map(|r| {
                let mut v = r.format.decode(&r.payload).unwrap();
                k.convert(&mut v, r.version, 3).unwrap();
                Write {
                    kind: r.kind.clone(),
                    key: r.key.clone(),
                    version: 3,
                    min_reader: 3,
                    format: r.format,
                    payload: r.format.encode(&v).unwrap(),
                    writer: "stop-the-world".into(),
                    expect: Expect::Etag(r.etag),
                    last_active: None,
                    reader: None,
                }
            })
            .collect();
        backend.write_batch(&ws, None).unwrap();
    }
    let stw = t0.elapsed().as_secs_f64();
    println!(
        "stop-the-world 1→3: {stw:.1} s ({:.0} records/s), downtime {stw:.1} s",
        n as f64 / stw
    );

    settle();
    // The crawler alone 3→5.
    let stop = AtomicBool::new(false);
    let crawler = Store::new(records::open(&db).unwrap(), schema(), "crawler");
    let t0 = Instant::now();
    let st = records::run_crawl(&crawler, "player", 5, &crawl_opts, &stop, &mut |_| {}).unwrap();
    let alone = t0.elapsed().as_secs_f64();
    println!(
        "crawler 3→5 alone: {alone:.1} s ({:.0} records/s), {} upgraded, downtime 0; \
         crawler/stop-the-world time {:.2}",
        n as f64 / alone,
        st.upgraded,
        alone / stw
    );

    settle();
    // Idle again, right before the crawl: this machine's background noise
    // (other VMs, steal time) drifts over the minutes between the first
    // idle window and the crawl, so the baseline pools both windows.
    let (idle_b, idle_b_err) = measure_reads(&store, n, rate, || {
        std::thread::sleep(Duration::from_secs(2 * read_secs))
    });
    println!(
        "reads idle before the crawl: {} reads, p50 {:.2} ms, p99 {:.2} ms, {idle_b_err} errors",
        idle_b.len(),
        pct(&idle_b, 0.5),
        pct(&idle_b, 0.99)
    );
    let idle_a_p99 = pct(&idle, 0.99);
    let idle_b_p99 = pct(&idle_b, 0.99);
    let mut idle = idle;
    idle.extend(idle_b);
    idle.sort_unstable();
    let idle_err = idle_err + idle_b_err;
    // The crawler 5→7 while the service reads.
    let mut loaded = 0.0;
    let (busy, busy_err) = measure_reads(&store, n, rate, || {
        let t0 = Instant::now();
        let mut args = vec!["--db".to_string(), db.clone(), "--crawl-to".into(), "7".into()];
        args.extend(["--batch-time".into(), batch_ms.to_string()]);
        args.extend(["--step-rows".into(), step_rows.to_string()]);
        if let Some(r) = crawl_rate {
            args.extend(["--crawl-rate".into(), r.to_string()]);
        }
        if !tidy {
            args.push("--no-vacuum".into());
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        loaded = t0.elapsed().as_secs_f64();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), n.to_string());
    });
    println!(
        "crawler 5→7 under {rate} reads/s: {loaded:.1} s ({:.0} records/s); reads {} , p50 {:.2} ms, p99 {:.2} ms, \
         {busy_err} errors; p99 during/idle {:.2}",
        n as f64 / loaded,
        busy.len(),
        pct(&busy, 0.5),
        pct(&busy, 0.99),
        pct(&busy, 0.99) / pct(&idle, 0.99).max(1e-9)
    );
    println!(
        "RESULT stw_s={stw:.1} crawl_s={alone:.1} crawl_loaded_s={loaded:.1} idle_p99_ms={:.3} crawl_p99_ms={:.3} \
         errors={} step_us={:.1} decode_us={c0:.1} idle_first_p99_ms={idle_a_p99:.3} \
         idle_before_crawl_p99_ms={idle_b_p99:.3}",
        pct(&idle, 0.99),
        pct(&busy, 0.99),
        idle_err + busy_err,
        (c6 - c0) / 6.0
    );
}
