//! A differential desync oracle: mutated request-smuggling shapes go through a real router to a
//! recording upstream that frames requests on its own; every case must be refused (a router reply
//! and close) or arrive upstream as exactly the messages the client got answers for.
//!
//! The normal suite runs 2,000 seeded cases; `bench/router/desync` runs more
//! (`SLIPWAY_DESYNC_CASES`, `SLIPWAY_DESYNC_SEED`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Harness;
use crate::recorder::{Broken, Recorder, Seen};

const LENGTHS: &[&str] = &[
    "Content-Length: {n}",
    "content-length: {n}",
    "Content-Length: +{n}",
    "Content-Length: 0{n}",
    "Content-Length: {n}, {n}",
    "Content-Length: {n}, {m}",
    "Content-Length : {n}",
    "Content-Length:{n}",
    "Content-Length:\t{n} ",
    " Content-Length: {n}",
    "Content-Length: {n}\r\nContent-Length: {n}",
    "Content-Length: {n}\r\nContent-Length: {m}",
    "Content-Length: -1",
    "Content-Length: 1e1",
    "Content-Length: 0x{n}",
    "Content-Length: 99999999999999999999",
    "Content-Length\r\n : {n}",
    "Content-Length: {n}\r\n Content-Length: {m}",
];

const CODINGS: &[&str] = &[
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: Chunked",
    "Transfer-Encoding:  chunked ",
    "Transfer-Encoding: chunked, chunked",
    "Transfer-Encoding: identity, chunked",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: xchunked",
    "Transfer-Encoding: \"chunked\"",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding:\tchunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
    "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",
    " Transfer-Encoding: chunked",
    "Transfer-Encoding\r\n : chunked",
    "Transfer-Encoding: chunk",
    "Transfer-Encoding: \x0bchunked",
    "Transfer-Encoding: chunked\r\nContent-Length: {n}",
    "Content-Length: {n}\r\nTransfer-Encoding: chunked",
    "Transfer_Encoding: chunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding:",
    "Transfer-Encoding: chunked,",
];

const CONNECTIONS: &[&str] = &[
    "",
    "Connection: keep-alive",
    "Connection: content-length",
    "Connection: Transfer-Encoding",
    "Connection: close, host",
    "Connection: x-foo\r\nX-Foo: 1",
    "Connection: Upgrade\r\nUpgrade: h2c",
    "Keep-Alive: timeout=5",
    "Expect: 100-continue",
    "Connection: te\r\nTE: trailers",
    "Proxy-Connection: keep-alive",
];

const HOSTS: &[&str] = &["Host: x", "Host: x\r\nHost: y", "Host: a, b", "", "Host: x:80", "Host:"];

const BODIES: &[&str] = &[
    "",
    "hello",
    "0\r\n\r\nGET /smuggled-{i} HTTP/1.1\r\nHost: x\r\n\r\n",
    "5\r\nhello\r\n0\r\n\r\n",
    "5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n",
    "5\nhello\n0\n\n",
    "5 \r\nhello\r\n0\r\n\r\n",
    "0x5\r\nhello\r\n0\r\n\r\n",
    "ffffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
    "5\r\nhelloXX\r\n0\r\n\r\n",
    "5\r\nhello\r\n0\r\n\r\nGET /smuggled-{i} HTTP/1.1\r\nHost: x\r\n\r\n",
    "3\r\nabc\r\n0\r\n",
    "5\r\nhello\r\n0\r\n\r",
    "GET /smuggled-{i} HTTP/1.1\r\nHost: x\r\n\r\n",
];

const LINES: &[&str] = &[
    "POST /case-{i} HTTP/1.1",
    "GET /case-{i} HTTP/1.1",
    "POST /case-{i} HTTP/1.0",
    "PUT http://x/case-{i} HTTP/1.1",
    "POST /case-{i} HTTP/1.1\r\nX-Pad: a\x01b",
];

/// One generated case: its bytes (the follow-up request included).
fn case(rng: &mut fastrand::Rng, i: usize) -> Vec<u8> {
    let pick = |rng: &mut fastrand::Rng, from: &[&'static str]| from[rng.usize(..from.len())];
    let body = pick(rng, BODIES).replace("{i}", &i.to_string());
    let n = match rng.u8(..4) {
        0 => 5,
        1 => 0,
        _ => body.len(),
    };
    let framing = match rng.u8(..5) {
        0 => String::new(),
        1 | 2 => pick(rng, LENGTHS).to_string(),
        _ => pick(rng, CODINGS).to_string(),
    };
    let framing = framing
        .replace("{n}", &n.to_string())
        .replace("{m}", &(n + 1).to_string());
    // Half the cases get a plain Host, so that enough get past it to test framing.
    let host = if rng.bool() { "Host: x" } else { pick(rng, HOSTS) };
    let mut headers = vec![host.to_string(), framing, pick(rng, CONNECTIONS).to_string()];
    rng.shuffle(&mut headers);
    let mut out = pick(rng, LINES).replace("{i}", &i.to_string());
    out.push_str("\r\n");
    for h in headers.iter().filter(|h| !h.is_empty()) {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    // Pipelined after it, always the same well-formed request, which closes.
    out.push_str(&format!(
        "GET /follow-{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ));
    out.into_bytes()
}

/// What the client got on one case's connection.
#[derive(Debug, Default)]
struct Got {
    /// `x-seen` of each answer that came from the upstream, in order.
    upstream: Vec<String>,
    /// Status of the router's own reply, if one came (it must be the last thing).
    router: Option<u16>,
    problem: Option<String>,
    /// The router had not closed the connection at the end.
    open: bool,
}

/// Sends a case and reads answers until the router closes.
async fn run_case(web: std::net::SocketAddr, bytes: Vec<u8>) -> Got {
    let mut got = Got::default();
    let Ok(mut s) = TcpStream::connect(web).await else {
        got.problem = Some("connect failed".into());
        return got;
    };
    // A refusal may close before the client wrote everything: not an error.
    let _ = s.write_all(&bytes).await;
    let mut buf = Vec::new();
    // Past its answers, a connection may rightly stay open (keep-alive): wait a while, then stop.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tmp = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
            Err(_) => {
                got.open = true;
                break;
            }
        }
    }
    parse_answers(&buf, &mut got);
    got
}

fn parse_answers(mut buf: &[u8], got: &mut Got) {
    while !buf.is_empty() {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        let Ok(httparse::Status::Complete(n)) = r.parse(buf) else {
            got.problem = Some(format!("unparseable answer {:?}", String::from_utf8_lossy(buf)));
            return;
        };
        let find = |name: &str| {
            r.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let len: usize = find("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let status = r.code.unwrap_or(0);
        if got.router.is_some() {
            got.problem = Some("an answer after the router's own reply".into());
        }
        match (find("x-seen"), find("x-slipway-error")) {
            (Some(seen), None) => got.upstream.push(seen),
            (None, Some(_)) => got.router = Some(status),
            _ => got.problem = Some(format!("an answer from nobody: {status}")),
        }
        buf = &buf[(n + len).min(buf.len())..];
    }
}

/// The case number a target names (`/case-7`, `http://x/follow-7`, `/smuggled-7`).
fn case_of(target: &str) -> Option<(String, usize)> {
    let name = target.rsplit('/').next()?;
    let (kind, n) = name.rsplit_once('-')?;
    Some((kind.to_string(), n.parse().ok()?))
}

/// Every broken oracle rule, one line each.
fn check(got: &[Got], seen: &[Seen], broken: &[Broken]) -> Vec<String> {
    let mut bad = Vec::new();
    let mut upstream: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for s in seen {
        match case_of(&s.target) {
            Some((kind, i)) if i < got.len() => upstream.entry(i).or_default().push(kind),
            _ => bad.push(format!("the upstream got a request nobody was answered for: {s:?}")),
        }
    }
    for b in broken {
        match b.target.as_deref().and_then(case_of) {
            // Cut or refused mid-message: only where the router refused that case as well.
            Some((_, i)) if i < got.len() && got[i].router.is_some_and(|s| (400..500).contains(&s) || b.cut) => {}
            _ => bad.push(format!("the upstream could not frame what it got: {b:?}")),
        }
    }
    for (i, g) in got.iter().enumerate() {
        if let Some(p) = &g.problem {
            bad.push(format!("case {i}: {p}"));
        }
        let mut answered = Vec::new();
        for t in &g.upstream {
            match case_of(t) {
                Some((kind, j)) if j == i => answered.push(kind),
                _ => bad.push(format!("case {i}: got the answer to {t}")),
            }
        }
        let arrived = upstream.remove(&i).unwrap_or_default();
        if arrived != answered {
            bad.push(format!(
                "case {i}: upstream got {arrived:?}, client answered for {answered:?}"
            ));
        }
        if let Some(s) = g.router {
            if !(400..600).contains(&s) {
                bad.push(format!("case {i}: router reply {s}"));
            }
            if g.open {
                bad.push(format!("case {i}: the router replied {s} and kept the connection open"));
            }
        }
    }
    bad
}

/// Runs `n` cases from `seed`, `parallel` at a time; returns the problems and a tally of outcomes.
pub async fn oracle(n: usize, seed: u64, parallel: usize) -> (Vec<String>, BTreeMap<String, usize>) {
    let rec = Recorder::start().await;
    let text = "[client]\nhead_timeout = \"1s\"\nbody_grace = \"300ms\"\nbody_min_rate = 1000\n";
    let h = Harness::start(text).await;
    let t = crate::harness::table(vec![
        wire::Release::new("v1", 100).with_instance("v1-0", rec.addr.to_string()),
    ]);
    h.put(&t).await;
    let mut rng = fastrand::Rng::with_seed(seed);
    let cases: Vec<Vec<u8>> = (0..n).map(|i| case(&mut rng, i)).collect();
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::new();
    for bytes in cases.iter().cloned() {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let web = h.web;
        tasks.push(tokio::spawn(async move {
            let g = run_case(web, bytes).await;
            drop(permit);
            g
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    // The upstream may still be finishing the last messages.
    let mut last = usize::MAX;
    while rec.count() != last {
        last = rec.count();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (seen, broken) = rec.take();
    let mut bad = check(&got, &seen, &broken);
    for (i, line) in bad.iter_mut().enumerate().take(20) {
        let i_case = line
            .strip_prefix("case ")
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(c) = i_case {
            *line = format!("{line}\n    sent {:?}", String::from_utf8_lossy(&cases[c]));
        }
        let _ = i;
    }
    let mut tally = BTreeMap::new();
    for g in &got {
        let k = match (g.upstream.len(), g.router) {
            (0, Some(s)) => format!("refused {s}"),
            (n, Some(s)) => format!("{n} forwarded, then {s}"),
            (n, None) => format!("{n} forwarded"),
        };
        *tally.entry(k).or_insert(0) += 1;
    }
    (bad, tally)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_mutated_smuggling_shapes_are_refused_or_framed_as_the_upstream_frames_them() {
    let n = std::env::var("SLIPWAY_DESYNC_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed = std::env::var("SLIPWAY_DESYNC_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(17);
    let t0 = Instant::now();
    let (bad, tally) = oracle(n, seed, 64).await;
    eprintln!("{n} cases (seed {seed}) in {:?}: {tally:?}", t0.elapsed());
    assert!(
        bad.is_empty(),
        "{} problems:\n{}",
        bad.len(),
        bad[..bad.len().min(20)].join("\n")
    );
    // The corpus exercises both sides: many refusals and many forwarded pairs.
    let forwarded: usize = tally
        .iter()
        .filter(|(k, _)| !k.starts_with("refused"))
        .map(|(_, v)| v)
        .sum();
    assert!(forwarded > n / 10, "{tally:?}");
    assert!(tally.get("2 forwarded").copied().unwrap_or(0) > n / 50, "{tally:?}");
    assert!(tally.keys().any(|k| k.starts_with("refused 400")), "{tally:?}");
}
