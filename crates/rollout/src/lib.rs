//! The deploy state machine: canary, rolling and blue-green deploys, aborts, rollbacks, retirement.
//! A pure function of events and time.
//!
//! `Service::on(event, now)` changes the state and returns what happened as typed `Transition`s, and whether the
//! state changed; `Service::desired()` derives what should exist (instance groups and their counts) and how traffic
//! should be routed. The control plane journals every event that changed the state *before* acting, and acts by
//! reconciling the world towards `desired()` — an idempotent step, so a control plane killed at any point replays
//! the journal through this same function and carries on without starting anything twice.
//!
//! `Event`, with the `Plan` and `GroupObs` it carries, is serialized: the control plane's journal records are events.

mod advance;
mod deploy;
mod desired;
mod event;
mod service;
mod transition;

#[cfg(test)]
mod tests;

pub use deploy::{Deploy, Phase, RetireMode, Retiring};
pub use desired::{AnalysisSpec, Desired, GroupSpec, RouteSpec};
pub use event::{Event, GroupObs, Plan};
pub use service::{Hold, Refused, Service, Update};
pub use transition::{StepVerdict, Transition};
