//! One request to an upstream through hyper's client, retried once where nothing got out.
//!
//! The HTTP/2 path and the HTTP/1 bridge to h2c both send through it.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use wire::UpstreamProtocol;

use crate::body::ReqBody;
use crate::conn::ConnCtx;
use crate::reply::ErrorCode;
use crate::table::CRelease;
use crate::upstream::{Inflight, PooledConn, Upstream};

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
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
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
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

/// Turns the client's request head into the one sent to `up`.
pub fn upstream_request(
    mut parts: http::request::Parts,
    body: ReqBody,
    up: &Upstream,
    conn: &ConnCtx,
) -> Result<Request<ReqBody>, &'static str> {
    strip_hop_by_hop(&mut parts.headers);
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
        parts.headers.insert(XFP, HeaderValue::from_static(conn.proto()));
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
    Failed(ErrorCode, String),
}

async fn send_once(up: &Upstream, mut req: Request<ReqBody>) -> Result<(Response<Incoming>, PooledConn), Failure> {
    req.body_mut().count_into(up.stats.clone());
    let (conn, _reused) = match up.checkout().await {
        Ok(c) => c,
        Err(e) => {
            return Err(Failure::NotSent {
                req: Box::new(req),
                why: e.to_string(),
                // Out of descriptors here is not the instance's failure.
                connect: !e.is_local(),
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
        Ok(()) => Err(Failure::Failed(
            ErrorCode::UpstreamTimeout,
            format!("{} sent no response within {:?}", up.addr, timeout),
        )),
        Err(mut e) => {
            let why = format!("{}: {}", up.addr, e.error());
            match e.take_message() {
                Some(req) => Err(Failure::NotSent {
                    req: Box::new(req),
                    why,
                    connect: false,
                }),
                None => Err(Failure::Failed(ErrorCode::UpstreamFailed, why)),
            }
        }
    }
}

/// What [`send_with_retry`] got: the response and the connection it came on,
/// or the code and reason to answer with.
pub type Sent = Result<(Response<Incoming>, PooledConn), (ErrorCode, String)>;

/// Sends to `up`; if nothing of the request got out (connect failure, or a
/// reused connection that turned out closed), tries once more on another
/// healthy instance of the same release (or the same one if it is the only one).
pub async fn send_with_retry(
    release: &CRelease,
    first: Arc<Upstream>,
    req: Request<ReqBody>,
    sticky: bool,
) -> (Inflight, Sent) {
    let inflight = Inflight::start(first.clone());
    let (req, why) = match send_once(&first, req).await {
        Ok(ok) => return (inflight, Ok(ok)),
        Err(Failure::Failed(code, why)) => {
            first.record_failure(release.healthy_active() > 1);
            return (inflight, Err((code, why)));
        }
        Err(Failure::NotSent { req, why, connect }) => {
            if connect {
                first.record_failure(release.healthy_active() > 1);
            }
            (req, why)
        }
    };
    let Some(second) = release.pick_instance(sticky, Some(&first)) else {
        return (inflight, Err((ErrorCode::UpstreamUnreachable, why)));
    };
    drop(inflight);
    let inflight = Inflight::start(second.clone());
    tracing::debug!(first = %first.addr, second = %second.addr, %why, "retrying request");
    match send_once(&second, *req).await {
        Ok(ok) => (inflight, Ok(ok)),
        Err(Failure::Failed(code, why)) => {
            second.record_failure(release.healthy_active() > 1);
            (inflight, Err((code, why)))
        }
        Err(Failure::NotSent { why: why2, connect, .. }) => {
            if connect {
                second.record_failure(release.healthy_active() > 1);
            }
            let why = format!("{why}; retry: {why2}");
            (inflight, Err((ErrorCode::UpstreamUnreachable, why)))
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
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
