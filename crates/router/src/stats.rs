//! Lock-free per-instance counters and latency histograms, and their wire snapshots.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use wire::metrics::{BUCKETS, Counters, Histogram, StatusClasses, bucket_index};

/// Counters of one instance (or of requests that reached no release).
#[derive(Debug)]
pub struct Stats {
    requests: AtomicU64,
    classes: [AtomicU64; 5],
    upstream_failures: AtomicU64,
    open_requests: AtomicU64,
    upstream_connections: AtomicU64,
    long_lived: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency_sum_us: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: AtomicU64::new(0),
            classes: Default::default(),
            upstream_failures: AtomicU64::new(0),
            open_requests: AtomicU64::new(0),
            upstream_connections: AtomicU64::new(0),
            long_lived: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Microseconds since `t`, the latency unit of every histogram.
#[inline(always)]
pub fn micros_since(t: Instant) -> u64 {
    t.elapsed().as_micros().min(u64::MAX as u128) as u64
}

/// Decrements a gauge without wrapping below zero.
fn dec(g: &AtomicU64) {
    let _ = g.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
}

impl Stats {
    /// A request was routed here; pair with [`Stats::request_done`].
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.open_requests.fetch_add(1, Relaxed);
    }

    pub fn request_done(&self) {
        dec(&self.open_requests);
    }

    /// A request answered at once, without a request in flight (the router's own replies).
    pub fn answered(&self, status: u16, latency_us: u64) {
        self.request_started();
        self.response(status, latency_us);
        self.request_done();
    }

    /// A response head went to the client `latency_us` after the request head came in.
    pub fn response(&self, status: u16, latency_us: u64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.classes[class].fetch_add(1, Relaxed);
        self.latency[bucket_index(latency_us)].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(latency_us, Relaxed);
    }

    /// The router answered with 502/504 because of this upstream.
    pub fn upstream_failure(&self) {
        self.upstream_failures.fetch_add(1, Relaxed);
    }

    pub fn connection_opened(&self) {
        self.upstream_connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        dec(&self.upstream_connections);
    }

    pub fn long_lived_opened(&self) {
        self.long_lived.fetch_add(1, Relaxed);
    }

    pub fn long_lived_closed(&self) {
        dec(&self.long_lived);
    }

    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    pub fn open_requests(&self) -> u64 {
        self.open_requests.load(Relaxed)
    }

    pub fn open_connections(&self) -> u64 {
        self.upstream_connections.load(Relaxed)
    }

    pub fn open_long_lived(&self) -> u64 {
        self.long_lived.load(Relaxed)
    }

    pub fn snapshot(&self) -> Counters {
        let dense: Vec<u64> = self.latency.iter().map(|c| c.load(Relaxed)).collect();
        let c = |i: usize| self.classes[i].load(Relaxed);
        Counters {
            requests: self.requests.load(Relaxed),
            responses: StatusClasses {
                c1xx: c(0),
                c2xx: c(1),
                c3xx: c(2),
                c4xx: c(3),
                c5xx: c(4),
            },
            upstream_failures: self.upstream_failures.load(Relaxed),
            open_requests: self.open_requests.load(Relaxed),
            open_upstream_connections: self.upstream_connections.load(Relaxed),
            open_long_lived: self.long_lived.load(Relaxed),
            // Split by the long-lived registry in `Shared::metrics`.
            open_websockets: 0,
            open_tcp: 0,
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            latency_us: Histogram::from_dense(&dense, self.latency_sum_us.load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_never_wrap_and_classes_are_counted() {
        let s = Stats::default();
        s.request_done();
        assert_eq!(s.open_requests(), 0);
        s.request_started();
        s.response(204, 1500);
        s.response(503, 10);
        s.response(99, 10);
        let snap = s.snapshot();
        assert_eq!(snap.requests, 1);
        assert_eq!(snap.open_requests, 1);
        assert_eq!(snap.responses.c2xx, 1);
        assert_eq!(snap.responses.c5xx, 1);
        assert_eq!(snap.responses.c1xx, 1);
        assert_eq!(snap.latency_us.count, 3);
        assert_eq!(snap.latency_us.sum_us, 1520);
    }
}
