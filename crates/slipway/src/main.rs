//! The `slipway` binary: parse arguments, build a validated config, call the library, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The data plane allocates and frees small buffers per request; mimalloc
/// does that with less CPU than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a bad command line or config (sysexits EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit code for a failure while running.
const EX_RUNTIME: u8 = 2;

/// slipway releases new versions of live services with zero downtime.
#[derive(Debug, Parser)]
#[command(name = "slipway", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the router (the data plane) from a router config file.
    Router {
        /// Router config (TOML).
        #[arg(long, short, env = "SLIPWAY_ROUTER_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file (router config or route table) and print every problem in it.
    Validate {
        /// The file to check (.toml or .json).
        file: PathBuf,
    },
    /// Run the demo: a sample service, steady load, a canary deploy and an automatic abort.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Router { config } => {
            slipway::init_logging("info");
            let config = match router::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("slipway router: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            match router::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slipway router: {e}");
                    ExitCode::from(EX_RUNTIME)
                }
            }
        }
        Command::Validate { file } => match slipway::validate::validate(&file) {
            Ok(kind) => {
                println!("{}: valid {}", file.display(), kind.describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Demo => {
            eprintln!("slipway demo: not yet — it arrives with the control plane (issue 4)");
            ExitCode::from(EX_RUNTIME)
        }
    }
}
