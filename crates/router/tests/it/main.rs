//! Router integration tests: a real router on port 0 in front of real demo-app servers.

mod harness;

mod admin;
mod affinity;
mod desync;
mod drain_health;
mod errors;
mod exhaustion;
mod http1;
mod http2;
mod leave;
mod protocols;
mod recorder;
mod slow_clients;
mod smuggling;
mod state_files;
mod swaps;
