//! The command line's shape: every subcommand, argument and flag with its help.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The crate version and the git commit the binary was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SLIPWAY_COMMIT"), ")");

/// The exit codes, as `--help` lists them.
pub const EXIT_CODES: &str = "Exit codes: 0 done; 1 the deploy was aborted or failed; 2 a runtime error; \
64 a bad command line or config; 69 the control plane (or the part asked) is not running; \
130 Ctrl-C stopped following a deploy (the deploy goes on).";

/// slipway releases new versions of live services with zero downtime.
#[derive(Debug, Parser)]
#[command(name = "slipway", version = VERSION, propagate_version = true, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
        /// Instance id (v2-0) or release id (v2); every instance when left out.
        target: Option<String>,
        /// Keep printing new output (and that of instances that start).
        #[arg(long, short)]
        follow: bool,
        /// The last this many lines of all the instances together [default: 50, or every line with --since].
        #[arg(long, short = 'n')]
        lines: Option<usize>,
        /// Only lines from then on: a duration back from now (10m, 1h) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// One JSON object per line: time, instance, release, stream, cut, text.
        #[arg(long)]
        json: bool,
        /// Include stopped instances of the release.
        #[arg(long)]
        all: bool,
        /// Root folder (the agent's root).
        #[arg(long, env = "SLIPWAY_ROOT", default_value = ".slipway")]
        root: PathBuf,
    },
    /// Start what is missing of agent, router and control plane (each its own process).
    Up {
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Stop the instances, then the control plane, the router and the agent.
    Down {
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Run the control plane in the foreground (`slipway up` runs it in the background).
    Control {
        #[command(flatten)]
        service: ServiceFile,
        /// Keep the agent and the router running (restarting a dead one within a second) and hold the router's
        /// listening sockets across its restarts, as `slipway up` does.
        #[arg(long)]
        supervise: bool,
    },
    /// Deploy a release (added with `slipway release add`) and follow it; exits 1 if it was aborted.
    Deploy {
        /// The release id (see `slipway release list`).
        release: String,
        /// canary, rolling or blue-green (default: [deploy] strategy).
        #[arg(long)]
        strategy: Option<wire::service::Strategy>,
        /// Start it and return at once.
        #[arg(long)]
        detach: bool,
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Follow the running deploy live, from any terminal (as `slipway deploy` shows it); Ctrl-C stops watching,
    /// not the deploy.
    Watch {
        /// Stream JSON lines: one per event, one per change of state, and a last one when it ends.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        service: ServiceFile,
    },
    /// The current release, the running deploy with its verdict, routes and instances.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        /// Also list stopped instances (hidden by default, in --json too).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Past deploys with their outcome and verdicts.
    History {
        /// Print the deploys as JSON.
        #[arg(long)]
        json: bool,
        /// How many deploys, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Promote the running deploy now, skipping its remaining steps.
    Promote {
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Abort the running deploy: canary out of traffic at once, baseline untouched.
    Abort {
        /// Why, as history shows it (default: "aborted by hand").
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Pause the running deploy (holds and checks stop counting).
    Pause {
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Resume a paused deploy.
    Resume {
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Go back to the previous release: a route swap while it is warm, else a fast redeploy.
    Rollback {
        #[command(flatten)]
        service: ServiceFile,
    },
    /// Print a one-time login link to the web dashboard, and open it when a browser is available.
    Dashboard {
        /// Only print the link.
        #[arg(long)]
        no_open: bool,
        #[command(flatten)]
        service: ServiceFile,
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
    /// Signed client releases: publish builds, manage keys, update installs fetching only what changed.
    Patch {
        #[command(subcommand)]
        command: crate::patch::PatchCommand,
    },
    /// This host in a cluster coordinated through etcd (docs/cluster.md).
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Run the demo: a sample service, steady load, a canary deploy and an automatic abort.
    Demo,
    /// The config files' reference and JSON Schemas (for editors such as Taplo / Even Better TOML).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script: `slipway completions bash > /etc/bash_completion.d/slipway`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per subcommand into a folder.
    Man {
        /// Write slipway.1 and slipway-<subcommand>.1 here instead of printing slipway.1.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Stamp an instance's output: read its stdout and stderr from fds 3 and 4 (passed with `LISTEN_FDS=2`),
    /// append records to stdout (the agent starts one beside each instance).
    #[command(hide = true)]
    LogStamp,
    /// Run the demo app (what the demo's instances are).
    #[command(hide = true)]
    DemoApp {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Join the cluster: register under a heartbeat lease and keep the local router on the cluster's route
    /// table until SIGTERM or Ctrl-C (then leave). While etcd cannot be heard, nothing local is changed.
    Join {
        /// etcd client URLs, comma-separated or repeated (http://host:2379 or https:// with --etcd-ca).
        #[arg(long, required = true, env = "SLIPWAY_ETCD")]
        etcd: Vec<String>,
        /// This host's name in the cluster (a-z, 0-9, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// Labels, key=value, comma-separated or repeated (zone=a,rack=3).
        #[arg(long)]
        labels: Vec<String>,
        /// The cluster's name: its keys live under /slipway/<cluster>/ in etcd.
        #[arg(long, default_value = "default")]
        cluster: String,
        /// Heartbeat lease TTL: the host's keys go this long after its last keep-alive.
        #[arg(long, default_value = "5s")]
        ttl: wire::HumanDuration,
        /// The local router's state folder (its router.json names the admin address; admin.token the token).
        #[arg(long)]
        router_state: Option<PathBuf>,
        /// The local router's admin address (ip:port or unix:/path), instead of reading --router-state.
        #[arg(long)]
        router_admin: Option<String>,
        /// File holding the local router's admin token, instead of --router-state's admin.token.
        #[arg(long)]
        router_token_file: Option<PathBuf>,
        /// CA certificate (PEM) that signed etcd's server certificates: turns on TLS to etcd.
        #[arg(long)]
        etcd_ca: Option<PathBuf>,
        /// Client certificate (PEM) for etcd's --client-cert-auth (with --etcd-key).
        #[arg(long)]
        etcd_cert: Option<PathBuf>,
        /// Client key (PEM) for --etcd-cert.
        #[arg(long)]
        etcd_key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RouterCommand {
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
pub enum MigrateCommand {
    /// Every step with what each statement locks, its status, and which live release blocks it.
    Plan {
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the pending steps of a phase: expand (before a new release starts), backfill, contract
    /// (after the old release is gone), or all.
    Run {
        /// Which steps to run.
        #[arg(long, value_enum)]
        phase: MigratePhase,
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
pub struct CrawlId {
    /// The record kind, e.g. player.
    #[arg(long)]
    pub kind: String,
    /// The crawl's target version.
    #[arg(long)]
    pub to: u32,
}

#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Records per kind and version, write gates and crawls.
    Status {
        /// Print the status as JSON.
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
        /// The record kind, e.g. player.
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
        #[arg(long = "reader", value_parser = crate::records::parse_reader)]
        readers: Vec<(String, u32)>,
    },
    /// Set the write gate of a kind: the highest version every live release reads ("none" clears it).
    Gate {
        /// The record kind, e.g. player.
        kind: String,
        /// A version number, or "none" to clear the gate.
        #[arg(value_name = "VERSION")]
        gate: GateVersion,
    },
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
pub enum ReleaseCommand {
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
        /// Print the releases as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove old releases, keeping the newest N (never current, previous, or one with instances).
    Prune {
        /// How many of the newest releases to keep.
        #[arg(long)]
        keep: usize,
    },
    /// Point `current` at a release (the old one becomes `previous`), atomically.
    SetCurrent {
        /// The release id.
        id: String,
    },
}

/// Which phases `migrate run --phase` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MigratePhase {
    /// Additive steps, run before a new release starts.
    Expand,
    /// Expand, then the data copies.
    Backfill,
    /// Steps that drop what no live release uses any more.
    Contract,
    /// Expand, backfill and contract.
    All,
}

impl MigratePhase {
    pub fn phases(self) -> Vec<records::migrate::Phase> {
        use records::migrate::Phase;
        match self {
            MigratePhase::Expand => vec![Phase::Expand],
            MigratePhase::Backfill => vec![Phase::Expand, Phase::Backfill],
            MigratePhase::Contract => vec![Phase::Contract],
            MigratePhase::All => vec![Phase::Expand, Phase::Backfill, Phase::Contract],
        }
    }
}

/// A write gate on the command line: a version, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateVersion(pub Option<u32>);

impl std::str::FromStr for GateVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(GateVersion(None)),
            v => v
                .parse()
                .map(|v| GateVersion(Some(v)))
                .map_err(|_| format!("'{v}' is neither a version number nor 'none'")),
        }
    }
}

/// Which service a command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceFile {
    /// The service definition.
    #[arg(long = "config", short = 'c', env = "SLIPWAY_CONFIG", default_value = "slipway.toml")]
    pub path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the JSON Schema of a config file.
    Schema {
        /// Which file.
        #[arg(value_enum)]
        file: ConfigFileArg,
    },
    /// Print the reference of every config file (docs/config.md): each key's type, default and meaning.
    Reference,
}

/// A config file, by its short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigFileArg {
    /// slipway.toml.
    Slipway,
    /// slipway.release.toml in a release folder.
    Release,
    /// The router's config.
    Router,
    /// A route table.
    Routes,
    /// The agent's config.
    Agent,
}

impl ConfigFileArg {
    pub fn file(self) -> wire::schema::ConfigFile {
        use wire::schema::ConfigFile;
        match self {
            ConfigFileArg::Slipway => ConfigFile::Service,
            ConfigFileArg::Release => ConfigFile::Release,
            ConfigFileArg::Router => ConfigFile::Router,
            ConfigFileArg::Routes => ConfigFile::Routes,
            ConfigFileArg::Agent => ConfigFile::Agent,
        }
    }
}
