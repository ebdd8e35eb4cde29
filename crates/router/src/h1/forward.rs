//! Forwarding to an HTTP/1.1 upstream: request out, interim and final responses back, tunnels.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::ChunkScanner;
use super::head::{self, Framing, absolute_form, is_hop_by_hop};
use super::read::{BodyPace, BodyState, body_cut};
use super::write::{self, Ending, ResponseHead};
use super::{Conn, Exchange, MAX_HEAD, Next};
use crate::reply::{ErrorCode, Reply};
use crate::route::Routed;
use crate::slots::Phase;
use crate::stats::micros_since;
use crate::upstream::{Inflight, RawConn, Upstream};

fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE")
}

/// Why an exchange with an upstream failed: the code to answer with and a
/// reason that names the upstream.
pub(super) struct UpError {
    pub(super) code: ErrorCode,
    pub(super) why: String,
}

fn up_error(code: ErrorCode, why: impl Into<String>) -> UpError {
    UpError { code, why: why.into() }
}

/// Why sending a request head on a connection failed.
enum UpFail {
    /// Nothing reached the upstream, or a reused connection died without
    /// answering an idempotent request: safe to try again.
    Retry(String),
    Failed(UpError),
}

/// What happens after a response body: see `respond_head`.
struct Plan {
    dechunk: bool,
    /// The client connection stays open.
    keep: bool,
    /// The upstream connection may be pooled again.
    reusable: bool,
}

/// A request under way to one upstream connection.
struct Sending {
    us: RawConn,
    up: Arc<Upstream>,
    open: Inflight,
    body: BodyState,
    /// The request body went out whole.
    complete: bool,
    /// Bytes the client sent past the request body (a pipelined request).
    extra: BytesMut,
    /// When the request was last sent on (head, then the body's end): the
    /// instance's latency counts from here, never the client's pace.
    sent: Instant,
}

impl<S> Conn<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Proxies one request to an HTTP/1.1 upstream.
    pub(super) async fn forward(&mut self, routed: Routed, ex: Exchange, upgrade: bool) -> Next {
        let head_len = self.head.len;
        let mut body = BodyState::new(ex.framing);
        let Ok(initial) = body.take(&self.buf[head_len..]) else {
            let r = Reply::new(ErrorCode::BadFraming, "malformed chunked request body");
            return self.refuse(r, ex.started, false).await;
        };
        // Body bytes already read go out with the head.
        self.upstream_head(&routed.upstream, upgrade);
        self.out.extend_from_slice(&self.buf[head_len..head_len + initial]);
        self.consumed = head_len + initial;
        let expect_continue = self
            .head
            .value(&self.buf, "expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        let mut s = match self.send_request(&routed, body, initial, ex.started).await {
            Ok(s) => s,
            Err((up, e, whole)) => return self.upstream_failed(&up, e, ex.started, ex.keep_alive && whole).await,
        };
        // The client's rest of the body, unless the upstream must first say 100 Continue.
        if !s.complete
            && !expect_continue
            && let Err(e) = self.stream_body(&mut s).await
        {
            return self.upstream_failed(&s.up, e, s.sent, false).await;
        }
        if let Err(e) = self.read_response_head(&mut s).await {
            return self.upstream_failed(&s.up, e, s.sent, false).await;
        }
        let status = self.rhead.status;
        s.up.stats.response(status, micros_since(s.sent));
        s.up.record_status(status, || routed.release().healthy_active() > 1);
        let method = &self.buf[self.head.method.clone()];
        let Ok(rframing) = head::response_framing(&self.rhead, &self.ubuf, method) else {
            let e = up_error(ErrorCode::UpstreamFailed, "upstream sent an invalid Content-Length");
            return self.upstream_failed(&s.up, e, s.sent, false).await;
        };
        if upgrade && status == 101 {
            return self.tunnel(s, routed.set_cookie.as_ref()).await;
        }
        let plan = self.respond_head(&s, routed.set_cookie.as_ref(), rframing, ex.keep_alive);
        let ok = self.relay_body(&mut s.us, rframing, plan.dechunk, &s.up).await;
        self.finish(s, ok, plan)
    }

    /// Writes the request head for the upstream into `out`.
    fn upstream_head(&mut self, upstream: &Upstream, upgrade: bool) {
        let buf: &[u8] = &self.buf;
        let head = &self.head;
        let out = &mut self.out;
        out.clear();
        out.reserve(2048);
        // Absolute-form targets become origin-form; their authority is the Host.
        let (path, authority) = absolute_form(&buf[head.target.clone()]);
        write::request_line(out, &buf[head.method.clone()], path);
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
                    write::header(out, b"upgrade", &buf[v.clone()]);
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
                    write::header(out, b"host", a);
                    continue;
                }
            }
            if head.headers.len() > 1 && named_by_connection(name) {
                continue;
            }
            write::header(out, name, &buf[v.clone()]);
        }
        if !has_host {
            match authority {
                Some(a) => write::header(out, b"host", a),
                None => write::header(out, b"host", upstream.addr.to_string().as_bytes()),
            }
        }
        write::forwarded(out, prev_xff, self.ctx.forwarded_for.as_bytes(), self.ctx.listener.tls);
        if upgrade {
            write::header(out, b"connection", b"upgrade");
        }
        write::end_head(out);
    }

    /// Sends `out` (head and buffered body) on a connection to the routed
    /// instance, or, where that is safe, once more on another one. The error
    /// says who failed and whether the client connection may stay open.
    async fn send_request(
        &mut self,
        routed: &Routed,
        body: BodyState,
        initial: usize,
        started: Instant,
    ) -> Result<Sending, (Arc<Upstream>, UpError, bool)> {
        let release = routed.release();
        let whole = body.done();
        let mut up = routed.upstream.clone();
        let mut open = Inflight::start(up.clone());
        up.stats.bytes_in(initial as u64);
        let idempotent = is_idempotent(&self.buf[self.head.method.clone()]);
        let mut fresh = false;
        loop {
            // A body still to stream resets this once it is sent (`stream_body`).
            let sent = started;
            let (why, connect) = match up.checkout_raw(fresh).await {
                // Out of descriptors here is not the instance's failure.
                Err(e) => (e.to_string(), !e.is_local()),
                Ok((mut us, reused)) => match self.send_head(&mut us, &up, reused && whole, idempotent).await {
                    Ok(()) => {
                        let extra = BytesMut::new();
                        let complete = whole;
                        return Ok(Sending {
                            us,
                            up,
                            open,
                            body,
                            complete,
                            extra,
                            sent,
                        });
                    }
                    Err(UpFail::Retry(why)) => (why, false),
                    Err(UpFail::Failed(e)) => return Err((up, e, false)),
                },
            };
            // Nothing reached the upstream: safe to try again, once.
            if connect {
                up.record_failure(release.healthy_active() > 1);
            }
            if fresh {
                return Err((up, up_error(ErrorCode::UpstreamUnreachable, why), whole));
            }
            fresh = true;
            tracing::debug!(%why, "retrying the request");
            if let Some(next) = release.pick_instance(routed.sticky(), Some(&up))
                && !Arc::ptr_eq(&next, &up)
            {
                up = next;
                open = Inflight::start(up.clone());
            }
        }
    }

    /// Writes the client's response head into `resp` and decides what
    /// happens to both connections after the body.
    fn respond_head(
        &mut self,
        s: &Sending,
        set_cookie: Option<&HeaderValue>,
        rframing: Framing,
        keep_alive: bool,
    ) -> Plan {
        let dechunk = self.head.minor == 0 && rframing == Framing::Chunked;
        let keep = keep_alive && s.complete && !self.stopping() && rframing != Framing::Close && !dechunk;
        let reusable = s.complete
            && self.rhead.minor == 1
            && rframing != Framing::Close
            && !self.rhead.has_token(&self.ubuf, "connection", "close");
        let ending = match (keep, self.head.minor) {
            (false, _) => Ending::Close,
            (true, 0) => Ending::KeepAlive,
            (true, _) => Ending::Plain,
        };
        let skip = |name: &[u8]| is_hop_by_hop(name) || (dechunk && name.eq_ignore_ascii_case(b"transfer-encoding"));
        self.client_head(skip, set_cookie, ending);
        Plan {
            dechunk,
            keep,
            reusable,
        }
    }

    /// After the body went out (`ok`) or broke off: pools the upstream
    /// connection if it can serve again and keeps pipelined bytes.
    fn finish(&mut self, s: Sending, ok: bool, plan: Plan) -> Next {
        let Sending {
            us, up, open, extra, ..
        } = s;
        drop(open);
        if ok && plan.reusable && self.ubuf.is_empty() {
            up.checkin_raw(us);
        } else {
            drop(us);
        }
        if !ok {
            return Next::Close;
        }
        // Drop this request from the buffer; keep pipelined bytes.
        self.buf.advance(self.consumed);
        if !extra.is_empty() {
            self.buf.extend_from_slice(&extra);
        }
        if plan.keep { Next::KeepAlive } else { Next::Close }
    }

    /// Answers a request its upstream failed; the connection stays open only
    /// if `keep` and the router is not leaving.
    /// A failure the client caused (a stalled or broken body) is answered the
    /// same way but never held against the instance: not logged or counted as
    /// its failure, not in its latency.
    pub(super) async fn upstream_failed(&mut self, up: &Upstream, e: UpError, started: Instant, keep: bool) -> Next {
        if e.code.is_client_fault() {
            tracing::debug!(peer = %self.ctx.peer, reason = %e.why, "request cut short by the client");
            let reply = Reply::new(e.code, &e.why);
            self.shared
                .unrouted
                .answered(reply.status().as_u16(), micros_since(started));
            self.reply(&reply, true).await;
            return Next::Close;
        }
        let reply = up.failed(e.code, &e.why, started);
        let keep = keep && !self.stopping();
        if keep {
            self.buf.advance(self.consumed);
        }
        self.reply(&reply, !keep).await;
        if keep { Next::KeepAlive } else { Next::Close }
    }

    /// Writes `out` to a connection. `retryable`: a pooled connection and the
    /// whole request, which may go elsewhere if the upstream had closed it.
    async fn send_head(
        &mut self,
        us: &mut RawConn,
        up: &Upstream,
        retryable: bool,
        idempotent: bool,
    ) -> Result<(), UpFail> {
        if let Err(e) = write::all(&mut us.s, &self.out).await {
            // A pooled connection the upstream had closed: nothing was processed.
            if retryable {
                return Err(UpFail::Retry(format!("{}: {e}", up.addr)));
            }
            return Err(UpFail::Failed(up_error(
                ErrorCode::UpstreamFailed,
                format!("{}: {e}", up.addr),
            )));
        }
        self.ubuf.clear();
        if retryable && idempotent {
            // A reused connection may have been closed by the upstream just
            // now; if it answers nothing at all, the request may be retried.
            match self.fill_ubuf(us, up).await {
                Ok(true) => {}
                Ok(false) => return Err(UpFail::Retry(format!("{} closed a reused connection", up.addr))),
                Err(e) => return Err(UpFail::Failed(e)),
            }
        }
        Ok(())
    }

    /// Reads more of the response into `ubuf` within the response timeout;
    /// `Ok(false)` if the upstream closed without sending anything.
    async fn fill_ubuf(&mut self, s: &mut RawConn, up: &Upstream) -> Result<bool, UpError> {
        let timeout = up.settings().response_timeout;
        self.sleep.as_mut().reset(tokio::time::Instant::now() + timeout);
        if self.ubuf.capacity() - self.ubuf.len() < 4096 {
            self.ubuf.reserve(16 * 1024);
        }
        let failed = |why: String| up_error(ErrorCode::UpstreamFailed, why);
        tokio::select! {
            biased;
            r = s.s.read_buf(&mut self.ubuf) => match r {
                Ok(0) | Err(_) if self.ubuf.is_empty() => Ok(false),
                Ok(0) => Err(failed(format!("{} closed the connection mid-response", up.addr))),
                Err(e) => Err(failed(format!("{}: {e}", up.addr))),
                Ok(_) => Ok(true),
            },
            _ = self.sleep.as_mut() => Err(up_error(
                ErrorCode::UpstreamTimeout,
                format!("{} sent no response within {timeout:?}", up.addr),
            )),
        }
    }

    /// Reads the final response head into `rhead`, forwarding interim 1xx
    /// responses (and sending the body after a 100 Continue).
    async fn read_response_head(&mut self, s: &mut Sending) -> Result<(), UpError> {
        loop {
            if !self.ubuf.is_empty() {
                match self.rhead.parse_response(&self.ubuf) {
                    Ok(true) => {
                        let status = self.rhead.status;
                        if !(100..200).contains(&status) || status == 101 {
                            return Ok(());
                        }
                        let n = self.rhead.len;
                        if self.head.minor == 1 {
                            let _ = self.io.write_all(&self.ubuf[..n]).await;
                        }
                        self.ubuf.advance(n);
                        if status == 100 && !s.complete {
                            self.stream_body(s).await?;
                        }
                        continue;
                    }
                    Ok(false) if self.ubuf.len() >= MAX_HEAD => {
                        return Err(up_error(ErrorCode::UpstreamFailed, "response head over 64 KiB"));
                    }
                    Ok(false) => {}
                    Err(_) => {
                        let why = format!("{} sent a malformed response", s.up.addr);
                        return Err(up_error(ErrorCode::UpstreamFailed, why));
                    }
                }
            }
            if !self.fill_ubuf(&mut s.us, &s.up).await? {
                let why = format!("{} closed the connection without a response", s.up.addr);
                return Err(up_error(ErrorCode::UpstreamFailed, why));
            }
        }
    }

    /// Streams the rest of the request body from the client to the upstream.
    /// Stops early if the upstream starts answering; `s.complete` says whether
    /// the body was sent whole. Bytes read past the body go to `s.extra`.
    async fn stream_body(&mut self, s: &mut Sending) -> Result<(), UpError> {
        let mut chunk = BytesMut::with_capacity(64 * 1024);
        let mut pace = BodyPace::new(&self.shared.config.client, tokio::time::Instant::now());
        self.ctx.slot.set(Phase::Body);
        while !s.body.done() {
            chunk.clear();
            tokio::select! {
                biased;
                _ = s.us.s.readable() => {
                    s.complete = false;
                    self.ctx.slot.set(Phase::Busy);
                    return Ok(());
                }
                r = pace.read(&mut self.io, &mut chunk, &self.ctx.slot) => if let Err(()) | Ok(0) = r {
                    let cut = body_cut(r.is_err());
                    return Err(up_error(cut.code, "the request body came too slowly or stopped"));
                },
            }
            let n = s
                .body
                .take(&chunk)
                .map_err(|_| up_error(ErrorCode::BadFraming, "malformed chunked request body"))?;
            s.up.stats.bytes_in(n as u64);
            if let Err(e) = s.us.s.write_all(&chunk[..n]).await {
                return Err(up_error(ErrorCode::UpstreamFailed, format!("{}: {e}", s.up.addr)));
            }
            if n < chunk.len() {
                s.extra.extend_from_slice(&chunk[n..]);
            }
        }
        s.complete = true;
        s.sent = Instant::now();
        self.ctx.slot.set(Phase::Busy);
        Ok(())
    }

    /// Writes the client's response head from the upstream's into `resp`,
    /// leaving out the headers `skip` names.
    fn client_head(&mut self, skip: impl Fn(&[u8]) -> bool, set_cookie: Option<&HeaderValue>, ending: Ending) {
        let ub: &[u8] = &self.ubuf;
        let rh = &self.rhead;
        let mut out = ResponseHead::start(&mut self.resp, rh.status, &ub[rh.target.clone()]);
        for (n, v) in &rh.headers {
            let name = &ub[n.clone()];
            if !skip(name) {
                out.header(name, &ub[v.clone()]);
            }
        }
        out.finish(set_cookie, ending);
    }

    /// Sends `resp` and then the response body; returns false if the
    /// exchange broke off (the client connection must close).
    async fn relay_body(&mut self, us: &mut RawConn, framing: Framing, dechunk: bool, up: &Upstream) -> bool {
        let head_len = self.rhead.len;
        self.ubuf.advance(head_len);
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
            up.stats.bytes_out(n as u64);
            if first {
                first = false;
                if dechunk {
                    for r in &ranges {
                        self.resp.extend_from_slice(&self.ubuf[r.clone()]);
                    }
                } else {
                    self.resp.extend_from_slice(&self.ubuf[..n]);
                }
                if write::all(&mut self.io, &self.resp).await.is_err() {
                    return false;
                }
            } else if dechunk {
                for r in &ranges {
                    if self.io.write_all(&self.ubuf[r.clone()]).await.is_err() {
                        return false;
                    }
                }
            } else if n > 0 && write::all(&mut self.io, &self.ubuf[..n]).await.is_err() {
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
    async fn tunnel(&mut self, s: Sending, set_cookie: Option<&HeaderValue>) -> Next {
        let Sending { mut us, up, open, .. } = s;
        // Read from the request head before the buffer moves on.
        let ws = self
            .head
            .value(&self.buf, "upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
        let skip = |name: &[u8]| is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"upgrade");
        self.client_head(skip, set_cookie, Ending::Upgrade);
        let after_head = self.rhead.len;
        self.resp.extend_from_slice(&self.ubuf[after_head..]);
        if self.io.write_all(&self.resp).await.is_err() {
            return Next::Close;
        }
        // Bytes the client sent after its request head belong to the new protocol.
        self.buf.advance(self.consumed);
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
}
