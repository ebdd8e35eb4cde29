//! Service plumbing shared by every slipway process: atomic files and secrets (`fs`), admin API listeners and token checks (`api`), and the client that calls those APIs (`client`).

pub mod api;
pub mod client;
pub mod fs;
