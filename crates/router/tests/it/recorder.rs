//! A recording HTTP/1.1 upstream: every request it parses is kept (head and body) for tests to compare.
//!
//! It frames requests itself (Content-Length, or chunked when Transfer-Encoding's last coding is
//! `chunked`), independently of the router, so a disagreement between the two shows up as an
//! extra, missing or merged request. Each answer names the request in `x-seen`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the upstream framed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A message the upstream did not get whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// Its target, if the head parsed.
    pub target: Option<String>,
    /// The connection ended inside it (else: the upstream refused what it got).
    pub cut: bool,
    pub bytes: Vec<u8>,
}

type Log<T> = Arc<Mutex<Vec<T>>>;

/// The upstream and what it has seen so far.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Log<Seen>,
    /// Messages it could not frame (a desync shows up here too).
    garbage: Log<Broken>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let garbage = Arc::new(Mutex::new(Vec::new()));
        let (s2, g2) = (seen.clone(), garbage.clone());
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                tokio::spawn(serve(c, s2.clone(), g2.clone()));
            }
        });
        Recorder { addr, seen, garbage }
    }

    /// Takes what was seen since the last call.
    pub fn take(&self) -> (Vec<Seen>, Vec<Broken>) {
        let s = std::mem::take(&mut *self.seen.lock().unwrap());
        let g = std::mem::take(&mut *self.garbage.lock().unwrap());
        (s, g)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

enum Body {
    Length(usize),
    Chunked,
}

/// Reads a request head off `c`: the request (body empty), its head length and framing.
async fn read_head(c: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Seen, usize, Option<Body>), bool> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 160];
        let mut r = httparse::Request::new(&mut hs);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let req = Seen {
                    method: r.method.unwrap_or_default().to_string(),
                    target: r.path.unwrap_or_default().to_string(),
                    headers,
                    body: Vec::new(),
                };
                let body = framing(&req);
                return Ok((req, n, body));
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return Err(false),
        }
        if !fill(c, buf).await {
            return Err(true);
        }
    }
}

async fn serve(mut c: TcpStream, seen: Log<Seen>, garbage: Log<Broken>) {
    let mut buf = Vec::new();
    let broken = |target: Option<&str>, cut: bool, bytes: Vec<u8>| {
        if !(cut && target.is_none() && bytes.is_empty()) {
            garbage.lock().unwrap().push(Broken {
                target: target.map(str::to_string),
                cut,
                bytes,
            });
        }
    };
    loop {
        let (mut req, n, body) = match read_head(&mut c, &mut buf).await {
            Ok(h) => h,
            Err(cut) => return broken(None, cut, buf),
        };
        buf.drain(..n);
        let Some(body) = body else {
            return broken(Some(&req.target), false, buf);
        };
        match body {
            Body::Length(len) => {
                while buf.len() < len {
                    if !fill(&mut c, &mut buf).await {
                        return broken(Some(&req.target), true, buf);
                    }
                }
                req.body = buf.drain(..len).collect();
            }
            Body::Chunked => match dechunk(&mut c, &mut buf).await {
                Ok(b) => req.body = b,
                Err(cut) => return broken(Some(&req.target), cut, buf),
            },
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\nx-seen: {}\r\nContent-Length: 2\r\n\r\nok",
            req.target
        );
        seen.lock().unwrap().push(req);
        if c.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The upstream's own framing; `None`: it would refuse the request.
fn framing(req: &Seen) -> Option<Body> {
    let te: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v.as_str())
        .collect();
    if !te.is_empty() {
        let last = te.last()?.rsplit(',').next()?.trim();
        return last.eq_ignore_ascii_case("chunked").then_some(Body::Chunked);
    }
    let mut len = None;
    // A list of identical values is one value (RFC 9110 §8.6).
    let values = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .flat_map(|(_, v)| v.split(','));
    for part in values {
        let n: usize = part.trim().parse().ok()?;
        if len.is_some_and(|l| l != n) {
            return None;
        }
        len = Some(n);
    }
    Some(Body::Length(len.unwrap_or(0)))
}

async fn fill(c: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 16384];
    match c.read(&mut tmp).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
        _ => false,
    }
}

/// A CRLF-ended line; `Err(true)`: the connection ended first, `Err(false)`: too long.
async fn line(c: &mut TcpStream, buf: &mut Vec<u8>) -> Result<String, bool> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let l = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Ok(l);
        }
        if buf.len() > 65536 {
            return Err(false);
        }
        if !fill(c, buf).await {
            return Err(true);
        }
    }
}

/// A chunked body's payload; `Err(cut)` as for [`line`].
async fn dechunk(c: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, bool> {
    let mut body = Vec::new();
    loop {
        let l = line(c, buf).await?;
        let digits = l.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(digits, 16).map_err(|_| false)?;
        if size == 0 {
            // Trailers up to the blank line.
            while !line(c, buf).await?.is_empty() {}
            return Ok(body);
        }
        while buf.len() < size + 2 {
            if !fill(c, buf).await {
                return Err(true);
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(false);
        }
        buf.drain(..size + 2);
    }
}
