//! The command line: parse it, run the subcommand, and say which exit code the outcome gets.

mod args;

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

pub use args::{
    Cli, Command, ConfigCommand, ConfigFileArg, CrawlId, GateVersion, HostCommand, MigrateCommand, MigratePhase,
    RecordsCommand, ReleaseCommand, RouterCommand, ServiceFile,
};

/// Exit code of a deploy that was aborted or failed, or a demo that went wrong.
pub const EX_FAILED: u8 = 1;
/// Exit code of a failure while running.
pub const EX_RUNTIME: u8 = 2;
/// Exit code of a bad command line or config (sysexits EX_USAGE).
pub const EX_USAGE: u8 = 64;
/// Exit code when the control plane (or the part asked) is not running (sysexits EX_UNAVAILABLE).
pub const EX_UNAVAILABLE: u8 = 69;
/// Exit code after Ctrl-C stopped following a deploy (128 + SIGINT, as shells say).
pub const EX_INTERRUPTED: u8 = 130;

/// How a command that ran to its end came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it was asked.
    Done,
    /// It ran, and what it watched did not succeed (an aborted deploy).
    Failed,
    /// Ctrl-C stopped it following a deploy; the deploy goes on.
    Interrupted,
}

/// Why a command did not run to its end; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or a config file is wrong.
    #[error("{0:#}")]
    Usage(anyhow::Error),
    /// Something failed while running.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
    /// What it needs to talk to is not running (`slipway up` starts it).
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EX_USAGE,
            CliError::Runtime(_) => EX_RUNTIME,
            CliError::Unavailable(_) => EX_UNAVAILABLE,
        }
    }

    /// A closed pipe (`slipway logs | head`) is how such a command ends, not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        let CliError::Runtime(e) = self else { return false };
        e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        })
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        let unreachable = e.chain().any(|c| {
            c.is::<crate::ops::NotRunning>()
                || matches!(
                    c.downcast_ref::<plumbing::client::ClientError>(),
                    Some(plumbing::client::ClientError::Connect { .. })
                )
        });
        if unreachable {
            CliError::Unavailable(e)
        } else {
            CliError::Runtime(e)
        }
    }
}

/// Runs one parsed command line.
pub fn try_main(cli: Cli) -> Result<Outcome, CliError> {
    match cli.command {
        Command::Router {
            command,
            config,
            takeover,
        } => router(command, config.as_deref(), takeover),
        Command::Validate { file } => validate(&file),
        Command::Agent { config } => {
            crate::init_logging("info");
            let mut config = agent::Config::load(&config).map_err(usage)?;
            config.stamper = Some(crate::ops::exe()?);
            agent::run(config).map_err(runtime)?;
            done()
        }
        Command::Release { command, root } => release(command, &root),
        Command::Logs {
            target,
            follow,
            lines,
            since,
            json,
            all,
            root,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            let since = since
                .map(|s| crate::logs::parse_since(&s, now))
                .transpose()
                .map_err(|e| usage(anyhow::anyhow!("--since: {e}")))?;
            let args = crate::logs::LogsArgs {
                target,
                follow,
                lines,
                since,
                json,
                all,
            };
            done_if(crate::logs::logs(&root, &args))
        }
        Command::Migrate { command, db, dir, root } => migrate(command, &db, &dir, &root),
        Command::Records { command, db, steps } => records(command, crate::records::Target { db, steps }),
        Command::LogStamp => done_if(log_stamp()),
        Command::DemoApp { args } => {
            let code = demo_app::cli::main(std::iter::once("demo-app".into()).chain(args));
            if code == ExitCode::SUCCESS {
                done()
            } else {
                Ok(Outcome::Failed)
            }
        }
        Command::Patch { command } => done_if(crate::patch::run(command)),
        Command::Host { command } => host(command),
        Command::Demo => demo(),
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "slipway",
                &mut script,
            );
            done_if(std::io::Write::write_all(&mut std::io::stdout(), &script).map_err(Into::into))
        }
        Command::Man { out } => done_if(man(out.as_deref())),
        Command::Config { command } => {
            let text = match command {
                ConfigCommand::Schema { file } => {
                    serde_json::to_string_pretty(&file.file().schema()).map_err(anyhow::Error::from)?
                }
                ConfigCommand::Reference => wire::schema::config_reference().trim_end().to_string(),
            };
            println!("{text}");
            done()
        }
        Command::Control { service, supervise } => {
            crate::init_logging("info");
            let mut cfg = load(&service)?;
            cfg.supervise = supervise;
            control::run(cfg, crate::ops::exe()?).map_err(runtime)?;
            done()
        }
        other => service(other),
    }
}

/// The commands that work on a running service through its slipway.toml.
fn service(command: Command) -> Result<Outcome, CliError> {
    use crate::ops;
    match command {
        Command::Up { service } => done_if(ops::up(&load(&service)?)),
        Command::Down { service } => done_if(block_on(ops::down(&load(&service)?))),
        Command::Deploy {
            release,
            strategy,
            detach,
            service,
        } => {
            let cfg = load(&service)?;
            followed(block_on(ops::deploy(&cfg, &release, strategy, detach))?)
        }
        Command::Watch { json, service } => followed(block_on(crate::watch::watch(&load(&service)?, json))?),
        Command::Status { json, all, service } => done_if(block_on(ops::status(&load(&service)?, json, all))),
        Command::History { json, limit, service } => done_if(block_on(ops::history(&load(&service)?, json, limit))),
        Command::Promote { service } => done_if(block_on(ops::command(&load(&service)?, "promote", None))),
        Command::Abort { reason, service } => {
            let reason = reason.or(Some("aborted by hand".into()));
            done_if(block_on(ops::command(&load(&service)?, "abort", reason)))
        }
        Command::Pause { service } => done_if(block_on(ops::command(&load(&service)?, "pause", None))),
        Command::Resume { service } => done_if(block_on(ops::command(&load(&service)?, "resume", None))),
        Command::Rollback { service } => followed(block_on(ops::rollback(&load(&service)?))?),
        Command::Dashboard { no_open, service } => {
            done_if(block_on(crate::dashboard::login_link(&load(&service)?, no_open)))
        }
        other => unreachable!("{} is dispatched by try_main", other.name()),
    }
}

fn router(
    command: Option<RouterCommand>,
    config: Option<&Path>,
    takeover: Option<std::path::PathBuf>,
) -> Result<Outcome, CliError> {
    let config =
        config.ok_or_else(|| usage(anyhow::anyhow!("--config FILE (or SLIPWAY_ROUTER_CONFIG) is required")))?;
    if let Some(RouterCommand::Upgrade { binary, timeout }) = command {
        return done_if(block_on(crate::routerctl::upgrade(config, binary, timeout)));
    }
    crate::init_logging("info");
    let config = router::Config::load(config).map_err(|e| {
        if let Some(sock) = &takeover {
            router::report_failure(sock, &e.to_string());
        }
        usage(e)
    })?;
    router::run(config, takeover).map_err(runtime)?;
    done()
}

fn host(command: HostCommand) -> Result<Outcome, CliError> {
    let HostCommand::Join {
        etcd,
        name,
        labels,
        cluster,
        ttl,
        router_state,
        router_admin,
        router_token_file,
        etcd_ca,
        etcd_cert,
        etcd_key,
    } = command;
    let join = crate::host::Join {
        etcd,
        name,
        labels,
        cluster,
        ttl: ttl.0,
        router_state,
        router_admin,
        router_token_file,
        etcd_ca,
        etcd_cert,
        etcd_key,
    };
    let cfg = crate::host::config(&join).map_err(usage)?;
    crate::init_logging("info");
    done_if(block_on(crate::host::join(cfg)))
}

fn validate(file: &Path) -> Result<Outcome, CliError> {
    let kind = crate::validate::validate(file).map_err(usage)?;
    println!("{}: valid {}", file.display(), kind.describe());
    done()
}

fn release(command: ReleaseCommand, root: &Path) -> Result<Outcome, CliError> {
    use crate::releases;
    done_if(match command {
        ReleaseCommand::Add { source, id } => releases::add(root, &source, &id),
        ReleaseCommand::List { json } => releases::list(root, json),
        ReleaseCommand::Prune { keep } => releases::prune(root, keep),
        ReleaseCommand::SetCurrent { id } => releases::set_current(root, &id),
    })
}

fn migrate(command: MigrateCommand, db: &str, dir: &Path, root: &Path) -> Result<Outcome, CliError> {
    done_if(match command {
        MigrateCommand::Plan { json } => crate::migrate::plan(db, dir, root, json),
        MigrateCommand::Run {
            phase,
            lock_timeout,
            tries,
        } => crate::migrate::run(db, dir, root, &phase.phases(), lock_timeout.0, tries),
    })
}

fn records(command: RecordsCommand, t: crate::records::Target) -> Result<Outcome, CliError> {
    use crate::records as r;
    done_if(match command {
        RecordsCommand::Status { json } => r::status(&t, json),
        RecordsCommand::Crawl {
            kind,
            to,
            rate,
            batch_time,
            max_batch,
            no_vacuum,
        } => {
            crate::init_logging("warn");
            let args = r::CrawlArgs {
                kind,
                to,
                rate,
                batch_time: batch_time.0,
                max_batch,
                no_vacuum,
            };
            r::crawl(&t, &args)
        }
        RecordsCommand::Pause(c) => r::pause(&t, &c.kind, c.to, true),
        RecordsCommand::Resume(c) => r::pause(&t, &c.kind, c.to, false),
        RecordsCommand::Verify { readers } => r::verify(&t, &readers),
        RecordsCommand::Gate { kind, gate } => r::gate(&t, &kind, gate.0),
        RecordsCommand::Serve { listen, token_file } => {
            crate::init_logging("info");
            block_on(r::serve(&t, &listen, &token_file))
        }
    })
}

/// The stamper beside an instance: the two outputs passed as fds 3 and 4, records to stdout (the log file).
fn log_stamp() -> anyhow::Result<()> {
    let mut fds = plumbing::fds::listen_fds().into_iter().map(|(_, fd)| fd);
    let (Some(out), Some(err), None) = (fds.next(), fds.next(), fds.next()) else {
        anyhow::bail!("log-stamp wants the instance's stdout and stderr as fds 3 and 4 (LISTEN_FDS=2)");
    };
    agent::stamp_output(out, err, &mut std::io::stdout().lock(), agent::STAMP_IDLE);
    Ok(())
}

/// The manual: slipway.1 on stdout, or every page into `out`.
fn man(out: Option<&Path>) -> anyhow::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = out else {
        return Ok(clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?);
    };
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd, dir)?;
    println!("manual pages written to {}", dir.display());
    Ok(())
}

fn demo() -> Result<Outcome, CliError> {
    crate::init_logging("warn");
    let as_expected = block_on(async {
        tokio::select! {
            r = crate::demo::run() => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaning up")),
        }
    })?;
    if as_expected {
        return done();
    }
    eprintln!("slipway demo: finished, but not as expected (see above)");
    Ok(Outcome::Failed)
}

impl Command {
    /// The subcommand's name, as error messages start with it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Router { command: Some(_), .. } => "router upgrade",
            Command::Router { .. } => "router",
            Command::Validate { .. } => "validate",
            Command::Agent { .. } => "agent",
            Command::Release { .. } => "release",
            Command::Logs { .. } => "logs",
            Command::Up { .. } => "up",
            Command::Down { .. } => "down",
            Command::Control { .. } => "control",
            Command::Deploy { .. } => "deploy",
            Command::Watch { .. } => "watch",
            Command::Status { .. } => "status",
            Command::History { .. } => "history",
            Command::Promote { .. } => "promote",
            Command::Abort { .. } => "abort",
            Command::Pause { .. } => "pause",
            Command::Resume { .. } => "resume",
            Command::Rollback { .. } => "rollback",
            Command::Dashboard { .. } => "dashboard",
            Command::Records { .. } => "records",
            Command::Migrate { .. } => "migrate",
            Command::Patch { .. } => "patch",
            Command::Host { .. } => "host join",
            Command::Demo => "demo",
            Command::Completions { .. } => "completions",
            Command::Config { .. } => "config",
            Command::Man { .. } => "man",
            Command::LogStamp => "log-stamp",
            Command::DemoApp { .. } => "demo-app",
        }
    }
}

/// Loads slipway.toml; a wrong one is a usage error with every problem listed.
fn load(service: &ServiceFile) -> Result<control::ServiceConfig, CliError> {
    crate::ops::load(&service.path).map_err(CliError::Usage)
}

fn block_on<T>(f: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    plumbing::lifecycle::block_on(f)?
}

fn followed(f: crate::watch::Followed) -> Result<Outcome, CliError> {
    use crate::watch::Followed;
    Ok(match f {
        Followed::Done => Outcome::Done,
        Followed::Aborted => Outcome::Failed,
        Followed::Interrupted => Outcome::Interrupted,
    })
}

fn done() -> Result<Outcome, CliError> {
    Ok(Outcome::Done)
}

fn done_if(r: anyhow::Result<()>) -> Result<Outcome, CliError> {
    r?;
    done()
}

fn usage(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Usage(e.into())
}

fn runtime(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Runtime(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap checks names, conflicts and defaults only when a subcommand is
        // used; this checks every one of them now (`gate`'s `version` clashed with --version).
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn every_argument_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the subcommand itself)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&<Cli as clap::CommandFactory>::command(), "slipway", &mut missing);
        assert!(missing.is_empty(), "no help text for:\n{}", missing.join("\n"));
    }

    #[test]
    fn a_gate_is_a_version_or_none() {
        assert_eq!("none".parse::<GateVersion>().unwrap(), GateVersion(None));
        assert_eq!("3".parse::<GateVersion>().unwrap(), GateVersion(Some(3)));
        assert!("three".parse::<GateVersion>().unwrap_err().contains("'three'"));
    }
}
