//! `patch serve`: a static file server for a repo folder, with single `Range` requests, as any CDN
//! would serve it. GET and HEAD only; paths are plain repo names, nothing outside the folder.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Largest response body (a whole pack is at most a little over 64 MiB).
const MAX_BODY: u64 = 128 << 20;

/// Serves `repo` on an already bound listener until the future is dropped.
pub async fn serve(repo: PathBuf, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let repo = std::sync::Arc::new(repo);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let repo = repo.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let repo = repo.clone();
                async move { Ok::<_, Infallible>(respond(&repo, &req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Binds `addr` and serves; returns the bound address and the server task.
pub async fn start(
    repo: PathBuf,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    Ok((local, tokio::spawn(serve(repo, l))))
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// The repo-relative path of a request, or `None` if it is not a plain repo name.
fn repo_path(uri_path: &str) -> Option<&str> {
    let p = uri_path.strip_prefix('/')?;
    let ok = !p.is_empty()
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then_some(p)
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n` against a file of `size`: `Some(Ok((start, len)))`,
/// `Some(Err(()))` if unsatisfiable, `None` if not a single range we serve.
pub fn parse_range(h: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().ok()?;
            if n == 0 {
                return Some(Err(()));
            }
            (size.saturating_sub(n), size.checked_sub(1)?)
        }
        (false, _) => {
            let s: u64 = a.parse().ok()?;
            let e = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                b.parse::<u64>().ok()?.min(size.saturating_sub(1))
            };
            if b.parse::<u64>().is_ok_and(|e| e < s) {
                return None;
            }
            (s, e)
        }
        (true, true) => return None,
    };
    if start >= size || end < start {
        return Some(Err(()));
    }
    Some(Ok((start, end - start + 1)))
}

async fn respond(repo: &Path, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let Some(rel) = repo_path(req.uri().path()) else {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    };
    let path = repo.join(rel);
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let head = req.method() == Method::HEAD;
    let cacheable = !(rel == "timestamp.json" || rel == "root.json");
    match tokio::task::spawn_blocking(move || read(&path, range.as_deref(), head)).await {
        Ok(Ok((status, total, served, body))) => {
            let mut r = reply(status, body);
            let h = r.headers_mut();
            h.insert(header::ACCEPT_RANGES, header::HeaderValue::from_static("bytes"));
            h.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static(if cacheable {
                    "public, max-age=31536000, immutable"
                } else {
                    "no-cache"
                }),
            );
            if let Some((start, len)) = served
                && let Ok(v) = header::HeaderValue::from_str(&format!("bytes {start}-{}/{total}", start + len - 1))
            {
                h.insert(header::CONTENT_RANGE, v);
            }
            if status == StatusCode::RANGE_NOT_SATISFIABLE
                && let Ok(v) = header::HeaderValue::from_str(&format!("bytes */{total}"))
            {
                h.insert(header::CONTENT_RANGE, v);
            }
            r
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => reply(StatusCode::NOT_FOUND, "not found\n"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            reply(StatusCode::PAYLOAD_TOO_LARGE, "ask for a range\n")
        }
        _ => reply(StatusCode::INTERNAL_SERVER_ERROR, "cannot read\n"),
    }
}

type Served = (StatusCode, u64, Option<(u64, u64)>, Vec<u8>);

fn read(path: &Path, range: Option<&str>, head: bool) -> std::io::Result<Served> {
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let size = meta.len();
    let (status, start, len) = match range.and_then(|r| parse_range(r, size)) {
        Some(Ok((s, l))) => (StatusCode::PARTIAL_CONTENT, s, l),
        Some(Err(())) => return Ok((StatusCode::RANGE_NOT_SATISFIABLE, size, None, Vec::new())),
        None => (StatusCode::OK, 0, size),
    };
    if len > MAX_BODY {
        return Err(std::io::ErrorKind::FileTooLarge.into());
    }
    let mut buf = vec![0u8; if head { 0 } else { len as usize }];
    if !head {
        crate::fsx::read_at(&f, start, &mut buf)?;
    }
    let served = (status == StatusCode::PARTIAL_CONTENT).then_some((start, len));
    Ok((status, size, served, buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 10))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 10))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Ok((95, 5))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn only_plain_repo_names_are_served() {
        assert_eq!(repo_path("/packs/00000001.pack"), Some("packs/00000001.pack"));
        for bad in ["/", "/../etc/passwd", "/a/../b", "//x", "/a%2e%2e", "/x?y", "relative"] {
            assert_eq!(repo_path(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_range_header_is_in_bounds_or_refused(h in "\\PC{0,24}", size in 0u64..1000) {
            if let Some(Ok((s, l))) = parse_range(&h, size) {
                prop_assert!(l > 0 && s + l <= size);
            }
        }
    }
}
