//! A joined host's loop (the thin executor around `converge`): registers the host under a lease whose
//! keep-alive is its heartbeat, follows the cluster's route table through a watch, and puts it to the local
//! router's admin API; writes what it serves back under its lease. While etcd cannot be heard it changes
//! nothing locally and keeps retrying; it resumes on its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;
use plumbing::client::ApiClient;
use tokio::sync::{mpsc, watch};
use wire::RouteTable;

use crate::converge::{LeaveReason, RouterStep, RouterTurn, plan_router};
use crate::error::EtcdError;
use crate::keys::{Layout, valid_name};
use crate::kv::{Client, KeyValue, LeaseId};
use crate::records::{FORMAT, HostRecord, LastGood, ObservedRecord, RoutesRecord, encode};
use crate::transport::ClientConfig;

/// What a host needs to join.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub etcd: ClientConfig,
    /// The cluster's name (its keys are under `/slipway/<cluster>/`).
    pub cluster: String,
    /// This host's name, unique in the cluster.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The heartbeat lease's TTL: the host's keys go this long after its last keep-alive.
    pub ttl: Duration,
    /// The local router's admin API (`ip:port` on loopback or `unix:/path`) and its token.
    pub router_admin: String,
    pub router_token: String,
    /// The longest time between two converge turns (a change seen by the watch starts one at once).
    pub turn: Duration,
}

/// What the host loop last saw and did; `Host::status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStatus {
    /// The lease the host is registered under, while it is.
    pub lease: Option<LeaseId>,
    /// Why etcd cannot be heard now (None: it can).
    pub etcd: Option<String>,
    /// The cluster routes generation the router serves (0: none yet).
    pub routes_generation: u64,
    /// Why the last route table read from etcd was refused (the last good one is kept).
    pub refused: Option<String>,
    /// Why the router could not be read or refused the table (None: fine).
    pub router: Option<String>,
    /// Why the last turn left the router as it was, if it did.
    pub left: Option<LeaveReason>,
    /// Converge turns run so far.
    pub turns: u64,
}

/// Why a host cannot join.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("host config: {0}")]
    Config(String),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

/// What a key's follower tells the loop.
#[derive(Debug)]
enum Feed {
    Value(KeyValue),
    Absent,
    /// The watch is (again) established.
    Watching,
    Broken(EtcdError),
}

/// Follows one key: reads it, then watches it from the next revision; reconnects by itself.
async fn follow(client: Client, key: String, tx: mpsc::Sender<Feed>, retry: Duration) {
    let mut from = 0i64;
    loop {
        if from == 0 {
            match client.get_prefix(&key).await {
                Ok(r) => {
                    let found = r.kvs.into_iter().find(|kv| kv.key == key.as_bytes());
                    if tx.send(found.map_or(Feed::Absent, Feed::Value)).await.is_err() {
                        return;
                    }
                    from = r.revision + 1;
                }
                Err(e) => {
                    if tx.send(Feed::Broken(e)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(retry).await;
                    continue;
                }
            }
        }
        match client.watch_prefix(&key, from).await {
            Ok(mut w) => {
                if tx.send(Feed::Watching).await.is_err() {
                    return;
                }
                loop {
                    match w.next().await {
                        Ok(events) => {
                            for ev in events {
                                let feed = match ev {
                                    crate::watch::WatchEvent::Put(kv) if kv.key == key.as_bytes() => Feed::Value(kv),
                                    crate::watch::WatchEvent::Delete { key: k, .. } if k == key.as_bytes() => {
                                        Feed::Absent
                                    }
                                    _ => continue,
                                };
                                if tx.send(feed).await.is_err() {
                                    return;
                                }
                            }
                            from = w.revision() + 1;
                        }
                        Err(e) => {
                            if matches!(e, EtcdError::Refused { .. }) {
                                from = 0; // cancelled (compacted): read again
                            }
                            let _ = tx.send(Feed::Broken(e)).await;
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                if tx.send(Feed::Broken(e)).await.is_err() {
                    return;
                }
                tokio::time::sleep(retry).await;
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Looper {
    cfg: HostConfig,
    layout: Layout,
    client: Client,
    router: ApiClient,
    lease: Option<(LeaseId, Instant)>,
    registration_err: Option<String>,
    watch_err: Option<String>,
    routes: LastGood<RoutesRecord>,
    observed_written: Option<ObservedRecord>,
    status: HostStatus,
    /// When the routes key is read again directly, watch or not.
    resync_at: Instant,
}

/// How often a host reads the routes key directly besides its watch: a watch whose connection died
/// silently (a partition that outlived the server side) would otherwise never deliver again.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

impl Looper {
    fn host_record(&self) -> Vec<u8> {
        encode(&HostRecord {
            format: FORMAT,
            name: self.cfg.name.clone(),
            labels: self.cfg.labels.clone(),
            heartbeat_ms: unix_ms(),
        })
    }

    /// Registers (a new lease and the host record under it) or renews; the record's heartbeat is rewritten.
    async fn heartbeat(&mut self) {
        let now = Instant::now();
        let renew_every = self.cfg.ttl / 3;
        let result = match self.lease {
            Some((_, next)) if now < next => return,
            Some((lease, _)) => match self.client.lease_keepalive(lease).await {
                Ok(_) => {
                    self.client
                        .put(&self.layout.host(&self.cfg.name), &self.host_record(), Some(lease))
                        .await
                }
                Err(e) => Err(e),
            },
            None => match self.client.lease_grant(self.cfg.ttl.as_secs().max(1) as i64).await {
                Ok(l) => {
                    self.lease = Some((l.id, now));
                    self.observed_written = None;
                    self.client
                        .put(&self.layout.host(&self.cfg.name), &self.host_record(), Some(l.id))
                        .await
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(_) => {
                self.registration_err = None;
                if let Some((lease, _)) = self.lease {
                    self.lease = Some((lease, now + renew_every));
                }
            }
            Err(EtcdError::LeaseNotFound(_)) => {
                tracing::warn!(host = %self.cfg.name, "heartbeat lease expired; registering again");
                self.lease = None;
            }
            Err(e) => {
                if let Some((lease, _)) = self.lease {
                    self.lease = Some((lease, now + renew_every.min(Duration::from_millis(500))));
                }
                self.registration_err = Some(e.to_string());
            }
        }
    }

    /// Reads the routes key directly, after etcd was unheard and every [`RESYNC_EVERY`].
    async fn resync(&mut self, etcd_was_unheard: bool) {
        let now = Instant::now();
        if self.registration_err.is_some() || !(etcd_was_unheard || now >= self.resync_at) {
            return;
        }
        match self.client.get(&self.layout.routes()).await {
            Ok(Some(kv)) => self.feed(Feed::Value(kv)),
            Ok(None) => {}
            Err(e) => {
                self.registration_err = Some(e.to_string());
                return;
            }
        }
        self.resync_at = now + RESYNC_EVERY;
    }

    fn feed(&mut self, feed: Feed) {
        let key = self.layout.routes();
        match feed {
            Feed::Value(kv) => {
                self.watch_err = None;
                if let Err(reason) = self.routes.offer(&key, &kv.value, kv.mod_revision) {
                    self.status.refused = Some(reason);
                } else {
                    self.status.refused = None;
                }
            }
            Feed::Absent | Feed::Watching => self.watch_err = None,
            Feed::Broken(e) => self.watch_err = Some(e.to_string()),
        }
    }

    async fn converge_router(&mut self) {
        let etcd_err = self.registration_err.clone().or_else(|| self.watch_err.clone());
        self.status.etcd = etcd_err.clone();
        let serving = match self.router.get::<RouteTable>("/v1/routes").await {
            Ok(t) => Some(t),
            Err(e) => {
                self.status.router = Some(e.to_string());
                None
            }
        };
        let turn = RouterTurn {
            desired: self.routes.get(),
            serving: serving.as_ref(),
            etcd_ok: etcd_err.is_none(),
        };
        self.status.left = None;
        match plan_router(&turn) {
            RouterStep::Leave(why) => self.status.left = Some(why),
            RouterStep::InSync { generation } => {
                self.status.routes_generation = generation;
                self.status.router = None;
            }
            RouterStep::Put { generation, table } => {
                match self
                    .router
                    .call::<_, wire::api::Applied>(Method::PUT, "/v1/routes", Some(&table))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(host = %self.cfg.name, generation, "router now serves the cluster's route table");
                        self.status.routes_generation = generation;
                        self.status.router = None;
                    }
                    Err(e) => self.status.router = Some(format!("the router refused the table: {e}")),
                }
            }
        }
    }

    async fn write_observed(&mut self) {
        let (Some((lease, _)), None) = (self.lease, &self.registration_err) else {
            return;
        };
        let note = self.status.refused.clone().or_else(|| self.status.router.clone());
        let rec = ObservedRecord {
            format: FORMAT,
            routes_generation: self.status.routes_generation,
            desired_generation: 0,
            at_ms: unix_ms(),
            note,
        };
        let same = self.observed_written.as_ref().is_some_and(|w| {
            (w.routes_generation, w.desired_generation, &w.note) == (rec.routes_generation, 0, &rec.note)
        });
        if same {
            return;
        }
        if self
            .client
            .put(&self.layout.observed(&self.cfg.name), &encode(&rec), Some(lease))
            .await
            .is_ok()
        {
            self.observed_written = Some(rec);
        }
    }

    async fn run(mut self, mut feeds: mpsc::Receiver<Feed>, status: watch::Sender<HostStatus>) {
        loop {
            let unheard = self.registration_err.is_some();
            self.heartbeat().await;
            self.resync(unheard).await;
            self.converge_router().await;
            self.write_observed().await;
            self.status.lease = self.lease.map(|(l, _)| l);
            self.status.turns += 1;
            status.send_if_modified(|s| std::mem::replace(s, self.status.clone()) != self.status);
            let wait = tokio::time::sleep(self.cfg.turn);
            tokio::select! {
                f = feeds.recv() => match f {
                    Some(f) => {
                        self.feed(f);
                        while let Ok(f) = feeds.try_recv() {
                            self.feed(f);
                        }
                    }
                    None => return,
                },
                _ = wait => {}
            }
        }
    }
}

/// A joined host's running loop; stops when dropped (its keys then go with its lease, after the TTL).
#[derive(Debug)]
pub struct Host {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    status: watch::Receiver<HostStatus>,
    client: Client,
}

impl Host {
    /// Starts the host loop in the current runtime. Does not wait for etcd: a host started while etcd is
    /// down keeps its router as it is and joins when etcd is back.
    pub fn join(cfg: HostConfig) -> Result<Host, HostError> {
        let mut problems = Vec::new();
        let layout = Layout::new(&cfg.cluster).map_err(|e| problems.push(e)).ok();
        if !valid_name(&cfg.name) {
            problems.push(format!("host name {:?}: use 1-63 of a-z, 0-9, '-', '_', '.'", cfg.name));
        }
        for k in cfg.labels.keys().filter(|k| !valid_name(k)) {
            problems.push(format!("label {k:?}: use 1-63 of a-z, 0-9, '-', '_', '.'"));
        }
        if cfg.ttl < Duration::from_secs(1) {
            problems.push("ttl: at least 1s".into());
        }
        let router = ApiClient::new(&cfg.router_admin, Some(cfg.router_token.clone()))
            .map_err(|e| problems.push(format!("router admin: {e}")))
            .ok();
        let client = Client::new(&cfg.etcd).map_err(|e| problems.push(e.to_string())).ok();
        let (Some(layout), Some(router), Some(client), true) = (layout, router, client, problems.is_empty()) else {
            return Err(HostError::Config(problems.join("; ")));
        };
        let router = router.with_timeout(Duration::from_secs(2));
        let (tx, rx) = mpsc::channel(64);
        let (status_tx, status_rx) = watch::channel(HostStatus::default());
        let follower = tokio::spawn(follow(client.clone(), layout.routes(), tx, cfg.turn));
        let looper = Looper {
            layout,
            client: client.clone(),
            router,
            lease: None,
            registration_err: None,
            watch_err: None,
            routes: LastGood::default(),
            observed_written: None,
            status: HostStatus::default(),
            resync_at: Instant::now() + RESYNC_EVERY,
            cfg,
        };
        let main = tokio::spawn(looper.run(rx, status_tx));
        Ok(Host {
            tasks: vec![follower, main],
            status: status_rx,
            client,
        })
    }

    /// What the loop last published.
    pub fn status(&self) -> HostStatus {
        self.status.borrow().clone()
    }

    /// Changes of the status.
    pub fn statuses(&self) -> watch::Receiver<HostStatus> {
        self.status.clone()
    }

    /// Leaves the cluster now: stops the loop and revokes the lease (its host and observed keys go at once).
    pub async fn leave(self) -> Result<(), EtcdError> {
        for t in &self.tasks {
            t.abort();
        }
        match self.status.borrow().lease {
            Some(l) => self.client.lease_revoke(l).await,
            None => Ok(()),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
