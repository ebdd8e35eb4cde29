//! Every HTTP/1 head the router writes: header lines, response heads, and its own replies.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::HeaderValue;
use tokio::io::AsyncWrite;

use crate::reply::Reply;

/// Appends one header line.
#[inline(always)]
pub(crate) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `x-forwarded-for` (the list so far, if any, plus `peer`) and
/// `x-forwarded-proto`; written in few pieces, as it goes out on every request.
#[inline(always)]
pub(crate) fn forwarded(out: &mut Vec<u8>, prev: Option<&[u8]>, peer: &[u8], https: bool) {
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(p) = prev {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer);
    out.extend_from_slice(if https {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
}

/// Ends a head: the blank line.
#[inline(always)]
pub(crate) fn end_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// Appends an `HTTP/1.1` request line.
#[inline(always)]
pub(crate) fn request_line(out: &mut Vec<u8>, method: &[u8], target: &[u8]) {
    out.extend_from_slice(method);
    out.push(b' ');
    // A target like `http://h?q` becomes `?q` in origin form; it needs its `/`.
    if target.first() == Some(&b'?') {
        out.push(b'/');
    }
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// How a response head to the client ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// Nothing more: an HTTP/1.1 connection that stays open.
    Plain,
    /// `connection: keep-alive`, for an HTTP/1.0 client.
    KeepAlive,
    Close,
    Upgrade,
    /// `transfer-encoding: chunked`: the body is framed by the router.
    Chunked,
}

/// A response head for the client, written into a reused buffer: status
/// line, then headers, then [`finish`](Self::finish).
pub(super) struct ResponseHead<'a>(&'a mut Vec<u8>);

impl<'a> ResponseHead<'a> {
    #[inline(always)]
    pub(super) fn start(out: &'a mut Vec<u8>, status: u16, reason: &[u8]) -> ResponseHead<'a> {
        out.clear();
        out.reserve(2048);
        let _ = write!(out, "HTTP/1.1 {status} ");
        out.extend_from_slice(reason);
        out.extend_from_slice(b"\r\n");
        ResponseHead(out)
    }

    #[inline(always)]
    pub(crate) fn header(&mut self, name: &[u8], value: &[u8]) {
        header(self.0, name, value);
    }

    /// Adds the session cookie (if any) and `ending`, and closes the head.
    #[inline(always)]
    pub(super) fn finish(self, set_cookie: Option<&HeaderValue>, ending: Ending) {
        if let Some(c) = set_cookie {
            header(self.0, b"set-cookie", c.as_bytes());
        }
        self.0.extend_from_slice(match ending {
            Ending::Plain => b"\r\n",
            Ending::KeepAlive => b"connection: keep-alive\r\n\r\n",
            Ending::Close => b"connection: close\r\n\r\n",
            Ending::Upgrade => b"connection: upgrade\r\n\r\n",
            Ending::Chunked => b"transfer-encoding: chunked\r\n\r\n",
        });
    }
}

/// A router-made reply as a whole HTTP/1.1 response; `close` adds `Connection: close`.
pub(super) fn reply(out: &mut Vec<u8>, reply: &Reply, close: bool) {
    let status = reply.status();
    let reason = status.canonical_reason().unwrap_or("");
    let mut head = ResponseHead::start(out, status.as_u16(), reason.as_bytes());
    head.header(b"content-type", b"application/json");
    head.header(b"cache-control", b"no-store");
    head.header(b"x-slipway-error", reply.code.as_str().as_bytes());
    head.header(b"content-length", reply.body.len().to_string().as_bytes());
    head.finish(None, if close { Ending::Close } else { Ending::Plain });
    out.extend_from_slice(reply.body.as_bytes());
}

/// Writes all of `buf` to `io`, like tokio's `write_all`, but inlined where
/// it is awaited: the forwarding path writes twice per request.
#[inline(always)]
pub(crate) fn all<'a, S: AsyncWrite + Unpin>(io: &'a mut S, buf: &'a [u8]) -> WriteAll<'a, S> {
    WriteAll { io, buf }
}

/// The future of [`all`].
pub(crate) struct WriteAll<'a, S> {
    io: &'a mut S,
    buf: &'a [u8],
}

impl<S: AsyncWrite + Unpin> Future for WriteAll<'_, S> {
    type Output = std::io::Result<()>;

    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        while !me.buf.is_empty() {
            let n = ready!(Pin::new(&mut *me.io).poll_write(cx, me.buf))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            me.buf = &me.buf[n..];
        }
        Poll::Ready(Ok(()))
    }
}

/// The size line of one chunk of a body the router frames.
pub(crate) fn chunk_size(out: &mut Vec<u8>, len: usize) {
    out.clear();
    let _ = write!(out, "{len:x}\r\n");
}

/// The end of a body the router frames.
pub(super) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// The end of one chunk's data.
pub(crate) const CHUNK_END: &[u8] = b"\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::ErrorCode;

    #[test]
    fn replies_serialize_as_http1() {
        let mut out = Vec::new();
        reply(&mut out, &Reply::new(ErrorCode::UpstreamFailed, "it broke"), true);
        let text = String::from_utf8(out).unwrap();
        let body = r#"{"error":"upstream_failed","reason":"it broke"}"#;
        let want = format!(
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
             x-slipway-error: upstream_failed\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(text, want);
    }

    #[test]
    fn response_heads_end_as_asked() {
        let mut out = Vec::new();
        let cookie = HeaderValue::from_static("s=v1.x; Path=/");
        let mut h = ResponseHead::start(&mut out, 101, b"Switching Protocols");
        h.header(b"upgrade", b"websocket");
        h.finish(Some(&cookie), Ending::Upgrade);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
              set-cookie: s=v1.x; Path=/\r\nconnection: upgrade\r\n\r\n"
        );
        ResponseHead::start(&mut out, 200, b"OK").finish(None, Ending::Plain);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\n\r\n");
    }
}
