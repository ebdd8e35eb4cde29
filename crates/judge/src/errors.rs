//! The error-rate test: in every window, is each error the canary's more often than its share of the traffic
//! (times the tolerance) would make it? Warm and warming-up canary requests are tested apart.

use serde::{Deserialize, Serialize};

use crate::seq::{Dispersion, Evidence, Fit, target_ln, would_catch};
use crate::{Observation, fmt_odds, fmt_rate};

/// The test of one kind of canary request (warm, or warming up) against the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Part {
    /// 1 + the relative tolerance (1 − it for a decrease).
    factor: f64,
    abs: f64,
    evidence: Evidence,
    n_c: u64,
    x_c: u64,
}

impl Part {
    fn new(factor: f64, abs: f64, start_ms: u64) -> Part {
        Part {
            factor,
            abs,
            evidence: Evidence::new(start_ms),
            n_c: 0,
            x_c: 0,
        }
    }

    /// One window: `n` canary requests with `x` errors against `n_b`, `x_b`.
    fn observe(&mut self, up: bool, (n, x): (u64, u64), (n_b, x_b): (u64, u64), temper: f64, at_ms: u64) {
        self.evidence.advance(at_ms);
        self.n_c += n;
        self.x_c += x;
        let weighted = n as f64 * self.factor;
        if weighted <= 0.0 || n_b == 0 || x + x_b == 0 {
            return;
        }
        let pi0 = weighted / (weighted + n_b as f64);
        // "Success" is an error from the side that would be bad.
        if up {
            self.evidence.update(x as f64, x_b as f64, pi0, temper);
        } else {
            self.evidence.update(x_b as f64, x as f64, 1.0 - pi0, temper);
        }
    }

    fn rate(&self) -> f64 {
        if self.n_c == 0 {
            f64::NAN
        } else {
            self.x_c as f64 / self.n_c as f64
        }
    }

    /// Reached the bound, and the observed excess is past the absolute tolerance.
    fn failed(&self, up: bool, pb: f64, bound: f64) -> bool {
        let excess = if up { self.rate() - pb } else { pb - self.rate() };
        self.evidence.log_evidence() >= bound && excess > self.abs
    }
}

/// One direction of the error test (an increase of the canary's rate is bad, or a decrease).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ErrorTest {
    up: bool,
    /// Warm canary requests, and warming ones.
    parts: [Part; 2],
    /// Bursts, from all canary requests against the baseline's.
    dispersion: Dispersion,
    fit: Fit,
    n_b: u64,
    x_b: u64,
    /// For an increase, with two or more canary instances: the canary
    /// *without* each one of its instances (see [`SPREAD_LN`]), so one
    /// instance's bad upstream fails no release.
    #[serde(default)]
    spread: Vec<Rest>,
}

/// The canary without one of its instances, against the baseline in the same windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rest {
    evidence: Evidence,
    /// Its requests, and all the canary's, since it started.
    n: u64,
    n_all: u64,
}

impl Rest {
    fn new(at_ms: u64) -> Rest {
        Rest {
            evidence: Evidence::new(at_ms),
            n: 0,
            n_all: 0,
        }
    }

    /// Whether it leaves a failure standing: it shows the excess too, or it
    /// served less than a quarter of the canary's requests, too few to tell
    /// an instance's trouble from the release's (sticky clients on one instance).
    fn confirms(&self) -> bool {
        self.evidence.log_evidence() >= SPREAD_LN || self.n * 4 < self.n_all
    }
}

/// The odds (ln) the canary without any one of its instances must still show
/// against the baseline for an error increase to fail, unless that rest got too
/// little traffic to show it: a confirmation that the excess is the release's,
/// not one instance's episode. It can only remove failures, so the error bound
/// holds as before.
const SPREAD_LN: f64 = 2.995_732_273_553_991; // ln 20

/// What one direction's test concluded, for the metric's verdict.
pub(crate) struct Finding {
    pub failed: bool,
    pub log_evidence: f64,
    pub reason: String,
    pub baseline: f64,
    pub canary: f64,
}

impl ErrorTest {
    pub(crate) fn new(up: bool, rel: f64, abs: f64, warm_rel: f64, warm_abs: f64, start_ms: u64) -> ErrorTest {
        let (f, fw) = if up {
            (1.0 + rel, 1.0 + warm_rel.max(rel))
        } else {
            let f = (1.0 - rel).max(1e-6);
            (f, f)
        };
        ErrorTest {
            up,
            parts: [Part::new(f, abs, start_ms), Part::new(fw, warm_abs.max(abs), start_ms)],
            dispersion: Dispersion::default(),
            fit: Fit::default(),
            n_b: 0,
            x_b: 0,
            spread: Vec::new(),
        }
    }

    /// Feeds the canary-without-instance-i tests (increase only).
    fn observe_spread(&mut self, o: &Observation, (n_b, x_b): (u64, u64), temper: f64) {
        let each = &o.canary_instances;
        if !self.up || each.len() < 2 {
            self.spread.clear(); // one instance (or none): nothing to tell apart
            return;
        }
        // One test per member, kept across windows (a member added later starts its own).
        self.spread
            .resize(each.len().max(self.spread.len()), Rest::new(o.at_ms));
        let (n, x) = each.iter().fold((0, 0), |(n, x), &(ni, xi)| (n + ni, x + xi));
        let factor = self.parts[0].factor;
        for (r, &(ni, xi)) in self
            .spread
            .iter_mut()
            .zip(each.iter().chain(std::iter::repeat(&(0, 0))))
        {
            r.evidence.advance(o.at_ms);
            let (rest_n, rest_x) = (n - ni, x - xi);
            (r.n, r.n_all) = (r.n + rest_n, r.n_all + n);
            let weighted = rest_n as f64 * factor;
            if weighted > 0.0 && n_b > 0 && rest_x + x_b > 0 {
                let pi0 = weighted / (weighted + n_b as f64);
                r.evidence.update(rest_x as f64, x_b as f64, pi0, temper);
            }
        }
    }

    /// Whether the excess shows without any one canary instance (always, with fewer than two).
    fn spread_confirms(&self) -> bool {
        self.spread.iter().all(Rest::confirms)
    }

    /// Feeds one window; `step_warming` makes every canary request count as warming.
    pub(crate) fn observe(&mut self, o: &Observation, step_warming: bool) {
        let (c, b) = (&o.canary, &o.baseline);
        let count = |w: &crate::Window| (w.requests, w.errors.min(w.requests));
        let (warm, warming) = if step_warming {
            ((0, 0), (c.requests(), c.errors()))
        } else {
            (count(&c.warm), count(&c.warming))
        };
        let base = (b.requests(), b.errors());
        let temper = self.dispersion.temper((warm.1 + warming.1 + base.1) as f64);
        for (part, mine) in self.parts.iter_mut().zip([warm, warming]) {
            part.observe(self.up, mine, base, temper, o.at_ms);
        }
        self.observe_spread(o, base, temper);
        self.n_b += base.0;
        self.x_b += base.1;
        // The canary's share of this window's errors at the recent rates.
        let (n, x) = (warm.0 + warming.0, warm.1 + warming.1);
        let (c_side, b_side) = ((x as f64, n as f64), (base.1 as f64, base.0 as f64));
        let share = self.fit.share(o.at_ms, c_side, b_side);
        let events = (x + base.1) as f64;
        let (hits, share) = if self.up {
            (x as f64, share)
        } else {
            (base.1 as f64, 1.0 - share)
        };
        self.dispersion.record(o.at_ms, hits, events, share);
        // Half of the baseline against the other: the same release, so any
        // extra variance of its split is burstiness.
        let [(na, xa), (nb, xb)] = o.baseline_halves;
        if na > 0 && nb > 0 {
            let (xa, xb) = (xa.min(na), xb.min(nb));
            self.dispersion
                .record_aa(xa as f64, (xa + xb) as f64, na as f64 / (na + nb) as f64);
        }
    }

    /// Canary and baseline requests seen.
    pub(crate) fn requests(&self) -> (u64, u64) {
        (self.parts[0].n_c + self.parts[1].n_c, self.n_b)
    }

    fn rates(&self) -> (f64, f64) {
        let (n_c, n_b) = self.requests();
        let x_c = self.parts[0].x_c + self.parts[1].x_c;
        let rate = |x: u64, n: u64| if n == 0 { f64::NAN } else { x as f64 / n as f64 };
        (rate(self.x_b, n_b), rate(x_c, n_c))
    }

    /// The smallest canary error rate the warm traffic would have caught with 95% probability.
    pub(crate) fn detectable(&self, alpha: f64) -> Option<f64> {
        let p = &self.parts[0];
        if p.n_c == 0 || self.n_b == 0 || !self.up {
            return None;
        }
        let (nc, nb) = (p.n_c as f64, self.n_b as f64);
        let pb = (self.x_b as f64 + 0.5) / (nb + 1.0);
        let pi0 = nc * p.factor / (nc * p.factor + nb);
        let target = target_ln(alpha / 2.0);
        let catches = |p1: f64| {
            let (c, b) = (nc * p1, nb * pb);
            would_catch(c + b, c / (c + b), pi0, target)
        };
        if !catches(1.0) {
            return None;
        }
        let (mut lo, mut hi) = ((pb * p.factor).max(pb + p.abs).min(1.0), 1.0);
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if catches(mid) { hi = mid } else { lo = mid }
        }
        Some(hi)
    }

    /// The finding with each part held to half of `alpha`.
    pub(crate) fn finding(&self, alpha: f64) -> Finding {
        let (pb, pc) = self.rates();
        let bound = (2.0 / alpha).ln();
        let (n_c, _) = self.requests();
        let x_c = self.parts[0].x_c + self.parts[1].x_c;
        let shown = format!(
            "canary {} vs baseline {}",
            fmt_rate(x_c, n_c),
            fmt_rate(self.x_b, self.n_b)
        );
        let failed = self
            .parts
            .iter()
            .position(|p| p.failed(self.up, pb, bound))
            .filter(|_| self.spread_confirms());
        let log_evidence = match failed {
            Some(i) => self.parts[i].evidence.log_evidence(),
            None => self
                .parts
                .iter()
                .map(|p| p.evidence.log_evidence())
                .fold(f64::NEG_INFINITY, f64::max),
        };
        let reason = match failed {
            Some(i) => {
                let p = &self.parts[i];
                let (word, which) = match (self.up, i) {
                    (true, 0) => ("higher", ""),
                    (true, _) => ("higher", " while warming up"),
                    (false, _) => ("lower", ""),
                };
                format!(
                    "{shown}: {word} than {:.2}x the baseline and {:.2} points{which} ({}) with odds {} (bound {})",
                    p.factor,
                    p.abs * 100.0,
                    fmt_rate(p.x_c, p.n_c),
                    fmt_odds(log_evidence),
                    fmt_odds(bound)
                )
            }
            None => shown,
        };
        Finding {
            failed: failed.is_some(),
            log_evidence,
            reason,
            baseline: pb,
            canary: pc,
        }
    }

    /// Takes over what `old` learned about bursts.
    pub(crate) fn inherit(&mut self, old: &ErrorTest) {
        self.dispersion = old.dispersion.carried();
    }

    pub(crate) fn is_sound(&self) -> bool {
        self.x_b <= self.n_b
            && self.parts.iter().all(|p| p.evidence.is_sound() && p.x_c <= p.n_c)
            && self.spread.iter().all(|r| r.evidence.is_sound() && r.n <= r.n_all)
    }
}
