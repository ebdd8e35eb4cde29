//! Messages of the router's admin API (besides the route table and metrics snapshot).

use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// Body of every non-2xx admin API answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Short machine-readable code, e.g. `invalid_table`, `unauthorized`.
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

/// Answer to applying a table or a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub generation: u64,
    /// Number of ops the change consisted of (0 when nothing changed).
    pub ops: usize,
}

/// One public listener as bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundListener {
    pub name: String,
    pub kind: String,
    pub addr: String,
    pub tls: bool,
}

/// `GET /v1/status`; also written to `router.json` in the state folder once
/// the router serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStatus {
    pub router_id: String,
    pub pid: u32,
    pub version: String,
    pub generation: u64,
    pub uptime_ms: u64,
    /// Admin address (`ip:port` or `unix:/path`).
    pub admin: String,
    pub listeners: Vec<BoundListener>,
}

/// Drain progress of one instance, including instances already removed from
/// the table that still have requests or connections open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDrain {
    pub release: String,
    pub instance: String,
    pub addr: String,
    /// `active`, `draining`, `down`, or `removed` (no longer in the table).
    pub state: String,
    pub healthy: bool,
    pub open_requests: u64,
    pub open_upstream_connections: u64,
    pub idle_upstream_connections: u64,
    pub open_long_lived: u64,
    /// Not active and nothing open any more: safe to stop.
    pub drained: bool,
}

/// `GET /v1/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub generation: u64,
    pub instances: Vec<InstanceDrain>,
}

impl DrainStatus {
    pub fn instance(&self, release: &str, instance: &str) -> Option<&InstanceDrain> {
        self.instances
            .iter()
            .find(|i| i.release == release && i.instance == instance)
    }
}
