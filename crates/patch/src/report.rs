//! The patch-size report of a publish: for a fresh install and each upgrade path from the last
//! releases, the bytes to download (chunks and deltas), files changed, content changed, and warnings
//! naming the files that download much more than changed.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::plan::{self, Action, Local};

/// A path warns when it downloads more than this many times the bytes that changed.
pub const WARN_RATIO: f64 = 2.0;
/// ... and at least this much more (small paths never warn).
const WARN_MIN_EXCESS: u64 = 256 << 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub seq: u64,
    pub release: String,
    /// Bytes of content in the release.
    pub content_bytes: u64,
    pub files: u64,
    /// Bytes this publish added to the packs.
    pub stored_bytes: u64,
    pub publish_secs: f64,
    pub paths: Vec<PathReport>,
    pub warnings: Vec<String>,
}

/// One upgrade path.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathReport {
    /// `None`: a fresh install.
    pub from: Option<u64>,
    pub from_release: Option<String>,
    pub download: u64,
    pub chunk_bytes: u64,
    pub delta_bytes: u64,
    pub files_changed: u64,
    /// Bytes of new content not found in the old release (4 KiB content-defined grain).
    pub changed_bytes: u64,
    /// download / changed_bytes.
    pub ratio: f64,
    /// The files with the largest downloads, most first (at most 10).
    pub top: Vec<FileCost>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileCost {
    pub path: String,
    pub download: u64,
    pub changed: u64,
    pub delta: bool,
}

/// Sizes every path to `new` from `olds` (newest first) and from nothing.
pub fn build(
    new: &Manifest,
    olds: &[Manifest],
    changed: &HashMap<(usize, u64), u64>,
    stored: u64,
    secs: f64,
) -> Report {
    let all: Vec<usize> = (0..new.files.len()).collect();
    let mut paths = Vec::new();
    let mut warnings = Vec::new();
    for old in std::iter::once(None).chain(olds.iter().map(Some)) {
        let local = old.map(Local::of_release).unwrap_or_default();
        let present: HashSet<_> = local.chunks.keys().copied().collect();
        let p = plan::plan(new, &all, &local, &HashMap::new());
        let mut top = Vec::new();
        let (mut files_changed, mut changed_total) = (0u64, 0u64);
        for (fp, dl) in p.files.iter().zip(&p.file_download) {
            let Action::Build { pieces } = &fp.action else { continue };
            let f = &new.files[fp.file];
            files_changed += 1;
            let ch = old
                .and_then(|m| changed.get(&(fp.file, m.release.seq)).copied())
                .unwrap_or_else(|| {
                    f.chunks
                        .iter()
                        .filter(|c| !present.contains(&c.hash()))
                        .map(|c| c.len())
                        .sum()
                });
            changed_total += ch;
            let delta = pieces.iter().any(|x| matches!(x, plan::Piece::Patch { .. }));
            top.push(FileCost {
                path: f.path.clone(),
                download: *dl,
                changed: ch,
                delta,
            });
        }
        top.sort_by(|a, b| b.download.cmp(&a.download).then(a.path.cmp(&b.path)));
        let download = p.download();
        let ratio = if changed_total == 0 {
            if download == 0 { 0.0 } else { f64::INFINITY }
        } else {
            download as f64 / changed_total as f64
        };
        if let Some(m) = old
            && let Some(w) = warning(m, download, changed_total, ratio, &top)
        {
            warnings.push(w);
        }
        top.truncate(10);
        paths.push(PathReport {
            from: old.map(|m| m.release.seq),
            from_release: old.map(|m| m.release.id.clone()),
            download,
            chunk_bytes: p.chunk_bytes,
            delta_bytes: p.delta_bytes,
            files_changed,
            changed_bytes: changed_total,
            ratio: if ratio.is_finite() { ratio } else { -1.0 },
            top,
        });
    }
    Report {
        seq: new.release.seq,
        release: new.release.id.clone(),
        content_bytes: new.size(),
        files: new.files.len() as u64,
        stored_bytes: stored,
        publish_secs: secs,
        paths,
        warnings,
    }
}

/// The warning for a path that downloads much more than changed, naming the files responsible.
fn warning(m: &Manifest, download: u64, changed_total: u64, ratio: f64, top: &[FileCost]) -> Option<String> {
    if download as f64 <= WARN_RATIO * changed_total as f64 || download.saturating_sub(changed_total) < WARN_MIN_EXCESS
    {
        return None;
    }
    let excess = |f: &FileCost| f.download - f.changed.min(f.download);
    let mut culprits: Vec<&FileCost> = top
        .iter()
        .filter(|f| f.download as f64 > WARN_RATIO * f.changed as f64 && excess(f) >= 64 << 10)
        .collect();
    culprits.sort_by_key(|f| std::cmp::Reverse(excess(f)));
    let names: Vec<String> = culprits
        .iter()
        .take(5)
        .map(|f| {
            format!(
                "{} ({} to download for {} changed)",
                f.path,
                human(f.download),
                human(f.changed)
            )
        })
        .collect();
    Some(format!(
        "the upgrade from {} (release {}) downloads {} for {} of changed content ({:.1}x); files responsible: {}. \
         Content that moves or is re-encoded inside a file (a repacked or compressed archive) defeats patching",
        m.release.id,
        m.release.seq,
        human(download),
        human(changed_total),
        ratio,
        if names.is_empty() {
            "spread over many files".to_string()
        } else {
            names.join(", ")
        }
    ))
}

/// Bytes for people: `12.3 MiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Report {
    /// The report as a person reads it.
    pub fn render(&self) -> String {
        let mut s = format!(
            "release {} ({}): {} files, {}; {} new in the packs; published in {:.1}s\n",
            self.seq,
            self.release,
            self.files,
            human(self.content_bytes),
            human(self.stored_bytes),
            self.publish_secs
        );
        s.push_str(&format!(
            "{:<22} {:>12} {:>12} {:>12} {:>8} {:>12} {:>7}\n",
            "upgrade path", "download", "chunks", "deltas", "files", "changed", "ratio"
        ));
        for p in &self.paths {
            let from = match (&p.from, &p.from_release) {
                (Some(seq), Some(id)) => format!("{id} ({seq}) -> {}", self.seq),
                _ => "fresh install".to_string(),
            };
            let ratio = if p.ratio < 0.0 {
                "-".to_string()
            } else {
                format!("{:.2}", p.ratio)
            };
            s.push_str(&format!(
                "{:<22} {:>12} {:>12} {:>12} {:>8} {:>12} {:>7}\n",
                from,
                human(p.download),
                human(p.chunk_bytes),
                human(p.delta_bytes),
                p.files_changed,
                human(p.changed_bytes),
                ratio
            ));
        }
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }
}
