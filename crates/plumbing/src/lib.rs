//! Service plumbing shared by every slipway process: atomic files and secrets (`fs`), admin API listeners and token checks (`api`), the client that calls those APIs (`client`), and sockets passed between processes (`fds`).

pub mod api;
pub mod client;
pub mod config;
pub mod fds;
pub mod fs;
pub mod lifecycle;
pub mod sched;
