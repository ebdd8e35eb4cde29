//! Reading from the client: request heads with their timeouts, and request bodies.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::chunked::{ChunkError, ChunkScanner};
use super::head::{Framing, HeadError};
use super::{Conn, MAX_HEAD};
use crate::config::ClientSettings;
use crate::conn::stopped;
use crate::reply::{ErrorCode, Reply};
use crate::slots::{Phase, Slot};

/// Request bodies up to this size are read and dropped after a refusal so the
/// connection can stay open; larger ones close it.
const DISCARD_LIMIT: u64 = 64 * 1024;
/// Largest request body buffered for an h2c upstream.
const WHOLE_BODY_LIMIT: u64 = 16 << 20;
/// When the router leaves, how long an idle keep-alive connection is kept
/// for a request that may already be on its way (answered with
/// `Connection: close`) before it is closed. Closing at once would race
/// with such a request, which the client would see as a failure.
const LEAVE_LINGER: Duration = Duration::from_secs(2);
/// An idle keep-alive connection gives its buffers back after this long, so
/// it holds a few hundred bytes rather than kilobytes while it waits.
const IDLE_RELEASE: Duration = Duration::from_millis(500);

/// When a request body's next bytes are due: within `head_timeout` of the
/// last read and, with a minimum rate, no later than
/// `start + grace + received / rate` (a pure core: time is a parameter).
#[derive(Debug, Clone)]
pub(super) struct BodyPace {
    start: tokio::time::Instant,
    received: u64,
    rate: u64,
    grace: Duration,
    per_read: Duration,
}

impl BodyPace {
    pub(super) fn new(c: &ClientSettings, start: tokio::time::Instant) -> BodyPace {
        BodyPace {
            start,
            received: 0,
            rate: c.body_min_rate,
            grace: c.body_grace,
            per_read: c.head_timeout,
        }
    }

    pub(super) fn got(&mut self, n: usize) {
        self.received += n as u64;
    }

    /// The deadline of the next read, given the time now.
    pub(super) fn deadline(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        let per_read = now + self.per_read;
        if self.rate == 0 {
            return per_read;
        }
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / self.rate);
        per_read.min(self.start + self.grace + earned)
    }

    /// Reads more into `buf` by the deadline: `Ok(n)` bytes (0 at EOF), `Err`
    /// on a stall or when `slot` is closed for room (a slow body is the client's).
    pub(super) async fn read<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        buf: &mut BytesMut,
        slot: &Slot,
    ) -> Result<usize, ()> {
        let at = self.deadline(tokio::time::Instant::now());
        slot.set(Phase::Body);
        tokio::select! {
            r = tokio::time::timeout_at(at, io.read_buf(buf)) => match r {
                Ok(Ok(n)) => {
                    self.got(n);
                    Ok(n)
                }
                Ok(Err(_)) => Ok(0),
                Err(_) => Err(()),
            },
            _ = slot.evicted() => Err(()),
        }
    }
}

/// The reply for a body that stalled (`stalled`) or ended early.
pub(super) fn body_cut(stalled: bool) -> Reply {
    if stalled {
        Reply::new(ErrorCode::BodyTimeout, "the request body came too slowly")
    } else {
        Reply::new(ErrorCode::BodyIncomplete, "the client stopped sending the request body")
    }
}

/// How a request body is being consumed.
#[derive(Debug)]
pub(super) enum BodyState {
    Length(u64),
    Chunked(ChunkScanner),
    Done,
}

impl BodyState {
    pub(super) fn new(f: Framing) -> BodyState {
        match f {
            Framing::Length(n) if n > 0 => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkScanner::default()),
            _ => BodyState::Done,
        }
    }

    /// How many bytes of `input` belong to the body.
    pub(super) fn take(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
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

    /// Like [`take`](Self::take), appending the body's payload (chunked
    /// framing removed) to `payload`.
    fn take_payload(
        &mut self,
        input: &[u8],
        ranges: &mut Vec<std::ops::Range<usize>>,
        payload: &mut BytesMut,
    ) -> Result<usize, ChunkError> {
        let BodyState::Chunked(sc) = self else {
            let n = self.take(input)?;
            payload.extend_from_slice(&input[..n]);
            return Ok(n);
        };
        ranges.clear();
        let n = sc.scan(input, Some(ranges))?;
        for r in ranges.iter() {
            payload.extend_from_slice(&input[r.clone()]);
        }
        if sc.is_done() {
            *self = BodyState::Done;
        }
        Ok(n)
    }

    pub(super) fn done(&self) -> bool {
        matches!(self, BodyState::Done)
    }
}

/// How reading a whole request body ended, if not with the body.
pub(super) enum WholeBody {
    /// Refused, or stalled (408).
    Refused(Reply),
    /// The client went away: close without an answer.
    Gone,
}

impl<S> Conn<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Reads until a full request head is in `buf`. `None`: close quietly.
    pub(super) async fn read_head(&mut self) -> Result<Option<()>, Reply> {
        let mut lingering = false;
        // The whole head has one deadline, from its first byte: never restarted by a read.
        let mut head_deadline = false;
        // The buffers went back to the allocator while idle.
        let mut released = false;
        let client = &self.shared.config.client;
        loop {
            if !self.buf.is_empty() {
                match self.head.parse_request(&self.buf) {
                    Ok(true) => {
                        self.ctx.slot.set(Phase::Busy);
                        return Ok(Some(()));
                    }
                    Ok(false) if self.buf.len() >= MAX_HEAD => {
                        return Err(Reply::new(ErrorCode::HeadTooLarge, "request head over 64 KiB"));
                    }
                    Ok(false) => {}
                    Err(HeadError::TooManyHeaders) => {
                        return Err(Reply::new(ErrorCode::TooManyHeaders, "more than 128 request headers"));
                    }
                    Err(HeadError::Malformed) => {
                        return Err(Reply::new(ErrorCode::BadRequest, "malformed request head"));
                    }
                }
            }
            let idle = self.buf.is_empty();
            self.ctx.slot.set(if idle { Phase::Idle } else { Phase::Head });
            if idle && self.stopping() && !lingering {
                lingering = true;
                self.sleep.as_mut().reset(tokio::time::Instant::now() + LEAVE_LINGER);
            } else if idle && !lingering && !released {
                // First a short wait with the buffers; then they go (see below).
                let first = IDLE_RELEASE.min(client.idle_timeout);
                self.sleep.as_mut().reset(tokio::time::Instant::now() + first);
            } else if !idle && !head_deadline {
                head_deadline = true;
                self.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + client.head_timeout);
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                // A released idle connection waits with a few bytes only.
                self.buf.reserve(if released && idle { 64 } else { 8192 });
            }
            tokio::select! {
                biased;
                r = self.io.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                },
                _ = self.sleep.as_mut() => {
                    if idle && !released && !lingering && IDLE_RELEASE < client.idle_timeout {
                        // Idle for a while: give the buffers back and wait out the rest.
                        self.release_buffers();
                        released = true;
                        let rest = client.idle_timeout - IDLE_RELEASE;
                        self.sleep.as_mut().reset(tokio::time::Instant::now() + rest);
                        continue;
                    }
                    if idle {
                        return Ok(None);
                    }
                    return Err(Reply::new(ErrorCode::HeadTimeout, "request head not received in time"));
                }
                // Closed for room under `max_connections`.
                _ = self.ctx.slot.evicted() => return Ok(None),
                _ = stopped(&mut self.stop), if idle && !lingering => {
                    lingering = true;
                    self.sleep.as_mut().reset(tokio::time::Instant::now() + LEAVE_LINGER);
                }
            }
        }
    }

    /// Frees every buffer of an idle connection (they grow again with its next request).
    fn release_buffers(&mut self) {
        self.buf = BytesMut::new();
        self.ubuf = BytesMut::new();
        self.out = Vec::new();
        self.resp = Vec::new();
        self.head.headers = Vec::new();
        self.rhead.headers = Vec::new();
    }

    /// Reads and drops a small request body so the connection can be reused.
    pub(super) async fn skip_body(&mut self, framing: Framing) -> bool {
        let mut body = BodyState::new(framing);
        if let Framing::Length(n) = framing
            && n > DISCARD_LIMIT
        {
            return false;
        }
        let mut consumed = self.head.len;
        let mut total = 0u64;
        let mut pace = BodyPace::new(&self.shared.config.client, tokio::time::Instant::now());
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
            match pace.read(&mut self.io, &mut self.buf, &self.ctx.slot).await {
                Ok(n) if n > 0 => {}
                _ => return false,
            }
        }
    }

    /// Reads the whole request body (up to 16 MiB), chunked framing removed;
    /// `consumed` is set past it.
    pub(super) async fn read_whole_body(&mut self, framing: Framing) -> Result<BytesMut, WholeBody> {
        let mut body = BodyState::new(framing);
        let mut collected = BytesMut::new();
        let mut consumed = self.head.len;
        let mut ranges = Vec::new();
        let mut pace = BodyPace::new(&self.shared.config.client, tokio::time::Instant::now());
        loop {
            let n = body
                .take_payload(&self.buf[consumed..], &mut ranges, &mut collected)
                .map_err(|_| WholeBody::Refused(Reply::new(ErrorCode::BadFraming, "malformed chunked body")))?;
            consumed += n;
            if body.done() {
                self.consumed = consumed;
                return Ok(collected);
            }
            if collected.len() as u64 > WHOLE_BODY_LIMIT {
                let why = "request bodies to an h2c release are limited to 16 MiB over HTTP/1";
                return Err(WholeBody::Refused(Reply::new(ErrorCode::BodyTooLarge, why)));
            }
            self.buf.reserve(16 * 1024);
            match pace.read(&mut self.io, &mut self.buf, &self.ctx.slot).await {
                Ok(n) if n > 0 => {}
                Ok(_) => return Err(WholeBody::Gone),
                Err(()) => return Err(WholeBody::Refused(body_cut(true))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_pace_allows_the_grace_then_the_rate_and_never_more_than_a_read_timeout() {
        let c = ClientSettings {
            body_min_rate: 1000,
            body_grace: Duration::from_secs(10),
            head_timeout: Duration::from_secs(30),
            ..ClientSettings::default()
        };
        let t0 = tokio::time::Instant::now();
        let mut p = BodyPace::new(&c, t0);
        assert_eq!(p.deadline(t0), t0 + Duration::from_secs(10));
        // 5000 bytes earned five more seconds.
        p.got(5000);
        assert_eq!(p.deadline(t0 + Duration::from_secs(9)), t0 + Duration::from_secs(15));
        // A fast body is still held to the per-read timeout.
        p.got(1_000_000);
        assert_eq!(p.deadline(t0 + Duration::from_secs(1)), t0 + Duration::from_secs(31));
        // One byte every 20 s: the deadline does not move with each byte.
        let mut slow = BodyPace::new(&c, t0);
        slow.got(1);
        assert_eq!(
            slow.deadline(t0 + Duration::from_secs(1)),
            t0 + Duration::from_millis(10_001)
        );
        // No rate: only the per-read timeout.
        let off = BodyPace::new(&ClientSettings { body_min_rate: 0, ..c }, t0);
        assert_eq!(off.deadline(t0), t0 + Duration::from_secs(30));
    }
}
