//! Content-defined chunking with FastCDC v2020 (normalization level 2, gear seed 0), per file, streamed.
//! The cut points are part of the repo format: `fastcdc` is pinned to one version and a golden test
//! below fails if they ever move.

use std::io::Read;

use fastcdc::v2020::{FastCDC, Normalization};

/// Chunk sizes for one kind of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

/// General content: casync's 16/64/256 KiB.
pub const DEFAULT: Profile = Profile {
    min: 16 << 10,
    avg: 64 << 10,
    max: 256 << 10,
};

/// Large bulk files (≥ [`BULK_FROM`]): 256 KiB / 1 MiB / 4 MiB, 16× fewer index entries.
pub const BULK: Profile = Profile {
    min: 256 << 10,
    avg: 1 << 20,
    max: 4 << 20,
};

/// Files at least this large use [`BULK`].
pub const BULK_FROM: u64 = 64 << 20;

/// The largest chunk any profile makes (a manifest with a longer one is refused).
pub const MAX_CHUNK: u64 = 4 << 20;

/// The profile for a file of `size` bytes.
pub fn profile_for(size: u64) -> Profile {
    if size >= BULK_FROM { BULK } else { DEFAULT }
}

/// Calls `each(offset, bytes)` for every chunk of `r`, in order; returns the total length.
/// Cut points are those FastCDC finds on the whole content at once.
pub fn chunk_stream<R: Read, E: From<std::io::Error>>(
    mut r: R,
    p: Profile,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let cap = (p.max * 4).max(1 << 20);
    let mut buf = vec![0u8; cap];
    let (mut start, mut end, mut eof, mut base) = (0usize, 0usize, false, 0u64);
    loop {
        while !eof && end < cap {
            let n = r.read(&mut buf[end..])?;
            if n == 0 {
                eof = true;
            } else {
                end += n;
            }
        }
        let cdc = FastCDC::with_level(&buf[..end], p.min, p.avg, p.max, Normalization::Level2);
        // Cut only where at least `max` bytes (or the end) are in the buffer, as on the whole file.
        while start < end && (eof || end - start >= p.max) {
            let (_, cut) = cdc.cut(start, end - start);
            each(base + start as u64, &buf[start..cut])?;
            start = cut;
        }
        if eof && start >= end {
            return Ok(base + end as u64);
        }
        buf.copy_within(start..end, 0);
        base += start as u64;
        end -= start;
        start = 0;
    }
}

/// The chunks of an in-memory buffer: `(offset, len)`.
pub fn cuts(data: &[u8], p: Profile) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let _ = chunk_stream::<_, std::io::Error>(data, p, |o, b| {
        out.push((o, b.len()));
        Ok(())
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that look like a mix of text and binary (xorshift64*, fixed seed).
    pub(crate) fn golden_data(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            // Runs of "words" with some repetition, so the content is not pure noise.
            let word = (v >> 59) as usize + 1;
            let b = (v & 0xff) as u8;
            for i in 0..word {
                out.push(if v & 0x100 == 0 {
                    b'a' + ((b as usize + i) % 26) as u8
                } else {
                    b.wrapping_add(i as u8)
                });
            }
        }
        out.truncate(n);
        out
    }

    /// If this fails, the chunker's cut points moved: a crate upgrade changed the repo format.
    /// Old repos would stop deduplicating against new builds. Do not update the numbers; pin fastcdc.
    #[test]
    fn golden_cut_points_never_move() {
        let data = golden_data(3 << 20);
        assert_eq!(
            blake3::hash(&data).to_hex().to_string(),
            "c7fc7c7842bbcae6135e7677566ddd0196d10a45d8c504f650413e3074ae892f",
            "the golden data generator changed"
        );
        let ends: Vec<u64> = cuts(&data, DEFAULT).iter().map(|(o, l)| o + *l as u64).collect();
        assert_eq!(ends, GOLDEN_DEFAULT.to_vec());
        let ends: Vec<u64> = cuts(&data, BULK).iter().map(|(o, l)| o + *l as u64).collect();
        assert_eq!(ends, GOLDEN_BULK.to_vec());
    }

    const GOLDEN_DEFAULT: &[u64] = &[
        52906, 134432, 224551, 299024, 372886, 441343, 519835, 550471, 648842, 762323, 830214, 860646, 932081, 1008446,
        1080496, 1159437, 1235193, 1315521, 1338648, 1412751, 1479965, 1515801, 1589912, 1662565, 1741129, 1811644,
        1881592, 1949515, 2020770, 2115668, 2197198, 2263442, 2394014, 2459856, 2531601, 2608011, 2733391, 2757777,
        2818960, 2888565, 2954881, 3033401, 3068085, 3112002, 3145728,
    ];
    const GOLDEN_BULK: &[u64] = &[1079973, 2197198, 3068085, 3145728];

    #[test]
    fn streaming_finds_the_cut_points_of_the_whole_buffer() {
        let data = golden_data(5 << 20);
        let whole: Vec<(u64, usize)> = FastCDC::with_level(&data, 16 << 10, 64 << 10, 256 << 10, Normalization::Level2)
            .map(|c| (c.offset as u64, c.length))
            .collect();
        // A reader that hands out odd-sized pieces.
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.1 = (self.1 * 7 + 13) % 70_001 + 1;
                let n = self.1.min(b.len()).min(self.0.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut got = Vec::new();
        chunk_stream::<_, std::io::Error>(Dribble(&data, 0), DEFAULT, |o, b| {
            got.push((o, b.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, whole);
        assert!(cuts(&[], DEFAULT).is_empty());
        assert_eq!(cuts(b"tiny", DEFAULT), vec![(0, 4)]);
    }
}
