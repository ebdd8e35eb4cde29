//! The records service: the store's operations over HTTP, for apps not written in Rust.
//!
//! Every route wants `Authorization: Bearer <token>`; it listens on loopback
//! or a Unix socket only. A `PUT` is always a compare-and-swap: `If-Match:
//! "<etag>"` to update, `If-None-Match: *` to create; neither is a 428, both
//! a 400. Every refusal is a 4xx with a JSON reason (`wire::api::ErrorBody`),
//! decided before anything is stored; a 5xx is a fault of this process or its
//! database (`storage`, `worker_failed`).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use plumbing::api::{ApiError, Authorized, HasToken, Listen, parse_json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use wire::Problem;

use crate::backend::{AnyBackend, Backend};
use crate::crawl::{self, CrawlOptions, CrawlState};
use crate::store::{Store, ValueRecord};
use crate::{Error, Expect, limits};

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

/// The answer to an error of the records layer: a 4xx for what the request got wrong, a 5xx for a fault here.
fn api_error(e: Error) -> ApiError {
    let (status, code) = match &e {
        Error::UnknownKind(_) | Error::NotFound { .. } | Error::NoCrawl { .. } => (StatusCode::NOT_FOUND, "not_found"),
        Error::UnknownVersion { .. } | Error::Type(_) | Error::Invalid { .. } => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        Error::Payload { .. } => (StatusCode::BAD_REQUEST, "invalid_payload"),
        Error::TooNew { .. } => (StatusCode::CONFLICT, "too_new"),
        Error::Conflict { .. } | Error::Exists { .. } => (StatusCode::PRECONDITION_FAILED, "etag_mismatch"),
        Error::Step { .. }
        | Error::NoUpgrader { .. }
        | Error::NoDowngrader { .. }
        | Error::NoDowngraderForGate { .. }
        | Error::GateTooLow { .. }
        | Error::Schema(_) => (StatusCode::UNPROCESSABLE_ENTITY, "schema"),
        Error::Worker(_) => (StatusCode::INTERNAL_SERVER_ERROR, "worker_failed"),
        Error::Decode { .. } | Error::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
    };
    let problems = match &e {
        Error::Payload { problems, .. } => problems.iter().map(|p| Problem::new("value", p)).collect(),
        _ => Vec::new(),
    };
    ApiError::new(status, code, e.to_string()).with_problems(problems)
}

/// Runs `f` on the blocking pool; a panic there is a worker failure (500), not the request's fault.
async fn blocking<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&Service) -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| api_error(Error::Worker(format!("the request's worker failed: {e}"))))?
        .map_err(api_error)
}

fn bad_path(r: PathRejection) -> ApiError {
    ApiError::bad_request(format!("bad path: {}", r.body_text()))
}

fn bad_query(r: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query: {}", r.body_text()))
}

fn bad_body(r: BytesRejection) -> ApiError {
    let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "bad_body"
    };
    ApiError::new(
        r.status(),
        code,
        format!(
            "{} (a body has at most {} bytes)",
            r.body_text(),
            limits::MAX_BODY_BYTES
        ),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReaderQuery {
    reader: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    version: Option<u32>,
}

fn etag_header(etag: i64) -> [(header::HeaderName, String); 1] {
    [(header::ETAG, format!("\"{etag}\""))]
}

/// The newest version of a kind (checking the kind's name first, so a bad one is never echoed back long).
fn head(s: &Service, kind: &str) -> Result<u32, Error> {
    limits::kind(kind)?;
    Ok(s.store.schema().kind(kind)?.head())
}

async fn get_record(
    _: Authorized,
    State(s): State<Shared>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ReaderQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, key)) = path.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let (k2, key2) = (kind.clone(), key.clone());
    let rec = blocking(&s, move |s| {
        let reader = match q.reader {
            Some(r) => r,
            None => head(s, &k2)?,
        };
        s.store.read_value(&k2, &key2, reader)
    })
    .await?
    .ok_or_else(|| ApiError::not_found(format!("{kind}/{key} does not exist")))?;
    Ok((etag_header(rec.etag), Json(rec)).into_response())
}

#[derive(Debug, Serialize, Deserialize)]
struct PutAnswer {
    etag: i64,
    /// The version it was stored at (below the one sent when the write gate asked for it).
    stored_version: u32,
}

fn parse_etag(v: &str) -> Option<i64> {
    v.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

/// What a `PUT` expects to find, from exactly one of `If-Match` and `If-None-Match: *`.
fn expectation(headers: &HeaderMap) -> Result<Expect, ApiError> {
    match (headers.get(header::IF_MATCH), headers.get(header::IF_NONE_MATCH)) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "send If-Match or If-None-Match, not both: a write either updates or creates",
        )),
        (Some(m), None) => m
            .to_str()
            .ok()
            .and_then(parse_etag)
            .map(Expect::Etag)
            .ok_or_else(|| ApiError::bad_request("If-Match must be an etag this service gave, e.g. \"3\"")),
        (None, Some(n)) if n.as_bytes() == b"*" => Ok(Expect::Absent),
        (None, Some(_)) => Err(ApiError::bad_request(
            "If-None-Match must be * (create only if the record does not exist)",
        )),
        (None, None) => Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "every write is a compare-and-swap: send If-Match: \"<etag>\" to update or If-None-Match: * to create",
        )),
    }
}

async fn put_record(
    _: Authorized,
    State(s): State<Shared>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<VersionQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Path((kind, key)) = path.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let expect = expectation(&headers)?;
    let value: Value = parse_json(&body.map_err(bad_body)?, "record (a JSON object)")?;
    let rec = blocking(&s, move |s| {
        let version = match q.version {
            Some(v) => v,
            None => head(s, &kind)?,
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

/// A kind as `records status` and `GET /v1/kinds` show it.
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartCrawl {
    kind: String,
    to: u32,
    /// Records per second at most.
    rate: Option<f64>,
}

/// Removes a crawl from the running ones when its thread ends, however it ends.
struct Running {
    service: Shared,
    key: (String, u32),
}

impl Drop for Running {
    fn drop(&mut self) {
        self.service
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Starts a crawl in the background after checking, up front, that it can run (else a 4xx, nothing started).
async fn start_crawl(
    _: Authorized,
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: StartCrawl = parse_json(&body.map_err(bad_body)?, "crawl request {\"kind\", \"to\", \"rate\"}")?;
    let opts = CrawlOptions {
        rate: req.rate,
        ..CrawlOptions::default()
    };
    let (kind, to, checked) = (req.kind.clone(), req.to, opts.clone());
    blocking(&s, move |s| crawl::check(&s.store, &kind, to, &checked)).await?;
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
    let guard = Running { service: s, key };
    // Saved before the answer, so `GET /v1/crawls` shows this crawl (not an older one) as soon as it is accepted.
    let (kind, to, begun) = (req.kind.clone(), req.to, opts.clone());
    blocking(&guard.service, move |s| {
        crawl::begin(&s.store, s.store.backend(), &kind, to, &begun)
    })
    .await?;
    std::thread::spawn(move || {
        let store = &guard.service.store;
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crawl::run(store, &req.kind, req.to, &opts, &stop, &mut |_| {})
        }))
        .unwrap_or_else(|_| Err(Error::Worker("the crawl panicked".into())));
        if let Err(e) = ran {
            tracing::warn!(kind = %req.kind, to = req.to, error = %e, "crawl failed");
        }
        drop(guard);
    });
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"started": true}))))
}

async fn pause_crawl(
    _: Authorized,
    State(s): State<Shared>,
    path: Result<Path<(String, u32, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((kind, to, action)) = path.map_err(bad_path)?;
    let pause = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return Err(ApiError::not_found("no such crawl action (pause or resume)")),
    };
    blocking(&s, move |s| crawl::request_pause(s.store.backend(), &kind, to, pause)).await?;
    Ok(Json(serde_json::json!({"paused": pause})))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateBody {
    /// `null` clears the gate; the field must be there either way.
    version: Option<u32>,
}

async fn gates(_: Authorized, State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let g = blocking(&s, |s| Ok(s.store.backend().gates()?)).await?;
    Ok(Json(serde_json::to_value(g).unwrap_or_default()))
}

async fn set_gate(
    _: Authorized,
    State(s): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<GateBody>, ApiError> {
    let Path(kind) = path.map_err(bad_path)?;
    const WHAT: &str = "gate {\"version\": N or null}";
    let raw: Value = parse_json(&body.map_err(bad_body)?, WHAT)?;
    if raw.get("version").is_none() {
        return Err(ApiError::bad_request(
            "the body needs \"version\": a number sets the gate, null clears it",
        ));
    }
    let body: GateBody = serde_json::from_value(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("body is not a valid {WHAT}: {e}"),
        )
    })?;
    let v = body.version;
    blocking(&s, move |s| s.store.set_gate(&kind, v)).await?;
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseBody {
    holder: String,
    /// 1 ms to `MAX_LEASE`.
    #[serde(default = "default_ttl")]
    ttl_ms: u64,
}

fn default_ttl() -> u64 {
    30_000
}

async fn lease(
    _: Authorized,
    State(s): State<Shared>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((kind, key)) = path.map_err(bad_path)?;
    let body: LeaseBody = parse_json(&body.map_err(bad_body)?, "lease {\"holder\", \"ttl_ms\"}")?;
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
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((kind, key)) = path.map_err(bad_path)?;
    let body: LeaseBody = parse_json(&body.map_err(bad_body)?, "lease {\"holder\"}")?;
    blocking(&s, move |s| s.store.unlease(&kind, &key, &body.holder)).await?;
    Ok(Json(serde_json::json!({"held": false})))
}

/// The service's routes.
pub(crate) fn router(store: Store<AnyBackend>, token: String) -> axum::Router {
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
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_failure_is_a_500_and_what_the_request_got_wrong_is_a_4xx() {
        let worker = api_error(Error::Worker("the crawler's reader thread panicked: boom".into()));
        assert_eq!(
            (worker.status, worker.body.error.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "worker_failed")
        );
        assert!(worker.body.message.contains("boom"), "{}", worker.body.message);
        let typed = api_error(Error::Type("x".into()));
        assert_eq!(typed.status, StatusCode::BAD_REQUEST);
        let payload = api_error(Error::Payload {
            kind: "player".into(),
            version: 1,
            problems: vec!["field 'gold' should be an int but is a string".into()],
        });
        assert_eq!(payload.status, StatusCode::BAD_REQUEST);
        assert_eq!(payload.body.problems.len(), 1);
    }
}
