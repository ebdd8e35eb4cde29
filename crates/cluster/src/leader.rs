//! The thin executor of the election: a [`Candidate`] task carries out the pure [`Election`]'s actions against
//! etcd, and [`Fence`]d writes: transactions that compare the leader key's create revision, so a deposed
//! leader (paused, partitioned, slow) can change nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::election::{Action, Election, Outcome, Role};
use crate::error::EtcdError;
use crate::kv::{Client, Cmp, Compare, Op, Txn, TxnResult};

/// The right to write as the leader of one term: the leader key and its create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub term: i64,
}

impl Client {
    /// Runs `ops` only if `fence` still holds (the leader key exists with the fence's create revision);
    /// [`EtcdError::CompareFailed`] otherwise, naming who holds the key now.
    pub async fn fenced_txn(&self, fence: &Fence, ops: Vec<Op>) -> Result<TxnResult, EtcdError> {
        let txn = Txn {
            compare: vec![Compare::CreateRevision(fence.key.clone(), Cmp::Equal, fence.term)],
            success: ops,
            failure: vec![Op::Get { key: fence.key.clone() }],
        };
        let r = self.txn(&txn).await?;
        if r.succeeded {
            return Ok(r);
        }
        let now = match r.reads.first().and_then(|kvs| kvs.first()) {
            Some(kv) => format!("created at revision {}", kv.create_revision),
            None => "absent".into(),
        };
        Err(EtcdError::CompareFailed(format!(
            "term {} is over: leader key {} is {now}",
            fence.term, fence.key
        )))
    }
}

/// The leader key's value (format 1): who leads. Written under the leader's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub format: u32,
    pub name: String,
}

/// A candidate's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateConfig {
    /// The leader key (see `keys::Layout::leader`).
    pub key: String,
    /// This candidate's name, written into the leader key.
    pub name: String,
    /// Lease TTL: a leader that stops renewing is replaced this long after its last renewal.
    pub ttl: Duration,
    /// How often a follower campaigns again and a failed call is retried.
    pub retry: Duration,
}

struct Shared {
    client: Client,
    cfg: CandidateConfig,
    core: Mutex<Election>,
    epoch: Instant,
    role: watch::Sender<Role>,
    frozen: AtomicBool,
}

impl Shared {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn publish(&self) {
        let role = self.core.lock().expect("election lock").role(self.now());
        self.role.send_if_modified(|r| std::mem::replace(r, role) != role);
    }

    async fn wait_thawed(&self) {
        while self.frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn perform(&self, action: Action) -> Outcome {
        let result = match action {
            Action::Grant => self
                .client
                .lease_grant(self.cfg.ttl.as_secs().max(1) as i64)
                .await
                .map(|l| Outcome::Granted {
                    lease: l.id,
                    ttl: Duration::from_secs(l.ttl_secs.max(1) as u64),
                }),
            Action::Campaign { lease } => self.campaign(lease).await,
            Action::Renew { lease } => self.client.lease_keepalive(lease).await.map(|_| Outcome::Renewed),
        };
        match result {
            Ok(o) => o,
            Err(EtcdError::LeaseNotFound(_)) | Err(EtcdError::Refused { code: 5, .. }) => Outcome::LeaseGone,
            Err(e) => {
                tracing::warn!(candidate = %self.cfg.name, error = %e, "election: etcd call failed, retrying");
                Outcome::Unavailable
            }
        }
    }

    async fn campaign(&self, lease: i64) -> Result<Outcome, EtcdError> {
        let key = self.cfg.key.clone();
        let record = LeaderRecord {
            format: 1,
            name: self.cfg.name.clone(),
        };
        let txn = Txn {
            compare: vec![Compare::CreateRevision(key.clone(), Cmp::Equal, 0)],
            success: vec![Op::Put {
                key: key.clone(),
                value: serde_json::to_vec(&record).expect("a leader record serializes"),
                lease: Some(lease),
            }],
            failure: vec![Op::Get { key }],
        };
        let r = self.client.txn(&txn).await?;
        if r.succeeded {
            return Ok(Outcome::Won { term: r.revision });
        }
        match r.reads.first().and_then(|kvs| kvs.first()) {
            Some(kv) => Ok(Outcome::Lost {
                holder_lease: kv.lease,
                term: kv.create_revision,
            }),
            None => Ok(Outcome::Unavailable), // deleted in between: campaign again
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            self.wait_thawed().await;
            let action = self.core.lock().expect("election lock").poll(self.now());
            self.publish();
            match action {
                Some(action) => {
                    let outcome = self.perform(action).await;
                    self.wait_thawed().await; // a paused process learns the answer only when it wakes
                    self.core.lock().expect("election lock").on(outcome, self.now());
                    self.publish();
                }
                None => {
                    let wake = self.core.lock().expect("election lock").next_wake();
                    let now = self.now();
                    let nap = wake.saturating_sub(now).clamp(Duration::from_millis(5), self.cfg.retry);
                    tokio::time::sleep(nap).await;
                }
            }
        }
    }
}

/// A running candidate: campaigns, keeps its lease alive, and leads when it wins. Stops when dropped
/// (its lease then expires after the TTL; [`Candidate::resign`] ends it at once).
pub struct Candidate {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    roles: watch::Receiver<Role>,
}

impl std::fmt::Debug for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Candidate({})", self.shared.cfg.name)
    }
}

impl Candidate {
    /// Starts campaigning in a task of the current runtime.
    pub fn start(client: Client, cfg: CandidateConfig) -> Candidate {
        let (tx, rx) = watch::channel(Role::Follower);
        let shared = Arc::new(Shared {
            core: Mutex::new(Election::new(cfg.ttl, cfg.retry)),
            client,
            cfg,
            epoch: Instant::now(),
            role: tx,
            frozen: AtomicBool::new(false),
        });
        let task = tokio::spawn(shared.clone().run());
        Candidate {
            shared,
            task,
            roles: rx,
        }
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.shared.core.lock().expect("election lock").role(self.shared.now())
    }

    /// Changes of role, as the task sees them.
    pub fn roles(&self) -> watch::Receiver<Role> {
        self.roles.clone()
    }

    /// The fence of the current term while this candidate leads.
    pub fn fence(&self) -> Option<Fence> {
        match self.role() {
            Role::Leader { term, .. } => Some(Fence {
                key: self.shared.cfg.key.clone(),
                term,
            }),
            Role::Follower => None,
        }
    }

    /// Writes `ops` as the leader: fenced by the current term; [`EtcdError::CompareFailed`] when this candidate
    /// does not lead, or its term turns out to be over (it then steps down).
    pub async fn write(&self, ops: Vec<Op>) -> Result<TxnResult, EtcdError> {
        let fence = self
            .fence()
            .ok_or_else(|| EtcdError::CompareFailed(format!("{} is not the leader", self.shared.cfg.name)))?;
        self.write_with(&fence, ops).await
    }

    /// Writes `ops` fenced by `fence`, whatever this candidate believes now (a write that was decided before a
    /// pause and leaves after it); a refusal makes it step down from that term.
    pub async fn write_with(&self, fence: &Fence, ops: Vec<Op>) -> Result<TxnResult, EtcdError> {
        let r = self.shared.client.fenced_txn(fence, ops).await;
        if let Err(EtcdError::CompareFailed(_)) = &r {
            let now = self.shared.now();
            self.shared
                .core
                .lock()
                .expect("election lock")
                .on(Outcome::WriteRefused { term: fence.term }, now);
            self.shared.publish();
        }
        r
    }

    /// Drills and tests: stops acting as if the process were SIGSTOPped (no keep-alive, no campaign, answers
    /// in flight held) until [`Candidate::thaw`].
    pub fn freeze(&self) {
        self.shared.frozen.store(true, Ordering::SeqCst);
    }

    /// Ends a [`Candidate::freeze`].
    pub fn thaw(&self) {
        self.shared.frozen.store(false, Ordering::SeqCst);
    }

    /// Stops campaigning and revokes the lease, so another candidate can lead at once.
    pub async fn resign(self) -> Result<(), EtcdError> {
        self.task.abort();
        let lease = self.shared.core.lock().expect("election lock").lease();
        match lease {
            Some(l) => self.shared.client.lease_revoke(l).await,
            None => Ok(()),
        }
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.task.abort();
    }
}
