//! The crawler: coldest first, leases respected, pause and resume, a stopped crawl resumes where it was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use records::{Backend, CrawlOptions, CrawlStatus};

use crate::model::{Db, PlayerV1, PlayerV3, both};

fn fill(db: &Db, n: usize) {
    for i in 0..n {
        // Older players were active longer ago: p0000 is the coldest.
        let s = db.store("v1").with_clock(move || 1_000_000 + i as i64);
        s.create(
            &format!("p{i:04}"),
            PlayerV1 {
                name: format!("n{i}"),
                gold: i as i64,
                hp: 1,
            },
        )
        .unwrap();
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_crawler_goes_coldest_first_and_leaves_leased_records_to_their_server() {
    for db in both("crawl_leases") {
        fill(&db, 300);
        let store = db.store("crawler");
        store
            .lease("player", "p0007", "server-1", Duration::from_secs(60))
            .unwrap();
        let opts = CrawlOptions {
            first_batch: 50,
            min_batch: 50,
            max_batch: 50,
            ..CrawlOptions::default()
        };
        let mut cursors = Vec::new();
        let stop = AtomicBool::new(false);
        let state = records::run_crawl(&store, "player", 3, &opts, &stop, &mut |p| {
            cursors.push(p.state.cursor_key.clone());
        })
        .unwrap();
        assert_eq!(state.status, CrawlStatus::Done);
        assert_eq!(
            (state.total, state.scanned, state.upgraded, state.skipped_leased),
            (300, 300, 299, 1)
        );
        assert_eq!(&cursors[..3], &["p0049", "p0099", "p0149"], "coldest first, in batches");
        let p7 = store.backend().get("player", "p0007").unwrap().unwrap();
        assert_eq!(p7.version, 1, "a leased record is its server's");
        let p8 = store.backend().get("player", "p0008").unwrap().unwrap();
        assert_eq!(
            (p8.version, p8.last_active, p8.writer.as_str()),
            (3, 1_000_008, "crawler")
        );
        assert_eq!(store.get::<PlayerV3>("p0008").unwrap().unwrap().value.gold, 8);
    }
}

#[test]
fn a_paused_crawl_stops_between_batches_and_resumes() {
    for db in both("crawl_pause") {
        fill(&db, 400);
        let store = Arc::new(db.store("crawler"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let runner = {
            let (store, seen, stop) = (store.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let opts = CrawlOptions {
                    first_batch: 20,
                    max_batch: 20,
                    rate: Some(400.0),
                    pause_poll: Duration::from_millis(20),
                    ..CrawlOptions::default()
                };
                records::run_crawl(&*store, "player", 2, &opts, &stop, &mut |p| {
                    seen.lock().unwrap().push((p.state.status, p.state.scanned, p.eta));
                })
            })
        };
        wait_for("a few batches", || seen.lock().unwrap().len() >= 3);
        records::request_pause(store.backend(), "player", 2, true).unwrap();
        wait_for("the pause", || {
            store.backend().crawl("player", 2).unwrap().unwrap().status == CrawlStatus::Paused
        });
        let at_pause = store.backend().crawl("player", 2).unwrap().unwrap().scanned;
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            store.backend().crawl("player", 2).unwrap().unwrap().scanned,
            at_pause,
            "no batch while paused"
        );
        assert!(at_pause < 400);
        records::request_pause(store.backend(), "player", 2, false).unwrap();
        let state = runner.join().unwrap().unwrap();
        assert_eq!((state.status, state.upgraded), (CrawlStatus::Done, 400));
        let seen = seen.lock().unwrap();
        assert!(seen.iter().any(|(s, _, _)| *s == CrawlStatus::Paused));
        assert!(
            seen.iter().any(|(_, _, eta)| eta.is_some_and(|e| e > Duration::ZERO)),
            "an ETA while running"
        );
    }
}

#[test]
fn a_stopped_crawl_resumes_from_its_cursor_without_redoing_a_record() {
    for db in both("crawl_resume") {
        fill(&db, 250);
        let store = db.store("crawler");
        let stop = AtomicBool::new(false);
        let opts = CrawlOptions {
            first_batch: 30,
            min_batch: 30,
            max_batch: 30,
            ..CrawlOptions::default()
        };
        let first = records::run_crawl(&store, "player", 3, &opts, &stop, &mut |p| {
            if p.state.scanned >= 90 {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
        assert_eq!((first.status, first.upgraded), (CrawlStatus::Running, 90));
        let etag_before = store.backend().get("player", "p0000").unwrap().unwrap().etag;
        stop.store(false, Ordering::Relaxed);
        let mut resumed = false;
        let done = records::run_crawl(&store, "player", 3, &opts, &stop, &mut |p| resumed |= p.resumed).unwrap();
        assert!(resumed);
        assert_eq!(
            (done.status, done.upgraded, done.scanned, done.total),
            (CrawlStatus::Done, 250, 250, 250)
        );
        assert_eq!(
            store.backend().get("player", "p0000").unwrap().unwrap().etag,
            etag_before,
            "not redone"
        );
        assert_eq!(store.backend().count_below("player", 3, i64::MAX).unwrap(), 0);
        // Records created after the crawl started are not its business.
        let late = records::run_crawl(&store, "player", 3, &opts, &stop, &mut |_| {}).unwrap();
        assert_eq!(late.total, 0);
    }
}

#[test]
fn a_crawl_beyond_the_write_gate_is_refused() {
    let db = Db::sqlite();
    fill(&db, 3);
    let store = db.store("crawler");
    store.set_gate("player", Some(2)).unwrap();
    let err = records::run_crawl(
        &store,
        "player",
        3,
        &CrawlOptions::default(),
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("the write gate is 2"), "{err}");
}

/// Nice value and allowed CPUs of a process, from /proc.
fn nice_and_cpus(pid: i32) -> (i64, String) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let nice = after_comm.split(' ').nth(16).unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cpus = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    (nice, cpus)
}

#[test]
fn a_background_twin_lowers_its_own_database_sessions_and_no_other() {
    let url = testkit::pg_database("crawl_twin");
    let backend = records::open(&url).unwrap();
    let cpu = plumbing::sched::background_cpu().unwrap();
    let twin = backend
        .background_twin(cpu)
        .unwrap()
        .expect("a PostgreSQL on loopback has a background twin");
    twin.max_id("player").unwrap();
    backend.max_id("player").unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let sessions = admin
        .query(
            "SELECT pid, application_name FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    let (mut lowered, mut normal) = (0, 0);
    for s in &sessions {
        let (pid, app): (i32, String) = (s.get(0), s.get(1));
        let (nice, cpus) = nice_and_cpus(pid);
        if app == records::BACKGROUND_APP {
            lowered += 1;
            assert_eq!(nice, 19, "the twin's session runs at nice 19");
            if let Some(c) = cpu {
                assert_eq!(cpus, c.to_string(), "the twin's session keeps to the crawler's CPU");
            }
        } else {
            normal += 1;
            assert_eq!(nice, 0, "the store's own session {pid} ({app}) is left alone");
        }
    }
    assert_eq!((lowered, normal), (1, 1), "{sessions:?}");
}

#[test]
fn an_embedded_database_has_no_background_twin() {
    let db = Db::sqlite();
    let backend = records::open(&db.url()).unwrap();
    assert!(backend.background_twin(Some(0)).unwrap().is_none());
}

/// Manual VACUUM and ANALYZE runs of the records table so far (autovacuum's are counted apart).
fn manual_vacuums(url: &str) -> (i64, i64) {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let row = admin
        .query_one(
            "SELECT vacuum_count, analyze_count FROM pg_stat_user_tables WHERE relname = 'records'",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn a_crawl_on_postgres_vacuums_the_versions_it_replaced_unless_told_not_to() {
    for (tag, tidy) in [("crawl_tidy", true), ("crawl_untidy", false)] {
        let db = Db::postgres(tag);
        fill(&db, 120);
        let store = db.store("crawler");
        let before = manual_vacuums(&db.url());
        let opts = CrawlOptions {
            tidy,
            ..CrawlOptions::default()
        };
        let done = records::run_crawl(&store, "player", 3, &opts, &AtomicBool::new(false), &mut |_| {}).unwrap();
        assert_eq!((done.status, done.upgraded), (CrawlStatus::Done, 120));
        let (vacuums, analyzes) = manual_vacuums(&db.url());
        if tidy {
            assert!(
                vacuums > before.0 && analyzes > before.1,
                "the crawl vacuumed and analyzed the table at its end: {before:?} -> {:?}",
                (vacuums, analyzes)
            );
        } else {
            assert_eq!(
                (vacuums, analyzes),
                before,
                "tidy: false leaves the table to autovacuum"
            );
        }
    }
}

/// Row versions on the records table that are dead but still take room on
/// their page: not yet pruned (nor vacuumed).
fn unpruned_dead_versions(url: &str) -> i64 {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .unwrap();
    admin
        .query_one("SELECT dead_tuple_count FROM pgstattuple('records')", &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_crawl_batch_prunes_the_pages_where_the_batch_before_it_left_dead_versions_so_server_reads_do_not() {
    let db = Db::postgres("crawl_prune");
    // About 1.5 KB a record, five to a page: PostgreSQL prunes a page on
    // reading it only when it is nearly full.
    let n = 400;
    for i in 0..n {
        let s = db.store("v1").with_clock(move || 1_000_000 + i as i64);
        let name = format!("n{i}-{}", "x".repeat(1500));
        s.create(&format!("p{i:04}"), PlayerV1 { name, gold: 1, hp: 1 })
            .unwrap();
    }
    let opts = CrawlOptions {
        // Vacuum would remove every dead version; this is about pruning.
        tidy: false,
        first_batch: 40,
        min_batch: 40,
        max_batch: 40,
        ..CrawlOptions::default()
    };
    let store = db.store("crawler");
    let done = records::run_crawl(&store, "player", 3, &opts, &AtomicBool::new(false), &mut |_| {}).unwrap();
    assert_eq!((done.status, done.upgraded), (CrawlStatus::Done, n));
    drop(store);
    let dead = unpruned_dead_versions(&db.url());
    assert!(
        dead < 40,
        "every batch's replaced versions were pruned by the batch after it (the last by the crawl's end): \
         {dead} of {n} left"
    );
    // The measure does see versions nobody pruned: a server's writes to
    // records on different pages leave theirs (a read of the same page
    // would prune them).
    let server = db.store("v3");
    for i in 0..50 {
        server
            .update::<PlayerV3>(&format!("p{:04}", i * 7), |p| p.gold += 1)
            .unwrap();
    }
    let left = unpruned_dead_versions(&db.url());
    assert!(
        left >= dead + 40,
        "{dead} dead versions after the crawl, {left} after 50 server writes"
    );
}
