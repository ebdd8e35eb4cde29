//! `slipway patch publish|keys|update|fetch|verify|serve`: signed client releases from the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum PatchCommand {
    /// Publish a build folder as the next release: store the new chunks, make deltas from the last
    /// releases, sign the manifest, print the patch-size report (and write it as JSON).
    Publish(PublishArgs),
    /// Keys and root metadata of a repo.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Update an install folder to the latest release (or --release N), fetching only what changed.
    Update(UpdateArgs),
    /// Fetch files of the installed release that are not there yet (on-demand install).
    Fetch {
        #[command(flatten)]
        client: ClientArgs,
        /// Paths in the release.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Check every installed file against the signed manifest; --repair fetches damaged ones again.
    Verify(VerifyArgs),
    /// Serve a repo folder over HTTP (GET, HEAD and Range), as a CDN or nginx would.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The build folder (an optional patch.toml in it gives priorities and tags).
    build: PathBuf,
    /// The release's name, e.g. v42 or a git sha.
    #[arg(long)]
    release: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// Make per-file deltas from this many previous releases.
    #[arg(long, default_value_t = 3)]
    deltas: usize,
    /// The report sizes upgrades from this many previous releases.
    #[arg(long, default_value_t = 3)]
    report_from: usize,
    /// zstd level for chunks and deltas (1-22).
    #[arg(long, default_value_t = 19)]
    level: i32,
    /// Fail (and publish nothing) if an upgrade from a previous release downloads more than
    /// this (e.g. 50MiB).
    #[arg(long, value_parser = parse_bytes)]
    max_bytes: Option<u64>,
    /// Also write the report as JSON here (it is always written to the repo's reports/).
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    expiry: ExpiryArgs,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The repo's root.json to trust on the first install (shipped with the client).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Install only files with one of these tags (comma-separated, e.g. core), plus those already
    /// installed; the rest come with `fetch`, `--fill` or a later full update.
    #[arg(long, value_delimiter = ',')]
    tags: Option<Vec<String>>,
    /// Update to this release number instead of the latest.
    #[arg(long)]
    release: Option<u64>,
    /// After the update, fetch the files not installed yet, in priority order (throttled by --rate).
    #[arg(long)]
    fill: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Fetch the damaged files again.
    #[arg(long)]
    repair: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The repo folder.
    #[arg(long)]
    repo: PathBuf,
    /// Address to listen on (repo content is public; any address is allowed).
    #[arg(long, default_value = "127.0.0.1:7490")]
    listen: std::net::SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the keys (k-of-n root keys, one key each for targets, snapshot and timestamp) and
    /// root v1. Keep the root-*.key files offline afterwards.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// The product's name; every manifest is bound to it.
        #[arg(long)]
        product: String,
        /// How many root keys.
        #[arg(long, default_value_t = 3)]
        root_keys: u32,
        /// How many root keys must sign a new root.
        #[arg(long, default_value_t = 2)]
        threshold: u32,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Replace a role's key(s) in a new root version signed by the old and the new root keys.
    Rotate {
        #[command(flatten)]
        repo: RepoArgs,
        /// root, targets, snapshot or timestamp.
        #[arg(long, value_parser = parse_role)]
        role: ::patch::Role,
        /// Replace only this key (its id or an 8+ digit prefix); default: every key of the role.
        #[arg(long)]
        revoke: Option<String>,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Sign a fresh timestamp for the current snapshot (run it more often than --timestamp-expiry).
    SignTimestamp {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
}

/// Where the repo and its keys are.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// The repo folder.
    #[arg(long)]
    repo: PathBuf,
    /// The folder of the online keys (new keys are written here, mode 0600).
    #[arg(long)]
    keys: PathBuf,
    /// Another folder holding root keys (default: only --keys).
    #[arg(long)]
    root_keys_dir: Option<PathBuf>,
}

/// How long new metadata stays valid.
#[derive(Debug, Args)]
pub struct ExpiryArgs {
    /// Validity of a new timestamp.
    #[arg(long, default_value = "1d")]
    timestamp_expiry: wire::HumanDuration,
    /// Validity of a new snapshot.
    #[arg(long, default_value = "7d")]
    snapshot_expiry: wire::HumanDuration,
}

impl ExpiryArgs {
    fn expiry(&self) -> ::patch::Expiry {
        ::patch::Expiry {
            timestamp: self.timestamp_expiry.0.as_secs(),
            snapshot: self.snapshot_expiry.0.as_secs(),
            ..::patch::Expiry::default()
        }
    }
}

/// An install and its repo.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The repo: http://host[:port]/path or a local folder.
    #[arg(long = "from")]
    from: String,
    /// The install folder (the game runs from DIR/current).
    #[arg(long)]
    dir: PathBuf,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Download at most this many bytes per second (e.g. 2MiB).
    #[arg(long, value_parser = parse_bytes)]
    rate: Option<u64>,
}

fn parse_role(s: &str) -> Result<::patch::Role, String> {
    ::patch::Role::parse(s).ok_or_else(|| format!("{s:?} is not a role: root, targets, snapshot or timestamp"))
}

/// `123`, `64KiB`, `10MB`, `1.5GiB`, ...
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512KiB, 10MB)"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (B, KB, KiB, MB, MiB, GB, GiB)")),
    };
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{s:?} is not a size"));
    }
    Ok((n * mul as f64) as u64)
}

fn keyring(r: &RepoArgs) -> anyhow::Result<::patch::Keyring> {
    let mut dirs: Vec<&Path> = vec![&r.keys];
    if let Some(d) = &r.root_keys_dir {
        dirs.push(d);
    }
    Ok(::patch::Keyring::load(&dirs)?)
}

/// A progress bar (bytes, rate, ETA) when stdout is a terminal.
struct Bar(Option<indicatif::ProgressBar>);

impl ::patch::Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
}

fn client(a: &ClientArgs, bar: Arc<Bar>) -> anyhow::Result<::patch::Client> {
    let opts = ::patch::ClientOptions {
        concurrency: a.concurrency,
        rate: a.rate,
        progress: bar,
        now: None,
    };
    Ok(::patch::Client::new(&a.dir, &a.from, opts)?)
}

/// Runs one `slipway patch` command.
pub fn run(cmd: PatchCommand) -> anyhow::Result<()> {
    match cmd {
        PatchCommand::Publish(a) => publish(a),
        PatchCommand::Keys { command } => keys(command),
        PatchCommand::Update(a) => update(a),
        PatchCommand::Fetch { client: a, paths } => {
            let c = client(&a, Arc::new(Bar(None)))?;
            for p in paths {
                println!("{}", c.fetch(&p)?.display());
            }
            Ok(())
        }
        PatchCommand::Verify(a) => verify(a),
        PatchCommand::Serve(a) => serve(a),
    }
}

fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let PublishArgs {
        build,
        release,
        repo,
        deltas,
        report_from,
        level,
        max_bytes,
        json,
        expiry,
    } = args;
    let keys = keyring(&repo)?;
    let r = ::patch::Repo::new(&repo.repo);
    let opts = ::patch::PublishOptions {
        build: &build,
        release_id: &release,
        repo: &r,
        keys: &keys,
        delta_from: deltas,
        report_from,
        level,
        max_bytes,
        now: ::patch::unix_now(),
        expiry: expiry.expiry(),
    };
    let (report, result) = match ::patch::publish(&opts) {
        Ok(p) => (p.report.clone(), Ok(p)),
        Err(::patch::PublishError::TooBig {
            from,
            bytes,
            max,
            report,
        }) => {
            let e = anyhow::anyhow!(
                "the upgrade from release {from} downloads {bytes} bytes, more than --max-bytes {max}; nothing was published"
            );
            (*report, Err(e))
        }
        Err(e) => return Err(e.into()),
    };
    print!("{}", report.render());
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_vec_pretty(&report)?).with_context(|| format!("writing {}", p.display()))?;
    }
    let p = result?;
    println!("published release {} ({release}) to {}", p.seq, repo.repo.display());
    Ok(())
}

fn update(args: UpdateArgs) -> anyhow::Result<()> {
    let UpdateArgs {
        client: a,
        root,
        tags,
        release,
        fill,
        json,
    } = args;
    let bar = Arc::new(Bar(crate::progress_bar(
        0,
        "[{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )));
    let c = client(&a, bar.clone())?;
    let root = match root {
        Some(p) => Some(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let o = c.update(&::patch::UpdateRequest { tags, release, root })?;
    let filled = if fill {
        c.fill(&std::sync::atomic::AtomicBool::new(false))?
    } else {
        0
    };
    if let Some(b) = &bar.0 {
        b.finish_and_clear();
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "from": o.from, "to": o.to, "release": o.release, "up_to_date": o.up_to_date, "files": o.files,
                "downloaded": o.stats.downloaded, "requests": o.stats.requests, "built": o.stats.built,
                "linked": o.stats.linked, "filled": filled,
            })
        );
    } else if o.up_to_date {
        println!("{} is up to date: release {} ({})", a.dir.display(), o.to, o.release);
    } else {
        println!(
            "{}: release {} ({}) installed, {} files; downloaded {} in {} requests{}",
            a.dir.display(),
            o.to,
            o.release,
            o.files,
            human(o.stats.downloaded),
            o.stats.requests,
            if filled > 0 {
                format!("; then fetched {filled} more files")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let VerifyArgs {
        client: a,
        repair,
        json,
    } = args;
    let c = client(&a, Arc::new(Bar(None)))?;
    let r = c.verify(repair)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"release": r.seq, "checked": r.checked, "damaged": r.damaged, "repaired": r.repaired})
        );
    } else {
        for d in &r.damaged {
            println!(
                "damaged: {d}{}",
                if r.repaired.contains(d) { " (repaired)" } else { "" }
            );
        }
        println!(
            "release {}: {} files checked, {} damaged, {} repaired",
            r.seq,
            r.checked,
            r.damaged.len(),
            r.repaired.len()
        );
    }
    if !r.damaged.is_empty() && r.repaired.len() < r.damaged.len() {
        bail!("{} damaged files (run with --repair)", r.damaged.len());
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs { repo, listen } = args;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (addr, task) = ::patch::start_server(repo.clone(), listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("serving {} on http://{addr}/", repo.display());
        tokio::select! {
            r = task => { r??; Ok(()) }
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    let now = ::patch::unix_now();
    match cmd {
        KeysCommand::Init {
            repo,
            product,
            root_keys,
            threshold,
            expiry,
        } => {
            let r = ::patch::Repo::new(&repo.repo);
            let root = ::patch::init(&r, &repo.keys, &product, root_keys, threshold, now, &expiry.expiry())?;
            println!(
                "root v1 for {product}: {root_keys} root keys (threshold {threshold}) and a targets, snapshot and timestamp key in {}",
                repo.keys.display()
            );
            println!(
                "ship {} with the client; move the root-*.key files offline",
                repo.repo.join("root.json").display()
            );
            for (role, rk) in &root.roles {
                println!(
                    "  {role}: {}",
                    rk.keyids.iter().map(|k| &k[..12]).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(())
        }
        KeysCommand::Rotate {
            repo,
            role,
            revoke,
            expiry,
        } => {
            let mut ring = keyring(&repo)?;
            let r = ::patch::Repo::new(&repo.repo);
            let root = ::patch::rotate(&r, &mut ring, role, revoke.as_deref(), now, &expiry.expiry())?;
            println!(
                "root v{}: {role} keys are now {}",
                root.version,
                root.keyids(role)
                    .iter()
                    .map(|k| &k[..12])
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        KeysCommand::SignTimestamp { repo, expiry } => {
            let ring = keyring(&repo)?;
            let ts = ::patch::sign_timestamp(&::patch::Repo::new(&repo.repo), &ring, now, &expiry.expiry())?;
            println!(
                "timestamp v{} for snapshot v{}, expires at {}",
                ts.version, ts.snapshot.version, ts.expires
            );
            Ok(())
        }
    }
}

fn human(n: u64) -> String {
    ::patch::human_bytes(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(1_610_612_736));
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }
}
