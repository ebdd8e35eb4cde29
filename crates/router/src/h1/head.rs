//! HTTP/1.x heads parsed as offsets into the read buffer, and the message framing rules.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ops::Range;

use crate::affinity::cookie_in;
use crate::table::RequestView;

pub const MAX_HEADERS: usize = 128;

/// Why a head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    Malformed,
    TooManyHeaders,
}

/// A head whose parts are ranges of the buffer it was parsed from.
#[derive(Debug, Default)]
pub struct Head {
    /// Length of the head, blank line included.
    pub len: usize,
    /// Request: method. Response: unused.
    pub method: Range<usize>,
    /// Request: target. Response: reason phrase.
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Response status.
    pub status: u16,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
}

fn range_of(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

impl Head {
    /// Parses a request head at the start of `buf`; `Ok(false)` if incomplete.
    pub fn parse_request(&mut self, buf: &[u8]) -> Result<bool, HeadError> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let n = match req.parse_with_uninit_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(_) => return Err(HeadError::Malformed),
        };
        let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
            return Err(HeadError::Malformed);
        };
        self.len = n;
        self.method = range_of(buf, method.as_bytes());
        self.target = range_of(buf, path.as_bytes());
        self.minor = minor;
        self.status = 0;
        self.headers.clear();
        for h in req.headers.iter() {
            self.headers
                .push((range_of(buf, h.name.as_bytes()), range_of(buf, h.value)));
        }
        Ok(true)
    }

    /// Parses a response head at the start of `buf`; `Ok(false)` if incomplete.
    pub fn parse_response(&mut self, buf: &[u8]) -> Result<bool, HeadError> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut slots) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(_) => return Err(HeadError::Malformed),
        };
        let (Some(code), Some(minor)) = (resp.code, resp.version) else {
            return Err(HeadError::Malformed);
        };
        self.len = n;
        self.method = 0..0;
        self.target = resp.reason.map_or(0..0, |r| range_of(buf, r.as_bytes()));
        self.minor = minor;
        self.status = code;
        self.headers.clear();
        for h in resp.headers.iter() {
            self.headers
                .push((range_of(buf, h.name.as_bytes()), range_of(buf, h.value)));
        }
        Ok(true)
    }

    /// Values of every header called `name` (ASCII case-insensitive).
    pub fn values<'s, 'b, 'n>(
        &'s self,
        buf: &'b [u8],
        name: &'n str,
    ) -> impl Iterator<Item = &'b [u8]> + use<'s, 'b, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(move |(_, v)| &buf[v.clone()])
    }

    pub fn value<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &buf[v.clone()])
    }

    /// Whether a comma-separated header (`Connection`) holds `token`.
    pub fn has_token(&self, buf: &[u8], name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .any(|(_, v)| {
                buf[v.clone()]
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
            })
    }
}

/// How the end of a message body is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// Why a message's framing cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Both Transfer-Encoding and Content-Length (a smuggling vector).
    Both,
    /// Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1: faulty framing).
    CodingInHttp10,
    BadLength,
    UnsupportedCoding,
}

fn content_length(head: &Head, buf: &[u8]) -> Result<Option<u64>, FramingError> {
    let mut found: Option<u64> = None;
    for v in head.values(buf, "content-length") {
        for part in v.split(|b| *b == b',') {
            let t = part.trim_ascii();
            if t.is_empty() || !t.iter().all(u8::is_ascii_digit) || t.len() > 18 {
                return Err(FramingError::BadLength);
            }
            let n: u64 = std::str::from_utf8(t)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(FramingError::BadLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(FramingError::BadLength);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// The last transfer coding named, if any header names one.
fn last_coding<'b>(head: &Head, buf: &'b [u8]) -> Option<&'b [u8]> {
    head.values(buf, "transfer-encoding")
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .last()
}

/// Body framing of a request (RFC 9112 §6.3), refusing anything ambiguous.
pub fn request_framing(head: &Head, buf: &[u8]) -> Result<Framing, FramingError> {
    let has_te = head.value(buf, "transfer-encoding").is_some();
    let cl = content_length(head, buf)?;
    if has_te {
        if cl.is_some() {
            return Err(FramingError::Both);
        }
        if head.minor == 0 {
            return Err(FramingError::CodingInHttp10);
        }
        // Only plain "chunked" is accepted for requests: anything else the
        // upstream might frame differently. An empty element stays in (and is
        // refused): an upstream reading the last header `chunked, ` or a
        // second, empty Transfer-Encoding would find no coding at all.
        let codings: Vec<&[u8]> = head
            .values(buf, "transfer-encoding")
            .flat_map(|v| v.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        return if codings.len() == 1 && codings[0].eq_ignore_ascii_case(b"chunked") {
            Ok(Framing::Chunked)
        } else {
            Err(FramingError::UnsupportedCoding)
        };
    }
    Ok(match cl {
        Some(0) | None => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

/// Body framing of a response to a request with method `method`.
pub fn response_framing(head: &Head, buf: &[u8], method: &[u8]) -> Result<Framing, FramingError> {
    let s = head.status;
    if method == b"HEAD" || (100..200).contains(&s) || s == 204 || s == 304 {
        return Ok(Framing::None);
    }
    if head.value(buf, "transfer-encoding").is_some() {
        return Ok(match last_coding(head, buf) {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::Close,
        });
    }
    Ok(match content_length(head, buf)? {
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// Why a request head is refused before routing, whatever its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictError {
    /// `Connection` names Content-Length, Transfer-Encoding or Host: a proxy
    /// that drops what `Connection` names would frame the message differently
    /// from the upstream (request smuggling).
    ConnectionNamesFraming,
    /// More than one Host header, or a Host value holding a list.
    AmbiguousHost,
    /// An absolute-form target with `user:pass@` in its authority.
    UserInfo,
    /// A target that is neither origin-form nor absolute-form (`*` only for OPTIONS).
    BadTarget,
}

impl StrictError {
    pub fn reason(self) -> &'static str {
        match self {
            StrictError::ConnectionNamesFraming => "Connection names Content-Length, Transfer-Encoding or Host",
            StrictError::AmbiguousHost => "more than one Host, or a Host list",
            StrictError::UserInfo => "userinfo in the request target",
            StrictError::BadTarget => "request target must start with / (or be * for OPTIONS, or absolute)",
        }
    }
}

/// Names `Connection` may never list: dropping them would change framing or routing.
fn is_protected(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"content-length")
        || token.eq_ignore_ascii_case(b"transfer-encoding")
        || token.eq_ignore_ascii_case(b"host")
}

/// The checks RFC 9112 asks of a proxy beyond framing (Host, target form),
/// and the `Connection` smuggling shape; one pass over the headers.
pub fn strict_request(head: &Head, buf: &[u8]) -> Result<(), StrictError> {
    let mut hosts = 0u32;
    for (n, v) in &head.headers {
        let name = &buf[n.clone()];
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 || buf[v.clone()].contains(&b',') {
                return Err(StrictError::AmbiguousHost);
            }
        } else if name.eq_ignore_ascii_case(b"connection")
            && buf[v.clone()]
                .split(|b| *b == b',')
                .any(|t| is_protected(t.trim_ascii()))
        {
            return Err(StrictError::ConnectionNamesFraming);
        }
    }
    let target = &buf[head.target.clone()];
    match target.first() {
        Some(b'/') => Ok(()),
        Some(b'*') if target.len() == 1 && &buf[head.method.clone()] == b"OPTIONS" => Ok(()),
        _ => match absolute_form(target) {
            (_, Some(authority)) if authority.contains(&b'@') => Err(StrictError::UserInfo),
            (_, Some(authority)) if !authority.is_empty() => Ok(()),
            _ => Err(StrictError::BadTarget),
        },
    }
}

/// Hop-by-hop headers the router never forwards as they came.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"upgrade",
        b"proxy-authenticate",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// A request head seen through the routing interface.
pub struct RequestHead<'a> {
    pub head: &'a Head,
    pub buf: &'a [u8],
    pub ip: IpAddr,
}

impl RequestView for RequestHead<'_> {
    fn header(&self, name: &http::HeaderName) -> Option<&str> {
        self.head
            .value(self.buf, name.as_str())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        find_cookie(self.head, self.buf, name)
    }

    fn query(&self, name: &str) -> Option<&str> {
        let target = std::str::from_utf8(&self.buf[self.head.target.clone()]).ok()?;
        let (_, query) = target.split_once('?')?;
        query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    fn client_ip(&self) -> IpAddr {
        self.ip
    }
}

/// The value of cookie `name` in the head's `Cookie` headers.
pub fn find_cookie<'b>(head: &Head, buf: &'b [u8], name: &str) -> Option<&'b str> {
    head.values(buf, "cookie")
        .find_map(|v| cookie_in(std::str::from_utf8(v).ok()?, name))
}

/// Splits an absolute-form target (`http://host/path`) into origin-form path
/// and authority; other targets come back unchanged with no authority.
pub fn absolute_form(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return (target, None);
    };
    match rest.iter().position(|b| *b == b'/' || *b == b'?') {
        // A target like `http://h?q` keeps `?q`; the caller adds the `/`.
        Some(i) => (&rest[i..], Some(&rest[..i])),
        None => (b"/", Some(rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> (Head, Vec<u8>) {
        let buf = text.as_bytes().to_vec();
        let mut h = Head::default();
        assert!(h.parse_request(&buf).unwrap(), "incomplete: {text}");
        (h, buf)
    }

    #[test]
    fn request_framing_refuses_smuggling_shapes() {
        let (h, b) = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(request_framing(&h, &b), Err(FramingError::Both));
        let (h, b) = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(request_framing(&h, &b), Err(FramingError::BadLength));
        let (h, b) = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n");
        assert_eq!(request_framing(&h, &b), Err(FramingError::BadLength));
        let (h, b) = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(request_framing(&h, &b), Err(FramingError::UnsupportedCoding));
        let (h, b) = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(request_framing(&h, &b), Ok(Framing::Chunked));
        let (h, b) = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(request_framing(&h, &b), Ok(Framing::Length(5)));
        let (h, b) = req("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(request_framing(&h, &b), Ok(Framing::None));
        let (h, b) = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n");
        assert_eq!(
            request_framing(&h, &b),
            Err(FramingError::UnsupportedCoding),
            "an empty last coding"
        );
        let (h, b) = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked,\r\n\r\n");
        assert_eq!(request_framing(&h, &b), Err(FramingError::UnsupportedCoding));
        let (h, b) = req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(request_framing(&h, &b), Err(FramingError::CodingInHttp10));
    }

    #[test]
    fn strict_request_refuses_smuggling_and_lenient_shapes() {
        let check = |text: &str| {
            let (h, b) = req(text);
            strict_request(&h, &b)
        };
        use StrictError::*;
        for (text, want) in [
            ("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", Ok(())),
            ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", Ok(())),
            ("GET http://h/p HTTP/1.1\r\nHost: x\r\n\r\n", Ok(())),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\n\r\n",
                Err(ConnectionNamesFraming),
            ),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: close, TRANSFER-encoding\r\n\r\n",
                Err(ConnectionNamesFraming),
            ),
            (
                "GET / HTTP/1.1\r\nConnection: x,host \r\nHost: x\r\n\r\n",
                Err(ConnectionNamesFraming),
            ),
            ("GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", Err(AmbiguousHost)),
            ("GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", Err(AmbiguousHost)),
            (
                "GET http://u:p@evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
                Err(UserInfo),
            ),
            ("GET evil HTTP/1.1\r\nHost: x\r\n\r\n", Err(BadTarget)),
            ("GET * HTTP/1.1\r\nHost: x\r\n\r\n", Err(BadTarget)),
            ("GET http:// HTTP/1.1\r\nHost: x\r\n\r\n", Err(BadTarget)),
        ] {
            assert_eq!(check(text), want, "{text:?}");
        }
    }

    #[test]
    fn response_framing_follows_the_rules() {
        let resp = |text: &str, method: &[u8]| {
            let buf = text.as_bytes().to_vec();
            let mut h = Head::default();
            assert!(h.parse_response(&buf).unwrap());
            response_framing(&h, &buf, method)
        };
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"GET"),
            Ok(Framing::Length(3))
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", b"HEAD"),
            Ok(Framing::None)
        );
        assert_eq!(
            resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", b"GET"),
            Ok(Framing::None)
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", b"GET"),
            Ok(Framing::Close)
        );
        assert_eq!(resp("HTTP/1.1 200 OK\r\n\r\n", b"GET"), Ok(Framing::Close));
    }

    #[test]
    fn absolute_form_targets_become_origin_form() {
        assert_eq!(absolute_form(b"/a?b"), (&b"/a?b"[..], None));
        assert_eq!(absolute_form(b"http://h:1/a?b"), (&b"/a?b"[..], Some(&b"h:1"[..])));
        assert_eq!(absolute_form(b"http://h"), (&b"/"[..], Some(&b"h"[..])));
        assert_eq!(absolute_form(b"*"), (&b"*"[..], None));
    }

    #[test]
    fn views_find_headers_cookies_and_query() {
        let (h, b) = req(
            "GET /p?a=1&beta=yes HTTP/1.1\r\nHost: x\r\nX-Beta: 1\r\nCookie: a=b; team=qa\r\n\
            Connection: keep-alive, Upgrade\r\n\r\n",
        );
        let v = RequestHead {
            head: &h,
            buf: &b,
            ip: IpAddr::from([1, 2, 3, 4]),
        };
        assert_eq!(v.header(&http::HeaderName::from_static("x-beta")), Some("1"));
        assert_eq!(v.cookie("team"), Some("qa"));
        assert_eq!(v.query("beta"), Some("yes"));
        assert!(h.has_token(&b, "connection", "upgrade"));
        assert!(!h.has_token(&b, "connection", "close"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const NAMES: &[&str] = &[
            "Host",
            "host",
            "Content-Length",
            "content-length",
            "Transfer-Encoding",
            "TRANSFER-ENCODING",
            "Connection",
            "Upgrade",
            "Cookie",
            "X-A",
            "Expect",
            "Content-Length ",
            " Host",
            "Te",
        ];
        const VALUES: &[&str] = &[
            "x",
            "5",
            "0",
            "+5",
            "5, 5",
            "5,6",
            "chunked",
            "Chunked",
            "identity, chunked",
            "chunked, gzip",
            "close",
            "keep-alive",
            "content-length",
            "Host",
            "transfer-encoding, x",
            "a, b",
            "",
            " 7 ",
            "\"chunked\"",
            "99999999999999999999",
        ];

        fn head_text(line: &str, headers: &[(usize, usize)]) -> String {
            let mut t = format!("{line}\r\n");
            for (n, v) in headers {
                t.push_str(&format!("{}: {}\r\n", NAMES[*n], VALUES[*v]));
            }
            t.push_str("\r\n");
            t
        }

        /// The naive reading a second implementation would make: all lengths, all codings.
        fn naive(head: &Head, buf: &[u8]) -> (Vec<String>, Vec<String>) {
            let list = |name| -> Vec<String> {
                head.values(buf, name)
                    .flat_map(|v| v.split(|b| *b == b','))
                    .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
                    .collect()
            };
            (list("content-length"), list("transfer-encoding"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Any bytes: parsing, framing and the strict checks never panic, a head
            /// never holds more than MAX_HEADERS, and no prefix of a head parses as
            /// a different head.
            #[test]
            fn any_bytes_parse_without_panic_and_prefixes_never_complete_early(
                input in proptest::collection::vec(
                    prop_oneof![Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), any::<u8>()], 0..300),
            ) {
                let mut h = Head::default();
                if let Ok(true) = h.parse_request(&input) {
                    prop_assert!(h.headers.len() <= MAX_HEADERS && h.len <= input.len());
                    let _ = request_framing(&h, &input);
                    let _ = strict_request(&h, &input);
                    let len = h.len;
                    for cut in 0..len {
                        let mut p = Head::default();
                        prop_assert!(!matches!(p.parse_request(&input[..cut]), Ok(true)));
                    }
                }
            }

            /// Generated heads from smuggling-shaped names and values: whatever is accepted
            /// has exactly one reading (one length, or chunked alone; one Host; nothing
            /// framing-related named by Connection).
            #[test]
            fn accepted_heads_have_one_reading(
                line in prop_oneof![Just("POST / HTTP/1.1"), Just("GET /a?b HTTP/1.1"), Just("PUT / HTTP/1.0")],
                headers in proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..8),
            ) {
                let text = head_text(line, &headers);
                let buf = text.as_bytes();
                let mut h = Head::default();
                let Ok(true) = h.parse_request(buf) else { return Ok(()) };
                let (Ok(framing), Ok(())) = (request_framing(&h, buf), strict_request(&h, buf)) else {
                    return Ok(());
                };
                let (lengths, codings) = naive(&h, buf);
                match framing {
                    Framing::Chunked => {
                        prop_assert!(lengths.is_empty());
                        prop_assert_eq!(codings, vec!["chunked".to_string()]);
                        prop_assert_eq!(h.minor, 1);
                    }
                    Framing::Length(n) => {
                        prop_assert!(codings.is_empty());
                        prop_assert!(!lengths.is_empty() && lengths.iter().all(|l| l.parse::<u64>() == Ok(n)));
                    }
                    Framing::None => {
                        prop_assert!(codings.is_empty());
                        prop_assert!(lengths.iter().all(|l| l.parse::<u64>() == Ok(0)));
                    }
                    Framing::Close => prop_assert!(false, "a request framed until close"),
                }
                prop_assert!(h.values(buf, "host").count() <= 1);
                prop_assert!(!h.has_token(buf, "connection", "content-length"));
                prop_assert!(!h.has_token(buf, "connection", "transfer-encoding"));
                prop_assert!(!h.has_token(buf, "connection", "host"));
            }
        }
    }
}
