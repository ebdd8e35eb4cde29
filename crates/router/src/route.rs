//! The per-request routing decision shared by the HTTP/1 fast path and the HTTP/2 path, and the error replies the router makes itself.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, StatusCode};
use wire::router_config::AffinityMode;

use crate::proxy::ConnCtx;
use crate::shared::Shared;
use crate::table::{CRelease, Choice, Compiled, How, Inputs, RequestView, bucket_of};
use crate::upstream::Upstream;

/// A response the router makes itself: JSON `{"error", "reason"}` plus an
/// `x-slipway-error` header naming the code.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub code: &'static str,
    pub body: String,
}

impl Reply {
    pub fn new(status: StatusCode, code: &'static str, reason: &str) -> Reply {
        Reply {
            status,
            code,
            body: serde_json::json!({ "error": code, "reason": reason }).to_string(),
        }
    }

    /// Serializes as an HTTP/1.1 response into `out`.
    pub fn write_h1(&self, out: &mut Vec<u8>, close: bool) {
        use std::io::Write;
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nx-slipway-error: {}\r\ncontent-length: {}\r\n{}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            self.code,
            self.body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        out.extend_from_slice(self.body.as_bytes());
    }
}

/// Where a request goes.
pub struct Routed {
    pub table: Arc<Compiled>,
    pub index: usize,
    pub how: How,
    pub upstream: Arc<Upstream>,
    /// `Set-Cookie` to add to the response (a new or moved session).
    pub set_cookie: Option<HeaderValue>,
}

impl Routed {
    pub fn release(&self) -> &CRelease {
        &self.table.releases[self.index]
    }

    /// Whether the request belongs to an existing session (which may use
    /// draining instances).
    pub fn sticky(&self) -> bool {
        self.how != How::Weight
    }
}

/// What the router needs from a request besides cohort lookups.
pub struct RequestFacts<'a> {
    /// Value of the client-version header, if sent.
    pub client_version: Option<&'a [u8]>,
    /// Value of the session cookie, if sent.
    pub cookie: Option<&'a str>,
    /// Value of the affinity key header, if configured and sent.
    pub key: Option<&'a [u8]>,
}

/// Reads a client version leniently: `v1.2`, `1.2` and `1.2.3-beta` all work.
pub fn parse_client_version(s: &str) -> Option<semver::Version> {
    let s = s.trim().trim_start_matches(['v', 'V']);
    if let Ok(v) = semver::Version::parse(s) {
        return Some(v);
    }
    let (core, rest) = match s.find(['-', '+']) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let padded = match core.split('.').count() {
        1 => format!("{core}.0.0{rest}"),
        2 => format!("{core}.0{rest}"),
        _ => return None,
    };
    semver::Version::parse(&padded).ok()
}

pub fn ip_bucket(ip: IpAddr) -> u32 {
    match ip.to_canonical() {
        IpAddr::V4(v) => bucket_of(&v.octets()),
        IpAddr::V6(v) => bucket_of(&v.octets()),
    }
}

fn upgrade_required(releases: &[CRelease], version: &semver::Version, header_name: &str) -> Reply {
    let served: Vec<serde_json::Value> = releases
        .iter()
        .filter(|r| r.state != wire::RouteState::Down)
        .map(|r| {
            serde_json::json!({
                "release": &*r.id,
                "client_versions": r.versions.as_ref().map(|v| v.to_string()),
            })
        })
        .collect();
    let body = serde_json::json!({
        "error": "upgrade_required",
        "reason": format!("no release serves client version {version} (from header {header_name}); update the client"),
        "client_version": version.to_string(),
        "served": served,
    });
    Reply {
        status: StatusCode::UPGRADE_REQUIRED,
        code: "upgrade_required",
        body: body.to_string(),
    }
}

/// Chooses release and instance for a request, or the reply that refuses it.
pub fn decide(
    shared: &Shared,
    conn: &ConnCtx,
    view: &dyn RequestView,
    facts: &RequestFacts<'_>,
) -> Result<Routed, Reply> {
    let table = shared.table.load_full();
    let cfg = &shared.config;
    let version = match facts.client_version {
        None => None,
        Some(v) => match std::str::from_utf8(v).ok().and_then(parse_client_version) {
            Some(v) => Some(v),
            None => {
                let reason = format!("header {} is not a version like 1.2.3", cfg.version_header);
                return Err(Reply::new(StatusCode::BAD_REQUEST, "bad_client_version", &reason));
            }
        },
    };
    let affinity = conn.listener.affinity;
    let uses_cookie = matches!(affinity, AffinityMode::Cookie | AffinityMode::Header);
    let sticky = if uses_cookie {
        facts.cookie.and_then(|v| shared.signer.verify(v))
    } else {
        None
    };
    let bucket = match affinity {
        AffinityMode::Header => facts.key.map(bucket_of),
        AffinityMode::ClientIp => Some(ip_bucket(conn.peer.ip())),
        AffinityMode::Cookie | AffinityMode::None => None,
    };
    let inputs = Inputs {
        version: version.as_ref(),
        sticky,
        bucket,
        random: fastrand::u64(..),
    };
    let (index, how) = match table.choose(view, &inputs) {
        Choice::Release { index, how } => (index, how),
        Choice::UpgradeRequired => {
            let v = version.unwrap_or_else(|| semver::Version::new(0, 0, 0));
            return Err(upgrade_required(&table.releases, &v, cfg.version_header.as_str()));
        }
        Choice::Unavailable(reason) => {
            return Err(Reply::new(StatusCode::SERVICE_UNAVAILABLE, "no_release", reason));
        }
    };
    let release = &table.releases[index];
    let upstream = release.pick_instance(how != How::Weight, None).ok_or_else(|| {
        let reason = format!("release {} has no healthy instance", release.id);
        Reply::new(StatusCode::SERVICE_UNAVAILABLE, "no_instance", &reason)
    })?;
    let set_cookie = (uses_cookie && how != How::Key && sticky != Some(&*release.id))
        .then(|| release.set_cookie[conn.listener.tls as usize].clone());
    Ok(Routed {
        table,
        index,
        how,
        upstream,
        set_cookie,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_versions_are_read_leniently() {
        assert_eq!(parse_client_version("1.2.3"), Some(semver::Version::new(1, 2, 3)));
        assert_eq!(parse_client_version("v2"), Some(semver::Version::new(2, 0, 0)));
        assert_eq!(parse_client_version(" 1.4 "), Some(semver::Version::new(1, 4, 0)));
        assert_eq!(
            parse_client_version("1.4-beta.1"),
            Some(semver::Version::parse("1.4.0-beta.1").unwrap())
        );
        assert_eq!(parse_client_version("banana"), None);
        assert_eq!(parse_client_version("1.2.3.4"), None);
    }

    #[test]
    fn replies_serialize_as_http1() {
        let mut out = Vec::new();
        Reply::new(StatusCode::BAD_GATEWAY, "upstream_failed", "it broke").write_h1(&mut out, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
        assert!(text.contains("x-slipway-error: upstream_failed\r\n"));
        assert!(text.contains("connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    }
}
