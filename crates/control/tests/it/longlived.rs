//! Players through a canary: WebSockets on v1 stay until they leave or the drain deadline, then reconnect to v2.
//! They hear the drain at its start, get 1012 at its end, and nobody sees an error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use demo_app::ws_client::{ReconnectingWs, SessionLog};
use wire::service::{DeployInfo, Strategy};

use crate::harness::Fixture;

/// A player's log, its own "leave now" switch, and its task.
type Player = (
    Arc<Mutex<SessionLog>>,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_stay_on_v1_until_they_leave_or_the_30s_deadline_then_reconnect_to_v2() {
    let mut f = Fixture::new_with("", |t| {
        t.replace("drain_deadline = \"4s\"", "drain_deadline = \"30s\"")
            .replace("session_idle = \"2s\"", "session_idle = \"5m\"")
            .replace(
                "drain = { signal = \"SIGTERM\", stop_deadline = \"5s\" }",
                "drain = { signal = \"SIGTERM\", stop_deadline = \"5s\", path = \"/drain\" }",
            )
    });
    f.start().await;
    let d = f.deploy("v1", None).await;
    assert_eq!(
        f.wait_deploy(d.id, Duration::from_secs(30)).await.outcome.as_deref(),
        Some("promoted")
    );
    let web = f.web();

    // 200 players on v1, and web traffic whose sessions last 3 requests (~30 new
    // sessions a second, so the canary's 3 s step surely gets some).
    let (stop_all, stop_rx) = tokio::sync::watch::channel(false);
    let mut players: Vec<Player> = Vec::new();
    for _ in 0..200 {
        let s = ReconnectingWs::new(web, Duration::from_secs(1));
        let log = s.log();
        // Each player can leave on its own, or with everybody at the end.
        let (leave, mut leave_rx) = tokio::sync::watch::channel(false);
        let mut all = stop_rx.clone();
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = leave_rx.changed() => {}
                _ = all.changed() => {}
            }
            let _ = tx.send(true);
        });
        players.push((log, leave, tokio::spawn(s.run(rx))));
    }
    testkit::wait_for("200 players on v1", Duration::from_secs(30), || async {
        players
            .iter()
            .all(|(l, ..)| l.lock().unwrap().release() == Some("v1"))
            .then_some(())
    })
    .await;
    let mut web_load = loadgen::LoadConfig::new(web, 100.0);
    web_load.users = 20;
    web_load.session_requests = Some(3);
    let load = loadgen::Load::start(web_load);

    let d = f.deploy("v2", Some(Strategy::Canary)).await;
    let promoted: DeployInfo = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    let promoted_seen = Instant::now();
    assert_eq!(promoted.outcome.as_deref(), Some("promoted"), "{promoted:?}");
    // Drain start: every player hears it from the app, and stays.
    testkit::wait_for(
        "the drain warning to reach every player",
        Duration::from_secs(10),
        || async {
            players
                .iter()
                .all(|(l, ..)| !l.lock().unwrap().notices.is_empty())
                .then_some(())
        },
    )
    .await;
    let before_leaving = load.report();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // New sessions go to v2 while v1 keeps its players.
    let mid = load.report().since(&before_leaving);
    assert!(mid.releases.get("v2").copied().unwrap_or(0) > 300, "{:?}", mid.releases);
    for (l, ..) in &players {
        let l = l.lock().unwrap();
        assert_eq!(l.release(), Some("v1"));
        assert!(
            l.closes.is_empty(),
            "a player was cut before the deadline: {:?}",
            l.closes
        );
    }
    // A quarter of the players leave on their own, cleanly.
    for (_, leave, _) in players.iter().take(50) {
        let _ = leave.send(true);
    }
    // At the deadline the rest get 1012 and come back on v2.
    testkit::wait_for("every remaining player on v2", Duration::from_secs(60), || async {
        players[50..]
            .iter()
            .all(|(l, ..)| l.lock().unwrap().release() == Some("v2"))
            .then_some(())
    })
    .await;
    let moved = promoted_seen.elapsed();
    let _ = stop_all.send(true);
    let mut tasks = Vec::new();
    for (log, _, task) in players {
        tasks.push(task);
        let l = log.lock().unwrap().clone();
        assert!(l.errors.is_empty(), "a player saw an error: {:?}", l.errors);
        assert!(!l.notices.is_empty());
        for (at, code, reason) in &l.closes {
            assert_eq!(*code, 1012, "{reason}");
            assert!(
                at.duration_since(promoted_seen) >= Duration::from_secs(28),
                "cut {:?} after promotion, before the 30 s deadline",
                at.duration_since(promoted_seen)
            );
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let r = load.stop().await;
    assert_eq!(r.failed, 0, "web requests failed: {:?} {:?}", r.statuses, r.errors);
    assert!(
        moved < Duration::from_secs(45),
        "players moved {moved:?} after promotion"
    );
}
