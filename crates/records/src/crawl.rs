//! The background crawler: upgrades cold records in keyset batches; resumable, throttled, pausable.
//!
//! A crawl is keyed by `(kind, target)` and its state lives in the store:
//! the cursor `(last_active, key)` of the last record it looked at is saved
//! in the same transaction as the batch's writes, so a crawler killed at any
//! point resumes exactly after the last committed batch, and no record is
//! upgraded twice or skipped. Only records that existed when the crawl
//! started (`id <= max_id`) and that no server touched since
//! (`last_active <= started_at`) are in scope, so a crawl always ends, and
//! records a server holds (a live lease) are left to that server. With a
//! database server the crawler also reclaims the row versions it replaced
//! ([`Backend::tidy`]) in its own background sessions as it goes.
//!
//! [`BatchSizer`] and [`RateLimiter`] are pure: time is passed in.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::backend::{Backend, ScanQuery};
use crate::envelope::{Expect, Write};
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrawlStatus {
    Running,
    Paused,
    Done,
}

impl CrawlStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CrawlStatus::Running => "running",
            CrawlStatus::Paused => "paused",
            CrawlStatus::Done => "done",
        }
    }
}

impl std::str::FromStr for CrawlStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "running" => Ok(CrawlStatus::Running),
            "paused" => Ok(CrawlStatus::Paused),
            "done" => Ok(CrawlStatus::Done),
            _ => Err(format!("unknown crawl status '{s}'")),
        }
    }
}

/// A crawl's persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrawlState {
    pub kind: String,
    pub target: u32,
    pub status: CrawlStatus,
    pub pause_requested: bool,
    pub started_at: i64,
    pub max_id: i64,
    pub cursor_active: i64,
    pub cursor_key: String,
    /// Records below the target when the crawl started.
    pub total: u64,
    pub scanned: u64,
    pub upgraded: u64,
    pub skipped_leased: u64,
    pub conflicts: u64,
    pub failed: u64,
    pub batch_size: u32,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

impl CrawlState {
    /// Records still to look at (an estimate: servers upgrade some meanwhile).
    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.scanned)
    }
}

/// Adapts the batch size so a batch takes about `target` time.
#[derive(Debug, Clone)]
pub struct BatchSizer {
    target: Duration,
    min: usize,
    max: usize,
    size: usize,
}

impl BatchSizer {
    pub fn new(target: Duration, min: usize, max: usize, start: usize) -> BatchSizer {
        BatchSizer {
            target,
            min: min.max(1),
            max: max.max(min.max(1)),
            size: start.clamp(min.max(1), max.max(min.max(1))),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Learns from a batch of `n` records that took `took`: moves halfway
    /// to the size that would have hit the target, at most doubling.
    pub fn observe(&mut self, n: usize, took: Duration) {
        if n == 0 {
            return;
        }
        let per = took.as_secs_f64().max(1e-9) / n as f64;
        let ideal = (self.target.as_secs_f64() / per).max(1.0);
        let next = ((self.size as f64 + ideal) / 2.0).min(self.size as f64 * 2.0);
        self.size = (next.round() as usize).clamp(self.min, self.max);
    }
}

/// Limits records per second; `wait` says how long to sleep before the next batch.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_sec: Option<f64>,
    next: Duration,
}

impl RateLimiter {
    pub fn new(per_sec: Option<f64>) -> RateLimiter {
        RateLimiter {
            per_sec: per_sec.filter(|r| *r > 0.0),
            next: Duration::ZERO,
        }
    }

    /// Accounts `n` records done at `now` (time since the crawler began); any rate and count give
    /// a wait (saturating at `Duration::MAX`), never a panic.
    pub fn wait(&mut self, n: usize, now: Duration) -> Duration {
        let Some(rate) = self.per_sec else {
            return Duration::ZERO;
        };
        let spacing = Duration::try_from_secs_f64(n as f64 / rate).unwrap_or(Duration::MAX);
        self.next = self.next.max(now).saturating_add(spacing);
        self.next.saturating_sub(now)
    }
}

/// Time left at `per_sec`, if known.
pub fn eta(remaining: u64, per_sec: f64) -> Option<Duration> {
    if per_sec > 0.0 {
        Duration::try_from_secs_f64(remaining as f64 / per_sec).ok()
    } else {
        None
    }
}

/// How a crawl runs.
#[derive(Debug, Clone)]
pub struct CrawlOptions {
    /// Aim for batches that take this long (the lock and memory window).
    pub batch_time: Duration,
    pub min_batch: usize,
    pub max_batch: usize,
    pub first_batch: usize,
    /// Records per scan statement with a database server in background
    /// mode: a batch is read in steps this small, so the server process
    /// working for the crawler never holds a CPU for long (a server's read
    /// landing on that CPU waits for the step to end).
    pub step_rows: usize,
    /// Records per second at most (`None`: as fast as the store goes).
    pub rate: Option<f64>,
    /// Recorded as the writer of upgraded records.
    pub writer: String,
    /// How often a paused crawler looks whether it may go on.
    pub pause_poll: Duration,
    /// Run the crawler as background work: its threads in `SCHED_IDLE`.
    /// With a database server (PostgreSQL): its threads at nice 19 on one
    /// CPU (the last), one statement at a time (the next batch is upgraded
    /// while the current one is written, but never read from the database
    /// meanwhile), over sessions of its own whose server processes are put
    /// at nice 19 on the same CPU where it may ([`Backend::background_twin`]),
    /// so the servers' wake-ups find a free CPU.
    pub background: bool,
    /// With a database server in background mode: reclaim the space of the
    /// versions the crawl replaced as it goes ([`Backend::tidy`] every
    /// [`tidy_every`] upgrades and at the end), in the crawler's own lowered
    /// sessions, so the server's autovacuum (normal priority) has nothing
    /// of the crawl's to do.
    pub tidy: bool,
}

/// Upgrades between two tidies of a crawl of `total` records: a tenth of
/// them (half the share of dead rows at which PostgreSQL's autovacuum
/// starts by default, 20%), at least 50,000.
pub fn tidy_every(total: u64) -> u64 {
    (total / 10).max(50_000)
}

impl Default for CrawlOptions {
    fn default() -> Self {
        CrawlOptions {
            batch_time: Duration::from_millis(200),
            min_batch: 10,
            max_batch: 5000,
            first_batch: 100,
            step_rows: 16,
            rate: None,
            writer: "crawler".into(),
            pause_poll: Duration::from_millis(200),
            background: true,
            tidy: true,
        }
    }
}

/// What a progress callback sees after every batch.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub state: &'a CrawlState,
    /// Records looked at per second by this process.
    pub per_sec: f64,
    pub eta: Option<Duration>,
    pub resumed: bool,
}

/// Refuses a crawl that could not run, before anything is stored: a bad or unknown kind, a target
/// outside the kind's chain or above what the write gate lets through, a rate or batch size out of range.
pub fn check<B: Backend>(store: &Store<B>, kind: &str, target: u32, opts: &CrawlOptions) -> Result<(), Error> {
    crate::limits::kind(kind)?;
    crate::limits::crawl_rate(opts.rate)?;
    crate::limits::crawl_batch(opts.min_batch, opts.max_batch)?;
    let ks = store.schema().kind(kind)?;
    ks.knows(target)?;
    let gate = store.gate(kind)?;
    if ks.write_target(target, gate)? != target {
        return Err(Error::Schema(vec![format!(
            "cannot crawl {kind} to version {target}: the write gate is {} and a live release could not read it",
            gate.unwrap_or(0)
        )]));
    }
    Ok(())
}

/// Starts (or resumes) the crawl of `kind` to `target` and runs it until it
/// is done or `stop` is set (then it stays resumable). A worker thread that
/// panics ends the crawl with [`Error::Worker`] (resumable like a kill).
pub fn run<B: Backend>(
    store: &Store<B>,
    kind: &str,
    target: u32,
    opts: &CrawlOptions,
    stop: &AtomicBool,
    progress: &mut (dyn FnMut(&Progress<'_>) + Send),
) -> Result<CrawlState, Error> {
    check(store, kind, target, opts)?;
    let ks = store.schema().kind(kind)?;
    let backend = store.backend();
    let polite = opts.background && backend.out_of_process();
    // With a database server, the crawler's own sessions, lowered like its
    // threads where it may: all its database work goes there, from the
    // first count (a scan of the whole kind) on.
    let twin = if polite { background_twin(backend)? } else { None };
    let db = twin.as_ref().unwrap_or(backend);
    let (state, resumed) = begin(store, db, kind, target, opts)?;
    let sizer = BatchSizer::new(
        opts.batch_time,
        opts.min_batch,
        opts.max_batch,
        state.batch_size as usize,
    );
    let size = AtomicUsize::new(sizer.size());
    let scope = Scope {
        store,
        db,
        kind,
        target,
        min_reader: ks.min_reader(target),
        max_id: state.max_id,
        started_at: state.started_at,
        writer: &opts.writer,
        // An embedded database does its work on the crawler's own (background) threads: one scan per batch.
        step_rows: if polite { opts.step_rows.max(1) } else { usize::MAX },
        db_turn: polite.then(|| std::sync::Mutex::new(())),
    };
    let writer = Writer {
        scope: &scope,
        size: &size,
        opts,
        stop,
        progress,
        sizer,
        limiter: RateLimiter::new(opts.rate),
        began: Instant::now(),
        scanned_at_start: state.scanned,
        tidy: polite && opts.tidy,
        untidy: 0,
        every: tidy_every(state.total),
        resumed,
        state,
    };
    // The next batch is scanned and upgraded on another thread while this
    // one writes the current batch: the cursor of a batch is known before
    // its writes, and is saved only with them.
    std::thread::scope(|sc| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared, Error>>(1);
        let ahead = (writer.state.cursor_active, writer.state.cursor_key.clone());
        let (scope, size, background) = (&scope, &size, opts.background);
        sc.spawn(move || {
            if background {
                background_thread(polite);
            }
            read_ahead(scope, size, ahead, &tx);
        });
        // The writing loop runs on its own thread too, so lowering its
        // priority does not lower the caller's.
        let writing = sc.spawn(move || {
            if background {
                background_thread(polite);
            }
            writer.run(&rx)
        });
        writing
            .join()
            .unwrap_or_else(|p| Err(worker_panicked("writer", p.as_ref())))
    })
}

/// The backend's own lowered-priority sessions for the crawler, where it has them.
fn background_twin<B: Backend>(backend: &B) -> Result<Option<B>, Error> {
    let cpu = plumbing::sched::background_cpu().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "cannot read the crawler's CPUs");
        None
    });
    Ok(backend.background_twin(cpu)?)
}

/// Scans and upgrades batch after batch from `cursor` on, handing each to the writer, until the last (empty) one.
fn read_ahead<B: Backend>(
    scope: &Scope<'_, B>,
    size: &AtomicUsize,
    mut cursor: (i64, String),
    tx: &std::sync::mpsc::SyncSender<Result<Prepared, Error>>,
) {
    loop {
        // The upgraders are the app's code: one that panics ends the crawl with a worker error.
        let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scope.prepare(&cursor, size.load(Ordering::Relaxed))
        }))
        .unwrap_or_else(|p| Err(worker_panicked("reader", p.as_ref())));
        let last = match &batch {
            Ok(p) if p.rows > 0 => Some(p.cursor.clone()),
            _ => None,
        };
        if tx.send(batch).is_err() {
            return;
        }
        match last {
            Some(c) => cursor = c,
            None => return,
        }
    }
}

/// The writing side of a crawl: batches in, compare-and-swap writes and progress out, paced and pausable.
struct Writer<'a, B> {
    scope: &'a Scope<'a, B>,
    size: &'a AtomicUsize,
    opts: &'a CrawlOptions,
    stop: &'a AtomicBool,
    progress: &'a mut (dyn FnMut(&Progress<'_>) + Send),
    sizer: BatchSizer,
    limiter: RateLimiter,
    began: Instant,
    scanned_at_start: u64,
    tidy: bool,
    /// Upgrades since the last tidy, and how many between two.
    untidy: u64,
    every: u64,
    resumed: bool,
    state: CrawlState,
}

impl<B: Backend> Writer<'_, B> {
    fn run(mut self, rx: &std::sync::mpsc::Receiver<Result<Prepared, Error>>) -> Result<CrawlState, Error> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(self.state);
            }
            if self.follow_pause()? {
                std::thread::sleep(self.opts.pause_poll);
                continue;
            }
            let batch_began = Instant::now();
            let batch = rx
                .recv()
                .map_err(|_| Error::Worker("the crawler's reader thread stopped".into()))??;
            if batch.rows == 0 {
                return self.finish();
            }
            let rows = batch.rows;
            self.write(batch)?;
            self.sizer.observe(rows, batch_began.elapsed());
            self.size.store(self.sizer.size(), Ordering::Relaxed);
            let per_sec =
                (self.state.scanned - self.scanned_at_start) as f64 / self.began.elapsed().as_secs_f64().max(1e-3);
            self.report(per_sec, eta(self.state.remaining(), per_sec));
            let wait = self.limiter.wait(rows, self.began.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    }

    fn report(&mut self, per_sec: f64, eta: Option<Duration>) {
        (self.progress)(&Progress {
            state: &self.state,
            per_sec,
            eta,
            resumed: self.resumed,
        });
    }

    /// Takes up a pause asked for (or its end) between batches; whether the crawl is paused.
    fn follow_pause(&mut self) -> Result<bool, Error> {
        let s = self.scope;
        let asked = s.db.crawl(s.kind, s.target)?.is_some_and(|c| c.pause_requested);
        if asked != (self.state.status == CrawlStatus::Paused) {
            self.state.status = if asked {
                CrawlStatus::Paused
            } else {
                CrawlStatus::Running
            };
            self.state.pause_requested = asked;
            self.state.updated_at = s.store.now();
            s.db.write_batch(&[], Some(&mut self.state))?;
            self.report(0.0, None);
        }
        Ok(self.state.status == CrawlStatus::Paused)
    }

    /// Writes a batch with the cursor and counters in the same transaction, then retries its conflicts.
    fn write(&mut self, batch: Prepared) -> Result<(), Error> {
        let s = self.scope;
        let state = &mut self.state;
        state.skipped_leased += batch.skipped;
        state.failed += batch.failed;
        state.scanned += batch.rows as u64;
        (state.cursor_active, state.cursor_key) = batch.cursor;
        state.batch_size = self.size.load(Ordering::Relaxed) as u32;
        state.updated_at = s.store.now();
        let upgraded_before = state.upgraded;
        let results = {
            let _turn = s.db_turn();
            s.db.write_batch(&batch.writes, Some(state))?
        };
        // A server wrote these since the scan; it wrote at its own
        // version, so only a record still below the target is tried again.
        for (w, _) in batch.writes.iter().zip(&results).filter(|(_, r)| r.is_none()) {
            state.conflicts += 1;
            let _turn = s.db_turn();
            if s.retry_one(&w.key)? {
                state.upgraded += 1;
            }
        }
        self.untidy += state.upgraded - upgraded_before;
        if self.tidy && self.untidy >= self.every {
            s.tidy();
            self.untidy = 0;
        }
        Ok(())
    }

    /// The last batch was empty: the crawl is done.
    fn finish(mut self) -> Result<CrawlState, Error> {
        let s = self.scope;
        if self.tidy && self.untidy > 0 {
            s.tidy();
        }
        self.state.status = CrawlStatus::Done;
        self.state.finished_at = Some(s.store.now());
        self.state.updated_at = s.store.now();
        s.db.write_batch(&[], Some(&mut self.state))?;
        self.report(0.0, Some(Duration::ZERO));
        Ok(self.state)
    }
}

/// The error of a crawler thread that panicked, with the panic's message.
fn worker_panicked(thread: &str, payload: &(dyn std::any::Any + Send)) -> Error {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    Error::Worker(format!("the crawler's {thread} thread panicked: {message}"))
}

/// The saved state of the crawl of `kind` to `target` in `db`: the unfinished one, to resume (`true`), or a new
/// one, saved before this returns (so a crawl started in the background shows at once).
pub(crate) fn begin<B: Backend>(
    store: &Store<B>,
    db: &B,
    kind: &str,
    target: u32,
    opts: &CrawlOptions,
) -> Result<(CrawlState, bool), Error> {
    if let Some(s) = db.crawl(kind, target)?.filter(|s| s.status != CrawlStatus::Done) {
        return Ok((s, true));
    }
    let now = store.now();
    let max_id = db.max_id(kind)?;
    let s = CrawlState {
        kind: kind.into(),
        target,
        status: CrawlStatus::Running,
        pause_requested: false,
        started_at: now,
        max_id,
        cursor_active: i64::MIN,
        cursor_key: String::new(),
        total: db.count_below(kind, target, max_id)?,
        scanned: 0,
        upgraded: 0,
        skipped_leased: 0,
        conflicts: 0,
        failed: 0,
        batch_size: opts.first_batch as u32,
        updated_at: now,
        finished_at: None,
    };
    db.put_crawl(&s)?;
    Ok((s, false))
}

/// A scanned and upgraded batch, ready to write.
struct Prepared {
    rows: usize,
    cursor: (i64, String),
    writes: Vec<Write>,
    skipped: u64,
    failed: u64,
}

/// What every batch of one crawl shares.
struct Scope<'a, B> {
    store: &'a Store<B>,
    /// Where the crawler's database work goes: the store's backend or its background twin.
    db: &'a B,
    kind: &'a str,
    target: u32,
    min_reader: u32,
    max_id: i64,
    started_at: i64,
    writer: &'a str,
    step_rows: usize,
    /// Held while the crawler talks to the database (background mode).
    db_turn: Option<std::sync::Mutex<()>>,
}

/// Puts a crawler thread in the background (best effort: a crawler that
/// cannot lower its priority still runs, only less politely). Beside a
/// database server (`one_cpu`): nice 19 on one CPU, where its sessions' server
/// processes are put too; else `SCHED_IDLE` on any CPU (see `plumbing::sched`).
fn background_thread(one_cpu: bool) {
    let lowered = if one_cpu {
        plumbing::sched::nice_this_thread()
    } else {
        plumbing::sched::background_this_thread()
    };
    if let Err(e) = lowered {
        tracing::debug!(error = %e, "crawler thread stays at normal priority");
    }
    if one_cpu && let Err(e) = plumbing::sched::confine_to_one_cpu() {
        tracing::debug!(error = %e, "crawler thread may use every CPU");
    }
}

impl<B: Backend> Scope<'_, B> {
    /// Tidies the table in the crawler's database turn; a failure only
    /// costs the cleanup (autovacuum will do it).
    fn tidy(&self) {
        let _turn = self.db_turn();
        match self.db.tidy() {
            Ok(true) => tracing::debug!(kind = self.kind, "crawler tidied the records table"),
            Ok(false) => tracing::debug!(kind = self.kind, "crawler could not tidy the records table"),
            Err(e) => tracing::warn!(kind = self.kind, error = %e, "crawler could not tidy the records table"),
        }
    }

    /// The crawler's turn at the database, in background mode.
    fn db_turn(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.db_turn
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn write(&self, row: &crate::Stored, payload: Vec<u8>) -> Write {
        Write {
            kind: row.kind.clone(),
            key: row.key.clone(),
            version: self.target,
            min_reader: self.min_reader,
            format: row.format,
            payload,
            writer: self.writer.to_string(),
            expect: Expect::Etag(row.etag),
            last_active: None,
            reader: None,
        }
    }

    /// Scans the next batch after `cursor`, leaves leased records, upgrades the rest.
    fn prepare(&self, cursor: &(i64, String), limit: usize) -> Result<Prepared, Error> {
        let backend = self.db;
        let turn = self.db_turn();
        let mut rows: Vec<crate::Stored> = Vec::with_capacity(limit);
        let mut after = cursor.clone();
        while rows.len() < limit {
            let want = self.step_rows.min(limit - rows.len());
            let step = backend.scan(&ScanQuery {
                kind: self.kind,
                below: self.target,
                max_id: self.max_id,
                active_before: self.started_at,
                after: (after.0, &after.1),
                limit: want,
            })?;
            let got = step.len();
            if let Some(l) = step.last() {
                after = (l.last_active, l.key.clone());
            }
            rows.extend(step);
            if got < want {
                break;
            }
        }
        let Some(last) = rows.last() else {
            return Ok(Prepared {
                rows: 0,
                cursor: cursor.clone(),
                writes: Vec::new(),
                skipped: 0,
                failed: 0,
            });
        };
        let cursor = (last.last_active, last.key.clone());
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let leased = backend.leased(self.kind, &keys, self.store.now())?;
        drop(turn);
        let (mut skipped, mut failed) = (0, 0);
        let mut writes = Vec::with_capacity(rows.len());
        for row in &rows {
            if leased.contains(&row.key) {
                skipped += 1;
                continue;
            }
            match upgrade_row(self.store, row, self.target) {
                Ok(payload) => writes.push(self.write(row, payload)),
                Err(e) => {
                    failed += 1;
                    let key = &row.key;
                    tracing::warn!(kind = self.kind, %key, error = %e, "cannot upgrade a record; left as it is");
                }
            }
        }
        Ok(Prepared {
            rows: rows.len(),
            cursor,
            writes,
            skipped,
            failed,
        })
    }

    /// One record again after a conflict, if it is still below the target.
    fn retry_one(&self, key: &str) -> Result<bool, Error> {
        for _ in 0..5 {
            let Some(row) = self.db.get(self.kind, key)? else {
                return Ok(false);
            };
            if row.version >= self.target {
                return Ok(false);
            }
            let w = self.write(&row, upgrade_row(self.store, &row, self.target)?);
            if self.db.write(&w)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn upgrade_row<B: Backend>(store: &Store<B>, row: &crate::Stored, target: u32) -> Result<Vec<u8>, Error> {
    let view = store.view(row, target)?;
    row.format.encode(&view.value).map_err(Error::Type)
}

/// Asks a running crawl to pause or go on (`slipway records crawl --pause`).
pub fn request_pause<B: Backend>(backend: &B, kind: &str, target: u32, pause: bool) -> Result<(), Error> {
    crate::limits::kind(kind)?;
    if backend.request_pause(kind, target, pause)? {
        Ok(())
    } else {
        Err(Error::NoCrawl {
            kind: kind.into(),
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_size_converges_on_the_target_time() {
        let mut s = BatchSizer::new(Duration::from_millis(200), 10, 10_000, 100);
        // 0.1 ms per record → 2,000 records per 200 ms.
        for _ in 0..20 {
            let n = s.size();
            s.observe(n, Duration::from_micros(100) * n as u32);
        }
        assert!((1900..=2100).contains(&s.size()), "{}", s.size());
        // The store slows down 10×: the size follows.
        for _ in 0..20 {
            let n = s.size();
            s.observe(n, Duration::from_millis(1) * n as u32);
        }
        assert!((190..=210).contains(&s.size()), "{}", s.size());
        s.observe(200, Duration::from_secs(100));
        assert!(s.size() >= 10);
    }

    #[test]
    fn the_rate_limiter_spaces_batches_to_the_rate() {
        let mut r = RateLimiter::new(Some(1000.0));
        let mut now = Duration::ZERO;
        let mut done = 0;
        while now < Duration::from_secs(10) {
            done += 100;
            now += r.wait(100, now) + Duration::from_millis(1);
        }
        // About 10,000 records in 10 s, not more.
        assert!((9_000..=10_100).contains(&done), "{done}");
        assert_eq!(RateLimiter::new(None).wait(1_000_000, now), Duration::ZERO);
    }

    #[test]
    fn the_crawler_tidies_every_tenth_of_a_large_crawl_and_never_more_often_than_every_50000() {
        assert_eq!(tidy_every(100), 50_000);
        assert_eq!(tidy_every(1_000_000), 100_000);
    }

    #[test]
    fn eta_is_remaining_over_rate() {
        assert_eq!(eta(1000, 100.0), Some(Duration::from_secs(10)));
        assert_eq!(eta(1000, 0.0), None);
    }
}
