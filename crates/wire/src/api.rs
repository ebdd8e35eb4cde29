//! Messages of the router's admin API (besides the route table and metrics snapshot).

use serde::{Deserialize, Serialize};

use crate::problem::Problem;
use crate::router_config::ListenerKind;

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
    pub kind: ListenerKind,
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
    /// WebSocket tunnels open now.
    #[serde(default)]
    pub open_websockets: u64,
    /// Raw TCP connections open now.
    #[serde(default)]
    pub open_tcp: u64,
    /// Pid of the process this router took its sockets over from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over_from: Option<u32>,
}

/// `routes.json` in the router's state folder from format 1 on: the last
/// applied table. Format 0 (before versions) was the bare table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedRoutes {
    pub format: u64,
    pub table: crate::RouteTable,
}

/// `router.json` in the router's state folder from format 1 on: the status
/// with its format beside the fields. Format 0 (before versions) was the bare status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    pub format: u64,
    #[serde(flatten)]
    pub status: RouterStatus,
}

/// Where an instance stands in the router's table, as drain reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    Active,
    Draining,
    Down,
    /// No longer in the table (requests or connections may still be open).
    Removed,
}

/// Drain progress of one instance, including instances already removed from
/// the table that still have requests or connections open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDrain {
    pub release: String,
    pub instance: String,
    pub addr: String,
    pub state: DrainState,
    pub healthy: bool,
    pub open_requests: u64,
    pub open_upstream_connections: u64,
    pub idle_upstream_connections: u64,
    pub open_long_lived: u64,
    /// Of the long-lived connections: WebSocket tunnels and raw TCP connections.
    #[serde(default)]
    pub open_websockets: u64,
    #[serde(default)]
    pub open_tcp: u64,
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

/// `POST /v1/upgrade`: replace the router process with a new binary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// The new binary; defaults to the one this router runs from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<std::path::PathBuf>,
    /// How long the new process gets to report ready (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<crate::HumanDuration>,
}

/// Answer to a successful upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgraded {
    pub old_pid: u32,
    pub new_pid: u32,
    pub binary: String,
    pub new_version: String,
    pub generation: u64,
    /// From the request to the new process reporting ready.
    pub took_ms: u64,
    /// Open connections the old process keeps serving until they finish
    /// (long-lived ones until the listener's drain deadline).
    pub old_connections: u64,
}

/// `POST /v1/listeners/share`: the router connects to the Unix socket `socket` (a path directly inside its state
/// folder) and sends it a [`SharedListeners`] message with duplicates of its listening sockets attached
/// (SCM_RIGHTS). A supervisor started while a router already runs holds the same sockets this way, so it can hand
/// them to the next router and no connection is refused while that one starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    pub socket: std::path::PathBuf,
}

/// The listening sockets a router shares, each `fd` indexing the descriptors attached; also the API's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedListeners {
    /// Format of this message; 1.
    pub format: u32,
    /// The sharing router's pid.
    pub pid: u32,
    pub listeners: Vec<HandoverSocket>,
}

/// Health of one instance as the old router saw it at handover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverHealth {
    pub release: String,
    pub instance: String,
    pub addr: String,
    pub active_ok: bool,
    /// Passive ejection still to run, in ms (0: not ejected).
    pub ejected_ms_left: u64,
}

/// One listening socket in a handover; `fd` indexes the descriptors sent
/// with the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverSocket {
    pub name: String,
    pub addr: String,
    pub fd: usize,
}

/// What an old router hands a new one, with the listening sockets attached
/// (SCM_RIGHTS) in the order `fd` indexes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    /// Format of this message; 1.
    pub format: u32,
    pub from_pid: u32,
    pub from_version: String,
    /// The table in force, generation included.
    pub table: crate::RouteTable,
    /// The key that signs session cookies, hex.
    pub cookie_key: String,
    pub listeners: Vec<HandoverSocket>,
    /// The admin API socket (`name` is "admin").
    pub admin: Option<HandoverSocket>,
    pub health: Vec<HandoverHealth>,
}

/// What a new router says during a handover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum TakeoverMsg {
    /// Connected and waiting for the sockets.
    Hello { pid: u32, version: String },
    /// Serving on the handed-over sockets.
    Ready { pid: u32, generation: u64 },
    /// Cannot take over; the old process must keep serving.
    Failed { pid: u32, error: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_states_and_listener_kinds_keep_their_strings_on_the_wire() {
        let states = [
            (DrainState::Active, "active"),
            (DrainState::Draining, "draining"),
            (DrainState::Down, "down"),
            (DrainState::Removed, "removed"),
        ];
        for (state, text) in states {
            assert_eq!(serde_json::to_value(state).unwrap(), text);
            assert_eq!(serde_json::from_value::<DrainState>(text.into()).unwrap(), state);
        }
        for (kind, text) in [(ListenerKind::Http, "http"), (ListenerKind::Tcp, "tcp")] {
            assert_eq!(serde_json::to_value(kind).unwrap(), text);
        }
        assert!(serde_json::from_value::<DrainState>("gone".into()).is_err());
    }
}
