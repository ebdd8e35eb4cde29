//! Public listeners: binding, accept loops, TLS with ALPN, HTTP/1 or HTTP/2 dispatch, raw TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use wire::router_config::{AffinityMode, ListenerKind};

use crate::config::Listener;
use crate::conn::{ConnCtx, ListenerCtx, stopped};
use crate::shared::Shared;
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

/// Accepts on one listener until `stop` turns true.
pub async fn accept_loop(
    shared: Arc<Shared>,
    cfg: Listener,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    tracker: Arc<ConnTracker>,
) {
    let ctx = Arc::new(ListenerCtx {
        affinity: cfg.affinity,
        tls: cfg.tls.is_some(),
        drain_deadline_ms: cfg.drain_deadline.as_millis(),
    });
    let tls = cfg.tls.clone().map(TlsAcceptor::from);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a moment rather than spin.
                    tracing::warn!(listener = %cfg.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let guard = tracker.open();
        match cfg.kind {
            ListenerKind::Http => {
                let conn = Arc::new(ConnCtx::new(peer, ctx.clone()));
                tokio::spawn(serve_http(
                    shared.clone(),
                    conn,
                    stream,
                    tls.clone(),
                    stop.clone(),
                    guard,
                ));
            }
            ListenerKind::Tcp => {
                let shared = shared.clone();
                let affinity = cfg.affinity;
                let deadline = ctx.drain_deadline_ms;
                tokio::spawn(async move {
                    proxy_tcp(shared, stream, peer, affinity, deadline).await;
                    drop(guard);
                });
            }
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one HTTP connection: HTTP/2 (prior knowledge, or ALPN "h2" on
/// TLS) through hyper, everything else through the HTTP/1 fast path.
async fn serve_http(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    mut stream: TcpStream,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    use tokio::io::AsyncReadExt;
    match tls {
        None => {
            let mut buf = bytes::BytesMut::with_capacity(8192);
            // Enough bytes to tell an HTTP/2 preface from an HTTP/1 request line.
            loop {
                let n = buf.len().min(H2_PREFACE.len());
                if n > 0 && buf[..n] != H2_PREFACE[..n] {
                    break;
                }
                if buf.len() >= H2_PREFACE.len() {
                    let io = Prefixed::new(buf.freeze(), stream);
                    return serve_h2(shared, conn, io, stop).await;
                }
                match tokio::time::timeout(Duration::from_secs(30), stream.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
            crate::h1::serve(shared, conn, stream, buf, stop).await;
        }
        Some(acceptor) => {
            let tls_stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => return,
            };
            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(shared, conn, tls_stream, stop).await;
            } else {
                crate::h1::serve(shared, conn, tls_stream, bytes::BytesMut::with_capacity(8192), stop).await;
            }
        }
    }
}

/// HTTP/2 through hyper; on `stop` it sends GOAWAY and lets open streams finish.
async fn serve_h2<S>(shared: Arc<Shared>, conn: Arc<ConnCtx>, io: S, mut stop: watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| crate::proxy::handle(shared.clone(), conn.clone(), req));
    let c = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(1000)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(c);
    tokio::select! {
        _ = c.as_mut() => {}
        _ = stopped(&mut stop) => {
            c.as_mut().graceful_shutdown();
            let _ = c.await;
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
