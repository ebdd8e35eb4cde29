//! `publish`: chunk a build folder, store only the chunks the repo lacks, compute deltas from the last
//! releases where they beat the chunks, write and sign the manifest, size every upgrade path, and
//! commit a new snapshot and timestamp.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::chunker;
use crate::delta;
use crate::hash::Hash;
use crate::manifest::{Blob, ChunkRef, FileEntry, MAX_PATCH_BASE, MAX_PATCH_TARGET, Manifest, PatchRef, ReleaseInfo};
use crate::meta::{self, MetaRef, Role, Snapshot};
use crate::pack::{self, Index, PackWriter};
use crate::repo::{self, Expiry, Keyring, Repo, RepoError};
use crate::report::{self, Report};
use crate::spec::{SPEC_FILE, Spec};

/// What `publish` needs.
#[derive(Debug)]
pub struct PublishOptions<'a> {
    pub build: &'a Path,
    pub release_id: &'a str,
    pub repo: &'a Repo,
    pub keys: &'a Keyring,
    /// Deltas are made from this many previous releases (default 3).
    pub delta_from: usize,
    /// The report sizes the upgrade from this many previous releases (default 3).
    pub report_from: usize,
    /// zstd level for chunks and deltas (19 by default).
    pub level: i32,
    /// Refuse to publish when an upgrade path from a previous release downloads more.
    pub max_bytes: Option<u64>,
    pub now: u64,
    pub expiry: Expiry,
}

/// A failure to publish; nothing a client reads has changed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("the build folder has problems:\n{0}")]
    Build(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("delta: {0}")]
    Delta(#[from] delta::DeltaError),
    #[error("{0}")]
    Corrupt(String),
    #[error("the upgrade from release {from} downloads {bytes} bytes, more than --max-bytes {max}; not published")]
    TooBig {
        from: u64,
        bytes: u64,
        max: u64,
        report: Box<Report>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A published release.
#[derive(Debug)]
pub struct Published {
    pub seq: u64,
    pub manifest: MetaRef,
    pub report: Report,
}

/// A regular file of the build.
#[derive(Debug, Clone)]
struct BuildFile {
    path: String,
    abs: PathBuf,
    mode: u32,
}

/// Publishes `build` as the next release.
pub fn publish(o: &PublishOptions) -> Result<Published, PublishError> {
    let started = Instant::now();
    let repo = o.repo;
    let (root, _) = repo.root()?;
    let targets = o.keys.need(&root, Role::Targets)?;
    o.keys.need(&root, Role::Snapshot)?;
    o.keys.need(&root, Role::Timestamp)?;
    let snapshot = repo.snapshot()?;
    if let Some((seq, _)) = snapshot
        .releases
        .iter()
        .find(|(s, r)| repo.manifest(**s, r).is_ok_and(|m| m.release.id == o.release_id))
    {
        return Err(PublishError::Build(format!(
            "release id {:?} is already release {seq}",
            o.release_id
        )));
    }
    let spec = match std::fs::read_to_string(o.build.join(SPEC_FILE)) {
        Ok(text) => Spec::parse(&text).map_err(PublishError::Build)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Spec::default(),
        Err(e) => return Err(io_err(&o.build.join(SPEC_FILE))(e)),
    };
    let build = scan(o.build)?;
    // Older releases, newest first: the delta sources and the report's upgrade paths.
    let olds: Vec<Manifest> = snapshot
        .releases
        .iter()
        .rev()
        .take(o.delta_from.max(o.report_from))
        .map(|(s, r)| repo.manifest(*s, r))
        .collect::<Result<_, _>>()?;

    let mut index = Index::load(&repo.dir).map_err(io_err(&repo.dir))?;
    let mut w = PackWriter::new(&repo.dir).map_err(io_err(&repo.dir))?;
    let mut files = chunk_build(&build, &spec, &mut index, &mut w, o.level)?;
    let changed = make_deltas(&mut files, &build, &olds, o.delta_from, repo, &mut w, o.level)?;
    let stored = w.written;
    w.finish().map_err(io_err(&repo.dir))?;

    let seq = snapshot
        .latest
        .max(snapshot.releases.keys().next_back().copied().unwrap_or(0))
        + 1;
    let manifest = Manifest {
        kind: "manifest".into(),
        product: root.product.clone(),
        version: 1,
        expires: o.now + o.expiry.targets,
        release: ReleaseInfo {
            seq,
            id: o.release_id.to_string(),
            created: o.now,
        },
        files,
    };
    manifest
        .validate()
        .map_err(|p| PublishError::Corrupt(format!("the new manifest is invalid: {}", p.join("; "))))?;
    let window = &olds[..o.report_from.min(olds.len())];
    let mut report = report::build(&manifest, window, &changed, stored, started.elapsed().as_secs_f64());
    if let Some(max) = o.max_bytes
        && let Some(worst) = report
            .paths
            .iter()
            .filter(|p| p.from.is_some())
            .max_by_key(|p| p.download)
        && worst.download > max
    {
        return Err(PublishError::TooBig {
            from: worst.from.unwrap_or(0),
            bytes: worst.download,
            max,
            report: Box::new(report),
        });
    }
    report.publish_secs = started.elapsed().as_secs_f64();
    let mref = commit_release(o, &root, &snapshot, &manifest, &targets, &report)?;
    Ok(Published {
        seq,
        manifest: mref,
        report,
    })
}

/// Writes the signed manifest and the report, then the snapshot and timestamp that make the
/// release visible to clients.
fn commit_release(
    o: &PublishOptions,
    root: &crate::meta::Root,
    snapshot: &Snapshot,
    manifest: &Manifest,
    targets: &[&crate::keys::KeyPair],
    report: &Report,
) -> Result<MetaRef, PublishError> {
    let seq = manifest.release.seq;
    let bytes = meta::seal(manifest, targets);
    o.repo.write(&repo::manifest_name(seq, 1), &bytes)?;
    let mref = MetaRef {
        version: 1,
        length: bytes.len() as u64,
        blake3: Hash::of(&bytes),
    };
    let mut releases = snapshot.releases.clone();
    releases.insert(seq, mref);
    let next = Snapshot {
        kind: "snapshot".into(),
        version: snapshot.version + 1,
        expires: o.now + o.expiry.snapshot,
        latest: seq,
        releases,
    };
    o.repo.write(
        &format!("reports/{seq}.json"),
        &serde_json::to_vec_pretty(report).unwrap_or_default(),
    )?;
    o.repo.commit(&next, o.keys, root, o.now, &o.expiry)?;
    Ok(mref)
}

/// Every regular file under `dir` (but the spec), sorted by path; every problem at once.
fn scan(dir: &Path) -> Result<Vec<BuildFile>, PublishError> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&abs).map_err(io_err(&abs))?;
        for e in rd {
            let e = e.map_err(io_err(&abs))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                problems.push(format!("{}: the name is not UTF-8", e.path().display()));
                continue;
            };
            let path = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let ft = e.file_type().map_err(io_err(&e.path()))?;
            if ft.is_dir() {
                stack.push((e.path(), path));
            } else if ft.is_file() {
                if path == SPEC_FILE {
                    continue;
                }
                if let Err(m) = crate::manifest::check_path(&path) {
                    problems.push(format!("{path}: {m}"));
                }
                let meta = e.metadata().map_err(io_err(&e.path()))?;
                out.push(BuildFile {
                    path,
                    abs: e.path(),
                    mode: meta.permissions().mode() & 0o777,
                });
            } else {
                problems.push(format!(
                    "{path}: only regular files and folders can be published (symlink or special file)"
                ));
            }
        }
    }
    if !problems.is_empty() {
        problems.sort();
        return Err(PublishError::Build(problems.join("\n")));
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// New chunks waiting to be compressed in parallel and appended to the pack.
struct Batch<'a> {
    items: Vec<(Hash, Vec<u8>)>,
    bytes: usize,
    index: &'a mut Index,
    w: &'a mut PackWriter,
    level: i32,
}

impl Batch<'_> {
    fn push(&mut self, h: Hash, data: &[u8]) -> std::io::Result<()> {
        if self.index.chunks.contains_key(&h) || self.items.iter().any(|(x, _)| *x == h) {
            return Ok(());
        }
        self.items.push((h, data.to_vec()));
        self.bytes += data.len();
        if self.bytes >= 16 << 20 { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let level = self.level;
        let packed: Vec<std::io::Result<Vec<u8>>> = self
            .items
            .par_iter()
            .map(|(_, d)| zstd::bulk::compress(d, level))
            .collect();
        for ((h, d), z) in self.items.drain(..).zip(packed) {
            let blob = self.w.add(&z?, Some((h, d.len() as u32)))?;
            self.index.chunks.insert(h, (blob, d.len() as u32));
        }
        self.bytes = 0;
        Ok(())
    }
}

/// Chunks every file, storing new chunks; returns the manifest entries (no deltas yet).
fn chunk_build(
    build: &[BuildFile],
    spec: &Spec,
    index: &mut Index,
    w: &mut PackWriter,
    level: i32,
) -> Result<Vec<FileEntry>, PublishError> {
    // Per file: its chunks (hash, length), its hash and size.
    type Listed = (Vec<(Hash, u32)>, Hash, u64);
    let mut lists: Vec<Listed> = Vec::with_capacity(build.len());
    let mut batch = Batch {
        items: Vec::new(),
        bytes: 0,
        index,
        w,
        level,
    };
    for bf in build {
        let f = std::fs::File::open(&bf.abs).map_err(io_err(&bf.abs))?;
        let size = f.metadata().map_err(io_err(&bf.abs))?.len();
        let mut whole = blake3::Hasher::new();
        let mut chunks = Vec::new();
        chunker::chunk_stream::<_, std::io::Error>(
            std::io::BufReader::with_capacity(1 << 20, f),
            chunker::profile_for(size),
            |_, data| {
                whole.update(data);
                let h = Hash::of(data);
                chunks.push((h, data.len() as u32));
                batch.push(h, data)
            },
        )
        .map_err(io_err(&bf.abs))?;
        let total: u64 = chunks.iter().map(|c| c.1 as u64).sum();
        lists.push((chunks, whole.finalize().into(), total));
    }
    batch.flush().map_err(io_err(&w_dir(build)))?;
    let index = &*batch.index;
    Ok(build
        .iter()
        .zip(lists)
        .map(|(bf, (chunks, hash, size))| {
            let (priority, tags) = spec.classify(&bf.path);
            FileEntry {
                path: bf.path.clone(),
                mode: bf.mode,
                size,
                hash,
                priority,
                tags,
                chunks: chunks
                    .into_iter()
                    .map(|(h, len)| {
                        let (b, _) = index.chunks[&h];
                        ChunkRef(h, len, b.pack, b.offset, b.len as u32)
                    })
                    .collect(),
                patches: Vec::new(),
            }
        })
        .collect())
}

fn w_dir(build: &[BuildFile]) -> PathBuf {
    build.first().map(|b| b.abs.clone()).unwrap_or_default()
}

/// A delta to try: a chunk-aligned target range of the new file and the old range it is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub target: (u64, u64),
    pub base: (u64, u64),
}

/// Where deltas could replace missing chunks of `new` (relative to a release holding `present`),
/// with the part of `old` each would be made from.
pub(crate) fn regions(new: &FileEntry, old: &FileEntry, present: &HashSet<Hash>) -> Vec<Region> {
    let chunks: Vec<(u64, u64, bool)> = new
        .offsets()
        .map(|(o, c)| (o, c.len(), present.contains(&c.hash())))
        .collect();
    let missing: Vec<usize> = (0..chunks.len()).filter(|&i| !chunks[i].2).collect();
    let (Some(&first), Some(&last)) = (missing.first(), missing.last()) else {
        return Vec::new();
    };
    if new.size <= MAX_PATCH_TARGET && old.size <= MAX_PATCH_BASE {
        let t0 = chunks[first].0;
        let t1 = chunks[last].0 + chunks[last].1;
        return vec![Region {
            target: (t0, t1 - t0),
            base: (0, old.size),
        }];
    }
    // Runs of missing chunks (joined across gaps under 1 MiB), cut at MAX_PATCH_TARGET.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &i in &missing {
        match runs.last_mut() {
            Some((a, b))
                if chunks[i].0 - (chunks[*b].0 + chunks[*b].1) < (1 << 20)
                    && chunks[i].0 + chunks[i].1 - chunks[*a].0 <= MAX_PATCH_TARGET =>
            {
                *b = i
            }
            _ => runs.push((i, i)),
        }
    }
    let old_at: HashMap<Hash, u64> = old.offsets().map(|(o, c)| (c.hash(), o)).collect();
    let shift = |i: usize| -> Option<i64> {
        let c = &new.chunks[i];
        old_at.get(&c.hash()).map(|&o| o as i64 - chunks[i].0 as i64)
    };
    runs.into_iter()
        .map(|(a, b)| {
            let t0 = chunks[a].0;
            let t1 = chunks[b].0 + chunks[b].1;
            let d = (0..a)
                .rev()
                .find_map(shift)
                .or_else(|| (b + 1..chunks.len()).find_map(shift))
                .unwrap_or(0);
            let margin = 1i64 << 20;
            let lo = (t0 as i64 + d - margin).clamp(0, old.size as i64) as u64;
            let hi = (t1 as i64 + d + margin).clamp(0, old.size as i64) as u64;
            let hi = hi.min(lo + MAX_PATCH_BASE);
            Region {
                target: (t0, t1 - t0),
                base: (lo, hi - lo),
            }
        })
        .filter(|r| r.base.1 > 0)
        .collect()
}

/// Bytes `[start, start+len)` of an old release's file, rebuilt from the packs (every chunk checked).
fn read_old(repo: &Repo, f: &FileEntry, start: u64, len: u64) -> Result<Vec<u8>, PublishError> {
    let mut out = Vec::with_capacity(len as usize);
    for (o, c) in f.offsets() {
        if o + c.len() <= start || o >= start + len {
            continue;
        }
        let stored =
            pack::read_blob(&repo.dir, c.blob()).map_err(io_err(&pack::pack_path(&repo.dir, c.blob().pack)))?;
        let data = pack::open_chunk(&stored, c.len(), c.hash())
            .map_err(|m| PublishError::Corrupt(format!("{}: {m}", f.path)))?;
        let a = start.saturating_sub(o) as usize;
        let b = ((start + len).min(o + c.len()) - o) as usize;
        out.extend_from_slice(&data[a..b]);
    }
    Ok(out)
}

fn read_new(bf: &BuildFile, start: u64, len: u64) -> Result<Vec<u8>, PublishError> {
    let f = std::fs::File::open(&bf.abs).map_err(io_err(&bf.abs))?;
    let mut buf = vec![0u8; len as usize];
    crate::fsx::read_at(&f, start, &mut buf).map_err(io_err(&bf.abs))?;
    Ok(buf)
}

/// Bytes of `target` not found in `base`, by fine (1/4/16 KiB) content-defined chunks: the report's
/// measure of content that really changed.
fn fine_changed(base: &[u8], target: &[u8]) -> u64 {
    let p = chunker::Profile {
        min: 1 << 10,
        avg: 4 << 10,
        max: 16 << 10,
    };
    let have: HashSet<blake3::Hash> = chunker::cuts(base, p)
        .iter()
        .map(|(o, l)| blake3::hash(&base[*o as usize..*o as usize + l]))
        .collect();
    chunker::cuts(target, p)
        .iter()
        .filter(|(o, l)| !have.contains(&blake3::hash(&target[*o as usize..*o as usize + l])))
        .map(|(_, l)| *l as u64)
        .sum()
}

/// The old file a delta for `f` is made from: the one at the same path, or else a file the new
/// release no longer has, in the same folder with the same extension and the longest common name
/// prefix (a library renamed with its version or build hash, `libfoo-1a2b.so` -> `libfoo-3c4d.so`).
fn base_file<'m>(f: &FileEntry, m: &'m Manifest, new_paths: &HashSet<&str>) -> Option<&'m FileEntry> {
    if let Some(same) = m.file(&f.path) {
        return Some(same);
    }
    let split = |p: &str| -> (String, String, String) {
        let (dir, name) = p.rsplit_once('/').map_or(("", p), |(d, n)| (d, n));
        let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
        (dir.to_string(), ext.to_string(), name.to_string())
    };
    let (dir, ext, name) = split(&f.path);
    m.files
        .iter()
        .filter(|o| !new_paths.contains(o.path.as_str()))
        .filter_map(|o| {
            let (odir, oext, oname) = split(&o.path);
            let common = name.bytes().zip(oname.bytes()).take_while(|(a, b)| a == b).count();
            (odir == dir && oext == ext && common >= 4 && common * 2 >= name.len().min(oname.len()))
                .then_some((common, o))
        })
        .max_by_key(|(c, o)| (*c, std::cmp::Reverse(o.path.clone())))
        .map(|(_, o)| o)
}

/// One delta job's outcome: the deltas worth keeping and the bytes that changed.
struct DeltaResult {
    file: usize,
    from_seq: u64,
    keep: Vec<(PatchRef, Vec<u8>)>,
    changed: u64,
}

/// Deltas from the first `delta_from` of `olds` to each changed file, kept where smaller than the
/// chunks they replace. Returns, per (file, old release), the bytes of content that changed.
fn make_deltas(
    files: &mut [FileEntry],
    build: &[BuildFile],
    olds: &[Manifest],
    delta_from: usize,
    repo: &Repo,
    w: &mut PackWriter,
    level: i32,
) -> Result<HashMap<(usize, u64), u64>, PublishError> {
    let presents: Vec<HashSet<Hash>> = olds
        .iter()
        .map(|m| m.files.iter().flat_map(|f| f.chunks.iter().map(|c| c.hash())).collect())
        .collect();
    let mut jobs = Vec::new();
    let new_paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for (fi, f) in files.iter().enumerate() {
        for (k, m) in olds.iter().enumerate() {
            if let Some(old) = base_file(f, m, &new_paths).filter(|old| old.hash != f.hash) {
                jobs.push((fi, k, old));
            }
        }
    }
    let files_ro: &[FileEntry] = files;
    let results: Vec<Result<DeltaResult, PublishError>> = jobs
        .par_iter()
        .map(|&(fi, k, old)| {
            let new = &files_ro[fi];
            let mut r = DeltaResult {
                file: fi,
                from_seq: olds[k].release.seq,
                keep: Vec::new(),
                changed: 0,
            };
            for region in regions(new, old, &presents[k]) {
                let base = read_old(repo, old, region.base.0, region.base.1)?;
                let target = read_new(&build[fi], region.target.0, region.target.1)?;
                r.changed += fine_changed(&base, &target);
                if k >= delta_from {
                    continue;
                }
                let (method, bytes) = delta::best(&base, &target, level)?;
                let cost: u64 = new
                    .offsets()
                    .filter(|(o, c)| {
                        *o >= region.target.0
                            && o + c.len() <= region.target.0 + region.target.1
                            && !presents[k].contains(&c.hash())
                    })
                    .map(|(_, c)| c.blob().len)
                    .sum();
                if (bytes.len() as u64) < cost {
                    let p = PatchRef {
                        from: old.hash,
                        base: [region.base.0, region.base.1],
                        target: [region.target.0, region.target.1],
                        method,
                        hash: Hash::of(&bytes),
                        blob: Blob {
                            pack: 0,
                            offset: 0,
                            len: bytes.len() as u64,
                        },
                    };
                    r.keep.push((p, bytes));
                }
            }
            Ok(r)
        })
        .collect();
    let mut changed = HashMap::new();
    for r in results {
        let r = r?;
        changed.insert((r.file, r.from_seq), r.changed);
        for (mut p, bytes) in r.keep {
            p.blob = w.add(&bytes, None).map_err(io_err(&repo.dir))?;
            files[r.file].patches.push(p);
        }
    }
    Ok(changed)
}
