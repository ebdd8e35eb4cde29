//! One routed instance: route state, health (active and passive), counters, connection pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use wire::api::DrainState;
use wire::{HealthCheck, RouteState, UpstreamProtocol};

use crate::body::ReqBody;
use crate::clock::Clock;
use crate::reply::{ErrorCode, Reply};
use crate::stats::{Stats, micros_since};

/// Settings every upstream shares, from `[upstream]` in the router config.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub eject_after_failures: u32,
    pub ejection_time: Duration,
}

/// Why no connection to an upstream could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("handshake with {addr}: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
}

impl ConnectError {
    /// This process is out of descriptors (or buffers): nothing is wrong with the instance.
    pub fn is_local(&self) -> bool {
        matches!(self, ConnectError::Io { source, .. } if crate::slots::is_local_exhaustion(source))
    }
}

/// Route state plus "removed from the table", packed for an atomic.
const REMOVED: u8 = 3;

fn state_code(s: RouteState) -> u8 {
    match s {
        RouteState::Active => 0,
        RouteState::Draining => 1,
        RouteState::Down => 2,
    }
}

/// A connection taken from the pool for one request.
pub enum PooledConn {
    H1(http1::SendRequest<ReqBody>),
    /// HTTP/2 senders are shared; nothing goes back to the pool.
    H2,
}

/// An instance of a release as the data plane sees it. Lives across table
/// swaps for as long as the table keeps an instance with the same release,
/// id, address and protocol.
pub struct Upstream {
    pub release: Arc<str>,
    pub id: Arc<str>,
    pub addr: SocketAddr,
    pub protocol: UpstreamProtocol,
    state: AtomicU8,
    /// When it went down or left the table (ms on the router clock), or 0.
    doomed_since: AtomicU64,
    drain_deadline_ms: AtomicU64,
    pub stats: Arc<Stats>,
    pub health: Health,
    health_check: Mutex<HealthCheck>,
    settings: Arc<UpstreamSettings>,
    clock: Clock,
    idle: Mutex<Vec<(http1::SendRequest<ReqBody>, u64)>>,
    raw_idle: Mutex<Vec<(RawConn, u64)>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ReqBody>>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream({}/{} {})", self.release, self.id, self.addr)
    }
}

impl Upstream {
    pub fn new(
        release: Arc<str>,
        id: Arc<str>,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
        check: HealthCheck,
        settings: Arc<UpstreamSettings>,
        clock: Clock,
    ) -> Upstream {
        Upstream {
            release,
            id,
            addr,
            protocol,
            state: AtomicU8::new(0),
            doomed_since: AtomicU64::new(0),
            drain_deadline_ms: AtomicU64::new(u64::MAX),
            stats: Arc::new(Stats::default()),
            health: Health::default(),
            health_check: Mutex::new(check),
            settings,
            clock,
            idle: Mutex::new(Vec::new()),
            raw_idle: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
        }
    }

    pub fn settings(&self) -> &UpstreamSettings {
        &self.settings
    }

    /// State in the newest table (routing decisions use the state of the
    /// table a request was routed with); `None` once removed from the table.
    pub fn state(&self) -> Option<RouteState> {
        match self.state.load(Relaxed) {
            0 => Some(RouteState::Active),
            1 => Some(RouteState::Draining),
            2 => Some(RouteState::Down),
            _ => None,
        }
    }

    /// The state drain reports show.
    pub fn drain_state(&self) -> DrainState {
        match self.state() {
            Some(RouteState::Active) => DrainState::Active,
            Some(RouteState::Draining) => DrainState::Draining,
            Some(RouteState::Down) => DrainState::Down,
            None => DrainState::Removed,
        }
    }

    /// Leaving active closes idle keep-alive connections at once (they are
    /// between requests by definition) and stops pooling new ones.
    pub fn set_state(&self, s: RouteState) {
        let old = self.state.swap(state_code(s), Relaxed);
        if s != RouteState::Active && old != state_code(s) {
            self.close_idle();
        }
    }

    /// Taken out of the table: no new requests; in-flight ones finish.
    pub fn retire(&self) {
        self.state.store(REMOVED, Relaxed);
        self.set_doomed(true);
        self.close_idle();
    }

    /// Marks the instance as down (or not): its long-lived connections are
    /// cut once the drain deadline has passed since.
    pub fn set_doomed(&self, doomed: bool) {
        if doomed {
            let _ = self
                .doomed_since
                .compare_exchange(0, self.clock.now_ms().max(1), Relaxed, Relaxed);
        } else {
            self.doomed_since.store(0, Relaxed);
        }
    }

    pub fn doomed_since(&self) -> Option<u64> {
        match self.doomed_since.load(Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    pub fn set_drain_deadline_ms(&self, ms: u64) {
        self.drain_deadline_ms.store(ms, Relaxed);
    }

    pub fn drain_deadline_ms(&self) -> u64 {
        self.drain_deadline_ms.load(Relaxed)
    }

    pub fn is_removed(&self) -> bool {
        self.state.load(Relaxed) == REMOVED
    }

    pub fn set_health_check(&self, check: HealthCheck) {
        *self.health_check.lock().unwrap_or_else(|e| e.into_inner()) = check;
    }

    pub fn health_check(&self) -> HealthCheck {
        self.health_check.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn healthy(&self) -> bool {
        self.health.is_healthy_with(&self.clock)
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
            + self.raw_idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn close_idle(&self) {
        let drained: Vec<_> = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        drop(drained);
        let raw: Vec<_> = std::mem::take(&mut *self.raw_idle.lock().unwrap_or_else(|e| e.into_inner()));
        drop(raw);
        if let Ok(mut h2) = self.h2.try_lock() {
            h2.take();
        }
    }

    /// A connection for one request: a pooled idle one when there is one
    /// (`reused = true`), else a new one.
    pub async fn checkout(&self) -> Result<(PooledConn, bool), ConnectError> {
        match self.protocol {
            UpstreamProtocol::Http1 => {
                if let Some(s) = self.take_idle().await {
                    return Ok((PooledConn::H1(s), true));
                }
                Ok((PooledConn::H1(self.connect_h1(false).await?), false))
            }
            UpstreamProtocol::H2c => {
                let mut slot = self.h2.lock().await;
                if let Some(s) = slot.as_ref()
                    && !s.is_closed()
                {
                    return Ok((PooledConn::H2, true));
                }
                *slot = Some(self.connect_h2().await?);
                Ok((PooledConn::H2, false))
            }
        }
    }

    /// The shared HTTP/2 sender (after a successful `checkout` of an h2c upstream).
    pub async fn h2_sender(&self) -> Option<http2::SendRequest<ReqBody>> {
        self.h2.lock().await.clone()
    }

    async fn take_idle(&self) -> Option<http1::SendRequest<ReqBody>> {
        let now = self.clock.now_ms();
        let idle_ms = self.settings.idle_timeout.as_millis() as u64;
        loop {
            let (mut s, at) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if s.is_closed() || now.saturating_sub(at) > idle_ms {
                continue;
            }
            if !s.is_ready() && s.ready().await.is_err() {
                continue;
            }
            return Some(s);
        }
    }

    /// Gives a connection back after its response body was read to the end.
    pub fn checkin(&self, conn: PooledConn) {
        if let PooledConn::H1(s) = conn
            && self.state.load(Relaxed) == 0
            && !s.is_closed()
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.settings.max_idle {
                idle.push((s, self.clock.now_ms()));
            }
        }
    }

    /// A plain connection for the HTTP/1 fast path: a pooled one unless
    /// `fresh`, else a new one. Connections idle for over a second are
    /// checked for a close from the other side first.
    pub async fn checkout_raw(&self, fresh: bool) -> Result<(RawConn, bool), ConnectError> {
        if !fresh {
            let now = self.clock.now_ms();
            let idle_ms = self.settings.idle_timeout.as_millis() as u64;
            loop {
                let Some((c, at)) = self.raw_idle.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                    break;
                };
                let idle_for = now.saturating_sub(at);
                if idle_for > idle_ms {
                    continue;
                }
                if idle_for > 1_000 && !c.looks_open() {
                    continue;
                }
                return Ok((c, true));
            }
        }
        let s = self.tcp().await?;
        self.stats.connection_opened();
        Ok((
            RawConn {
                s,
                stats: self.stats.clone(),
            },
            false,
        ))
    }

    /// Gives back a connection whose last response was read to the end.
    pub fn checkin_raw(&self, c: RawConn) {
        if self.state.load(Relaxed) != 0 {
            return;
        }
        let mut idle = self.raw_idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.settings.max_idle {
            idle.push((c, self.clock.now_ms()));
        }
    }

    async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let addr = self.addr;
        let after = self.settings.connect_timeout;
        let stream = tokio::time::timeout(after, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout { addr, after })?
            .map_err(|source| ConnectError::Io { addr, source })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A new HTTP/1.1 connection; with `upgrades` it may be taken over by a
    /// protocol upgrade (WebSocket) and is never pooled.
    pub async fn connect_h1(&self, upgrades: bool) -> Result<http1::SendRequest<ReqBody>, ConnectError> {
        let stream = self.tcp().await?;
        let addr = self.addr;
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        let stats = self.stats.clone();
        stats.connection_opened();
        tokio::spawn(async move {
            if upgrades {
                let _ = conn.with_upgrades().await;
            } else {
                let _ = conn.await;
            }
            stats.connection_closed();
        });
        Ok(sender)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<ReqBody>, ConnectError> {
        let stream = self.tcp().await?;
        let addr = self.addr;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        let stats = self.stats.clone();
        stats.connection_opened();
        tokio::spawn(async move {
            let _ = conn.await;
            stats.connection_closed();
        });
        Ok(sender)
    }

    /// Counts and logs a request this instance failed (`why` names it), and
    /// makes the client's reply.
    pub fn failed(&self, code: ErrorCode, why: &str, started: Instant) -> Reply {
        self.stats.upstream_failure();
        self.stats.response(code.status().as_u16(), micros_since(started));
        tracing::warn!(release = %self.release, instance = %self.id, reason = %why, "upstream failed");
        Reply::new(code, why)
    }

    /// Passive health from a response status: a 5xx counts as a failure.
    /// `may_eject` is asked only then (see [`record_failure`](Self::record_failure)).
    #[inline(always)]
    pub fn record_status(&self, status: u16, may_eject: impl FnOnce() -> bool) {
        if status >= 500 {
            self.record_failure(may_eject());
        } else {
            self.record_success();
        }
    }

    /// Passive health: a request got an answer that is not a 5xx.
    pub fn record_success(&self) {
        self.health.success();
    }

    /// Passive health: a connect failure or a 5xx. `may_eject` is false when
    /// this is the release's last healthy instance.
    pub fn record_failure(&self, may_eject: bool) {
        let s = &self.settings;
        if s.eject_after_failures == 0 {
            return;
        }
        self.health
            .failure(self.clock.now_ms(), s.eject_after_failures, s.ejection_time, may_eject);
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
    #[inline(always)]
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
    pub fn finish(mut self) {
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

/// A plain upstream connection of the HTTP/1 fast path; counted in the
/// instance's open connections until dropped.
pub struct RawConn {
    pub s: TcpStream,
    stats: Arc<Stats>,
}

impl RawConn {
    /// False if the peer closed it (or sent something unasked) while idle.
    fn looks_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

impl Drop for RawConn {
    fn drop(&mut self) {
        self.stats.connection_closed();
    }
}

/// Health of an instance: the active checker's verdict and passive ejection.
#[derive(Debug)]
pub struct Health {
    /// Verdict of the active checker; instances start healthy.
    active_ok: AtomicBool,
    active_streak: AtomicU32,
    consecutive_failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    last_ejection_ms: AtomicU64,
    ejection_multiplier: AtomicU32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            active_ok: AtomicBool::new(true),
            active_streak: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            last_ejection_ms: AtomicU64::new(0),
            ejection_multiplier: AtomicU32::new(0),
        }
    }
}

impl Health {
    #[cfg(test)]
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        self.active_ok.load(Relaxed) && now_ms >= self.ejected_until_ms.load(Relaxed)
    }

    /// Like `is_healthy`, reading the clock only while an ejection is on.
    pub fn is_healthy_with(&self, clock: &Clock) -> bool {
        if !self.active_ok.load(Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Relaxed);
        until == 0 || clock.now_ms() >= until
    }

    pub fn active_ok(&self) -> bool {
        self.active_ok.load(Relaxed)
    }

    /// Passive ejection still to run at `now_ms`, in ms.
    pub fn ejected_ms_left(&self, now_ms: u64) -> u64 {
        self.ejected_until_ms.load(Relaxed).saturating_sub(now_ms)
    }

    /// Takes over the verdicts another router process reached.
    pub fn restore(&self, active_ok: bool, now_ms: u64, ejected_ms_left: u64) {
        self.active_ok.store(active_ok, Relaxed);
        self.active_streak.store(0, Relaxed);
        if ejected_ms_left > 0 {
            self.ejected_until_ms.store(now_ms + ejected_ms_left, Relaxed);
            self.last_ejection_ms.store(now_ms, Relaxed);
            self.ejection_multiplier.store(1, Relaxed);
        }
    }

    fn success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    fn failure(&self, now_ms: u64, threshold: u32, base: Duration, may_eject: bool) {
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if n < threshold || !may_eject {
            return;
        }
        self.consecutive_failures.store(0, Relaxed);
        let base_ms = base.as_millis() as u64;
        // Repeated ejections within ten base periods double, up to ten times the base.
        let recent = now_ms.saturating_sub(self.last_ejection_ms.load(Relaxed)) < base_ms * 10
            && self.ejection_multiplier.load(Relaxed) > 0;
        let mult = if recent {
            (self.ejection_multiplier.load(Relaxed) * 2).min(10)
        } else {
            1
        };
        self.ejection_multiplier.store(mult, Relaxed);
        self.last_ejection_ms.store(now_ms, Relaxed);
        self.ejected_until_ms.store(now_ms + base_ms * mult as u64, Relaxed);
        tracing::warn!(
            failures = n,
            eject_ms = base_ms * mult as u64,
            "instance ejected after consecutive failures"
        );
    }

    /// Feeds one active check result; returns the new verdict when it flipped.
    pub fn active_result(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let current = self.active_ok.load(Relaxed);
        if ok == current {
            self.active_streak.store(0, Relaxed);
            return None;
        }
        let streak = self.active_streak.fetch_add(1, Relaxed) + 1;
        let needed = if ok { rise } else { fall };
        if streak >= needed {
            self.active_ok.store(ok, Relaxed);
            self.active_streak.store(0, Relaxed);
            if ok {
                // A recovered instance starts with a clean slate.
                self.ejected_until_ms.store(0, Relaxed);
                self.consecutive_failures.store(0, Relaxed);
            }
            return Some(ok);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_ejection_backs_off_and_respects_may_eject() {
        let h = Health::default();
        for _ in 0..4 {
            h.failure(1_000, 5, Duration::from_secs(10), true);
        }
        assert!(h.is_healthy(1_000));
        h.failure(1_000, 5, Duration::from_secs(10), true);
        assert!(!h.is_healthy(1_000));
        assert!(h.is_healthy(11_000));
        for _ in 0..5 {
            h.failure(12_000, 5, Duration::from_secs(10), true);
        }
        assert!(!h.is_healthy(31_000), "second ejection lasts twice as long");
        assert!(h.is_healthy(32_000));
        let last = Health::default();
        for _ in 0..50 {
            last.failure(1_000, 5, Duration::from_secs(10), false);
        }
        assert!(last.is_healthy(1_000), "the last healthy instance is never ejected");
    }

    #[test]
    fn active_checks_need_rise_and_fall_in_a_row() {
        let h = Health::default();
        assert_eq!(h.active_result(false, 2, 3), None);
        assert_eq!(h.active_result(false, 2, 3), None);
        assert_eq!(h.active_result(true, 2, 3), None, "a success breaks the streak");
        for _ in 0..2 {
            assert_eq!(h.active_result(false, 2, 3), None);
        }
        assert_eq!(h.active_result(false, 2, 3), Some(false));
        assert!(!h.is_healthy(0));
        assert_eq!(h.active_result(true, 2, 3), None);
        assert_eq!(h.active_result(true, 2, 3), Some(true));
        assert!(h.is_healthy(0));
    }
}
