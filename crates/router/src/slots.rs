//! Open client connections per listener: the `max_connections` cap, which connection to close for
//! room (idle longest, else slowest head; never one at work), and rate-limited warnings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What a client connection is doing, for the choice of whom to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Waiting for a next request (HTTP/1 keep-alive, HTTP/2 without open streams).
    Idle = 0,
    /// Sending a request head, a TLS handshake or an HTTP/2 preface.
    Head = 1,
    /// Sending a request body the router is waiting on (HTTP/1).
    Body = 2,
    /// A request in flight, a tunnel or a TCP connection: never closed for room.
    Busy = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Idle,
            1 => Phase::Head,
            2 => Phase::Body,
            _ => Phase::Busy,
        }
    }
}

/// Orders phase changes across all connections: a lower number entered its
/// phase earlier. One atomic add instead of a clock read per request.
static PHASE_SEQ: AtomicU64 = AtomicU64::new(1);

/// One open client connection as the cap sees it.
#[derive(Debug)]
pub struct Slot {
    phase: AtomicU8,
    /// When the current phase began, as a `PHASE_SEQ` number (busy: not kept).
    since: AtomicU64,
    evict: Notify,
}

impl Slot {
    /// A connection in its head phase, not yet in any listener's table.
    pub fn detached() -> Slot {
        Slot {
            phase: AtomicU8::new(Phase::Head as u8),
            since: AtomicU64::new(PHASE_SEQ.fetch_add(1, Relaxed)),
            evict: Notify::new(),
        }
    }

    /// Enters `phase` (a no-op if already in it). Busy is never closed for
    /// room, so entering it orders nothing.
    #[inline]
    pub fn set(&self, phase: Phase) {
        if self.phase.load(Relaxed) != phase as u8 {
            if phase != Phase::Busy {
                self.since.store(PHASE_SEQ.fetch_add(1, Relaxed), Relaxed);
            }
            self.phase.store(phase as u8, Relaxed);
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Relaxed))
    }

    /// Resolves once the cap chose this connection to close.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

/// The connection to close for room among `(id, phase, since)`: the one
/// idle longest, else the one in its head longest, else the one longest
/// sending its body; never a busy one.
pub fn victim(entries: impl Iterator<Item = (u64, Phase, u64)>) -> Option<u64> {
    entries
        .filter(|(_, p, _)| *p != Phase::Busy)
        .min_by_key(|(_, p, since)| (*p as u8, *since))
        .map(|(id, _, _)| id)
}

/// The open connections of one listener.
#[derive(Debug)]
pub struct Slots {
    pub cap: usize,
    open: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
}

impl Slots {
    pub fn new(cap: usize) -> Slots {
        Slots {
            cap,
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.cap
    }

    /// Registers a new connection (in its head phase); dropping the guard removes it.
    pub fn open(self: &Arc<Self>) -> SlotGuard {
        let id = self.next.fetch_add(1, Relaxed);
        let slot = Arc::new(Slot::detached());
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, slot.clone());
        SlotGuard {
            slots: self.clone(),
            id,
            slot,
        }
    }

    /// Tells the connection idle longest (else slowest in its head, else in its body) to close;
    /// false if every connection is busy.
    pub fn evict_one(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let chosen = victim(open.iter().map(|(id, s)| (*id, s.phase(), s.since.load(Relaxed))));
        match chosen.and_then(|id| open.get(&id)) {
            Some(s) => {
                // Busy from now on, so the next choice picks another one.
                s.phase.store(Phase::Busy as u8, Relaxed);
                s.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// One registered connection.
#[derive(Debug)]
pub struct SlotGuard {
    slots: Arc<Slots>,
    id: u64,
    pub slot: Arc<Slot>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Lets a warning through at most once per `every_ms`, counting the rest.
#[derive(Debug, Default)]
pub struct LogLimit {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
    logged: std::sync::atomic::AtomicBool,
}

impl LogLimit {
    /// `Some(n)`: log now, `n` warnings were held back since the last one.
    pub fn allow(&self, now_ms: u64, every_ms: u64) -> Option<u64> {
        let last = self.last_ms.load(Relaxed);
        let first = !self.logged.swap(true, Relaxed);
        if first || now_ms.saturating_sub(last) >= every_ms {
            self.last_ms.store(now_ms, Relaxed);
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

/// Whether an I/O error means this process is out of descriptors or
/// buffers, rather than anything wrong with the peer.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Descriptors kept free for upstream, health-check and admin connections.
pub fn fd_reserve(limit: u64) -> u64 {
    (limit / 8).max(64)
}

/// The default `max_connections` of each of `listeners` listeners under `limit`
/// descriptors: what the reserve leaves, halved (a client connection may hold
/// an upstream one), shared out; at least 16.
pub fn default_max_connections(limit: u64, listeners: usize) -> usize {
    let usable = limit.saturating_sub(fd_reserve(limit)) / 2;
    ((usable / listeners.max(1) as u64) as usize).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_victim_is_idle_longest_then_slowest_head_never_busy() {
        use Phase::*;
        assert_eq!(
            victim([(1, Busy, 0), (2, Head, 5), (3, Idle, 9), (4, Idle, 7)].into_iter()),
            Some(4)
        );
        assert_eq!(victim([(1, Busy, 0), (2, Head, 5), (3, Head, 2)].into_iter()), Some(3));
        assert_eq!(victim([(1, Busy, 0), (2, Body, 5), (3, Head, 9)].into_iter()), Some(3));
        assert_eq!(victim([(1, Busy, 0), (2, Body, 5), (3, Body, 4)].into_iter()), Some(3));
        assert_eq!(victim([(1, Busy, 0)].into_iter()), None);
        assert_eq!(victim(std::iter::empty()), None);
    }

    #[tokio::test]
    async fn evicting_signals_one_connection_and_not_twice() {
        let slots = Arc::new(Slots::new(2));
        let a = slots.open();
        let b = slots.open();
        b.slot.set(Phase::Busy);
        assert!(slots.is_full());
        assert!(slots.evict_one());
        tokio::time::timeout(std::time::Duration::from_secs(1), a.slot.evicted())
            .await
            .expect("a was told to close");
        // a is now marked busy and b is busy: nobody else to close.
        assert!(!slots.evict_one());
        drop(a);
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn a_log_limit_lets_one_line_through_per_period_and_counts_the_rest() {
        let l = LogLimit::default();
        assert_eq!(l.allow(0, 1000), Some(0));
        assert_eq!(l.allow(10, 1000), None);
        assert_eq!(l.allow(999, 1000), None);
        assert_eq!(l.allow(1000, 1000), Some(2));
        assert_eq!(l.allow(1500, 1000), None);
    }

    #[test]
    fn default_caps_leave_a_reserve() {
        assert_eq!(fd_reserve(1024), 128);
        assert_eq!(default_max_connections(1024, 1), 448);
        assert_eq!(default_max_connections(1024, 2), 224);
        assert_eq!(default_max_connections(256, 1), 96);
        assert_eq!(default_max_connections(10, 1), 16);
    }
}
