//! The PostgreSQL backend: a small pool of clients with prepared statements, one transaction per batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use super::cols::{self, Val};
use super::{Backend, ScanQuery, StorageError, VersionCount, sql};
use crate::crawl::CrawlState;
use crate::envelope::{Expect, Stored, Write};

/// Advisory lock key that serialises table creation between processes.
const SCHEMA_LOCK: i64 = 0x5_1_1_9_7_4_0_1;

struct Conn {
    client: Client,
    stmts: HashMap<String, Statement>,
}

impl Conn {
    fn st(&mut self, q: &str) -> Result<Statement, StorageError> {
        if let Some(s) = self.stmts.get(q) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&sql::pg(q))?;
        self.stmts.insert(q.to_string(), s.clone());
        Ok(s)
    }
}

/// Records in a PostgreSQL database.
pub struct PgBackend {
    url: String,
    pool: Mutex<Vec<Conn>>,
    /// Set on a background twin: its sessions are lowered as they connect.
    background: Option<Lowering>,
    /// The ids of the records the last crawl batch replaced, whose pages the
    /// next crawl batch prunes ([`PRUNE`]).
    replaced: Mutex<Vec<i64>>,
    /// Opened to look only (`open_read_only`).
    read_only: bool,
}

/// Reads back, first thing in a crawl batch's transaction, the records the
/// previous batch replaced. Reading a page is when PostgreSQL prunes the dead
/// row versions on it (if the page is nearly full), and a transaction that
/// only read but pruned commits its WAL asynchronously: it wakes the WAL
/// writer, which then writes out all the crawl's WAL so far, at normal
/// priority, on the CPU where that read ran. Left to the servers' reads,
/// every second read or so during a crawl did that (at 1,000 reads/s, 500
/// wake-ups a second; the WAL writer was in two thirds of the servers' slow
/// reads, measured with `bench/records/trace.sh`). Done here, the pruning is
/// part of the crawl's own transaction, flushed by its commit from its own
/// lowered session. By id: the smallest index, and it reaches the old version
/// of a record that moved to another page as well as the new one.
const PRUNE: &str = "SELECT count(*) FROM records WHERE id = ANY(?1::int8[])";

/// The `application_name` of a background twin's sessions.
pub const BACKGROUND_APP: &str = "slipway background";

/// How a background twin lowers its sessions' server processes.
struct Lowering {
    cpu: Option<usize>,
    /// Whether the outcome was logged (once per twin, not per connection).
    told: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PgBackend").finish_non_exhaustive()
    }
}

fn refs<'a>(params: &'a [Val<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn all<T>(rows: Vec<Row>, f: fn(&Row) -> Result<T, postgres::Error>) -> Result<Vec<T>, StorageError> {
    Ok(rows.iter().map(f).collect::<Result<Vec<_>, _>>()?)
}

impl PgBackend {
    /// Connects and creates the tables (serialised with an advisory lock).
    pub fn open(url: &str) -> Result<PgBackend, StorageError> {
        let backend = PgBackend {
            url: url.to_string(),
            pool: Mutex::new(Vec::new()),
            background: None,
            replaced: Mutex::default(),
            read_only: false,
        };
        let mut c = backend.connect()?;
        c.client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])?;
        let made = c
            .client
            .batch_execute(&cols::schema("BIGSERIAL PRIMARY KEY", "BIGINT", "BYTEA"));
        c.client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])?;
        made?;
        backend.pool.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        Ok(backend)
    }

    /// Connects to look only: no table is made, and every session is read-only
    /// (`default_transaction_read_only`), so any write fails.
    pub fn open_read_only(url: &str) -> Result<PgBackend, StorageError> {
        let backend = PgBackend {
            url: url.to_string(),
            pool: Mutex::new(Vec::new()),
            background: None,
            replaced: Mutex::default(),
            read_only: true,
        };
        let c = backend.connect()?;
        backend.pool.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        Ok(backend)
    }

    fn connect(&self) -> Result<Conn, StorageError> {
        let mut client = Client::connect(&self.url, NoTls)?;
        if self.read_only {
            client.batch_execute("SET default_transaction_read_only = on")?;
        }
        if let Some(l) = &self.background {
            // Named, so an operator sees it in pg_stat_activity; and no
            // parallel query, whose worker processes would run unlowered.
            client.batch_execute(&format!(
                "SET application_name = '{BACKGROUND_APP}'; SET max_parallel_workers_per_gather = 0"
            ))?;
            let outcome = lower_session(&mut client, l.cpu);
            if !l.told.swap(true, std::sync::atomic::Ordering::Relaxed) {
                match outcome {
                    Ok(pid) => {
                        tracing::info!(pid, cpu = ?l.cpu, "the crawler's PostgreSQL sessions run as background work")
                    }
                    Err(why) => tracing::info!(
                        "the crawler's PostgreSQL sessions stay at normal priority ({why}); to lower them, run the \
                         crawler as the database's OS user or give it CAP_SYS_NICE"
                    ),
                }
            }
        }
        Ok(Conn {
            client,
            stmts: HashMap::new(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let taken = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut c = match taken {
            Some(c) => c,
            None => self.connect()?,
        };
        let out = f(&mut c);
        if !c.client.is_closed() {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 16 {
                pool.push(c);
            }
        }
        out
    }

    fn rows(&self, q: &str, params: &[Val<'_>]) -> Result<Vec<Row>, StorageError> {
        self.with(|c| {
            let st = c.st(q)?;
            Ok(c.client.query(&st, &refs(params))?)
        })
    }

    fn exec(&self, q: &str, params: &[Val<'_>]) -> Result<u64, StorageError> {
        self.with(|c| {
            let st = c.st(q)?;
            Ok(c.client.execute(&st, &refs(params))?)
        })
    }
}

/// Whether every host of a connection URL is this machine (a Unix socket or loopback).
fn on_this_host(url: &str) -> bool {
    let Ok(config) = url.parse::<postgres::Config>() else {
        return false;
    };
    let hosts = config.get_hosts();
    !hosts.is_empty()
        && hosts.iter().all(|h| match h {
            postgres::config::Host::Unix(_) => true,
            postgres::config::Host::Tcp(name) => {
                name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        })
}

/// Lowers the server process of a session on this host (nice 19, on `cpu`),
/// after checking that the process with the session's pid is that session:
/// a PostgreSQL process whose title names the session's client port (or a
/// Unix socket client). Returns the pid, or why it could not.
fn lower_session(client: &mut Client, cpu: Option<usize>) -> Result<u32, String> {
    let row = client
        .query_one("SELECT pg_backend_pid(), inet_client_port()", &[])
        .map_err(|e| format!("cannot ask for the session's process: {}", StorageError::from(e)))?;
    let (pid, port): (i32, Option<i32>) = (row.get(0), row.get(1));
    let pid = u32::try_from(pid).map_err(|_| format!("the server gave pid {pid}"))?;
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| format!("no process {pid} here: {e}"))?;
    let title = String::from_utf8_lossy(&title);
    let client_mark = match port {
        Some(port) => format!("({port})"),
        None => "[local]".to_string(),
    };
    if !title.starts_with("postgres") || !title.contains(&client_mark) {
        return Err(format!("process {pid} here is not this session"));
    }
    plumbing::sched::lower_process(pid, cpu).map_err(|e| format!("cannot lower process {pid}: {e}"))?;
    Ok(pid)
}

/// Up to `BULK_ROWS` writes of a batch as one statement: one round trip
/// instead of one per record, and a short stretch of work for the server
/// process (about half a millisecond for 2 KB records), so a server's read
/// that lands on the same CPU waits at most that long — the server process
/// is not preempted mid-statement on a kernel without full preemption, and
/// one long statement would hold the CPU for a whole scheduler tick and more.
/// Same compare-and-swap as `sql::UPDATE`.
const BULK_ROWS: usize = 16;
const BULK_UPDATE: &str = "UPDATE records AS r SET version = u.version, min_reader = u.min_reader, \
    format = u.format, payload = u.payload, etag = r.etag + 1, last_active = COALESCE(u.last_active, r.last_active), \
    writer = u.writer \
    FROM unnest(?1::text[], ?2::text[], ?3::int8[], ?4::int8[], ?5::int8[], ?6::bytea[], ?7::int8[], ?8::text[], \
    ?9::int8[], ?10::int8[]) WITH ORDINALITY \
    AS u(kind, key, version, min_reader, format, payload, etag, writer, last_active, reader, i) \
    WHERE r.kind = u.kind AND r.key = u.key AND r.etag = u.etag \
    AND (u.reader IS NULL OR r.version <= u.reader OR r.min_reader <= u.reader) \
    RETURNING u.i, r.etag, r.id";

/// Whether a batch can go as one `BULK_UPDATE`: several CAS updates, no record twice.
fn bulk_updates(ws: &[Write]) -> bool {
    let mut seen = HashSet::with_capacity(ws.len());
    ws.len() > 1
        && ws
            .iter()
            .all(|w| matches!(w.expect, Expect::Etag(_)) && seen.insert((w.kind.as_str(), w.key.as_str())))
}

/// Runs one `BULK_UPDATE`; the new etags in write order, and the ids of the
/// records written pushed onto `ids`.
fn bulk_update(
    tx: &mut postgres::Transaction<'_>,
    st: &Statement,
    ws: &[Write],
    ids: &mut Vec<i64>,
) -> Result<Vec<Option<i64>>, StorageError> {
    let col = |f: fn(&Write) -> i64| ws.iter().map(f).collect::<Vec<i64>>();
    let kinds: Vec<&str> = ws.iter().map(|w| w.kind.as_str()).collect();
    let keys: Vec<&str> = ws.iter().map(|w| w.key.as_str()).collect();
    let payloads: Vec<&[u8]> = ws.iter().map(|w| w.payload.as_slice()).collect();
    let writers: Vec<&str> = ws.iter().map(|w| w.writer.as_str()).collect();
    let etag = |w: &Write| match w.expect {
        Expect::Etag(e) => e,
        Expect::Absent => unreachable!("bulk_updates checked"),
    };
    let last_active: Vec<Option<i64>> = ws.iter().map(|w| w.last_active).collect();
    let readers: Vec<Option<i64>> = ws.iter().map(|w| w.reader.map(i64::from)).collect();
    let rows = tx.query(
        st,
        &[
            &kinds,
            &keys,
            &col(|w| w.version.into()),
            &col(|w| w.min_reader.into()),
            &col(|w| w.format.code()),
            &payloads,
            &col(etag),
            &writers,
            &last_active,
            &readers,
        ],
    )?;
    // `i` numbers the writes from 1 in the order sent.
    let mut out = vec![None; ws.len()];
    for r in &rows {
        let i = r.try_get::<_, i64>(0)? as usize;
        out[i - 1] = Some(r.try_get::<_, i64>(1)?);
        ids.push(r.try_get(2)?);
    }
    Ok(out)
}

impl Backend for PgBackend {
    fn get(&self, kind: &str, key: &str) -> Result<Option<Stored>, StorageError> {
        Ok(all(self.rows(sql::GET, &[kind.into(), key.into()])?, cols::stored)?.pop())
    }

    fn write_batch(&self, ws: &[Write], crawl: Option<&mut CrawlState>) -> Result<Vec<Option<i64>>, StorageError> {
        self.with(|c| {
            let insert = c.st(sql::INSERT)?;
            let update = c.st(sql::UPDATE)?;
            let progress = c.st(sql::SAVE_PROGRESS)?;
            let bulk = if bulk_updates(ws) {
                Some(c.st(BULK_UPDATE)?)
            } else {
                None
            };
            let crawling = crawl.is_some();
            let prune = if crawling { Some(c.st(PRUNE)?) } else { None };
            let mut tx = c.client.transaction()?;
            if let Some(prune) = prune {
                let mut ids = std::mem::take(&mut *self.replaced.lock().unwrap_or_else(|p| p.into_inner()));
                if !ids.is_empty() {
                    ids.sort_unstable();
                    tx.query_one(&prune, &[&ids])?;
                }
            }
            let mut out = Vec::with_capacity(ws.len());
            let mut written = Vec::new();
            if let Some(bulk) = bulk {
                for part in ws.chunks(BULK_ROWS) {
                    out.extend(bulk_update(&mut tx, &bulk, part, &mut written)?);
                }
            } else {
                for w in ws {
                    out.push(match w.expect {
                        Expect::Absent => {
                            let n = tx.execute(&insert, &refs(&cols::write_params(w, None)))?;
                            (n == 1).then_some(1)
                        }
                        Expect::Etag(etag) => tx
                            .query_opt(&update, &refs(&cols::write_params(w, Some(etag))))?
                            .map(|r| r.get(0)),
                    });
                }
            }
            if let Some(s) = crawl {
                s.upgraded += out.iter().filter(|r| r.is_some()).count() as u64;
                tx.execute(&progress, &refs(&cols::progress_params(s)))?;
            }
            tx.commit()?;
            if crawling {
                *self.replaced.lock().unwrap_or_else(|p| p.into_inner()) = written;
            }
            Ok(out)
        })
    }

    fn scan(&self, q: &ScanQuery<'_>) -> Result<Vec<Stored>, StorageError> {
        all(self.rows(sql::SCAN, &sql::scan_params(q))?, cols::stored)
    }

    fn page(&self, kind: &str, after_id: i64, limit: usize) -> Result<Vec<Stored>, StorageError> {
        all(
            self.rows(sql::PAGE, &[kind.into(), after_id.into(), (limit as i64).into()])?,
            cols::stored,
        )
    }

    fn max_id(&self, kind: &str) -> Result<i64, StorageError> {
        Ok(self.rows(sql::MAX_ID, &[kind.into()])?[0].try_get(0)?)
    }

    fn count_below(&self, kind: &str, below: u32, max_id: i64) -> Result<u64, StorageError> {
        let rows = self.rows(sql::COUNT_BELOW, &[kind.into(), below.into(), max_id.into()])?;
        Ok(rows[0].try_get::<_, i64>(0)? as u64)
    }

    fn counts(&self) -> Result<Vec<VersionCount>, StorageError> {
        all(self.rows(sql::COUNTS, &[])?, |r| {
            Ok(VersionCount {
                kind: r.try_get(0)?,
                version: r.try_get::<_, i64>(1)? as u32,
                records: r.try_get::<_, i64>(2)? as u64,
            })
        })
    }

    fn lease(&self, kind: &str, key: &str, holder: &str, until: i64, now: i64) -> Result<bool, StorageError> {
        Ok(self.exec(
            sql::LEASE,
            &[kind.into(), key.into(), holder.into(), until.into(), now.into()],
        )? == 1)
    }

    fn unlease(&self, kind: &str, key: &str, holder: &str) -> Result<(), StorageError> {
        self.exec(sql::UNLEASE, &[kind.into(), key.into(), holder.into()])
            .map(|_| ())
    }

    fn leased(&self, kind: &str, keys: &[&str], now: i64) -> Result<HashSet<String>, StorageError> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        self.with(|c| {
            let st = c.st("SELECT key FROM record_leases WHERE kind = ?1 AND key = ANY(?2) AND expires > ?3")?;
            let rows = c.client.query(&st, &[&kind, &keys, &now])?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }

    fn gates(&self) -> Result<BTreeMap<String, u32>, StorageError> {
        Ok(all(self.rows(sql::GATES, &[])?, |r| {
            Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)? as u32))
        })?
        .into_iter()
        .collect())
    }

    fn set_gate(&self, kind: &str, version: Option<u32>) -> Result<(), StorageError> {
        match version {
            Some(v) => self.exec(sql::SET_GATE, &[kind.into(), v.into()])?,
            None => self.exec(sql::DEL_GATE, &[kind.into()])?,
        };
        Ok(())
    }

    fn crawl(&self, kind: &str, target: u32) -> Result<Option<CrawlState>, StorageError> {
        Ok(all(
            self.rows(&sql::crawl_select(true), &[kind.into(), target.into()])?,
            cols::crawl,
        )?
        .pop())
    }

    fn crawls(&self) -> Result<Vec<CrawlState>, StorageError> {
        all(self.rows(&sql::crawl_select(false), &[])?, cols::crawl)
    }

    fn put_crawl(&self, s: &CrawlState) -> Result<(), StorageError> {
        self.exec(sql::PUT_CRAWL, &cols::crawl_params(s)).map(|_| ())
    }

    fn request_pause(&self, kind: &str, target: u32, pause: bool) -> Result<bool, StorageError> {
        Ok(self.exec(sql::REQUEST_PAUSE, &[kind.into(), target.into(), (pause as i64).into()])? == 1)
    }

    fn out_of_process(&self) -> bool {
        true
    }

    fn tidy(&self) -> Result<bool, StorageError> {
        self.with(|c| {
            // VACUUM needs the table's owner (a non-owner gets a warning and nothing done).
            let owner: bool = c
                .client
                .query_one(
                    "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = 'records'::regclass",
                    &[],
                )?
                .try_get(0)?;
            if !owner {
                return Ok(false);
            }
            // Never queue behind a migration's lock for long; no parallel
            // workers, which would run at normal priority.
            c.client.batch_execute("SET lock_timeout = '2s'")?;
            let done = c.client.batch_execute("VACUUM (ANALYZE, PARALLEL 0) records");
            c.client.batch_execute("RESET lock_timeout")?;
            match done {
                Ok(()) => Ok(true),
                Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn background_twin(&self, cpu: Option<usize>) -> Result<Option<Self>, StorageError> {
        if !on_this_host(&self.url) {
            return Ok(None);
        }
        Ok(Some(PgBackend {
            url: self.url.clone(),
            pool: Mutex::new(Vec::new()),
            background: Some(Lowering {
                cpu,
                told: std::sync::atomic::AtomicBool::new(false),
            }),
            replaced: Mutex::default(),
            read_only: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::on_this_host;

    #[test]
    fn only_a_unix_socket_or_loopback_server_is_on_this_host() {
        for here in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]:5432/db",
            "host=/var/run/postgresql user=u dbname=db",
        ] {
            assert!(on_this_host(here), "{here}");
        }
        for elsewhere in [
            "postgres://u@10.1.2.3:5432/db",
            "postgres://u@db.example.com/db",
            "postgres://u@127.0.0.1,db.example.com/db",
            "not a url",
        ] {
            assert!(!on_this_host(elsewhere), "{elsewhere}");
        }
    }
}
