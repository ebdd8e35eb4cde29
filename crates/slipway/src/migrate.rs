//! `slipway migrate plan|run`: SQL migrations, with contract steps gated on what the live releases use.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use agent::{RELEASE_MANIFEST, ReleaseStore};
use agent::{is_live, saved_instances};
use records::migrate::{self, Conn, LiveUse, Phase};

/// The releases with running instances under `root`, and what each declares it uses.
pub fn live_uses(root: &Path) -> anyhow::Result<Vec<LiveUse>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let releases: BTreeSet<String> = saved_instances(root)?
        .into_iter()
        .filter(|i| is_live(i.state))
        .map(|i| i.release)
        .collect();
    let store = ReleaseStore::new(root);
    let mut out = Vec::new();
    for r in releases {
        let path = store.path(&r).join(RELEASE_MANIFEST);
        let uses = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let m: wire::agent::ReleaseManifest =
                    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                m.database.map(|d| d.uses).unwrap_or_default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        out.push(LiveUse { release: r, uses });
    }
    Ok(out)
}

/// Prints every step with what it would lock, its status and who blocks it.
pub fn plan(db: &str, dir: &Path, root: &Path, json: bool) -> anyhow::Result<()> {
    let migrations = migrate::load_dir(dir)?;
    let live = live_uses(root)?;
    let mut conn = Conn::open(db)?;
    let planned = migrate::plan(&mut conn, &migrations, &live)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&planned)?);
        return Ok(());
    }
    for p in &planned {
        println!("{} step {} [{}] {}", p.migration, p.step, p.phase.as_str(), p.status);
        for l in &p.locks {
            let note = if l.note.is_empty() {
                String::new()
            } else {
                format!(" — {}", l.note)
            };
            println!(
                "    {}\n      locks {}: blocks {}{note}",
                l.statement, l.level, l.blocks
            );
        }
        for b in &p.blocked_by {
            println!("      waits: {b}");
        }
    }
    Ok(())
}

/// Runs the pending steps of the given phases.
pub fn run(
    db: &str,
    dir: &Path,
    root: &Path,
    phases: &[Phase],
    lock_timeout: Duration,
    tries: u32,
) -> anyhow::Result<()> {
    let migrations = migrate::load_dir(dir)?;
    let live = live_uses(root)?;
    let mut conn = Conn::open(db)?;
    let opts = migrate::RunOptions {
        phases,
        live: &live,
        lock_timeout,
        tries,
    };
    let report = migrate::run(&mut conn, &migrations, &opts, &mut |line| println!("{line}"))?;
    println!(
        "{} steps ran ({} lock-timeout retries); live releases: {}",
        report.ran.len(),
        report.retries,
        if live.is_empty() {
            "none".to_string()
        } else {
            live.iter().map(|l| l.release.as_str()).collect::<Vec<_>>().join(", ")
        }
    );
    Ok(())
}
