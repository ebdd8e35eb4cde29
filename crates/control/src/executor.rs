//! The thin executor: carries the planner's actions out against one host's agent and router.
//! What they answer goes back to the planner as observations, until nothing is left to do this turn.

use plumbing::client::ClientError;
use wire::agent::{InstanceList, NotifyDrainRequest, ReleaseList, SetCurrentRequest, StartRequest, StopRequest};
use wire::api::{Applied, DrainStatus, RouterStatus};
use wire::metrics::MetricsSnapshot;

use crate::planner::{
    self, Action, AgentCall, Answer, DrainView, HostDesired, HostObserved, Memory, RouterCall, Traffic,
};
use crate::reach::Reach;

/// Rounds of plan → act → learn in one turn; a round needs the answers of the one before.
const ROUNDS: usize = 8;

/// Why a call did not happen, or its outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The part answered that what the call names does not exist (a release not on the host).
    NotFound(String),
    /// Anything else: unreachable, refused, no answer.
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotFound(m) | CallError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> CallError {
        match &e {
            ClientError::Api { status, .. } if status.as_u16() == 404 => CallError::NotFound(e.to_string()),
            _ => CallError::Failed(e.to_string()),
        }
    }
}

/// A host's agent and router, as the executor calls them.
pub(crate) trait Host {
    async fn call(&self, action: &Action) -> Result<Answer, CallError>;
}

/// How a turn went.
#[derive(Debug, Default, Clone)]
pub(crate) struct Turn {
    /// The router confirmed the table for what the host should run, as the turn left it.
    pub confirmed: bool,
    /// Releases the agent could not start because it does not have them, with its answer.
    pub missing: Vec<(String, String)>,
}

/// Plans, acts and learns until the host has nothing left to do, or a call failed: a failed call leaves the
/// world unknown (it may have happened), so the turn ends with its round and the next one looks again.
pub(crate) async fn turn<H: Host>(
    host: &H,
    want: &HostDesired,
    mut seen: HostObserved,
    memory: &mut Memory,
    now: u64,
) -> Turn {
    let mut out = Turn::default();
    for _ in 0..ROUNDS {
        let actions = planner::plan(want, &seen, memory, now);
        if actions.is_empty() {
            break;
        }
        let mut failed = false;
        for a in &actions {
            match host.call(a).await {
                Ok(answer) => planner::learn(a, answer, &mut seen, memory, now),
                Err(e) => {
                    failed = true;
                    planner::forget(a, memory);
                    if let (Action::Agent(AgentCall::Start { release, .. }), CallError::NotFound(m)) = (a, &e) {
                        out.missing.push((release.clone(), m.clone()));
                    }
                }
            }
        }
        if failed {
            break;
        }
    }
    out.confirmed = memory.table.as_ref() == Some(&planner::table_for(want, &seen));
    out
}

/// The one place that reads the router's drain state: into the planner's own terms.
fn drain_view(d: &DrainStatus) -> DrainView {
    d.instances
        .iter()
        .map(|i| {
            let out = matches!(i.state, wire::api::DrainState::Down | wire::api::DrainState::Removed);
            let traffic = Traffic {
                out,
                open: i.open_requests + i.open_long_lived,
            };
            ((i.release.clone(), i.instance.clone()), traffic)
        })
        .collect()
}

/// This host's agent and router, through their admin APIs (found again when they restart elsewhere).
#[derive(Debug)]
pub(crate) struct Parts {
    pub agent: Reach,
    pub router: Reach,
}

impl Parts {
    pub async fn instances(&self) -> Result<InstanceList, ClientError> {
        self.agent.get("/v1/instances").await
    }

    pub async fn releases(&self) -> Result<ReleaseList, ClientError> {
        self.agent.get("/v1/releases").await
    }

    pub async fn metrics(&self) -> Result<MetricsSnapshot, ClientError> {
        self.router.get("/v1/metrics").await
    }

    pub async fn router_status(&self) -> Result<RouterStatus, ClientError> {
        self.router.get("/v1/status").await
    }

    async fn to_agent(&self, call: &AgentCall) -> Result<Answer, ClientError> {
        let listed = |l: InstanceList| Answer::Instances(l.instances);
        match call {
            AgentCall::Start {
                release,
                group,
                count,
                template,
            } => {
                let req = StartRequest {
                    release: release.clone(),
                    count: *count,
                    group: group.clone(),
                    template: template.as_deref().cloned(),
                };
                let l: InstanceList = self.agent.post("/v1/instances", &req).await?;
                for i in &l.instances {
                    tracing::info!(instance = %i.id, release = %i.release, addr = %i.addr, "instance started");
                }
                Ok(listed(l))
            }
            AgentCall::NotifyDrain { ids } => {
                let req = NotifyDrainRequest { ids: ids.clone() };
                let l = self.agent.post("/v1/instances/notify-drain", &req).await?;
                tracing::info!(instances = ?ids, "drain started; instances told through their drain hook");
                Ok(listed(l))
            }
            AgentCall::Stop { ids } => {
                let req = StopRequest {
                    ids: ids.clone(),
                    ..Default::default()
                };
                let l = self.agent.post("/v1/instances/stop", &req).await?;
                tracing::info!(instances = ?ids, "instances drained from the router; stopping them");
                Ok(listed(l))
            }
            AgentCall::SetCurrent { release } => {
                let req = SetCurrentRequest {
                    release: release.clone(),
                };
                let _: ReleaseList = self.agent.post("/v1/releases/current", &req).await?;
                Ok(Answer::Done)
            }
        }
    }

    async fn to_router(&self, call: &RouterCall) -> Result<Answer, ClientError> {
        match call {
            RouterCall::PutRoutes { table, .. } => {
                let a: Applied = self.router.call(http::Method::PUT, "/v1/routes", Some(table)).await?;
                tracing::info!(generation = a.generation, "routes applied");
                Ok(Answer::Applied {
                    generation: a.generation,
                })
            }
            RouterCall::ReadDrain => Ok(Answer::Drain(drain_view(&self.router.get("/v1/drain").await?))),
        }
    }
}

impl Host for Parts {
    async fn call(&self, action: &Action) -> Result<Answer, CallError> {
        let answer = match action {
            Action::Agent(c) => self.to_agent(c).await,
            Action::Router(c) => self.to_router(c).await,
        };
        answer.map_err(|e| {
            match action {
                Action::Agent(AgentCall::Start { release, .. }) => {
                    tracing::error!(%release, error = %e, "cannot start instances")
                }
                Action::Agent(AgentCall::NotifyDrain { .. }) => {
                    tracing::warn!(error = %e, "cannot notify draining instances")
                }
                Action::Agent(AgentCall::Stop { .. }) => tracing::error!(error = %e, "cannot stop instances"),
                Action::Agent(AgentCall::SetCurrent { release }) => {
                    tracing::warn!(%release, error = %e, "cannot point the current link at the release")
                }
                Action::Router(RouterCall::PutRoutes { .. }) => tracing::error!(error = %e, "cannot apply routes"),
                Action::Router(RouterCall::ReadDrain) => {
                    tracing::warn!(error = %e, "cannot read the router's drain state")
                }
            }
            CallError::from(e)
        })
    }
}
