//! The router's validated config, built from the raw file with every problem reported at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tokio_rustls::rustls;
use wire::router_config::{AffinityMode, ListenerKind, RouterConfigFile};
use wire::{Deadline, HealthCheck, Problem, Problems, RouteTable};

use crate::upstream::UpstreamSettings;

/// Where the admin API listens.
pub use plumbing::api::Listen as AdminListen;

/// A public listener, ready to bind.
#[derive(Clone)]
pub struct Listener {
    pub name: String,
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub affinity: AffinityMode,
    /// How long long-lived connections may stay once the router leaves.
    pub drain_deadline: Deadline,
    /// Open client connections at most; `None`: derived from the descriptor limit at start.
    pub max_connections: Option<usize>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("affinity", &self.affinity)
            .field("drain_deadline", &self.drain_deadline)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A router config that passed validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this config was read from; a self-upgrade hands it to the new process.
    pub config_path: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub workers: usize,
    pub admin: AdminListen,
    pub token_file: PathBuf,
    pub listeners: Vec<Listener>,
    pub cookie_name: String,
    pub cookie_max_age: Option<Duration>,
    pub key_header: Option<HeaderName>,
    pub version_header: HeaderName,
    pub upstream: Arc<UpstreamSettings>,
    pub health: HealthCheck,
    pub client: Arc<ClientSettings>,
    /// Served when the state folder holds no table yet.
    pub initial_routes: Option<RouteTable>,
}

pub use plumbing::config::ConfigError;

/// How long the router waits on clients (`[client]`), as durations.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    /// Bytes per second; 0: no rate.
    pub body_min_rate: u64,
    pub body_grace: Duration,
    pub h2_handshake_timeout: Duration,
    pub h2_idle_timeout: Duration,
    pub h2_ping_interval: Duration,
    pub h2_ping_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list_size: u32,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings::from_raw(&wire::router_config::ClientConfig::default())
    }
}

impl ClientSettings {
    fn from_raw(c: &wire::router_config::ClientConfig) -> ClientSettings {
        ClientSettings {
            head_timeout: c.head_timeout.0,
            idle_timeout: c.idle_timeout.0,
            body_min_rate: c.body_min_rate,
            body_grace: c.body_grace.0,
            h2_handshake_timeout: c.h2_handshake_timeout.0,
            h2_idle_timeout: c.h2_idle_timeout.0,
            h2_ping_interval: c.h2_ping_interval.0,
            h2_ping_timeout: c.h2_ping_timeout.0,
            h2_max_concurrent_streams: c.h2_max_concurrent_streams,
            h2_max_header_list_size: c.h2_max_header_list_size,
        }
    }

    /// Every `[client]` problem, named as in the file.
    fn problems(c: &wire::router_config::ClientConfig, out: &mut Vec<Problem>) {
        for (name, d) in [
            ("head_timeout", c.head_timeout),
            ("idle_timeout", c.idle_timeout),
            ("h2_handshake_timeout", c.h2_handshake_timeout),
            ("h2_idle_timeout", c.h2_idle_timeout),
            ("h2_ping_interval", c.h2_ping_interval),
            ("h2_ping_timeout", c.h2_ping_timeout),
        ] {
            if d.0.is_zero() {
                out.push(Problem::new(format!("client.{name}"), "must be more than 0"));
            }
        }
        if c.h2_max_concurrent_streams == 0 {
            out.push(Problem::new("client.h2_max_concurrent_streams", "must be at least 1"));
        }
        if c.h2_max_header_list_size < 1024 {
            out.push(Problem::new("client.h2_max_header_list_size", "must be at least 1024"));
        }
    }
}

impl Config {
    /// Reads and validates a router config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        plumbing::config::load(path, "router config", |raw: RouterConfigFile, abs| {
            let mut config = Config::from_raw(&raw, abs.parent().unwrap_or(Path::new(".")))?;
            config.config_path = Some(abs.to_path_buf());
            Ok(config)
        })
    }

    /// Validates a raw config; relative paths are taken from `base`.
    pub fn from_raw(raw: &RouterConfigFile, base: &Path) -> Result<Config, Problems> {
        let mut out = Vec::new();
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        if raw.version != 1 {
            out.push(Problem::new(
                "version",
                format!("unknown config version {}; this router reads version 1", raw.version),
            ));
        }
        if raw.workers > 1024 {
            out.push(Problem::new("workers", "must be at most 1024"));
        }
        let state_dir = resolve(&raw.state_dir);
        let admin = AdminListen::parse(&raw.admin.listen, base, "admin.listen")
            .map_err(|p| out.push(p))
            .ok();
        let token_file = raw
            .admin
            .token_file
            .as_deref()
            .map(resolve)
            .unwrap_or_else(|| state_dir.join("admin.token"));

        let listeners = listeners(raw, &resolve, &mut out);
        if raw.listeners.is_empty() {
            out.push(Problem::new("listener", "at least one [[listener]] is needed"));
        }
        let (key_header, version_header) = headers(raw, &mut out);
        wire::routes::health_problems(&mut out, "health", &raw.health);
        let u = &raw.upstream;
        for (name, d) in [
            ("connect_timeout", u.connect_timeout),
            ("response_timeout", u.response_timeout),
            ("ejection_time", u.ejection_time),
        ] {
            if d.0.is_zero() {
                out.push(Problem::new(format!("upstream.{name}"), "must be more than 0"));
            }
        }
        ClientSettings::problems(&raw.client, &mut out);
        let initial_routes = initial_routes(raw, &resolve, &mut out);
        Problems::check(out)?;
        Ok(Config {
            config_path: None,
            state_dir,
            workers: raw.workers,
            admin: admin.unwrap_or(AdminListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)))),
            token_file,
            listeners,
            cookie_name: raw.affinity.cookie.clone(),
            cookie_max_age: raw.affinity.cookie_max_age.map(|d| d.0),
            key_header,
            version_header,
            upstream: Arc::new(UpstreamSettings {
                connect_timeout: u.connect_timeout.0,
                response_timeout: u.response_timeout.0,
                max_idle: u.max_idle_per_instance,
                idle_timeout: Duration::from_secs(60),
                eject_after_failures: u.eject_after_failures,
                ejection_time: u.ejection_time.0,
            }),
            health: raw.health.clone(),
            client: Arc::new(ClientSettings::from_raw(&raw.client)),
            initial_routes,
        })
    }
}

type Resolve<'a> = &'a dyn Fn(&Path) -> PathBuf;

/// The `[[listener]]`s, each problem named as in the file.
fn listeners(raw: &RouterConfigFile, resolve: Resolve<'_>, out: &mut Vec<Problem>) -> Vec<Listener> {
    let mut names = std::collections::HashSet::new();
    let mut addrs = std::collections::HashMap::new();
    let mut found = Vec::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        found.extend(listener(raw, (i, l), resolve, (&mut names, &mut addrs), out));
    }
    found
}

type Seen<'a> = (
    &'a mut std::collections::HashSet<String>,
    &'a mut std::collections::HashMap<SocketAddr, usize>,
);

/// `listener[i]`, checked against the names and addresses before it.
fn listener(
    raw: &RouterConfigFile,
    (i, l): (usize, &wire::router_config::ListenerConfig),
    resolve: Resolve<'_>,
    (names, addrs): Seen<'_>,
    out: &mut Vec<Problem>,
) -> Option<Listener> {
    let at = format!("listener[{i}]");
    if l.name.is_empty()
        || !l
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        out.push(Problem::new(
            format!("{at}.name"),
            "must be letters, digits, '-' or '_'",
        ));
    } else if !names.insert(l.name.clone()) {
        out.push(Problem::new(
            format!("{at}.name"),
            format!("duplicate listener name {:?}", l.name),
        ));
    }
    let addr = match l.addr.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 && addrs.contains_key(&a) => {
            out.push(Problem::new(
                format!("{at}.addr"),
                format!("{a} is already the address of listener[{}]", addrs[&a]),
            ));
            None
        }
        Ok(a) => {
            addrs.insert(a, i);
            Some(a)
        }
        Err(_) => {
            out.push(Problem::new(
                format!("{at}.addr"),
                format!("{:?} is not an ip:port address", l.addr),
            ));
            None
        }
    };
    let affinity = l.affinity.unwrap_or(match l.kind {
        ListenerKind::Http => raw.affinity.mode,
        ListenerKind::Tcp => AffinityMode::ClientIp,
    });
    if l.kind == ListenerKind::Tcp && matches!(affinity, AffinityMode::Cookie | AffinityMode::Header) {
        out.push(Problem::new(
            format!("{at}.affinity"),
            "a tcp listener can only use client_ip or none affinity",
        ));
    }
    if affinity == AffinityMode::Header && raw.affinity.header.is_none() {
        out.push(Problem::new(
            "affinity.header",
            "header affinity needs the header to hash, e.g. \"x-user-id\"",
        ));
    }
    let tls = listener_tls(l, &at, resolve, out);
    if l.max_connections == Some(0) {
        out.push(Problem::new(format!("{at}.max_connections"), "must be at least 1"));
    }
    Some(Listener {
        name: l.name.clone(),
        kind: l.kind,
        addr: addr?,
        tls,
        affinity,
        drain_deadline: l.drain_deadline,
        max_connections: l.max_connections,
    })
}

/// `listener[i].tls`: the certificate and key loaded, on an http listener only.
fn listener_tls(
    l: &wire::router_config::ListenerConfig,
    at: &str,
    resolve: Resolve<'_>,
    out: &mut Vec<Problem>,
) -> Option<Arc<rustls::ServerConfig>> {
    match (&l.tls, l.kind) {
        (None, _) => None,
        (Some(_), ListenerKind::Tcp) => {
            out.push(Problem::new(
                format!("{at}.tls"),
                "tls is only supported on http listeners",
            ));
            None
        }
        (Some(t), ListenerKind::Http) => match load_tls(&resolve(&t.cert), &resolve(&t.key)) {
            Ok(c) => Some(c),
            Err(msg) => {
                out.push(Problem::new(format!("{at}.tls"), msg));
                None
            }
        },
    }
}

/// The affinity cookie's name is checked; the affinity and client-version header names parsed.
fn headers(raw: &RouterConfigFile, out: &mut Vec<Problem>) -> (Option<HeaderName>, HeaderName) {
    let c = &raw.affinity.cookie;
    if c.is_empty() || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        out.push(Problem::new(
            "affinity.cookie",
            format!("{c:?} is not a valid cookie name"),
        ));
    }
    let key_header = raw
        .affinity
        .header
        .as_deref()
        .and_then(|h| match HeaderName::try_from(h) {
            Ok(n) => Some(n),
            Err(_) => {
                out.push(Problem::new("affinity.header", format!("{h:?} is not a header name")));
                None
            }
        });
    let version_header = HeaderName::try_from(raw.client_version_header.as_str()).unwrap_or_else(|_| {
        out.push(Problem::new(
            "client_version_header",
            format!("{:?} is not a header name", raw.client_version_header),
        ));
        HeaderName::from_static("x-client-version")
    });
    (key_header, version_header)
}

/// The table served until the control plane sends one, checked whole.
fn initial_routes(raw: &RouterConfigFile, resolve: Resolve<'_>, out: &mut Vec<Problem>) -> Option<RouteTable> {
    raw.initial_routes.as_deref().and_then(|p| {
        let path = resolve(p);
        match crate::state::read_table(&path) {
            Ok(t) => {
                for p in t.problems() {
                    out.push(Problem::new(
                        format!("initial_routes ({}): {}", path.display(), p.path),
                        p.message,
                    ));
                }
                Some(t)
            }
            Err(e) => {
                out.push(Problem::new("initial_routes", e.to_string()));
                None
            }
        }
    })
}

/// Loads a PEM certificate chain and key into a rustls server config with
/// ALPN for h2 and http/1.1.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("certificate {}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let raw: RouterConfigFile = toml::from_str(
            r#"
            version = 2
            state_dir = "s"
            admin = { listen = "0.0.0.0:9000" }
            client_version_header = "bad header"
            [affinity]
            mode = "header"
            cookie = "a b"
            [[listener]]
            name = "web"
            kind = "http"
            addr = "localhost"
            [[listener]]
            name = "web"
            kind = "tcp"
            addr = "127.0.0.1:0"
            affinity = "cookie"
            tls = { cert = "missing.pem", key = "missing.key" }
            max_connections = 0
            [[listener]]
            name = "api"
            kind = "http"
            addr = "127.0.0.1:8080"
            [[listener]]
            name = "api2"
            kind = "http"
            addr = "127.0.0.1:8080"
            [upstream]
            connect_timeout = 0
            [client]
            head_timeout = 0
            h2_max_concurrent_streams = 0
            "#,
        )
        .unwrap();
        let err = Config::from_raw(&raw, Path::new("/nonexistent")).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "version",
            "admin.listen",
            "client_version_header",
            "affinity.header",
            "affinity.cookie",
            "listener[0].addr",
            "listener[1].name",
            "listener[1].affinity",
            "listener[1].tls",
            "upstream.connect_timeout",
            "listener[1].max_connections",
            "listener[3].addr",
            "client.head_timeout",
            "client.h2_max_concurrent_streams",
        ] {
            assert!(paths.contains(&want), "missing {want}: {err}");
        }
        let dup = err.problems.iter().find(|p| p.path == "listener[3].addr").unwrap();
        assert!(dup.message.contains("listener[2]"), "{}", dup.message);
    }
}
