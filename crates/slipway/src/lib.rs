//! The `slipway` command's library side: what each subcommand does, so `main.rs` only parses and dispatches.

pub mod cli;
pub mod dashboard;
pub mod demo;
pub mod host;
pub mod logs;
pub mod migrate;
pub mod ops;
pub mod patch;
pub mod records;
pub mod releases;
pub mod routerctl;
pub mod validate;
pub mod watch;

/// How log lines are written (`SLIPWAY_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    Text,
    /// One JSON object per line (time, level, message, fields).
    Json,
}

impl LogFormat {
    /// From `SLIPWAY_LOG_FORMAT` (`text` or `json`; text when unset or unknown).
    pub fn from_env() -> LogFormat {
        match std::env::var("SLIPWAY_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            _ => LogFormat::Text,
        }
    }
}

/// Sets up logging to stderr; `RUST_LOG` overrides the default level, `SLIPWAY_LOG_FORMAT=json` writes JSON
/// lines. Colour only goes to a terminal, never into a log file.
pub fn init_logging(default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match LogFormat::from_env() {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}

/// A progress bar on stdout when it is a terminal (`None` otherwise: print
/// plain lines). `template` is indicatif's, e.g. `"{bar:30} {pos}/{len} {msg}"`
/// after the spinner and elapsed time.
pub fn progress_bar(len: u64, template: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(len);
        b.set_style(
            indicatif::ProgressStyle::with_template(&format!("{{spinner}} [{{elapsed_precise}}] {template}"))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    })
}
