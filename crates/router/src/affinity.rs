//! Session cookies that name a release, signed with a keyed BLAKE3 MAC so clients cannot forge one.

use http::HeaderMap;

/// Signs and checks `<release>.<mac>` cookie values.
#[derive(Clone)]
pub struct CookieSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSigner(<secret>)")
    }
}

const MAC_HEX: usize = 32;

impl CookieSigner {
    pub fn new(key: [u8; 32]) -> CookieSigner {
        CookieSigner { key }
    }

    /// The key, for handing over to a new router process.
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    fn mac(&self, release: &str) -> [u8; 16] {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(b"slipway release cookie\0");
        hasher.update(release.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        out
    }

    /// The cookie value for a session on `release`.
    pub fn value(&self, release: &str) -> String {
        let mut s = String::with_capacity(release.len() + 1 + MAC_HEX);
        s.push_str(release);
        s.push('.');
        for b in self.mac(release) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The release a cookie value names, if its MAC is right.
    pub fn verify<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (release, mac_hex) = value.rsplit_once('.')?;
        if mac_hex.len() != MAC_HEX || release.is_empty() {
            return None;
        }
        let want = self.mac(release);
        let mut diff = 0u8;
        for (w, pair) in want.iter().zip(mac_hex.as_bytes().chunks_exact(2)) {
            diff |= hex_byte(pair[0], pair[1])? ^ w;
        }
        (diff == 0).then_some(release)
    }
}

/// Two hex digits as a byte, read as `u8::from_str_radix(_, 16)` reads them
/// (so `+f` is 15) without its per-call cost: every request checks a cookie.
#[inline(always)]
fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    match hi {
        b'+' => digit(lo),
        _ => Some(digit(hi)? << 4 | digit(lo)?),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn find_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .find_map(|h| cookie_in(h.to_str().ok()?, name))
}

/// The value of cookie `name` in one `Cookie` header value.
#[inline(always)]
pub fn cookie_in<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .find_map(|pair| pair.trim_start().strip_prefix(name)?.strip_prefix('='))
        .map(str::trim_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_value_verifies_and_a_tampered_one_does_not() {
        let s = CookieSigner::new([7; 32]);
        let v = s.value("v2");
        assert_eq!(s.verify(&v), Some("v2"));
        let forged = v.replacen("v2", "v1", 1);
        assert_eq!(s.verify(&forged), None);
        assert_eq!(s.verify("v1"), None);
        assert_eq!(s.verify("v1.zz"), None);
        assert_eq!(CookieSigner::new([8; 32]).verify(&v), None, "another router key");
    }

    #[test]
    fn hex_pairs_read_as_from_str_radix_reads_them() {
        for hi in 0..=255u8 {
            for lo in 0..=255u8 {
                let want = std::str::from_utf8(&[hi, lo])
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok());
                assert_eq!(hex_byte(hi, lo), want, "{hi:#x} {lo:#x}");
            }
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; slipway_release=v2.abc".parse().unwrap());
        h.append("cookie", "other=2".parse().unwrap());
        assert_eq!(find_cookie(&h, "slipway_release"), Some("v2.abc"));
        assert_eq!(find_cookie(&h, "other"), Some("2"));
        assert_eq!(find_cookie(&h, "slipway"), None);
    }
}
