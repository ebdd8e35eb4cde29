//! What goes back to an HTTP/2 client: router-made replies, and data within the stream's flow-control window.

use bytes::Bytes;
use h2::SendStream;
use h2::server::SendResponse;
use http::Response;
use http::header::{self, HeaderValue};

use crate::reply::Reply;

/// Sends `data` once the stream has any window for it (`h2` buffers the rest, one chunk at most: the
/// next call waits until it went out); `Err` if the client reset the stream or the connection broke.
pub(super) async fn data(tx: &mut SendStream<Bytes>, data: Bytes, end: bool) -> Result<(), ()> {
    if !data.is_empty() {
        tx.reserve_capacity(data.len());
        while tx.capacity() == 0 {
            match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                _ => return Err(()),
            }
        }
    }
    tx.send_data(data, end).map_err(drop)
}

/// Resolves when the client resets the stream (or the connection breaks), before the response head
/// went out (after, `SendResponse::poll_reset` fails at once: use [`stream_reset`]).
pub(super) async fn reset(respond: &mut SendResponse<Bytes>) {
    let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
}

/// Resolves when the client resets the stream (or the connection breaks) while its body goes out.
pub(super) async fn stream_reset(tx: &mut SendStream<Bytes>) {
    let _ = std::future::poll_fn(|cx| tx.poll_reset(cx)).await;
}

/// Answers with a router-made reply (JSON body, `x-slipway-error`), plus `set_cookie` if routed.
pub(super) fn reply(respond: &mut SendResponse<Bytes>, reply: &Reply, set_cookie: Option<&HeaderValue>) {
    let mut resp = Response::new(());
    *resp.status_mut() = reply.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-slipway-error", HeaderValue::from_static(reply.code.as_str()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = set_cookie {
        h.append(header::SET_COOKIE, c.clone());
    }
    // Small: it fits any window the client may have opened, and `h2` holds it until then.
    if let Ok(mut tx) = respond.send_response(resp, false) {
        let _ = tx.send_data(Bytes::from(reply.body.clone()), true);
    }
}
