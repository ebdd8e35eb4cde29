//! The `slipway` binary: parse the command line, run it, and map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use slipway::cli::{Cli, EX_FAILED, EX_INTERRUPTED, EX_USAGE, Outcome, try_main};

/// The data plane allocates and frees small buffers per request; mimalloc
/// does that with less CPU than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EX_USAGE } else { 0 });
        }
    };
    let name = cli.command.name();
    match try_main(cli) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(EX_FAILED),
        Ok(Outcome::Interrupted) => ExitCode::from(EX_INTERRUPTED),
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipway {name}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
