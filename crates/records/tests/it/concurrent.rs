//! Two code versions and the crawler write the same records at once (shown to overlap): no write is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use records::{Backend, CrawlOptions};

use crate::model::{Db, PlayerV1, PlayerV3};

const PLAYERS: usize = 400;
const UPDATES_PER_WRITER: u64 = 300;

fn two_releases_and_the_crawler(db: Db) {
    let setup = db.store("v1");
    for i in 0..PLAYERS {
        setup
            .create(
                &format!("p{i:04}"),
                PlayerV1 {
                    name: format!("n{i}"),
                    gold: 0,
                    hp: 10,
                },
            )
            .unwrap();
    }
    // v1 is still live: v3 writes v2 (readable by v1) under the gate.
    setup.set_gate("player", Some(2)).unwrap();
    let done = Arc::new(AtomicU64::new(0));
    // How far the crawl had looked when it last finished a batch (0: not begun, u64::MAX: done),
    // and how many batches it finished.
    let scanned = Arc::new(AtomicU64::new(0));
    let batches = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for w in 0..4u64 {
        let store = db.store(if w % 2 == 0 { "v1" } else { "v3" });
        let (done, scanned, batches) = (done.clone(), scanned.clone(), batches.clone());
        threads.push(std::thread::spawn(move || {
            wait_until("the crawl to begin", || scanned.load(Ordering::SeqCst) > 0);
            let mut rng = fastrand::Rng::with_seed(w);
            // The crawl's progress at each of this writer's writes.
            let mut seen = Vec::new();
            let mut batch = batches.load(Ordering::SeqCst);
            for i in 0..UPDATES_PER_WRITER {
                // Five writes per crawl batch while the crawl runs, so the writes spread over all of it.
                if i > 0 && i % 5 == 0 {
                    wait_until("the crawl's next batch", || {
                        batches.load(Ordering::SeqCst) > batch || scanned.load(Ordering::SeqCst) == u64::MAX
                    });
                    batch = batches.load(Ordering::SeqCst);
                }
                let key = format!("p{:04}", rng.usize(0..PLAYERS));
                if w % 2 == 0 {
                    store.update::<PlayerV1>(&key, |p| p.gold += 1).unwrap();
                } else {
                    store
                        .update::<PlayerV3>(&key, |p| {
                            p.gold += 1;
                            p.xp += 1;
                        })
                        .unwrap();
                }
                seen.push(scanned.load(Ordering::SeqCst));
                done.fetch_add(1, Ordering::SeqCst);
            }
            seen
        }));
    }
    let crawler_store = db.store("crawler");
    let stop = AtomicBool::new(false);
    let opts = CrawlOptions {
        first_batch: 20,
        max_batch: 40,
        rate: Some(400.0),
        ..CrawlOptions::default()
    };
    let all_writes = 4 * UPDATES_PER_WRITER;
    let state = records::run_crawl(&crawler_store, "player", 2, &opts, &stop, &mut |p| {
        let finished = p.state.status == records::CrawlStatus::Done;
        scanned.store(if finished { u64::MAX } else { p.state.scanned }, Ordering::SeqCst);
        if p.state.status == records::CrawlStatus::Running && p.state.scanned < p.state.total {
            batches.fetch_add(1, Ordering::SeqCst);
            // Let the writers land a few writes before the next batch, so they surely overlap the crawl.
            let before = done.load(Ordering::SeqCst);
            wait_until("the writers to write during the crawl", || {
                let now = done.load(Ordering::SeqCst);
                now >= before + 5 || now == all_writes
            });
        }
    })
    .unwrap();
    let seen: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    // Proof that the writers and the crawler overlapped: writes landed while the crawl was part way, at
    // several points of it, and the crawl went on after them.
    let midway: Vec<u64> = seen.iter().copied().filter(|s| (1..u64::MAX).contains(s)).collect();
    let points: std::collections::BTreeSet<u64> = midway.iter().copied().collect();
    let batches = batches.load(Ordering::SeqCst);
    assert!(batches >= 3, "the crawl ran in {batches} batches");
    assert!(
        midway.len() >= 10 && points.len() >= 3,
        "{} writes landed mid-crawl, at {} points of it: {points:?}",
        midway.len(),
        points.len()
    );
    let reader = db.store("v3");
    let (mut gold, mut xp) = (0, 0);
    for i in 0..PLAYERS {
        let p = reader.get::<PlayerV3>(&format!("p{i:04}")).unwrap().unwrap();
        assert_eq!(p.value.display_name, format!("n{i}"));
        gold += p.value.gold;
        xp += p.value.xp;
        assert!(p.stored_version() <= 2, "nobody wrote above the gate");
    }
    assert_eq!(
        gold as u64,
        4 * UPDATES_PER_WRITER,
        "every increment landed exactly once"
    );
    assert_eq!(xp as u64, 2 * UPDATES_PER_WRITER, "v1 code kept the xp v3 code wrote");
    assert_eq!(state.upgraded + state.failed, state.upgraded);
    assert!(state.upgraded > 0, "{state:?}");
    // What is left below 2 was written at 1 by v1 code during the crawl.
    let left = reader.backend().count_below("player", 2, i64::MAX).unwrap();
    // A second crawl picks up the rest now that the servers are quiet.
    let again = records::run_crawl(&crawler_store, "player", 2, &opts, &stop, &mut |_| {}).unwrap();
    assert_eq!(again.upgraded, left);
    assert_eq!(reader.backend().count_below("player", 2, i64::MAX).unwrap(), 0);
}

/// Polls `f` until it holds, or panics after 30 s.
fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn two_code_versions_and_the_crawler_lose_no_write_on_sqlite() {
    two_releases_and_the_crawler(Db::sqlite());
}

#[test]
fn two_code_versions_and_the_crawler_lose_no_write_on_postgres() {
    two_releases_and_the_crawler(Db::postgres("concurrent"));
}
