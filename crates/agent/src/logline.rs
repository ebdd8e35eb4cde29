//! The stamped line format of instance logs: one record per line, `<RFC 3339 UTC time> <stream> <text>`,
//! with hostile output made safe (long lines cut, control bytes and invalid UTF-8 escaped, ANSI codes dropped).
//!
//! A record is `2026-12-04T04:01:35.123456Z out listening on 127.0.0.1:41000`: the time the line was read,
//! to the microsecond, then `out` or `err` (stdout or stderr), a `+` right after it when the record is cut
//! (the line goes on in the next record of that stream: it was longer than [`MAX_RECORD`] bytes, or
//! unfinished for a second), one space and the text. In the text, ANSI escape sequences are dropped, other
//! control bytes (but tab) and bytes that are not UTF-8 are written `\xNN`, and a line's closing `\r` goes.
//! Pure: no clock, no I/O.

/// The longest text one record carries, in bytes of output; a longer line is cut into several records.
pub const MAX_RECORD: usize = 16 * 1024;

/// Which of the instance's outputs a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Out,
    Err,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
        }
    }
}

/// One parsed record of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Microseconds since the Unix epoch.
    pub unix_us: i64,
    pub stream: Stream,
    /// The line goes on in the next record of this stream.
    pub cut: bool,
    pub text: &'a str,
}

/// One record, newline included.
pub fn format_record(unix_us: i64, stream: Stream, cut: bool, raw: &[u8]) -> String {
    let mut s = rfc3339_micros(unix_us);
    s.push(' ');
    s.push_str(stream.as_str());
    if cut {
        s.push('+');
    }
    s.push(' ');
    let raw = if cut {
        raw
    } else {
        raw.strip_suffix(b"\r").unwrap_or(raw)
    };
    sanitize_into(raw, &mut s);
    s.push('\n');
    s
}

/// Reads a record; `None` for a line in another format (written before stamping, or by something else).
pub fn parse_record(line: &str) -> Option<Record<'_>> {
    let (time, rest) = line.split_once(' ')?;
    let unix_us = parse_rfc3339(time)?;
    let (tag, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let (stream, cut) = match tag {
        "out" => (Stream::Out, false),
        "err" => (Stream::Err, false),
        "out+" => (Stream::Out, true),
        "err+" => (Stream::Err, true),
        _ => return None,
    };
    Some(Record {
        unix_us,
        stream,
        cut,
        text,
    })
}

/// `raw` as text safe to store: valid UTF-8 as it is, ANSI escape sequences dropped, every other control
/// byte but tab and every byte that is not UTF-8 as `\xNN`.
pub fn sanitize_into(raw: &[u8], out: &mut String) {
    let mut rest = raw;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text_into(s, out);
                return;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                text_into(std::str::from_utf8(good).unwrap_or_default(), out);
                let n = e.error_len().unwrap_or(bad.len());
                for b in &bad[..n] {
                    hex_into(*b, out);
                }
                rest = &bad[n..];
            }
        }
    }
}

fn hex_into(b: u8, out: &mut String) {
    use std::fmt::Write;
    let _ = write!(out, "\\x{b:02x}");
}

fn text_into(s: &str, out: &mut String) {
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            skip_escape(&mut chars);
        } else if c == '\t' || !(c.is_control()) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            hex_into(c as u8, out);
        } else {
            out.push(c);
        }
    }
}

/// Skips what follows an ESC: a CSI (`ESC [` parameters, intermediates, final byte), an OSC or other
/// string (`ESC ]`, `P`, `^`, `_`, `X` up to BEL or `ESC \`), or one more character.
fn skip_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    match chars.next() {
        Some('[') => {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    return;
                }
                if !('\u{20}'..='\u{3f}').contains(&c) {
                    return; // not a CSI after all: stop at the stray byte (dropped with it)
                }
            }
        }
        Some(']' | 'P' | '^' | '_' | 'X') => {
            while let Some(c) = chars.next() {
                if c == '\u{7}' {
                    return;
                }
                if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                    chars.next();
                    return;
                }
            }
        }
        _ => {}
    }
}

/// What one stream's buffered output becomes: whole lines, lines cut at [`MAX_RECORD`], and a partial line
/// written out after it waited `idle` (as a cut record) or when the stream ends (as a whole one).
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    /// When the buffered partial line's first byte came (caller's clock, microseconds).
    since: Option<i64>,
}

/// A piece of output ready to be a record: its text and whether the line goes on after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub at_us: i64,
    pub cut: bool,
    pub bytes: Vec<u8>,
}

impl Splitter {
    /// Takes bytes read at `now_us`; returns the records they complete.
    pub fn push(&mut self, bytes: &[u8], now_us: i64) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.buf.is_empty() {
                self.since = Some(now_us);
            }
            if self.buf.len() == MAX_RECORD {
                // Full: cut only once the next byte shows the line goes on.
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    out.push(self.take(false));
                } else {
                    out.push(self.cut_at_char_boundary());
                }
                continue;
            }
            let room = MAX_RECORD - self.buf.len();
            let take = rest.len().min(room);
            match rest[..take].iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    self.buf.extend_from_slice(&rest[..nl]);
                    rest = &rest[nl + 1..];
                    out.push(self.take(false));
                }
                None => {
                    self.buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                }
            }
        }
        out
    }

    /// The partial line, cut, if it has waited at least `idle_us` by `now_us`.
    pub fn flush_idle(&mut self, now_us: i64, idle_us: i64) -> Option<Piece> {
        let since = self.since?;
        (!self.buf.is_empty() && now_us - since >= idle_us).then(|| self.take(true))
    }

    /// When the partial line (if any) is due to be flushed.
    pub fn due(&self, idle_us: i64) -> Option<i64> {
        self.since.filter(|_| !self.buf.is_empty()).map(|s| s + idle_us)
    }

    /// The stream ended: the partial line, whole.
    pub fn finish(&mut self) -> Option<Piece> {
        (!self.buf.is_empty()).then(|| self.take(false))
    }

    fn take(&mut self, cut: bool) -> Piece {
        let at_us = self.since.take().unwrap_or_default();
        Piece {
            at_us,
            cut,
            bytes: std::mem::take(&mut self.buf),
        }
    }

    /// A full buffer, cut so that a UTF-8 character is not split (the rest starts the next record).
    fn cut_at_char_boundary(&mut self) -> Piece {
        let at_us = self.since.unwrap_or_default();
        let mut end = self.buf.len();
        for back in 1..4.min(self.buf.len()) {
            let b = self.buf[self.buf.len() - back];
            if b & 0xc0 == 0x80 {
                continue; // a continuation byte: look further back for the lead
            }
            let need = match b {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            if need > back {
                end = self.buf.len() - back;
            }
            break;
        }
        let rest = self.buf.split_off(end);
        let piece = Piece {
            at_us,
            cut: true,
            bytes: std::mem::replace(&mut self.buf, rest),
        };
        self.since = (!self.buf.is_empty()).then_some(at_us);
        piece
    }
}

/// `2026-12-04T04:01:35.123456Z`.
pub fn rfc3339_micros(unix_us: i64) -> String {
    let secs = unix_us.div_euclid(1_000_000);
    let us = unix_us.rem_euclid(1_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{us:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// An RFC 3339 time (`2026-12-04T04:01:35Z`, `…35.5+02:00`, a space or `t` for the `T`) in microseconds
/// since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || !b.is_ascii() {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = &s[r];
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let sep = |i: usize, c: &[u8]| c.contains(&b[i]);
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut us = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &s[start..i.min(start + 6)];
        us = digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32);
    }
    let offset_s = match &s[i..] {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let v = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    Some(secs * 1_000_000 + us)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: i64 = 1_796_356_895_123_456; // 2026-12-04T04:01:35.123456Z

    #[test]
    fn a_record_is_time_stream_and_text() {
        let r = format_record(T, Stream::Err, false, b"hello\r");
        assert_eq!(r, "2026-12-04T04:01:35.123456Z err hello\n");
        let p = parse_record(r.trim_end()).unwrap();
        assert_eq!(
            p,
            Record {
                unix_us: T,
                stream: Stream::Err,
                cut: false,
                text: "hello"
            }
        );
        assert_eq!(
            parse_record("2026-12-04T04:01:35.123456Z out+ a b").unwrap().text,
            "a b"
        );
        assert!(parse_record("2026-12-04T04:01:35.123456Z").is_none());
        assert!(parse_record("listening on 127.0.0.1:4000").is_none());
        assert!(parse_record("2026-12-04T04:01:35Z stdout x").is_none());
    }

    #[test]
    fn binary_output_and_ansi_codes_never_reach_the_file_raw() {
        let raw = b"\x1b[1;31mred\x1b[0m \x1b]0;title\x07ok\x00\xff\xfe\ttab\x7f \xe2\x82";
        let r = format_record(T, Stream::Out, false, raw);
        assert_eq!(
            r,
            "2026-12-04T04:01:35.123456Z out red ok\\x00\\xff\\xfe\ttab\\x7f \\xe2\\x82\n"
        );
        assert!(!r[..r.len() - 1].bytes().any(|b| b < 0x20 && b != b'\t'));
        // A stray ESC at the end and a CSI broken off by a control byte.
        assert_eq!(
            format_record(T, Stream::Out, false, b"a\x1b[12\nb\x1b").trim_end(),
            "2026-12-04T04:01:35.123456Z out ab"
        );
        assert!(format_record(T, Stream::Out, false, "é ü 😀".as_bytes()).ends_with("out é ü 😀\n"));
    }

    #[test]
    fn rfc3339_both_ways() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(T), "2026-12-04T04:01:35.123456Z");
        assert_eq!(parse_rfc3339("2026-12-04T04:01:35.123456Z"), Some(T));
        assert_eq!(parse_rfc3339("2026-12-04T06:01:35.123456+02:00"), Some(T));
        assert_eq!(parse_rfc3339("2026-12-04 04:01:35Z"), Some(T - 123_456));
        assert_eq!(parse_rfc3339("2026-12-04T04:01:35.1z"), Some(T - 23_456));
        for bad in [
            "2026-12-04",
            "2026-13-04T04:01:35Z",
            "2026-12-04T04:01:35",
            "2026-12-04T04:01:35.Z",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_long_line_is_cut_into_records_and_a_partial_one_waits() {
        let mut s = Splitter::default();
        let long = vec![b'a'; MAX_RECORD * 2 + 10];
        let pieces = s.push(&long, 5);
        assert_eq!(pieces.len(), 2);
        assert!(
            pieces
                .iter()
                .all(|p| p.cut && p.bytes.len() == MAX_RECORD && p.at_us == 5)
        );
        assert!(s.push(b"bb", 6).is_empty(), "a partial line waits");
        assert_eq!(s.due(1_000_000), Some(5 + 1_000_000));
        assert_eq!(s.flush_idle(10, 1_000_000), None);
        let p = s.flush_idle(1_000_005, 1_000_000).unwrap();
        assert_eq!((p.cut, p.bytes.len()), (true, 12));
        let p = s.push(b"end\nnext", 7);
        assert_eq!(
            p,
            vec![Piece {
                at_us: 7,
                cut: false,
                bytes: b"end".to_vec()
            }]
        );
        assert_eq!(
            s.finish().unwrap(),
            Piece {
                at_us: 7,
                cut: false,
                bytes: b"next".to_vec()
            }
        );
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn output_ending_in_a_line_of_exactly_max_record_bytes_is_not_marked_as_going_on() {
        // Found by the proptest: such a line was cut, then the stream ended, so
        // its last record said "continued" of a line that never went on.
        let mut s = Splitter::default();
        assert!(
            s.push(&vec![b'x'; MAX_RECORD], 1).is_empty(),
            "full, but the line may still end"
        );
        let p = s.finish().unwrap();
        assert_eq!((p.cut, p.bytes.len()), (false, MAX_RECORD));
        let p = s.push(&[vec![b'y'; MAX_RECORD], b"\n".to_vec()].concat(), 2);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].cut, p[0].bytes.len()), (false, MAX_RECORD));
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let mut s = Splitter::default();
        let mut line = vec![b'a'; MAX_RECORD - 1];
        line.extend_from_slice("€\n".as_bytes());
        let p = s.push(&line, 1);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].bytes.len(), MAX_RECORD - 1);
        assert_eq!(p[1].bytes, "€".as_bytes());
    }

    proptest! {
        #[test]
        fn records_hold_all_the_output_in_order_and_one_line_each(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..20),
            long in 0usize..3,
        ) {
            let mut s = Splitter::default();
            let mut input = Vec::new();
            let mut pieces = Vec::new();
            for (i, c) in chunks.iter().enumerate() {
                let mut c = c.clone();
                if i == 0 { c.extend(std::iter::repeat_n(b'x', long * MAX_RECORD)); }
                input.extend_from_slice(&c);
                pieces.extend(s.push(&c, i as i64));
            }
            pieces.extend(s.finish());
            let mut again = Vec::new();
            for p in &pieces {
                prop_assert!(p.bytes.len() <= MAX_RECORD);
                prop_assert!(!p.bytes.contains(&b'\n'));
                again.extend_from_slice(&p.bytes);
                if !p.cut { again.push(b'\n'); }
                let r = format_record(T, Stream::Out, p.cut, &p.bytes);
                prop_assert_eq!(r.matches('\n').count(), 1);
                prop_assert!(!r.trim_end_matches('\n').bytes().any(|b| b < 0x20 && b != b'\t'));
                let parsed = parse_record(r.trim_end_matches('\n'));
                prop_assert!(parsed.is_some());
                prop_assert_eq!(parsed.unwrap().cut, p.cut);
            }
            if !input.is_empty() && !input.ends_with(b"\n") { input.push(b'\n'); }
            prop_assert_eq!(again, input);
        }

        #[test]
        fn any_time_reads_back_as_written(us in 0i64..8_000_000_000_000_000) {
            prop_assert_eq!(parse_rfc3339(&rfc3339_micros(us)), Some(us));
        }
    }
}
