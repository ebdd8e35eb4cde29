//! The stamper: a small process beside each instance (`slipway log-stamp`, in its own session) that reads the
//! instance's stdout and stderr from pipes and appends them to its log as stamped records (see `logline`).
//!
//! It is no part of the agent: an instance's output never goes through the agent, and both the instance and
//! its stamper outlive an agent that stops. The stamper ends when every writer of both pipes is gone (the
//! instance and its children), after writing any unfinished line. It always keeps reading, so a failing
//! write (a full disk) never blocks the instance.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::logline::{Piece, Splitter, Stream, format_record};

/// How long an unfinished line waits for its end before it is written as a cut record.
pub const IDLE: Duration = Duration::from_secs(1);

enum Read_ {
    Bytes(Stream, Vec<u8>, i64),
    End(Stream),
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Copies both outputs into `sink` as records until both end.
pub fn stamp_output(out: OwnedFd, err: OwnedFd, sink: &mut impl Write, idle: Duration) {
    let (tx, rx) = mpsc::sync_channel::<Read_>(64);
    for (fd, stream) in [(out, Stream::Out), (err, Stream::Err)] {
        let tx = tx.clone();
        std::thread::spawn(move || reader(std::fs::File::from(fd), stream, &tx));
    }
    drop(tx);
    let idle_us = idle.as_micros() as i64;
    let mut split = [Splitter::default(), Splitter::default()];
    let idx = |s: Stream| usize::from(s == Stream::Err);
    let mut write = |stream: Stream, p: Piece| {
        // Stamped as written, so the file is in time order; a failed write is lost output, never a reason
        // to stop reading.
        let _ = sink.write_all(format_record(now_us(), stream, p.cut, &p.bytes).as_bytes());
        let _ = sink.flush();
    };
    loop {
        let wait = split
            .iter()
            .filter_map(|s| s.due(idle_us))
            .min()
            .map(|due| Duration::from_micros((due - now_us()).max(0) as u64));
        let msg = match wait {
            Some(w) => rx.recv_timeout(w),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Read_::Bytes(stream, bytes, at)) => {
                for p in split[idx(stream)].push(&bytes, at) {
                    write(stream, p);
                }
            }
            Ok(Read_::End(stream)) => {
                if let Some(p) = split[idx(stream)].finish() {
                    write(stream, p);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = now_us();
                for stream in [Stream::Out, Stream::Err] {
                    if let Some(p) = split[idx(stream)].flush_idle(now, idle_us) {
                        write(stream, p);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn reader(mut f: std::fs::File, stream: Stream, tx: &mpsc::SyncSender<Read_>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(Read_::Bytes(stream, buf[..n].to_vec(), now_us())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = tx.send(Read_::End(stream));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logline::parse_record;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    #[test]
    fn both_outputs_become_records_and_a_partial_line_at_the_end_is_kept() {
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let t = std::thread::spawn(move || {
            let mut sink = Vec::new();
            stamp_output(out_r, err_r, &mut sink, Duration::from_millis(200));
            sink
        });
        let mut o = std::fs::File::from(out_w);
        let mut e = std::fs::File::from(err_w);
        o.write_all(b"one\ntwo").unwrap();
        e.write_all(b"\x1b[31mbad\x1b[0m\n").unwrap();
        // "two" waits, then is written as a cut record; the rest comes as its own record.
        std::thread::sleep(Duration::from_millis(400));
        o.write_all(b" and more\nlast, no newline").unwrap();
        drop((o, e));
        let sink = String::from_utf8(t.join().unwrap()).unwrap();
        let recs: Vec<_> = sink.lines().map(|l| parse_record(l).unwrap()).collect();
        let outs: Vec<_> = recs
            .iter()
            .filter(|r| r.stream == Stream::Out)
            .map(|r| (r.text, r.cut))
            .collect();
        assert_eq!(
            outs,
            [
                ("one", false),
                ("two", true),
                (" and more", false),
                ("last, no newline", false)
            ],
            "{sink}"
        );
        let errs: Vec<_> = recs
            .iter()
            .filter(|r| r.stream == Stream::Err)
            .map(|r| r.text)
            .collect();
        assert_eq!(errs, ["bad"]);
        assert!(recs.windows(2).all(|w| w[0].unix_us <= w[1].unix_us), "{sink}");
    }
}
