//! The pure update planner: given a release manifest and what is already on disk (described by
//! content), decide per file whether to link an identical local file or build it from chunks that are
//! in place, copied from local files, fetched, or rebuilt by a delta, and list the blobs to fetch.
//! The client runs it on its disk; the publisher runs it on an old release to size the patch.

use std::collections::HashMap;

use crate::hash::Hash;
use crate::manifest::{Blob, Manifest};

/// Content already on this side, by hash.
#[derive(Debug, Default, Clone)]
pub struct Local {
    /// Where the content comes from (paths on disk, or an old release's paths for the report).
    pub sources: Vec<String>,
    /// Whole-file hash -> source holding exactly that content.
    pub files: HashMap<Hash, usize>,
    /// Chunk hash -> (source, offset) where it can be copied from.
    pub chunks: HashMap<Hash, (usize, u64)>,
}

impl Local {
    /// An intact install of `m` (sources are its paths).
    pub fn of_release(m: &Manifest) -> Local {
        let mut l = Local::default();
        for f in &m.files {
            let s = l.add_source(&f.path);
            l.files.entry(f.hash).or_insert(s);
            for (off, c) in f.offsets() {
                l.chunks.entry(c.hash()).or_insert((s, off));
            }
        }
        l
    }

    pub fn add_source(&mut self, name: &str) -> usize {
        self.sources.push(name.to_string());
        self.sources.len() - 1
    }
}

/// How one chunk of a file being built gets its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// Already written (and checked) in the partial staging file.
    InPlace,
    /// Copied from a local source at an offset.
    Seed { source: usize, offset: u64 },
    /// From fetch number `fetch`.
    Fetch { fetch: usize },
    /// Rebuilt by delta `patch` of the file (fetch `fetch`, base in local `source`).
    Patch { patch: usize, fetch: usize, source: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// An identical file exists locally: link or copy it.
    Link { source: usize },
    /// Build it chunk by chunk.
    Build { pieces: Vec<Piece> },
}

#[derive(Debug, Clone)]
pub struct FilePlan {
    /// Index in the manifest's files.
    pub file: usize,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    Chunk { hash: Hash, len: u64 },
    Delta { hash: Hash },
}

/// One object to download, and where its bytes go.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub blob: Blob,
    pub kind: FetchKind,
    /// (file plan index, offset in that file) for a chunk; (file plan index, patch index) for a delta.
    pub dests: Vec<(usize, u64)>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub files: Vec<FilePlan>,
    pub fetches: Vec<Fetch>,
    pub chunk_bytes: u64,
    pub delta_bytes: u64,
    /// Per file plan: bytes of the fetches it was first to need.
    pub file_download: Vec<u64>,
}

impl Plan {
    pub fn download(&self) -> u64 {
        self.chunk_bytes + self.delta_bytes
    }
}

/// Plans building `selected` files (indices into `m.files`). `in_place[i]` marks chunks of file `i`
/// already correct in its staging file.
pub fn plan(m: &Manifest, selected: &[usize], local: &Local, in_place: &HashMap<usize, Vec<bool>>) -> Plan {
    let mut p = Plan::default();
    let mut by_chunk: HashMap<Hash, usize> = HashMap::new();
    for &fi in selected {
        let f = &m.files[fi];
        let plan_idx = p.files.len();
        p.file_download.push(0);
        if let Some(&source) = local.files.get(&f.hash) {
            p.files.push(FilePlan {
                file: fi,
                action: Action::Link { source },
            });
            continue;
        }
        let starts: Vec<u64> = f.offsets().map(|(o, _)| o).collect();
        let mut pieces: Vec<Option<Piece>> = match in_place.get(&fi) {
            Some(done) => done.iter().map(|d| d.then_some(Piece::InPlace)).collect(),
            None => vec![None; f.chunks.len()],
        };
        pieces.resize(f.chunks.len(), None);
        choose_deltas(&mut p, f, plan_idx, &starts, &mut pieces, local, &by_chunk);
        let pieces = pieces
            .into_iter()
            .enumerate()
            .map(|(i, x)| {
                x.unwrap_or_else(|| {
                    let c = &f.chunks[i];
                    if let Some(&(source, offset)) = local.chunks.get(&c.hash()) {
                        return Piece::Seed { source, offset };
                    }
                    let fetch = *by_chunk.entry(c.hash()).or_insert_with(|| {
                        p.fetches.push(Fetch {
                            blob: c.blob(),
                            kind: FetchKind::Chunk {
                                hash: c.hash(),
                                len: c.len(),
                            },
                            dests: Vec::new(),
                        });
                        p.chunk_bytes += c.blob().len;
                        p.file_download[plan_idx] += c.blob().len;
                        p.fetches.len() - 1
                    });
                    p.fetches[fetch].dests.push((plan_idx, starts[i]));
                    Piece::Fetch { fetch }
                })
            })
            .collect();
        p.files.push(FilePlan {
            file: fi,
            action: Action::Build { pieces },
        });
    }
    p
}

/// Marks the chunks of `f` that a delta rebuilds more cheaply than fetching them would cost, and
/// adds those deltas' fetches.
fn choose_deltas(
    p: &mut Plan,
    f: &crate::manifest::FileEntry,
    plan_idx: usize,
    starts: &[u64],
    pieces: &mut [Option<Piece>],
    local: &Local,
    by_chunk: &HashMap<Hash, usize>,
) {
    for (pi, patch) in f.patches.iter().enumerate() {
        let Some(&source) = local.files.get(&patch.from) else {
            continue;
        };
        let a = starts.partition_point(|&s| s < patch.target[0]);
        let b = starts.partition_point(|&s| s < patch.target[0] + patch.target[1]);
        if a >= b || pieces[a..b].iter().any(|x| matches!(x, Some(Piece::Patch { .. }))) {
            continue;
        }
        let cost: u64 = (a..b)
            .filter(|&i| pieces[i].is_none())
            .map(|i| &f.chunks[i])
            .filter(|c| !local.chunks.contains_key(&c.hash()) && !by_chunk.contains_key(&c.hash()))
            .map(|c| c.blob().len)
            .sum();
        if patch.blob.len >= cost {
            continue;
        }
        let fetch = p.fetches.len();
        p.fetches.push(Fetch {
            blob: patch.blob,
            kind: FetchKind::Delta { hash: patch.hash },
            dests: vec![(plan_idx, pi as u64)],
        });
        p.delta_bytes += patch.blob.len;
        p.file_download[plan_idx] += patch.blob.len;
        for x in &mut pieces[a..b] {
            if x.is_none() {
                *x = Some(Piece::Patch {
                    patch: pi,
                    fetch,
                    source,
                });
            }
        }
    }
}
