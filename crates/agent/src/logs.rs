//! Per-instance log files: size rotation (copy, then truncate in place), the tail, following new lines.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const LOG_NAME: &str = "output.log";

/// The log folder of one instance.
pub fn log_dir(root: &Path, instance: &str) -> PathBuf {
    root.join("logs").join(instance)
}

pub fn log_path(root: &Path, instance: &str) -> PathBuf {
    log_dir(root, instance).join(LOG_NAME)
}

/// Rotates `output.log` when it is over `max_bytes`: `.N-1` becomes `.N`
/// (up to `keep`), the log is copied to `.1` and truncated in place. The
/// instance writes with O_APPEND, so its next write lands at the new start.
/// Lines written between the copy and the truncation may be lost.
pub fn rotate_if_needed(dir: &Path, max_bytes: u64, keep: u32) -> std::io::Result<bool> {
    let log = dir.join(LOG_NAME);
    let size = match std::fs::metadata(&log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size <= max_bytes || keep == 0 {
        return Ok(false);
    }
    for i in (1..keep).rev() {
        let from = dir.join(format!("{LOG_NAME}.{i}"));
        if from.exists() {
            std::fs::rename(&from, dir.join(format!("{LOG_NAME}.{}", i + 1)))?;
        }
    }
    std::fs::copy(&log, dir.join(format!("{LOG_NAME}.1")))?;
    std::fs::OpenOptions::new().write(true).open(&log)?.set_len(0)?;
    Ok(true)
}

/// The last `n` lines of an instance's output (looking into the newest
/// rotated file if the current one is short).
pub fn log_tail(dir: &Path, n: usize) -> Vec<String> {
    let mut lines = tail_file(&dir.join(LOG_NAME), n);
    if lines.len() < n {
        let mut older = tail_file(&dir.join(format!("{LOG_NAME}.1")), n - lines.len());
        older.append(&mut lines);
        lines = older;
    }
    lines
}

fn tail_file(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(64 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// Follows a log file: returns new bytes since `pos` and the new position;
/// a file that shrank (rotated) is read again from its start.
pub fn follow_log(path: &Path, pos: u64) -> (Vec<u8>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), pos);
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let from = if len < pos { 0 } else { pos };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return (Vec::new(), pos);
    }
    let mut buf = Vec::new();
    let _ = f.take(1 << 20).read_to_end(&mut buf);
    let new_pos = from + buf.len() as u64;
    (buf, new_pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_appending_writer_working() {
        let dir = std::env::temp_dir().join(format!("slipway-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(LOG_NAME);
        let mut w = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        use std::io::Write;
        for i in 0..100 {
            writeln!(w, "line {i}").unwrap();
        }
        assert!(rotate_if_needed(&dir, 100, 2).unwrap());
        writeln!(w, "after").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "after\n");
        assert!(
            std::fs::read_to_string(dir.join("output.log.1"))
                .unwrap()
                .contains("line 99")
        );
        assert_eq!(log_tail(&dir, 3), vec!["line 98", "line 99", "after"]);
        for _ in 0..20 {
            writeln!(w, "more more more more more").unwrap();
        }
        rotate_if_needed(&dir, 100, 2).unwrap();
        assert!(dir.join("output.log.2").exists());
        assert!(!dir.join("output.log.3").exists());
        let (bytes, pos) = follow_log(&log, 0);
        assert!(bytes.is_empty() && pos == 0);
        writeln!(w, "x").unwrap();
        assert_eq!(follow_log(&log, 0), (b"x\n".to_vec(), 2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
