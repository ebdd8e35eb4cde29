//! Wire and persisted types shared by every slipway part.
//!
//! This crate is the only place where the route table, route diffs, metrics
//! snapshots, admin API messages and the raw (unvalidated) config files are
//! given a serialized shape. It does no I/O. Validation that only needs the
//! data itself (weights, ids, addresses, regexes, CIDRs, semver ranges) lives
//! here too, so the control plane can check a table before sending it and the
//! router refuses the same things for the same reasons.

pub mod agent;
pub mod api;
pub mod duration;
pub mod judge;
pub mod metrics;
pub mod problem;
pub mod router_config;
pub mod routes;
pub mod schema;
pub mod service;

pub use duration::{Deadline, HumanDuration};
pub use problem::{Problem, Problems};
pub use routes::{
    CohortRule, HealthCheck, HealthKind, Instance, Release, RouteDiff, RouteOp, RouteState, RouteTable,
    UpstreamProtocol,
};
