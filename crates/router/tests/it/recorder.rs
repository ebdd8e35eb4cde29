//! A recording HTTP/1.1 upstream: every request it parses is kept (head and body) for tests to compare.
//!
//! It frames requests itself (Content-Length, or chunked when Transfer-Encoding's last coding is
//! `chunked`), independently of the router, so a disagreement between the two shows up as an
//! extra, missing or merged request.

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

/// The upstream and what it has seen so far.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Bytes it could not parse as a request (a desync shows up here too).
    garbage: Arc<Mutex<Vec<Vec<u8>>>>,
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
    pub fn take(&self) -> (Vec<Seen>, Vec<Vec<u8>>) {
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

async fn serve(mut c: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, garbage: Arc<Mutex<Vec<Vec<u8>>>>) {
    let mut buf = Vec::new();
    loop {
        let (mut req, n, body) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 160];
            let mut r = httparse::Request::new(&mut hs);
            match r.parse(&buf) {
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
                    break (req, n, body);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return garbage.lock().unwrap().push(buf),
            }
            if !fill(&mut c, &mut buf).await {
                if !buf.is_empty() {
                    garbage.lock().unwrap().push(buf);
                }
                return;
            }
        };
        buf.drain(..n);
        let Some(body) = body else {
            return garbage.lock().unwrap().push(buf);
        };
        match body {
            Body::Length(len) => {
                while buf.len() < len {
                    if !fill(&mut c, &mut buf).await {
                        return garbage.lock().unwrap().push(buf);
                    }
                }
                req.body = buf.drain(..len).collect();
            }
            Body::Chunked => match dechunk(&mut c, &mut buf).await {
                Some(b) => req.body = b,
                None => return garbage.lock().unwrap().push(buf),
            },
        }
        seen.lock().unwrap().push(req);
        if c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .is_err()
        {
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
    for (_, v) in req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let n: usize = v.trim().parse().ok()?;
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

async fn line(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let l = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Some(l);
        }
        if buf.len() > 65536 || !fill(c, buf).await {
            return None;
        }
    }
}

async fn dechunk(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let l = line(c, buf).await?;
        let size = usize::from_str_radix(l.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers up to the blank line.
            while !line(c, buf).await?.is_empty() {}
            return Some(body);
        }
        while buf.len() < size + 2 {
            if !fill(c, buf).await {
                return None;
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return None;
        }
        buf.drain(..size + 2);
    }
}
