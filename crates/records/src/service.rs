//! The records service: the store's operations over HTTP for apps not written in Rust (get, put with etag, versions, crawls, gates, leases).
//!
//! Every route wants `Authorization: Bearer <token>`; it listens on loopback
//! or a Unix socket only. A `PUT` is always a compare-and-swap: `If-Match:
//! "<etag>"` to update, `If-None-Match: *` to create; neither is a 428.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plumbing::api::{ApiError, Authorized, HasToken, Listen};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::backend::{AnyBackend, Backend};
use crate::crawl::{self, CrawlOptions, CrawlState};
use crate::store::{Store, ValueRecord};
use crate::{Error, Expect};

struct Service {
    store: Store<AnyBackend>,
    token: String,
    running: Mutex<HashMap<(String, u32), Arc<AtomicBool>>>,
}

impl HasToken for Service {
    fn admin_token(&self) -> &str {
        &self.token
    }
}

type Shared = Arc<Service>;

fn api_error(e: Error) -> ApiError {
    let (status, code) = match &e {
        Error::UnknownKind(_) | Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        Error::UnknownVersion { .. } | Error::Type(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        Error::TooNew { .. } => (StatusCode::CONFLICT, "too_new"),
        Error::Conflict { .. } | Error::Exists { .. } => (StatusCode::PRECONDITION_FAILED, "etag_mismatch"),
        Error::Step { .. }
        | Error::NoUpgrader { .. }
        | Error::NoDowngrader { .. }
        | Error::NoDowngraderForGate { .. }
        | Error::GateTooLow { .. }
        | Error::Schema(_) => (StatusCode::UNPROCESSABLE_ENTITY, "schema"),
        Error::Decode { .. } | Error::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    };
    ApiError::new(status, code, e.to_string())
}

async fn blocking<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&Service) -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
        .map_err(api_error)
}

#[derive(Debug, Deserialize)]
struct ReaderQuery {
    reader: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct VersionQuery {
    version: Option<u32>,
}

fn etag_header(etag: i64) -> [(header::HeaderName, String); 1] {
    [(header::ETAG, format!("\"{etag}\""))]
}

async fn get_record(
    _: Authorized,
    State(s): State<Shared>,
    Path((kind, key)): Path<(String, String)>,
    Query(q): Query<ReaderQuery>,
) -> Result<Response, ApiError> {
    let (k2, key2) = (kind.clone(), key.clone());
    let rec = blocking(&s, move |s| {
        let reader = match q.reader {
            Some(r) => r,
            None => s.store.schema().kind(&k2)?.head(),
        };
        s.store.read_value(&k2, &key2, reader)
    })
    .await?
    .ok_or_else(|| ApiError::not_found(format!("{kind}/{key} does not exist")))?;
    Ok((etag_header(rec.etag), Json(rec)).into_response())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PutAnswer {
    pub etag: i64,
    /// The version it was stored at (below the one sent when the write gate asked for it).
    pub stored_version: u32,
}

fn parse_etag(v: &str) -> Option<i64> {
    v.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

async fn put_record(
    _: Authorized,
    State(s): State<Shared>,
    Path((kind, key)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
    headers: HeaderMap,
    Json(value): Json<Value>,
) -> Result<Response, ApiError> {
    let expect = match (headers.get(header::IF_MATCH), headers.get(header::IF_NONE_MATCH)) {
        (Some(m), _) => Expect::Etag(
            m.to_str()
                .ok()
                .and_then(parse_etag)
                .ok_or_else(|| ApiError::bad_request("If-Match must be an etag this service gave, e.g. \"3\""))?,
        ),
        (None, Some(n)) if n.as_bytes() == b"*" => Expect::Absent,
        _ => {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "precondition_required",
                "every write is a compare-and-swap: send If-Match: \"<etag>\" to update or If-None-Match: * to create",
            ));
        }
    };
    let rec = blocking(&s, move |s| {
        let version = match q.version {
            Some(v) => v,
            None => s.store.schema().kind(&kind)?.head(),
        };
        match expect {
            Expect::Absent => s.store.create_value(&kind, &key, value, version),
            Expect::Etag(etag) => {
                let mut rec = ValueRecord {
                    kind,
                    key,
                    version,
                    stored_version: version,
                    min_reader: version,
                    etag,
                    last_active: 0,
                    writer: String::new(),
                    value,
                    reader: version,
                };
                s.store.save_value(&mut rec).map(|()| rec)
            }
        }
    })
    .await?;
    let answer = PutAnswer {
        etag: rec.etag,
        stored_version: rec.stored_version,
    };
    Ok((etag_header(rec.etag), Json(answer)).into_response())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KindStatus {
    pub kind: String,
    pub first: u32,
    pub head: u32,
    pub gate: Option<u32>,
    pub versions: Vec<(u32, u64)>,
}

/// Records per kind and version, with each kind's known versions and gate.
pub fn kinds_status<B: Backend>(store: &Store<B>) -> Result<Vec<KindStatus>, Error> {
    let counts = store.backend().counts()?;
    let gates = store.backend().gates()?;
    let mut out: Vec<KindStatus> = store
        .schema()
        .kinds()
        .map(|k| KindStatus {
            kind: k.kind().into(),
            first: k.first(),
            head: k.head(),
            gate: gates.get(k.kind()).copied(),
            versions: Vec::new(),
        })
        .collect();
    for c in counts {
        let i = match out.iter().position(|k| k.kind == c.kind) {
            Some(i) => i,
            None => {
                out.push(KindStatus {
                    kind: c.kind.clone(),
                    first: 0,
                    head: 0,
                    gate: gates.get(&c.kind).copied(),
                    versions: Vec::new(),
                });
                out.len() - 1
            }
        };
        out[i].versions.push((c.version, c.records));
    }
    Ok(out)
}

async fn kinds(_: Authorized, State(s): State<Shared>) -> Result<Json<Vec<KindStatus>>, ApiError> {
    Ok(Json(blocking(&s, |s| kinds_status(&s.store)).await?))
}

async fn crawls(_: Authorized, State(s): State<Shared>) -> Result<Json<Vec<CrawlState>>, ApiError> {
    Ok(Json(blocking(&s, |s| Ok(s.store.backend().crawls()?)).await?))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StartCrawl {
    pub kind: String,
    pub to: u32,
    /// Records per second at most.
    pub rate: Option<f64>,
}

async fn start_crawl(
    _: Authorized,
    State(s): State<Shared>,
    Json(req): Json<StartCrawl>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = (req.kind.clone(), req.to);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let mut running = s.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.contains_key(&key) {
            return Err(ApiError::conflict(format!(
                "a crawl of {} to {} is already running",
                req.kind, req.to
            )));
        }
        running.insert(key.clone(), stop.clone());
    }
    let s2 = s.clone();
    std::thread::spawn(move || {
        let opts = CrawlOptions {
            rate: req.rate,
            ..CrawlOptions::default()
        };
        if let Err(e) = crawl::run(&s2.store, &req.kind, req.to, &opts, &stop, &mut |_| {}) {
            tracing::warn!(kind = %req.kind, to = req.to, error = %e, "crawl failed");
        }
        s2.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
    });
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"started": true}))))
}

async fn pause_crawl(
    _: Authorized,
    State(s): State<Shared>,
    Path((kind, to, action)): Path<(String, u32, String)>,
) -> Result<Json<Value>, ApiError> {
    let pause = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(ApiError::not_found(format!(
                "no crawl action '{other}' (pause or resume)"
            )));
        }
    };
    blocking(&s, move |s| crawl::request_pause(s.store.backend(), &kind, to, pause)).await?;
    Ok(Json(serde_json::json!({"paused": pause})))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GateBody {
    pub version: Option<u32>,
}

async fn gates(_: Authorized, State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let g = blocking(&s, |s| Ok(s.store.backend().gates()?)).await?;
    Ok(Json(serde_json::to_value(g).unwrap_or_default()))
}

async fn set_gate(
    _: Authorized,
    State(s): State<Shared>,
    Path(kind): Path<String>,
    Json(body): Json<GateBody>,
) -> Result<Json<GateBody>, ApiError> {
    let v = body.version;
    blocking(&s, move |s| s.store.set_gate(&kind, v)).await?;
    Ok(Json(body))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseBody {
    pub holder: String,
    #[serde(default = "default_ttl")]
    pub ttl_ms: u64,
}

fn default_ttl() -> u64 {
    30_000
}

async fn lease(
    _: Authorized,
    State(s): State<Shared>,
    Path((kind, key)): Path<(String, String)>,
    Json(body): Json<LeaseBody>,
) -> Result<Json<Value>, ApiError> {
    let held = blocking(&s, move |s| {
        s.store
            .lease(&kind, &key, &body.holder, std::time::Duration::from_millis(body.ttl_ms))
    })
    .await?;
    if held {
        Ok(Json(serde_json::json!({"held": true})))
    } else {
        Err(ApiError::conflict("another holder has this record leased"))
    }
}

async fn unlease(
    _: Authorized,
    State(s): State<Shared>,
    Path((kind, key)): Path<(String, String)>,
    Json(body): Json<LeaseBody>,
) -> Result<Json<Value>, ApiError> {
    blocking(&s, move |s| s.store.unlease(&kind, &key, &body.holder)).await?;
    Ok(Json(serde_json::json!({"held": false})))
}

/// The service's routes.
pub fn router(store: Store<AnyBackend>, token: String) -> axum::Router {
    let state = Arc::new(Service {
        store,
        token,
        running: Mutex::new(HashMap::new()),
    });
    axum::Router::new()
        .route("/v1/records/{kind}/{key}", get(get_record).put(put_record))
        .route("/v1/kinds", get(kinds))
        .route("/v1/crawls", get(crawls).post(start_crawl))
        .route("/v1/crawls/{kind}/{to}/{action}", post(pause_crawl))
        .route("/v1/gates", get(gates))
        .route("/v1/gates/{kind}", axum::routing::put(set_gate))
        .route("/v1/leases/{kind}/{key}", post(lease).delete(unlease))
        .with_state(state)
}

/// Serves the records API on `listen` until `stop`; returns the bound address.
pub async fn serve(
    store: Store<AnyBackend>,
    token: String,
    listen: &Listen,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    plumbing::api::serve(listen, router(store, token), stop).await
}
