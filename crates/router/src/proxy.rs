//! The HTTP/2 client path through hyper: route each stream, forward it, answer every failure.

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::affinity::find_cookie;
use crate::body::ReqBody;
use crate::conn::ConnCtx;
use crate::reply::{ErrorCode, Reply};
use crate::route::{RequestFacts, Routed, decide};
use crate::send::{send_with_retry, strip_hop_by_hop, upstream_request};
use crate::shared::Shared;
use crate::stats::{Stats, micros_since};
use crate::table::RequestView;
use crate::upstream::Inflight;

/// Serves one request; never fails (errors become responses).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let started = Instant::now();
    Ok(route(&shared, &conn, req, started).await)
}

/// A router-made reply, counted against `stats` as answered at once.
fn refuse(stats: &Stats, started: Instant, reply: &Reply) -> Response<RespBody> {
    stats.answered(reply.status().as_u16(), micros_since(started));
    reply_response(reply)
}

/// A router-made reply as a hyper response.
fn reply_response(reply: &Reply) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::full(reply.body.clone()));
    *resp.status_mut() = reply.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-slipway-error", HeaderValue::from_static(reply.code.as_str()));
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
        Err(reply) => return refuse(&shared.unrouted, started, &reply),
    };
    let mut resp = forward(&routed, conn, req, started).await;
    if let Some(c) = routed.set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

async fn forward(routed: &Routed, conn: &ConnCtx, req: Request<Incoming>, started: Instant) -> Response<RespBody> {
    let release = routed.release();
    let up = routed.upstream.clone();
    let version = req.version();
    let (parts, body) = req.into_parts();
    let mut body = ReqBody::new(body);
    let ended = body.track_end();
    let up_req = match upstream_request(parts, body, &up, conn) {
        Ok(r) => r,
        Err(reason) => return refuse(&up.stats, started, &Reply::new(ErrorCode::BadRequest, reason)),
    };
    let (mut inflight, result) = send_with_retry(release, up, up_req, routed.sticky()).await;
    let up = inflight.upstream().clone();
    match result {
        Ok((mut resp, pooled)) => {
            let status = resp.status().as_u16();
            up.record_status(status, || release.healthy_active() > 1);
            // The instance's latency counts from the body's end, never the client's pace.
            let from = ended.as_ref().and_then(|e| e.get().copied()).unwrap_or(started);
            up.stats.response(status, micros_since(from));
            inflight.set_conn(pooled);
            strip_hop_by_hop(resp.headers_mut());
            *resp.version_mut() = version;
            resp.map(|body| RespBody::upstream(body, inflight))
        }
        Err((code, why)) => reply_response(&up.failed(code, &why, started)),
    }
}

/// What the router sends back to a client.
pub enum RespBody {
    /// A proxied body.
    Upstream {
        inner: Incoming,
        inflight: Option<Inflight>,
    },
    /// A body the router made itself (errors, 426), or an empty one.
    Full(Option<Bytes>),
}

impl RespBody {
    pub fn full(b: impl Into<Bytes>) -> RespBody {
        RespBody::Full(Some(b.into()))
    }

    pub fn empty() -> RespBody {
        RespBody::Full(None)
    }

    /// Wraps an upstream body; an already finished one (HEAD, 204, 304, empty)
    /// frees its connection right away.
    pub fn upstream(inner: Incoming, inflight: Inflight) -> RespBody {
        if inner.is_end_stream() {
            inflight.finish();
            return RespBody::empty();
        }
        RespBody::Upstream {
            inner,
            inflight: Some(inflight),
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RespBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Upstream { inner, inflight } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(f)) = (frame.data_ref(), inflight.as_ref()) {
                            f.upstream().stats.bytes_out(data.len() as u64);
                        }
                        if inner.is_end_stream()
                            && let Some(f) = inflight.take()
                        {
                            f.finish();
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(f) = inflight.take() {
                            f.finish();
                        }
                    }
                    // An error mid-body: drop the connection, not pooled.
                    Poll::Ready(Some(Err(_))) => {
                        inflight.take();
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(b) => b.is_none(),
            RespBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
            RespBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
