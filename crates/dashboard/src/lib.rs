//! slipway's web dashboard, served by the control plane on its own listener: the service, live deploys with canary
//! against baseline plots, history, logs and data. Server-rendered HTML, one small script, hand-drawn SVG.
//!
//! Everything it shows comes from a [`Backend`] (the control plane implements it); after each turn of the control
//! loop the changed sections of every open live page are pushed as server-sent events. All assets are embedded.

mod auth;
mod backend;
mod data;
mod html;
mod logs;
mod pages;
mod series;
mod server;
mod svg;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

pub use backend::{Action, Backend, CommandFuture};
pub use data::{CrawlPhase, CrawlView, DataStatus, KindCounts, LedgerStep, StepPhase, StepState};
pub use series::Track as Plot;

/// The dashboard's routes (for tests and for serving on a listener of one's own).
pub fn app(backend: Arc<dyn Backend>, stop: watch::Receiver<bool>) -> (axum::Router, tokio::task::JoinHandle<()>) {
    let shared = server::Shared::new(backend, stop.clone());
    let watcher = tokio::spawn(watch_loop(shared.clone(), stop));
    (server::router(shared), watcher)
}

/// Serves the dashboard on `addr` until `stop` turns true; returns the bound address and the tasks.
pub async fn serve(
    addr: SocketAddr,
    backend: Arc<dyn Backend>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, Vec<tokio::task::JoinHandle<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let (router, watcher) = app(backend, stop.clone());
    let mut until = stop;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = until.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok((bound, vec![server, watcher]))
}

/// After every loop turn: the recorder takes the status in, and live pages are told.
async fn watch_loop(shared: Arc<server::Shared>, mut stop: watch::Receiver<bool>) {
    let mut changes = shared.backend.changes();
    shared.observe();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let s = shared.clone();
        // The status is read under the control plane's locks: off the async threads.
        if tokio::task::spawn_blocking(move || s.observe()).await.is_err() {
            return;
        }
    }
}
