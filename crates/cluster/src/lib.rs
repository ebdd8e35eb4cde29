//! slipway across several hosts, coordinated through etcd: an etcd v3 client over its JSON gateway
//! (several endpoints with failover, client TLS, typed errors), leader election with fenced writes,
//! the cluster's key layout with its schema-versioned, checked-on-read values, and a joined host's loop.

mod converge;
mod election;
mod error;
mod host;
mod keys;
mod kv;
mod leader;
mod records;
mod transport;
mod watch;

pub use converge::{LeaveReason, RouterStep, RouterTurn, plan_router};
pub use election::{Action, Election, Outcome, Role};
pub use error::EtcdError;
pub use host::{Host, HostConfig, HostError, HostStatus};
pub use keys::{Key, Layout, valid_name};
pub use kv::{Client, Cmp, Compare, KeyValue, Lease, LeaseId, Op, Range, Txn, TxnResult};
pub use leader::{Candidate, CandidateConfig, Fence, LeaderRecord};
pub use records::{
    DesiredRecord, FORMAT, HostRecord, LastGood, MAX_VALUE, ObservedRecord, Record, RoutesRecord, decode, encode,
};
pub use transport::{ClientConfig, TlsFiles};
pub use watch::{Watch, WatchEvent};
