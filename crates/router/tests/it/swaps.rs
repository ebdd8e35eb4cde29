//! Zero failed requests while the route table changes hundreds of times under concurrent load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use testkit::Client;
use wire::RouteState;

use crate::harness::{App, Harness, release, table};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_table_swaps_during_twenty_thousand_requests_fail_none() {
    let apps = [
        App::start("v1").await,
        App::start("v1").await,
        App::start("v2").await,
        App::start("v2").await,
        App::start("v3").await,
    ];
    let h = Arc::new(Harness::start("").await);
    h.put(&table(vec![release("v1", 100, &[&apps[0], &apps[1]])])).await;

    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..16 {
        let web = h.web;
        let failures = failures.clone();
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let mut conn: Option<Client> = None;
            let mut cookie: Option<String> = None;
            for i in 0..1250 {
                // Half the clients reconnect now and then; half keep one connection.
                if conn.is_none() || (c % 2 == 0 && i % 50 == 0) {
                    conn = Some(Client::connect(web).await.expect("connect"));
                }
                let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
                let path = if i % 10 == 0 { "/sleep?ms=5" } else { "/" };
                match conn.as_mut().unwrap().get(path, &headers).await {
                    Ok(r) if r.status == 200 => {
                        if let Some(c) = crate::harness::set_cookie(&r) {
                            cookie = Some(c);
                        }
                    }
                    Ok(r) => {
                        eprintln!("failed: {} {}", r.status, r.text());
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // 200 changes spread over the run: weights, new releases, drains, removals.
    let mut swaps = 0;
    while swaps < 200 {
        let step = swaps % 8;
        let mut t = match step {
            0 => table(vec![release("v1", 100, &[&apps[0], &apps[1]])]),
            1 => table(vec![
                release("v2", 10, &[&apps[2]]),
                release("v1", 90, &[&apps[0], &apps[1]]),
            ]),
            2 => table(vec![
                release("v2", 50, &[&apps[2], &apps[3]]),
                release("v1", 50, &[&apps[0], &apps[1]]),
            ]),
            3 => table(vec![
                release("v3", 10, &[&apps[4]]),
                release("v2", 40, &[&apps[2], &apps[3]]),
                release("v1", 50, &[&apps[0], &apps[1]]),
            ]),
            4 => table(vec![
                release("v3", 30, &[&apps[4]]),
                release("v2", 70, &[&apps[3]]),
                release("v1", 0, &[&apps[0]]),
            ]),
            5 => table(vec![
                release("v2", 100, &[&apps[2], &apps[3]]),
                release("v1", 0, &[&apps[1]]),
            ]),
            6 => table(vec![release("v2", 100, &[&apps[2]])]),
            _ => table(vec![
                release("v1", 60, &[&apps[0]]),
                release("v2", 40, &[&apps[2], &apps[3]]),
            ]),
        };
        if step == 4 {
            t.releases[2].state = RouteState::Draining;
            t.releases[1].instances[0].state = RouteState::Active;
        }
        h.put(&t).await;
        swaps += 1;
        // Spread the swaps over the whole run.
        let target = (swaps as u64) * 20_000 / 210;
        while done.load(Ordering::Relaxed) < target && done.load(Ordering::Relaxed) < 20_000 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 20_000);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during table swaps"
    );
    let routes = h.routes().await;
    assert!(routes.generation >= 200, "generation {}", routes.generation);
}
