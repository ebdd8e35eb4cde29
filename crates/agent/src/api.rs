//! The agent API (loopback or a unix socket, bearer token).
//! It lists, starts, notifies (drain hook) and stops instances, lists releases and switches `current`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use plumbing::api::{ApiError, Authorized, HasToken, parse_json};
use serde::{Deserialize, Serialize};
use wire::agent::{
    InstanceInfo, InstanceList, NotifyDrainRequest, ReleaseList, SetCurrentRequest, StartRequest, StopRequest,
};

use crate::supervisor::{Agent, AgentError};

impl HasToken for Agent {
    fn admin_token(&self) -> &str {
        &self.token
    }
}

fn agent_error(e: AgentError) -> ApiError {
    match e {
        AgentError::NoRelease(_) | AgentError::NoInstance(_) => ApiError::not_found(e.to_string()),
        AgentError::BadRelease { .. } => ApiError::bad_request(e.to_string()),
        AgentError::Port(_) | AgentError::Io { .. } => ApiError::internal(e.to_string()),
    }
}

/// Status of the agent itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub root: String,
    pub instances: usize,
    pub current: Option<String>,
}

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/instances", get(list).post(start))
        .route("/v1/instances/stop", post(stop))
        .route("/v1/instances/notify-drain", post(notify_drain))
        .route("/v1/instances/{id}", get(one))
        .route("/v1/releases", get(releases))
        .route("/v1/releases/current", post(set_current))
        .fallback(|| async {
            ApiError::not_found("no such agent endpoint; see /v1/status, /v1/instances, /v1/releases")
        })
        .with_state(agent)
}

async fn status(_: Authorized, State(a): State<Arc<Agent>>) -> axum::Json<AgentStatus> {
    axum::Json(AgentStatus {
        pid: std::process::id(),
        root: a.config.root.display().to_string(),
        instances: a.list().len(),
        current: a.store.link("current"),
    })
}

async fn list(_: Authorized, State(a): State<Arc<Agent>>) -> axum::Json<InstanceList> {
    axum::Json(InstanceList { instances: a.list() })
}

async fn one(
    _: Authorized,
    State(a): State<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<axum::Json<InstanceInfo>, ApiError> {
    a.get(&id)
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(format!("no instance {id}")))
}

async fn start(_: Authorized, State(a): State<Arc<Agent>>, body: Bytes) -> Result<axum::Json<InstanceList>, ApiError> {
    let req: StartRequest = parse_json(&body, "start request")?;
    if req.count == 0 || req.count > 256 {
        return Err(ApiError::bad_request("count must be between 1 and 256"));
    }
    if let Some(g) = &req.group
        && let Err(e) = wire::routes::valid_id(g)
    {
        return Err(ApiError::bad_request(format!("group: {e}")));
    }
    let spec = match &req.template {
        None => None,
        Some(t) => Some(Arc::new(crate::config::Spec::new(t).map_err(|p| {
            let words: Vec<String> = p.iter().map(|p| p.to_string()).collect();
            ApiError::bad_request(format!("template: {}", words.join("; ")))
        })?)),
    };
    let instances = a
        .start(&req.release, req.count, req.group.as_deref(), spec)
        .map_err(agent_error)?;
    Ok(axum::Json(InstanceList { instances }))
}

async fn stop(_: Authorized, State(a): State<Arc<Agent>>, body: Bytes) -> Result<axum::Json<InstanceList>, ApiError> {
    let req: StopRequest = parse_json(&body, "stop request")?;
    if req.ids.is_empty() && req.release.is_none() {
        return Err(ApiError::bad_request("name instances in \"ids\" or a \"release\""));
    }
    let instances = a
        .stop(&req.ids, req.release.as_deref(), req.deadline.map(|d| d.as_millis()))
        .map_err(agent_error)?;
    Ok(axum::Json(InstanceList { instances }))
}

async fn notify_drain(
    _: Authorized,
    State(a): State<Arc<Agent>>,
    body: Bytes,
) -> Result<axum::Json<InstanceList>, ApiError> {
    let req: NotifyDrainRequest = parse_json(&body, "notify-drain request")?;
    let instances = a.notify_drain(&req.ids).await.map_err(agent_error)?;
    Ok(axum::Json(InstanceList { instances }))
}

async fn releases(_: Authorized, State(a): State<Arc<Agent>>) -> Result<axum::Json<ReleaseList>, ApiError> {
    let releases = a
        .store
        .list(&|r| a.running(r))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(axum::Json(ReleaseList { releases }))
}

async fn set_current(
    _: Authorized,
    State(a): State<Arc<Agent>>,
    body: Bytes,
) -> Result<axum::Json<ReleaseList>, ApiError> {
    let req: SetCurrentRequest = parse_json(&body, "{\"release\": ...}")?;
    a.store
        .set_current(&req.release)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    releases(Authorized, State(a)).await
}
