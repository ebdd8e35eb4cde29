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
    /// Run the agent: starts, probes, drains and restarts app instances of several releases on this host.
    Agent {
        /// Agent config (TOML).
        #[arg(long, short, env = "SLIPWAY_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Manage release folders (releases/<id>/, current, previous) under a root.
    Release {
        #[command(subcommand)]
        command: ReleaseCommand,
        /// Root folder holding releases/ (the agent's root).
        #[arg(long, global = true, env = "SLIPWAY_ROOT", default_value = ".slipway")]
        root: PathBuf,
    },
    /// Show an instance's output, or every instance of a release.
    Logs {
        /// Instance id (v2-0) or release id (v2).
        target: String,
        /// Keep printing new output.
        #[arg(long, short)]
        follow: bool,
        /// Lines of history to show first.
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
        /// Root folder (the agent's root).
        #[arg(long, env = "SLIPWAY_ROOT", default_value = ".slipway")]
        root: PathBuf,
    },
    /// Run the demo: a sample service, steady load, a canary deploy and an automatic abort.
    Demo,
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Add a release from a folder (copied) or a .tar.gz/.tar.zst archive (unpacked).
    Add {
        /// Folder or archive.
        source: PathBuf,
        /// Release id, e.g. v42 or a git sha.
        #[arg(long)]
        id: String,
    },
    /// List releases with their size, running instances and current/previous marks.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove old releases, keeping the newest N (never current, previous, or one with instances).
    Prune {
        #[arg(long)]
        keep: usize,
    },
    /// Point `current` at a release (the old one becomes `previous`), atomically.
    SetCurrent { id: String },
}

/// Prints an error with its causes and picks the exit code.
fn exit_with(result: anyhow::Result<()>, what: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("{what}: {e:#}");
            ExitCode::from(EX_RUNTIME)
        }
    }
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
        Command::Agent { config } => {
            slipway::init_logging("info");
            let config = match agent::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("slipway agent: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            match agent::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slipway agent: {e}");
                    ExitCode::from(EX_RUNTIME)
                }
            }
        }
        Command::Release { command, root } => {
            let result = match command {
                ReleaseCommand::Add { source, id } => slipway::releases::add(&root, &source, &id),
                ReleaseCommand::List { json } => slipway::releases::list(&root, json),
                ReleaseCommand::Prune { keep } => slipway::releases::prune(&root, keep),
                ReleaseCommand::SetCurrent { id } => slipway::releases::set_current(&root, &id),
            };
            exit_with(result, "slipway release")
        }
        Command::Logs {
            target,
            follow,
            lines,
            root,
        } => exit_with(slipway::releases::logs(&root, &target, lines, follow), "slipway logs"),
        Command::Demo => {
            eprintln!("slipway demo: not yet — it arrives with the control plane (issue 4)");
            ExitCode::from(EX_RUNTIME)
        }
    }
}
