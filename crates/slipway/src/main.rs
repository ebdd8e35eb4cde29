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
    /// Run the router (the data plane) from a router config file, or upgrade a running one.
    Router {
        #[command(subcommand)]
        command: Option<RouterCommand>,
        /// Router config (TOML).
        #[arg(long, short, global = true, env = "SLIPWAY_ROUTER_CONFIG")]
        config: Option<PathBuf>,
        /// Take the sockets over from the old router waiting on this Unix
        /// socket (what a self-upgrade starts the new binary with).
        #[arg(long, hide = true)]
        takeover: Option<PathBuf>,
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
    /// Start what is missing of agent, router and control plane (each its own process).
    Up {
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Stop the instances, then the control plane, the router and the agent.
    Down {
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Run the control plane in the foreground (`slipway up` runs it in the background).
    Control {
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Deploy a release (added with `slipway release add`) and follow it; exits 1 if it was aborted.
    Deploy {
        release: String,
        /// canary, rolling or blue-green (default: [deploy] strategy).
        #[arg(long)]
        strategy: Option<wire::service::Strategy>,
        /// Start it and return at once.
        #[arg(long)]
        detach: bool,
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// The current release, the running deploy with its verdict, routes and instances.
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Past deploys with their outcome and verdicts.
    History {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Promote the running deploy now, skipping its remaining steps.
    Promote {
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Abort the running deploy: canary out of traffic at once, baseline untouched.
    Abort {
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Pause the running deploy (holds and checks stop counting).
    Pause {
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Resume a paused deploy.
    Resume {
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Go back to the previous release: a route swap while it is warm, else a fast redeploy.
    Rollback {
        #[arg(long, short, env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
        config: PathBuf,
    },
    /// Signed client releases: publish, keys, update, fetch, verify, serve.
    Patch {
        #[command(subcommand)]
        command: slipway::patch::PatchCommand,
    },
    /// Schema-versioned records: versions per kind, the background crawler, write gates, verify, the HTTP service.
    Records {
        #[command(subcommand)]
        command: RecordsCommand,
        /// The records database: sqlite:PATH or postgres://user@host:port/db.
        #[arg(
            long,
            global = true,
            env = "SLIPWAY_RECORDS_DB",
            default_value = "sqlite:.slipway/records.db"
        )]
        db: String,
        /// The upgraders: a TOML file of steps per kind and version.
        #[arg(long, global = true, env = "SLIPWAY_RECORDS_STEPS")]
        steps: Option<PathBuf>,
    },
    /// SQL schema changes in expand/backfill/contract steps, with a ledger, lock timeouts and a lock plan.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
        /// The database: sqlite:PATH or postgres://user@host:port/db.
        #[arg(
            long,
            global = true,
            env = "SLIPWAY_MIGRATE_DB",
            default_value = "sqlite:.slipway/app.db"
        )]
        db: String,
        /// Folder of migration files (*.toml, run in name order).
        #[arg(long, global = true, default_value = "migrations")]
        dir: PathBuf,
        /// Root whose running releases' slipway.release.toml `[database] uses` gate contract steps.
        #[arg(long, global = true, env = "SLIPWAY_ROOT", default_value = ".slipway")]
        root: PathBuf,
    },
    /// Run the demo: a sample service, steady load, a canary deploy and an automatic abort.
    Demo,
    /// Run the demo app (what the demo's instances are).
    #[command(hide = true)]
    DemoApp {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Subcommand)]
enum RouterCommand {
    /// Replace the running router with a new binary without dropping a connection: the new
    /// process takes the listening sockets over, and the old one finishes its open requests
    /// (WebSockets until the listener's drain_deadline) and exits. Same as SIGUSR2.
    Upgrade {
        /// The new binary (default: the one the router runs from).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// How long the new process gets to report ready.
        #[arg(long, default_value = "10s")]
        timeout: wire::HumanDuration,
    },
}

#[derive(Debug, Subcommand)]
enum MigrateCommand {
    /// Every step with what each statement locks, its status, and which live release blocks it.
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Run the pending steps of a phase: expand (before a new release starts), backfill, contract
    /// (after the old release is gone), or all.
    Run {
        #[arg(long, value_parser = ["expand", "backfill", "contract", "all"])]
        phase: String,
        /// Each DDL statement waits at most this long for its lock, then retries.
        #[arg(long, default_value = "500ms")]
        lock_timeout: wire::HumanDuration,
        /// Tries per statement before giving up.
        #[arg(long, default_value_t = 20)]
        tries: u32,
    },
}

/// Which crawl: a kind and its target version.
#[derive(Debug, clap::Args)]
struct CrawlId {
    #[arg(long)]
    kind: String,
    #[arg(long)]
    to: u32,
}

#[derive(Debug, Subcommand)]
enum RecordsCommand {
    /// Records per kind and version, write gates and crawls.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Upgrade every record of a kind below a version in the background, coldest first, with a
    /// progress bar. Resumes an unfinished crawl; Ctrl-C stops it resumably.
    ///
    /// The crawler runs as background work so the servers' reads keep their latency: with
    /// PostgreSQL on this host it keeps to one CPU at nice 19 and lowers its own database
    /// sessions' server processes the same way, which needs the database's OS user or
    /// CAP_SYS_NICE (it says at start whether it could).
    /// With PostgreSQL it also vacuums (and analyzes) the records table in those sessions
    /// after every tenth of the crawl and at its end, when it owns the table, so the
    /// server's autovacuum has none of the crawl's dead rows to clean at normal priority.
    Crawl {
        #[arg(long)]
        kind: String,
        /// The target version.
        #[arg(long)]
        to: u32,
        /// Records per second at most (default: as fast as the database allows).
        #[arg(long)]
        rate: Option<f64>,
        /// Aim for batches that take this long (the batch size adapts).
        #[arg(long, default_value = "200ms")]
        batch_time: wire::HumanDuration,
        /// Largest batch.
        #[arg(long, default_value_t = 5000)]
        max_batch: usize,
        /// Do not vacuum the records table during the crawl (PostgreSQL); leave it to autovacuum.
        #[arg(long)]
        no_vacuum: bool,
    },
    /// Ask a running crawl to pause between batches.
    Pause(CrawlId),
    /// Let a paused crawl go on.
    Resume(CrawlId),
    /// Check that every record decodes with every live reader version.
    Verify {
        /// A live reader, KIND=VERSION (repeat); default: each kind's newest version and its write gate.
        #[arg(long = "reader", value_parser = slipway::records::parse_reader)]
        readers: Vec<(String, u32)>,
    },
    /// Set the write gate of a kind: the highest version every live release reads ("none" clears it).
    Gate { kind: String, version: String },
    /// Serve the records API over HTTP (for apps not written in Rust).
    Serve {
        /// Loopback ip:port or unix:/path.
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: String,
        /// The bearer token's file (created on first start).
        #[arg(long, default_value = ".slipway/records.token")]
        token_file: PathBuf,
    },
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

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}

/// Loads slipway.toml (exit 64 with every problem if it is wrong), then runs `f`.
fn with_config(
    path: &std::path::Path,
    what: &str,
    f: impl FnOnce(control::ServiceConfig) -> anyhow::Result<()>,
) -> ExitCode {
    match slipway::ops::load(path) {
        Ok(cfg) => exit_with(f(cfg), what),
        Err(e) => {
            eprintln!("{what}: {e:#}");
            ExitCode::from(EX_USAGE)
        }
    }
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
        Command::Router {
            command,
            config,
            takeover,
        } => {
            let Some(config) = config else {
                eprintln!("slipway router: --config FILE (or SLIPWAY_ROUTER_CONFIG) is required");
                return ExitCode::from(EX_USAGE);
            };
            if let Some(RouterCommand::Upgrade { binary, timeout }) = command {
                return exit_with(
                    block_on(slipway::routerctl::upgrade(&config, binary, timeout)),
                    "slipway router upgrade",
                );
            }
            slipway::init_logging("info");
            let config = match router::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    if let Some(sock) = &takeover {
                        router::handover::report_failure(sock, &e.to_string());
                    }
                    eprintln!("slipway router: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            match router::run(config, takeover) {
                Ok(_) => ExitCode::SUCCESS,
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
        Command::Migrate { command, db, dir, root } => {
            let result = match command {
                MigrateCommand::Plan { json } => slipway::migrate::plan(&db, &dir, &root, json),
                MigrateCommand::Run {
                    phase,
                    lock_timeout,
                    tries,
                } => {
                    use records::migrate::Phase;
                    let phases = match phase.as_str() {
                        "expand" => vec![Phase::Expand],
                        "backfill" => vec![Phase::Expand, Phase::Backfill],
                        "contract" => vec![Phase::Contract],
                        _ => vec![Phase::Expand, Phase::Backfill, Phase::Contract],
                    };
                    slipway::migrate::run(&db, &dir, &root, &phases, lock_timeout.0, tries)
                }
            };
            exit_with(result, "slipway migrate")
        }
        Command::Records { command, db, steps } => {
            let t = slipway::records::Target { db, steps };
            let result = match command {
                RecordsCommand::Status { json } => slipway::records::status(&t, json),
                RecordsCommand::Crawl {
                    kind,
                    to,
                    rate,
                    batch_time,
                    max_batch,
                    no_vacuum,
                } => {
                    slipway::init_logging("warn");
                    slipway::records::crawl(
                        &t,
                        &slipway::records::CrawlArgs {
                            kind,
                            to,
                            rate,
                            batch_time: batch_time.0,
                            max_batch,
                            no_vacuum,
                        },
                    )
                }
                RecordsCommand::Pause(c) => slipway::records::pause(&t, &c.kind, c.to, true),
                RecordsCommand::Resume(c) => slipway::records::pause(&t, &c.kind, c.to, false),
                RecordsCommand::Verify { readers } => slipway::records::verify(&t, &readers),
                RecordsCommand::Gate { kind, version } => match version.as_str() {
                    "none" => slipway::records::gate(&t, &kind, None),
                    v => match v.parse() {
                        Ok(v) => slipway::records::gate(&t, &kind, Some(v)),
                        Err(_) => {
                            eprintln!("slipway records gate: '{v}' is neither a version number nor 'none'");
                            return ExitCode::from(EX_USAGE);
                        }
                    },
                },
                RecordsCommand::Serve { listen, token_file } => {
                    slipway::init_logging("info");
                    block_on(slipway::records::serve(&t, &listen, &token_file))
                }
            };
            exit_with(result, "slipway records")
        }
        Command::Patch { command } => exit_with(slipway::patch::run(command), "slipway patch"),
        Command::DemoApp { args } => demo_app::cli::main(std::iter::once("demo-app".into()).chain(args)),
        Command::Demo => {
            slipway::init_logging("warn");
            match block_on(async {
                tokio::select! {
                    r = slipway::demo::run() => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaning up")),
                }
            }) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("slipway demo: finished, but not as expected (see above)");
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("slipway demo: {e:#}");
                    ExitCode::from(EX_RUNTIME)
                }
            }
        }
        Command::Control { config } => {
            slipway::init_logging("info");
            let cfg = match slipway::ops::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("slipway control: {e:#}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            let exe = match slipway::ops::exe() {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("slipway control: {e:#}");
                    return ExitCode::from(EX_RUNTIME);
                }
            };
            match control::run(cfg, exe) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slipway control: {e}");
                    ExitCode::from(EX_RUNTIME)
                }
            }
        }
        Command::Up { config } => with_config(&config, "slipway up", |cfg| slipway::ops::up(&cfg)),
        Command::Down { config } => with_config(&config, "slipway down", |cfg| block_on(slipway::ops::down(&cfg))),
        Command::Deploy {
            release,
            strategy,
            detach,
            config,
        } => {
            let cfg = match slipway::ops::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("slipway deploy: {e:#}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            match block_on(slipway::ops::deploy(&cfg, &release, strategy, detach)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("slipway deploy: {e:#}");
                    ExitCode::from(EX_RUNTIME)
                }
            }
        }
        Command::Status { json, config } => with_config(&config, "slipway status", |cfg| {
            block_on(slipway::ops::status(&cfg, json))
        }),
        Command::History { json, limit, config } => with_config(&config, "slipway history", |cfg| {
            block_on(slipway::ops::history(&cfg, json, limit))
        }),
        Command::Promote { config } => with_config(&config, "slipway promote", |cfg| {
            block_on(slipway::ops::command(&cfg, "promote", None))
        }),
        Command::Abort { reason, config } => with_config(&config, "slipway abort", |cfg| {
            block_on(slipway::ops::command(
                &cfg,
                "abort",
                reason.or(Some("aborted by hand".into())),
            ))
        }),
        Command::Pause { config } => with_config(&config, "slipway pause", |cfg| {
            block_on(slipway::ops::command(&cfg, "pause", None))
        }),
        Command::Resume { config } => with_config(&config, "slipway resume", |cfg| {
            block_on(slipway::ops::command(&cfg, "resume", None))
        }),
        Command::Rollback { config } => with_config(&config, "slipway rollback", |cfg| {
            block_on(slipway::ops::rollback(&cfg))
        }),
    }
}
