//! Router snapshots to judge windows: per-instance deltas of the cumulative counters, split into warm and
//! warming-up instances, fed to the judge; the whole state saved and restored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wire::judge::{JudgeConfig, Verdict};
use wire::metrics::{Bucket, Histogram, MetricsSnapshot};

use crate::{Judge, Observation, Side, Window};

/// Version of the saved state; a restore refuses any other.
const STATE_VERSION: u32 = 1;

/// One instance the analysis compares, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub release: String,
    pub instance: String,
    /// When its process last (re)started (the caller's clock, ms).
    pub started_at_ms: u64,
    /// Ready and serving.
    pub ready: bool,
}

/// The instances on each side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    pub canary: Vec<Member>,
    pub baseline: Vec<Member>,
}

/// The counters last seen for one instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Seen {
    requests: u64,
    errors: u64,
    latency: Histogram,
}

/// What is known about an instance's start, for its warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Life {
    started_at_ms: u64,
    /// Seen not ready since that start.
    seen_unready: bool,
    /// When it was then first seen ready.
    ready_at_ms: Option<u64>,
}

/// Why a saved state cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("judge state version {found} is not {STATE_VERSION}, the one this binary writes")]
    Version { found: u32 },
    #[error("judge state is inconsistent (settings, metrics or evidence do not fit together)")]
    Inconsistent,
}

/// An analysis fed with router snapshots: the windowing and the judge, all
/// of it serializable (`serde`) so it can be journaled and restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    version: u32,
    judge: Judge,
    /// The router process whose counters `prev` holds.
    router_id: Option<String>,
    /// Counters per `release/instance` at the last look.
    prev: BTreeMap<String, Seen>,
    lives: BTreeMap<String, Life>,
}

fn key(release: &str, instance: &str) -> String {
    format!("{release}/{instance}")
}

/// `now − earlier` for two sparse cumulative histograms (zero where counters went back).
fn since(now: &Histogram, earlier: &Histogram) -> Histogram {
    let mut buckets = Vec::with_capacity(now.buckets.len());
    let mut old = earlier.buckets.iter().peekable();
    let mut count = 0;
    for b in &now.buckets {
        while old.peek().is_some_and(|o| o.le_us < b.le_us) {
            old.next();
        }
        let before = old.peek().filter(|o| o.le_us == b.le_us).map_or(0, |o| o.count);
        let c = b.count.saturating_sub(before);
        if c > 0 {
            buckets.push(Bucket {
                le_us: b.le_us,
                count: c,
            });
            count += c;
        }
    }
    Histogram {
        count,
        sum_us: now.sum_us.saturating_sub(earlier.sum_us),
        buckets,
    }
}

/// `a + b` for two sparse histograms.
fn plus(a: &Histogram, b: &Histogram) -> Histogram {
    if a.buckets.is_empty() {
        return b.clone();
    }
    let mut out = Vec::with_capacity(a.buckets.len() + b.buckets.len());
    let (mut i, mut j) = (0, 0);
    while i < a.buckets.len() || j < b.buckets.len() {
        let (x, y) = (a.buckets.get(i), b.buckets.get(j));
        match (x, y) {
            (Some(x), Some(y)) if x.le_us == y.le_us => {
                out.push(Bucket {
                    le_us: x.le_us,
                    count: x.count + y.count,
                });
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.le_us < y.le_us => {
                out.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                out.push(*y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    Histogram {
        count: a.count + b.count,
        sum_us: a.sum_us + b.sum_us,
        buckets: out,
    }
}

fn add(w: &mut Window, requests: u64, errors: u64, latency: &Histogram) {
    w.requests += requests;
    w.errors += errors;
    w.latency = plus(&w.latency, latency);
}

impl Tracker {
    /// An analysis starting at `now_ms`, one of `analyses` sharing the deploy's error budget.
    pub fn new(config: &JudgeConfig, analyses: u32, now_ms: u64) -> Tracker {
        Tracker {
            version: STATE_VERSION,
            judge: Judge::new(config, analyses, now_ms),
            router_id: None,
            prev: BTreeMap::new(),
            lives: BTreeMap::new(),
        }
    }

    /// The next step's analysis of the same deploy, from `now_ms`: a new
    /// judge (new evidence, its own share of the budget) that keeps what this
    /// one learned about the traffic, and the windowing (no window is lost).
    pub fn next_step(&self, config: &JudgeConfig, analyses: u32, now_ms: u64) -> Tracker {
        let mut judge = Judge::new(config, analyses, now_ms);
        judge.inherit(&self.judge);
        Tracker {
            version: STATE_VERSION,
            judge,
            router_id: self.router_id.clone(),
            prev: self.prev.clone(),
            lives: self.lives.clone(),
        }
    }

    pub fn judge(&self) -> &Judge {
        &self.judge
    }

    /// Checks a state read back from a journal.
    pub fn check(&self) -> Result<(), RestoreError> {
        if self.version != STATE_VERSION {
            return Err(RestoreError::Version { found: self.version });
        }
        if !self.judge.is_sound() {
            return Err(RestoreError::Inconsistent);
        }
        Ok(())
    }

    /// Whether `m` is still warming up at `now_ms`; remembers what it saw.
    fn warming(&mut self, m: &Member, now_ms: u64) -> bool {
        let life = self.lives.entry(key(&m.release, &m.instance)).or_insert(Life {
            started_at_ms: m.started_at_ms,
            seen_unready: false,
            ready_at_ms: None,
        });
        if life.started_at_ms != m.started_at_ms {
            *life = Life {
                started_at_ms: m.started_at_ms,
                seen_unready: false,
                ready_at_ms: None,
            };
        }
        if !m.ready {
            life.seen_unready = true;
        } else if life.seen_unready && life.ready_at_ms.is_none() {
            life.ready_at_ms = Some(now_ms);
        }
        let from = life.started_at_ms.max(life.ready_at_ms.unwrap_or(0));
        now_ms < from + self.judge.config().warmup.as_millis()
    }

    /// Feeds the window since the last snapshot. Returns false when there was
    /// nothing to compare with yet (the first look, or a restarted router).
    pub fn feed(&mut self, snap: &MetricsSnapshot, members: &Members, now_ms: u64) -> bool {
        let mut now: BTreeMap<String, Seen> = BTreeMap::new();
        for r in &snap.releases {
            for i in &r.instances {
                let c = &i.counters;
                now.insert(
                    key(&r.release, &i.instance),
                    Seen {
                        requests: c.requests,
                        errors: c.errors(),
                        latency: c.latency_us.clone(),
                    },
                );
            }
        }
        let fresh = self.router_id.as_deref() != Some(snap.router_id.as_str());
        if fresh {
            // First look, or the router restarted (its counters began again).
            self.router_id = Some(snap.router_id.clone());
        }
        let mut sides = [Side::default(), Side::default()];
        let mut halves = [(0, 0); 2];
        let mut per_canary = Vec::with_capacity(members.canary.len());
        for (k, (side, list)) in sides.iter_mut().zip([&members.canary, &members.baseline]).enumerate() {
            for (i, m) in list.iter().enumerate() {
                let warming = self.warming(m, now_ms);
                if fresh {
                    continue;
                }
                let Some(c) = now.get(&key(&m.release, &m.instance)) else {
                    if k == 0 {
                        per_canary.push((0, 0)); // one entry per member, in the members' order
                    }
                    continue;
                };
                let empty = Seen::default();
                let p = self.prev.get(&key(&m.release, &m.instance)).unwrap_or(&empty);
                let (n, e) = (c.requests.saturating_sub(p.requests), c.errors.saturating_sub(p.errors));
                if k == 1 {
                    halves[i % 2].0 += n;
                    halves[i % 2].1 += e;
                } else {
                    per_canary.push((n, e.min(n)));
                }
                let w = if warming { &mut side.warming } else { &mut side.warm };
                add(w, n, e, &since(&c.latency, &p.latency));
            }
        }
        self.prev = now;
        if fresh {
            return false;
        }
        let [canary, baseline] = sides;
        self.judge.observe(&Observation {
            at_ms: now_ms,
            baseline,
            canary,
            baseline_halves: halves,
            canary_instances: per_canary,
        });
        true
    }

    /// The verdict at `now_ms` (see [`Judge::verdict`]).
    pub fn verdict(&self, now_ms: u64, hold_end_ms: Option<u64>) -> Verdict {
        self.judge.verdict(now_ms, hold_end_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A histogram with `count` values near each of the given µs.
    fn h(pairs: &[(u64, u64)]) -> Histogram {
        Histogram {
            count: pairs.iter().map(|p| p.1).sum(),
            sum_us: 0,
            buckets: pairs
                .iter()
                .map(|&(us, count)| Bucket {
                    le_us: wire::metrics::bucket_upper_us(wire::metrics::bucket_index(us * 100)),
                    count,
                })
                .collect(),
        }
    }

    #[test]
    fn sparse_deltas_and_sums_match_the_dense_ones() {
        let a = h(&[(10, 3), (20, 5), (40, 1)]);
        let b = h(&[(10, 1), (30, 2), (40, 1)]);
        assert_eq!(since(&a, &b), h(&[(10, 2), (20, 5)]));
        assert_eq!(plus(&a, &b), a.merged(&b));
        assert_eq!(plus(&Histogram::default(), &b), b);
    }
}
