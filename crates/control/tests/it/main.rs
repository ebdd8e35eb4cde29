//! Control plane end-to-end tests: real agent and router processes, real demo-app instances, load through the router.

mod harness;

mod auth;
mod chaos;
mod data;
mod deploys;
mod faults;
mod longlived;
mod restart;
