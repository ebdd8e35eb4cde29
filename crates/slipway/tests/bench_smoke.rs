//! The router benchmark's smoke run (`bench/router/protocols.py --smoke`): slipway, nginx and HAProxy each
//! serve every protocol the benchmark measures, with every request answered 2xx. Never a timing.

use std::path::Path;
use std::process::Command;

#[test]
fn the_router_benchmark_runs_and_every_proxy_answers_every_protocol() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bins = Path::new(env!("CARGO_BIN_EXE_slipway")).parent().unwrap();
    assert!(
        bins.join("demo-app").exists(),
        "no demo-app beside slipway in {} (scripts/test builds it: cargo build --workspace --bins)",
        bins.display()
    );
    let dir = testkit::TempDir::new("bench-smoke");
    let out = dir.path().join("router-protocols.json");
    let run = Command::new("python3")
        .arg(root.join("bench/router/protocols.py"))
        .args(["--smoke", "--bin-dir"])
        .arg(bins)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("python3 runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        run.status.success(),
        "smoke run failed:\n{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    // The summary names every target and mode, as the history in BENCHMARKS.md reads it.
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let modes = summary["modes"].as_object().expect("modes in the summary");
    assert!(!modes.is_empty());
    for (mode, targets) in modes {
        for t in ["slipway", "nginx", "haproxy"] {
            assert_eq!(targets[t]["errors"], 0, "{mode} {t}: {}", targets[t]);
        }
    }
}
