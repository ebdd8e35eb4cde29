//! Following an instance's output log for the Logs page: its last lines, then what is appended (from the start
//! again when the log was rotated).

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::Stream;
use tokio::sync::watch;

/// Bytes of the log shown at first.
const TAIL_BYTES: u64 = 32 * 1024;
/// Bytes sent at most per look.
const CHUNK: u64 = 64 * 1024;
/// How often the file is looked at.
const EVERY: Duration = Duration::from_millis(250);

/// What is new in `path` from `pos` (at most `CHUNK` bytes), and the next position. A shorter file starts over.
pub(crate) fn read_from(path: &Path, pos: u64) -> (String, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), pos);
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let from = if len < pos { 0 } else { pos };
    if len == from || f.seek(SeekFrom::Start(from)).is_err() {
        return (String::new(), from);
    }
    let mut buf = Vec::new();
    let n = f.take(CHUNK).read_to_end(&mut buf).unwrap_or(0);
    (String::from_utf8_lossy(&buf).into_owned(), from + n as u64)
}

/// Where the first look starts: `TAIL_BYTES` before the end, at a line start.
pub(crate) fn tail_start(path: &Path) -> u64 {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    let start = len.saturating_sub(TAIL_BYTES);
    if start == 0 {
        return 0;
    }
    let (text, _) = read_from(path, start);
    text.find('\n').map_or(len, |i| start + i as u64 + 1)
}

/// The log as server-sent events: one `log` event per look that found something.
pub(crate) fn follow(path: PathBuf, stop: watch::Receiver<bool>) -> impl Stream<Item = Result<Event, Infallible>> {
    let pos = tail_start(&path);
    futures_util::stream::unfold((path, pos, stop, true), |(path, mut pos, mut stop, first)| async move {
        loop {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    _ = stop.wait_for(|x| *x) => return None,
                }
            }
            let (text, next) = read_from(&path, pos);
            pos = next;
            if !text.is_empty() || first {
                // A carriage return would end the SSE line; the script adds the last newline back.
                let text = text.replace('\r', "");
                let text = text.strip_suffix('\n').unwrap_or(&text);
                return Some((Ok(Event::default().event("log").data(text)), (path, pos, stop, false)));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_read_from_where_it_was_left_and_from_the_start_after_rotation() {
        let dir = testkit::TempDir::new("dash-logs");
        let p = dir.join("output.log");
        std::fs::write(&p, "one\ntwo\n").unwrap();
        let (t, pos) = read_from(&p, 0);
        assert_eq!((t.as_str(), pos), ("one\ntwo\n", 8));
        assert_eq!(read_from(&p, pos), (String::new(), 8));
        std::fs::write(&p, "new\n").unwrap();
        assert_eq!(
            read_from(&p, 8),
            ("new\n".to_string(), 4),
            "rotated: shorter than where we were"
        );
        assert_eq!(read_from(&dir.join("missing"), 3), (String::new(), 3));
    }

    #[test]
    fn the_first_look_starts_at_a_line_near_the_end() {
        let dir = testkit::TempDir::new("dash-tail");
        let p = dir.join("output.log");
        let line = "x".repeat(99) + "\n";
        std::fs::write(&p, line.repeat(1000)).unwrap();
        let start = tail_start(&p);
        assert_eq!(start % 100, 0, "at a line start");
        assert!(100_000 - start <= TAIL_BYTES);
    }
}
