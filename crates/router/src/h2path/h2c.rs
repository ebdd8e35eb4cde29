//! An HTTP/2 stream forwarded to an h2c upstream through hyper's client, body and trailers streamed both ways.

use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use http::header;
use http_body_util::BodyExt;

use super::send;
use crate::body::ReqBody;
use crate::conn::ConnCtx;
use crate::reply::{ErrorCode, Reply};
use crate::route::Routed;
use crate::send::{send_with_retry, strip_hop_by_hop, upstream_request};
use crate::stats::micros_since;

/// Sends one stream to the routed h2c instance (retried once where nothing got out) and relays the answer.
pub(super) async fn forward(
    routed: Routed,
    conn: &ConnCtx,
    parts: http::request::Parts,
    body: h2::RecvStream,
    mut respond: SendResponse<Bytes>,
    started: Instant,
) {
    let release = routed.release();
    let cookie = routed.set_cookie.as_ref();
    let mut body = ReqBody::h2(body);
    let ended = body.track_end();
    let up_req = match upstream_request(parts, body, &routed.upstream, conn) {
        Ok(r) => r,
        Err(reason) => {
            let reply = Reply::new(ErrorCode::BadRequest, reason);
            routed
                .upstream
                .stats
                .answered(reply.status().as_u16(), micros_since(started));
            return send::reply(&mut respond, &reply, cookie);
        }
    };
    let sending = send_with_retry(release, routed.upstream.clone(), up_req, routed.sticky());
    let (mut inflight, result) = tokio::select! {
        r = sending => r,
        // The client gave up: so does the request.
        _ = send::reset(&mut respond) => return,
    };
    let up = inflight.upstream().clone();
    let resp = match result {
        Ok((resp, pooled)) => {
            inflight.set_conn(pooled);
            resp
        }
        Err((code, why)) => return send::reply(&mut respond, &up.failed(code, &why, started), cookie),
    };
    let status = resp.status().as_u16();
    up.record_status(status, || release.healthy_active() > 1);
    // The instance's latency counts from the body's end, never the client's pace.
    let from = ended.as_ref().and_then(|e| e.get().copied()).unwrap_or(started);
    up.stats.response(status, micros_since(from));
    let (mut head, mut incoming) = resp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    if let Some(c) = cookie {
        head.headers.append(header::SET_COOKIE, c.clone());
    }
    let end = hyper::body::Body::is_end_stream(&incoming);
    let Ok(mut tx) = respond.send_response(http::Response::from_parts(head, ()), end) else {
        return;
    };
    if end {
        return inflight.finish();
    }
    let mut trailers = false;
    while let Some(frame) = incoming.frame().await {
        let Ok(frame) = frame else {
            // Broken off upstream: the client must not take it for a whole body.
            tx.send_reset(h2::Reason::INTERNAL_ERROR);
            return;
        };
        match frame.into_data() {
            Ok(data) => {
                up.stats.bytes_out(data.len() as u64);
                if send::data(&mut tx, data, false).await.is_err() {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = tx.send_trailers(t).is_ok();
                    break;
                }
            }
        }
    }
    if trailers || tx.send_data(Bytes::new(), true).is_ok() {
        inflight.finish();
    }
}
