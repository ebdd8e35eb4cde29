//! slipway across several hosts, coordinated through etcd: an etcd v3 client over its JSON gateway
//! (several endpoints with failover, client TLS, typed errors).

mod error;
mod kv;
mod transport;
mod watch;

pub use error::EtcdError;
pub use kv::{Client, Cmp, Compare, KeyValue, Lease, LeaseId, Op, Range, Txn, TxnResult};
pub use transport::{ClientConfig, TlsFiles};
pub use watch::{Watch, WatchEvent};
