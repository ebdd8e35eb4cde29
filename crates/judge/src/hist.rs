//! Dense latency histograms in the router's bucket scheme, saved sparsely: counts, decayed counts, and the
//! share of a bucket above or below a value.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use wire::metrics::{BUCKETS, Histogram, bucket_index, bucket_lower_us, bucket_upper_us};

/// Counts per bucket (length [`BUCKETS`]); serialized as `[[bucket, count], ...]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dense(pub Vec<f64>);

impl Default for Dense {
    fn default() -> Self {
        Dense(vec![0.0; BUCKETS])
    }
}

impl Serialize for Dense {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(usize, f64)> = self.0.iter().copied().enumerate().filter(|(_, c)| *c > 0.0).collect();
        pairs.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Dense {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(usize, f64)>::deserialize(d)?;
        let mut out = Dense::default();
        for (i, c) in pairs {
            if i >= BUCKETS || !(c.is_finite() && c >= 0.0) {
                return Err(serde::de::Error::custom(format!("bad histogram bucket {i}: {c}")));
            }
            out.0[i] += c;
        }
        Ok(out)
    }
}

impl Dense {
    pub(crate) fn add(&mut self, h: &Histogram) {
        for b in &h.buckets {
            self.0[bucket_index(b.le_us)] += b.count as f64;
        }
    }

    pub(crate) fn total(&self) -> f64 {
        self.0.iter().sum()
    }

    pub(crate) fn scale(&mut self, f: f64) {
        self.0.iter_mut().for_each(|c| *c *= f);
    }

    /// The bucket holding the `q`-quantile.
    pub(crate) fn quantile_bucket(&self, q: f64) -> Option<usize> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let rank = (q * total).max(f64::MIN_POSITIVE);
        let mut seen = 0.0;
        for (i, c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(i);
            }
        }
        self.0.iter().rposition(|c| *c > 0.0)
    }

    /// The `q`-quantile in ms (middle of its bucket), NaN when empty.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile_bucket(q).map_or(f64::NAN, |i| mid_us(i) / 1000.0)
    }
}

fn mid_us(i: usize) -> f64 {
    let lo = bucket_lower_us(i) as f64;
    if i + 1 >= BUCKETS {
        lo
    } else {
        (lo + bucket_lower_us(i + 1) as f64) / 2.0
    }
}

/// Share of bucket `i`'s values above `t` µs once multiplied by `m`, taking
/// values as spread evenly over the bucket.
pub(crate) fn share_above(i: usize, m: f64, t: f64) -> f64 {
    let lo = bucket_lower_us(i) as f64 * m;
    let hi = if i + 1 >= BUCKETS {
        lo
    } else {
        bucket_lower_us(i + 1) as f64 * m
    };
    if lo > t {
        1.0
    } else if hi <= t || hi <= lo {
        0.0
    } else {
        (hi - t) / (hi - lo)
    }
}

/// Share of bucket `i`'s values below `t` µs once multiplied by `m`.
pub(crate) fn share_below(i: usize, m: f64, t: f64) -> f64 {
    let lo = bucket_lower_us(i) as f64 * m;
    let hi = if i + 1 >= BUCKETS {
        lo
    } else {
        bucket_lower_us(i + 1) as f64 * m
    };
    if hi <= t && hi > lo {
        1.0
    } else if lo >= t {
        0.0
    } else if hi <= lo {
        1.0
    } else {
        (t - lo) / (hi - lo)
    }
}

/// The largest value in bucket `i`, in µs.
pub(crate) fn upper_us(i: usize) -> f64 {
    bucket_upper_us(i).min(1 << 53) as f64
}

/// The smallest value in bucket `i`, in µs.
pub(crate) fn lower_us(i: usize) -> f64 {
    bucket_lower_us(i) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_survives_its_sparse_form_and_bad_buckets_are_refused() {
        let mut d = Dense::default();
        d.0[40] = 3.0;
        d.0[200] = 0.25;
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, "[[40,3.0],[200,0.25]]");
        assert_eq!(serde_json::from_str::<Dense>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Dense>(&format!("[[{BUCKETS},1.0]]")).is_err());
        assert!(serde_json::from_str::<Dense>("[[3,-1.0]]").is_err());
    }

    #[test]
    fn bucket_shares_split_a_bucket_evenly() {
        let i = bucket_index(1000);
        let (lo, hi) = (lower_us(i), lower_us(i + 1));
        let mid = (lo + hi) / 2.0;
        assert!((share_above(i, 1.0, mid) - 0.5).abs() < 1e-9);
        assert!((share_below(i, 1.0, mid) - 0.5).abs() < 1e-9);
        assert_eq!(share_above(i, 1.0, lo - 1.0), 1.0);
        assert_eq!(share_above(i, 1.0, hi), 0.0);
        assert_eq!(share_above(i, 2.0, hi), 1.0);
    }
}
