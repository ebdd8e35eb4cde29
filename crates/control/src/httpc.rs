//! A minimal HTTP/1.1 client for the control plane's own outgoing calls (the pre-traffic check's GETs, the
//! webhook's POSTs): one request per connection, plain HTTP, the answer's status and the start of its body.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most of an answer that is read (its head and the start of its body).
const MAX_ANSWER: u64 = 64 * 1024;

/// An answer: status code, reason phrase and the body's start (lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: u16,
    pub reason: String,
    pub body: String,
}

/// `http://host:port/path` split into the address to connect to and the request target.
pub(crate) fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL (https is not supported)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "{url:?} needs a host, and no user or password in it (put a secret in secret_file)"
        ));
    }
    let host = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((host, path.to_string()))
}

/// Sends one request to `addr` (`host:port`) and reads the answer; the caller bounds the time.
pub(crate) async fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Answer, String> {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let host = addr.strip_suffix(":80").unwrap_or(addr);
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: slipway\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    conn.write_all(&msg)
        .await
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut got = Vec::new();
    conn.take(MAX_ANSWER)
        .read_to_end(&mut got)
        .await
        .map_err(|e| format!("no answer from {addr}: {e}"))?;
    parse_answer(&got).ok_or_else(|| format!("{addr} did not answer with HTTP"))
}

fn parse_answer(got: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(got);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some(Answer {
        status,
        reason: parts.next().unwrap_or("").to_string(),
        body: body.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_plain_http_with_a_host_and_no_credentials() {
        assert_eq!(
            split_url("http://127.0.0.1:9000/hooks/deploy").unwrap(),
            ("127.0.0.1:9000".into(), "/hooks/deploy".into())
        );
        assert_eq!(
            split_url("http://example.com").unwrap(),
            ("example.com:80".into(), "/".into())
        );
        assert!(split_url("https://example.com/").unwrap_err().contains("https"));
        assert!(
            split_url("http://user:pw@example.com/")
                .unwrap_err()
                .contains("secret_file")
        );
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn an_answer_is_its_status_and_body() {
        let a = parse_answer(b"HTTP/1.1 503 Service Unavailable\r\nx: y\r\n\r\nnot yet\n").unwrap();
        assert_eq!(
            (a.status, a.reason.as_str(), a.body.as_str()),
            (503, "Service Unavailable", "not yet")
        );
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").is_none());
        assert!(parse_answer(b"").is_none());
    }
}
