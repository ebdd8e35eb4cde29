//! The repo's object store: append-only pack files (`packs/<n>.pack`, never rewritten once closed)
//! holding zstd chunks and deltas, and the publisher's chunk index (`index/chunks`, fixed-size
//! records appended after their pack is on disk).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::hash::Hash;
use crate::manifest::Blob;

/// A pack is closed and a new one started past this size.
pub const PACK_TARGET: u64 = 64 << 20;

const RECORD: usize = 32 + 4 + 8 + 4 + 4;

pub fn pack_path(repo: &Path, pack: u32) -> PathBuf {
    repo.join(pack_name(pack))
}

/// The pack's path relative to the repo root (also its URL path).
pub fn pack_name(pack: u32) -> String {
    format!("packs/{pack:08}.pack")
}

/// Chunk hash -> where it is stored, and its uncompressed length.
#[derive(Debug, Default)]
pub struct Index {
    pub chunks: HashMap<Hash, (Blob, u32)>,
}

impl Index {
    pub fn load(repo: &Path) -> std::io::Result<Index> {
        let mut bytes = Vec::new();
        match File::open(repo.join("index/chunks")) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut chunks = HashMap::with_capacity(bytes.len() / RECORD);
        // A torn last record (crash while appending) is ignored: its pack is not referenced yet.
        for r in bytes.chunks_exact(RECORD) {
            let mut h = [0u8; 32];
            h.copy_from_slice(&r[..32]);
            let u32_at = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().unwrap_or_default());
            let offset = u64::from_le_bytes(r[36..44].try_into().unwrap_or_default());
            let blob = Blob {
                pack: u32_at(32),
                offset,
                len: u32_at(44) as u64,
            };
            chunks.insert(Hash(h), (blob, u32_at(48)));
        }
        Ok(Index { chunks })
    }
}

/// Writes new objects into fresh packs; nothing is visible in the index until `finish`.
pub struct PackWriter {
    repo: PathBuf,
    next: u32,
    current: Option<(u32, BufWriter<File>, u64)>,
    pending: Vec<(Hash, Blob, u32)>,
    closed: Vec<u32>,
    /// Bytes written to packs by this writer.
    pub written: u64,
}

impl PackWriter {
    /// Starts after the highest pack number in the repo.
    pub fn new(repo: &Path) -> std::io::Result<PackWriter> {
        std::fs::create_dir_all(repo.join("packs"))?;
        std::fs::create_dir_all(repo.join("index"))?;
        let mut next = 0u32;
        for e in std::fs::read_dir(repo.join("packs"))? {
            let name = e?.file_name();
            if let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_suffix(".pack"))
                .and_then(|s| s.parse::<u32>().ok())
            {
                next = next.max(n + 1);
            }
        }
        Ok(PackWriter {
            repo: repo.to_path_buf(),
            next,
            current: None,
            pending: Vec::new(),
            closed: Vec::new(),
            written: 0,
        })
    }

    /// Appends one stored object; `index_as` records it as a chunk of that hash and length.
    pub fn add(&mut self, bytes: &[u8], index_as: Option<(Hash, u32)>) -> std::io::Result<Blob> {
        if self.current.as_ref().is_some_and(|c| c.2 >= PACK_TARGET) {
            self.close_current()?;
        }
        if self.current.is_none() {
            let n = self.next;
            self.next += 1;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(pack_path(&self.repo, n))?;
            self.current = Some((n, BufWriter::with_capacity(1 << 20, f), 0));
        }
        let Some((pack, w, len)) = self.current.as_mut() else {
            unreachable!()
        };
        w.write_all(bytes)?;
        let blob = Blob {
            pack: *pack,
            offset: *len,
            len: bytes.len() as u64,
        };
        *len += bytes.len() as u64;
        self.written += bytes.len() as u64;
        if let Some((h, ulen)) = index_as {
            self.pending.push((h, blob, ulen));
        }
        Ok(blob)
    }

    fn close_current(&mut self) -> std::io::Result<()> {
        if let Some((n, w, _)) = self.current.take() {
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            self.closed.push(n);
        }
        Ok(())
    }

    /// Syncs the packs, then appends their chunks to the index. Returns the packs written.
    pub fn finish(mut self) -> std::io::Result<Vec<u32>> {
        self.close_current()?;
        crate::fsx::sync_dir(&self.repo.join("packs"));
        let mut out = Vec::with_capacity(self.pending.len() * RECORD);
        for (h, b, ulen) in &self.pending {
            out.extend_from_slice(&h.0);
            out.extend_from_slice(&b.pack.to_le_bytes());
            out.extend_from_slice(&b.offset.to_le_bytes());
            out.extend_from_slice(&(b.len as u32).to_le_bytes());
            out.extend_from_slice(&ulen.to_le_bytes());
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.repo.join("index/chunks"))?;
        f.write_all(&out)?;
        f.sync_all()?;
        Ok(self.closed)
    }
}

/// Reads one stored object from a local repo.
pub fn read_blob(repo: &Path, b: Blob) -> std::io::Result<Vec<u8>> {
    let f = File::open(pack_path(repo, b.pack))?;
    let mut buf = vec![0u8; b.len as usize];
    crate::fsx::read_at(&f, b.offset, &mut buf)?;
    Ok(buf)
}

/// Decompresses a stored chunk of `len` bytes and checks it against `hash`.
pub fn open_chunk(stored: &[u8], len: u64, hash: Hash) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    open_chunk_into(&mut zstd::zstd_safe::DCtx::create(), stored, len, hash, &mut out)?;
    Ok(out)
}

/// [`open_chunk`] into a reused buffer with a reused decoder.
pub fn open_chunk_into(
    dctx: &mut zstd::zstd_safe::DCtx<'_>,
    stored: &[u8],
    len: u64,
    hash: Hash,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    out.clear();
    out.reserve(len as usize);
    dctx.decompress(out, stored).map_err(|c| {
        format!(
            "not a zstd frame of {len} bytes ({})",
            zstd::zstd_safe::get_error_name(c)
        )
    })?;
    if out.len() as u64 != len || Hash::of(out) != hash {
        return Err(format!("content does not match chunk {}", hash.short()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_land_in_packs_and_only_finished_chunks_in_the_index() {
        let dir = testkit::TempDir::new("patch-pack");
        let mut w = PackWriter::new(dir.path()).unwrap();
        let data = b"hello chunk".to_vec();
        let z = zstd::bulk::compress(&data, 3).unwrap();
        let h = Hash::of(&data);
        let b = w.add(&z, Some((h, data.len() as u32))).unwrap();
        let d = w.add(b"delta", None).unwrap();
        assert!(Index::load(dir.path()).unwrap().chunks.is_empty());
        assert_eq!(w.finish().unwrap(), vec![0]);
        let idx = Index::load(dir.path()).unwrap();
        assert_eq!(idx.chunks.len(), 1);
        assert_eq!(idx.chunks[&h], (b, data.len() as u32));
        assert_eq!(
            open_chunk(&read_blob(dir.path(), b).unwrap(), data.len() as u64, h).unwrap(),
            data
        );
        assert_eq!(read_blob(dir.path(), d).unwrap(), b"delta");
        assert!(open_chunk(b"delta", 5, h).is_err());
        // The next writer starts a new pack; old packs are never reopened.
        let mut w = PackWriter::new(dir.path()).unwrap();
        assert_eq!(w.add(b"x", None).unwrap().pack, 1);
    }
}
