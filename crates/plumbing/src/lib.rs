//! What every slipway process shares: files and secrets, admin APIs and their client, sockets, signals, configs.

pub mod api;
pub mod client;
pub mod config;
pub mod fds;
pub mod fs;
pub mod lifecycle;
pub mod prom;
pub mod sched;
