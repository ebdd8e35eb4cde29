//! Runs migration steps on SQLite or PostgreSQL: the ledger, the advisory lock, lock timeouts with retries.

use std::collections::HashMap;
use std::time::Duration;

use super::{LiveUse, MigrateError, Migration, Phase, Planned, Step, blockers, classify};
use crate::{StorageError, now_ms};

/// Advisory lock key of migration runs (PostgreSQL).
pub const LOCK_KEY: i64 = 0x5_1_1_9_7_4_0_2;

/// A connection that runs migrations.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Client),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Sqlite(_) => "Conn::Sqlite",
            Conn::Postgres(_) => "Conn::Postgres",
        })
    }
}

/// `(migration, step)` → `(checksum, status)`.
type Ledger = HashMap<(String, usize), (String, String)>;

enum ExecError {
    Busy,
    Other(String),
}

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS slipway_migrations (
    migration TEXT NOT NULL, step BIGINT NOT NULL, phase TEXT NOT NULL, checksum TEXT NOT NULL,
    status TEXT NOT NULL, started_at BIGINT NOT NULL, finished_at BIGINT, error TEXT,
    PRIMARY KEY (migration, step));
CREATE TABLE IF NOT EXISTS slipway_migration_lock (
    id BIGINT PRIMARY KEY, holder TEXT NOT NULL, expires BIGINT NOT NULL);";

impl Conn {
    /// `sqlite:PATH` or `postgres://...`; creates the ledger.
    pub fn open(url: &str) -> Result<Conn, StorageError> {
        let mut c = match crate::backend::cols::DbUrl::parse(url)? {
            crate::backend::cols::DbUrl::Postgres(u) => Conn::Postgres(postgres::Client::connect(&u, postgres::NoTls)?),
            crate::backend::cols::DbUrl::Sqlite(path) => {
                let c = rusqlite::Connection::open(path)?;
                c.pragma_update(None, "journal_mode", "WAL")?;
                Conn::Sqlite(c)
            }
        };
        match &mut c {
            Conn::Sqlite(s) => s.execute_batch(LEDGER)?,
            Conn::Postgres(p) => {
                p.execute("SELECT pg_advisory_lock($1)", &[&(LOCK_KEY + 1)])?;
                let r = p.batch_execute(LEDGER);
                p.execute("SELECT pg_advisory_unlock($1)", &[&(LOCK_KEY + 1)])?;
                r?
            }
        }
        Ok(c)
    }

    /// Opens the database to read the ledger only: nothing is created, and every write fails.
    pub fn open_read_only(url: &str) -> Result<Conn, StorageError> {
        Ok(match crate::backend::cols::DbUrl::parse(url)? {
            crate::backend::cols::DbUrl::Postgres(u) => {
                let mut c = postgres::Client::connect(&u, postgres::NoTls)?;
                c.batch_execute("SET default_transaction_read_only = on")?;
                Conn::Postgres(c)
            }
            crate::backend::cols::DbUrl::Sqlite(path) => {
                use rusqlite::OpenFlags;
                if !path.is_file() {
                    // No database yet, so no ledger: an empty one in memory reads the same, and creates no file.
                    return Ok(Conn::Sqlite(rusqlite::Connection::open_in_memory()?));
                }
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                Conn::Sqlite(rusqlite::Connection::open_with_flags(path, flags)?)
            }
        })
    }

    /// Whether the ledger table exists (a database no migration ran on has none).
    fn has_ledger(&mut self) -> Result<bool, StorageError> {
        Ok(match self {
            Conn::Sqlite(c) => {
                let q = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'slipway_migrations'";
                c.query_row(q, [], |r| r.get::<_, i64>(0))? > 0
            }
            Conn::Postgres(c) => c
                .query_one("SELECT to_regclass('slipway_migrations') IS NOT NULL", &[])?
                .get::<_, bool>(0),
        })
    }

    fn ledger(&mut self) -> Result<Ledger, StorageError> {
        if !self.has_ledger()? {
            return Ok(Ledger::new());
        }
        let q = "SELECT migration, step, checksum, status FROM slipway_migrations";
        Ok(match self {
            Conn::Sqlite(c) => {
                let mut st = c.prepare(q)?;
                let rows = st.query_map([], |r| {
                    Ok((
                        (r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize),
                        (r.get::<_, String>(2)?, r.get::<_, String>(3)?),
                    ))
                })?;
                rows.collect::<Result<_, _>>()?
            }
            Conn::Postgres(c) => c
                .query(q, &[])?
                .iter()
                .map(|r| ((r.get(0), r.get::<_, i64>(1) as usize), (r.get(2), r.get(3))))
                .collect(),
        })
    }

    fn mark(&mut self, m: &str, i: usize, s: &Step, status: &str, error: Option<&str>) -> Result<(), StorageError> {
        let now = now_ms();
        let finished = (status != "running").then_some(now);
        let sql = "INSERT INTO slipway_migrations \
            (migration, step, phase, checksum, status, started_at, finished_at, error) \
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (migration, step) \
            DO UPDATE SET status = excluded.status, \
            checksum = excluded.checksum, finished_at = excluded.finished_at, error = excluded.error";
        let step = i as i64;
        match self {
            Conn::Sqlite(c) => {
                c.execute(
                    sql,
                    rusqlite::params![m, step, s.phase.as_str(), s.checksum, status, now, finished, error],
                )?;
            }
            Conn::Postgres(c) => {
                c.execute(
                    &crate::backend::sql::pg(sql),
                    &[
                        &m,
                        &step,
                        &s.phase.as_str(),
                        &s.checksum,
                        &status,
                        &now,
                        &finished,
                        &error,
                    ],
                )?;
            }
        }
        Ok(())
    }

    fn lock(&mut self, holder: &str) -> Result<(), MigrateError> {
        let got = match self {
            Conn::Postgres(c) => c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
                .map_err(StorageError::from)?
                .get::<_, bool>(0),
            Conn::Sqlite(c) => {
                let now = now_ms();
                c.execute(
                    "INSERT INTO slipway_migration_lock (id, holder, expires) VALUES (1, ?1, ?2) \
                     ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires = excluded.expires \
                     WHERE slipway_migration_lock.expires < ?3",
                    rusqlite::params![holder, now.saturating_add(600_000), now],
                )
                .map_err(StorageError::from)?
                    == 1
            }
        };
        if got { Ok(()) } else { Err(MigrateError::Locked) }
    }

    fn unlock(&mut self) {
        let _ = match self {
            Conn::Postgres(c) => c
                .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
                .map(|_| ())
                .map_err(|_| ()),
            Conn::Sqlite(c) => c
                .execute("DELETE FROM slipway_migration_lock WHERE id = 1", [])
                .map(|_| ())
                .map_err(|_| ()),
        };
    }

    fn exists(&mut self, query: &str) -> Result<bool, String> {
        match self {
            Conn::Sqlite(c) => c
                .prepare(query)
                .and_then(|mut s| s.exists([]))
                .map_err(|e| e.to_string()),
            Conn::Postgres(c) => c
                .query(query, &[])
                .map(|r| !r.is_empty())
                .map_err(|e| crate::backend::pg_message(&e)),
        }
    }

    /// Runs a step's statements in one transaction under the lock timeout; rows changed.
    fn exec(&mut self, sql: &str, timeout: Duration) -> Result<u64, ExecError> {
        let statements = super::split_statements(sql);
        match self {
            Conn::Postgres(c) => {
                let ms = timeout.as_millis();
                let concurrent = statements.iter().any(|s| s.to_uppercase().contains("CONCURRENTLY"));
                let busy = |e: postgres::Error| match e.code() {
                    Some(code) if *code == postgres::error::SqlState::LOCK_NOT_AVAILABLE => ExecError::Busy,
                    _ => ExecError::Other(crate::backend::pg_message(&e)),
                };
                if concurrent {
                    // CONCURRENTLY cannot run in a transaction.
                    c.batch_execute(&format!("SET lock_timeout = '{ms}ms'")).map_err(busy)?;
                    let mut n = 0;
                    let mut out = Ok(0);
                    for st in &statements {
                        match c.execute(st.as_str(), &[]) {
                            Ok(k) => n += k,
                            Err(e) => {
                                out = Err(busy(e));
                                break;
                            }
                        }
                    }
                    let _ = c.batch_execute("RESET lock_timeout");
                    return out.map(|_| n);
                }
                let mut tx = c.transaction().map_err(busy)?;
                tx.batch_execute(&format!("SET LOCAL lock_timeout = '{ms}ms'"))
                    .map_err(busy)?;
                let mut n = 0;
                for st in &statements {
                    n += tx.execute(st.as_str(), &[]).map_err(busy)?;
                }
                tx.commit().map_err(busy)?;
                Ok(n)
            }
            Conn::Sqlite(c) => {
                let busy = |e: rusqlite::Error| match e.sqlite_error_code() {
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => ExecError::Busy,
                    _ => ExecError::Other(e.to_string()),
                };
                c.busy_timeout(timeout).map_err(busy)?;
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(busy)?;
                let mut n = 0;
                for st in &statements {
                    n += tx.execute(st, []).map_err(busy)? as u64;
                }
                tx.commit().map_err(busy)?;
                Ok(n)
            }
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// `(migration, step, phase)` of the steps that ran now.
    pub ran: Vec<(String, usize, Phase)>,
    /// Lock-timeout retries along the way.
    pub retries: u32,
}

/// Every step with its lock analysis, ledger status and the live releases blocking it.
pub fn plan(conn: &mut Conn, migrations: &[Migration], live: &[LiveUse]) -> Result<Vec<Planned>, MigrateError> {
    let ledger = conn.ledger()?;
    Ok(migrations
        .iter()
        .flat_map(|m| {
            let ledger = &ledger;
            m.steps.iter().enumerate().map(move |(i, s)| Planned {
                migration: m.id.clone(),
                step: i + 1,
                phase: s.phase,
                status: ledger
                    .get(&(m.id.clone(), i + 1))
                    .map(|l| l.1.clone())
                    .unwrap_or_else(|| "pending".into()),
                locks: classify(&s.sql),
                blocked_by: blockers(s, live)
                    .into_iter()
                    .map(|(d, r)| format!("{r} uses {d}"))
                    .collect(),
            })
        })
        .collect())
}

/// How a run goes: which phases, who is live, how long a statement may wait for its lock.
#[derive(Debug, Clone)]
pub struct RunOptions<'a> {
    pub phases: &'a [Phase],
    /// Live releases and what they use: contract steps wait for them.
    pub live: &'a [LiveUse],
    /// Each step's transaction waits at most this long for a lock...
    pub lock_timeout: Duration,
    /// ...and is tried this many times, with jittered backoff in between.
    pub tries: u32,
}

/// Runs the pending steps of `opts.phases`, in order, under the migration
/// lock. A step runs only after the steps before it in its migration are
/// done; a contract step only when no live release uses what it drops.
pub fn run(
    conn: &mut Conn,
    migrations: &[Migration],
    opts: &RunOptions<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<Report, MigrateError> {
    let holder = format!("pid {}", std::process::id());
    conn.lock(&holder)?;
    let out = run_locked(conn, migrations, opts, log);
    conn.unlock();
    out
}

fn run_locked(
    conn: &mut Conn,
    migrations: &[Migration],
    opts: &RunOptions<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<Report, MigrateError> {
    let ledger = conn.ledger()?;
    let mut run = Runner {
        conn,
        opts,
        log,
        report: Report::default(),
        rng: fastrand::Rng::new(),
    };
    for m in migrations {
        for (i, s) in m.steps.iter().enumerate() {
            let n = i + 1;
            if let Some((sum, status)) = ledger.get(&(m.id.clone(), n))
                && status == "done"
            {
                if *sum != s.checksum {
                    return Err(MigrateError::Changed {
                        migration: m.id.clone(),
                        step: n,
                        was: sum.clone(),
                        now: s.checksum.clone(),
                    });
                }
                continue;
            }
            if !opts.phases.contains(&s.phase) {
                break; // later steps of this migration wait for this one
            }
            run.step(m, n, s)?;
        }
    }
    Ok(run.report)
}

/// One run of pending steps: the connection, the options, and what it did so far.
struct Runner<'a, 'o> {
    conn: &'a mut Conn,
    opts: &'a RunOptions<'o>,
    log: &'a mut dyn FnMut(&str),
    report: Report,
    rng: fastrand::Rng,
}

impl Runner<'_, '_> {
    /// Runs step `n` of `m` (unless a live release still uses what it drops, or its check
    /// says it is already applied) and marks it done.
    fn step(&mut self, m: &Migration, n: usize, s: &Step) -> Result<(), MigrateError> {
        let blocking = blockers(s, self.opts.live);
        if let Some((object, _)) = blocking.first() {
            return Err(MigrateError::StillUsed {
                migration: m.id.clone(),
                step: n,
                object: object.clone(),
                releases: blocking.iter().map(|b| b.1.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        self.conn.mark(&m.id, n, s, "running", None)?;
        let applied = match &s.check {
            Some(q) => self.conn.exists(q).map_err(|message| MigrateError::Failed {
                migration: m.id.clone(),
                step: n,
                message: format!("check query: {message}"),
            })?,
            None => false,
        };
        if applied {
            (self.log)(&format!("{} step {n} ({}): already applied", m.id, s.phase.as_str()));
        } else {
            let mut rows = 0u64;
            loop {
                let changed = self.exec(m, n, s)?;
                rows += changed;
                if !s.repeat || changed == 0 {
                    break;
                }
            }
            (self.log)(&format!("{} step {n} ({}): done, {rows} rows", m.id, s.phase.as_str()));
        }
        self.conn.mark(&m.id, n, s, "done", None)?;
        self.report.ran.push((m.id.clone(), n, s.phase));
        Ok(())
    }

    /// One transaction of the step, retried with jittered backoff while its lock is busy.
    fn exec(&mut self, m: &Migration, n: usize, s: &Step) -> Result<u64, MigrateError> {
        let RunOptions {
            lock_timeout, tries, ..
        } = *self.opts;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.conn.exec(&s.sql, lock_timeout) {
                Ok(k) => return Ok(k),
                Err(ExecError::Busy) if attempt < tries => {
                    self.report.retries += 1;
                    let base = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
                    let wait = base / 2 + self.rng.u64(0..=base);
                    (self.log)(&format!(
                        "{} step {n}: lock not free within {lock_timeout:?}; retrying in {wait} ms ({attempt}/{tries})",
                        m.id
                    ));
                    std::thread::sleep(Duration::from_millis(wait));
                }
                Err(ExecError::Busy) => {
                    self.conn.mark(&m.id, n, s, "failed", Some("lock timeout"))?;
                    return Err(MigrateError::LockTimeout {
                        migration: m.id.clone(),
                        step: n,
                        tries,
                        timeout: lock_timeout,
                    });
                }
                Err(ExecError::Other(message)) => {
                    self.conn.mark(&m.id, n, s, "failed", Some(&message))?;
                    return Err(MigrateError::Failed {
                        migration: m.id.clone(),
                        step: n,
                        message,
                    });
                }
            }
        }
    }
}
