//! Active health checks: one task per upstream probes it and feeds rise/fall counters.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use wire::{HealthCheck, HealthKind};

use crate::upstream::Upstream;

/// Starts the checker of `up`; it ends by itself once the upstream is
/// removed from the table and dropped.
pub fn spawn_checker(up: &Arc<Upstream>) {
    let weak = Arc::downgrade(up);
    tokio::spawn(check_loop(weak));
}

async fn check_loop(weak: Weak<Upstream>) {
    // Spread first checks so a table with many instances does not probe them all at once.
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..50))).await;
    loop {
        let interval = {
            let Some(up) = weak.upgrade() else { return };
            if up.is_removed() {
                return;
            }
            let check = up.health_check();
            if check.kind != HealthKind::None {
                let ok = tokio::time::timeout(check.timeout.0, probe(&up, &check))
                    .await
                    .unwrap_or(Some(false));
                // `None`: this process is out of descriptors; the probe says nothing of the instance.
                if let Some(ok) = ok
                    && let Some(now_ok) = up.health.active_result(ok, check.rise, check.fall)
                {
                    let (release, instance, addr) = (&up.release, &up.id, up.addr);
                    if now_ok {
                        tracing::info!(%release, %instance, %addr, "instance healthy again");
                    } else {
                        tracing::warn!(%release, %instance, %addr, "instance failed its health checks");
                    }
                }
            }
            check.interval.0
        };
        tokio::time::sleep(interval).await;
    }
}

/// One check: `None` when no connection could be had for want of local descriptors.
async fn probe(up: &Upstream, check: &HealthCheck) -> Option<bool> {
    let stream = match TcpStream::connect(up.addr).await {
        Ok(s) => s,
        Err(e) if crate::slots::is_local_exhaustion(&e) => return None,
        Err(_) => return Some(false),
    };
    if check.kind == HealthKind::Tcp {
        return Some(true);
    }
    Some(probe_http(stream, up, check).await)
}

async fn probe_http(stream: TcpStream, up: &Upstream, check: &HealthCheck) -> bool {
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await
    else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let req = http::Request::get(check.path.as_str())
        .header(http::header::HOST, up.addr.to_string())
        .header(http::header::USER_AGENT, "slipway-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::new());
    let ok = match req {
        Ok(req) => sender
            .send_request(req)
            .await
            .is_ok_and(|r| r.status().is_success() || r.status().is_redirection()),
        Err(_) => false,
    };
    conn.abort();
    ok
}
