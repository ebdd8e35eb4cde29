//! Who may see the dashboard: logins with the control plane's token or a one-time link, session cookies and their
//! CSRF tokens. Pure apart from the random ids it is handed: time comes in as a parameter.

use std::collections::HashMap;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "slipway_session";
/// How long a session lasts without use.
pub(crate) const SESSION_IDLE_MS: u64 = 12 * 3600 * 1000;
/// How long a one-time link stays valid.
pub(crate) const LINK_TTL_MS: u64 = 5 * 60 * 1000;
/// Sessions kept at most (the oldest goes first).
const MAX_SESSIONS: usize = 256;
/// One-time links outstanding at most.
const MAX_LINKS: usize = 64;

/// A logged-in browser.
#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    last_ms: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No session cookie, or one that names no live session.
    NoSession,
    /// A write without the session's CSRF token.
    BadCsrf,
    /// A wrong control-plane token at login.
    BadToken,
    /// A one-time link that is unknown, used already or expired.
    BadLink,
}

impl Refusal {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::NoSession => "log in first: no valid session cookie",
            Refusal::BadCsrf => "missing or wrong CSRF token",
            Refusal::BadToken => "wrong token",
            Refusal::BadLink => "this login link is unknown, was used already or has expired",
        }
    }
}

/// The sessions and one-time links of one dashboard.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    sessions: HashMap<String, Session>,
    /// One-time link codes and when they expire.
    links: HashMap<String, u64>,
}

/// Equal in constant time (for equal lengths); empty never matches.
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() || b.is_empty() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// A login with the control plane's token: a new session `(id, csrf)` if it matches.
    pub(crate) fn login(&mut self, given: &str, token: &str, ids: (String, String), now: u64) -> Result<(), Refusal> {
        if !same(given.trim(), token) {
            return Err(Refusal::BadToken);
        }
        self.open(ids, now);
        Ok(())
    }

    fn open(&mut self, (id, csrf): (String, String), now: u64) {
        self.expire(now);
        if self.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(k, _)| k.clone())
        {
            self.sessions.remove(&oldest);
        }
        self.sessions.insert(id, Session { csrf, last_ms: now });
    }

    /// A new one-time link code (valid for `LINK_TTL_MS`).
    pub(crate) fn issue_link(&mut self, code: String, now: u64) {
        self.expire(now);
        if self.links.len() >= MAX_LINKS
            && let Some(first) = self.links.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
        {
            self.links.remove(&first);
        }
        self.links.insert(code, now + LINK_TTL_MS);
    }

    /// Uses a one-time link: a new session if the code is known and fresh; the code is spent either way.
    pub(crate) fn redeem(&mut self, code: &str, ids: (String, String), now: u64) -> Result<(), Refusal> {
        self.expire(now);
        let found = self.links.keys().find(|k| same(k, code)).cloned();
        match found.and_then(|k| self.links.remove(&k)) {
            Some(_) => {
                self.open(ids, now);
                Ok(())
            }
            None => Err(Refusal::BadLink),
        }
    }

    /// The session's CSRF token, if the cookie names a live session (and marks it used).
    pub(crate) fn check(&mut self, id: &str, now: u64) -> Result<String, Refusal> {
        self.expire(now);
        let key = self
            .sessions
            .keys()
            .find(|k| same(k, id))
            .cloned()
            .ok_or(Refusal::NoSession)?;
        let s = self.sessions.get_mut(&key).ok_or(Refusal::NoSession)?;
        s.last_ms = now;
        Ok(s.csrf.clone())
    }

    /// A write: the session must be live and `given` its CSRF token.
    pub(crate) fn check_write(&mut self, id: &str, given: &str, now: u64) -> Result<(), Refusal> {
        let csrf = self.check(id, now)?;
        if same(given, &csrf) {
            Ok(())
        } else {
            Err(Refusal::BadCsrf)
        }
    }

    pub(crate) fn logout(&mut self, id: &str) {
        self.sessions.retain(|k, _| !same(k, id));
    }

    fn expire(&mut self, now: u64) {
        self.sessions
            .retain(|_, s| now.saturating_sub(s.last_ms) < SESSION_IDLE_MS);
        self.links.retain(|_, until| now < *until);
    }
}

/// The session id in a `Cookie` header, if any.
pub(crate) fn session_cookie(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value for a session.
pub(crate) fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_IDLE_MS / 1000
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u32) -> (String, String) {
        (format!("sess{n}"), format!("csrf{n}"))
    }

    #[test]
    fn a_login_with_the_token_opens_a_session_and_a_wrong_token_does_not() {
        let mut s = Sessions::default();
        assert_eq!(s.login("nope", "secret", ids(1), 0), Err(Refusal::BadToken));
        assert_eq!(s.login("", "secret", ids(1), 0), Err(Refusal::BadToken));
        assert_eq!(s.check("sess1", 0), Err(Refusal::NoSession));
        s.login(" secret\n", "secret", ids(1), 0).unwrap();
        assert_eq!(s.check("sess1", 10).unwrap(), "csrf1");
    }

    #[test]
    fn a_forged_or_missing_cookie_names_no_session() {
        let mut s = Sessions::default();
        s.login("secret", "secret", ids(1), 0).unwrap();
        for bad in ["", "sess2", "sess1 ", "SESS1", "sess"] {
            assert_eq!(s.check(bad, 1), Err(Refusal::NoSession), "{bad:?}");
        }
    }

    #[test]
    fn a_write_needs_the_sessions_own_csrf_token() {
        let mut s = Sessions::default();
        s.login("secret", "secret", ids(1), 0).unwrap();
        s.login("secret", "secret", ids(2), 0).unwrap();
        assert_eq!(s.check_write("sess1", "", 1), Err(Refusal::BadCsrf));
        assert_eq!(
            s.check_write("sess1", "csrf2", 1),
            Err(Refusal::BadCsrf),
            "another session's token"
        );
        assert_eq!(s.check_write("sess1", "forged", 1), Err(Refusal::BadCsrf));
        assert_eq!(s.check_write("sess3", "csrf1", 1), Err(Refusal::NoSession));
        s.check_write("sess1", "csrf1", 1).unwrap();
    }

    #[test]
    fn a_one_time_link_works_once_and_not_after_it_expired() {
        let mut s = Sessions::default();
        s.issue_link("code".into(), 0);
        s.redeem("code", ids(1), 1).unwrap();
        assert_eq!(s.redeem("code", ids(2), 2), Err(Refusal::BadLink), "reused");
        assert_eq!(s.redeem("other", ids(2), 2), Err(Refusal::BadLink), "unknown");
        s.issue_link("late".into(), 0);
        assert_eq!(s.redeem("late", ids(3), LINK_TTL_MS), Err(Refusal::BadLink), "expired");
        assert!(s.check("sess1", 3).is_ok());
    }

    #[test]
    fn sessions_expire_when_idle_and_logout_ends_them() {
        let mut s = Sessions::default();
        s.login("t", "t", ids(1), 0).unwrap();
        s.login("t", "t", ids(2), 0).unwrap();
        assert!(s.check("sess1", SESSION_IDLE_MS - 1).is_ok(), "use keeps it alive");
        assert_eq!(s.check("sess2", SESSION_IDLE_MS), Err(Refusal::NoSession));
        s.logout("sess1");
        assert_eq!(s.check("sess1", SESSION_IDLE_MS), Err(Refusal::NoSession));
    }

    #[test]
    fn the_session_table_and_the_links_stay_bounded() {
        let mut s = Sessions::default();
        for n in 0..(MAX_SESSIONS as u32 + 10) {
            s.login("t", "t", ids(n), n as u64).unwrap();
            s.issue_link(format!("c{n}"), n as u64);
        }
        assert_eq!(s.sessions.len(), MAX_SESSIONS);
        assert_eq!(s.links.len(), MAX_LINKS);
        assert!(s.check("sess0", 1000).is_err(), "the oldest went first");
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_http_only_same_site_strict() {
        assert_eq!(session_cookie("a=b; slipway_session=xyz; c=d"), Some("xyz"));
        assert_eq!(session_cookie("slipway_session_x=1"), None);
        assert_eq!(session_cookie(""), None);
        let c = set_cookie("xyz");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/"));
    }
}
