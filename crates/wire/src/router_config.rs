//! The router's config file as written by people and by the control plane (raw; the router validates it).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::duration::{Deadline, HumanDuration};
use crate::routes::HealthCheck;

/// `slipway router --config FILE`. Relative paths are relative to the file's folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouterConfigFile {
    /// Format version of this file; only 1 exists.
    #[serde(default = "one")]
    pub version: u32,
    /// Where the router keeps its last applied route table, its cookie key and
    /// its admin token.
    pub state_dir: PathBuf,
    /// Worker threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    pub admin: AdminConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub affinity: AffinityConfig,
    /// Request header that carries the client's version for release gating.
    #[serde(default = "default_version_header")]
    pub client_version_header: String,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub client: ClientConfig,
    /// Active health check for releases that do not set their own.
    #[serde(default)]
    pub health: HealthCheck,
    /// Route table (TOML or JSON) served when the state folder holds none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_routes: Option<PathBuf>,
}

fn one() -> u32 {
    1
}
fn default_version_header() -> String {
    "x-client-version".to_string()
}

/// Where the admin API listens and how it is protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// A loopback `ip:port` or `unix:/path/to.sock`.
    pub listen: String,
    /// Bearer token file; created with a random token if missing. Defaults to
    /// `admin.token` in the state folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    Http,
    Tcp,
}

/// How a new session is tied to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AffinityMode {
    /// A signed cookie names the release (HTTP only).
    Cookie,
    /// The header named in `[affinity] header` is hashed into buckets (HTTP
    /// only); requests without it fall back to the cookie.
    Header,
    /// The client IP is hashed into buckets.
    ClientIp,
    /// Each request (or TCP connection) is placed by weight alone.
    None,
}

/// One public listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The listener's name, as status and metrics show it.
    pub name: String,
    /// `http` (HTTP/1.1, HTTP/2, WebSocket; TLS with `tls`) or `tcp` (raw TCP, routed by client IP).
    pub kind: ListenerKind,
    /// `ip:port`; port 0 picks a free port (see the router's status).
    pub addr: String,
    /// Terminate TLS on this listener with this certificate (HTTP/1.1 and HTTP/2 by ALPN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Defaults to `[affinity] mode` for HTTP and `client_ip` for TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityMode>,
    /// When the router leaves (shutdown or self-upgrade), how long its
    /// WebSockets and TCP connections may stay before they are closed with a
    /// going-away signal (WebSocket close 1012): a duration, `0` for at once,
    /// or `"unlimited"`.
    #[serde(default = "default_listener_drain")]
    pub drain_deadline: Deadline,
    /// Client connections this listener holds open at most. At the cap (or
    /// when the process runs out of descriptors) the connection idle longest,
    /// else the one longest sending its request head, else its request body,
    /// is closed to make room (a busy one never is).
    /// Default: derived from the descriptor limit, leaving a reserve for
    /// upstream and health-check connections:
    /// `(limit - max(64, limit / 8)) / 2 / number of listeners`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
}

/// Default listener drain deadline.
pub const LISTENER_DRAIN_DEFAULT: Deadline = Deadline::After(HumanDuration::from_secs(30));

fn default_listener_drain() -> Deadline {
    LISTENER_DRAIN_DEFAULT
}

/// PEM certificate chain and private key for a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (keep it 0600).
    pub key: PathBuf,
}

/// Session affinity settings shared by the HTTP listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    /// How a new session is tied to a release: `cookie` (signed), `header`, `client_ip` or `none`.
    #[serde(default = "default_mode")]
    pub mode: AffinityMode,
    /// Name of the session cookie that names the release.
    #[serde(default = "default_cookie")]
    pub cookie: String,
    /// Cookie lifetime; absent means a browser-session cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_max_age: Option<HumanDuration>,
    /// Header hashed for `mode = "header"`, e.g. `x-user-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

fn default_mode() -> AffinityMode {
    AffinityMode::Cookie
}
fn default_cookie() -> String {
    "slipway_release".to_string()
}

impl Default for AffinityConfig {
    fn default() -> Self {
        AffinityConfig {
            mode: default_mode(),
            cookie: default_cookie(),
            cookie_max_age: None,
            header: None,
        }
    }
}

/// How long the router waits on clients, and how much of HTTP/2 they may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// A whole request head must arrive within this, counted from its first
    /// byte (not restarted by each read); then 408 and close.
    #[serde(default = "default_head_timeout")]
    pub head_timeout: HumanDuration,
    /// How long an idle keep-alive connection (HTTP/1) waits for its next request.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Slowest request body accepted, in bytes per second once `body_grace`
    /// has passed since the head; a slower body is answered 408 and the
    /// connection closed. 0 turns the rate off (a read must still arrive
    /// within `head_timeout`).
    #[serde(default = "default_body_min_rate")]
    pub body_min_rate: u64,
    /// Time a request body gets before `body_min_rate` applies.
    #[serde(default = "default_body_grace")]
    pub body_grace: HumanDuration,
    /// An HTTP/2 connection must send its first request within this, else GOAWAY.
    #[serde(default = "default_h2_handshake_timeout")]
    pub h2_handshake_timeout: HumanDuration,
    /// An HTTP/2 connection with no open stream for this long gets GOAWAY.
    #[serde(default = "default_idle_timeout")]
    pub h2_idle_timeout: HumanDuration,
    /// Interval of keep-alive PINGs on HTTP/2 connections.
    #[serde(default = "default_h2_ping_interval")]
    pub h2_ping_interval: HumanDuration,
    /// A PING not answered within this closes the HTTP/2 connection.
    #[serde(default = "default_h2_ping_timeout")]
    pub h2_ping_timeout: HumanDuration,
    /// Streams one HTTP/2 connection may have open at once.
    #[serde(default = "default_h2_max_streams")]
    pub h2_max_concurrent_streams: u32,
    /// Largest HTTP/2 header list (decoded, in bytes) a request may carry.
    #[serde(default = "default_h2_max_header_list")]
    pub h2_max_header_list_size: u32,
}

fn default_head_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(75)
}
fn default_body_min_rate() -> u64 {
    1024
}
fn default_body_grace() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_h2_handshake_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_h2_ping_interval() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_h2_ping_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_h2_max_streams() -> u32 {
    256
}
fn default_h2_max_header_list() -> u32 {
    64 * 1024
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            head_timeout: default_head_timeout(),
            idle_timeout: default_idle_timeout(),
            body_min_rate: default_body_min_rate(),
            body_grace: default_body_grace(),
            h2_handshake_timeout: default_h2_handshake_timeout(),
            h2_idle_timeout: default_idle_timeout(),
            h2_ping_interval: default_h2_ping_interval(),
            h2_ping_timeout: default_h2_ping_timeout(),
            h2_max_concurrent_streams: default_h2_max_streams(),
            h2_max_header_list_size: default_h2_max_header_list(),
        }
    }
}

/// How the router talks to instances and when it gives up on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Longest wait for a connection to an instance; then another instance is tried, or 502.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Longest wait for a response head before answering 504.
    #[serde(default = "default_response_timeout")]
    pub response_timeout: HumanDuration,
    /// Idle keep-alive connections kept per instance.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_instance: usize,
    /// Consecutive connect failures or 5xx that eject an instance; 0 turns
    /// passive ejection off.
    #[serde(default = "default_eject_after")]
    pub eject_after_failures: u32,
    /// How long an ejection lasts the first time; doubles with each repeat,
    /// up to ten times this.
    #[serde(default = "default_ejection_time")]
    pub ejection_time: HumanDuration,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_response_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_max_idle() -> usize {
    256
}
fn default_eject_after() -> u32 {
    5
}
fn default_ejection_time() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: default_connect_timeout(),
            response_timeout: default_response_timeout(),
            max_idle_per_instance: default_max_idle(),
            eject_after_failures: default_eject_after(),
            ejection_time: default_ejection_time(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_gets_defaults() {
        let c: RouterConfigFile = toml::from_str(
            r#"
            state_dir = "state"
            admin = { listen = "127.0.0.1:0" }
            [[listener]]
            name = "web"
            kind = "http"
            addr = "127.0.0.1:8080"
            "#,
        )
        .unwrap();
        assert_eq!(c.version, 1);
        assert_eq!(c.affinity.cookie, "slipway_release");
        assert_eq!(c.upstream.eject_after_failures, 5);
        assert_eq!(c.client_version_header, "x-client-version");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e =
            toml::from_str::<RouterConfigFile>("state_dir = 's'\nadmin = { listen = 'x' }\nlisten = 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
