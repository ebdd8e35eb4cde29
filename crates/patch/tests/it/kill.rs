//! SIGKILL `slipway patch update` at random points, 20 times, then let it finish: the install is
//! always either the old release or the whole new one, and a resumed run fetches only what is missing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

#[test]
fn a_killed_update_never_shows_a_half_tree_and_resumes_without_refetching() {
    let fx = Fixture::new("patch-kill");
    let mut v1 = Tree::new();
    v1.insert("bin/game".into(), text(21, 400_000));
    write_tree(&fx.build_dir("b1"), &v1);
    fx.publish(&fx.build_dir("b1"), "v1");
    let mut v2 = v1.clone();
    for i in 0..8 {
        v2.insert(format!("data/level{i}.pak"), text(100 + i, 700_000));
    }
    write_tree(&fx.build_dir("b2"), &v2);
    let full = fx
        .publish(&fx.build_dir("b2"), "v2")
        .report
        .paths
        .iter()
        .find(|p| p.from == Some(1))
        .unwrap()
        .download;

    let exe = testkit::workspace_bin("slipway");
    let dir = fx.install("inst");
    let root = fx.repo.dir.join("root.json");
    let run = |extra: &[&str]| {
        let mut c = Command::new(&exe);
        c.args([
            "patch",
            "update",
            "--from",
            fx.repo.dir.to_str().unwrap(),
            "--dir",
            dir.to_str().unwrap(),
        ])
        .args(["--root", root.to_str().unwrap(), "--concurrency", "2", "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    };
    let out = run(&["--release", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // About 10 s for the whole update at this rate; each run is killed within 0.3 s, so the runs
    // make progress together and the kills land mid-update. The final run is not throttled.
    let rate = (full / 10).to_string();
    let mut rng = fastrand::Rng::with_seed(7);
    let current = dir.join("current");
    let mut finished = 0;
    for round in 0..20 {
        let mut child = run(&["--rate", &rate]).spawn().unwrap();
        let at = Duration::from_millis(rng.u64(30..300));
        let started = Instant::now();
        while started.elapsed() < at && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let seen = read_tree(&current);
        assert!(
            seen == v1 || seen == v2,
            "round {round}: current shows a tree that is neither v1 nor v2"
        );
        finished += usize::from(seen == v2);
    }
    let left = allocated(&dir.join(".slipway-patch/stage"));
    let out = run(&[]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(read_tree(&current), v2);
    let downloaded = json["downloaded"].as_u64().unwrap();
    if json["up_to_date"] == false && left > 0 {
        assert!(
            downloaded < full,
            "the resumed run fetched {downloaded} of {full} bytes although {left} bytes were staged"
        );
    }
    eprintln!(
        "{finished} of 20 killed runs had finished; final run: {json}; {left} bytes were staged; a full update downloads {full}"
    );
    assert!(finished < 5, "the kills should land mid-update");
    assert!(left > 0 && downloaded < full);
}
