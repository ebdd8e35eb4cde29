//! The HTTP/2 client path: the `h2` crate's server without hyper, every stream driven in the connection's task.
//!
//! Why not hyper here: hyper's HTTP/2 server plus its HTTP/1 client cost about
//! 2.5× the instructions per request of the HTTP/1 fast path (a service per
//! stream, a task per stream, a second state machine and task per upstream
//! connection). This path keeps the streams of one client connection in its
//! own task (a `FuturesUnordered`, so one wake-up serves every stream that is
//! ready and the frames go out in one write), and forwards each stream to an
//! HTTP/1.1 upstream connection driven in that same task with the HTTP/1 fast
//! path's head parser, chunk scanner and head writer (`stream`), or to an h2c
//! upstream through hyper's client (`h2c`).
//!
//! The `[client]` HTTP/2 limits apply as before: concurrent streams, header
//! list size, PINGs (the connection closes when one is not answered within
//! `h2_ping_timeout`), and the `h2` crate's own guards (rapid reset, pending
//! accepts, CONTINUATION floods, locally reset streams, send buffer).
//! GOAWAY (the `h2` crate's two-phase one: open streams finish) on `stop`,
//! when evicted, when no first request comes within `h2_handshake_timeout`,
//! or after `h2_idle_timeout` without an open stream.

mod h2c;
mod send;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ClientSettings;
use crate::conn::{ConnCtx, stopped};
use crate::shared::Shared;
use crate::slots::Phase;

/// hyper's HTTP/2 server defaults, which this path keeps.
const WINDOW: u32 = 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// What an HTTP/2 connection's timer decides, given its streams and the time (a pure core):
/// `None` while a stream is open, else how long until the connection is due to go.
fn h2_due(open: usize, last_ms: u64, opened_ms: u64, now_ms: u64, c: &ClientSettings) -> Option<u64> {
    if open > 0 {
        return None;
    }
    let due = if last_ms == u64::MAX {
        opened_ms + c.h2_handshake_timeout.as_millis() as u64
    } else {
        last_ms + c.h2_idle_timeout.as_millis() as u64
    };
    Some(due.saturating_sub(now_ms))
}

/// The keep-alive PING of one connection: when the next one goes, and whether one awaits its answer.
struct Keepalive {
    pp: Option<h2::PingPong>,
    next: Instant,
    waiting: bool,
}

impl Keepalive {
    /// Sends a PING when one is due; false if the last one was not answered in time.
    fn tick(&mut self, c: &ClientSettings) -> bool {
        let now = Instant::now();
        if now < self.next {
            return true;
        }
        if self.waiting {
            return false;
        }
        if let Some(pp) = self.pp.as_mut()
            && pp.send_ping(h2::Ping::opaque()).is_ok()
        {
            self.waiting = true;
        }
        self.next = now + c.h2_ping_timeout;
        true
    }

    async fn pong(&mut self) {
        match self.pp.as_mut() {
            Some(pp) if self.waiting => {
                let _ = std::future::poll_fn(|cx| pp.poll_pong(cx)).await;
            }
            _ => std::future::pending().await,
        }
    }
}

/// Why the accept loop stopped taking streams.
#[derive(PartialEq)]
enum Leave {
    /// The connection is closed or broken: nothing more to do.
    Closed,
    /// The router leaves: open streams finish within its leave deadline.
    Stopping,
    /// Evicted, idle or never used: open streams get one more idle timeout.
    Quiet,
}

/// Serves HTTP/2 on `io` (the client preface may be in a `Prefixed` stream) until it closes or goes away.
pub async fn serve<S>(shared: Arc<Shared>, conn: Arc<ConnCtx>, io: S, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let c = &shared.config.client;
    // The first request is due `h2_handshake_timeout` after the connection came, handshake included.
    let opened_ms = shared.clock.now_ms();
    let mut b = h2::server::Builder::new();
    b.initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_streams(c.h2_max_concurrent_streams)
        .max_header_list_size(c.h2_max_header_list_size);
    // A stop during the handshake does not drop the connection: its client may
    // have sent a request already. The handshake ends, then a graceful GOAWAY.
    let handshake = tokio::time::timeout(c.h2_handshake_timeout, b.handshake::<S, Bytes>(io));
    let mut h2 = tokio::select! {
        r = handshake => match r {
            Ok(Ok(h2)) => h2,
            _ => return,
        },
        _ = conn.slot.evicted() => return,
    };
    let mut keepalive = Keepalive {
        pp: h2.ping_pong(),
        next: Instant::now() + c.h2_ping_interval,
        waiting: false,
    };
    // Boxed: a stream's future is a few KB, and `FuturesUnordered::push` would move it three times.
    let mut streams = FuturesUnordered::new();
    let mut last_ms = u64::MAX;
    // One timer for the idle deadline and the next PING, moved only when that changes.
    let mut timer = Box::pin(tokio::time::sleep_until(keepalive.next));
    let mut timer_at = keepalive.next;
    let leave = loop {
        let due = h2_due(streams.len(), last_ms, opened_ms, shared.clock.now_ms(), c);
        let at = due.map_or(keepalive.next, |ms| {
            keepalive.next.min(Instant::now() + Duration::from_millis(ms))
        });
        if at != timer_at {
            timer.as_mut().reset(at);
            timer_at = at;
        }
        tokio::select! {
            r = h2.accept() => match r {
                Some(Ok((req, respond))) => {
                    if streams.is_empty() {
                        conn.slot.set(Phase::Busy);
                    }
                    streams.push(Box::pin(stream::serve(&shared, &conn, req, respond)));
                }
                _ => break Leave::Closed,
            },
            Some(()) = streams.next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    last_ms = shared.clock.now_ms();
                    conn.slot.set(Phase::Idle);
                }
            }
            _ = stopped(&mut stop) => break Leave::Stopping,
            _ = conn.slot.evicted() => break Leave::Quiet,
            _ = keepalive.pong() => {
                keepalive.waiting = false;
                keepalive.next = Instant::now() + c.h2_ping_interval;
            }
            _ = timer.as_mut() => {
                if h2_due(streams.len(), last_ms, opened_ms, shared.clock.now_ms(), c) == Some(0) {
                    break Leave::Quiet;
                }
                if !keepalive.tick(c) {
                    tracing::debug!(peer = %conn.peer, "http/2 ping not answered; closing");
                    return;
                }
                // Fired: the next turn sets it again, even to the same instant.
                timer_at = Instant::now() - Duration::from_millis(1);
            }
        }
    };
    if leave == Leave::Closed {
        return;
    }
    h2.graceful_shutdown();
    let finish = async {
        loop {
            tokio::select! {
                r = h2.accept() => match r {
                    Some(Ok((req, respond))) => streams.push(Box::pin(stream::serve(&shared, &conn, req, respond))),
                    _ => return,
                },
                Some(()) = streams.next(), if !streams.is_empty() => {}
            }
        }
    };
    if leave == Leave::Stopping {
        // The router's leave deadline bounds this.
        finish.await;
    } else {
        let _ = tokio::time::timeout(c.h2_idle_timeout, finish).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_connection_is_due_at_its_handshake_then_idle_deadline_and_never_with_open_streams() {
        let c = ClientSettings {
            h2_handshake_timeout: Duration::from_secs(10),
            h2_idle_timeout: Duration::from_secs(75),
            ..ClientSettings::default()
        };
        // No request yet: due 10 s after it opened.
        assert_eq!(h2_due(0, u64::MAX, 1_000, 4_000, &c), Some(7_000));
        assert_eq!(h2_due(0, u64::MAX, 1_000, 12_000, &c), Some(0));
        // The last stream ended at 20 s: due 75 s later.
        assert_eq!(h2_due(0, 20_000, 1_000, 30_000, &c), Some(65_000));
        assert_eq!(h2_due(0, 20_000, 1_000, 96_000, &c), Some(0));
        // A stream is open: never idle.
        assert_eq!(h2_due(1, u64::MAX, 0, 1_000_000, &c), None);
    }
}
