//! A small WebDriver client for Debian's chromium: a headless browser with a fresh profile, pages, scripts, waits,
//! console errors and screenshots (the dashboard's browser test and its benchmark share it).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use testkit::TempDir;

/// A WebDriver session on a chromedriver of our own.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: TempDir,
}

impl Drop for Browser {
    /// Ends the session first (chromedriver quits chromium), so no browser outlives the test.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                self.session, self.addr
            );
            let _ = s.write_all(req.as_bytes());
            let _ = s.read_to_end(&mut Vec::new());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Value) -> Value {
    let mut c = testkit::Client::connect(addr).await.expect("chromedriver reachable");
    let body = if method == "GET" {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let r = c
        .send(method, path, &[("content-type", "application/json")], body)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert!(r.status.is_success(), "WebDriver {method} {path}: {} {v}", r.status);
    v["value"].clone()
}

impl Browser {
    pub async fn start() -> Browser {
        let port = testkit::free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver; scripts/test does)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        testkit::wait_port(addr, Duration::from_secs(10)).await;
        let profile = TempDir::new("chromium");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,800",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
            "goog:loggingPrefs": { "browser": "ALL" }
        }}});
        let v = call(addr, "POST", "/session", caps).await;
        let session = v["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            addr,
            session,
            _profile: profile,
        }
    }

    pub async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        call(self.addr, method, &format!("/session/{}{path}", self.session), body).await
    }

    pub async fn go(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Clicks the element (in one script: a live update may replace it between a lookup and a click).
    pub async fn click(&self, css: &str) {
        let script = format!(
            "const e = document.querySelector({}); if (!e) return false; e.click(); return true;",
            json!(css)
        );
        self.until(css, Duration::from_secs(3), &script).await;
    }

    /// Waits until `script` returns true in the page.
    pub async fn until(&self, what: &str, limit: Duration, script: &str) -> Duration {
        let t0 = Instant::now();
        loop {
            if self.js(script).await == Value::Bool(true) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < limit, "page never showed {what} within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every console entry of level SEVERE so far.
    pub async fn console_errors(&self) -> Vec<String> {
        let v = self.cmd("POST", "/se/log", json!({ "type": "browser" })).await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect()
    }

    pub async fn screenshot(&self, name: &str) {
        for (tag, w, h) in [("desktop", 1280, 800), ("phone", 390, 844)] {
            self.cmd("POST", "/window/rect", json!({ "width": w, "height": h }))
                .await;
            let png = self.cmd("GET", "/screenshot", Value::Null).await;
            let bytes = base64_decode(png.as_str().unwrap());
            assert!(bytes.starts_with(b"\x89PNG"), "{name} {tag} is a PNG");
            let dir = screenshot_dir();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}-{tag}.png")), bytes).unwrap();
        }
        self.cmd("POST", "/window/rect", json!({ "width": 1280, "height": 800 }))
            .await;
    }
}

pub fn screenshot_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("dashboard-screenshots")
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .map(val)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | (*d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
