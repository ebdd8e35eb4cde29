//! The HTTP/2 client path (hyper): route each stream, forward it to an HTTP/1.1 or h2c upstream (retrying once where safe), and turn every failure into a response.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use wire::UpstreamProtocol;
use wire::router_config::AffinityMode;

use crate::affinity::find_cookie;
use crate::body::{Inflight, ReqBody, RespBody};
use crate::route::{Reply, RequestFacts, decide};
use crate::shared::Shared;
use crate::stats::Stats;
use crate::table::{CRelease, RequestView};
use crate::upstream::{PooledConn, Upstream};

/// The listener a connection came in on.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: String,
    pub affinity: AffinityMode,
    pub tls: bool,
    /// The listener's drain deadline in ms (`u64::MAX`: unlimited).
    pub drain_deadline_ms: u64,
}

/// One client connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerCtx>,
    /// The peer address as an `x-forwarded-for` value, formatted once.
    pub forwarded_for: HeaderValue,
}

impl ConnCtx {
    pub fn new(peer: SocketAddr, listener: Arc<ListenerCtx>) -> ConnCtx {
        let forwarded_for = HeaderValue::try_from(peer.ip().to_canonical().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnCtx {
            peer,
            listener,
            forwarded_for,
        }
    }
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
    reply_response(&Reply::new(status, code, reason))
}

/// A router-made reply as a hyper response.
pub fn reply_response(reply: &Reply) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(reply.body.clone()));
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-slipway-error", HeaderValue::from_static(reply.code));
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

async fn route(shared: &Arc<Shared>, conn: &ConnCtx, req: Request<Incoming>, started: Instant) -> Response<RespBody> {
    let cfg = &shared.config;
    let view = View {
        headers: req.headers(),
        uri: req.uri(),
        ip: conn.peer.ip(),
    };
    let facts = RequestFacts {
        client_version: req.headers().get(&cfg.version_header).map(|v| v.as_bytes()),
        cookie: find_cookie(req.headers(), &cfg.cookie_name),
        key: cfg
            .key_header
            .as_ref()
            .and_then(|h| req.headers().get(h))
            .map(|v| v.as_bytes()),
    };
    let routed = match decide(shared, conn, &view, &facts) {
        Ok(r) => r,
        Err(reply) => return unrouted(&shared.unrouted, started, reply_response(&reply)),
    };
    let mut resp = forward(
        routed.release(),
        routed.upstream.clone(),
        conn,
        req,
        started,
        routed.sticky(),
    )
    .await;
    if let Some(c) = routed.set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == header::UPGRADE
}

/// Removes connection-specific headers, including those the `Connection`
/// header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names, no hashing.
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
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

/// Turns the client's request head into the one sent to `up`.
pub fn upstream_request(
    mut parts: http::request::Parts,
    body: ReqBody,
    up: &Upstream,
    conn: &ConnCtx,
) -> Result<Request<ReqBody>, &'static str> {
    strip_hop_by_hop(&mut parts.headers, false);
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    let xff = match parts.headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            let ip = conn.forwarded_for.to_str().unwrap_or("unknown");
            HeaderValue::try_from(format!("{prev}, {ip}")).ok()
        }
        None => Some(conn.forwarded_for.clone()),
    };
    if let Some(v) = xff {
        parts.headers.insert(XFF, v);
    }
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    if !parts.headers.contains_key(&XFP) {
        let proto = if conn.listener.tls { "https" } else { "http" };
        parts.headers.insert(XFP, HeaderValue::from_static(proto));
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
    Ok(Request::from_parts(parts, body))
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
pub async fn send_with_retry(
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

pub fn finish_response(mut resp: Response<Incoming>, version: Version) -> Response<Incoming> {
    strip_hop_by_hop(resp.headers_mut(), false);
    *resp.version_mut() = version;
    resp
}

async fn forward(
    release: &CRelease,
    up: Arc<Upstream>,
    conn: &ConnCtx,
    req: Request<Incoming>,
    started: Instant,
    sticky: bool,
) -> Response<RespBody> {
    let version = req.version();
    let (parts, body) = req.into_parts();
    let up_req = match upstream_request(parts, ReqBody::new(body), &up, conn) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
