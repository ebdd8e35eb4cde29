//! Where a client reads a repo from: a local folder, or any static HTTP server or CDN (plain GETs,
//! `Range` requests into pack files, several connections kept alive). Every read has a size limit.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// A failed read from a repo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{what}: the response is larger than the {limit}-byte limit (endless-data attack?)")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: got {got} bytes, {want} expected")]
    Short { what: String, got: u64, want: u64 },
    #[error("{what}: HTTP {status}")]
    Status { what: String, status: u16 },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    #[error("{what}: no answer within {secs}s")]
    Timeout { what: String, secs: u64 },
    #[error("{0}")]
    Url(String),
}

/// A repo to read from.
pub trait Source: Send + Sync {
    /// A whole file, `None` if it does not exist; more than `limit` bytes is an error.
    fn get(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError>;
    /// Exactly `len` bytes at `start`, into `buf` (reused across calls, so memory stays flat).
    fn get_range(&self, rel: &str, start: u64, len: u64, buf: &mut Vec<u8>) -> Result<(), FetchError>;
    /// For messages.
    fn describe(&self) -> String;
}

/// Opens `http://host[:port]/path` or a local folder (a path or `file://` URL).
pub fn open(url: &str) -> Result<Box<dyn Source>, FetchError> {
    if let Some(rest) = url.strip_prefix("http://") {
        return Ok(Box::new(Http::new(rest)?));
    }
    if url.starts_with("https://") {
        return Err(FetchError::Url(format!(
            "{url}: https is not supported yet; serve the repo over http (every file is verified against the signed metadata)"
        )));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    Ok(Box::new(Dir {
        root: PathBuf::from(path),
    }))
}

/// A repo folder on this machine.
#[derive(Debug)]
pub struct Dir {
    pub root: PathBuf,
}

impl Source for Dir {
    fn get(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        use std::io::Read;
        let p = self.root.join(rel);
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(FetchError::Io {
                    what: rel.into(),
                    message: e.to_string(),
                });
            }
        };
        let mut out = Vec::new();
        f.take(limit + 1).read_to_end(&mut out).map_err(|e| FetchError::Io {
            what: rel.into(),
            message: e.to_string(),
        })?;
        if out.len() as u64 > limit {
            return Err(FetchError::TooLarge {
                what: rel.into(),
                limit,
            });
        }
        Ok(Some(out))
    }

    fn get_range(&self, rel: &str, start: u64, len: u64, buf: &mut Vec<u8>) -> Result<(), FetchError> {
        use std::os::unix::fs::FileExt;
        let io = |e: std::io::Error| FetchError::Io {
            what: rel.into(),
            message: e.to_string(),
        };
        let f = std::fs::File::open(self.root.join(rel)).map_err(io)?;
        buf.resize(len as usize, 0);
        let mut got = 0usize;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], start + got as u64).map_err(io)? {
                0 => {
                    return Err(FetchError::Short {
                        what: rel.into(),
                        got: got as u64,
                        want: len,
                    });
                }
                n => got += n,
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

/// How long one response may be silent before it is given up.
const IDLE: Duration = Duration::from_secs(30);

/// A static HTTP server: keep-alive connections, one request in flight on each.
pub struct Http {
    rt: tokio::runtime::Runtime,
    host: String,
    port: u16,
    prefix: String,
    pool: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Http({})", self.describe())
    }
}

impl Http {
    /// `rest` is the URL after `http://`.
    pub fn new(rest: &str) -> Result<Http, FetchError> {
        let bad = || {
            FetchError::Url(format!(
                "http://{rest}: not a URL of the form http://host[:port][/path]"
            ))
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or_else(bad)?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 80,
        };
        if host.is_empty() || path.contains(['?', '#']) {
            return Err(bad());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("patch-http")
            .enable_all()
            .build()
            .map_err(|e| FetchError::Io {
                what: "http client".into(),
                message: e.to_string(),
            })?;
        Ok(Http {
            rt,
            host,
            port,
            prefix: path.trim_end_matches('/').to_string(),
            pool: Mutex::new(Vec::new()),
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    async fn connection(&self, what: &str) -> Result<SendRequest<Empty<Bytes>>, FetchError> {
        loop {
            let c = self.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
            match c {
                Some(mut c) if !c.is_closed() => {
                    if c.ready().await.is_ok() {
                        return Ok(c);
                    }
                }
                Some(_) => continue,
                None => break,
            }
        }
        let io = |e: &dyn std::fmt::Display| FetchError::Io {
            what: what.into(),
            message: e.to_string(),
        };
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| io(&e))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io(&e))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// One GET; returns the status and at most `limit` bytes of body (more is an error).
    async fn request(
        &self,
        rel: &str,
        range: Option<(u64, u64)>,
        limit: u64,
        out: &mut Vec<u8>,
    ) -> Result<(u16, Option<String>), FetchError> {
        let what = rel.to_string();
        let io = |e: &dyn std::fmt::Display| FetchError::Io {
            what: what.clone(),
            message: e.to_string(),
        };
        let mut c = self.connection(rel).await?;
        let mut req = http::Request::get(format!("{}/{rel}", self.prefix)).header(http::header::HOST, self.authority());
        if let Some((start, len)) = range {
            req = req.header(http::header::RANGE, format!("bytes={start}-{}", start + len - 1));
        }
        let req = req.body(Empty::new()).map_err(|e| io(&e))?;
        let resp = c.send_request(req).await.map_err(|e| io(&e))?;
        let status = resp.status().as_u16();
        let content_range = resp
            .headers()
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body();
        out.clear();
        loop {
            let frame = match tokio::time::timeout(IDLE, body.frame()).await {
                Err(_) => {
                    return Err(FetchError::Timeout {
                        what,
                        secs: IDLE.as_secs(),
                    });
                }
                Ok(None) => break,
                Ok(Some(f)) => f.map_err(|e| io(&e))?,
            };
            if let Ok(data) = frame.into_data() {
                if out.len() as u64 + data.len() as u64 > limit {
                    // The connection is dropped with the rest of the body unread.
                    return Err(FetchError::TooLarge { what, limit });
                }
                out.extend_from_slice(&data);
            }
        }
        if let Ok(mut p) = self.pool.lock() {
            p.push(c);
        }
        Ok((status, content_range))
    }

    fn run<T>(&self, what: &str, f: impl std::future::Future<Output = Result<T, FetchError>>) -> Result<T, FetchError> {
        self.rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(600), f).await {
                Ok(r) => r,
                Err(_) => Err(FetchError::Timeout {
                    what: what.into(),
                    secs: 600,
                }),
            }
        })
    }
}

impl Source for Http {
    fn get(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let mut body = Vec::new();
        let (status, _) = self.run(rel, self.request(rel, None, limit, &mut body))?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            s => Err(FetchError::Status {
                what: rel.into(),
                status: s,
            }),
        }
    }

    fn get_range(&self, rel: &str, start: u64, len: u64, body: &mut Vec<u8>) -> Result<(), FetchError> {
        let what = format!("{rel} bytes {start}+{len}");
        let (status, content_range) = self.run(&what, self.request(rel, Some((start, len)), len, body))?;
        if status != 206 {
            return Err(FetchError::Status {
                what: format!("{what} (a Range request needs 206)"),
                status,
            });
        }
        let want = format!("bytes {start}-{}/", start + len - 1);
        if !content_range.as_deref().is_some_and(|c| c.starts_with(&want)) {
            return Err(FetchError::Io {
                what,
                message: format!("Content-Range {content_range:?} is not the range asked for"),
            });
        }
        if body.len() as u64 != len {
            return Err(FetchError::Short {
                what,
                got: body.len() as u64,
                want: len,
            });
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("http://{}{}", self.authority(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn urls_name_a_host_port_and_prefix() {
        let h = Http::new("127.0.0.1:8080/repo/").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.prefix.as_str()),
            ("127.0.0.1", 8080, "/repo")
        );
        let h = Http::new("[::1]:81").unwrap();
        assert_eq!((h.host.as_str(), h.port, h.prefix.as_str()), ("::1", 81, ""));
        assert_eq!(Http::new("cdn.example").unwrap().port, 80);
        for bad in ["", ":80", "h:x", "h/p?q"] {
            assert!(Http::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(open("https://x").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_url_is_refused_or_parsed_without_panicking(s in "\\PC{0,40}") {
            let _ = Http::new(&s);
        }
    }
}
