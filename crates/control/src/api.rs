//! The control plane's admin API (loopback, bearer token) and its OpenAPI description.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use plumbing::api::{ApiError, Authorized, HasToken, parse_json};
use rollout::Event;
use serde::Deserialize;
use wire::service::{DeployInfo, DeployList, DeployRequest, ServiceStatus};

use crate::book::CommandError;
use crate::driver::{Control, unix_ms};

impl HasToken for Control {
    fn admin_token(&self) -> &str {
        &self.token
    }
}

fn command_error(e: CommandError) -> ApiError {
    match e {
        CommandError::Refused(r) => ApiError::new(StatusCode::CONFLICT, "refused", r.0),
        CommandError::NotFound(m) => ApiError::not_found(m),
        CommandError::Journal(j) => ApiError::internal(j.to_string()),
        CommandError::Data(m) => ApiError::new(StatusCode::CONFLICT, "data", m),
        CommandError::Config(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", m),
        CommandError::Hook(m) => ApiError::new(StatusCode::CONFLICT, "hook", m),
    }
}

/// Every route, for the router and the OpenAPI document.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (
        "get",
        "/v1/status",
        "Service status: current and previous release, the deploy, instances, routes, router.",
    ),
    ("get", "/v1/deploys", "Deploy history, newest first (?limit=N)."),
    (
        "post",
        "/v1/deploys",
        "Start a deploy: {\"release\": \"v2\", \"strategy\": \"canary\"}. 409 if one is running.",
    ),
    (
        "get",
        "/v1/deploys/{id}",
        "One deploy with its phase, weights, verdicts and events.",
    ),
    (
        "post",
        "/v1/deploy/pause",
        "Pause the running deploy (holds and checks stop counting).",
    ),
    ("post", "/v1/deploy/resume", "Resume the running deploy."),
    (
        "post",
        "/v1/deploy/promote",
        "Promote the running deploy now, skipping the remaining steps.",
    ),
    (
        "post",
        "/v1/deploy/abort",
        "Abort the running deploy: canary weight to 0 at once, canary stopped. Body {\"reason\": \"...\"} (optional).",
    ),
    (
        "post",
        "/v1/rollback",
        "Back to the previous release: a route swap while it is warm, else a fast redeploy.",
    ),
    (
        "post",
        "/v1/config/reload",
        "Read slipway.toml again; route-only changes apply live.",
    ),
    (
        "get",
        "/metrics",
        "Prometheus text: the deploy's phase and progress, weights, the judge's verdict per metric and odds.",
    ),
    ("get", "/v1/openapi.json", "This description."),
];

pub(crate) fn router(c: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/deploys", get(history).post(deploy))
        .route("/v1/deploys/{id}", get(one))
        .route(
            "/v1/deploy/pause",
            post(|a: Authorized, s: State<Arc<Control>>| command(a, s, Event::Pause)),
        )
        .route(
            "/v1/deploy/resume",
            post(|a: Authorized, s: State<Arc<Control>>| command(a, s, Event::Resume)),
        )
        .route(
            "/v1/deploy/promote",
            post(|a: Authorized, s: State<Arc<Control>>| command(a, s, Event::Promote)),
        )
        .route("/v1/deploy/abort", post(abort))
        .route("/v1/rollback", post(rollback))
        .route("/v1/config/reload", post(reload))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .with_state(c)
}

async fn status(_: Authorized, State(c): State<Arc<Control>>) -> axum::Json<ServiceStatus> {
    axum::Json(c.status())
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn history(_: Authorized, State(c): State<Arc<Control>>, Query(q): Query<Limit>) -> axum::Json<DeployList> {
    axum::Json(DeployList {
        deploys: c.history(q.limit.unwrap_or(50).min(1000)),
    })
}

async fn one(
    _: Authorized,
    State(c): State<Arc<Control>>,
    Path(id): Path<i64>,
) -> Result<axum::Json<DeployInfo>, ApiError> {
    c.deploy_info(id)
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no deploy {id}")))
}

async fn deploy(
    _: Authorized,
    State(c): State<Arc<Control>>,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<DeployInfo>), ApiError> {
    let req: DeployRequest = parse_json(&body, "deploy request")?;
    wire::routes::valid_id(&req.release).map_err(|e| ApiError::bad_request(format!("release: {e}")))?;
    let info = c
        .deploy(&req.release, req.strategy, req.template)
        .await
        .map_err(command_error)?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

async fn command(_: Authorized, State(c): State<Arc<Control>>, ev: Event) -> Result<axum::Json<DeployInfo>, ApiError> {
    c.apply(ev, unix_ms()).map_err(command_error)?;
    let st = c.state();
    let d = st.deploy.as_ref().ok_or_else(|| ApiError::not_found("no deploy"))?;
    Ok(axum::Json(c.info(&st, d)))
}

#[derive(Deserialize, Default)]
struct AbortBody {
    reason: Option<String>,
}

async fn abort(a: Authorized, s: State<Arc<Control>>, body: Bytes) -> Result<axum::Json<DeployInfo>, ApiError> {
    let b: AbortBody = if body.is_empty() {
        AbortBody::default()
    } else {
        parse_json(&body, "abort request")?
    };
    let reason = b.reason.unwrap_or_else(|| "aborted by hand".into());
    command(a, s, Event::Abort { reason }).await
}

async fn rollback(_: Authorized, State(c): State<Arc<Control>>) -> Result<axum::Json<ServiceStatus>, ApiError> {
    c.rollback().await.map_err(command_error)?;
    Ok(axum::Json(c.status_now()))
}

async fn reload(_: Authorized, State(c): State<Arc<Control>>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let r = c
        .reload()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", e.to_string()))?;
    Ok(axum::Json(
        serde_json::json!({ "applied": r.applied, "needs_restart": r.needs_restart }),
    ))
}

async fn metrics(_: Authorized, State(c): State<Arc<Control>>) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, plumbing::prom::CONTENT_TYPE)],
        crate::metrics::render(&c.status()),
    )
}

async fn openapi(_: Authorized) -> axum::Json<serde_json::Value> {
    axum::Json(openapi_doc())
}

/// The OpenAPI 3.1 description of this API.
fn openapi_doc() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| serde_json::json!({}));
        let mut op = serde_json::json!({
            "summary": summary,
            "security": [{ "bearer": [] }],
            "responses": {
                "200": { "description": "OK", "content": { "application/json": {} } },
                "401": {
                    "description": "Missing or wrong token",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                }
            }
        });
        if path.contains("{id}") {
            op["parameters"] =
                serde_json::json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }]);
        }
        if *path == "/v1/deploys" && *method == "post" {
            let schema = serde_json::json!({ "$ref": "#/components/schemas/DeployRequest" });
            op["requestBody"] =
                serde_json::json!({ "required": true, "content": { "application/json": { "schema": schema } } });
            op["responses"]["201"] = serde_json::json!({ "description": "Deploy started" });
            op["responses"]["404"] = serde_json::json!({ "description": "No such release on the host" });
            op["responses"]["409"] =
                serde_json::json!({ "description": "Refused: another deploy is running, or the release is current" });
        }
        entry[*method] = op;
    }
    serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "slipway control plane", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error", "message"], "properties": {
                    "error": { "type": "string" }, "message": { "type": "string" },
                    "problems": { "type": "array", "items": { "type": "object" } } } },
                "DeployRequest": { "type": "object", "required": ["release"], "properties": {
                    "release": { "type": "string" },
                    "strategy": { "type": "string", "enum": ["canary", "rolling", "blue_green"] } } }
            }
        }
    })
}
