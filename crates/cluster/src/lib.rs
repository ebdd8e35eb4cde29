//! slipway across several hosts, coordinated through etcd: an etcd v3 client over its JSON gateway
//! (several endpoints with failover, client TLS, typed errors), and leader election with fenced writes.

mod election;
mod error;
mod kv;
mod leader;
mod transport;
mod watch;

pub use election::{Action, Election, Outcome, Role};
pub use error::EtcdError;
pub use kv::{Client, Cmp, Compare, KeyValue, Lease, LeaseId, Op, Range, Txn, TxnResult};
pub use leader::{Candidate, CandidateConfig, Fence, LeaderRecord};
pub use transport::{ClientConfig, TlsFiles};
pub use watch::{Watch, WatchEvent};
