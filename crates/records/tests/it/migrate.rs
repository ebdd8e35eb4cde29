//! SQL migrations on SQLite and PostgreSQL: expand, backfill, contract gated on live releases, ledger, locks.

use std::time::{Duration, Instant};

use records::migrate::{self, Conn, LiveUse, MigrateError, Phase};

use crate::model::Db;

fn opts<'a>(phases: &'a [Phase], live: &'a [LiveUse], lock_timeout: Duration, tries: u32) -> migrate::RunOptions<'a> {
    migrate::RunOptions {
        phases,
        live,
        lock_timeout,
        tries,
    }
}

fn migration(db: &Db, backfill_len: u32) -> migrate::Migration {
    let check = match db {
        Db::Sqlite(_) => "SELECT 1 FROM pragma_table_info('players') WHERE name = 'first_name'",
        Db::Postgres(_) => {
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'players' AND column_name = 'first_name'"
        }
    };
    let text = format!(
        r#"
        description = "first_name from name"
        [[step]]
        phase = "expand"
        sql = "ALTER TABLE players ADD COLUMN first_name TEXT"
        check = "{check}"
        [[step]]
        phase = "backfill"
        sql = """UPDATE players SET first_name = substr(name, 1, {backfill_len}) \
          WHERE id IN (SELECT id FROM players WHERE first_name IS NULL LIMIT 100)"""
        repeat = true
        [[step]]
        phase = "contract"
        sql = "ALTER TABLE players DROP COLUMN name"
        drops = ["players.name"]
        "#
    );
    migrate::parse("0001_first_name", &text).unwrap()
}

fn seed(db: &Db) {
    let mut c = Conn::open(&db.url()).unwrap();
    let ms = vec![
        migrate::parse(
            "0000_players",
            r#"
            [[step]]
            phase = "expand"
            sql = "CREATE TABLE IF NOT EXISTS players (id BIGINT PRIMARY KEY, name TEXT NOT NULL)"
            [[step]]
            phase = "backfill"
            sql = """INSERT INTO players (id, name) SELECT n, 'player' || n FROM \
              (WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 1000) SELECT n FROM s) AS t"""
            "#,
        )
        .unwrap(),
    ];
    migrate::run(
        &mut c,
        &ms,
        &opts(&[Phase::Expand, Phase::Backfill], &[], Duration::from_millis(500), 5),
        &mut |_| {},
    )
    .unwrap();
}

fn count(db: &Db, sql: &str) -> i64 {
    match db {
        Db::Sqlite(_) => {
            let c = rusqlite::Connection::open(db.url().strip_prefix("sqlite:").unwrap()).unwrap();
            c.query_row(sql, [], |r| r.get(0)).unwrap()
        }
        Db::Postgres(u) => postgres::Client::connect(u, postgres::NoTls)
            .unwrap()
            .query_one(sql, &[])
            .unwrap()
            .get(0),
    }
}

fn expand_backfill_contract(db: Db) {
    seed(&db);
    let m = vec![migration(&db, 3)];
    let mut c = Conn::open(&db.url()).unwrap();
    let t = Duration::from_millis(500);
    let mut lines = Vec::new();
    let r = migrate::run(
        &mut c,
        &m,
        &opts(&[Phase::Expand, Phase::Backfill], &[], t, 5),
        &mut |l| lines.push(l.to_string()),
    )
    .unwrap();
    assert_eq!(r.ran.len(), 2, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("done, 1000 rows")), "{lines:?}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM players WHERE first_name IS NULL"), 0);
    // v1 still reads name: the contract waits.
    let live = vec![
        LiveUse {
            release: "v1".into(),
            uses: vec!["players.name".into(), "players.id".into()],
        },
        LiveUse {
            release: "v2".into(),
            uses: vec!["players.first_name".into()],
        },
    ];
    let err = migrate::run(&mut c, &m, &opts(&[Phase::Contract], &live, t, 5), &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, MigrateError::StillUsed { releases, .. } if releases == "v1"),
        "{err}"
    );
    let plan = migrate::plan(&mut c, &m, &live).unwrap();
    assert_eq!(plan[2].blocked_by, vec!["v1 uses players.name"]);
    assert_eq!(plan[0].status, "done");
    assert_eq!(plan[2].locks[0].level, "ACCESS EXCLUSIVE");
    // v1 is gone.
    let r = migrate::run(&mut c, &m, &opts(&[Phase::Contract], &live[1..], t, 5), &mut |_| {}).unwrap();
    assert_eq!(r.ran, vec![("0001_first_name".to_string(), 3, Phase::Contract)]);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM players WHERE first_name = 'pla'"),
        1000
    );
    // Again: nothing to do. A changed step is refused.
    let all = [Phase::Expand, Phase::Backfill, Phase::Contract];
    assert!(
        migrate::run(&mut c, &m, &opts(&all, &[], t, 5), &mut |_| {})
            .unwrap()
            .ran
            .is_empty()
    );
    let changed = vec![migration(&db, 4)];
    let err = migrate::run(&mut c, &changed, &opts(&all, &[], t, 5), &mut |_| {}).unwrap_err();
    assert!(matches!(err, MigrateError::Changed { step: 2, .. }), "{err}");
}

#[test]
fn expand_backfill_and_contract_after_the_old_release_on_sqlite() {
    expand_backfill_contract(Db::sqlite());
}

#[test]
fn expand_backfill_and_contract_after_the_old_release_on_postgres() {
    expand_backfill_contract(Db::postgres("migrate"));
}

#[test]
fn a_ddl_statement_behind_a_long_reader_times_out_retries_and_never_stalls_reads_on_postgres() {
    let db = Db::postgres("migrate_lock");
    seed(&db);
    let url = db.url();
    // A long transaction holds ACCESS SHARE on players for 1.5 s.
    let holder = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut tx = c.transaction().unwrap();
            tx.query("SELECT 1 FROM players LIMIT 1", &[]).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            tx.commit().unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let readers = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut worst = Duration::ZERO;
            let end = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < end {
                let t0 = Instant::now();
                c.query("SELECT name FROM players WHERE id = 7", &[]).unwrap();
                worst = worst.max(t0.elapsed());
                std::thread::sleep(Duration::from_millis(10));
            }
            worst
        })
    };
    let m = vec![migration(&db, 3)];
    let mut c = Conn::open(&url).unwrap();
    let r = migrate::run(
        &mut c,
        &m,
        &opts(&[Phase::Expand], &[], Duration::from_millis(100), 50),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.ran.len(), 1);
    assert!(r.retries >= 1, "the ALTER had to wait for the reader: {r:?}");
    holder.join().unwrap();
    let worst = readers.join().unwrap();
    // Readers queue behind a waiting ALTER for at most its lock timeout.
    assert!(worst < Duration::from_millis(600), "a read waited {worst:?}");
}

#[test]
fn a_busy_sqlite_database_is_waited_for_and_one_run_holds_the_lock() {
    let db = Db::sqlite();
    seed(&db);
    let path = db.url().strip_prefix("sqlite:").unwrap().to_string();
    let holder = std::thread::spawn(move || {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        tx.commit().unwrap();
    });
    std::thread::sleep(Duration::from_millis(100));
    let m = vec![migration(&db, 3)];
    let mut c = Conn::open(&db.url()).unwrap();
    let r = migrate::run(
        &mut c,
        &m,
        &opts(&[Phase::Expand], &[], Duration::from_millis(100), 50),
        &mut |_| {},
    )
    .unwrap();
    holder.join().unwrap();
    // SQLite has one write lock: the run waited for the writer, then went on.
    assert_eq!(r.ran.len(), 1);
    // Another run holding the lock: this one is refused at once.
    let c2 = rusqlite::Connection::open(db.url().strip_prefix("sqlite:").unwrap()).unwrap();
    c2.execute(
        "INSERT INTO slipway_migration_lock (id, holder, expires) VALUES (1, 'other', ?1)",
        [records::now_ms() + 60_000],
    )
    .unwrap();
    let err = migrate::run(
        &mut c,
        &m,
        &opts(&[Phase::Backfill], &[], Duration::from_millis(100), 5),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, MigrateError::Locked), "{err}");
}
