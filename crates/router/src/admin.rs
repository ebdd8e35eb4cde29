//! The admin API (loopback or Unix socket, bearer token): routes, metrics, drain status, upgrades, listener sharing.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use plumbing::api::{ApiError, Authorized, HasToken, parse_json};
use plumbing::prom::{Exposition, Kind};
use serde::Deserialize;
use wire::api::RouterStatus;
use wire::metrics::{BUCKETS, Counters, bucket_upper_us};
use wire::{Problems, RouteDiff, RouteTable};

use crate::shared::{ApplyError, Shared};

type AppState = Arc<Shared>;

impl HasToken for Shared {
    fn admin_token(&self) -> &str {
        &self.token
    }
}

fn apply_error(e: ApplyError) -> ApiError {
    match e {
        ApplyError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "generation_conflict", e.to_string()),
        ApplyError::Invalid(Problems { problems }) => {
            let n = problems.len();
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_table",
                format!("the change was refused; the previous table stays in force ({n} problems)"),
            )
            .with_problems(problems)
        }
        ApplyError::Persist(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "persist_failed", e.to_string()),
    }
}

/// The admin API's routes.
pub fn router(shared: AppState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/routes", get(get_routes).put(put_routes).patch(patch_routes))
        .route("/v1/metrics", get(metrics_json))
        .route("/metrics", get(metrics_prometheus))
        .route("/v1/drain", get(drain))
        .route("/v1/upgrade", axum::routing::post(upgrade))
        .route("/v1/listeners/share", axum::routing::post(share_listeners))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin endpoint; see /v1/status, /v1/routes, /v1/metrics, /metrics, /v1/drain, /v1/upgrade, \
                 /v1/listeners/share",
            )
        })
        .with_state(shared)
}

pub fn status_of(shared: &Shared) -> RouterStatus {
    let (admin, listeners) = shared.bound.get().cloned().unwrap_or_default();
    let (ws, tcp) = shared.long_lived.counts();
    RouterStatus {
        router_id: shared.router_id.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        generation: shared.table.load().generation,
        uptime_ms: shared.clock.now_ms(),
        admin,
        listeners,
        open_websockets: ws as u64,
        open_tcp: tcp as u64,
        took_over_from: shared.took_over_from.get().copied(),
    }
}

async fn status(_: Authorized, State(s): State<AppState>) -> axum::Json<RouterStatus> {
    axum::Json(status_of(&s))
}

async fn get_routes(_: Authorized, State(s): State<AppState>) -> axum::Json<RouteTable> {
    axum::Json((*s.current()).clone())
}

#[derive(Deserialize)]
struct PutQuery {
    expect_generation: Option<u64>,
}

async fn put_routes(
    _: Authorized,
    State(s): State<AppState>,
    Query(q): Query<PutQuery>,
    body: Bytes,
) -> Result<axum::Json<wire::api::Applied>, ApiError> {
    let table: RouteTable = parse_json(&body, "route table")?;
    Ok(axum::Json(
        s.put(&table, q.expect_generation).await.map_err(apply_error)?,
    ))
}

async fn patch_routes(
    _: Authorized,
    State(s): State<AppState>,
    body: Bytes,
) -> Result<axum::Json<wire::api::Applied>, ApiError> {
    let diff: RouteDiff = parse_json(&body, "route diff")?;
    Ok(axum::Json(s.apply(&diff).await.map_err(apply_error)?))
}

async fn metrics_json(_: Authorized, State(s): State<AppState>) -> axum::Json<wire::metrics::MetricsSnapshot> {
    axum::Json(s.metrics())
}

/// Replaces this router process with a new one (see `handover`); answers
/// once the new process serves, or with the reason it could not.
async fn upgrade(
    _: Authorized,
    State(s): State<AppState>,
    body: Bytes,
) -> Result<axum::Json<wire::api::Upgraded>, ApiError> {
    use crate::handover::UpgradeError;
    let req: wire::api::UpgradeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        parse_json(&body, "upgrade request")?
    };
    let fail = |e: UpgradeError| {
        let status = match e {
            UpgradeError::Busy | UpgradeError::HandedOver(_) => StatusCode::CONFLICT,
            UpgradeError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpgradeError::NoConfigFile | UpgradeError::Binary { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_GATEWAY,
        };
        let message = format!("{e}; this router keeps serving");
        ApiError::new(status, e.code(), message)
    };
    if s.upgrading.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(fail(UpgradeError::Busy));
    }
    let tx = s.upgrades.get().ok_or(UpgradeError::Unavailable).map_err(fail)?;
    let (reply, outcome) = tokio::sync::oneshot::channel();
    tx.send((req, reply))
        .await
        .map_err(|_| fail(UpgradeError::Unavailable))?;
    match outcome.await {
        Ok(Ok(done)) => Ok(axum::Json(done)),
        Ok(Err(e)) => Err(fail(e)),
        Err(_) => Err(fail(UpgradeError::Unavailable)),
    }
}

/// Sends duplicates of the listening sockets (SCM_RIGHTS) to the Unix socket the request names, which must sit
/// directly in the router's state folder (0700: only its owner can listen there); see `wire::api::ShareRequest`.
async fn share_listeners(
    _: Authorized,
    State(s): State<AppState>,
    body: Bytes,
) -> Result<axum::Json<wire::api::SharedListeners>, ApiError> {
    let req: wire::api::ShareRequest = parse_json(&body, "share request")?;
    let dir = |p: &std::path::Path| std::fs::canonicalize(p).ok();
    let inside = req
        .socket
        .parent()
        .and_then(dir)
        .is_some_and(|d| Some(d) == dir(&s.config.state_dir));
    if !inside {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "socket_outside_state_folder",
            format!(
                "{} is not a socket directly in the router's state folder {}",
                req.socket.display(),
                s.config.state_dir.display()
            ),
        ));
    }
    let (msg, fds) = {
        let list = s.listening.lock().unwrap_or_else(|e| e.into_inner());
        let mut fds = Vec::new();
        let mut listeners = Vec::new();
        for (i, (name, addr, fd)) in list.iter().enumerate() {
            listeners.push(wire::api::HandoverSocket {
                name: name.clone(),
                addr: addr.clone(),
                fd: i,
            });
            fds.push(fd.try_clone());
        }
        let fds: Result<Vec<_>, _> = fds.into_iter().collect();
        let msg = wire::api::SharedListeners {
            format: 1,
            pid: std::process::id(),
            listeners,
        };
        (msg, fds)
    };
    let failed = |e: String| ApiError::new(StatusCode::BAD_GATEWAY, "share_failed", e);
    let fds = fds.map_err(|e| failed(format!("cannot duplicate a listening socket: {e}")))?;
    if fds.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_listening",
            "this router holds no listening socket (it is leaving)",
        ));
    }
    let sent = msg.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let stream = std::os::unix::net::UnixStream::connect(&req.socket)
            .map_err(|e| format!("cannot connect to {}: {e}", req.socket.display()))?;
        stream
            .set_write_timeout(Some(std::time::Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        plumbing::fds::send_msg(&stream, &sent, &raw).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(failed)?;
    tracing::info!(
        listeners = msg.listeners.len(),
        "shared the listening sockets with a supervisor"
    );
    Ok(axum::Json(msg))
}

async fn drain(_: Authorized, State(s): State<AppState>) -> axum::Json<wire::api::DrainStatus> {
    axum::Json(s.drain_status())
}

async fn metrics_prometheus(_: Authorized, State(s): State<AppState>) -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        plumbing::prom::CONTENT_TYPE
            .parse()
            .unwrap_or_else(|_| axum::http::HeaderValue::from_static("text/plain")),
    );
    (headers, prometheus_text(&s))
}

/// The families the router exports, with their help.
const FAMILIES: &[(&str, Kind, &str)] = &[
    (
        "slipway_route_generation",
        Kind::Gauge,
        "Generation of the route table the router serves.",
    ),
    (
        "slipway_open_websockets",
        Kind::Gauge,
        "WebSocket connections open through the router.",
    ),
    (
        "slipway_open_tcp_connections",
        Kind::Gauge,
        "Raw TCP connections open through the router.",
    ),
    (
        "slipway_requests_total",
        Kind::Counter,
        "Requests routed to an instance (unrouted: empty labels).",
    ),
    ("slipway_responses_total", Kind::Counter, "Responses by status class."),
    (
        "slipway_upstream_failures_total",
        Kind::Counter,
        "Requests an instance failed to answer.",
    ),
    ("slipway_open_requests", Kind::Gauge, "Requests in flight."),
    (
        "slipway_upstream_connections",
        Kind::Gauge,
        "Connections open to the instance.",
    ),
    (
        "slipway_long_lived_connections",
        Kind::Gauge,
        "WebSocket and TCP connections held on the instance.",
    ),
    ("slipway_bytes_total", Kind::Counter, "Body bytes by direction."),
    (
        "slipway_request_duration_seconds",
        Kind::Histogram,
        "Time to the response head.",
    ),
    (
        "slipway_instance_healthy",
        Kind::Gauge,
        "1 if the instance passes its health checks.",
    ),
];

fn write_counters(out: &mut Exposition, labels: &[(&str, &str)], c: &Counters) {
    let with = |extra: (&'static str, &'static str)| -> Vec<(&str, &str)> {
        labels.iter().copied().chain(std::iter::once(extra)).collect()
    };
    out.sample("slipway_requests_total", "", labels, c.requests);
    for (class, n) in [
        ("1xx", c.responses.c1xx),
        ("2xx", c.responses.c2xx),
        ("3xx", c.responses.c3xx),
        ("4xx", c.responses.c4xx),
        ("5xx", c.responses.c5xx),
    ] {
        out.sample("slipway_responses_total", "", &with(("class", class)), n);
    }
    out.sample("slipway_upstream_failures_total", "", labels, c.upstream_failures);
    out.sample("slipway_open_requests", "", labels, c.open_requests);
    out.sample("slipway_upstream_connections", "", labels, c.open_upstream_connections);
    out.sample("slipway_long_lived_connections", "", labels, c.open_long_lived);
    out.sample("slipway_bytes_total", "", &with(("direction", "in")), c.bytes_in);
    out.sample("slipway_bytes_total", "", &with(("direction", "out")), c.bytes_out);
    // Prometheus gets the powers of two only (exact: our buckets split at them).
    let dense = c.latency_us.to_dense();
    let mut cumulative = 0u64;
    let h = "slipway_request_duration_seconds";
    for (i, n) in dense.iter().enumerate().take(BUCKETS - 1) {
        cumulative += n;
        let upper = bucket_upper_us(i) + 1;
        if upper.is_power_of_two() && upper >= 64 {
            let le = (upper as f64 / 1e6).to_string();
            let l: Vec<(&str, &str)> = labels.iter().copied().chain([("le", le.as_str())]).collect();
            out.sample(h, "_bucket", &l, cumulative);
        }
    }
    out.sample(h, "_bucket", &with(("le", "+Inf")), c.latency_us.count);
    out.sample(
        h,
        "_sum",
        labels,
        plumbing::prom::float(c.latency_us.sum_us as f64 / 1e6),
    );
    out.sample(h, "_count", labels, c.latency_us.count);
}

/// The metrics in Prometheus text exposition format, per instance, each family's HELP and TYPE with its samples.
pub fn prometheus_text(s: &Shared) -> String {
    let snap = s.metrics();
    let mut out = Exposition::default();
    for (name, kind, help) in FAMILIES {
        out.family(name, *kind, help);
    }
    out.sample("slipway_route_generation", "", &[], snap.generation);
    let (ws, tcp) = s.long_lived.counts();
    out.sample("slipway_open_websockets", "", &[], ws);
    out.sample("slipway_open_tcp_connections", "", &[], tcp);
    for r in &snap.releases {
        for i in &r.instances {
            let labels = [("release", r.release.as_str()), ("instance", i.instance.as_str())];
            write_counters(&mut out, &labels, &i.counters);
            out.sample("slipway_instance_healthy", "", &labels, i.healthy as u8);
        }
    }
    write_counters(&mut out, &[("release", ""), ("instance", "")], &snap.unrouted);
    out.render()
}
