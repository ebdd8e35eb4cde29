//! The Data page: records per kind and schema version, crawls with their ETA, write gates and the migration
//! ledger, as the backend read them (plain values: the dashboard does not depend on the records crate).

use std::fmt::Write;
use std::time::Duration;

use crate::html::{dur, esc, table};

/// What the records and migration databases hold, read for the Data page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataStatus {
    /// Per record kind, how many records are stored at each version.
    pub kinds: Vec<KindCounts>,
    /// Every crawl the records database knows, running, paused or done.
    pub crawls: Vec<CrawlView>,
    /// Every migration step with its ledger status.
    pub ledger: Vec<LedgerStep>,
    /// What could not be read, in words (a database that does not open, a bad migrations folder).
    pub problems: Vec<String>,
}

/// One record kind: its write gate, what each live release reads, and records per version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub kind: String,
    /// The newest version writers may store (what every live release reads), if set.
    pub gate: Option<u32>,
    /// `(release, version it reads)` from the live releases' manifests.
    pub readers: Vec<(String, u32)>,
    /// `(version, records)`, ascending by version.
    pub versions: Vec<(u32, u64)>,
}

impl KindCounts {
    /// The schema versions of the kind in play: from the oldest to the newest that a live release's code knows (the
    /// stored versions when no live release declares the kind).
    pub fn schema_range(&self) -> Option<(u32, u32)> {
        let known = self.readers.iter().map(|r| r.1);
        let versions: Vec<u32> = match self.readers.is_empty() {
            false => known.collect(),
            true => self.versions.iter().map(|v| v.0).collect(),
        };
        Some((*versions.iter().min()?, *versions.iter().max()?))
    }
}

/// Where a crawl stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrawlPhase {
    Running,
    Paused,
    Done,
}

impl CrawlPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            CrawlPhase::Running => "running",
            CrawlPhase::Paused => "paused",
            CrawlPhase::Done => "done",
        }
    }
}

/// A crawl's persisted progress (times in Unix milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrawlView {
    pub kind: String,
    pub target: u32,
    pub phase: CrawlPhase,
    pub pause_requested: bool,
    /// Records below the target when the crawl started.
    pub total: u64,
    pub scanned: u64,
    pub upgraded: u64,
    pub skipped_leased: u64,
    pub conflicts: u64,
    pub failed: u64,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
}

impl CrawlView {
    /// Records looked at per second since the crawl started, if any time has passed.
    pub fn per_sec(&self) -> Option<f64> {
        let secs = (self.updated_ms - self.started_ms) as f64 / 1000.0;
        (secs > 0.0 && self.scanned > 0).then(|| self.scanned as f64 / secs)
    }

    /// Time left at the average rate so far: zero when done, `None` when paused or not yet measurable.
    pub fn eta(&self) -> Option<Duration> {
        match self.phase {
            CrawlPhase::Done => Some(Duration::ZERO),
            CrawlPhase::Paused => None,
            CrawlPhase::Running => {
                let left = self.total.saturating_sub(self.scanned);
                Duration::try_from_secs_f64(left as f64 / self.per_sec()?).ok()
            }
        }
    }
}

/// When a migration step may run relative to a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPhase {
    Expand,
    Backfill,
    Contract,
}

impl StepPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            StepPhase::Expand => "expand",
            StepPhase::Backfill => "backfill",
            StepPhase::Contract => "contract",
        }
    }
}

/// A migration step's state in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// Not in the ledger: it has not run.
    Pending,
    Running,
    Done,
    Failed,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Failed => "failed",
        }
    }
}

/// One step of a migration as the ledger has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerStep {
    pub migration: String,
    /// From 1.
    pub step: usize,
    pub phase: StepPhase,
    pub state: StepState,
    /// "release uses table.column": live releases that keep a contract step waiting.
    pub blocked_by: Vec<String>,
}

/// A duration as the page shows it (sub-second ETAs read as "<1s").
fn eta_text(c: &CrawlView) -> String {
    match (c.phase, c.eta()) {
        (CrawlPhase::Done, _) => "done".into(),
        (CrawlPhase::Paused, _) => "paused".into(),
        (CrawlPhase::Running, None) => "not yet known".into(),
        (CrawlPhase::Running, Some(d)) if d < Duration::from_secs(1) => "<1s".into(),
        (CrawlPhase::Running, Some(d)) => dur(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

fn kinds(d: &DataStatus) -> String {
    let mut out = String::from("<h2>Records per kind and version</h2>");
    if d.kinds.is_empty() {
        out.push_str("<p class=\"none\" id=\"no-kinds\">no records (or [data] records is not set)</p>");
        return out;
    }
    let rows: Vec<Vec<String>> = d
        .kinds
        .iter()
        .flat_map(|k| {
            let total: u64 = k.versions.iter().map(|v| v.1).sum();
            k.versions.iter().map(move |&(v, n)| {
                let pct = if total > 0 {
                    n as f64 * 100.0 / total as f64
                } else {
                    0.0
                };
                vec![
                    esc(&k.kind),
                    format!("<span data-kind=\"{}\" data-version=\"{v}\">v{v}</span>", esc(&k.kind)),
                    format!("<span data-count=\"{n}\">{n}</span>"),
                    format!("{pct:.1}%"),
                ]
            })
        })
        .collect();
    out.push_str(&table("kinds", &["kind", "version", "records", "share"], &rows));
    out
}

fn crawls(d: &DataStatus) -> String {
    let mut out = String::from("<h2>Crawls</h2>");
    let rows: Vec<Vec<String>> = d
        .crawls
        .iter()
        .map(|c| {
            let max = c.total.max(c.scanned).max(1);
            let rate = c.per_sec().map(|r| format!("{r:.0}/s")).unwrap_or_else(|| "–".into());
            let asked = if c.pause_requested && c.phase == CrawlPhase::Running {
                " (pause asked)"
            } else {
                ""
            };
            vec![
                format!("{} → v{}", esc(&c.kind), c.target),
                format!("<span class=\"crawl-{p}\">{p}</span>{asked}", p = c.phase.as_str()),
                format!(
                    "<progress max=\"{max}\" value=\"{}\"></progress> {}/{}",
                    c.scanned, c.scanned, c.total
                ),
                format!(
                    "{} upgraded, {} leased, {} conflicts, {} failed",
                    c.upgraded, c.skipped_leased, c.conflicts, c.failed
                ),
                rate,
                format!("<span class=\"eta\">{}</span>", esc(&eta_text(c))),
            ]
        })
        .collect();
    out.push_str(&table(
        "crawls",
        &["crawl", "state", "looked at", "outcome", "rate", "ETA"],
        &rows,
    ));
    out
}

fn gates(d: &DataStatus) -> String {
    let mut out = String::from("<h2>Write gates</h2>");
    let rows: Vec<Vec<String>> = d
        .kinds
        .iter()
        .map(|k| {
            let gate = k
                .gate
                .map(|g| format!("<span data-gate=\"{g}\">v{g}</span>"))
                .unwrap_or_else(|| "none".into());
            let readers = k
                .readers
                .iter()
                .map(|(r, v)| format!("{} reads v{v}", esc(r)))
                .collect::<Vec<_>>()
                .join(", ");
            let range = match k.schema_range() {
                Some((lo, hi)) if lo == hi => format!("<span data-range=\"{lo}-{hi}\">v{lo}</span>"),
                Some((lo, hi)) => format!("<span data-range=\"{lo}-{hi}\">v{lo}–v{hi}</span>"),
                None => "none".into(),
            };
            let newest = k.versions.iter().map(|v| v.0).max();
            let beyond = match (k.schema_range(), newest) {
                (Some((_, hi)), Some(n)) if n > hi && !k.readers.is_empty() => {
                    format!(" <span class=\"fail\">v{n} stored: newer than any live release knows</span>")
                }
                _ => String::new(),
            };
            vec![esc(&k.kind), format!("{range}{beyond}"), gate, readers]
        })
        .collect();
    out.push_str(&table(
        "gates",
        &["kind", "schema versions", "write gate", "live readers"],
        &rows,
    ));
    out
}

fn ledger(d: &DataStatus) -> String {
    let mut out = String::from("<h2>Migration ledger</h2>");
    let rows: Vec<Vec<String>> = d
        .ledger
        .iter()
        .map(|s| {
            vec![
                esc(&s.migration),
                s.step.to_string(),
                s.phase.as_str().to_string(),
                format!("<span class=\"step-{st}\">{st}</span>", st = s.state.as_str()),
                esc(&s.blocked_by.join(", ")),
            ]
        })
        .collect();
    out.push_str(&table(
        "ledger",
        &["migration", "step", "phase", "status", "waiting for"],
        &rows,
    ));
    out
}

fn problems(d: &DataStatus) -> String {
    let mut out = String::new();
    for p in &d.problems {
        let _ = write!(out, "<p class=\"fail\">{}</p>", esc(p));
    }
    out
}

/// The Data page's live sections from what the backend read.
pub(crate) fn sections(d: &DataStatus) -> Vec<(&'static str, String)> {
    vec![
        ("data-problems", problems(d)),
        ("data-kinds", kinds(d)),
        ("data-crawls", crawls(d)),
        ("data-gates", gates(d)),
        ("data-ledger", ledger(d)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crawl(phase: CrawlPhase, scanned: u64, secs: i64) -> CrawlView {
        CrawlView {
            kind: "player".into(),
            target: 2,
            phase,
            pause_requested: false,
            total: 1000,
            scanned,
            upgraded: scanned,
            skipped_leased: 0,
            conflicts: 0,
            failed: 0,
            started_ms: 10_000,
            updated_ms: 10_000 + secs * 1000,
            finished_ms: None,
        }
    }

    #[test]
    fn the_eta_is_what_is_left_at_the_rate_so_far() {
        // 250 in 10 s is 25/s; 750 left take 30 s.
        assert_eq!(crawl(CrawlPhase::Running, 250, 10).eta(), Some(Duration::from_secs(30)));
        assert_eq!(eta_text(&crawl(CrawlPhase::Running, 250, 10)), "30s");
        assert_eq!(crawl(CrawlPhase::Done, 1000, 40).eta(), Some(Duration::ZERO));
        assert_eq!(eta_text(&crawl(CrawlPhase::Paused, 250, 10)), "paused");
    }

    #[test]
    fn a_crawl_with_no_time_or_no_progress_has_no_eta_yet() {
        assert_eq!(crawl(CrawlPhase::Running, 0, 10).eta(), None);
        assert_eq!(crawl(CrawlPhase::Running, 10, 0).eta(), None);
        assert_eq!(
            crawl(CrawlPhase::Running, 10, -5).per_sec(),
            None,
            "a clock that went back"
        );
        assert_eq!(eta_text(&crawl(CrawlPhase::Running, 0, 10)), "not yet known");
    }

    #[test]
    fn the_data_page_showed_no_schema_version_range_per_kind() {
        let k = |readers: Vec<(&str, u32)>, versions: Vec<(u32, u64)>| KindCounts {
            kind: "player".into(),
            gate: Some(1),
            readers: readers.into_iter().map(|(r, v)| (r.to_string(), v)).collect(),
            versions,
        };
        assert_eq!(k(vec![("v1", 1), ("v2", 3)], vec![(1, 5)]).schema_range(), Some((1, 3)));
        assert_eq!(
            k(vec![], vec![(2, 5), (4, 1)]).schema_range(),
            Some((2, 4)),
            "no live reader: what is stored"
        );
        assert_eq!(k(vec![], vec![]).schema_range(), None);
        let d = DataStatus {
            kinds: vec![k(vec![("v1", 1), ("v2", 3)], vec![(1, 5), (4, 2)])],
            ..Default::default()
        };
        let html: String = sections(&d).into_iter().map(|s| s.1).collect();
        assert!(html.contains("<span data-range=\"1-3\">v1–v3</span>"), "{html}");
        assert!(html.contains("v4 stored: newer than any live release knows"), "{html}");
    }

    #[test]
    fn kind_and_release_names_are_escaped() {
        let d = DataStatus {
            kinds: vec![KindCounts {
                kind: "<b>".into(),
                gate: Some(1),
                readers: vec![("v<1>".into(), 1)],
                versions: vec![(1, 3)],
            }],
            ..Default::default()
        };
        let html: String = sections(&d).into_iter().map(|s| s.1).collect();
        assert!(!html.contains("<b>") && !html.contains("v<1>"));
        assert!(html.contains("&lt;b&gt;") && html.contains("v&lt;1&gt; reads v1"));
    }
}
