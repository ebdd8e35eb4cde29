//! The compiled route table and the decision which release and instance serve a request.
//!
//! Order of decisions for a request:
//! 1. client-version gating (no release serves the version: 426);
//! 2. cohort rules, in order;
//! 3. key affinity (a hashed header or client IP owns one of 10,000 buckets;
//!    the first release in the table owns the lowest buckets);
//! 4. the sticky release from the session cookie;
//! 5. a weighted pick among releases that take new sessions.
//!
//! A session stays on its release while the release is `active` or
//! `draining` and has a healthy instance; `down` or removed releases lose
//! their sessions, which are placed again as new ones.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;
use wire::routes::KEY_BUCKETS;
use wire::{RouteState, RouteTable};

use crate::upstream::Upstream;

/// An instance as one table generation sees it: its route state is fixed
/// with the table, so one request's decisions all see the same generation.
#[derive(Debug, Clone)]
pub struct CInstance {
    pub up: Arc<Upstream>,
    pub state: RouteState,
}

impl CInstance {
    fn takes_new(&self) -> bool {
        self.state == RouteState::Active && self.up.healthy()
    }

    fn takes_sticky(&self) -> bool {
        self.state != RouteState::Down && self.up.healthy()
    }
}

/// A release ready for routing.
#[derive(Debug)]
pub struct CRelease {
    pub id: Arc<str>,
    pub weight: u32,
    pub state: RouteState,
    pub versions: Option<semver::VersionReq>,
    pub instances: Vec<CInstance>,
    /// `Set-Cookie` values for this release: plain and with `Secure`.
    pub set_cookie: [HeaderValue; 2],
}

impl CRelease {
    fn serves(&self, version: Option<&semver::Version>) -> bool {
        match (version, &self.versions) {
            (Some(v), Some(req)) => req.matches(v),
            _ => true,
        }
    }

    /// Takes sessions already on it.
    pub fn takes_sticky(&self) -> bool {
        self.state != RouteState::Down && self.instances.iter().any(|i| i.takes_sticky())
    }

    /// Takes new sessions.
    pub fn takes_new(&self) -> bool {
        self.state == RouteState::Active && self.weight > 0 && self.instances.iter().any(|i| i.takes_new())
    }

    /// Healthy instances that take new requests.
    pub fn healthy_active(&self) -> usize {
        self.instances.iter().filter(|i| i.takes_new()).count()
    }

    /// An instance for one request: active healthy ones first (least loaded
    /// of two random picks), then draining ones for a sticky session whose
    /// release has no active instance left. `avoid` is skipped when another
    /// candidate exists (retries).
    pub fn pick_instance(&self, sticky: bool, avoid: Option<&Arc<Upstream>>) -> Option<Arc<Upstream>> {
        let not_avoided = |i: &&CInstance| avoid.is_none_or(|a| !Arc::ptr_eq(a, &i.up));
        let tiers: [&dyn Fn(&CInstance) -> bool; 2] = [&|i| i.takes_new(), &|i| sticky && i.takes_sticky()];
        for ok in tiers {
            let n = self.instances.iter().filter(|i| ok(i)).filter(not_avoided).count();
            let nth = |k: usize| {
                self.instances
                    .iter()
                    .filter(|i| ok(i))
                    .filter(not_avoided)
                    .nth(k)
                    .map(|i| i.up.clone())
            };
            match n {
                0 => continue,
                1 => return nth(0),
                _ => {
                    let a = fastrand::usize(0..n);
                    let mut b = fastrand::usize(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (ua, ub) = (nth(a)?, nth(b)?);
                    return Some(if ub.stats.open_requests() < ua.stats.open_requests() {
                        ub
                    } else {
                        ua
                    });
                }
            }
        }
        // Only the avoided instance is left: better it than nothing.
        let avoid = avoid?;
        self.instances
            .iter()
            .find(|i| Arc::ptr_eq(&i.up, avoid) && i.takes_sticky())
            .map(|i| i.up.clone())
    }
}

/// What a cohort rule looks at.
#[derive(Debug)]
pub enum Subject {
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    Cidr(ipnet::IpNet),
}

#[derive(Debug)]
pub enum Matcher {
    Equals(String),
    Regex(regex::Regex),
}

#[derive(Debug)]
pub struct CCohort {
    pub release: usize,
    pub subject: Subject,
    pub matcher: Option<Matcher>,
}

/// What the router knows about a request when it chooses a release.
pub trait RequestView {
    fn header(&self, name: &http::HeaderName) -> Option<&str>;
    fn cookie(&self, name: &str) -> Option<&str>;
    fn query(&self, name: &str) -> Option<&str>;
    fn client_ip(&self) -> IpAddr;
}

impl CCohort {
    fn matches(&self, req: &dyn RequestView) -> bool {
        let value = match &self.subject {
            Subject::Cidr(net) => return net.contains(&req.client_ip()),
            Subject::Header(h) => req.header(h),
            Subject::Cookie(c) => req.cookie(c),
            Subject::Query(q) => req.query(q),
        };
        match (value, &self.matcher) {
            (Some(v), Some(Matcher::Equals(want))) => v == want,
            (Some(v), Some(Matcher::Regex(re))) => re.is_match(v),
            _ => false,
        }
    }
}

/// Why a release was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Cohort,
    Key,
    Sticky,
    /// A new session placed by weight.
    Weight,
}

/// The outcome of choosing a release.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice {
    Release {
        index: usize,
        how: How,
    },
    /// No release in the table serves the client's version.
    UpgradeRequired,
    /// Nothing can take the request right now; the reason is for the client.
    Unavailable(&'static str),
}

/// Per-request inputs besides the request itself.
#[derive(Debug, Default)]
pub struct Inputs<'a> {
    pub version: Option<&'a semver::Version>,
    /// Release named by a valid session cookie.
    pub sticky: Option<&'a str>,
    /// Key affinity bucket, 0..10,000.
    pub bucket: Option<u32>,
    /// A uniform random number for the weighted pick.
    pub random: u64,
}

/// A route table ready for the data plane; swapped whole on every change.
#[derive(Debug)]
pub struct Compiled {
    pub generation: u64,
    pub releases: Vec<CRelease>,
    pub cohorts: Vec<CCohort>,
    /// (end of bucket range, exclusive; release index), ascending.
    pub key_ranges: Vec<(u32, usize)>,
    /// The table this was compiled from.
    pub source: Arc<RouteTable>,
}

impl Compiled {
    pub fn empty() -> Compiled {
        Compiled {
            generation: 0,
            releases: Vec::new(),
            cohorts: Vec::new(),
            key_ranges: Vec::new(),
            source: Arc::new(RouteTable::default()),
        }
    }

    /// Bucket ranges for key affinity over active and draining releases with
    /// weight, in table order.
    pub fn key_ranges_for(releases: &[CRelease]) -> Vec<(u32, usize)> {
        let eligible = |r: &CRelease| r.state != RouteState::Down && r.weight > 0;
        let total: u64 = releases.iter().filter(|r| eligible(r)).map(|r| r.weight as u64).sum();
        let mut out = Vec::new();
        let mut cum = 0u64;
        for (i, r) in releases.iter().enumerate().filter(|(_, r)| eligible(r)) {
            cum += r.weight as u64;
            out.push(((cum * KEY_BUCKETS as u64 / total) as u32, i));
        }
        out
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.releases.iter().position(|r| &*r.id == id)
    }

    pub fn choose(&self, req: &dyn RequestView, inputs: &Inputs<'_>) -> Choice {
        let version = inputs.version;
        if version.is_some()
            && !self
                .releases
                .iter()
                .any(|r| r.state != RouteState::Down && r.serves(version))
        {
            return Choice::UpgradeRequired;
        }
        let usable = |i: usize| {
            let r = &self.releases[i];
            r.serves(version) && r.takes_sticky()
        };
        for c in &self.cohorts {
            if c.matches(req) && usable(c.release) {
                return Choice::Release {
                    index: c.release,
                    how: How::Cohort,
                };
            }
        }
        let mut random = inputs.random;
        if let Some(bucket) = inputs.bucket {
            if let Some(&(_, index)) = self.key_ranges.iter().find(|(end, _)| bucket < *end)
                && usable(index)
            {
                return Choice::Release { index, how: How::Key };
            }
            // The key's release cannot take it: place it by weight, the same
            // way for the same key.
            random = bucket as u64;
        }
        if let Some(index) = inputs.sticky.and_then(|id| self.index_of(id))
            && usable(index)
        {
            return Choice::Release {
                index,
                how: How::Sticky,
            };
        }
        let candidates = || {
            self.releases
                .iter()
                .enumerate()
                .filter(|(_, r)| r.serves(version) && r.takes_new())
        };
        let total: u64 = candidates().map(|(_, r)| r.weight as u64).sum();
        if total == 0 {
            return Choice::Unavailable(if self.releases.is_empty() {
                "no release is routed"
            } else {
                "no release with a healthy instance takes new sessions"
            });
        }
        let mut x = random % total;
        for (index, r) in candidates() {
            if x < r.weight as u64 {
                return Choice::Release {
                    index,
                    how: How::Weight,
                };
            }
            x -= r.weight as u64;
        }
        Choice::Unavailable("no release takes new sessions")
    }
}

/// Hashes an affinity key into one of the 10,000 buckets (stable across
/// router versions and restarts).
pub fn bucket_of(key: &[u8]) -> u32 {
    let h = blake3::hash(key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(first) % KEY_BUCKETS as u64) as u32
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use wire::{HealthCheck, RouteState, UpstreamProtocol};

    use super::*;
    use crate::upstream::UpstreamSettings;

    struct Req {
        ip: IpAddr,
        header: Option<(&'static str, &'static str)>,
    }

    impl RequestView for Req {
        fn header(&self, name: &http::HeaderName) -> Option<&str> {
            self.header.filter(|(n, _)| name.as_str() == *n).map(|(_, v)| v)
        }
        fn cookie(&self, _: &str) -> Option<&str> {
            None
        }
        fn query(&self, _: &str) -> Option<&str> {
            None
        }
        fn client_ip(&self) -> IpAddr {
            self.ip
        }
    }

    fn plain() -> Req {
        Req {
            ip: IpAddr::from([192, 0, 2, 1]),
            header: None,
        }
    }

    fn upstream(release: &str, port: u16) -> Arc<Upstream> {
        Arc::new(Upstream::new(
            Arc::from(release),
            Arc::from(format!("{release}-{port}").as_str()),
            ([127, 0, 0, 1], port).into(),
            UpstreamProtocol::Http1,
            HealthCheck::default(),
            Arc::new(UpstreamSettings {
                connect_timeout: std::time::Duration::from_secs(1),
                response_timeout: std::time::Duration::from_secs(1),
                max_idle: 1,
                idle_timeout: std::time::Duration::from_secs(1),
                eject_after_failures: 1,
                ejection_time: std::time::Duration::from_secs(100),
            }),
            crate::clock::Clock::new(),
        ))
    }

    fn release(id: &str, weight: u32, state: RouteState, versions: Option<&str>, port: u16) -> CRelease {
        CRelease {
            id: Arc::from(id),
            weight,
            state,
            versions: versions.map(|v| semver::VersionReq::parse(v).unwrap()),
            instances: vec![CInstance {
                up: upstream(id, port),
                state: RouteState::Active,
            }],
            set_cookie: [HeaderValue::from_static(""), HeaderValue::from_static("")],
        }
    }

    fn compiled(releases: Vec<CRelease>) -> Compiled {
        Compiled {
            generation: 1,
            key_ranges: Compiled::key_ranges_for(&releases),
            releases,
            cohorts: Vec::new(),
            source: Arc::new(wire::RouteTable::default()),
        }
    }

    fn pick(t: &Compiled, inputs: &Inputs<'_>) -> String {
        match t.choose(&plain(), inputs) {
            Choice::Release { index, .. } => t.releases[index].id.to_string(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn weighted_picks_follow_weights_for_a_seeded_stream() {
        let t = compiled(vec![
            release("v2", 1, RouteState::Active, None, 2),
            release("v1", 9, RouteState::Active, None, 1),
        ]);
        let mut rng = fastrand::Rng::with_seed(42);
        let n = 100_000;
        let v2 = (0..n)
            .filter(|_| {
                pick(
                    &t,
                    &Inputs {
                        random: rng.u64(..),
                        ..Default::default()
                    },
                ) == "v2"
            })
            .count();
        assert!((v2 as f64 / n as f64 - 0.1).abs() < 0.005, "{v2}");
    }

    #[test]
    fn raising_the_canary_weight_never_moves_a_bucket_back() {
        for (lo, hi) in [(1, 5), (5, 10), (10, 50), (50, 99), (1, 100)] {
            let at = |w: u32| {
                compiled(vec![
                    release("canary", w, RouteState::Active, None, 2),
                    release("base", 100 - w, RouteState::Active, None, 1),
                ])
            };
            let (a, b) = (at(lo), at(hi));
            for bucket in 0..wire::routes::KEY_BUCKETS {
                let inputs = Inputs {
                    bucket: Some(bucket),
                    ..Default::default()
                };
                if pick(&a, &inputs) == "canary" {
                    assert_eq!(
                        pick(&b, &inputs),
                        "canary",
                        "bucket {bucket} moved back from {lo} to {hi}"
                    );
                }
            }
            let share = (0..wire::routes::KEY_BUCKETS)
                .filter(|&bucket| {
                    pick(
                        &b,
                        &Inputs {
                            bucket: Some(bucket),
                            ..Default::default()
                        },
                    ) == "canary"
                })
                .count();
            assert_eq!(share as u32, hi * 100, "canary owns exactly its share of buckets");
        }
    }

    #[test]
    fn sticky_sessions_follow_release_state() {
        let t = compiled(vec![
            release("v2", 100, RouteState::Active, None, 2),
            release("v1", 0, RouteState::Draining, None, 1),
            release("v0", 0, RouteState::Down, None, 3),
        ]);
        let sticky = |s| Inputs {
            sticky: Some(s),
            ..Default::default()
        };
        assert_eq!(pick(&t, &sticky("v1")), "v1", "draining keeps its sessions");
        assert_eq!(pick(&t, &sticky("v0")), "v2", "down loses them");
        assert_eq!(pick(&t, &sticky("gone")), "v2", "removed loses them");
        assert_eq!(pick(&t, &Inputs::default()), "v2", "draining takes no new sessions");
    }

    #[test]
    fn an_unhealthy_release_loses_even_sticky_sessions_and_none_left_is_unavailable() {
        let t = compiled(vec![
            release("v2", 50, RouteState::Active, None, 2),
            release("v1", 50, RouteState::Active, None, 1),
        ]);
        t.releases[1].instances[0].up.health.active_result(false, 1, 1);
        let inputs = Inputs {
            sticky: Some("v1"),
            ..Default::default()
        };
        assert_eq!(pick(&t, &inputs), "v2");
        t.releases[0].instances[0].up.health.active_result(false, 1, 1);
        assert_eq!(
            t.choose(&plain(), &inputs),
            Choice::Unavailable("no release with a healthy instance takes new sessions")
        );
        assert_eq!(
            compiled(vec![]).choose(&plain(), &Inputs::default()),
            Choice::Unavailable("no release is routed")
        );
    }

    #[test]
    fn versions_gate_and_cohorts_fall_through_when_their_release_cannot_serve() {
        let mut t = compiled(vec![
            release("v2", 0, RouteState::Active, Some(">=2"), 2),
            release("v1", 100, RouteState::Active, Some("<2"), 1),
        ]);
        t.cohorts.push(CCohort {
            release: 0,
            subject: Subject::Header(http::HeaderName::from_static("x-beta")),
            matcher: Some(Matcher::Equals("1".into())),
        });
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let (one, two, nine) = (v("1.0.0"), v("2.0.0"), v("9.0.0"));
        let beta = Req {
            ip: IpAddr::from([10, 0, 0, 1]),
            header: Some(("x-beta", "1")),
        };
        let with = |version| Inputs {
            version,
            ..Default::default()
        };
        let name = |c: Choice| match c {
            Choice::Release { index, how } => format!("{}/{how:?}", t.releases[index].id),
            other => format!("{other:?}"),
        };
        assert_eq!(name(t.choose(&beta, &with(None))), "v2/Cohort");
        assert_eq!(
            name(t.choose(&beta, &with(Some(&one)))),
            "v1/Weight",
            "a 1.x tester cannot use v2"
        );
        assert_eq!(
            name(t.choose(&plain(), &with(Some(&two)))),
            "Unavailable(\"no release with a healthy instance takes new sessions\")",
            "v2 serves 2.x but takes no new sessions (weight 0)"
        );
        assert_eq!(
            name(t.choose(&plain(), &with(Some(&nine)))),
            "Unavailable(\"no release with a healthy instance takes new sessions\")"
        );
        let t2 = compiled(vec![release("v1", 100, RouteState::Active, Some("<2"), 1)]);
        assert_eq!(t2.choose(&plain(), &with(Some(&nine))), Choice::UpgradeRequired);
    }
}
