//! `slipway records` as a user runs it: a SIGKILLed crawler resumes; verify, status and the HTTP service.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

use bytes::Bytes;
use records::{Backend, Expect, Format, Write};
use serde_json::{Value, json};
use testkit::TempDir;

const STEPS: &str = r#"
[kinds.player]
fields = { name = "string", gold = "int", inventory = "array" }

[[kinds.player.versions]]
version = 2
readable_by = 1
up = [{ add = "xp", default = 0 }]
down = [{ remove = "xp" }]

[[kinds.player.versions]]
version = 3
up = [{ rename = "name", to = "display_name" }, { set = "score", expr = "gold * 2 + xp" }]
down = [{ remove = "score" }, { rename = "display_name", to = "name" }]
fields = { display_name = "string", gold = "int", xp = "int", score = "int" }
"#;

fn slipway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
}

fn v1(i: usize) -> Value {
    json!({"name": format!("n{i}"), "gold": i, "inventory": [{"item": "sword", "n": i % 7}]})
}

/// Writes `n` version-1 players straight into the store.
fn fill(db: &str, n: usize) {
    let b = records::open(db).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let ws: Vec<Write> = chunk
            .iter()
            .map(|&i| Write {
                kind: "player".into(),
                key: format!("p{i:06}"),
                version: 1,
                min_reader: 1,
                format: if i % 2 == 0 { Format::Json } else { Format::Msgpack },
                payload: (if i % 2 == 0 { Format::Json } else { Format::Msgpack })
                    .encode(&v1(i))
                    .unwrap(),
                writer: "seed".into(),
                expect: Expect::Absent,
                last_active: Some(1_000_000 + (i as i64 * 7919) % 100_000),
                reader: None,
            })
            .collect();
        assert!(b.write_batch(&ws, None).unwrap().iter().all(|r| r.is_some()));
    }
}

fn crawl_state(db: &str) -> Option<records::CrawlState> {
    records::open(db).unwrap().crawl("player", 3).unwrap()
}

fn sigkilled_crawler_resumes_and_finishes(db: &str, dir: &TempDir) {
    const N: usize = 40_000;
    fill(db, N);
    let steps = dir.join("steps.toml");
    std::fs::write(&steps, STEPS).unwrap();
    let crawl = || {
        let mut c = slipway();
        c.args([
            "records",
            "crawl",
            "--kind",
            "player",
            "--to",
            "3",
            "--batch-time",
            "100ms",
            "--db",
            db,
        ])
        .arg("--steps")
        .arg(&steps)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    };
    let mut child = crawl().spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the crawler made no progress");
        if crawl_state(db).is_some_and(|s| s.scanned >= 4_000) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the crawler exited early");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed = crawl_state(db).unwrap();
    assert!(killed.scanned < N as u64, "killed before the end: {killed:?}");
    let b = records::open(db).unwrap();
    // What the saved state says was upgraded is exactly what is at v3.
    assert_eq!(
        b.count_below("player", 3, i64::MAX).unwrap(),
        N as u64 - killed.upgraded
    );

    let out = crawl().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("resuming crawl of player to v3"), "{stdout}");
    let done = crawl_state(db).unwrap();
    assert_eq!(
        (
            done.status.as_str(),
            done.scanned,
            done.upgraded,
            done.total,
            done.failed
        ),
        ("done", N as u64, N as u64, N as u64, 0),
        "every record upgraded exactly once across the kill"
    );
    let counts = b.counts().unwrap();
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (counts[0].version, counts[0].records),
        (3, N as u64),
        "nothing lost, nothing duplicated"
    );
    let mut after = 0;
    let mut seen = 0;
    loop {
        let page = b.page("player", after, 5000).unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        for s in page {
            let i: usize = s.key[1..].parse().unwrap();
            let v = s.format.decode(&s.payload).unwrap();
            let want = json!({"display_name": format!("n{i}"), "gold": i, "xp": 0, "score": 2 * i,
                "inventory": [{"item": "sword", "n": i % 7}]});
            assert_eq!(v, want, "{}", s.key);
            assert_eq!(s.etag, 2, "{} written once by the crawler", s.key);
            assert_eq!(
                s.last_active,
                1_000_000 + (i as i64 * 7919) % 100_000,
                "the crawler keeps last_active"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, N);

    let verify = slipway()
        .args(["records", "verify", "--db", db])
        .arg("--steps")
        .arg(&steps)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(text.contains(&format!("verified {N} records")), "{text}");
    // A reader at version 1 cannot read version 3: verify says so and fails.
    let old = slipway()
        .args(["records", "verify", "--reader", "player=1", "--db", db])
        .arg("--steps")
        .arg(&steps)
        .output()
        .unwrap();
    assert_eq!(old.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&old.stderr).contains("refuses to read or overwrite"));
    let status = slipway().args(["records", "status", "--db", db]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("player: {N} records")) && text.contains("done"),
        "{text}"
    );
}

#[test]
fn a_sigkilled_crawler_resumes_and_finishes_with_nothing_lost_on_sqlite() {
    let dir = TempDir::new("crawl-kill");
    let db = format!("sqlite:{}", dir.join("records.db").display());
    sigkilled_crawler_resumes_and_finishes(&db, &dir);
}

#[test]
fn a_sigkilled_crawler_resumes_and_finishes_with_nothing_lost_on_postgres() {
    let dir = TempDir::new("crawl-kill-pg");
    let db = testkit::pg_database("crawl_kill");
    sigkilled_crawler_resumes_and_finishes(&db, &dir);
}

#[tokio::test]
async fn the_http_service_gets_and_puts_with_etags_under_the_gate() {
    let dir = TempDir::new("records-serve");
    let steps = dir.join("steps.toml");
    std::fs::write(&steps, STEPS).unwrap();
    let db = format!("sqlite:{}", dir.join("records.db").display());
    let token_file = dir.join("token");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["records", "serve", "--listen", "127.0.0.1:0", "--db", &db])
        .arg("--steps")
        .arg(&steps)
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(stdout).read_line(&mut line).await.unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let token = std::fs::read_to_string(&token_file).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let mut c = testkit::Client::connect(addr).await.unwrap();
    let h = |extra: Vec<(&'static str, String)>| {
        let mut v = vec![
            ("authorization", auth.clone()),
            ("content-type", "application/json".to_string()),
        ];
        v.extend(extra);
        v
    };
    async fn call(
        c: &mut testkit::Client,
        method: &str,
        path: &str,
        headers: Vec<(&'static str, String)>,
        body: Value,
    ) -> (u16, Value, Option<String>) {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let r = c.send(method, path, &hs, body).await.unwrap();
        let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status.as_u16(), v, r.header("etag").map(str::to_string))
    }

    // No token: 401.
    let (status, _, _) = call(&mut c, "GET", "/v1/kinds", vec![], Value::Null).await;
    assert_eq!(status, 401);
    // A write without a precondition is refused.
    let (status, body, _) = call(&mut c, "PUT", "/v1/records/player/ann?version=1", h(vec![]), v1(1)).await;
    assert_eq!(status, 428, "{body}");
    // Create at version 1 (an old client).
    let (status, body, etag) = call(
        &mut c,
        "PUT",
        "/v1/records/player/ann?version=1",
        h(vec![("if-none-match", "*".into())]),
        v1(5),
    )
    .await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"1\"")), "{body}");
    // A new client reads it upgraded to 3.
    let (status, body, etag) = call(&mut c, "GET", "/v1/records/player/ann", h(vec![]), Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["version"].as_u64(), body["stored_version"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(body["value"]["display_name"], "n5");
    assert_eq!(body["value"]["score"], 10);
    // The old release is still live: gate 2. A v3 write is stored at 2.
    let (status, _, _) = call(&mut c, "PUT", "/v1/gates/player", h(vec![]), json!({"version": 2})).await;
    assert_eq!(status, 200);
    let mut value = body["value"].clone();
    value["gold"] = json!(6);
    value["pet"] = json!("cat");
    let (status, body, etag2) = call(
        &mut c,
        "PUT",
        "/v1/records/player/ann?version=3",
        h(vec![("if-match", etag.clone().unwrap())]),
        value.clone(),
    )
    .await;
    assert_eq!((status, body["stored_version"].as_u64()), (200, Some(2)), "{body}");
    // The same etag again: 412.
    let (status, body, _) = call(
        &mut c,
        "PUT",
        "/v1/records/player/ann?version=3",
        h(vec![("if-match", etag.unwrap())]),
        value,
    )
    .await;
    assert_eq!(status, 412, "{body}");
    // The old client reads version 2 (readable by 1) with the unknown field kept.
    let (status, body, etag3) = call(&mut c, "GET", "/v1/records/player/ann?reader=1", h(vec![]), Value::Null).await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(2)));
    assert_eq!(etag3, etag2);
    assert_eq!(
        (body["value"]["name"].as_str(), body["value"]["pet"].as_str()),
        (Some("n5"), Some("cat"))
    );
    // Status and crawls.
    let (status, body, _) = call(&mut c, "GET", "/v1/kinds", h(vec![]), Value::Null).await;
    assert_eq!(
        (status, body[0]["kind"].as_str(), body[0]["gate"].as_u64()),
        (200, Some("player"), Some(2))
    );
    let (status, body, _) = call(&mut c, "GET", "/v1/records/player/nobody", h(vec![]), Value::Null).await;
    assert_eq!(status, 404, "{body}");
    let (status, body, _) = call(
        &mut c,
        "POST",
        "/v1/crawls",
        h(vec![]),
        json!({"kind": "player", "to": 2}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    testkit::wait_for("the crawl to finish", Duration::from_secs(20), || {
        let auth = auth.clone();
        async move {
            let mut c = testkit::Client::connect(addr).await.ok()?;
            let (_, body, _) = call(&mut c, "GET", "/v1/crawls", vec![("authorization", auth)], Value::Null).await;
            (body[0]["status"] == "done").then_some(())
        }
    })
    .await;
    let (_, body, _) = call(
        &mut c,
        "POST",
        "/v1/leases/player/ann",
        h(vec![]),
        json!({"holder": "s1"}),
    )
    .await;
    assert_eq!(body["held"], true);
    let (status, _, _) = call(
        &mut c,
        "POST",
        "/v1/leases/player/ann",
        h(vec![]),
        json!({"holder": "s2"}),
    )
    .await;
    assert_eq!(status, 409);
    child.start_kill().unwrap();
}
