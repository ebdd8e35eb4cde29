//! One HTTP/2 stream: routed, then forwarded to an HTTP/1.1 upstream connection with the HTTP/1 path's parts.
//!
//! The request head is written in place (`h1::write`), the response head parsed with httparse
//! (`h1::head`) and a chunked response decoded with `h1::chunked` into DATA frames; the upstream
//! connection comes from and goes back to the same raw pool as the HTTP/1 path's. A request body
//! without Content-Length goes out chunked (its trailers too); response trailers of an HTTP/1
//! upstream are dropped (an h2c upstream's pass, see `h2c`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use tokio::io::AsyncReadExt;
use wire::UpstreamProtocol;

use super::{h2c, send};
use crate::affinity::find_cookie;
use crate::conn::ConnCtx;
use crate::h1::chunked::ChunkScanner;
use crate::h1::head::{self, Framing, Head};
use crate::h1::write;
use crate::reply::{ErrorCode, Reply};
use crate::route::{RequestFacts, Routed, decide};
use crate::send::strip_hop_by_hop;
use crate::shared::Shared;
use crate::stats::micros_since;
use crate::table::RequestView;
use crate::upstream::{Inflight, RawConn, Upstream};

const MAX_HEAD: usize = 64 * 1024;

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

/// Routes one stream (one table generation for all of it) and forwards it; every failure is answered.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    conn: &Arc<ConnCtx>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let cfg = &shared.config;
    let h = &parts.headers;
    let view = View {
        headers: h,
        uri: &parts.uri,
        ip: conn.peer.ip(),
    };
    let facts = RequestFacts {
        client_version: h.get(&cfg.version_header).map(|v| v.as_bytes()),
        cookie: find_cookie(h, &cfg.cookie_name),
        key: cfg.key_header.as_ref().and_then(|k| h.get(k)).map(|v| v.as_bytes()),
    };
    let routed = match decide(shared, conn, &view, &facts) {
        Ok(r) => r,
        Err(reply) => {
            shared.unrouted.answered(reply.status().as_u16(), micros_since(started));
            return send::reply(&mut respond, &reply, None);
        }
    };
    if routed.upstream.protocol == UpstreamProtocol::H2c {
        // Boxed: hyper's client futures are large, and most streams never go this way.
        return Box::pin(h2c::forward(routed, conn, parts, body, respond, started)).await;
    }
    if parts.method == Method::CONNECT {
        let reply = Reply::new(ErrorCode::BadRequest, "CONNECT is not proxied");
        routed
            .upstream
            .stats
            .answered(reply.status().as_u16(), micros_since(started));
        return send::reply(&mut respond, &reply, routed.set_cookie.as_ref());
    }
    let mut s = Stream {
        routed: &routed,
        conn,
        respond,
        started,
        ubuf: BytesMut::new(),
    };
    s.forward(&parts, body).await;
}

/// How the request body goes to the upstream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    /// The client's Content-Length, passed on as it is (`h2` checks the DATA against it).
    Length,
    /// No length known: chunked.
    Chunked,
}

/// Writes the HTTP/1.1 request head for the upstream into `out`: hop-by-hop headers out, the
/// `Cookie` headers of HTTP/2 joined into one (RFC 9113 §8.2.3), `Host` from `:authority`,
/// `x-forwarded-for`/`-proto` as the HTTP/1 path writes them.
fn request_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    up: &Upstream,
    conn: &ConnCtx,
    body: bool,
) -> ReqFraming {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    write::request_line(out, parts.method.as_str().as_bytes(), path.as_bytes());
    let mut has_host = false;
    let mut has_length = false;
    let mut xff: Option<Vec<u8>> = None;
    let mut cookies = 0;
    for (name, value) in &parts.headers {
        let v = value.as_bytes();
        if name == header::COOKIE {
            if cookies == 0 {
                out.extend_from_slice(b"cookie: ");
            } else {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v);
            cookies += 1;
            continue;
        }
        if cookies > 0 && cookies != usize::MAX {
            out.extend_from_slice(b"\r\n");
            cookies = usize::MAX;
        }
        if name == header::HOST {
            has_host = true;
        } else if name == header::CONTENT_LENGTH {
            has_length = true;
        } else if name == XFF {
            match &mut xff {
                Some(x) => {
                    x.extend_from_slice(b", ");
                    x.extend_from_slice(v);
                }
                None => xff = Some(v.to_vec()),
            }
            continue;
        } else if name == XFP
            || name == header::TE
            || name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::TRAILER
            || name == header::EXPECT
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
        {
            continue;
        }
        write::header(out, name.as_str().as_bytes(), v);
    }
    if cookies > 0 && cookies != usize::MAX {
        out.extend_from_slice(b"\r\n");
    }
    if !has_host {
        match parts.uri.authority() {
            Some(a) => write::header(out, b"host", a.as_str().as_bytes()),
            None => write::header(out, b"host", up.addr.to_string().as_bytes()),
        }
    }
    let framing = match (body, has_length) {
        (false, _) => ReqFraming::None,
        (true, true) => ReqFraming::Length,
        (true, false) => {
            write::header(out, b"transfer-encoding", b"chunked");
            ReqFraming::Chunked
        }
    };
    write::forwarded(out, xff.as_deref(), conn.forwarded_for.as_bytes(), conn.listener.tls);
    write::end_head(out);
    framing
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Why an exchange with the upstream failed.
enum Fail {
    /// Answer with this code; the reason names the upstream.
    Up(ErrorCode, String),
    /// The client reset the stream or broke its body off: nothing to answer.
    Client,
}

/// Why sending the request head failed.
enum HeadFail {
    /// Nothing reached the upstream (or a reused connection died without answering an idempotent request).
    Retry(String),
    Failed(Fail),
}

/// One stream on its way to an HTTP/1.1 upstream.
struct Stream<'a> {
    routed: &'a Routed,
    conn: &'a ConnCtx,
    respond: SendResponse<Bytes>,
    started: Instant,
    /// What the upstream sent that was not relayed yet.
    ubuf: BytesMut,
}

impl Stream<'_> {
    async fn forward(&mut self, parts: &http::request::Parts, mut body: RecvStream) {
        let whole = body.is_end_stream();
        let mut out = Vec::with_capacity(1024);
        let framing = request_head(&mut out, parts, &self.routed.upstream, self.conn, !whole);
        let (mut us, up, open) = match self.send_request(&out, whole, is_idempotent(&parts.method)).await {
            Ok(x) => x,
            Err((up, f)) => return self.failed(&up, f, self.started),
        };
        let mut sent = self.started;
        let mut complete = whole;
        if !whole {
            if parts
                .headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
            {
                let mut go = Response::new(());
                *go.status_mut() = StatusCode::CONTINUE;
                let _ = self.respond.send_informational(go);
            }
            let length = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            match stream_body(&mut us, &mut body, (framing, length), &up, &mut out, &mut self.ubuf).await {
                Ok(done) => {
                    complete = done;
                    sent = Instant::now();
                }
                Err(f) => return self.failed(&up, f, sent),
            }
        }
        let mut rhead = Head::default();
        if let Err(f) = self.read_response_head(&mut us, &up, &mut rhead).await {
            return self.failed(&up, f, sent);
        }
        let status = rhead.status;
        up.stats.response(status, micros_since(sent));
        up.record_status(status, || self.routed.release().healthy_active() > 1);
        let Ok(rframing) = head::response_framing(&rhead, &self.ubuf, parts.method.as_str().as_bytes()) else {
            let why = format!("{} sent an invalid Content-Length", up.addr);
            return self.failed(&up, Fail::Up(ErrorCode::UpstreamFailed, why), sent);
        };
        let reusable = complete
            && rhead.minor == 1
            && rframing != Framing::Close
            && !rhead.has_token(&self.ubuf, "connection", "close");
        let head_bytes = self.ubuf.split_to(rhead.len).freeze();
        let Some(resp) = response(&rhead, &head_bytes, self.routed.set_cookie.as_ref()) else {
            let why = format!("{} sent status {status}", up.addr);
            return self.failed(&up, Fail::Up(ErrorCode::UpstreamFailed, why), sent);
        };
        drop(head_bytes);
        let end = rframing == Framing::None;
        let Ok(mut tx) = self.respond.send_response(resp, end) else {
            return;
        };
        let ok = end || self.relay_body(&mut us, rframing, &mut tx, &up).await;
        drop(open);
        if ok && reusable && self.ubuf.is_empty() {
            up.checkin_raw(us);
        }
        if ok && !body.is_end_stream() {
            finish_request(&mut body, &mut tx).await;
        }
    }

    /// Answers a failed exchange (the client's own failures get nothing: its stream is gone).
    fn failed(&mut self, up: &Upstream, f: Fail, started: Instant) {
        if let Fail::Up(code, why) = f {
            let reply = up.failed(code, &why, started);
            send::reply(&mut self.respond, &reply, self.routed.set_cookie.as_ref());
        }
    }

    /// Sends the head (`out`) on a connection to the routed instance, or, where that is safe, once
    /// more on another one; the upstream that failed comes with the error.
    async fn send_request(
        &mut self,
        out: &[u8],
        whole: bool,
        idempotent: bool,
    ) -> Result<(RawConn, Arc<Upstream>, Inflight), (Arc<Upstream>, Fail)> {
        let release = self.routed.release();
        let mut up = self.routed.upstream.clone();
        let mut open = Inflight::start(up.clone());
        let mut fresh = false;
        loop {
            let (why, connect) = match up.checkout_raw(fresh).await {
                // Out of descriptors here is not the instance's failure.
                Err(e) => (e.to_string(), !e.is_local()),
                Ok((mut us, reused)) => match self.send_head(&mut us, out, &up, reused && whole, idempotent).await {
                    Ok(()) => return Ok((us, up, open)),
                    Err(HeadFail::Retry(why)) => (why, false),
                    Err(HeadFail::Failed(f)) => return Err((up, f)),
                },
            };
            // Nothing reached the upstream: safe to try again, once.
            if connect {
                up.record_failure(release.healthy_active() > 1);
            }
            if fresh {
                return Err((up, Fail::Up(ErrorCode::UpstreamUnreachable, why)));
            }
            fresh = true;
            tracing::debug!(%why, "retrying the request");
            if let Some(next) = release.pick_instance(self.routed.sticky(), Some(&up))
                && !Arc::ptr_eq(&next, &up)
            {
                up = next;
                open = Inflight::start(up.clone());
            }
        }
    }

    /// Writes the head. `retryable`: a pooled connection and the whole request, which may go
    /// elsewhere if the upstream had closed it (for an idempotent one, even after it went out).
    async fn send_head(
        &mut self,
        us: &mut RawConn,
        out: &[u8],
        up: &Upstream,
        retryable: bool,
        idempotent: bool,
    ) -> Result<(), HeadFail> {
        if let Err(e) = write::all(&mut us.s, out).await {
            let why = format!("{}: {e}", up.addr);
            return Err(if retryable {
                HeadFail::Retry(why)
            } else {
                HeadFail::Failed(Fail::Up(ErrorCode::UpstreamFailed, why))
            });
        }
        if retryable && idempotent {
            match self.fill(us, up).await {
                Ok(true) => {}
                Ok(false) => return Err(HeadFail::Retry(format!("{} closed a reused connection", up.addr))),
                Err(f) => return Err(HeadFail::Failed(f)),
            }
        }
        Ok(())
    }

    /// Reads more of the response within the response timeout; `Ok(false)` if the upstream closed
    /// without sending anything.
    async fn fill(&mut self, us: &mut RawConn, up: &Upstream) -> Result<bool, Fail> {
        let timeout = up.settings().response_timeout;
        if self.ubuf.capacity() - self.ubuf.len() < 4096 {
            self.ubuf.reserve(16 * 1024);
        }
        let failed = |why: String| Fail::Up(ErrorCode::UpstreamFailed, why);
        tokio::select! {
            biased;
            r = tokio::time::timeout(timeout, us.s.read_buf(&mut self.ubuf)) => match r {
                Ok(Ok(0) | Err(_)) if self.ubuf.is_empty() => Ok(false),
                Ok(Ok(0)) => Err(failed(format!("{} closed the connection mid-response", up.addr))),
                Ok(Err(e)) => Err(failed(format!("{}: {e}", up.addr))),
                Ok(Ok(_)) => Ok(true),
                Err(_) => Err(Fail::Up(
                    ErrorCode::UpstreamTimeout,
                    format!("{} sent no response within {timeout:?}", up.addr),
                )),
            },
            _ = send::reset(&mut self.respond) => Err(Fail::Client),
        }
    }

    /// Reads the final response head into `rhead`; interim 1xx responses are dropped.
    async fn read_response_head(&mut self, us: &mut RawConn, up: &Upstream, rhead: &mut Head) -> Result<(), Fail> {
        loop {
            if !self.ubuf.is_empty() {
                match rhead.parse_response(&self.ubuf) {
                    Ok(true) if rhead.status == 101 => {
                        let why = format!("{} switched protocols on an HTTP/2 request", up.addr);
                        return Err(Fail::Up(ErrorCode::UpstreamFailed, why));
                    }
                    Ok(true) if (100..200).contains(&rhead.status) => {
                        self.ubuf.advance(rhead.len);
                        continue;
                    }
                    Ok(true) => return Ok(()),
                    Ok(false) if self.ubuf.len() >= MAX_HEAD => {
                        return Err(Fail::Up(ErrorCode::UpstreamFailed, "response head over 64 KiB".into()));
                    }
                    Ok(false) => {}
                    Err(_) => {
                        let why = format!("{} sent a malformed response", up.addr);
                        return Err(Fail::Up(ErrorCode::UpstreamFailed, why));
                    }
                }
            }
            if !self.fill(us, up).await? {
                let why = format!("{} closed the connection without a response", up.addr);
                return Err(Fail::Up(ErrorCode::UpstreamFailed, why));
            }
        }
    }

    /// Relays the response body as DATA frames (a chunked one decoded); false if it broke off.
    async fn relay_body(
        &mut self,
        us: &mut RawConn,
        framing: Framing,
        tx: &mut h2::SendStream<Bytes>,
        up: &Upstream,
    ) -> bool {
        let mut length_left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut scanner = ChunkScanner::default();
        let mut ranges = Vec::new();
        loop {
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
                    match scanner.scan(&self.ubuf, Some(&mut ranges)) {
                        Ok(n) => (n, scanner.is_done()),
                        Err(_) => {
                            tx.send_reset(h2::Reason::INTERNAL_ERROR);
                            return false;
                        }
                    }
                }
                Framing::Close => (avail, false),
            };
            up.stats.bytes_out(n as u64);
            let piece = self.ubuf.split_to(n).freeze();
            let sent = match framing {
                Framing::Chunked => send_ranges(tx, &piece, &ranges, finished).await,
                _ if n > 0 || finished => send::data(tx, piece, finished).await,
                _ => Ok(()),
            };
            if sent.is_err() {
                return false;
            }
            if finished {
                return true;
            }
            if self.ubuf.capacity() - self.ubuf.len() < 4096 {
                self.ubuf.reserve(32 * 1024);
            }
            let read = tokio::select! {
                biased;
                r = tokio::time::timeout(up.settings().response_timeout, us.s.read_buf(&mut self.ubuf)) => r,
                _ = send::stream_reset(tx) => return false,
            };
            match read {
                Ok(Ok(0)) if framing == Framing::Close => return tx.send_data(Bytes::new(), true).is_ok(),
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    tx.send_reset(h2::Reason::INTERNAL_ERROR);
                    return false;
                }
            }
        }
    }
}

/// After a whole response, the rest of the request (usually just its END_STREAM, on its way): read
/// and dropped for up to a second, else the client is told to stop sending (RST_STREAM NO_ERROR,
/// RFC 9113 §8.1). Dropping the stream half-open would reset it with CANCEL, which a client may
/// take for a failed response.
async fn finish_request(body: &mut RecvStream, tx: &mut h2::SendStream<Bytes>) {
    let drain = async {
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(1), drain)
        .await
        .is_err()
        || !body.is_end_stream()
    {
        tx.send_reset(h2::Reason::NO_ERROR);
    }
}

/// Sends the chunk data of `piece` (its `ranges`), ending the stream if `finished`.
async fn send_ranges(
    tx: &mut h2::SendStream<Bytes>,
    piece: &Bytes,
    ranges: &[std::ops::Range<usize>],
    finished: bool,
) -> Result<(), ()> {
    let data: Vec<_> = ranges.iter().filter(|r| !r.is_empty()).collect();
    for (i, r) in data.iter().enumerate() {
        send::data(tx, piece.slice((*r).clone()), finished && i + 1 == data.len()).await?;
    }
    if finished && data.is_empty() {
        return tx.send_data(Bytes::new(), true).map_err(drop);
    }
    Ok(())
}

/// Streams the client's request body to the upstream (`length`: its Content-Length, after which it
/// is complete whether or not END_STREAM came yet); `Ok(false)` if the upstream began to answer
/// first (the rest is not sent, the connection not reused).
async fn stream_body(
    us: &mut RawConn,
    body: &mut RecvStream,
    (framing, mut length): (ReqFraming, Option<u64>),
    up: &Upstream,
    out: &mut Vec<u8>,
    ubuf: &mut BytesMut,
) -> Result<bool, Fail> {
    let up_failed = |e: std::io::Error| Fail::Up(ErrorCode::UpstreamFailed, format!("{}: {e}", up.addr));
    loop {
        let data = tokio::select! {
            biased;
            _ = us.s.readable() => {
                // Readiness can be left over from the connection's last response: read to be sure.
                ubuf.reserve(4096);
                match us.s.try_read_buf(ubuf) {
                    Ok(n) if n > 0 => return Ok(false),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Ok(_) => {
                        let why = format!("{} closed the connection", up.addr);
                        return Err(Fail::Up(ErrorCode::UpstreamFailed, why));
                    }
                    Err(e) => return Err(up_failed(e)),
                }
            }
            d = body.data() => d,
        };
        let data = match data {
            Some(Ok(d)) => d,
            Some(Err(_)) => return Err(Fail::Client),
            None => break,
        };
        let n = data.len();
        up.stats.bytes_in(n as u64);
        if framing == ReqFraming::Chunked {
            if n == 0 {
                continue;
            }
            write::chunk_size(out, n);
            out.extend_from_slice(&data);
            out.extend_from_slice(write::CHUNK_END);
            write::all(&mut us.s, out).await.map_err(up_failed)?;
        } else {
            write::all(&mut us.s, &data).await.map_err(up_failed)?;
        }
        let _ = body.flow_control().release_capacity(n);
        if let Some(left) = length.as_mut() {
            *left = left.saturating_sub(n as u64);
            if *left == 0 {
                return Ok(true);
            }
        }
    }
    if framing == ReqFraming::Chunked {
        let trailers = body.trailers().await.map_err(|_| Fail::Client)?;
        out.clear();
        out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers.iter().flatten() {
            write::header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        write::end_head(out);
        write::all(&mut us.s, out).await.map_err(up_failed)?;
    }
    Ok(true)
}

/// The client's response from the upstream's head (`head` holds its bytes): hop-by-hop headers out,
/// the routing `Set-Cookie` in; `None` for a status HTTP/2 cannot carry.
fn response(rhead: &Head, head: &Bytes, set_cookie: Option<&HeaderValue>) -> Option<Response<()>> {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(rhead.status).ok()?;
    let h = resp.headers_mut();
    h.reserve(rhead.headers.len() + 1);
    for (n, v) in &rhead.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[n.clone()]),
            HeaderValue::from_maybe_shared(head.slice(v.clone())),
        ) else {
            continue;
        };
        h.append(name, value);
    }
    strip_hop_by_hop(h);
    if let Some(c) = set_cookie {
        h.append(header::SET_COOKIE, c.clone());
    }
    Some(resp)
}
