//! Binary deltas between an old and a new range of a file: zstd with the old bytes as a reference
//! prefix (long-distance matching on), and BSDIFF40 (qbsdiff). The publisher makes both and keeps
//! the smaller; the client decodes into a buffer bounded by the expected length.

use std::io::Write;

use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter};

use crate::manifest::Method;

/// A failure making or applying a delta.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("zstd: {0}")]
    Zstd(String),
    #[error("bsdiff: {0}")]
    Bsdiff(std::io::Error),
    #[error("the delta produced {got} bytes, {want} expected")]
    Length { got: u64, want: u64 },
}

fn zerr(code: usize) -> DeltaError {
    DeltaError::Zstd(zstd::zstd_safe::get_error_name(code).to_string())
}

/// The window a zstd delta needs: enough to reach from the end of the target back to the base start.
fn window_log(base: usize, target: usize) -> u32 {
    let need = (base + target).max(1 << 10) as u64;
    (64 - (need - 1).leading_zeros()).clamp(10, 27)
}

/// zstd-compresses `target` with `base` as its reference prefix.
pub fn zstd_encode(base: &[u8], target: &[u8], level: i32) -> Result<Vec<u8>, DeltaError> {
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level)).map_err(zerr)?;
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(zerr)?;
    cctx.set_parameter(CParameter::WindowLog(window_log(base.len(), target.len())))
        .map_err(zerr)?;
    cctx.set_parameter(CParameter::ChecksumFlag(false)).map_err(zerr)?;
    cctx.set_pledged_src_size(Some(target.len() as u64)).map_err(zerr)?;
    cctx.ref_prefix(base).map_err(zerr)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut out, target).map_err(zerr)?;
    Ok(out)
}

/// A BSDIFF40 patch from `base` to `target`.
pub fn bsdiff_encode(base: &[u8], target: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut out = Vec::new();
    qbsdiff::Bsdiff::new(base, target)
        .compression_level(9)
        .compare(std::io::Cursor::new(&mut out))
        .map_err(DeltaError::Bsdiff)?;
    Ok(out)
}

/// The smaller of the two deltas (zstd on a tie, it applies faster).
pub fn best(base: &[u8], target: &[u8], level: i32) -> Result<(Method, Vec<u8>), DeltaError> {
    let z = zstd_encode(base, target, level)?;
    let b = bsdiff_encode(base, target)?;
    Ok(if b.len() < z.len() {
        (Method::Bsdiff, b)
    } else {
        (Method::Zstd, z)
    })
}

/// Rebuilds exactly `len` bytes from `base` and a delta.
pub fn apply(method: Method, base: &[u8], delta: &[u8], len: u64) -> Result<Vec<u8>, DeltaError> {
    let out = match method {
        Method::Zstd => {
            let mut dctx = DCtx::create();
            dctx.set_parameter(DParameter::WindowLogMax(27)).map_err(zerr)?;
            dctx.ref_prefix(base).map_err(zerr)?;
            let mut out = Vec::with_capacity(len as usize);
            dctx.decompress(&mut out, delta).map_err(zerr)?;
            out
        }
        Method::Bsdiff => {
            let mut w = Bounded {
                out: Vec::with_capacity(len as usize),
                cap: len,
            };
            qbsdiff::Bspatch::new(delta)
                .and_then(|p| p.apply(base, &mut w))
                .map_err(DeltaError::Bsdiff)?;
            w.out
        }
    };
    if out.len() as u64 != len {
        return Err(DeltaError::Length {
            got: out.len() as u64,
            want: len,
        });
    }
    Ok(out)
}

/// A writer that refuses to grow past `cap`.
struct Bounded {
    out: Vec<u8>,
    cap: u64,
}

impl Write for Bounded {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.out.len() as u64 + b.len() as u64 > self.cap {
            return Err(std::io::Error::other("the delta writes past the expected length"));
        }
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 31 + seed as usize) % 251) as u8 ^ (i / 97) as u8)
            .collect()
    }

    #[test]
    fn both_deltas_rebuild_the_target_and_are_small_for_a_small_edit() {
        let base = sample(300_000, 1);
        let mut target = base.clone();
        target.splice(1000..1000, b"inserted bytes".iter().copied());
        target[200_000] ^= 0xff;
        for method in [Method::Zstd, Method::Bsdiff] {
            let d = match method {
                Method::Zstd => zstd_encode(&base, &target, 19).unwrap(),
                Method::Bsdiff => bsdiff_encode(&base, &target).unwrap(),
            };
            assert!(d.len() < 2000, "{method:?} delta of {} bytes", d.len());
            assert_eq!(apply(method, &base, &d, target.len() as u64).unwrap(), target);
            // The wrong expected length, or the wrong base, is an error, not a wrong file.
            assert!(apply(method, &base, &d, target.len() as u64 - 1).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Corrupt deltas give an error (or bytes the caller's hash check then refuses), never a panic.
        #[test]
        fn garbage_deltas_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..300), flip in 0usize..400) {
            let base = sample(4000, 3);
            let target = sample(4100, 4);
            let _ = apply(Method::Zstd, &base, &junk, 4100);
            let _ = apply(Method::Bsdiff, &base, &junk, 4100);
            let (m, mut d) = best(&base, &target, 3).unwrap();
            let i = flip % d.len();
            d[i] ^= 0x5a;
            let _ = apply(m, &base, &d, 4100);
        }
    }
}
