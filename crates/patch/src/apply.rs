//! Carries out a plan: links identical local files, copies seed chunks, fetches the rest as merged
//! HTTP ranges on several connections, rebuilds delta ranges, and moves each file into place only
//! after its whole content matched its hash. Partial files stay in the staging folder, so a killed
//! run resumes where it stopped.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::delta;
use crate::hash::Hash;
use crate::manifest::{FileEntry, Manifest};
use crate::pack;
use crate::plan::Local;
use crate::plan::{Action, Fetch, FetchKind, Piece, Plan};
use crate::source::{FetchError, Source};

/// Ranges closer than this are fetched as one (the gap is downloaded and dropped).
pub const MERGE_GAP: u64 = 16 << 10;
/// The longest range one request asks for.
pub const MAX_RANGE: u64 = 2 << 20;

/// Told how many bytes there are to download, and as they arrive.
pub trait Progress: Send + Sync {
    fn start(&self, total: u64);
    fn advance(&self, bytes: u64);
}

/// Progress nobody watches.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// Keeps downloads under a rate (bytes per second), shared by every request.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    next: Mutex<Instant>,
}

impl Pacer {
    pub fn new(bytes_per_sec: u64) -> Pacer {
        Pacer {
            rate: bytes_per_sec.max(1) as f64,
            next: Mutex::new(Instant::now()),
        }
    }

    /// The longest request under this rate: about a quarter second of transfer, so progress (and
    /// what a killed run leaves behind) comes in small steps.
    pub fn slice(&self) -> u64 {
        ((self.rate / 4.0) as u64).clamp(64 << 10, MAX_RANGE)
    }

    /// Waits until `bytes` more may be fetched.
    pub fn wait(&self, bytes: u64) {
        let at = {
            let Ok(mut next) = self.next.lock() else { return };
            let now = Instant::now();
            let at = (*next).max(now);
            *next = at + Duration::from_secs_f64(bytes as f64 / self.rate);
            at
        };
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
    }
}

/// A failure applying a plan; files already in place stay, nothing half-written is visible.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{what}: {message}; it does not match the signed manifest (tampered repo or mirror?)")]
    Tampered { what: String, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to run.
#[derive(Clone)]
pub struct ApplyOptions {
    /// Requests in flight at once.
    pub concurrency: usize,
    pub pacer: Option<Arc<Pacer>>,
    pub progress: Arc<dyn Progress>,
}

impl std::fmt::Debug for ApplyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApplyOptions({} in flight)", self.concurrency)
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub downloaded: u64,
    pub requests: u64,
    pub built: usize,
    pub linked: usize,
}

/// One plan to carry out.
pub struct Exec<'a> {
    pub m: &'a Manifest,
    pub plan: &'a Plan,
    pub local: &'a Local,
    /// Partial files, named by their hash.
    pub tmp: PathBuf,
    /// Where finished files go (a staging tree, or the live tree for an on-demand fetch).
    pub out: PathBuf,
    pub source: &'a dyn Source,
    pub opts: &'a ApplyOptions,
}

impl Exec<'_> {
    fn entry(&self, plan_file: usize) -> &FileEntry {
        &self.m.files[self.plan.files[plan_file].file]
    }

    fn tmp_path(&self, f: &FileEntry) -> PathBuf {
        self.tmp.join(tmp_name(f))
    }

    pub fn run(&self) -> Result<ApplyStats, ApplyError> {
        std::fs::create_dir_all(&self.tmp).map_err(io_err(&self.tmp))?;
        std::fs::create_dir_all(&self.out).map_err(io_err(&self.out))?;
        let mut stats = ApplyStats::default();
        let mut extra: Vec<Fetch> = Vec::new();
        for (pi, fp) in self.plan.files.iter().enumerate() {
            let f = self.entry(pi);
            match &fp.action {
                Action::Link { source } => {
                    self.link(&self.local.sources[*source], f)?;
                    stats.linked += 1;
                }
                Action::Build { pieces } => {
                    self.copy_seeds(pi, f, pieces, &mut extra)?;
                    stats.built += 1;
                }
            }
        }
        let mut fetches = self.plan.fetches.clone();
        merge_extra(&mut fetches, extra);
        self.opts.progress.start(fetches.iter().map(|x| x.blob.len).sum());
        let fallback = self.fetch_all(&fetches, &mut stats)?;
        if !fallback.is_empty() {
            self.fetch_all(&fallback, &mut stats)?;
        }
        let builds: Vec<usize> = (0..self.plan.files.len())
            .filter(|&i| matches!(self.plan.files[i].action, Action::Build { .. }))
            .collect();
        builds.par_iter().try_for_each(|&pi| self.finish(self.entry(pi)))?;
        crate::fsx::sync_dir(&self.out);
        Ok(stats)
    }

    /// Puts a file identical to a local one in place: a hard link when the mode agrees, else a copy.
    fn link(&self, src: &str, f: &FileEntry) -> Result<(), ApplyError> {
        use std::os::unix::fs::PermissionsExt;
        let dst = self.out.join(&f.path);
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let _ = std::fs::remove_file(&dst);
        let same_mode = std::fs::metadata(src).is_ok_and(|m| m.permissions().mode() & 0o777 == f.mode);
        if same_mode && std::fs::hard_link(src, &dst).is_ok() {
            return Ok(());
        }
        let tmp = self.tmp_path(f);
        std::fs::copy(src, &tmp).map_err(io_err(&tmp))?;
        self.finish(f)
    }

    /// Opens (or creates) the partial file and copies every seed chunk into it, checking each.
    fn copy_seeds(&self, pi: usize, f: &FileEntry, pieces: &[Piece], extra: &mut Vec<Fetch>) -> Result<(), ApplyError> {
        let tmp = self.tmp_path(f);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        out.set_len(f.size).map_err(io_err(&tmp))?;
        let mut open: HashMap<usize, std::fs::File> = HashMap::new();
        let mut buf = Vec::new();
        for ((off, c), piece) in f.offsets().zip(pieces) {
            let Piece::Seed { source, offset } = *piece else {
                continue;
            };
            let ok = (|| {
                let src = match open.entry(source) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(std::fs::File::open(&self.local.sources[source]).ok()?)
                    }
                };
                buf.resize(c.len() as usize, 0);
                crate::fsx::read_at(src, offset, &mut buf).ok()?;
                (Hash::of(&buf) == c.hash()).then_some(())
            })();
            match ok {
                Some(()) => crate::fsx::write_at(&out, off, &buf).map_err(io_err(&tmp))?,
                // The local copy changed since it was indexed: fetch that chunk instead.
                None => extra.push(Fetch {
                    blob: c.blob(),
                    kind: FetchKind::Chunk {
                        hash: c.hash(),
                        len: c.len(),
                    },
                    dests: vec![(pi, off)],
                }),
            }
        }
        Ok(())
    }

    /// Fetches objects as merged ranges on `concurrency` connections; returns chunk fetches that
    /// replace deltas that failed to rebuild their range.
    fn fetch_all(&self, fetches: &[Fetch], stats: &mut ApplyStats) -> Result<Vec<Fetch>, ApplyError> {
        // Enough requests to keep every connection busy, none longer than the pacer's slice.
        let total: u64 = fetches.iter().map(|x| x.blob.len).sum();
        let spread = (total / (2 * self.opts.concurrency.max(1) as u64)).max(256 << 10);
        let max = self.opts.pacer.as_ref().map_or(MAX_RANGE, |p| p.slice()).min(spread);
        let queue = Mutex::new(ranges(fetches, max));
        let requests = queue.lock().map(|q| q.len() as u64).unwrap_or(0);
        let abort = AtomicBool::new(false);
        let downloaded = AtomicU64::new(0);
        let first_error: Mutex<Option<ApplyError>> = Mutex::new(None);
        let fallback: Mutex<Vec<Fetch>> = Mutex::new(Vec::new());
        let patching = Mutex::new(());
        std::thread::scope(|s| {
            for _ in 0..self.opts.concurrency.max(1) {
                s.spawn(|| {
                    let mut scratch = Scratch {
                        range: Vec::new(),
                        chunk: Vec::new(),
                        dctx: zstd::zstd_safe::DCtx::create(),
                    };
                    while !abort.load(Ordering::Relaxed) {
                        let Some(r) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                            break;
                        };
                        let res = self.fetch_range(&r, fetches, &patching, &fallback, &mut scratch);
                        match res {
                            Ok(n) => {
                                downloaded.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => {
                                abort.store(true, Ordering::Relaxed);
                                if let Ok(mut slot) = first_error.lock() {
                                    slot.get_or_insert(e);
                                }
                            }
                        }
                    }
                });
            }
        });
        stats.downloaded += downloaded.load(Ordering::Relaxed);
        stats.requests += requests;
        if let Some(e) = first_error.into_inner().ok().flatten() {
            return Err(e);
        }
        Ok(fallback.into_inner().unwrap_or_default())
    }

    fn fetch_range(
        &self,
        r: &Range,
        fetches: &[Fetch],
        patching: &Mutex<()>,
        fallback: &Mutex<Vec<Fetch>>,
        scratch: &mut Scratch,
    ) -> Result<u64, ApplyError> {
        let len = r.end - r.start;
        if let Some(p) = &self.opts.pacer {
            p.wait(len);
        }
        let name = pack::pack_name(r.pack);
        self.source.get_range(&name, r.start, len, &mut scratch.range)?;
        let bytes = &scratch.range;
        self.opts.progress.advance(len);
        for &i in &r.items {
            let x = &fetches[i];
            let at = (x.blob.offset - r.start) as usize;
            let stored = &bytes[at..at + x.blob.len as usize];
            let what = || format!("{name} bytes {}+{}", x.blob.offset, x.blob.len);
            match x.kind {
                FetchKind::Chunk { hash, len } => {
                    pack::open_chunk_into(&mut scratch.dctx, stored, len, hash, &mut scratch.chunk)
                        .map_err(|message| ApplyError::Tampered { what: what(), message })?;
                    for &(pi, off) in &x.dests {
                        self.write(pi, off, &scratch.chunk)?;
                    }
                }
                FetchKind::Delta { hash } => {
                    if Hash::of(stored) != hash {
                        return Err(ApplyError::Tampered {
                            what: what(),
                            message: format!("content does not match delta {}", hash.short()),
                        });
                    }
                    let (pi, patch) = x.dests[0];
                    let _one_at_a_time = patching.lock();
                    if !self.rebuild(pi, patch as usize, stored)? {
                        let mut fb = fallback.lock().unwrap_or_else(|p| p.into_inner());
                        fb.extend(self.patch_chunks(pi, patch as usize));
                    }
                }
            }
        }
        Ok(len)
    }

    fn write(&self, pi: usize, off: u64, data: &[u8]) -> Result<(), ApplyError> {
        let tmp = self.tmp_path(self.entry(pi));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        crate::fsx::write_at(&f, off, data).map_err(io_err(&tmp))
    }

    /// Rebuilds a delta's target range; `false` if the result does not check out chunk by chunk (a
    /// changed local base, say), in which case nothing was written.
    fn rebuild(&self, pi: usize, patch: usize, stored: &[u8]) -> Result<bool, ApplyError> {
        let f = self.entry(pi);
        let p = &f.patches[patch];
        let Action::Build { pieces } = &self.plan.files[pi].action else {
            return Ok(false);
        };
        let Some(Piece::Patch { source, .. }) = pieces
            .iter()
            .find(|x| matches!(x, Piece::Patch { patch: q, .. } if *q == patch))
        else {
            return Ok(false);
        };
        let mut base = vec![0u8; p.base[1] as usize];
        let read = std::fs::File::open(&self.local.sources[*source])
            .and_then(|src| crate::fsx::read_at(&src, p.base[0], &mut base));
        if read.is_err() {
            return Ok(false);
        }
        let Ok(out) = delta::apply(p.method, &base, stored, p.target[1]) else {
            return Ok(false);
        };
        drop(base);
        let [t0, tl] = p.target;
        let ok = f
            .offsets()
            .filter(|(o, c)| *o >= t0 && o + c.len() <= t0 + tl)
            .all(|(o, c)| Hash::of(&out[(o - t0) as usize..(o - t0 + c.len()) as usize]) == c.hash());
        if ok {
            self.write(pi, t0, &out)?;
        }
        Ok(ok)
    }

    /// Chunk fetches for the pieces a failed delta was to rebuild.
    fn patch_chunks(&self, pi: usize, patch: usize) -> Vec<Fetch> {
        let f = self.entry(pi);
        let Action::Build { pieces } = &self.plan.files[pi].action else {
            return Vec::new();
        };
        f.offsets()
            .zip(pieces)
            .filter(|(_, x)| matches!(x, Piece::Patch { patch: q, .. } if *q == patch))
            .map(|((off, c), _)| Fetch {
                blob: c.blob(),
                kind: FetchKind::Chunk {
                    hash: c.hash(),
                    len: c.len(),
                },
                dests: vec![(pi, off)],
            })
            .collect()
    }

    /// Syncs a built file, checks its whole hash, sets its mode and moves it into place.
    fn finish(&self, f: &FileEntry) -> Result<(), ApplyError> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.tmp_path(f);
        std::fs::File::open(&tmp)
            .and_then(|h| h.sync_all())
            .map_err(io_err(&tmp))?;
        let got = crate::hash::hash_file(&tmp).map_err(io_err(&tmp))?;
        if got != f.hash {
            let _ = std::fs::remove_file(&tmp);
            return Err(ApplyError::Tampered {
                what: f.path.clone(),
                message: format!("the built file hashes to {}", got.short()),
            });
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(f.mode)).map_err(io_err(&tmp))?;
        let dst = self.out.join(&f.path);
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        std::fs::rename(&tmp, &dst).map_err(io_err(&dst))
    }
}

/// One fetch thread's buffers and decoder, reused for every range so memory stays flat.
struct Scratch {
    range: Vec<u8>,
    chunk: Vec<u8>,
    dctx: zstd::zstd_safe::DCtx<'static>,
}

/// The staging name of a file being built: its path's hash and its content hash, so two paths with
/// the same content never share a partial file, and a run after a kill finds its own again.
pub fn tmp_name(f: &FileEntry) -> String {
    format!("{}.{}", Hash::of(f.path.as_bytes()).short(), f.hash.hex())
}

/// Adds fetches for chunks whose seed failed, reusing a fetch of the same chunk if there is one.
fn merge_extra(fetches: &mut Vec<Fetch>, extra: Vec<Fetch>) {
    let mut by_hash: HashMap<Hash, usize> = HashMap::new();
    for (i, x) in fetches.iter().enumerate() {
        if let FetchKind::Chunk { hash, .. } = x.kind {
            by_hash.insert(hash, i);
        }
    }
    for x in extra {
        let FetchKind::Chunk { hash, .. } = x.kind else {
            continue;
        };
        match by_hash.get(&hash) {
            Some(&i) => fetches[i].dests.extend(x.dests),
            None => {
                by_hash.insert(hash, fetches.len());
                fetches.push(x);
            }
        }
    }
}

/// One request: `[start, end)` of a pack and the fetches inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub pack: u32,
    pub start: u64,
    pub end: u64,
    pub items: Vec<usize>,
}

/// Groups fetches into requests: sorted by place, neighbours within [`MERGE_GAP`] joined, at most
/// `max` long (one object longer than that is a request of its own).
pub fn ranges(fetches: &[Fetch], max: u64) -> VecDeque<Range> {
    let mut order: Vec<usize> = (0..fetches.len()).collect();
    order.sort_by_key(|&i| (fetches[i].blob.pack, fetches[i].blob.offset));
    let mut out: VecDeque<Range> = VecDeque::new();
    for i in order {
        let b = fetches[i].blob;
        let end = b.offset + b.len;
        match out.back_mut() {
            Some(r) if r.pack == b.pack && b.offset <= r.end + MERGE_GAP && end.max(r.end) - r.start <= max => {
                r.end = r.end.max(end);
                r.items.push(i);
            }
            _ => out.push_back(Range {
                pack: b.pack,
                start: b.offset,
                end,
                items: vec![i],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Blob;
    use proptest::prelude::*;

    fn fetch(pack: u32, offset: u64, len: u64) -> Fetch {
        Fetch {
            blob: Blob { pack, offset, len },
            kind: FetchKind::Delta { hash: Hash::default() },
            dests: vec![],
        }
    }

    #[test]
    fn neighbours_merge_and_far_or_other_packs_do_not() {
        let f = vec![
            fetch(0, 100, 10),
            fetch(0, 0, 100),
            fetch(0, 110 + MERGE_GAP + 1, 5),
            fetch(1, 0, 5),
        ];
        let r: Vec<Range> = ranges(&f, MAX_RANGE).into_iter().collect();
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].start, r[0].end, r[0].items.clone()), (0, 110, vec![1, 0]));
    }

    proptest! {
        /// Every fetch lands in exactly one range that contains it, and no range is over the limit
        /// unless it holds a single object.
        #[test]
        fn ranges_cover_every_fetch_once(objs in proptest::collection::vec((0u32..3, 0u64..50_000_000, 1u64..6_000_000), 0..60)) {
            let f: Vec<Fetch> = objs.iter().map(|&(p, o, l)| fetch(p, o, l)).collect();
            let rs = ranges(&f, MAX_RANGE);
            let mut seen = vec![0; f.len()];
            for r in &rs {
                prop_assert!(r.end - r.start <= MAX_RANGE || r.items.len() == 1);
                for &i in &r.items {
                    seen[i] += 1;
                    let b = f[i].blob;
                    prop_assert!(b.pack == r.pack && b.offset >= r.start && b.offset + b.len <= r.end);
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
        }
    }
}
