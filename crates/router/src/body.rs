//! The request body sent to an upstream through hyper, with its bytes counted.
//!
//! It is streamed from an HTTP/2 client (the `h2` crate's stream, with its flow control), or read whole by the
//! HTTP/1 bridge to h2c.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

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
    /// Streamed from an HTTP/2 client of the `h2path` fast path; `true` once its data is over (trailers may follow).
    H2(h2::RecvStream, bool),
    /// Read whole by the HTTP/1 path before going to an h2c upstream.
    Full(Option<Bytes>),
}

impl ReqBody {
    /// A body streamed from an HTTP/2 stream; capacity is given back as its data is sent on.
    pub fn h2(inner: h2::RecvStream) -> ReqBody {
        ReqBody {
            inner: ReqInner::H2(inner, false),
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
            ReqInner::H2(rx, _) => rx.is_end_stream(),
            ReqInner::Full(b) => b.is_none(),
        }
    }
}

/// The next frame of an `h2` stream: data (its window released at once, as hyper does), then trailers.
fn poll_h2(
    rx: &mut h2::RecvStream,
    done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    if !*done {
        match std::task::ready!(rx.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = rx.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(BodyError::H2(e)))),
            None => *done = true,
        }
    }
    match std::task::ready!(rx.poll_trailers(cx)) {
        Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
        Ok(None) => Poll::Ready(None),
        Err(e) => Poll::Ready(Some(Err(BodyError::H2(e)))),
    }
}

/// Why reading a client's request body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("client stream: {0}")]
    H2(h2::Error),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            ReqInner::H2(rx, done) => poll_h2(rx, done, cx),
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
            ReqInner::H2(..) => SizeHint::default(),
            ReqInner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
