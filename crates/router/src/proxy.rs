//! HTTP proxying: choose a release and instance, forward the request (retrying once where safe), pass upgrades through, and turn every failure into a response.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use wire::UpstreamProtocol;
use wire::router_config::AffinityMode;

use crate::affinity::find_cookie;
use crate::body::{Inflight, ReqBody, RespBody};
use crate::shared::Shared;
use crate::stats::Stats;
use crate::table::{CRelease, Choice, How, Inputs, RequestView, bucket_of};
use crate::upstream::{PooledConn, Upstream};

/// The listener a connection came in on.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: String,
    pub affinity: AffinityMode,
    pub tls: bool,
}

/// One client connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerCtx>,
}

/// Serves one request; never fails (errors become responses).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let started = Instant::now();
    Ok(route(&shared, &conn, req, started).await)
}

fn micros_since(t: Instant) -> u64 {
    t.elapsed().as_micros().min(u64::MAX as u128) as u64
}

/// Records a response the router made without reaching an instance.
fn unrouted(stats: &Stats, started: Instant, resp: Response<RespBody>) -> Response<RespBody> {
    stats.request_started();
    stats.response(resp.status().as_u16(), micros_since(started));
    stats.request_done();
    resp
}

/// A JSON error answer with an `x-slipway-error` header.
pub fn error_response(status: StatusCode, code: &'static str, reason: &str) -> Response<RespBody> {
    let body = serde_json::json!({ "error": code, "reason": reason }).to_string();
    json_response(status, code, body)
}

fn json_response(status: StatusCode, code: &'static str, body: String) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-slipway-error", HeaderValue::from_static(code));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

struct View<'a> {
    headers: &'a HeaderMap,
    uri: &'a Uri,
    ip: IpAddr,
}

impl RequestView for View<'_> {
    fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn cookie(&self, name: &str) -> Option<&str> {
        find_cookie(self.headers, name)
    }
    fn query(&self, name: &str) -> Option<&str> {
        self.uri
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }
    fn client_ip(&self) -> IpAddr {
        self.ip
    }
}

/// Reads a client version leniently: `v1.2`, `1.2` and `1.2.3-beta` all work.
pub fn parse_client_version(s: &str) -> Option<semver::Version> {
    let s = s.trim().trim_start_matches(['v', 'V']);
    if let Ok(v) = semver::Version::parse(s) {
        return Some(v);
    }
    let (core, rest) = match s.find(['-', '+']) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let padded = match parts.len() {
        1 => format!("{core}.0.0{rest}"),
        2 => format!("{core}.0{rest}"),
        _ => return None,
    };
    semver::Version::parse(&padded).ok()
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

async fn route(shared: &Arc<Shared>, conn: &ConnCtx, req: Request<Incoming>, started: Instant) -> Response<RespBody> {
    let table = shared.table.load_full();
    let cfg = &shared.config;
    let version = match req.headers().get(&cfg.version_header) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(parse_client_version) {
            Some(v) => Some(v),
            None => {
                let reason = format!("header {} is not a version like 1.2.3", cfg.version_header);
                return unrouted(
                    &shared.unrouted,
                    started,
                    error_response(StatusCode::BAD_REQUEST, "bad_client_version", &reason),
                );
            }
        },
    };
    let affinity = conn.listener.affinity;
    let uses_cookie = matches!(affinity, AffinityMode::Cookie | AffinityMode::Header);
    let sticky = if uses_cookie {
        find_cookie(req.headers(), &cfg.cookie_name).and_then(|v| shared.signer.verify(v))
    } else {
        None
    };
    let bucket = match affinity {
        AffinityMode::Header => cfg
            .key_header
            .as_ref()
            .and_then(|h| req.headers().get(h))
            .map(|v| bucket_of(v.as_bytes())),
        AffinityMode::ClientIp => Some(bucket_of(&ip_bytes(conn.peer.ip()))),
        AffinityMode::Cookie | AffinityMode::None => None,
    };
    let view = View {
        headers: req.headers(),
        uri: req.uri(),
        ip: conn.peer.ip(),
    };
    let inputs = Inputs {
        version: version.as_ref(),
        sticky,
        bucket,
        random: fastrand::u64(..),
    };
    let (index, how) = match table.choose(&view, &inputs) {
        Choice::Release { index, how } => (index, how),
        Choice::UpgradeRequired => {
            let resp = upgrade_required(&table.releases, version.as_ref(), cfg.version_header.as_str());
            return unrouted(&shared.unrouted, started, resp);
        }
        Choice::Unavailable(reason) => {
            return unrouted(
                &shared.unrouted,
                started,
                error_response(StatusCode::SERVICE_UNAVAILABLE, "no_release", reason),
            );
        }
    };
    let release = &table.releases[index];
    let set_cookie = uses_cookie && how != How::Key && sticky != Some(&*release.id);
    let cookie = set_cookie.then(|| release.set_cookie[conn.listener.tls as usize].clone());
    let is_sticky = how != How::Weight;
    let Some(up) = release.pick_instance(is_sticky, None) else {
        let reason = format!("release {} has no healthy instance", release.id);
        return unrouted(
            &shared.unrouted,
            started,
            error_response(StatusCode::SERVICE_UNAVAILABLE, "no_instance", &reason),
        );
    };
    let mut resp = if is_upgrade(req.headers()) && req.version() == Version::HTTP_11 {
        upgrade(shared, release, up, conn, req, started, is_sticky).await
    } else {
        forward(shared, release, up, conn, req, started, is_sticky).await
    };
    if let Some(c) = cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

fn upgrade_required(releases: &[CRelease], version: Option<&semver::Version>, header_name: &str) -> Response<RespBody> {
    let served: Vec<serde_json::Value> = releases
        .iter()
        .filter(|r| r.state != wire::RouteState::Down)
        .map(|r| {
            serde_json::json!({
                "release": &*r.id,
                "client_versions": r.versions.as_ref().map(|v| v.to_string()),
            })
        })
        .collect();
    let v = version.map(|v| v.to_string()).unwrap_or_default();
    let body = serde_json::json!({
        "error": "upgrade_required",
        "reason": format!("no release serves client version {v} (from header {header_name}); update the client"),
        "client_version": v,
        "served": served,
    });
    json_response(StatusCode::UPGRADE_REQUIRED, "upgrade_required", body.to_string())
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        })
}

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes connection-specific headers, including those the `Connection`
/// header names.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(c) = h.get(header::CONNECTION) {
        let named: Vec<HeaderName> = c
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::try_from(t.trim()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::UPGRADE);
    }
}

/// Turns the client's request into the one sent to `up`.
fn upstream_request(
    req: Request<Incoming>,
    up: &Upstream,
    conn: &ConnCtx,
    keep_upgrade: bool,
) -> Result<Request<ReqBody>, &'static str> {
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, keep_upgrade);
    if keep_upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let ip = conn.peer.ip().to_canonical().to_string();
    let xff = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        parts.headers.insert("x-forwarded-for", v);
    }
    if !parts.headers.contains_key("x-forwarded-proto") {
        let proto = if conn.listener.tls { "https" } else { "http" };
        parts
            .headers
            .insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !parts.headers.contains_key(header::HOST) {
        let host = match parts.uri.authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => HeaderValue::try_from(up.addr.to_string()).ok(),
        };
        if let Some(h) = host {
            parts.headers.insert(header::HOST, h);
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match up.protocol {
        UpstreamProtocol::Http1 => {
            if parts.uri.authority().is_some() || parts.uri.scheme().is_some() {
                parts.uri = Uri::try_from(path).map_err(|_| "request target is not a valid path")?;
            }
            parts.version = Version::HTTP_11;
        }
        UpstreamProtocol::H2c => {
            let authority = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map_or_else(|| up.addr.to_string(), str::to_string);
            parts.headers.remove(header::HOST);
            parts.uri = Uri::try_from(format!("http://{authority}{path}"))
                .map_err(|_| "request target or host is not valid")?;
            parts.version = Version::HTTP_2;
        }
    }
    Ok(Request::from_parts(parts, ReqBody::new(body)))
}

/// How one attempt to send a request failed.
enum Failure {
    /// Nothing of the request reached the upstream; it may go elsewhere.
    NotSent {
        req: Box<Request<ReqBody>>,
        why: String,
        connect: bool,
    },
    Failed {
        status: StatusCode,
        code: &'static str,
        why: String,
    },
}

async fn send_once(up: &Upstream, mut req: Request<ReqBody>) -> Result<(Response<Incoming>, PooledConn), Failure> {
    req.body_mut().count_into(up.stats.clone());
    let (conn, _reused) = match up.checkout().await {
        Ok(c) => c,
        Err(e) => {
            return Err(Failure::NotSent {
                req: Box::new(req),
                why: e.to_string(),
                connect: true,
            });
        }
    };
    let timeout = up.settings().response_timeout;
    let sent = match conn {
        PooledConn::H1(mut sender) => match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
            Ok(Ok(resp)) => return Ok((resp, PooledConn::H1(sender))),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(()),
        },
        PooledConn::H2 => {
            let Some(mut sender) = up.h2_sender().await else {
                return Err(Failure::NotSent {
                    req: Box::new(req),
                    why: format!("http/2 connection to {} closed", up.addr),
                    connect: true,
                });
            };
            match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
                Ok(Ok(resp)) => return Ok((resp, PooledConn::H2)),
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(()),
            }
        }
    };
    match sent {
        Ok(()) => Err(Failure::Failed {
            status: StatusCode::GATEWAY_TIMEOUT,
            code: "upstream_timeout",
            why: format!("{} sent no response within {:?}", up.addr, timeout),
        }),
        Err(mut e) => {
            let why = format!("{}: {}", up.addr, e.error());
            match e.take_message() {
                Some(req) => Err(Failure::NotSent {
                    req: Box::new(req),
                    why,
                    connect: false,
                }),
                None => Err(Failure::Failed {
                    status: StatusCode::BAD_GATEWAY,
                    code: "upstream_failed",
                    why,
                }),
            }
        }
    }
}

/// Sends to `up`; if nothing of the request got out (connect failure, or a
/// reused connection that turned out closed), tries once more on another
/// healthy instance of the same release (or the same one if it is the only one).
async fn send_with_retry(
    release: &CRelease,
    first: Arc<Upstream>,
    req: Request<ReqBody>,
    sticky: bool,
) -> (
    Inflight,
    Result<(Response<Incoming>, PooledConn), (StatusCode, &'static str, String)>,
) {
    let inflight = Inflight::start(first.clone());
    let (req, why) = match send_once(&first, req).await {
        Ok(ok) => return (inflight, Ok(ok)),
        Err(Failure::Failed { status, code, why }) => {
            first.record_failure(release.healthy_active() > 1);
            return (inflight, Err((status, code, why)));
        }
        Err(Failure::NotSent { req, why, connect }) => {
            if connect {
                first.record_failure(release.healthy_active() > 1);
            }
            (req, why)
        }
    };
    let Some(second) = release.pick_instance(sticky, Some(&first)) else {
        return (inflight, Err((StatusCode::BAD_GATEWAY, "upstream_unreachable", why)));
    };
    drop(inflight);
    let inflight = Inflight::start(second.clone());
    tracing::debug!(first = %first.addr, second = %second.addr, %why, "retrying request");
    match send_once(&second, *req).await {
        Ok(ok) => (inflight, Ok(ok)),
        Err(Failure::Failed { status, code, why }) => {
            second.record_failure(release.healthy_active() > 1);
            (inflight, Err((status, code, why)))
        }
        Err(Failure::NotSent { why: why2, connect, .. }) => {
            if connect {
                second.record_failure(release.healthy_active() > 1);
            }
            let why = format!("{why}; retry: {why2}");
            (inflight, Err((StatusCode::BAD_GATEWAY, "upstream_unreachable", why)))
        }
    }
}

fn finish_response(mut resp: Response<Incoming>, version: Version) -> Response<Incoming> {
    strip_hop_by_hop(resp.headers_mut(), false);
    *resp.version_mut() = version;
    resp
}

async fn forward(
    _shared: &Arc<Shared>,
    release: &CRelease,
    up: Arc<Upstream>,
    conn: &ConnCtx,
    req: Request<Incoming>,
    started: Instant,
    sticky: bool,
) -> Response<RespBody> {
    let version = req.version();
    let up_req = match upstream_request(req, &up, conn, false) {
        Ok(r) => r,
        Err(reason) => {
            let stats = up.stats.clone();
            return unrouted(
                &stats,
                started,
                error_response(StatusCode::BAD_REQUEST, "bad_request", reason),
            );
        }
    };
    let (mut inflight, result) = send_with_retry(release, up, up_req, sticky).await;
    let up = inflight.upstream().clone();
    match result {
        Ok((resp, pooled)) => {
            let status = resp.status();
            if status.is_server_error() {
                up.record_failure(release.healthy_active() > 1);
            } else {
                up.record_success();
            }
            up.stats.response(status.as_u16(), micros_since(started));
            inflight.set_conn(pooled);
            finish_response(resp, version).map(|body| RespBody::upstream(body, inflight))
        }
        Err((status, code, why)) => {
            up.stats.upstream_failure();
            up.stats.response(status.as_u16(), micros_since(started));
            tracing::warn!(release = %up.release, instance = %up.id, %why, "upstream failed");
            error_response(status, code, &why)
        }
    }
}

/// Passes a protocol upgrade (WebSocket) through: a dedicated upstream
/// connection, then bytes copied both ways until either side closes.
async fn upgrade(
    _shared: &Arc<Shared>,
    release: &CRelease,
    first: Arc<Upstream>,
    conn: &ConnCtx,
    mut req: Request<Incoming>,
    started: Instant,
    sticky: bool,
) -> Response<RespBody> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let version = req.version();
    let mut up_req = match upstream_request(req, &first, conn, true) {
        Ok(r) => r,
        Err(reason) => return error_response(StatusCode::BAD_REQUEST, "bad_request", reason),
    };
    let mut up = first.clone();
    let mut sender = match up.connect_h1(true).await {
        Ok(s) => Some(s),
        Err(e) => {
            up.record_failure(release.healthy_active() > 1);
            tracing::debug!(error = %e, "upgrade connect failed, retrying on another instance");
            None
        }
    };
    if sender.is_none()
        && let Some(second) = release.pick_instance(sticky, Some(&first))
    {
        up = second;
        sender = up.connect_h1(true).await.ok();
    }
    let inflight = Inflight::start(up.clone());
    let Some(mut sender) = sender else {
        up.stats.upstream_failure();
        up.stats.response(502, micros_since(started));
        let why = format!("cannot connect to any instance of release {}", release.id);
        return error_response(StatusCode::BAD_GATEWAY, "upstream_unreachable", &why);
    };
    up_req.body_mut().count_into(up.stats.clone());
    let timeout = up.settings().response_timeout;
    let mut resp = match tokio::time::timeout(timeout, sender.send_request(up_req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            up.stats.upstream_failure();
            up.stats.response(502, micros_since(started));
            return error_response(StatusCode::BAD_GATEWAY, "upstream_failed", &format!("{}: {e}", up.addr));
        }
        Err(_) => {
            up.stats.upstream_failure();
            up.stats.response(504, micros_since(started));
            let why = format!("{} sent no response within {timeout:?}", up.addr);
            return error_response(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", &why);
        }
    };
    up.stats.response(resp.status().as_u16(), micros_since(started));
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        up.record_success();
        return finish_response(resp, version).map(|b| RespBody::upstream(b, inflight));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let stats = up.stats.clone();
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) else {
            return;
        };
        stats.long_lived_opened();
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Ok((to_up, to_client)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            stats.bytes_in(to_up);
            stats.bytes_out(to_client);
        }
        stats.long_lived_closed();
    });
    drop(inflight);
    let (mut parts, _) = resp.into_parts();
    parts.headers.remove("keep-alive");
    parts.headers.remove(header::TRANSFER_ENCODING);
    Response::from_parts(parts, RespBody::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_versions_are_read_leniently() {
        assert_eq!(parse_client_version("1.2.3"), Some(semver::Version::new(1, 2, 3)));
        assert_eq!(parse_client_version("v2"), Some(semver::Version::new(2, 0, 0)));
        assert_eq!(parse_client_version(" 1.4 "), Some(semver::Version::new(1, 4, 0)));
        assert_eq!(
            parse_client_version("1.4-beta.1"),
            Some(semver::Version::parse("1.4.0-beta.1").unwrap())
        );
        assert_eq!(parse_client_version("banana"), None);
        assert_eq!(parse_client_version("1.2.3.4"), None);
    }

    #[test]
    fn hop_by_hop_headers_go_and_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
