//! The `slipway` command's library side: what each subcommand does, so `main.rs` only parses and dispatches.

pub mod demo;
pub mod migrate;
pub mod ops;
pub mod records;
pub mod releases;
pub mod routerctl;
pub mod validate;

/// Sets up logging to stderr; `RUST_LOG` overrides the default level.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
