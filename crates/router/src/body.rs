//! Request and response bodies of proxied exchanges: byte counting, and handing the upstream connection back to the pool when a response ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::stats::Stats;
use crate::upstream::{PooledConn, Upstream};

/// A client's request body on its way to an upstream; counts bytes in.
pub struct ReqBody {
    inner: ReqInner,
    stats: Option<Arc<Stats>>,
}

enum ReqInner {
    /// Streamed from an HTTP/2 client.
    Incoming(Incoming),
    /// Read whole by the HTTP/1 path before going to an h2c upstream.
    Full(Option<Bytes>),
}

impl ReqBody {
    pub fn new(inner: Incoming) -> ReqBody {
        ReqBody {
            inner: ReqInner::Incoming(inner),
            stats: None,
        }
    }

    pub fn full(bytes: Bytes) -> ReqBody {
        ReqBody {
            inner: ReqInner::Full((!bytes.is_empty()).then_some(bytes)),
            stats: None,
        }
    }

    /// Counts the bytes against `stats` (the instance that finally gets the request).
    pub fn count_into(&mut self, stats: Arc<Stats>) {
        self.stats = Some(stats);
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            ReqInner::Incoming(i) => Pin::new(i).poll_frame(cx),
            ReqInner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(stats)) = (&polled, &this.stats)
            && let Some(data) = frame.data_ref()
        {
            stats.bytes_in(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ReqInner::Incoming(i) => i.is_end_stream(),
            ReqInner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ReqInner::Incoming(i) => i.size_hint(),
            ReqInner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Keeps an instance's in-flight count up while a request is open, and gives
/// its connection back to the pool if the response was read to the end.
pub struct Inflight {
    upstream: Arc<Upstream>,
    conn: Option<PooledConn>,
}

impl Inflight {
    /// Counts a request as started on `upstream`.
    pub fn start(upstream: Arc<Upstream>) -> Inflight {
        upstream.stats.request_started();
        Inflight { upstream, conn: None }
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub fn set_conn(&mut self, conn: PooledConn) {
        self.conn = Some(conn);
    }

    /// The response finished cleanly: the connection may serve another request.
    fn finish(mut self) {
        if let Some(conn) = self.conn.take() {
            self.upstream.checkin(conn);
        }
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.upstream.stats.request_done();
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
                            f.upstream.stats.bytes_out(data.len() as u64);
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
