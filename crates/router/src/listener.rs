//! Public listeners: binding, accept loops, TLS with ALPN, HTTP/1.1 + HTTP/2 serving, and raw TCP proxying.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use wire::router_config::{AffinityMode, ListenerKind};

use crate::config::Listener;
use crate::proxy::{ConnCtx, ListenerCtx};
use crate::shared::Shared;
use crate::table::{Choice, How, Inputs, RequestView, bucket_of};

/// Binds `addr` with the options a proxy wants (address reuse, a deep backlog).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    b.http2().timer(TokioTimer::new()).max_concurrent_streams(1000);
    b
}

/// Accepts on one listener until `stop` turns true. HTTP connections are
/// registered with `graceful` so shutdown can close them between requests.
pub async fn accept_loop(
    shared: Arc<Shared>,
    cfg: Listener,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
) {
    let ctx = Arc::new(ListenerCtx {
        name: cfg.name.clone(),
        affinity: cfg.affinity,
        tls: cfg.tls.is_some(),
    });
    let tls = cfg.tls.clone().map(TlsAcceptor::from);
    let builder = http_builder();
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
        match cfg.kind {
            ListenerKind::Http => {
                let conn = Arc::new(ConnCtx {
                    peer,
                    listener: ctx.clone(),
                });
                serve_http(
                    shared.clone(),
                    conn,
                    stream,
                    tls.clone(),
                    builder.clone(),
                    graceful.clone(),
                );
            }
            ListenerKind::Tcp => {
                tokio::spawn(proxy_tcp(shared.clone(), stream, peer, cfg.affinity));
            }
        }
    }
}

fn serve_http(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    graceful: Arc<GracefulShutdown>,
) {
    let svc = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| crate::proxy::handle(shared.clone(), conn.clone(), req))
    };
    tokio::spawn(async move {
        match tls {
            None => {
                let c = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let _ = graceful.watch(c.into_owned()).await;
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
                let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let builder = if h2 { builder.http2_only() } else { builder.http1_only() };
                let c = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
                let _ = graceful.watch(c.into_owned()).await;
            }
        }
    });
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
async fn proxy_tcp(shared: Arc<Shared>, mut client: TcpStream, peer: SocketAddr, affinity: AffinityMode) {
    let table = shared.table.load_full();
    let bucket = (affinity == AffinityMode::ClientIp).then(|| {
        let ip = peer.ip().to_canonical();
        match ip {
            std::net::IpAddr::V4(v) => bucket_of(&v.octets()),
            std::net::IpAddr::V6(v) => bucket_of(&v.octets()),
        }
    });
    let inputs = Inputs {
        bucket,
        random: fastrand::u64(..),
        ..Default::default()
    };
    let refuse = |why: &str| {
        tracing::warn!(%peer, reason = why, "tcp connection refused");
        shared.unrouted.request_started();
        shared.unrouted.response(503, 0);
        shared.unrouted.request_done();
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
    stats.long_lived_opened();
    stats.connection_opened();
    if let Ok((to_up, to_client)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        stats.bytes_in(to_up);
        stats.bytes_out(to_client);
    }
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
