//! WebSocket tunnels and raw TCP connections: registered per instance, cut at their drain deadline.
//!
//! A cut is a proper "going away": a WebSocket gets a close frame 1012,
//! injected at a frame boundary of the server's stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::upstream::Upstream;

/// Why a long-lived connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Its instance left the table (or went down) and the drain deadline passed.
    Drained,
    /// The router is shutting down or handing over to a new process.
    RouterLeaving,
}

struct Entry {
    up: Arc<Upstream>,
    cut: watch::Sender<Option<Cut>>,
    ws: bool,
    /// Its listener's drain deadline (ms, `u64::MAX` for unlimited).
    leave_deadline_ms: u64,
}

/// Every open long-lived connection.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Entry>>,
    /// When the router started leaving (ms on its clock, at least 1), or 0.
    leaving_since: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({} open)", self.len())
    }
}

/// A registered connection; dropping it unregisters it.
pub struct Handle {
    reg: Arc<Registry>,
    id: u64,
    pub cut: watch::Receiver<Option<Cut>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.reg
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Registry {
    /// Registers a connection to `up` accepted on a listener whose drain
    /// deadline is `leave_deadline_ms`.
    pub fn register(self: &Arc<Self>, up: Arc<Upstream>, ws: bool, leave_deadline_ms: u64) -> Handle {
        let id = self.next.fetch_add(1, Relaxed);
        let (tx, rx) = watch::channel(None);
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Entry {
                up,
                cut: tx,
                ws,
                leave_deadline_ms,
            },
        );
        Handle {
            reg: self.clone(),
            id,
            cut: rx,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// WebSockets and TCP connections open, in that order.
    pub fn counts(&self) -> (usize, usize) {
        let c = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let ws = c.values().filter(|e| e.ws).count();
        (ws, c.len() - ws)
    }

    /// WebSockets and TCP connections open per instance (keyed by the
    /// upstream's address in memory).
    pub fn counts_by_upstream(&self) -> HashMap<usize, (u64, u64)> {
        let mut out: HashMap<usize, (u64, u64)> = HashMap::new();
        for e in self.conns.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let c = out.entry(Arc::as_ptr(&e.up) as usize).or_default();
            if e.ws {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        out
    }

    /// The router is leaving (shutting down or handing over): from now on
    /// each connection is cut once its listener's drain deadline has passed.
    pub fn start_leaving(&self, now_ms: u64) {
        let _ = self.leaving_since.compare_exchange(0, now_ms.max(1), Relaxed, Relaxed);
    }

    pub fn leaving_since(&self) -> Option<u64> {
        match self.leaving_since.load(Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Cuts connections whose instance has been out of the table (or down)
    /// for longer than its release's drain deadline, and, once the router is
    /// leaving, those past their listener's drain deadline.
    pub fn sweep(&self, clock: &Clock) {
        let now = clock.now_ms();
        let leaving = self.leaving_since();
        for e in self.conns.lock().unwrap_or_else(|e| e.into_inner()).values() {
            if e.cut.borrow().is_some() {
                continue;
            }
            if let Some(since) = e.up.doomed_since()
                && now.saturating_sub(since) >= e.up.drain_deadline_ms()
            {
                let _ = e.cut.send(Some(Cut::Drained));
            } else if let Some(since) = leaving
                && now.saturating_sub(since) >= e.leave_deadline_ms
            {
                let _ = e.cut.send(Some(Cut::RouterLeaving));
            }
        }
    }
}

/// Where the WebSocket frame stream from the server is.
#[derive(Debug, Default)]
pub struct FrameTracker {
    header: Vec<u8>,
    /// Payload bytes left in the current frame.
    remaining: u64,
}

impl FrameTracker {
    /// Between two frames.
    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.remaining == 0
    }

    /// Consumes `data` up to the end of the current frame (or all of it);
    /// returns how many bytes were consumed.
    pub fn consume_frame(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min((data.len() - i) as u64) as usize;
                i += take;
                self.remaining -= take as u64;
                return i;
            }
            if i == data.len() {
                return i;
            }
            // Header: 2 bytes, then 0/2/8 length bytes, then 0/4 mask bytes.
            self.header.push(data[i]);
            i += 1;
            if let Some((len, hdr_len)) = parse_header(&self.header)
                && self.header.len() == hdr_len
            {
                self.header.clear();
                self.remaining = len;
                if len == 0 {
                    return i;
                }
            }
        }
    }

    /// Consumes all of `data`.
    pub fn consume(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = self.consume_frame(data);
            data = &data[n..];
        }
    }
}

/// (payload length, header length) once enough header bytes are known.
fn parse_header(h: &[u8]) -> Option<(u64, usize)> {
    if h.len() < 2 {
        return None;
    }
    let masked = h[1] & 0x80 != 0;
    let mask = if masked { 4 } else { 0 };
    match h[1] & 0x7f {
        126 => {
            if h.len() < 4 {
                return None;
            }
            Some((u16::from_be_bytes([h[2], h[3]]) as u64, 4 + mask))
        }
        127 => {
            if h.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[2..10]);
            Some((u64::from_be_bytes(b), 10 + mask))
        }
        n => Some((n as u64, 2 + mask)),
    }
}

/// A server-to-client close frame with code 1012 (Service Restart).
pub fn close_1012(reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(100)];
    let mut f = vec![0x88, (2 + reason.len()) as u8];
    f.extend_from_slice(&1012u16.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// Relays bytes both ways until either side closes or `cut` fires. On a cut,
/// a WebSocket gets a 1012 close frame at the next frame boundary of the
/// server's stream and a moment to answer; raw TCP is closed. Returns bytes
/// (to upstream, to client).
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    mut cut: watch::Receiver<Option<Cut>>,
    ws: bool,
    clock: Clock,
) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let (mut to_up, mut to_client) = (0u64, 0u64);
    let mut tracker = FrameTracker::default();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    let mut cutting: Option<Cut> = None;
    let mut client_open = true;
    loop {
        if let Some(why) = cutting
            && (!ws || tracker.at_boundary())
        {
            if ws {
                let reason = match why {
                    Cut::Drained => "release drained",
                    Cut::RouterLeaving => "router restarting",
                };
                let _ = cw.write_all(&close_1012(reason)).await;
                let _ = cw.flush().await;
                // Let the client answer (its close goes on to the app), briefly.
                let deadline = clock.now_ms() + 2_000;
                while clock.now_ms() < deadline {
                    match tokio::time::timeout(Duration::from_millis(100), cr.read(&mut cbuf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => {
                            let _ = uw.write_all(&cbuf[..n]).await;
                        }
                        Err(_) => continue,
                    }
                }
            }
            let _ = cw.shutdown().await;
            let _ = uw.shutdown().await;
            return (to_up, to_client);
        }
        tokio::select! {
            r = cr.read(&mut cbuf), if client_open => match r {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = uw.shutdown().await;
                }
                Ok(n) => {
                    to_up += n as u64;
                    if uw.write_all(&cbuf[..n]).await.is_err() {
                        return (to_up, to_client);
                    }
                }
            },
            r = ur.read(&mut ubuf) => match r {
                Ok(0) | Err(_) => {
                    let _ = cw.shutdown().await;
                    return (to_up, to_client);
                }
                Ok(n) => {
                    let data = &ubuf[..n];
                    let forward = if ws && cutting.is_some() {
                        // Only up to the end of the frame in progress.
                        tracker.consume_frame(data)
                    } else {
                        if ws {
                            tracker.consume(data);
                        }
                        n
                    };
                    to_client += forward as u64;
                    if cw.write_all(&data[..forward]).await.is_err() {
                        return (to_up, to_client);
                    }
                }
            },
            _ = cut.changed(), if cutting.is_none() => {
                cutting = *cut.borrow();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match payload_len {
            0..=125 => f.push(m | payload_len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload_len));
        f
    }

    #[test]
    fn boundaries_are_found_whatever_the_split() {
        let mut stream = Vec::new();
        for (n, masked) in [(5, false), (300, false), (0, true), (70_000, false), (126, true)] {
            stream.extend(frame(n, masked));
        }
        for step in [1, 3, 7, 1000, 100_000] {
            let mut t = FrameTracker::default();
            for chunk in stream.chunks(step) {
                t.consume(chunk);
            }
            assert!(t.at_boundary(), "step {step}");
        }
        // Mid-frame: consume_frame stops exactly at the frame's end.
        let mut t = FrameTracker::default();
        let two = [frame(10, false), frame(4, false)].concat();
        assert_eq!(t.consume_frame(&two[..5]), 5);
        assert!(!t.at_boundary());
        assert_eq!(t.consume_frame(&two[5..]), 7);
        assert!(t.at_boundary());
    }

    #[test]
    fn the_close_frame_carries_1012() {
        let f = close_1012("bye");
        assert_eq!(&f[..4], &[0x88, 5, 0x03, 0xf4]);
        assert_eq!(&f[4..], b"bye");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Frames of any sizes, split anywhere: every boundary is found, none invented.
            #[test]
            fn every_frame_boundary_is_found_whatever_the_split(
                frames in proptest::collection::vec((0usize..70_000, any::<bool>()), 1..6),
                step in 1usize..5000,
            ) {
                let mut t = FrameTracker::default();
                for (n, masked) in &frames {
                    let f = frame(*n, *masked);
                    for chunk in f.chunks(step) {
                        prop_assert!(chunk.is_empty() || !t.at_boundary() || chunk.as_ptr() == f.as_ptr());
                        t.consume(chunk);
                    }
                    prop_assert!(t.at_boundary());
                }
            }

            /// Any server bytes: no panic, and the header buffer never holds more than a header.
            #[test]
            fn any_bytes_keep_the_tracker_bounded(
                input in proptest::collection::vec(any::<u8>(), 0..2000),
                step in 1usize..64,
            ) {
                let mut t = FrameTracker::default();
                for chunk in input.chunks(step) {
                    let mut rest = chunk;
                    while !rest.is_empty() {
                        let n = t.consume_frame(rest);
                        prop_assert!(n > 0 && n <= rest.len());
                        rest = &rest[n..];
                        prop_assert!(t.header.len() <= 14);
                    }
                }
            }
        }
    }
}
