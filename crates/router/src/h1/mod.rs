//! The HTTP/1.x fast path: one task per client connection parses heads in place and relays bytes.
//!
//! Why not hyper here: a hyper server plus a hyper client spend about 33,000
//! instructions of user time per proxied request (callgrind), against about
//! 20,000 for nginx; this loop parses with httparse, rewrites only the header
//! lines it must, and keeps the upstream connection in the same task (no
//! channel, no second task wake-up per request). HTTP/2 clients have their own
//! path (`h2path`), which forwards to HTTP/1.1 upstreams with this one's
//! `head`, `chunked` and `write`.
//!
//! The jobs live in their own files: `read` (client heads and bodies),
//! `forward` (an HTTP/1.1 upstream, 100-continue, WebSocket tunnels),
//! `bridge` (an h2c upstream), `write` (every head the router writes).
//! Framing follows RFC 9112 strictly: a request with both Content-Length and
//! Transfer-Encoding, conflicting lengths, or a coding other than `chunked`
//! is refused with 400/501 and the connection closed; chunked bodies pass
//! through unchanged after a strict scan finds their end. A `Connection` header
//! naming Content-Length, Transfer-Encoding or Host (the router would drop the
//! named header, the upstream would frame differently), two Hosts or a Host
//! list, userinfo in the target, and a target that is not origin- or
//! absolute-form (`*` only for OPTIONS) get 400 and the connection closed.
//! A request head has one deadline from its first byte (`[client] head_timeout`);
//! a body must keep `[client] body_min_rate` after `body_grace` or gets 408, and
//! neither is held against the instance, whose latency counts from the request
//! fully sent.

mod bridge;
pub(crate) mod chunked;
mod forward;
pub(crate) mod head;
mod read;
pub(crate) mod write;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Sleep;
use wire::UpstreamProtocol;

use self::head::{Framing, FramingError, Head, RequestHead, find_cookie};
use crate::conn::ConnCtx;
use crate::reply::{ErrorCode, Reply};
use crate::route::{RequestFacts, decide};
use crate::shared::Shared;
use crate::stats::micros_since;

const MAX_HEAD: usize = 64 * 1024;

/// What to do with the client connection after one exchange.
enum Next {
    KeepAlive,
    Close,
}

/// Buffers and scratch space reused across the requests of one connection.
struct Conn<'a, S> {
    shared: &'a Arc<Shared>,
    ctx: &'a Arc<ConnCtx>,
    io: S,
    buf: BytesMut,
    head: Head,
    rhead: Head,
    out: Vec<u8>,
    resp: Vec<u8>,
    ubuf: BytesMut,
    sleep: Pin<Box<Sleep>>,
    stop: watch::Receiver<bool>,
    /// Bytes of `buf` the current request has used so far (head and body).
    consumed: usize,
}

/// Serves HTTP/1.x on `io` until the client closes, an error, or `stop`.
/// `buf` holds bytes already read from the connection.
pub async fn serve<S>(shared: Arc<Shared>, ctx: Arc<ConnCtx>, io: S, buf: BytesMut, stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut c = Conn {
        shared: &shared,
        ctx: &ctx,
        io,
        buf,
        head: Head::default(),
        rhead: Head::default(),
        // Allocated on first use (a silent connection holds none of them).
        out: Vec::new(),
        resp: Vec::new(),
        ubuf: BytesMut::new(),
        sleep: Box::pin(tokio::time::sleep(shared.config.client.idle_timeout)),
        stop,
        consumed: 0,
    };
    while let Next::KeepAlive = c.exchange().await {}
    let _ = c.io.shutdown().await;
}

/// A routed request on its way, as the forwarding jobs need it.
struct Exchange {
    framing: Framing,
    keep_alive: bool,
    started: Instant,
}

impl<S> Conn<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Writes a router-made reply; `close` adds `Connection: close`.
    async fn reply(&mut self, reply: &Reply, close: bool) {
        write::reply(&mut self.resp, reply, close);
        let _ = self.io.write_all(&self.resp).await;
    }

    /// Reply for a request that reached no upstream (stats: unrouted).
    async fn refuse(&mut self, reply: Reply, started: Instant, keep: bool) -> Next {
        self.shared
            .unrouted
            .answered(reply.status().as_u16(), micros_since(started));
        self.reply(&reply, !keep).await;
        if keep { Next::KeepAlive } else { Next::Close }
    }

    /// One request/response exchange.
    async fn exchange(&mut self) -> Next {
        match self.read_head().await {
            Ok(Some(())) => {}
            Ok(None) => return Next::Close,
            Err(reply) => return self.refuse(reply, Instant::now(), false).await,
        }
        let started = Instant::now();
        let buf: &[u8] = &self.buf;
        let head = &self.head;
        let minor = head.minor;
        let framing = match head::request_framing(head, buf) {
            Ok(f) => f,
            Err(e) => {
                let reply = match e {
                    FramingError::Both => {
                        Reply::new(ErrorCode::BadFraming, "both Content-Length and Transfer-Encoding")
                    }
                    FramingError::BadLength => Reply::new(ErrorCode::BadFraming, "invalid Content-Length"),
                    FramingError::CodingInHttp10 => {
                        Reply::new(ErrorCode::BadFraming, "Transfer-Encoding in an HTTP/1.0 request")
                    }
                    FramingError::UnsupportedCoding => Reply::new(
                        ErrorCode::UnsupportedCoding,
                        "only chunked transfer coding is supported",
                    ),
                };
                return self.refuse(reply, started, false).await;
            }
        };
        if let Err(e) = head::strict_request(head, buf) {
            return self
                .refuse(Reply::new(ErrorCode::BadRequest, e.reason()), started, false)
                .await;
        }
        let keep_alive = if minor == 1 {
            !head.has_token(buf, "connection", "close")
        } else {
            head.has_token(buf, "connection", "keep-alive")
        };
        if minor == 1 && head.value(buf, "host").is_none() {
            let r = Reply::new(ErrorCode::BadRequest, "HTTP/1.1 request without Host");
            return self.refuse(r, started, false).await;
        }
        let upgrade =
            minor == 1 && head.has_token(buf, "connection", "upgrade") && head.value(buf, "upgrade").is_some();
        let cfg = &self.shared.config;
        let view = RequestHead {
            head,
            buf,
            ip: self.ctx.peer.ip(),
        };
        let facts = RequestFacts {
            client_version: head.value(buf, cfg.version_header.as_str()),
            cookie: find_cookie(head, buf, &cfg.cookie_name),
            key: cfg.key_header.as_ref().and_then(|h| head.value(buf, h.as_str())),
        };
        let routed = match decide(self.shared, self.ctx, &view, &facts) {
            Ok(r) => r,
            Err(reply) => {
                let keep = keep_alive && self.skip_body(framing).await;
                return self.refuse(reply, started, keep).await;
            }
        };
        let ex = Exchange {
            framing,
            keep_alive,
            started,
        };
        if routed.upstream.protocol == UpstreamProtocol::H2c {
            return self.bridge_h2c(routed, ex).await;
        }
        self.forward(routed, ex, upgrade).await
    }
}
