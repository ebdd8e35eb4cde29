//! Deploys move the data with them: expand before a release starts, contract after, write gates follow readers.
//! A migration that fails refuses the deploy.

use std::time::Duration;

use records::Backend;
use wire::service::Strategy;

use crate::harness::Fixture;

const DATA: &str = r#"
[data]
database = "sqlite:app.db"
migrations = "migrations"
records = "sqlite:records.db"
lock_timeout = "200ms"
"#;

const CREATE: &str = r#"
[[step]]
phase = "expand"
sql = "CREATE TABLE IF NOT EXISTS players (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"
[[step]]
phase = "backfill"
sql = "INSERT OR IGNORE INTO players (id, name) VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')"
"#;

const SPLIT: &str = r#"
[[step]]
phase = "expand"
sql = "ALTER TABLE players ADD COLUMN first_name TEXT"
check = "SELECT 1 FROM pragma_table_info('players') WHERE name = 'first_name'"
[[step]]
phase = "backfill"
sql = """UPDATE players SET first_name = upper(name) \
    WHERE id IN (SELECT id FROM players WHERE first_name IS NULL LIMIT 2)"""
repeat = true
[[step]]
phase = "contract"
sql = "ALTER TABLE players DROP COLUMN name"
check = "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pragma_table_info('players') WHERE name = 'name')"
drops = ["players.name"]
"#;

fn columns(f: &Fixture) -> Vec<String> {
    let c = rusqlite::Connection::open(f.dir.join("app.db")).unwrap();
    let mut st = c
        .prepare("SELECT name FROM pragma_table_info('players') ORDER BY cid")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn gate(f: &Fixture) -> Option<u32> {
    let b = records::open(&format!("sqlite:{}", f.dir.join("records.db").display())).unwrap();
    b.gates().unwrap().get("player").copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_expands_before_the_new_release_and_contracts_after_the_old_one() {
    let mut f = Fixture::with_files(
        DATA,
        &[
            ("migrations/0000_players.toml", CREATE),
            ("migrations/0001_first_name.toml", SPLIT),
        ],
        &[
            ("v1", "[database]\nuses = [\"players.name\"]\n[records]\nplayer = 1\n"),
            (
                "v2",
                "[database]\nuses = [\"players.first_name\"]\n[records]\nplayer = 3\n",
            ),
        ],
    );
    f.start().await;
    let d = f.deploy("v1", None).await;
    let d = f.wait_deploy(d.id, Duration::from_secs(30)).await;
    assert_eq!(d.outcome.as_deref(), Some("promoted"), "{d:?}");
    // Expanded and backfilled before v1 started; the contract waits for v1.
    assert_eq!(columns(&f), vec!["id", "name", "first_name"]);
    assert_eq!(gate(&f), Some(1));

    let d = f.deploy("v2", Some(Strategy::Canary)).await;
    assert_eq!(gate(&f), Some(1), "v1 still reads players: records stay at version 1");
    let d = f.wait_deploy(d.id, Duration::from_secs(60)).await;
    assert_eq!(d.outcome.as_deref(), Some("promoted"), "{d:?}");
    assert_eq!(columns(&f), vec!["id", "name", "first_name"], "v1 is still draining");
    // The status note is written once the data pass that made these changes
    // returns, a moment after the database shows them: wait for both.
    let s = testkit::wait_for(
        "v1 gone, the contract run, the gate raised and status saying so",
        Duration::from_secs(40),
        || async {
            if columns(&f) != vec!["id", "first_name"] || gate(&f) != Some(3) {
                return None;
            }
            let s = f.status().await;
            s.data
                .as_deref()
                .is_some_and(|n| n.contains("write gate of player: 3"))
                .then_some(s)
        },
    )
    .await;
    assert!(!s.instances.iter().any(|i| i.release == "v1" && agent::is_live(i.state)));
    let note = s.data.unwrap_or_default();
    assert!(note.contains("write gate of player: 3"), "{note}");

    // A migration that cannot run refuses the deploy before anything starts.
    std::fs::write(
        f.dir.join("migrations/0002_bad.toml"),
        "[[step]]\nphase = \"expand\"\nsql = \"ALTER TABLE nowhere ADD COLUMN x TEXT\"\n",
    )
    .unwrap();
    let err = f
        .api()
        .post::<_, wire::service::DeployInfo>(
            "/v1/deploys",
            &wire::service::DeployRequest {
                release: "v3".into(),
                strategy: None,
                template: None,
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such table: nowhere"), "{err}");
    let s = f.status().await;
    assert_eq!(s.current.as_deref(), Some("v2"));
    assert!(!s.instances.iter().any(|i| i.release == "v3"), "nothing of v3 started");
}
