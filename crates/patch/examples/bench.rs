//! The patch benchmark (bench/patch/run.sh drives it): publishes successive builds into a fresh repo,
//! then for each upgrade path compares slipway's download with chunks alone (FastCDC 64 KiB),
//! fixed 64 KiB blocks with rsync matching (butler-style), and per-file zstd --patch-from, bsdiff
//! and xdelta3; it also times publishing and a client's apply, with the client's peak memory.
//!
//! `cargo run --release -p patch --example bench -- --work DIR --slipway BIN --level 19 \
//!     --paths 1-2,1-3 --json OUT DIR1 DIR2 [DIR3...]`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::json;

type Tree = BTreeMap<String, PathBuf>;

fn files(dir: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        for e in std::fs::read_dir(&abs).unwrap().flatten() {
            let name = e.file_name().into_string().unwrap();
            let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push((e.path(), path));
            } else if ft.is_file() && path != "patch.toml" {
                out.insert(path, e.path());
            }
        }
    }
    out
}

fn hash(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

/// Bytes a per-file tool downloads: identical files cost nothing; a file with an old version at the
/// same path costs the tool's delta; a new file its zstd -19 size.
fn per_file(old: &Tree, new: &Tree, work: &Path, tool: &str) -> Option<u64> {
    let old_hashes: HashSet<blake3::Hash> = old.values().map(|p| hash(p)).collect();
    let mut total = 0;
    for (path, np) in new {
        if old_hashes.contains(&hash(np)) {
            continue;
        }
        let out = work.join("delta.out");
        let _ = std::fs::remove_file(&out);
        let size = std::fs::metadata(np).unwrap().len();
        let status = match old.get(path) {
            Some(op) => {
                let osize = std::fs::metadata(op).unwrap().len();
                let big = size.max(osize);
                let wlog = (64 - (osize + size).max(1 << 20).leading_zeros()).clamp(27, 31);
                match tool {
                    "zstd" if big <= 2 << 30 => {
                        let level = if big <= 64 << 20 { "-19" } else { "-9" };
                        Command::new("zstd")
                            .args(["-q", "-f", level, &format!("--long={wlog}")])
                            .arg(format!("--patch-from={}", op.display()))
                            .arg(np)
                            .arg("-o")
                            .arg(&out)
                            .status()
                    }
                    "bsdiff" if big <= 256 << 20 => Command::new("bsdiff").arg(op).arg(np).arg(&out).status(),
                    "xdelta3" if big <= 2 << 30 => Command::new("xdelta3")
                        .args(["-e", "-9", "-f", "-B", &osize.max(1 << 20).to_string(), "-s"])
                        .arg(op)
                        .arg(np)
                        .arg(&out)
                        .status(),
                    _ => return None,
                }
            }
            None => Command::new("zstd")
                .args(["-q", "-f", "-19"])
                .arg(np)
                .arg("-o")
                .arg(&out)
                .status(),
        };
        assert!(status.unwrap().success(), "{tool} failed on {path}");
        total += std::fs::metadata(&out).unwrap().len();
    }
    Some(total)
}

/// casync-style: FastCDC 16/64/256 KiB over every file, new chunks zstd-compressed at `level`.
fn chunks_alone(old: &Tree, new: &Tree, level: i32) -> u64 {
    use fastcdc::v2020::{FastCDC, Normalization};
    let cdc = |data: &[u8]| -> Vec<(usize, usize)> {
        FastCDC::with_level(data, 16 << 10, 64 << 10, 256 << 10, Normalization::Level2)
            .map(|c| (c.offset, c.length))
            .collect()
    };
    let mut have = HashSet::new();
    for p in old.values() {
        let d = std::fs::read(p).unwrap();
        for (o, l) in cdc(&d) {
            have.insert(blake3::hash(&d[o..o + l]));
        }
    }
    let mut total = 0;
    for p in new.values() {
        let d = std::fs::read(p).unwrap();
        for (o, l) in cdc(&d) {
            if have.insert(blake3::hash(&d[o..o + l])) {
                total += zstd::bulk::compress(&d[o..o + l], level).unwrap().len() as u64;
            }
        }
    }
    total
}

/// butler-style: the old build in fixed 64 KiB blocks, the new files scanned with an rsync rolling
/// checksum; literal bytes zstd-compressed per file at `level`, 12 bytes per run of copied blocks.
fn rsync64(old: &Tree, new: &Tree, level: i32) -> u64 {
    const B: usize = 64 << 10;
    let mut blocks: HashMap<u32, Vec<blake3::Hash>> = HashMap::new();
    let mut whole = HashSet::new();
    for p in old.values() {
        let d = std::fs::read(p).unwrap();
        whole.insert(blake3::hash(&d));
        for blk in d.chunks_exact(B) {
            blocks.entry(weak(blk)).or_default().push(blake3::hash(blk));
        }
    }
    let mut total = 0u64;
    for p in new.values() {
        let d = std::fs::read(p).unwrap();
        if whole.contains(&blake3::hash(&d)) {
            continue;
        }
        let mut literal = Vec::new();
        let (mut i, mut ops, mut last_was_block) = (0usize, 0u64, false);
        let (mut a, mut b) = (0u32, 0u32);
        let mut primed = false;
        while i < d.len() {
            if i + B > d.len() {
                literal.extend_from_slice(&d[i..]);
                break;
            }
            if !primed {
                (a, b) = sums(&d[i..i + B]);
                primed = true;
            }
            let w = (b << 16) | (a & 0xffff);
            let hit = blocks.get(&w).is_some_and(|v| v.contains(&blake3::hash(&d[i..i + B])));
            if hit {
                if !last_was_block {
                    ops += 1;
                }
                last_was_block = true;
                i += B;
                primed = false;
                continue;
            }
            last_was_block = false;
            literal.push(d[i]);
            // Roll the window one byte on.
            if i + B < d.len() {
                let out = d[i] as u32;
                let inn = d[i + B] as u32;
                a = a.wrapping_sub(out).wrapping_add(inn) & 0xffff;
                b = b.wrapping_sub((B as u32).wrapping_mul(out)).wrapping_add(a) & 0xffff;
            } else {
                primed = false;
            }
            i += 1;
        }
        total += ops * 12 + zstd::bulk::compress(&literal, level).unwrap().len() as u64;
    }
    total
}

fn sums(blk: &[u8]) -> (u32, u32) {
    let (mut a, mut b) = (0u32, 0u32);
    for (k, &x) in blk.iter().enumerate() {
        a = a.wrapping_add(x as u32);
        b = b.wrapping_add((blk.len() - k) as u32 * x as u32);
    }
    (a & 0xffff, b & 0xffff)
}

fn weak(blk: &[u8]) -> u32 {
    let (a, b) = sums(blk);
    (b << 16) | a
}

/// Runs the slipway client under /usr/bin/time: (seconds, peak RSS KiB).
fn timed_update(slipway: &Path, repo: &Path, dir: &Path, release: u64) -> (f64, u64) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%e %M"])
        .arg(slipway)
        .args(["patch", "update", "--json", "--release", &release.to_string(), "--from"])
        .arg(repo)
        .arg("--dir")
        .arg(dir)
        .arg("--root")
        .arg(repo.join("root.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("0 0");
    let mut it = last.split_whitespace();
    (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap())
}

/// The peer for apply speed, in the same run: `cp -a` of the build, then `sync`, in seconds.
fn timed_copy(build: &Path, to: &Path) -> f64 {
    let t = Instant::now();
    let ok = Command::new("cp")
        .arg("-a")
        .arg(build)
        .arg(to)
        .status()
        .unwrap()
        .success()
        && Command::new("sync").status().unwrap().success();
    assert!(ok, "cp -a {} failed", build.display());
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(to);
    secs
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut work, mut slipway, mut level, mut paths, mut json_out, mut dirs) = (
        PathBuf::new(),
        PathBuf::new(),
        19,
        String::new(),
        PathBuf::new(),
        Vec::new(),
    );
    while let Some(a) = args.next() {
        match a.as_str() {
            "--work" => work = args.next().unwrap().into(),
            "--slipway" => slipway = args.next().unwrap().into(),
            "--level" => level = args.next().unwrap().parse().unwrap(),
            "--paths" => paths = args.next().unwrap(),
            "--json" => json_out = args.next().unwrap().into(),
            d => dirs.push(PathBuf::from(d)),
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let repo_dir = work.join("repo");
    let repo = patch::Repo::new(&repo_dir);
    let now = patch::unix_now();
    patch::init(&repo, &work.join("keys"), "bench", 1, 1, now, &patch::Expiry::default()).unwrap();
    let keys = patch::Keyring::load(&[&work.join("keys")]).unwrap();
    let mut reports = Vec::new();
    let mut publishes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let t = Instant::now();
        let p = patch::publish(&patch::PublishOptions {
            build: d,
            release_id: &format!("r{}", i + 1),
            repo: &repo,
            keys: &keys,
            delta_from: 3,
            report_from: 3,
            level,
            max_bytes: None,
            now,
            expiry: patch::Expiry::default(),
        })
        .unwrap();
        let secs = t.elapsed().as_secs_f64();
        eprintln!("{}", p.report.render());
        publishes.push(
            json!({"release": i + 1, "secs": secs, "stored": p.report.stored_bytes, "content": p.report.content_bytes}),
        );
        reports.push(p.report);
    }
    let trees: Vec<Tree> = dirs.iter().map(|d| files(d)).collect();
    let mut out_paths = Vec::new();
    for spec in paths.split(',').filter(|s| !s.is_empty()) {
        let (a, b) = spec.split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        let r = &reports[b - 1];
        let p = r
            .paths
            .iter()
            .find(|p| p.from == Some(a as u64))
            .expect("path within the report window");
        let fresh = r.paths.iter().find(|p| p.from.is_none()).unwrap().download;
        let (old, new) = (&trees[a - 1], &trees[b - 1]);
        let t = Instant::now();
        let row = json!({
            "path": format!("r{a} -> r{b}"),
            "content": r.content_bytes,
            "fresh": fresh,
            "slipway": p.download,
            "slipway_chunks": p.chunk_bytes,
            "slipway_deltas": p.delta_bytes,
            "chunks_alone": chunks_alone(old, new, level),
            "rsync64": rsync64(old, new, level),
            "zstd": per_file(old, new, &work, "zstd"),
            "bsdiff": per_file(old, new, &work, "bsdiff"),
            "xdelta3": per_file(old, new, &work, "xdelta3"),
        });
        eprintln!("{row} ({:.0}s)", t.elapsed().as_secs_f64());
        out_paths.push(row);
    }
    // Apply: a fresh install of the last release, then an upgrade from the one before.
    let last = dirs.len() as u64;
    let inst = work.join("install");
    let (fresh_secs, fresh_kib) = timed_update(&slipway, &repo_dir, &inst, last);
    let _ = std::fs::remove_dir_all(&inst);
    let copy_secs = timed_copy(&dirs[dirs.len() - 1], &work.join("copy"));
    let mut upgrade = json!(null);
    if last > 1 {
        timed_update(&slipway, &repo_dir, &inst, last - 1);
        let (s, k) = timed_update(&slipway, &repo_dir, &inst, last);
        upgrade = json!({"secs": s, "peak_kib": k});
    }
    let content = reports.last().unwrap().content_bytes;
    let result = json!({
        "publishes": publishes,
        "paths": out_paths,
        "apply": {
            "content": content,
            "fresh_secs": fresh_secs,
            "fresh_mb_per_s": content as f64 / 1e6 / fresh_secs.max(0.001),
            "fresh_peak_kib": fresh_kib,
            "copy_secs": copy_secs,
            "copy_mb_per_s": content as f64 / 1e6 / copy_secs.max(0.001),
            "upgrade": upgrade,
        },
    });
    println!("{result}");
    if !json_out.as_os_str().is_empty() {
        std::fs::write(&json_out, serde_json::to_vec_pretty(&result).unwrap()).unwrap();
    }
    let _ = std::fs::remove_dir_all(&inst);
}
