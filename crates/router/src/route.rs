//! The per-request routing decision that both HTTP paths share.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;
use wire::router_config::AffinityMode;

use crate::conn::ConnCtx;
use crate::reply::{ErrorCode, Reply};
use crate::shared::Shared;
use crate::table::{CRelease, Choice, Compiled, How, Inputs, RequestView, bucket_of};
use crate::upstream::Upstream;

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
    let code = ErrorCode::UpgradeRequired;
    let body = serde_json::json!({
        "error": code.as_str(),
        "reason": format!("no release serves client version {version} (from header {header_name}); update the client"),
        "client_version": version.to_string(),
        "served": served,
    });
    Reply::with_body(code, body)
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
                return Err(Reply::new(ErrorCode::BadClientVersion, &reason));
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
            return Err(Reply::new(ErrorCode::NoRelease, reason));
        }
    };
    let release = &table.releases[index];
    let upstream = release.pick_instance(how != How::Weight, None).ok_or_else(|| {
        let reason = format!("release {} has no healthy instance", release.id);
        Reply::new(ErrorCode::NoInstance, &reason)
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
}
