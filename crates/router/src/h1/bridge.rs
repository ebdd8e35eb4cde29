//! An HTTP/1 client to an h2c upstream: the body is read whole and the response comes back chunked.

use http::HeaderValue;
use http::response::Parts;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::forward::UpError;
use super::head::absolute_form;
use super::read::WholeBody;
use super::write::{self, Ending, ResponseHead};
use super::{Conn, Exchange, Next};
use crate::body::ReqBody;
use crate::reply::{ErrorCode, Reply};
use crate::route::Routed;
use crate::send::{send_with_retry, strip_hop_by_hop, upstream_request};
use crate::stats::micros_since;
use crate::upstream::Upstream;

impl<S> Conn<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// An HTTP/1 client and an h2c upstream: the request body is read whole
    /// (up to 16 MiB) and the request sent through hyper.
    pub(super) async fn bridge_h2c(&mut self, routed: Routed, ex: Exchange) -> Next {
        let body = match self.read_whole_body(ex.framing).await {
            Ok(b) => b,
            Err(WholeBody::Refused(r)) => return self.refuse(r, ex.started, false).await,
            Err(WholeBody::Gone) => return Next::Close,
        };
        // The instance's latency starts once the client has sent the whole body.
        let sent = std::time::Instant::now();
        self.ctx.slot.set(crate::slots::Phase::Busy);
        let req = match self.h2_request(ReqBody::full(body.freeze()), &routed.upstream) {
            Ok(r) => r,
            Err(why) => {
                return self
                    .refuse(Reply::new(ErrorCode::BadRequest, why), ex.started, false)
                    .await;
            }
        };
        let (inflight, result) = send_with_retry(routed.release(), routed.upstream.clone(), req, routed.sticky()).await;
        let up = inflight.upstream().clone();
        let resp = match result {
            Ok((resp, _)) => resp,
            Err((code, why)) => {
                return self.upstream_failed(&up, UpError { code, why }, sent, false).await;
            }
        };
        up.stats.response(resp.status().as_u16(), micros_since(sent));
        let keep = ex.keep_alive && !self.stopping() && self.head.minor == 1;
        let (parts, incoming) = resp.into_parts();
        self.bridged_head(parts, routed.set_cookie.as_ref(), keep);
        if self.io.write_all(&self.resp).await.is_err() || !self.relay_frames(incoming, &up, keep).await {
            return Next::Close;
        }
        drop(inflight);
        if !keep || self.io.write_all(write::LAST_CHUNK).await.is_err() {
            return Next::Close;
        }
        bytes::Buf::advance(&mut self.buf, self.consumed);
        Next::KeepAlive
    }

    /// The parsed request head as a request for the h2c upstream.
    fn h2_request(&self, body: ReqBody, up: &Upstream) -> Result<http::Request<ReqBody>, &'static str> {
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
            return Err("request head not valid for HTTP/2");
        };
        let (parts, ()) = req.into_parts();
        upstream_request(parts, body, up, self.ctx)
    }

    /// Writes the client's response head from the h2c upstream's into `resp`.
    fn bridged_head(&mut self, parts: Parts, set_cookie: Option<&HeaderValue>, keep: bool) {
        let reason = parts.status.canonical_reason().unwrap_or("");
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(http::header::CONTENT_LENGTH);
        let mut out = ResponseHead::start(&mut self.resp, parts.status.as_u16(), reason.as_bytes());
        for (k, v) in &headers {
            out.header(k.as_str().as_bytes(), v.as_bytes());
        }
        out.finish(set_cookie, if keep { Ending::Chunked } else { Ending::Close });
    }

    /// Relays the response body, chunked if `keep` (else until close);
    /// false if either side broke off.
    async fn relay_frames(&mut self, mut incoming: Incoming, up: &Upstream, keep: bool) -> bool {
        while let Some(frame) = incoming.frame().await {
            let Ok(frame) = frame else { return false };
            let Some(data) = frame.data_ref() else { continue };
            up.stats.bytes_out(data.len() as u64);
            let ok = if keep {
                write::chunk_size(&mut self.out, data.len());
                self.io.write_all(&self.out).await.is_ok()
                    && self.io.write_all(data).await.is_ok()
                    && self.io.write_all(write::CHUNK_END).await.is_ok()
            } else {
                self.io.write_all(data).await.is_ok()
            };
            if !ok {
                return false;
            }
        }
        true
    }
}
