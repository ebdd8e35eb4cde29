//! `slipway logs` on a running service: every line stamped when captured (hostile output made safe), a
//! release's instances merged by stamp, `--since`, `--json`, following live, stopped instances only with `--all`.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use testkit::TempDir;

mod common;
use common::{Down, run};

/// An instance that prints a 40,000-byte line, binary and ANSI codes on stderr, then runs demo-app (a log line
/// every 50 ms); told to stop, it stops demo-app and ends with a line that has no newline.
const APP: &str = r#"#!/bin/sh
printf 'started %s\n' "$SLIPWAY_INSTANCE"
head -c 40000 /dev/zero | tr '\0' 'x'; printf '\n'
printf '\033[1;31mred\033[0m \377\376\001 binary\n' >&2
"$DEMO_BIN" &
app=$!
trap 'kill -TERM $app; wait $app; printf "bye from %s, no newline" "$SLIPWAY_INSTANCE"; exit 0' TERM
wait $app
"#;

fn service(dir: &TempDir) {
    let text = format!(
        r#"
[service]
name = "shop"

[[listener]]
name = "web"
kind = "http"
addr = "127.0.0.1:0"

[instance]
count = 2
command = "./app.sh"
env = {{ DEMO_BIN = "{}", DEMO_LOG_RATE = "20" }}
readiness = {{ kind = "http", path = "/healthz", start_deadline = "20s" }}
drain = {{ signal = "SIGTERM", stop_deadline = "5s" }}

[deploy]
strategy = "rolling"
"#,
        testkit::workspace_bin("demo-app").display()
    );
    std::fs::write(dir.join("slipway.toml"), text).unwrap();
    let src = dir.join("v1");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("app.sh"), APP).unwrap();
    std::fs::set_permissions(src.join("app.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn text<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// What each instance printed first, checked in `mine` (one instance's records in order; its stdout and stderr
/// are two pipes, so the order between them is not kept).
fn check_hostile_output(mine: &[&serde_json::Value]) {
    let lines: Vec<_> = mine.iter().filter(|l| text(l, "stream") == "out").collect();
    assert!(text(lines[0], "text").starts_with("started v1-"), "{:?}", lines[0]);
    // The long line: cut records of x's, then the record that ends it.
    let (mut xs, mut i) = (0, 1);
    while lines[i]["cut"] == true {
        xs += text(lines[i], "text").len();
        assert!(text(lines[i], "text").len() <= agent::MAX_RECORD);
        i += 1;
    }
    xs += text(lines[i], "text").len();
    assert_eq!(xs, 40_000, "the long line's records hold it whole");
    assert!(i >= 3, "40,000 bytes take 3 records");
    let err = mine
        .iter()
        .find(|l| text(l, "stream") == "err")
        .expect("the stderr line");
    assert_eq!(text(err, "text"), "red \\xff\\xfe\\x01 binary");
}

#[test]
fn logs_of_a_release_merge_its_instances_by_stamp_from_since_and_follow_them_and_stopped_ones_need_all() {
    let dir = TempDir::new("logs");
    service(&dir);
    let since = agent::rfc3339_micros(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64,
    );
    let (code, _, err) = run(&dir, &["release", "add", "v1", "--id", "v1"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&dir, &["up"], &[]);
    let down = Down(&dir);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&dir, &["deploy", "v1"], &[]);
    assert_eq!(code, 0, "{out}{err}");

    // Both instances' lines, merged by stamp.
    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let (code, out, err) = run(&dir, &["logs", "v1", "--json", "--since", &since], &[]);
        assert_eq!(code, 0, "{err}");
        let v = json_lines(&out);
        let count = |id: &str| v.iter().filter(|l| text(l, "instance") == id).count();
        if count("v1-0") > 5 && count("v1-1") > 5 {
            break v;
        }
        assert!(Instant::now() < deadline, "two instances' log lines: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let times: Vec<i64> = all
        .iter()
        .map(|l| agent::parse_rfc3339(text(l, "time")).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "merged by stamp");
    let interleaved = all.windows(2).filter(|w| w[0]["instance"] != w[1]["instance"]).count();
    assert!(
        interleaved >= 2,
        "the instances' lines are interleaved, not one file after the other"
    );
    for id in ["v1-0", "v1-1"] {
        let mine: Vec<_> = all.iter().filter(|l| text(l, "instance") == id).collect();
        check_hostile_output(&mine);
        assert!(mine.iter().all(|l| text(l, "release") == "v1"));
    }

    // The files: 0600, every line a record, no escape byte or other control byte.
    for id in ["v1-0", "v1-1"] {
        let path = dir.join(".slipway/logs").join(id).join("output.log");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.iter().any(|b| *b < 0x20 && *b != b'\n' && *b != b'\t'),
            "a control byte in {id}'s log"
        );
        let body = String::from_utf8(bytes).expect("the log is UTF-8");
        assert!(
            body.lines().all(|l| agent::parse_record(l).is_some()),
            "an unstamped line in {body}"
        );
    }

    // --since a moment ago has fewer lines, all from then on; -n in text has that many, stamp first.
    let cut = text(&all[all.len() / 2], "time").to_string();
    let (_, out, _) = run(&dir, &["logs", "v1", "--json", "--since", &cut], &[]);
    let later = json_lines(&out);
    assert!(!later.is_empty() && text(&all[0], "time") < cut.as_str());
    assert!(later.iter().all(|l| text(l, "time") >= cut.as_str()), "{out}");
    let (_, out, _) = run(&dir, &["logs", "v1", "-n", "5"], &[]);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(
        out.lines()
            .all(|l| agent::parse_rfc3339(&l[..27]).is_some() && l[28..].starts_with("v1-")),
        "{out}"
    );

    follows_live(&dir);

    // Stopped: only with --all, and the last line without its newline is there, whole.
    drop(down);
    let (code, _, err) = run(&dir, &["logs", "v1"], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no running instance of v1") && err.contains("--all"),
        "{err}"
    );
    let (code, out, err) = run(&dir, &["logs", "v1", "--all", "--json", "--since", &since], &[]);
    assert_eq!(code, 0, "{err}");
    let v = json_lines(&out);
    for id in ["v1-0", "v1-1"] {
        let bye = format!("bye from {id}, no newline");
        assert!(
            v.iter().any(|l| text(l, "text") == bye && l["cut"] == false),
            "{bye:?} in {out}"
        );
    }
}

/// `logs -f --json -n 0` prints new lines of both instances as they come, in stamp order per round.
fn follows_live(dir: &TempDir) {
    let mut child = common::slipway(dir, &[])
        .args(["logs", "v1", "-f", "--json", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = std::collections::BTreeSet::new();
    let mut lines = 0;
    while seen.len() < 2 || lines < 10 {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = rx
            .recv_timeout(left)
            .expect("followed lines of both instances within 20 s");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert!(text(&v, "text").contains("log line"), "only new lines: {l}");
        seen.insert(text(&v, "instance").to_string());
        lines += 1;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
