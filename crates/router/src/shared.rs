//! Router-wide state: the live table, upstreams that outlive table swaps, applying changes, snapshots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use http::HeaderValue;
use wire::api::{Applied, BoundListener, DrainStatus, HandoverHealth, InstanceDrain};
use wire::metrics::{Counters, InstanceMetrics, MetricsSnapshot, ReleaseMetrics};
use wire::{Problem, Problems, RouteDiff, RouteState, RouteTable};

use crate::affinity::CookieSigner;
use crate::clock::Clock;
use crate::config::Config;
use crate::stats::Stats;
use crate::table::{CCohort, CInstance, CRelease, Compiled, Matcher, Subject};
use crate::upstream::Upstream;

type Key = (Arc<str>, Arc<str>);

/// Upstreams by (release, instance), kept across table swaps so pools,
/// health and counters carry over; plus removed ones that still have
/// requests or connections open.
#[derive(Default)]
struct Registry {
    live: HashMap<Key, Arc<Upstream>>,
    retired: Vec<Arc<Upstream>>,
    /// Counters of pruned upstreams, per release, so release totals never go back.
    folded: HashMap<Arc<str>, Counters>,
}

impl Registry {
    /// Drops retired upstreams with nothing open, folding their counters
    /// into their release's totals.
    fn prune(&mut self) {
        let folded = &mut self.folded;
        self.retired.retain(|u| {
            let s = &u.stats;
            if s.open_requests() > 0 || s.open_long_lived() > 0 || s.open_connections() > 0 {
                return true;
            }
            let mut c = s.snapshot();
            c.open_requests = 0;
            c.open_upstream_connections = 0;
            c.open_long_lived = 0;
            folded.entry(u.release.clone()).or_default().add(&c);
            false
        });
    }
}

/// The table plus every upstream, live or retired, for reports.
struct Everything {
    table: Arc<Compiled>,
    upstreams: Vec<Arc<Upstream>>,
    folded: HashMap<Arc<str>, Counters>,
}

/// Why a change to the table was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the table is at generation {current}, not {expected}")]
    Conflict { current: u64, expected: u64 },
    #[error("{0}")]
    Invalid(Problems),
    #[error("could not save the table, nothing changed: {0}")]
    Persist(#[from] crate::state::StateError),
}

/// Everything the listeners, the admin API and the health checkers share.
pub struct Shared {
    pub config: Config,
    pub table: ArcSwap<Compiled>,
    registry: Mutex<Registry>,
    apply_lock: tokio::sync::Mutex<()>,
    pub signer: CookieSigner,
    pub clock: Clock,
    pub router_id: String,
    /// Requests that reached no release.
    pub unrouted: Stats,
    pub token: String,
    /// Open WebSocket tunnels and TCP connections.
    pub long_lived: Arc<crate::longlived::Registry>,
    /// Filled once the listeners are bound: admin address and listeners.
    pub bound: OnceLock<(String, Vec<BoundListener>)>,
    /// Where upgrade requests go (to the loop that owns the sockets).
    pub upgrades: OnceLock<tokio::sync::mpsc::Sender<crate::handover::UpgradeJob>>,
    /// The process this router took its sockets over from.
    pub took_over_from: OnceLock<u32>,
    /// A self-upgrade is under way.
    pub upgrading: std::sync::atomic::AtomicBool,
    /// Duplicates of the listening sockets (name, address, socket) for `POST /v1/listeners/share`; emptied when
    /// the router leaves.
    pub listening: Mutex<Vec<(String, String, std::os::fd::OwnedFd)>>,
}

impl Shared {
    pub fn new(config: Config, signer: CookieSigner, token: String, clock: Clock) -> Shared {
        let id = crate::state::random_bytes::<8>()
            .map(|b| crate::state::hex(&b))
            .unwrap_or_else(|_| format!("{}-{}", std::process::id(), clock.now_ms()));
        Shared {
            config,
            table: ArcSwap::from_pointee(Compiled::empty()),
            registry: Mutex::new(Registry::default()),
            apply_lock: tokio::sync::Mutex::new(()),
            signer,
            clock,
            router_id: id,
            unrouted: Stats::default(),
            token,
            long_lived: Arc::new(crate::longlived::Registry::default()),
            bound: OnceLock::new(),
            upgrades: OnceLock::new(),
            took_over_from: OnceLock::new(),
            upgrading: std::sync::atomic::AtomicBool::new(false),
            listening: Mutex::new(Vec::new()),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The table currently served.
    pub fn current(&self) -> Arc<RouteTable> {
        self.table.load().source.clone()
    }

    /// Replaces the table with `target` (as the diff from the current one).
    pub async fn put(self: &Arc<Self>, target: &RouteTable, expect: Option<u64>) -> Result<Applied, ApplyError> {
        // Check the target itself first: a diff towards an invalid table
        // would report confusing op errors instead of the real problems.
        target.validate().map_err(ApplyError::Invalid)?;
        let mut diff = self.current().diff(target);
        diff.expect_generation = expect;
        self.apply(&diff).await
    }

    /// Applies a diff: validate, save to disk, compile, swap. A refused diff
    /// changes nothing.
    pub async fn apply(self: &Arc<Self>, diff: &RouteDiff) -> Result<Applied, ApplyError> {
        let _one_at_a_time = self.apply_lock.lock().await;
        let current = self.current();
        if let Some(expected) = diff.expect_generation
            && expected != current.generation
        {
            return Err(ApplyError::Conflict {
                current: current.generation,
                expected,
            });
        }
        if diff.ops.is_empty() {
            return Ok(Applied {
                generation: current.generation,
                ops: 0,
            });
        }
        let next = current.apply(diff).map_err(ApplyError::Invalid)?;
        self.install(next, diff.ops.len())
    }

    /// Serves `table` on start-up through the same diff path as every change,
    /// keeping the generation it was saved with.
    pub async fn start_from(self: &Arc<Self>, table: RouteTable) -> Result<Applied, ApplyError> {
        let _one_at_a_time = self.apply_lock.lock().await;
        let empty = RouteTable::default();
        let diff = empty.diff(&table);
        let mut next = empty.apply(&diff).map_err(ApplyError::Invalid)?;
        next.generation = table.generation.max(1);
        self.install(next, diff.ops.len())
    }

    fn install(self: &Arc<Self>, next: RouteTable, ops: usize) -> Result<Applied, ApplyError> {
        crate::state::save_table(&self.config.state_dir, &next)?;
        let generation = next.generation;
        let mut reg = self.registry();
        let compiled = self.compile(Arc::new(next), &mut reg).map_err(ApplyError::Invalid)?;
        let referenced: std::collections::HashSet<Key> = compiled
            .releases
            .iter()
            .flat_map(|r| r.instances.iter().map(|i| (i.up.release.clone(), i.up.id.clone())))
            .collect();
        self.table.store(Arc::new(compiled));
        let gone: Vec<Key> = reg.live.keys().filter(|k| !referenced.contains(*k)).cloned().collect();
        for k in gone {
            if let Some(u) = reg.live.remove(&k) {
                u.retire();
                reg.retired.push(u);
            }
        }
        reg.prune();
        tracing::info!(generation, ops, "route table applied");
        Ok(Applied { generation, ops })
    }

    fn compile(self: &Arc<Self>, table: Arc<RouteTable>, reg: &mut Registry) -> Result<Compiled, Problems> {
        let mut problems = Vec::new();
        let mut releases = Vec::with_capacity(table.releases.len());
        for r in &table.releases {
            let id: Arc<str> = Arc::from(r.id.as_str());
            let check = r.health.clone().unwrap_or_else(|| self.config.health.clone());
            let mut instances = Vec::with_capacity(r.instances.len());
            for inst in &r.instances {
                let Ok(addr) = inst.addr.parse() else {
                    problems.push(Problem::new(format!("{}/{}", r.id, inst.id), "bad address"));
                    continue;
                };
                let key: Key = (id.clone(), Arc::from(inst.id.as_str()));
                let reuse = reg
                    .live
                    .get(&key)
                    .filter(|u| u.addr == addr && u.protocol == r.protocol)
                    .cloned();
                let up = match reuse {
                    Some(u) => u,
                    None => {
                        if let Some(old) = reg.live.remove(&key) {
                            old.retire();
                            reg.retired.push(old);
                        }
                        let u = Arc::new(Upstream::new(
                            id.clone(),
                            key.1.clone(),
                            addr,
                            r.protocol,
                            check.clone(),
                            self.config.upstream.clone(),
                            self.clock,
                        ));
                        crate::health::spawn_checker(&u);
                        reg.live.insert(key, u.clone());
                        u
                    }
                };
                up.set_state(inst.state);
                up.set_doomed(r.state == RouteState::Down || inst.state == RouteState::Down);
                up.set_drain_deadline_ms(r.drain_deadline.map_or(u64::MAX, |d| d.as_millis()));
                up.set_health_check(check.clone());
                instances.push(CInstance { up, state: inst.state });
            }
            let versions = match r.client_versions.as_deref().map(semver::VersionReq::parse) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => {
                    problems.push(Problem::new(format!("{}.client_versions", r.id), e.to_string()));
                    None
                }
            };
            releases.push(CRelease {
                set_cookie: [self.set_cookie(&r.id, false), self.set_cookie(&r.id, true)],
                id,
                weight: r.weight,
                state: r.state,
                versions,
                instances,
            });
        }
        let mut cohorts = Vec::new();
        for (i, c) in table.cohorts.iter().enumerate() {
            match compile_cohort(c, &table) {
                Ok(cc) => cohorts.push(cc),
                Err(msg) => problems.push(Problem::new(format!("cohort[{i}]"), msg)),
            }
        }
        Problems::check(problems)?;
        Ok(Compiled {
            generation: table.generation,
            key_ranges: Compiled::key_ranges_for(&releases),
            releases,
            cohorts,
            source: table,
        })
    }

    fn set_cookie(&self, release: &str, secure: bool) -> HeaderValue {
        let mut v = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Lax",
            self.config.cookie_name,
            self.signer.value(release)
        );
        if let Some(age) = self.config.cookie_max_age {
            v.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        if secure {
            v.push_str("; Secure");
        }
        HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn all_upstreams(&self) -> Everything {
        let table = self.table.load_full();
        let mut reg = self.registry();
        reg.prune();
        let mut ups: Vec<Arc<Upstream>> = Vec::new();
        for r in &table.releases {
            ups.extend(r.instances.iter().map(|i| i.up.clone()));
        }
        ups.extend(reg.retired.iter().cloned());
        Everything {
            table,
            upstreams: ups,
            folded: reg.folded.clone(),
        }
    }

    /// Cumulative counters per release and instance (the JSON snapshot).
    pub fn metrics(&self) -> MetricsSnapshot {
        let Everything {
            table,
            upstreams: ups,
            folded,
        } = self.all_upstreams();
        let long_lived = self.long_lived.counts_by_upstream();
        let mut order: Vec<Arc<str>> = table.releases.iter().map(|r| r.id.clone()).collect();
        for u in &ups {
            if !order.contains(&u.release) {
                order.push(u.release.clone());
            }
        }
        let releases = order
            .into_iter()
            .map(|rel| {
                let mut totals = folded.get(&rel).cloned().unwrap_or_default();
                let instances: Vec<InstanceMetrics> = ups
                    .iter()
                    .filter(|u| u.release == rel)
                    .map(|u| {
                        let mut counters = u.stats.snapshot();
                        (counters.open_websockets, counters.open_tcp) =
                            long_lived.get(&(Arc::as_ptr(u) as usize)).copied().unwrap_or_default();
                        totals.add(&counters);
                        InstanceMetrics {
                            instance: u.id.to_string(),
                            addr: u.addr.to_string(),
                            healthy: u.healthy(),
                            counters,
                        }
                    })
                    .collect();
                ReleaseMetrics {
                    release: rel.to_string(),
                    totals,
                    instances,
                }
            })
            .collect();
        MetricsSnapshot {
            router_id: self.router_id.clone(),
            generation: table.generation,
            uptime_ms: self.clock.now_ms(),
            releases,
            unrouted: self.unrouted.snapshot(),
        }
    }

    /// Health verdicts of the instances in the table, for a handover.
    pub fn health_states(&self) -> Vec<HandoverHealth> {
        let now = self.clock.now_ms();
        self.registry()
            .live
            .values()
            .map(|u| HandoverHealth {
                release: u.release.to_string(),
                instance: u.id.to_string(),
                addr: u.addr.to_string(),
                active_ok: u.health.active_ok(),
                ejected_ms_left: u.health.ejected_ms_left(now),
            })
            .collect()
    }

    /// Takes over the health verdicts of the router this one replaces, for
    /// instances with the same release, id and address.
    pub fn restore_health(&self, states: &[HandoverHealth]) {
        let now = self.clock.now_ms();
        let reg = self.registry();
        for h in states {
            let key: Key = (Arc::from(h.release.as_str()), Arc::from(h.instance.as_str()));
            if let Some(u) = reg.live.get(&key)
                && u.addr.to_string() == h.addr
            {
                u.health.restore(h.active_ok, now, h.ejected_ms_left);
            }
        }
    }

    /// Per-instance drain progress, removed-but-busy instances included.
    pub fn drain_status(&self) -> DrainStatus {
        let Everything {
            table, upstreams: ups, ..
        } = self.all_upstreams();
        let long_lived = self.long_lived.counts_by_upstream();
        let instances = ups
            .iter()
            .map(|u| {
                let open_requests = u.stats.open_requests();
                let open_long_lived = u.stats.open_long_lived();
                let (open_websockets, open_tcp) =
                    long_lived.get(&(Arc::as_ptr(u) as usize)).copied().unwrap_or_default();
                InstanceDrain {
                    release: u.release.to_string(),
                    instance: u.id.to_string(),
                    addr: u.addr.to_string(),
                    state: u.drain_state(),
                    healthy: u.healthy(),
                    open_requests,
                    open_upstream_connections: u.stats.open_connections(),
                    idle_upstream_connections: u.idle_connections() as u64,
                    open_long_lived,
                    open_websockets,
                    open_tcp,
                    drained: u.state() != Some(RouteState::Active) && open_requests == 0 && open_long_lived == 0,
                }
            })
            .collect();
        DrainStatus {
            generation: table.generation,
            instances,
        }
    }
}

fn compile_cohort(c: &wire::CohortRule, table: &RouteTable) -> Result<CCohort, String> {
    let release = table
        .releases
        .iter()
        .position(|r| r.id == c.release)
        .ok_or_else(|| format!("no release {:?}", c.release))?;
    let subject = if let Some(h) = &c.header {
        Subject::Header(http::HeaderName::try_from(h.as_str()).map_err(|e| e.to_string())?)
    } else if let Some(k) = &c.cookie {
        Subject::Cookie(k.clone())
    } else if let Some(q) = &c.query {
        Subject::Query(q.clone())
    } else if let Some(n) = &c.cidr {
        Subject::Cidr(n.parse().map_err(|e: ipnet::AddrParseError| e.to_string())?)
    } else {
        return Err("no subject".into());
    };
    let matcher = match (&c.equals, &c.regex) {
        (Some(e), _) => Some(Matcher::Equals(e.clone())),
        (None, Some(r)) => Some(Matcher::Regex(regex::Regex::new(r).map_err(|e| e.to_string())?)),
        (None, None) => None,
    };
    Ok(CCohort {
        release,
        subject,
        matcher,
    })
}
