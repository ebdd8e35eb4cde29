//! The request body sent to an upstream through hyper, with its bytes counted.
//!
//! It is streamed from an HTTP/2 client, or read whole by the HTTP/1 bridge to h2c.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::stats::Stats;

/// When a streamed body ended: the instance's latency counts from there, not the client's pace.
pub type Ended = Arc<std::sync::OnceLock<std::time::Instant>>;

/// A client's request body on its way to an upstream; counts bytes in.
pub struct ReqBody {
    inner: ReqInner,
    stats: Option<Arc<Stats>>,
    ended: Option<Ended>,
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
            ended: None,
        }
    }

    pub fn full(bytes: Bytes) -> ReqBody {
        ReqBody {
            inner: ReqInner::Full((!bytes.is_empty()).then_some(bytes)),
            stats: None,
            ended: None,
        }
    }

    /// Notes in the returned cell when the body has been read to its end
    /// (`None` for a body that is already over).
    pub fn track_end(&mut self) -> Option<Ended> {
        if self.is_end_stream() {
            return None;
        }
        let ended = Ended::default();
        self.ended = Some(ended.clone());
        Some(ended)
    }

    /// Counts the bytes against `stats` (the instance that finally gets the request).
    pub fn count_into(&mut self, stats: Arc<Stats>) {
        self.stats = Some(stats);
    }
}

impl ReqBody {
    fn inner_ended(&self) -> bool {
        match &self.inner {
            ReqInner::Incoming(i) => i.is_end_stream(),
            ReqInner::Full(b) => b.is_none(),
        }
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
        if let Some(ended) = &this.ended
            && (matches!(polled, Poll::Ready(None)) || this.inner_ended())
        {
            let _ = ended.set(std::time::Instant::now());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ReqInner::Incoming(i) => i.size_hint(),
            ReqInner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
