//! What every client connection carries, whichever HTTP path serves it: listener, peer, stop signal.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use tokio::sync::watch;
use wire::router_config::AffinityMode;

use crate::slots::Slot;

/// The listener a connection came in on.
#[derive(Debug)]
pub struct ListenerCtx {
    pub affinity: AffinityMode,
    pub tls: bool,
    /// The listener's drain deadline in ms (`u64::MAX`: unlimited).
    pub drain_deadline_ms: u64,
}

/// One client connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerCtx>,
    /// The peer address as an `x-forwarded-for` value, formatted once.
    pub forwarded_for: HeaderValue,
    /// What the connection is doing, for `max_connections` (and its eviction signal).
    pub slot: Arc<Slot>,
}

impl ConnCtx {
    pub fn new(peer: SocketAddr, listener: Arc<ListenerCtx>, slot: Arc<Slot>) -> ConnCtx {
        let forwarded_for = HeaderValue::try_from(peer.ip().to_canonical().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnCtx {
            peer,
            listener,
            forwarded_for,
            slot,
        }
    }

    /// `x-forwarded-proto` for requests from this connection.
    #[inline(always)]
    pub fn proto(&self) -> &'static str {
        if self.listener.tls { "https" } else { "http" }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
