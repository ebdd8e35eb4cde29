//! The HTTP/1.x fast path: one task per client connection that parses heads in place, routes, and relays bytes to pooled upstream connections it drives itself.
//!
//! Why not hyper here: a hyper server plus a hyper client spend about 33,000
//! instructions of user time per proxied request (callgrind), against about
//! 20,000 for nginx; this loop parses with httparse, rewrites only the header
//! lines it must, and keeps the upstream connection in the same task (no
//! channel, no second task wake-up per request). HTTP/2 clients still go
//! through hyper (`proxy`).
//!
//! Framing follows RFC 9112 strictly: a request with both Content-Length and
//! Transfer-Encoding, conflicting lengths, or a coding other than `chunked`
//! is refused with 400/501 and the connection closed; chunked bodies pass
//! through unchanged after a strict scan finds their end.

pub mod chunked;
pub mod head;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Sleep;
use wire::UpstreamProtocol;

use self::chunked::ChunkScanner;
use self::head::{Framing, FramingError, Head, HeadError, RequestHead, find_cookie, is_hop_by_hop};
use crate::proxy::ConnCtx;
use crate::route::{Reply, RequestFacts, Routed, decide};
use crate::shared::Shared;
use crate::stats::Stats;
use crate::upstream::{RawConn, Upstream};

const MAX_HEAD: usize = 64 * 1024;
/// Request bodies up to this size are read and dropped after a refusal so the
/// connection can stay open; larger ones close it.
const DISCARD_LIMIT: u64 = 64 * 1024;
/// Largest request body buffered for an h2c upstream.
const BRIDGE_BODY_LIMIT: u64 = 16 << 20;
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// When the router leaves, how long an idle keep-alive connection is kept
/// for a request that may already be on its way (answered with
/// `Connection: close`) before it is closed. Closing at once would race
/// with such a request, which the client would see as a failure.
const LEAVE_LINGER: Duration = Duration::from_secs(2);

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
        out: Vec::with_capacity(2048),
        resp: Vec::with_capacity(2048),
        ubuf: BytesMut::with_capacity(16 * 1024),
        sleep: Box::pin(tokio::time::sleep(IDLE_TIMEOUT)),
        stop,
        consumed: 0,
    };
    while let Next::KeepAlive = c.exchange().await {}
    let _ = c.io.shutdown().await;
}

/// How a request body is being consumed.
#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkScanner),
    Done,
}

impl BodyState {
    fn new(f: Framing) -> BodyState {
        match f {
            Framing::Length(n) if n > 0 => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkScanner::default()),
            _ => BodyState::Done,
        }
    }

    /// How many bytes of `input` belong to the body.
    fn take(&mut self, input: &[u8]) -> Result<usize, chunked::ChunkError> {
        let n = match self {
            BodyState::Done => 0,
            BodyState::Length(left) => {
                let n = (*left).min(input.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = BodyState::Done;
                }
                n as usize
            }
            BodyState::Chunked(sc) => {
                let n = sc.scan(input, None)?;
                if sc.is_done() {
                    *self = BodyState::Done;
                }
                n
            }
        };
        Ok(n)
    }

    fn done(&self) -> bool {
        matches!(self, BodyState::Done)
    }
}

/// A request counted as open on an upstream until dropped.
struct Open {
    up: Arc<Upstream>,
}

impl Open {
    fn new(up: Arc<Upstream>) -> Open {
        up.stats.request_started();
        Open { up }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.up.stats.request_done();
    }
}

fn micros_since(t: Instant) -> u64 {
    t.elapsed().as_micros().min(u64::MAX as u128) as u64
}

fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE")
}

/// Why an attempt to get a response from an upstream failed.
enum UpFail {
    /// Nothing reached the upstream, or a reused connection died without
    /// answering an idempotent request: safe to try again. `connect` is
    /// true for a failed connect (which counts against the instance's health).
    Retry {
        why: String,
        connect: bool,
    },
    Reply(Reply),
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
        self.resp.clear();
        reply.write_h1(&mut self.resp, close);
        let _ = self.io.write_all(&self.resp).await;
    }

    /// Reply for a request that reached no upstream (stats: unrouted).
    async fn refuse(&mut self, reply: Reply, started: Instant, keep: bool) -> Next {
        let s = &self.shared.unrouted;
        s.request_started();
        s.response(reply.status.as_u16(), micros_since(started));
        s.request_done();
        self.reply(&reply, !keep).await;
        if keep { Next::KeepAlive } else { Next::Close }
    }

    /// Reads until a full request head is in `buf`. `None`: close quietly.
    async fn read_head(&mut self) -> Result<Option<()>, Reply> {
        let mut lingering = false;
        loop {
            if !self.buf.is_empty() {
                match self.head.parse_request(&self.buf) {
                    Ok(true) => return Ok(Some(())),
                    Ok(false) if self.buf.len() >= MAX_HEAD => {
                        return Err(Reply::new(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "head_too_large",
                            "request head over 64 KiB",
                        ));
                    }
                    Ok(false) => {}
                    Err(HeadError::TooManyHeaders) => {
                        return Err(Reply::new(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "too_many_headers",
                            "more than 128 request headers",
                        ));
                    }
                    Err(HeadError::Malformed) => {
                        return Err(Reply::new(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "malformed request head",
                        ));
                    }
                }
            }
            let idle = self.buf.is_empty();
            if idle && self.stopping() && !lingering {
                lingering = true;
                self.sleep.as_mut().reset(tokio::time::Instant::now() + LEAVE_LINGER);
            } else if !lingering || !idle {
                let limit = if idle { IDLE_TIMEOUT } else { HEADER_TIMEOUT };
                self.sleep.as_mut().reset(tokio::time::Instant::now() + limit);
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(8192);
            }
            tokio::select! {
                biased;
                r = self.io.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                },
                _ = self.sleep.as_mut() => {
                    if idle {
                        return Ok(None);
                    }
                    return Err(Reply::new(StatusCode::REQUEST_TIMEOUT, "head_timeout", "request head not received in time"));
                }
                _ = crate::listener::stopped(&mut self.stop), if idle && !lingering => {
                    lingering = true;
                    self.sleep.as_mut().reset(tokio::time::Instant::now() + LEAVE_LINGER);
                }
            }
        }
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
                let (status, why) = match e {
                    FramingError::Both => (StatusCode::BAD_REQUEST, "both Content-Length and Transfer-Encoding"),
                    FramingError::BadLength => (StatusCode::BAD_REQUEST, "invalid Content-Length"),
                    FramingError::UnsupportedCoding => {
                        (StatusCode::NOT_IMPLEMENTED, "only chunked transfer coding is supported")
                    }
                };
                return self
                    .refuse(Reply::new(status, "bad_framing", why), started, false)
                    .await;
            }
        };
        let keep_alive = if minor == 1 {
            !head.has_token(buf, "connection", "close")
        } else {
            head.has_token(buf, "connection", "keep-alive")
        };
        if minor == 1 && head.value(buf, "host").is_none() {
            let r = Reply::new(StatusCode::BAD_REQUEST, "bad_request", "HTTP/1.1 request without Host");
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
        if routed.upstream.protocol == UpstreamProtocol::H2c {
            return self.bridge_h2c(routed, framing, keep_alive, started).await;
        }
        self.forward(routed, framing, keep_alive, upgrade, started).await
    }

    /// Reads and drops a small request body so the connection can be reused.
    async fn skip_body(&mut self, framing: Framing) -> bool {
        let mut body = BodyState::new(framing);
        if let Framing::Length(n) = framing
            && n > DISCARD_LIMIT
        {
            return false;
        }
        let mut consumed = self.head.len;
        let mut total = 0u64;
        loop {
            match body.take(&self.buf[consumed..]) {
                Ok(n) => {
                    consumed += n;
                    total += n as u64;
                }
                Err(_) => return false,
            }
            if body.done() {
                self.buf.advance(consumed);
                self.head.len = 0;
                return true;
            }
            if total > DISCARD_LIMIT {
                return false;
            }
            self.buf.truncate(consumed);
            self.buf.reserve(8192);
            match tokio::time::timeout(HEADER_TIMEOUT, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return false,
            }
        }
    }

    /// Writes the request head for the upstream into `out`.
    fn upstream_head(&mut self, upstream: &Upstream, upgrade: bool) {
        use std::io::Write;
        let buf: &[u8] = &self.buf;
        let head = &self.head;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(&buf[head.method.clone()]);
        out.push(b' ');
        let target = &buf[head.target.clone()];
        // Absolute-form targets become origin-form; their authority is the Host.
        let (path, authority) = absolute_form(target);
        if path.first() == Some(&b'?') {
            out.push(b'/');
        }
        out.extend_from_slice(path);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut prev_xff: Option<&[u8]> = None;
        let mut has_host = false;
        let named_by_connection = |name: &[u8]| {
            head.values(buf, "connection")
                .flat_map(|v| v.split(|b| *b == b','))
                .any(|t| {
                    let t = t.trim_ascii();
                    !t.eq_ignore_ascii_case(b"upgrade")
                        && !t.eq_ignore_ascii_case(b"close")
                        && t.eq_ignore_ascii_case(name)
                })
        };
        for (n, v) in &head.headers {
            let name = &buf[n.clone()];
            if is_hop_by_hop(name) {
                if upgrade && name.eq_ignore_ascii_case(b"upgrade") {
                    out.extend_from_slice(b"upgrade: ");
                    out.extend_from_slice(&buf[v.clone()]);
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                prev_xff = Some(&buf[v.clone()]);
                continue;
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                continue;
            }
            if name.eq_ignore_ascii_case(b"host") {
                has_host = true;
                if let Some(a) = authority {
                    out.extend_from_slice(b"host: ");
                    out.extend_from_slice(a);
                    out.extend_from_slice(b"\r\n");
                    continue;
                }
            }
            if head.headers.len() > 1 && named_by_connection(name) {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&buf[v.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        if !has_host {
            match authority {
                Some(a) => {
                    out.extend_from_slice(b"host: ");
                    out.extend_from_slice(a);
                    out.extend_from_slice(b"\r\n");
                }
                None => {
                    let _ = write!(out, "host: {}\r\n", upstream.addr);
                }
            }
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(p) = prev_xff {
            out.extend_from_slice(p);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.ctx.forwarded_for.as_bytes());
        out.extend_from_slice(if self.ctx.listener.tls {
            b"\r\nx-forwarded-proto: https\r\n"
        } else {
            b"\r\nx-forwarded-proto: http\r\n"
        });
        if upgrade {
            out.extend_from_slice(b"connection: upgrade\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Proxies one request to an HTTP/1.1 upstream.
    async fn forward(
        &mut self,
        routed: Routed,
        framing: Framing,
        keep_alive: bool,
        upgrade: bool,
        started: Instant,
    ) -> Next {
        let release = routed.release();
        let sticky = routed.sticky();
        let mut up = routed.upstream.clone();
        self.upstream_head(&up, upgrade);
        // Body bytes already read go out with the head.
        let mut body = BodyState::new(framing);
        let head_len = self.head.len;
        let initial = match body.take(&self.buf[head_len..]) {
            Ok(n) => n,
            Err(_) => {
                let r = Reply::new(StatusCode::BAD_REQUEST, "bad_framing", "malformed chunked request body");
                return self.refuse(r, started, false).await;
            }
        };
        self.out.extend_from_slice(&self.buf[head_len..head_len + initial]);
        let mut open = Open::new(up.clone());
        up.stats.bytes_in(initial as u64);
        let method_is_idempotent = is_idempotent(&self.buf[self.head.method.clone()]);
        let expect_continue = self
            .head
            .value(&self.buf, "expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        self.consumed = head_len + initial;
        let mut attempts = 0;
        let (mut us, mut body_complete) = loop {
            attempts += 1;
            match self
                .send_head(&up, body.done(), method_is_idempotent, attempts > 1)
                .await
            {
                Ok(s) => break (s, body.done()),
                Err(UpFail::Retry { why, connect }) => {
                    if connect {
                        up.record_failure(release.healthy_active() > 1);
                    }
                    if attempts >= 2 {
                        let r = Reply::new(StatusCode::BAD_GATEWAY, "upstream_unreachable", &why);
                        return self.upstream_failed(&up, r, started, keep_alive && body.done()).await;
                    }
                    tracing::debug!(%why, "retrying the request");
                    if let Some(next) = release.pick_instance(sticky, Some(&up))
                        && !Arc::ptr_eq(&next, &up)
                    {
                        up = next;
                        open = Open::new(up.clone());
                    }
                }
                Err(UpFail::Reply(r)) => return self.upstream_failed(&up, r, started, false).await,
            }
        };
        // The client's rest of the body, unless the upstream must first say 100 Continue.
        let mut client_extra = BytesMut::new();
        if !body_complete && !expect_continue {
            match self.stream_body(&mut us, &mut body, &up, &mut client_extra).await {
                Ok(done) => body_complete = done,
                Err(r) => return self.upstream_failed(&up, r, started, false).await,
            }
        }
        // Response head (forwarding interim 1xx responses).
        loop {
            match self.read_response_head(&mut us, &up).await {
                Ok(()) => {}
                Err(r) => return self.upstream_failed(&up, r, started, false).await,
            }
            let status = self.rhead.status;
            if (100..200).contains(&status) && status != 101 {
                let n = self.rhead.len;
                if self.head.minor == 1 {
                    let _ = self.io.write_all(&self.ubuf[..n]).await;
                }
                self.ubuf.advance(n);
                if status == 100 && !body_complete {
                    match self.stream_body(&mut us, &mut body, &up, &mut client_extra).await {
                        Ok(done) => body_complete = done,
                        Err(r) => return self.upstream_failed(&up, r, started, false).await,
                    }
                }
                continue;
            }
            break;
        }
        let status = self.rhead.status;
        up.stats.response(status, micros_since(started));
        if status >= 500 {
            up.record_failure(release.healthy_active() > 1);
        } else {
            up.record_success();
        }
        let rframing = match head::response_framing(&self.rhead, &self.ubuf, &self.buf[self.head.method.clone()]) {
            Ok(f) => f,
            Err(_) => {
                let r = Reply::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    "upstream sent an invalid Content-Length",
                );
                return self.upstream_failed(&up, r, started, false).await;
            }
        };
        if upgrade && status == 101 {
            return self
                .tunnel(us, up, routed.set_cookie.as_ref(), head_len + initial, open)
                .await;
        }
        let client_minor = self.head.minor;
        let dechunk = client_minor == 0 && rframing == Framing::Chunked;
        let keep = keep_alive && body_complete && !self.stopping() && rframing != Framing::Close && !dechunk;
        let upstream_reusable = body_complete
            && self.rhead.minor == 1
            && rframing != Framing::Close
            && !self.rhead.has_token(&self.ubuf, "connection", "close");
        self.response_head(routed.set_cookie.as_ref(), keep, client_minor, dechunk);
        let ok = self.relay_body(&mut us, rframing, dechunk, &up).await;
        drop(open);
        if ok && upstream_reusable && self.ubuf.is_empty() {
            up.checkin_raw(us);
        } else {
            drop(us);
        }
        if !ok {
            return Next::Close;
        }
        // Drop this request from the buffer; keep pipelined bytes.
        self.buf.advance(head_len + initial);
        if !client_extra.is_empty() {
            self.buf.extend_from_slice(&client_extra);
        }
        if keep { Next::KeepAlive } else { Next::Close }
    }

    async fn upstream_failed(&mut self, up: &Upstream, reply: Reply, started: Instant, keep: bool) -> Next {
        up.stats.upstream_failure();
        up.stats.response(reply.status.as_u16(), micros_since(started));
        tracing::warn!(release = %up.release, instance = %up.id, reason = %reply.body, "upstream failed");
        let keep = keep && !self.stopping();
        if keep {
            self.buf.advance(self.consumed);
        }
        self.reply(&reply, !keep).await;
        if keep { Next::KeepAlive } else { Next::Close }
    }

    /// Gets a connection and writes `out` (head and buffered body) to it.
    async fn send_head(
        &mut self,
        up: &Arc<Upstream>,
        whole: bool,
        idempotent: bool,
        fresh: bool,
    ) -> Result<RawConn, UpFail> {
        let (mut s, reused) = match up.checkout_raw(fresh).await {
            Ok(x) => x,
            Err(e) => {
                return Err(UpFail::Retry {
                    why: e.to_string(),
                    connect: true,
                });
            }
        };
        if let Err(e) = s.s.write_all(&self.out).await {
            // A pooled connection the upstream had closed: nothing was processed.
            if reused && whole {
                return Err(UpFail::Retry {
                    why: format!("{}: {e}", up.addr),
                    connect: false,
                });
            }
            return Err(UpFail::Reply(Reply::new(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                &format!("{}: {e}", up.addr),
            )));
        }
        if reused && whole && idempotent {
            // A reused connection may have been closed by the upstream just
            // now; if it answers nothing at all, the request may be retried.
            self.ubuf.clear();
            match self.fill_ubuf(&mut s, up).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(UpFail::Retry {
                        why: format!("{} closed a reused connection", up.addr),
                        connect: false,
                    });
                }
                Err(r) => return Err(UpFail::Reply(r)),
            }
        } else {
            self.ubuf.clear();
        }
        Ok(s)
    }

    /// Reads more of the response into `ubuf` within the response timeout;
    /// `Ok(false)` if the upstream closed without sending anything.
    async fn fill_ubuf(&mut self, s: &mut RawConn, up: &Upstream) -> Result<bool, Reply> {
        let timeout = up.settings().response_timeout;
        self.sleep.as_mut().reset(tokio::time::Instant::now() + timeout);
        if self.ubuf.capacity() - self.ubuf.len() < 4096 {
            self.ubuf.reserve(16 * 1024);
        }
        tokio::select! {
            biased;
            r = s.s.read_buf(&mut self.ubuf) => match r {
                Ok(0) | Err(_) if self.ubuf.is_empty() => Ok(false),
                Ok(0) => Err(Reply::new(StatusCode::BAD_GATEWAY, "upstream_failed", &format!("{} closed the connection mid-response", up.addr))),
                Err(e) => Err(Reply::new(StatusCode::BAD_GATEWAY, "upstream_failed", &format!("{}: {e}", up.addr))),
                Ok(_) => Ok(true),
            },
            _ = self.sleep.as_mut() => Err(Reply::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                &format!("{} sent no response within {timeout:?}", up.addr),
            )),
        }
    }

    async fn read_response_head(&mut self, s: &mut RawConn, up: &Upstream) -> Result<(), Reply> {
        loop {
            if !self.ubuf.is_empty() {
                match self.rhead.parse_response(&self.ubuf) {
                    Ok(true) => return Ok(()),
                    Ok(false) if self.ubuf.len() >= MAX_HEAD => {
                        return Err(Reply::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream_failed",
                            "response head over 64 KiB",
                        ));
                    }
                    Ok(false) => {}
                    Err(_) => {
                        return Err(Reply::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream_failed",
                            &format!("{} sent a malformed response", up.addr),
                        ));
                    }
                }
            }
            match self.fill_ubuf(s, up).await? {
                true => {}
                false => {
                    return Err(Reply::new(
                        StatusCode::BAD_GATEWAY,
                        "upstream_failed",
                        &format!("{} closed the connection without a response", up.addr),
                    ));
                }
            }
        }
    }

    /// Streams the rest of the request body from the client to the upstream.
    /// Stops early if the upstream starts answering; returns whether the body
    /// was sent whole. Bytes read past the body go to `extra`.
    async fn stream_body(
        &mut self,
        us: &mut RawConn,
        body: &mut BodyState,
        up: &Upstream,
        extra: &mut BytesMut,
    ) -> Result<bool, Reply> {
        let mut chunk = BytesMut::with_capacity(64 * 1024);
        while !body.done() {
            chunk.clear();
            tokio::select! {
                biased;
                _ = us.s.readable() => return Ok(false),
                r = tokio::time::timeout(HEADER_TIMEOUT, self.io.read_buf(&mut chunk)) => match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return Err(Reply::new(StatusCode::BAD_REQUEST, "body_incomplete", "the client stopped sending the request body")),
                },
            }
            let n = body
                .take(&chunk)
                .map_err(|_| Reply::new(StatusCode::BAD_REQUEST, "bad_framing", "malformed chunked request body"))?;
            up.stats.bytes_in(n as u64);
            if let Err(e) = us.s.write_all(&chunk[..n]).await {
                return Err(Reply::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_failed",
                    &format!("{}: {e}", up.addr),
                ));
            }
            if n < chunk.len() {
                extra.extend_from_slice(&chunk[n..]);
            }
        }
        Ok(true)
    }

    /// Writes the client's response head (from the upstream's) into `resp`.
    fn response_head(&mut self, set_cookie: Option<&http::HeaderValue>, keep: bool, client_minor: u8, dechunk: bool) {
        use std::io::Write;
        let ub: &[u8] = &self.ubuf;
        let rh = &self.rhead;
        let out = &mut self.resp;
        out.clear();
        let _ = write!(out, "HTTP/1.1 {} ", rh.status);
        out.extend_from_slice(&ub[rh.target.clone()]);
        out.extend_from_slice(b"\r\n");
        for (n, v) in &rh.headers {
            let name = &ub[n.clone()];
            if is_hop_by_hop(name) || (dechunk && name.eq_ignore_ascii_case(b"transfer-encoding")) {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&ub[v.clone()]);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(c) = set_cookie {
            out.extend_from_slice(b"set-cookie: ");
            out.extend_from_slice(c.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !keep {
            out.extend_from_slice(b"connection: close\r\n");
        } else if client_minor == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Sends `resp` and then the response body; returns false if the
    /// exchange broke off (the client connection must close).
    async fn relay_body(&mut self, us: &mut RawConn, framing: Framing, dechunk: bool, up: &Upstream) -> bool {
        let head_len = self.rhead.len;
        self.ubuf.advance(head_len);
        let stats: &Stats = &up.stats;
        let mut length_left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut scanner = ChunkScanner::default();
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            // Take what belongs to this response from ubuf.
            let avail = self.ubuf.len();
            let (n, finished) = match framing {
                Framing::None => (0, true),
                Framing::Length(_) => {
                    let n = length_left.min(avail as u64) as usize;
                    length_left -= n as u64;
                    (n, length_left == 0)
                }
                Framing::Chunked => {
                    ranges.clear();
                    match scanner.scan(&self.ubuf[..avail], dechunk.then_some(&mut ranges)) {
                        Ok(n) => (n, scanner.is_done()),
                        Err(_) => return false,
                    }
                }
                Framing::Close => (avail, false),
            };
            stats.bytes_out(n as u64);
            if first {
                first = false;
                if dechunk {
                    for r in &ranges {
                        self.resp.extend_from_slice(&self.ubuf[r.clone()]);
                    }
                } else {
                    self.resp.extend_from_slice(&self.ubuf[..n]);
                }
                if self.io.write_all(&self.resp).await.is_err() {
                    return false;
                }
            } else if dechunk {
                for r in &ranges {
                    if self.io.write_all(&self.ubuf[r.clone()]).await.is_err() {
                        return false;
                    }
                }
            } else if n > 0 && self.io.write_all(&self.ubuf[..n]).await.is_err() {
                return false;
            }
            self.ubuf.advance(n);
            if finished {
                return true;
            }
            self.ubuf.clear();
            self.ubuf.reserve(32 * 1024);
            match tokio::time::timeout(up.settings().response_timeout, us.s.read_buf(&mut self.ubuf)).await {
                Ok(Ok(0)) => return framing == Framing::Close,
                Ok(Ok(_)) => {}
                _ => return false,
            }
        }
    }

    /// After a 101: forwards the upgrade response, then relays bytes both
    /// ways until either side closes.
    async fn tunnel(
        &mut self,
        mut us: RawConn,
        up: Arc<Upstream>,
        set_cookie: Option<&http::HeaderValue>,
        consumed: usize,
        open: Open,
    ) -> Next {
        use std::io::Write;
        // Read from the request head before the buffer moves on.
        let ws = self
            .head
            .value(&self.buf, "upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
        let ub: &[u8] = &self.ubuf;
        let rh = &self.rhead;
        self.resp.clear();
        let _ = write!(self.resp, "HTTP/1.1 101 ");
        self.resp.extend_from_slice(&ub[rh.target.clone()]);
        self.resp.extend_from_slice(b"\r\n");
        for (n, v) in &rh.headers {
            let name = &ub[n.clone()];
            if is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"upgrade") {
                continue;
            }
            self.resp.extend_from_slice(name);
            self.resp.extend_from_slice(b": ");
            self.resp.extend_from_slice(&ub[v.clone()]);
            self.resp.extend_from_slice(b"\r\n");
        }
        if let Some(c) = set_cookie {
            self.resp.extend_from_slice(b"set-cookie: ");
            self.resp.extend_from_slice(c.as_bytes());
            self.resp.extend_from_slice(b"\r\n");
        }
        self.resp.extend_from_slice(b"connection: upgrade\r\n\r\n");
        let after_head = self.rhead.len;
        self.resp.extend_from_slice(&self.ubuf[after_head..]);
        if self.io.write_all(&self.resp).await.is_err() {
            return Next::Close;
        }
        // Bytes the client sent after its request head belong to the new protocol.
        self.buf.advance(consumed);
        if !self.buf.is_empty() && us.s.write_all(&self.buf).await.is_err() {
            return Next::Close;
        }
        self.buf.clear();
        drop(open);
        let handle = self
            .shared
            .long_lived
            .register(up.clone(), ws, self.ctx.listener.drain_deadline_ms);
        let stats = up.stats.clone();
        stats.long_lived_opened();
        let (to_up, to_client) =
            crate::longlived::relay(&mut self.io, &mut us.s, handle.cut.clone(), ws, self.shared.clock).await;
        stats.bytes_in(to_up);
        stats.bytes_out(to_client);
        stats.long_lived_closed();
        drop(handle);
        Next::Close
    }

    /// An HTTP/1 client and an h2c upstream: the request body is read whole
    /// (up to 16 MiB) and the request sent through hyper.
    async fn bridge_h2c(&mut self, routed: Routed, framing: Framing, keep_alive: bool, started: Instant) -> Next {
        use http_body_util::BodyExt;
        let head_len = self.head.len;
        let mut body = BodyState::new(framing);
        let mut collected = BytesMut::new();
        let mut consumed = head_len;
        let mut payload_ranges = Vec::new();
        loop {
            let avail = &self.buf[consumed..];
            let n = match &mut body {
                BodyState::Chunked(sc) => {
                    payload_ranges.clear();
                    match sc.scan(avail, Some(&mut payload_ranges)) {
                        Ok(n) => {
                            for r in &payload_ranges {
                                collected.extend_from_slice(&avail[r.clone()]);
                            }
                            if sc.is_done() {
                                body = BodyState::Done;
                            }
                            n
                        }
                        Err(_) => {
                            return self
                                .refuse(
                                    Reply::new(StatusCode::BAD_REQUEST, "bad_framing", "malformed chunked body"),
                                    started,
                                    false,
                                )
                                .await;
                        }
                    }
                }
                _ => {
                    let n = body.take(avail).unwrap_or(0);
                    collected.extend_from_slice(&avail[..n]);
                    n
                }
            };
            consumed += n;
            if body.done() {
                break;
            }
            if collected.len() as u64 > BRIDGE_BODY_LIMIT {
                let r = Reply::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request bodies to an h2c release are limited to 16 MiB over HTTP/1",
                );
                return self.refuse(r, started, false).await;
            }
            self.buf.reserve(16 * 1024);
            match tokio::time::timeout(HEADER_TIMEOUT, self.io.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Next::Close,
            }
        }
        // Build the hyper request from the parsed head.
        let buf: &[u8] = &self.buf;
        let head = &self.head;
        let (path, authority) = absolute_form(&buf[head.target.clone()]);
        let mut req = http::Request::builder()
            .method(http::Method::from_bytes(&buf[head.method.clone()]).unwrap_or(http::Method::GET))
            .uri(String::from_utf8_lossy(path).as_ref());
        for (n, v) in &head.headers {
            let name = &buf[n.clone()];
            if name.eq_ignore_ascii_case(b"transfer-encoding") || name.eq_ignore_ascii_case(b"content-length") {
                continue;
            }
            req = req.header(name, &buf[v.clone()]);
        }
        if let Some(a) = authority {
            req = req.header(http::header::HOST, a);
        }
        let Ok(req) = req.body(()) else {
            return self
                .refuse(
                    Reply::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "request head not valid for HTTP/2",
                    ),
                    started,
                    false,
                )
                .await;
        };
        let (parts, ()) = req.into_parts();
        let up = routed.upstream.clone();
        let up_req = match crate::proxy::upstream_request(
            parts,
            crate::body::ReqBody::full(collected.freeze()),
            &up,
            self.ctx,
        ) {
            Ok(r) => r,
            Err(why) => {
                return self
                    .refuse(Reply::new(StatusCode::BAD_REQUEST, "bad_request", why), started, false)
                    .await;
            }
        };
        let (inflight, result) = crate::proxy::send_with_retry(routed.release(), up, up_req, routed.sticky()).await;
        let up = inflight.upstream().clone();
        let resp = match result {
            Ok((resp, _)) => resp,
            Err((status, code, why)) => {
                let r = Reply::new(status, code, &why);
                return self.upstream_failed(&up, r, started, false).await;
            }
        };
        up.stats.response(resp.status().as_u16(), micros_since(started));
        let (parts, mut incoming) = resp.into_parts();
        let keep = keep_alive && !self.stopping() && self.head.minor == 1;
        self.resp.clear();
        {
            use std::io::Write;
            let _ = write!(
                self.resp,
                "HTTP/1.1 {} {}\r\n",
                parts.status.as_u16(),
                parts.status.canonical_reason().unwrap_or("")
            );
        }
        let mut headers = parts.headers;
        crate::proxy::strip_hop_by_hop(&mut headers, false);
        headers.remove(http::header::CONTENT_LENGTH);
        for (k, v) in &headers {
            self.resp.extend_from_slice(k.as_str().as_bytes());
            self.resp.extend_from_slice(b": ");
            self.resp.extend_from_slice(v.as_bytes());
            self.resp.extend_from_slice(b"\r\n");
        }
        if let Some(c) = &routed.set_cookie {
            self.resp.extend_from_slice(b"set-cookie: ");
            self.resp.extend_from_slice(c.as_bytes());
            self.resp.extend_from_slice(b"\r\n");
        }
        self.resp.extend_from_slice(if keep {
            b"transfer-encoding: chunked\r\n\r\n"
        } else {
            b"connection: close\r\n\r\n"
        });
        if self.io.write_all(&self.resp).await.is_err() {
            return Next::Close;
        }
        while let Some(frame) = incoming.frame().await {
            let Ok(frame) = frame else { return Next::Close };
            if let Some(data) = frame.data_ref() {
                up.stats.bytes_out(data.len() as u64);
                let ok = if keep {
                    let size = format!("{:x}\r\n", data.len());
                    self.io.write_all(size.as_bytes()).await.is_ok()
                        && self.io.write_all(data).await.is_ok()
                        && self.io.write_all(b"\r\n").await.is_ok()
                } else {
                    self.io.write_all(data).await.is_ok()
                };
                if !ok {
                    return Next::Close;
                }
            }
        }
        drop(inflight);
        if keep {
            if self.io.write_all(b"0\r\n\r\n").await.is_err() {
                return Next::Close;
            }
            self.buf.advance(consumed);
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}

/// Splits an absolute-form target (`http://host/path`) into origin-form path
/// and authority; other targets come back unchanged with no authority.
fn absolute_form(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return (target, None);
    };
    match rest.iter().position(|b| *b == b'/' || *b == b'?') {
        // A target like `http://h?q` keeps `?q`; the caller adds the `/`.
        Some(i) => (&rest[i..], Some(&rest[..i])),
        None => (b"/", Some(rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets_become_origin_form() {
        assert_eq!(absolute_form(b"/a?b"), (&b"/a?b"[..], None));
        assert_eq!(absolute_form(b"http://h:1/a?b"), (&b"/a?b"[..], Some(&b"h:1"[..])));
        assert_eq!(absolute_form(b"http://h"), (&b"/"[..], Some(&b"h"[..])));
        assert_eq!(absolute_form(b"*"), (&b"*"[..], None));
    }
}
