//! The latency histogram scheme and the JSON metrics snapshot routers export and the control plane polls.
//!
//! Latencies are bucketed log-linearly in microseconds: values below 32 µs
//! get one bucket each, above that every power of two is split into 16 equal
//! buckets, so a bucket is at most 6.25% wide. Values from about 71 minutes up
//! share the last bucket. The scheme is fixed here so the router, the judge
//! and the benches bucket the same way.

use serde::{Deserialize, Serialize};

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Largest value with its own bucket; larger values are clamped to it.
pub const MAX_TRACKED_US: u64 = u32::MAX as u64;
/// Number of buckets in the scheme.
pub const BUCKETS: usize = bucket_index(MAX_TRACKED_US) + 1;

/// Bucket of a latency in microseconds.
pub const fn bucket_index(us: u64) -> usize {
    let v = if us > MAX_TRACKED_US { MAX_TRACKED_US } else { us };
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as u64) * SUB + (v >> shift)) as usize
}

/// Smallest value (µs) that falls into bucket `i`.
pub const fn bucket_lower_us(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let m = i % SUB + SUB;
    m << shift
}

/// Largest value (µs) that falls into bucket `i` (inclusive, like Prometheus' `le`).
pub const fn bucket_upper_us(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        return u64::MAX;
    }
    bucket_lower_us(i + 1) - 1
}

/// One non-empty bucket of a latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Inclusive upper bound in microseconds; identifies the bucket.
    pub le_us: u64,
    pub count: u64,
}

/// A latency histogram in the fixed scheme, sparse (empty buckets left out),
/// buckets in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Histogram {
    pub count: u64,
    pub sum_us: u64,
    pub buckets: Vec<Bucket>,
}

impl Histogram {
    /// Builds a sparse histogram from dense per-bucket counts.
    pub fn from_dense(counts: &[u64], sum_us: u64) -> Histogram {
        let mut h = Histogram {
            count: 0,
            sum_us,
            buckets: Vec::new(),
        };
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 {
                h.count += c;
                h.buckets.push(Bucket {
                    le_us: bucket_upper_us(i),
                    count: c,
                });
            }
        }
        h
    }

    /// Dense per-bucket counts (length [`BUCKETS`]).
    pub fn to_dense(&self) -> Vec<u64> {
        let mut out = vec![0; BUCKETS];
        for b in &self.buckets {
            out[bucket_index(b.le_us)] += b.count;
        }
        out
    }

    pub fn record(&mut self, us: u64) {
        let mut dense = self.to_dense();
        dense[bucket_index(us)] += 1;
        *self = Histogram::from_dense(&dense, self.sum_us + us);
    }

    /// `self + other`.
    pub fn merged(&self, other: &Histogram) -> Histogram {
        let mut a = self.to_dense();
        for (x, y) in a.iter_mut().zip(other.to_dense()) {
            *x += y;
        }
        Histogram::from_dense(&a, self.sum_us + other.sum_us)
    }

    /// `self - earlier`, for the window between two cumulative snapshots;
    /// saturates at zero if counters were reset.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut a = self.to_dense();
        for (x, y) in a.iter_mut().zip(earlier.to_dense()) {
            *x = x.saturating_sub(y);
        }
        Histogram::from_dense(&a, self.sum_us.saturating_sub(earlier.sum_us))
    }

    /// Estimated quantile (`q` in 0..=1) in microseconds: the midpoint of the
    /// bucket holding it. `None` when empty.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for b in &self.buckets {
            seen += b.count;
            if seen >= rank {
                let i = bucket_index(b.le_us);
                let lo = bucket_lower_us(i) as f64;
                let hi = if i + 1 >= BUCKETS {
                    lo
                } else {
                    bucket_lower_us(i + 1) as f64
                };
                return Some((lo + hi) / 2.0);
            }
        }
        self.buckets.last().map(|b| b.le_us as f64)
    }
}

/// Responses by status class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatusClasses {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl StatusClasses {
    pub fn total(&self) -> u64 {
        self.c1xx + self.c2xx + self.c3xx + self.c4xx + self.c5xx
    }
}

/// Counters of one instance or one release. Counters are cumulative since the
/// router started; gauges (`open_*`) are current values.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    pub requests: u64,
    pub responses: StatusClasses,
    /// Requests the router answered itself with 502 or 504 because the
    /// upstream failed (also counted in `responses.5xx`).
    pub upstream_failures: u64,
    pub open_requests: u64,
    pub open_upstream_connections: u64,
    /// Upgraded (WebSocket) and raw TCP connections currently open.
    pub open_long_lived: u64,
    /// Of those: WebSocket tunnels, and raw TCP connections (absent from routers before they were split: 0).
    #[serde(default)]
    pub open_websockets: u64,
    #[serde(default)]
    pub open_tcp: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Time from receiving the request head to sending the response head.
    pub latency_us: Histogram,
}

impl Counters {
    /// Errors as the judge sees them: 5xx responses, the router's own included.
    pub fn errors(&self) -> u64 {
        self.responses.c5xx
    }

    pub fn add(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.responses.c1xx += o.responses.c1xx;
        self.responses.c2xx += o.responses.c2xx;
        self.responses.c3xx += o.responses.c3xx;
        self.responses.c4xx += o.responses.c4xx;
        self.responses.c5xx += o.responses.c5xx;
        self.upstream_failures += o.upstream_failures;
        self.open_requests += o.open_requests;
        self.open_upstream_connections += o.open_upstream_connections;
        self.open_long_lived += o.open_long_lived;
        self.open_websockets += o.open_websockets;
        self.open_tcp += o.open_tcp;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.latency_us = self.latency_us.merged(&o.latency_us);
    }

    /// The window between `earlier` and `self`; gauges keep `self`'s values.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        Counters {
            requests: d(self.requests, earlier.requests),
            responses: StatusClasses {
                c1xx: d(self.responses.c1xx, earlier.responses.c1xx),
                c2xx: d(self.responses.c2xx, earlier.responses.c2xx),
                c3xx: d(self.responses.c3xx, earlier.responses.c3xx),
                c4xx: d(self.responses.c4xx, earlier.responses.c4xx),
                c5xx: d(self.responses.c5xx, earlier.responses.c5xx),
            },
            upstream_failures: d(self.upstream_failures, earlier.upstream_failures),
            open_requests: self.open_requests,
            open_upstream_connections: self.open_upstream_connections,
            open_long_lived: self.open_long_lived,
            open_websockets: self.open_websockets,
            open_tcp: self.open_tcp,
            bytes_in: d(self.bytes_in, earlier.bytes_in),
            bytes_out: d(self.bytes_out, earlier.bytes_out),
            latency_us: self.latency_us.since(&earlier.latency_us),
        }
    }
}

/// Metrics of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMetrics {
    pub instance: String,
    pub addr: String,
    pub healthy: bool,
    #[serde(flatten)]
    pub counters: Counters,
}

/// Metrics of one release: the sum of its instances, and each of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseMetrics {
    pub release: String,
    #[serde(flatten)]
    pub totals: Counters,
    pub instances: Vec<InstanceMetrics>,
}

/// What `GET /v1/metrics` on a router's admin listener returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Distinguishes router processes: counters restart from zero when this changes.
    pub router_id: String,
    pub generation: u64,
    /// Milliseconds since this router process started (monotonic).
    pub uptime_ms: u64,
    pub releases: Vec<ReleaseMetrics>,
    /// Requests answered without reaching any release (426, 503 "no release").
    pub unrouted: Counters,
}

impl MetricsSnapshot {
    pub fn release(&self, id: &str) -> Option<&ReleaseMetrics> {
        self.releases.iter().find(|r| r.release == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(31), 31);
        assert_eq!(bucket_index(32), 32);
        assert_eq!(bucket_index(33), 32);
        assert_eq!(bucket_index(34), 33);
        for i in 0..BUCKETS - 1 {
            let lo = bucket_lower_us(i);
            let hi = bucket_upper_us(i);
            assert_eq!(bucket_index(lo), i);
            assert_eq!(bucket_index(hi), i);
            assert_eq!(bucket_index(hi + 1), i + 1);
            if lo >= 32 {
                assert!((hi + 1 - lo) as f64 / lo as f64 <= 0.0625 + 1e-12);
            }
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn histogram_windows_and_quantiles() {
        let mut a = Histogram::default();
        for us in [100, 200, 300, 400, 10_000] {
            a.record(us);
        }
        let mut b = a.clone();
        for _ in 0..95 {
            b.record(1_000);
        }
        let w = b.since(&a);
        assert_eq!(w.count, 95);
        let p50 = w.quantile_us(0.5).unwrap();
        assert!((p50 - 1000.0).abs() / 1000.0 < 0.04, "{p50}");
        assert_eq!(a.merged(&w), b);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<Histogram>(&json).unwrap(), b);
    }
}
