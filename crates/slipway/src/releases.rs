//! `slipway release ...`: release folders under a root, agent running or not.

use std::collections::HashSet;
use std::path::Path;

use agent::ReleaseStore;
use agent::{is_live, saved_instances};

/// Adds a release and prints where it went.
pub fn add(root: &Path, source: &Path, id: &str) -> anyhow::Result<()> {
    let path = ReleaseStore::new(root).add(source, id)?;
    println!("added release {id} at {}", path.display());
    Ok(())
}

fn running(root: &Path) -> anyhow::Result<Vec<wire::agent::InstanceInfo>> {
    Ok(saved_instances(root)?
        .into_iter()
        .filter(|i| is_live(i.state))
        .collect())
}

pub fn list(root: &Path, json: bool) -> anyhow::Result<()> {
    let live = running(root)?;
    let count = |r: &str| live.iter().filter(|i| i.release == r).count() as u32;
    let releases = ReleaseStore::new(root).list(&count)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&wire::agent::ReleaseList { releases })?
        );
        return Ok(());
    }
    if releases.is_empty() {
        println!(
            "no releases under {} (add one with `slipway release add <dir|archive> --id <id>`)",
            root.display()
        );
        return Ok(());
    }
    println!(
        "{:<20} {:>10} {:>9}  {:<18} marks",
        "RELEASE", "SIZE", "RUNNING", "CLIENT VERSIONS"
    );
    for r in releases {
        let mut marks = Vec::new();
        if r.current {
            marks.push("current");
        }
        if r.previous {
            marks.push("previous");
        }
        println!(
            "{:<20} {:>10} {:>9}  {:<18} {}",
            r.id,
            human_bytes(r.bytes),
            r.running_instances,
            r.client_versions.unwrap_or_else(|| "any".into()),
            marks.join(", ")
        );
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}

pub fn prune(root: &Path, keep: usize) -> anyhow::Result<()> {
    let protected: HashSet<String> = running(root)?.into_iter().map(|i| i.release).collect();
    let removed = ReleaseStore::new(root).prune(keep, &protected)?;
    if removed.is_empty() {
        println!("nothing to prune (current, previous and releases with instances are always kept)");
    } else {
        println!("removed {}", removed.join(", "));
    }
    Ok(())
}

pub fn set_current(root: &Path, id: &str) -> anyhow::Result<()> {
    let store = ReleaseStore::new(root);
    store.set_current(id)?;
    println!(
        "current -> {id}{}",
        store
            .link("previous")
            .map(|p| format!(" (previous -> {p})"))
            .unwrap_or_default()
    );
    Ok(())
}
