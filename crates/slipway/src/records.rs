//! `slipway records status|crawl|pause|resume|verify|gate|serve`: the records layer from the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use records::{AnyBackend, Backend, CrawlOptions, CrawlStatus, Schema, Store};

/// Where the records live and how to read them.
#[derive(Debug, Clone)]
pub struct Target {
    pub db: String,
    pub steps: Option<PathBuf>,
}

impl Target {
    fn schema(&self) -> anyhow::Result<Schema> {
        match &self.steps {
            Some(p) => Ok(records::load_steps(p)?),
            None => Ok(Schema::new()),
        }
    }

    fn schema_required(&self, what: &str) -> anyhow::Result<Schema> {
        if self.steps.is_none() {
            bail!("{what} needs the upgraders: --steps FILE (or SLIPWAY_RECORDS_STEPS)");
        }
        self.schema()
    }

    fn open(&self, schema: Schema, writer: &str) -> anyhow::Result<Store<AnyBackend>> {
        let backend = records::open(&self.db)
            .with_context(|| format!("cannot open the records database {}", redact(&self.db)))?;
        Ok(Store::new(backend, schema, writer))
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn fmt_eta(d: Option<Duration>) -> String {
    match d {
        None => "?".into(),
        Some(d) if d.as_secs() >= 3600 => format!("{}h{:02}m", d.as_secs() / 3600, d.as_secs() / 60 % 60),
        Some(d) if d.as_secs() >= 60 => format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60),
        Some(d) => format!("{:.1}s", d.as_secs_f64()),
    }
}

/// Records per kind and version, gates and crawls.
pub fn status(t: &Target, json: bool) -> anyhow::Result<()> {
    let store = t.open(t.schema()?, "cli")?;
    let kinds = records::kinds_status(&store)?;
    let crawls = store.backend().crawls()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"kinds": kinds, "crawls": crawls}))?
        );
        return Ok(());
    }
    if kinds.is_empty() {
        println!("no records in {}", redact(&t.db));
    }
    for k in &kinds {
        let total: u64 = k.versions.iter().map(|v| v.1).sum();
        let known = if k.head > 0 {
            format!(", versions {}..{}", k.first, k.head)
        } else {
            String::new()
        };
        let gate = k.gate.map(|g| format!(", write gate {g}")).unwrap_or_default();
        println!("{}: {total} records{known}{gate}", k.kind);
        for (v, n) in &k.versions {
            let pct = if total > 0 {
                *n as f64 * 100.0 / total as f64
            } else {
                0.0
            };
            println!("  v{v:<4} {n:>12}  {pct:5.1}%");
        }
    }
    for c in &crawls {
        println!(
            "crawl {} → v{}: {} — {}/{} looked at, {} upgraded, {} left to their servers (leased), \
             {} conflicts, {} failed",
            c.kind,
            c.target,
            c.status.as_str(),
            c.scanned,
            c.total,
            c.upgraded,
            c.skipped_leased,
            c.conflicts,
            c.failed
        );
    }
    Ok(())
}

/// Options of `slipway records crawl`.
#[derive(Debug, Clone)]
pub struct CrawlArgs {
    pub kind: String,
    pub to: u32,
    pub rate: Option<f64>,
    pub batch_time: Duration,
    pub max_batch: usize,
    /// Leave the replaced row versions to PostgreSQL's autovacuum.
    pub no_vacuum: bool,
}

/// A flag that a thread sets on the first Ctrl-C.
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            flag.store(true, Ordering::Relaxed);
        }
    });
    stop
}

/// Runs (or resumes) a crawl in the foreground with a progress bar; Ctrl-C stops it resumably.
pub fn crawl(t: &Target, a: &CrawlArgs) -> anyhow::Result<()> {
    let store = t.open(t.schema_required("crawl")?, "crawler")?;
    let stop = stop_on_ctrl_c();
    let opts = CrawlOptions {
        rate: a.rate,
        batch_time: a.batch_time,
        max_batch: a.max_batch,
        tidy: !a.no_vacuum,
        ..CrawlOptions::default()
    };
    let bar = crate::progress_bar(0, "[{bar:30}] {pos}/{len} {msg}");
    let mut last_line = Instant::now() - Duration::from_secs(10);
    let mut announced = false;
    let state = records::run_crawl(&store, &a.kind, a.to, &opts, &stop, &mut |p| {
        let s = p.state;
        if !announced {
            announced = true;
            let how = if p.resumed { "resuming" } else { "starting" };
            let msg = format!(
                "{how} crawl of {} to v{}: {} records below v{} when it started",
                s.kind, s.target, s.total, s.target
            );
            match &bar {
                Some(b) => b.println(msg),
                None => println!("{msg}"),
            }
        }
        let msg = format!(
            "{:.0}/s, batch {}, ETA {}{}",
            p.per_sec,
            s.batch_size,
            fmt_eta(p.eta),
            if s.status == CrawlStatus::Paused {
                " (paused)"
            } else {
                ""
            }
        );
        match &bar {
            Some(b) => {
                b.set_length(s.total.max(s.scanned));
                b.set_position(s.scanned);
                b.set_message(msg);
            }
            None if last_line.elapsed() >= Duration::from_secs(1) || s.status != CrawlStatus::Running => {
                last_line = Instant::now();
                println!("{}/{} looked at, {} upgraded, {msg}", s.scanned, s.total, s.upgraded);
            }
            None => {}
        }
    })?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if state.status != CrawlStatus::Done {
        println!(
            "crawl stopped at {}/{}; run the same command again to resume where it stopped",
            state.scanned, state.total
        );
        return Ok(());
    }
    println!(
        "crawl of {} to v{} done: {} looked at, {} upgraded, {} left to their servers (leased), \
         {} conflicts, {} failed",
        state.kind, state.target, state.scanned, state.upgraded, state.skipped_leased, state.conflicts, state.failed
    );
    if state.failed > 0 {
        bail!(
            "{} records could not be upgraded (see the warnings above)",
            state.failed
        );
    }
    Ok(())
}

/// Asks a running crawl to pause or go on.
pub fn pause(t: &Target, kind: &str, to: u32, pause: bool) -> anyhow::Result<()> {
    let store = t.open(Schema::new(), "cli")?;
    records::request_pause(store.backend(), kind, to, pause)?;
    println!(
        "asked the crawl of {kind} to v{to} to {}",
        if pause { "pause" } else { "resume" }
    );
    Ok(())
}

/// Sets or clears a kind's write gate.
pub fn gate(t: &Target, kind: &str, version: Option<u32>) -> anyhow::Result<()> {
    let store = t.open(t.schema_required("gate")?, "cli")?;
    store.set_gate(kind, version)?;
    match version {
        Some(v) => println!("{kind}: records are written at version {v} or one every live release reads"),
        None => println!("{kind}: no write gate"),
    }
    Ok(())
}

/// Decodes every record with every live reader version; fails listing what does not.
pub fn verify(t: &Target, readers: &[(String, u32)]) -> anyhow::Result<()> {
    let schema = t.schema_required("verify")?;
    let store = t.open(schema.clone(), "verify")?;
    let gates = store.backend().gates()?;
    let mut problems = Vec::new();
    let mut checked = 0u64;
    for k in schema.kinds() {
        let mut versions: Vec<u32> = readers
            .iter()
            .filter(|(kind, _)| kind == k.kind())
            .map(|r| r.1)
            .collect();
        if versions.is_empty() {
            versions.push(k.head());
            versions.extend(gates.get(k.kind()).filter(|g| **g < k.head()));
        }
        let mut after = 0;
        loop {
            let page = store.backend().page(k.kind(), after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for s in &page {
                checked += 1;
                for &r in &versions {
                    match store.view(s, r) {
                        Ok(v) => {
                            for p in k.check_fields(v.version, &v.value) {
                                problems.push(format!("{}/{} read as v{r}: {p}", s.kind, s.key));
                            }
                        }
                        Err(e) => problems.push(format!("{}/{} read as v{r}: {e}", s.kind, s.key)),
                    }
                }
            }
        }
        println!("{}: checked with reader versions {:?}", k.kind(), versions);
    }
    if problems.is_empty() {
        println!("verified {checked} records: every one decodes with every live reader");
        return Ok(());
    }
    for p in problems.iter().take(50) {
        eprintln!("  {p}");
    }
    bail!("{} problems in {checked} records (first 50 above)", problems.len())
}

/// Serves the records HTTP API until Ctrl-C or SIGTERM.
pub async fn serve(t: &Target, listen: &str, token_file: &Path) -> anyhow::Result<()> {
    let schema = t.schema_required("serve")?;
    let listen =
        plumbing::api::Listen::parse(listen, Path::new("."), "--listen").map_err(|p| anyhow::anyhow!("{p}"))?;
    let token = plumbing::fs::secret_file(token_file, plumbing::fs::new_token)?;
    let t2 = t.clone();
    let store = tokio::task::spawn_blocking(move || t2.open(schema, "records-service")).await??;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (addr, task) = records::serve(store, token, &listen, stop_rx).await?;
    println!("records service on {addr} (token in {})", token_file.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = stop_tx.send(true);
    let _ = task.await;
    Ok(())
}

/// Parses `kind=version`.
pub fn parse_reader(s: &str) -> Result<(String, u32), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("'{s}' is not KIND=VERSION"))?;
    let v = v.parse().map_err(|_| format!("'{v}' is not a version number"))?;
    Ok((k.to_string(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact("postgres://u:secret@h:5/db"), "postgres://u:***@h:5/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:a.db"), "sqlite:a.db");
    }
}
