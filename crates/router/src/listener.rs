//! Public listeners: binding, accept loops, TLS with ALPN, HTTP/1 or HTTP/2 dispatch, raw TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use wire::router_config::{AffinityMode, ListenerKind};

use crate::config::Listener;
use crate::conn::{ConnCtx, ListenerCtx, stopped};
use crate::shared::Shared;
use crate::slots::{LogLimit, Phase, SlotGuard, Slots};
use crate::table::{Choice, How, Inputs, RequestView};

/// Binds `addr` with the options a proxy wants (address reuse, a deep
/// backlog); blocking, close-on-exec.
pub fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Counts open client connections so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct ConnTracker {
    open: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl ConnTracker {
    pub fn open(self: &Arc<Self>) -> ConnGuard {
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ConnGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves once no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One open client connection; dropping it closes the count.
pub struct ConnGuard(Arc<ConnTracker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// How long `accept` waits after a failure: doubling from 5 ms up to 1 s.
fn next_backoff(prev: Duration) -> Duration {
    (prev * 2).clamp(Duration::from_millis(5), Duration::from_secs(1))
}

/// Accepts on one listener until `stop` turns true. At `max_connections`
/// (or when the process is out of descriptors) the connection idle longest,
/// else the slowest head, else the slowest body, is told to close; with none to close, the new one
/// is closed at once. Failures back `accept` off and are logged at most every
/// 10 s.
pub async fn accept_loop(
    shared: Arc<Shared>,
    cfg: Listener,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    tracker: Arc<ConnTracker>,
    slots: Arc<Slots>,
) {
    let ctx = Arc::new(ListenerCtx {
        affinity: cfg.affinity,
        tls: cfg.tls.is_some(),
        drain_deadline_ms: cfg.drain_deadline.as_millis(),
    });
    let tls = cfg.tls.clone().map(TlsAcceptor::from);
    let (accept_log, full_log) = (LogLimit::default(), LogLimit::default());
    let mut backoff = Duration::ZERO;
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if crate::slots::is_local_exhaustion(&e) {
                        slots.evict_one();
                    }
                    if let Some(held) = accept_log.allow(shared.clock.now_ms(), 10_000) {
                        tracing::warn!(listener = %cfg.name, error = %e, held_back = held, "accept failed");
                    }
                    backoff = next_backoff(backoff);
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
        };
        backoff = Duration::ZERO;
        if slots.is_full() && !slots.evict_one() {
            if let Some(held) = full_log.allow(shared.clock.now_ms(), 10_000) {
                tracing::warn!(listener = %cfg.name, max = slots.cap, held_back = held,
                    "at max_connections with every connection busy; new connections are closed");
            }
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let guard = tracker.open();
        let slot = slots.open();
        match cfg.kind {
            ListenerKind::Http => {
                let conn = Arc::new(ConnCtx::new(peer, ctx.clone(), slot.slot.clone()));
                tokio::spawn(serve_http(
                    shared.clone(),
                    conn,
                    stream,
                    tls.clone(),
                    stop.clone(),
                    (guard, slot),
                ));
            }
            ListenerKind::Tcp => {
                slot.slot.set(Phase::Busy);
                let shared = shared.clone();
                let affinity = cfg.affinity;
                let deadline = ctx.drain_deadline_ms;
                tokio::spawn(async move {
                    proxy_tcp(shared, stream, peer, affinity, deadline).await;
                    drop((guard, slot));
                });
            }
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one HTTP connection: HTTP/2 (prior knowledge, or ALPN "h2" on
/// TLS) through `h2path`, everything else through the HTTP/1 fast path.
async fn serve_http(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    mut stream: TcpStream,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
    _guards: (ConnGuard, SlotGuard),
) {
    use tokio::io::AsyncReadExt;
    let head_by = tokio::time::Instant::now() + shared.config.client.head_timeout;
    match tls {
        None => {
            // Small: a silent connection holds only this (the h1 path grows it).
            let mut buf = bytes::BytesMut::with_capacity(1024);
            // Enough bytes to tell an HTTP/2 preface from an HTTP/1 request line.
            loop {
                let n = buf.len().min(H2_PREFACE.len());
                if n > 0 && buf[..n] != H2_PREFACE[..n] {
                    break;
                }
                if buf.len() >= H2_PREFACE.len() {
                    let io = Prefixed::new(buf.freeze(), stream);
                    return crate::h2path::serve(shared, conn, io, stop).await;
                }
                tokio::select! {
                    r = tokio::time::timeout_at(head_by, stream.read_buf(&mut buf)) => match r {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    },
                    _ = conn.slot.evicted() => return,
                }
            }
            crate::h1::serve(shared, conn, stream, buf, stop).await;
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
            let tls_stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %conn.peer, error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
                _ = conn.slot.evicted() => return,
            };
            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                crate::h2path::serve(shared, conn, tls_stream, stop).await;
            } else {
                crate::h1::serve(shared, conn, tls_stream, bytes::BytesMut::new(), stop).await;
            }
        }
    }
}

/// A stream with some bytes already read off it, served again first.
pub struct Prefixed<S> {
    prefix: bytes::Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: bytes::Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

struct TcpView(std::net::IpAddr);

impl RequestView for TcpView {
    fn header(&self, _: &http::HeaderName) -> Option<&str> {
        None
    }
    fn cookie(&self, _: &str) -> Option<&str> {
        None
    }
    fn query(&self, _: &str) -> Option<&str> {
        None
    }
    fn client_ip(&self) -> std::net::IpAddr {
        self.0
    }
}

/// Proxies one raw TCP connection to an instance chosen by client-IP bucket
/// (or weight), retrying the connect once on another instance. TCP has no
/// way to carry a reason, so a refused connection is logged and counted.
async fn proxy_tcp(
    shared: Arc<Shared>,
    mut client: TcpStream,
    peer: SocketAddr,
    affinity: AffinityMode,
    leave_deadline_ms: u64,
) {
    let table = shared.table.load_full();
    let bucket = (affinity == AffinityMode::ClientIp).then(|| crate::route::ip_bucket(peer.ip()));
    let inputs = Inputs {
        bucket,
        random: fastrand::u64(..),
        ..Default::default()
    };
    let refuse = |why: &str| {
        tracing::warn!(%peer, reason = why, "tcp connection refused");
        shared.unrouted.answered(503, 0);
    };
    let (index, how) = match table.choose(&TcpView(peer.ip()), &inputs) {
        Choice::Release { index, how } => (index, how),
        Choice::UpgradeRequired => return refuse("no release serves this client"),
        Choice::Unavailable(why) => return refuse(why),
    };
    let release = &table.releases[index];
    let sticky = how != How::Weight;
    let Some(first) = release.pick_instance(sticky, None) else {
        return refuse("release has no healthy instance");
    };
    let mut up = first.clone();
    let mut upstream = connect(&up).await;
    if upstream.is_none() {
        up.record_failure(release.healthy_active() > 1);
        if let Some(second) = release.pick_instance(sticky, Some(&first)) {
            up = second;
            upstream = connect(&up).await;
        }
    }
    let Some(mut upstream) = upstream else {
        up.stats.upstream_failure();
        return refuse("cannot connect to any instance");
    };
    drop(table);
    let stats = up.stats.clone();
    let handle = shared.long_lived.register(up.clone(), false, leave_deadline_ms);
    stats.long_lived_opened();
    stats.connection_opened();
    let (to_up, to_client) =
        crate::longlived::relay(&mut client, &mut upstream, handle.cut.clone(), false, shared.clock).await;
    stats.bytes_in(to_up);
    stats.bytes_out(to_client);
    stats.connection_closed();
    stats.long_lived_closed();
}

async fn connect(up: &crate::upstream::Upstream) -> Option<TcpStream> {
    let s = tokio::time::timeout(up.settings().connect_timeout, TcpStream::connect(up.addr))
        .await
        .ok()?
        .ok()?;
    let _ = s.set_nodelay(true);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backs_off_from_5_ms_doubling_to_1_s() {
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            b = next_backoff(b);
            seen.push(b.as_millis());
        }
        assert_eq!(seen, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    }
}
