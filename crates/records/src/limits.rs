//! What the records layer accepts (kinds, keys, holders, lease times, crawl rates), checked before any write.

use std::time::Duration;

use crate::Error;

/// A kind is 1 to 64 bytes: an ASCII letter, then ASCII letters, digits, `_`, `-` or `.`.
pub const MAX_KIND_BYTES: usize = 64;
/// A key is 1 to 256 bytes of text (see [`key`] for the characters).
pub const MAX_KEY_BYTES: usize = 256;
/// A lease holder (a server's name) is 1 to 128 bytes of text, the same characters as a key.
pub const MAX_HOLDER_BYTES: usize = 128;
/// The longest lease (at least 1 ms); a server that holds a record longer renews its lease.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);
/// The slowest crawl rate, in records per second (no rate: as fast as the store goes).
pub const MIN_CRAWL_RATE: f64 = 0.01;
/// The fastest crawl rate, in records per second.
pub const MAX_CRAWL_RATE: f64 = 1e9;
/// The most records a crawl batch may hold (its memory and lock window).
pub const MAX_CRAWL_BATCH: usize = 100_000;
/// The largest request body the HTTP service reads (a record's payload).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Characters a key or holder never has: control characters (U+0000–U+001F, U+007F–U+009F), the Unicode line
/// and paragraph separators and the bidirectional controls (which make one key print like another).
fn forbidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{FEFF}'
        )
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

fn text(what: &'static str, s: &str, max: usize) -> Result<(), Error> {
    if s.is_empty() {
        return Err(Error::invalid(what, "it is empty"));
    }
    if s.len() > max {
        return Err(Error::invalid(
            what,
            format!("it is {} bytes long; at most {max} are allowed", s.len()),
        ));
    }
    if let Some((at, c)) = s.char_indices().find(|(_, c)| forbidden(*c)) {
        return Err(Error::invalid(
            what,
            format!(
                "it has the control character U+{:04X} at byte {at}; only printable text is allowed",
                c as u32
            ),
        ));
    }
    if s.trim() != s {
        return Err(Error::invalid(what, "it starts or ends with white space"));
    }
    Ok(())
}

/// A record kind: 1 to [`MAX_KIND_BYTES`] of `[A-Za-z][A-Za-z0-9_.-]*`.
pub(crate) fn kind(kind: &str) -> Result<(), Error> {
    const WHAT: &str = "record kind";
    if kind.is_empty() || kind.len() > MAX_KIND_BYTES {
        return Err(Error::invalid(
            WHAT,
            format!("it is {} bytes long; a kind has 1 to {MAX_KIND_BYTES}", kind.len()),
        ));
    }
    let ok_first = kind.as_bytes()[0].is_ascii_alphabetic();
    let ok_rest = kind
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !(ok_first && ok_rest) {
        return Err(Error::invalid(
            WHAT,
            "a kind is an ASCII letter followed by ASCII letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(())
}

/// A record key: 1 to [`MAX_KEY_BYTES`] of printable UTF-8 without white space at either end.
pub(crate) fn key(key: &str) -> Result<(), Error> {
    text("record key", key, MAX_KEY_BYTES)
}

/// A lease holder: like a key, at most [`MAX_HOLDER_BYTES`].
pub(crate) fn holder(holder: &str) -> Result<(), Error> {
    text("lease holder", holder, MAX_HOLDER_BYTES)
}

/// When a lease of `ttl` taken at `now` (ms since the epoch) ends; refuses a ttl outside 1 ms..=[`MAX_LEASE`].
pub(crate) fn lease_until(now: i64, ttl: Duration) -> Result<i64, Error> {
    const WHAT: &str = "lease time";
    if ttl < Duration::from_millis(1) || ttl > MAX_LEASE {
        return Err(Error::invalid(
            WHAT,
            format!(
                "{} ms is outside 1 ms to {} ms; renew a lease to hold a record longer",
                ttl.as_millis(),
                MAX_LEASE.as_millis()
            ),
        ));
    }
    let ms = i64::try_from(ttl.as_millis()).map_err(|_| Error::invalid(WHAT, "too long"))?;
    now.checked_add(ms)
        .ok_or_else(|| Error::invalid(WHAT, "the clock is too close to the end of time"))
}

/// A crawl rate: none, or a finite number of records per second in [`MIN_CRAWL_RATE`]..=[`MAX_CRAWL_RATE`].
pub(crate) fn crawl_rate(rate: Option<f64>) -> Result<(), Error> {
    match rate {
        Some(r) if !(MIN_CRAWL_RATE..=MAX_CRAWL_RATE).contains(&r) => Err(Error::invalid(
            "crawl rate",
            format!(
                "{r} records per second is outside {MIN_CRAWL_RATE} to {MAX_CRAWL_RATE}; leave it out for no limit"
            ),
        )),
        _ => Ok(()),
    }
}

/// A crawl's batch bounds: each 1 to [`MAX_CRAWL_BATCH`] records.
pub(crate) fn crawl_batch(min: usize, max: usize) -> Result<(), Error> {
    if !(1..=MAX_CRAWL_BATCH).contains(&min) || !(1..=MAX_CRAWL_BATCH).contains(&max) {
        return Err(Error::invalid(
            "crawl batch",
            format!("{min} to {max} records; a batch holds 1 to {MAX_CRAWL_BATCH}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keys_and_holders_follow_the_documented_rules() {
        for good in ["player", "a", "guild-2", "p.v_1"] {
            assert!(kind(good).is_ok(), "{good}");
        }
        for bad in ["", "1x", "-a", "a b", "a/b", "é", &"k".repeat(MAX_KIND_BYTES + 1)] {
            assert!(kind(bad).is_err(), "{bad}");
        }
        assert!(kind(&"k".repeat(MAX_KIND_BYTES)).is_ok());
        for good in ["p1", "ann@example.org", "a b", "Zoë/ü:7", &"k".repeat(MAX_KEY_BYTES)] {
            assert!(key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a\0b",
            "a\nb",
            "\u{7f}",
            "\u{85}",
            "a\u{202E}b",
            "a\u{2028}",
            " a",
            "a ",
            &"k".repeat(MAX_KEY_BYTES + 1),
        ] {
            let err = key(bad).unwrap_err().to_string();
            assert!(err.starts_with("bad record key: "), "{err}");
        }
        assert!(holder(&"h".repeat(MAX_HOLDER_BYTES + 1)).is_err());
    }

    #[test]
    fn a_lease_time_is_bounded_and_never_overflows() {
        assert_eq!(lease_until(1_000, Duration::from_millis(5)).unwrap(), 1_005);
        assert!(lease_until(1_000, Duration::ZERO).is_err());
        assert!(lease_until(1_000, MAX_LEASE + Duration::from_millis(1)).is_err());
        assert!(lease_until(0, Duration::from_millis(u64::MAX)).is_err());
        assert!(lease_until(i64::MAX - 1, Duration::from_millis(2)).is_err());
    }

    #[test]
    fn a_crawl_rate_is_finite_and_in_range() {
        assert!(crawl_batch(10, 5000).is_ok());
        for (min, max) in [(0, 10), (10, MAX_CRAWL_BATCH + 1), (10, 0)] {
            assert!(crawl_batch(min, max).is_err(), "{min}..{max}");
        }
        assert!(crawl_rate(None).is_ok());
        assert!(crawl_rate(Some(400.0)).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1e10] {
            assert!(crawl_rate(Some(bad)).is_err(), "{bad}");
        }
    }
}
