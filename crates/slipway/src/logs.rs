//! `slipway logs`: the output of a release's instances (or one instance, or all) merged by the time stamped on
//! each line, from `--since`, as text or JSON lines, following live; stopped instances only with `--all`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent::{Stream, is_live, saved_instances};

/// What `slipway logs` was asked for.
#[derive(Debug, Clone)]
pub struct LogsArgs {
    /// Instance id, release id, or every instance.
    pub target: Option<String>,
    pub follow: bool,
    /// The last this many lines (of all instances together); every line since `since` when `None` and a
    /// `since` is given, else 50.
    pub lines: Option<usize>,
    /// Microseconds since the Unix epoch.
    pub since: Option<i64>,
    pub json: bool,
    pub all: bool,
}

/// One line of one instance's log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    /// When it was stamped; a line without a stamp (written before stamping) takes the one before it.
    at: Option<i64>,
    stamped: bool,
    instance: String,
    release: String,
    stream: Option<Stream>,
    cut: bool,
    text: String,
}

/// An instance whose log is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    pub id: String,
    pub release: String,
}

/// `--since`: a duration back from now (`10m`, `1h`, `90s`) or an RFC 3339 time.
pub fn parse_since(s: &str, now_us: i64) -> Result<i64, String> {
    if let Some(t) = agent::parse_rfc3339(s.trim()) {
        return Ok(t);
    }
    match s.parse::<wire::HumanDuration>() {
        Ok(d) => Ok(now_us - d.0.as_micros() as i64),
        Err(_) => Err(format!(
            "{s:?} is neither a duration back from now (10m, 1h, 90s) nor an RFC 3339 time (2026-12-04T04:01:35Z)"
        )),
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The instances whose logs `target` names: an instance by id (running or not), a release's instances or
/// every instance, those stopped only with `all`; a log folder without an instance when asked by id.
pub(crate) fn sources(
    instances: &[wire::agent::InstanceInfo],
    target: Option<&str>,
    all: bool,
    has_log: impl Fn(&str) -> bool,
) -> Result<Vec<Source>, String> {
    let source = |i: &wire::agent::InstanceInfo| Source {
        id: i.id.clone(),
        release: i.release.clone(),
    };
    if let Some(t) = target
        && let Some(i) = instances.iter().find(|i| i.id == t)
    {
        return Ok(vec![source(i)]);
    }
    let named: Vec<_> = instances
        .iter()
        .filter(|i| target.is_none_or(|t| i.release == t))
        .collect();
    let shown: Vec<Source> = named
        .iter()
        .filter(|i| all || is_live(i.state))
        .map(|i| source(i))
        .collect();
    if !shown.is_empty() {
        return Ok(shown);
    }
    match target {
        Some(t) if named.is_empty() && has_log(t) => Ok(vec![Source {
            id: t.to_string(),
            release: t.rsplit_once('-').map_or(t, |(r, _)| r).to_string(),
        }]),
        Some(t) if named.is_empty() => Err(format!("no instance or release {t:?}")),
        Some(t) => Err(format!(
            "no running instance of {t} ({} stopped; --all shows their logs too)",
            named.len()
        )),
        None if named.is_empty() => Err("no instances".into()),
        None => Err(format!(
            "no running instances ({} stopped; --all shows their logs too)",
            named.len()
        )),
    }
}

/// The lines of `text` (one log file) as read from `src`; `prev` is the stamp before them.
pub(crate) fn parse_lines(src: &Source, text: &str, mut prev: Option<i64>) -> Vec<Line> {
    text.lines()
        .map(|l| match agent::parse_record(l) {
            Some(r) => {
                prev = Some(r.unix_us);
                Line {
                    at: Some(r.unix_us),
                    stamped: true,
                    instance: src.id.clone(),
                    release: src.release.clone(),
                    stream: Some(r.stream),
                    cut: r.cut,
                    text: r.text.to_string(),
                }
            }
            None => Line {
                at: prev,
                stamped: false,
                instance: src.id.clone(),
                release: src.release.clone(),
                stream: None,
                cut: false,
                text: l.to_string(),
            },
        })
        .collect()
}

/// Every instance's lines in one order, by stamp (a stable sort: one file's lines keep their order), from
/// `since`, the last `lines` of them.
pub(crate) fn merge(mut per_instance: Vec<Vec<Line>>, since: Option<i64>, lines: Option<usize>) -> Vec<Line> {
    let mut all: Vec<Line> = per_instance.drain(..).flatten().collect();
    if let Some(s) = since {
        all.retain(|l| l.at.is_some_and(|t| t >= s));
    }
    all.sort_by_key(|l| l.at.unwrap_or(i64::MIN));
    if let Some(n) = lines {
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
    }
    all
}

/// The log files of an instance, oldest first (`output.log.N` … `output.log.1`, `output.log`).
fn files_of(root: &Path, id: &str) -> Vec<PathBuf> {
    let dir = agent::log_dir(root, id);
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("output.log.")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.push(agent::log_path(root, id));
    files
}

/// An instance's lines, reading rotated files only as far back as `since` or `lines` need; with the size of
/// `output.log` read (where following goes on).
fn read_instance(root: &Path, src: &Source, since: Option<i64>, lines: Option<usize>) -> (Vec<Line>, u64) {
    let files = files_of(root, &src.id);
    let mut out: Vec<Line> = Vec::new();
    let mut pos = 0;
    for (i, path) in files.iter().enumerate().rev() {
        let bytes = std::fs::read(path).unwrap_or_default();
        if i == files.len() - 1 {
            pos = bytes.len() as u64;
        }
        let mut these = parse_lines(src, &String::from_utf8_lossy(&bytes), None);
        these.append(&mut out);
        out = these;
        let first = out.iter().find_map(|l| l.at);
        let enough = match since {
            Some(s) => first.is_some_and(|t| t < s),
            None => lines.is_some_and(|n| out.len() >= n),
        };
        if enough {
            break;
        }
    }
    // Unstamped lines at the start of a newer file take the stamp of the older file's last line.
    let mut prev = None;
    for l in &mut out {
        if l.stamped {
            prev = l.at;
        } else if l.at.is_none() {
            l.at = prev;
        }
    }
    (out, pos)
}

fn print(out: &mut impl Write, l: &Line, json: bool) -> std::io::Result<()> {
    if json {
        let v = serde_json::json!({
            "time": l.at.filter(|_| l.stamped).map(agent::rfc3339_micros),
            "instance": l.instance,
            "release": l.release,
            "stream": l.stream,
            "cut": l.cut,
            "text": l.text,
        });
        return writeln!(out, "{v}");
    }
    let time =
        l.at.filter(|_| l.stamped)
            .map_or_else(|| "-".repeat(27), agent::rfc3339_micros);
    let stream = l.stream.map_or("-", Stream::as_str);
    let cut = if l.cut { "+" } else { "" };
    writeln!(out, "{time} {} {stream}{cut} {}", l.instance, l.text)
}

/// Prints the merged lines; with `follow`, keeps printing new ones (and those of instances that start).
pub fn logs(root: &Path, args: &LogsArgs) -> anyhow::Result<()> {
    let find = || -> anyhow::Result<Vec<Source>> {
        let instances = saved_instances(root)?;
        sources(&instances, args.target.as_deref(), args.all, |id| {
            agent::log_dir(root, id).is_dir()
        })
        .map_err(|e| anyhow::anyhow!("{e} under {}", root.display()))
    };
    let found = find()?;
    let lines = args.lines.or(if args.since.is_some() { None } else { Some(50) });
    let mut pos = BTreeMap::new();
    let mut per = Vec::new();
    for src in &found {
        let (l, p) = read_instance(root, src, args.since, lines);
        per.push(l);
        pos.insert(src.id.clone(), (src.clone(), p, Vec::new()));
    }
    let mut out = std::io::stdout().lock();
    for l in merge(per, args.since, lines) {
        print(&mut out, &l, args.json)?;
    }
    out.flush()?;
    if args.follow {
        follow(root, &mut pos, &find, args.json)?;
    }
    Ok(())
}

type Followed = BTreeMap<String, (Source, u64, Vec<u8>)>;

/// New whole lines of every followed log, merged by stamp each round; instances that start are picked up.
fn follow(
    root: &Path,
    pos: &mut Followed,
    find: &dyn Fn() -> anyhow::Result<Vec<Source>>,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for round in 1u64.. {
        std::thread::sleep(Duration::from_millis(200));
        if round % 5 == 0 {
            for src in find().unwrap_or_default() {
                pos.entry(src.id.clone()).or_insert((src, 0, Vec::new()));
            }
        }
        let mut per = Vec::new();
        for (src, at, carry) in pos.values_mut() {
            let (bytes, new_at) = agent::follow_log(&agent::log_path(root, &src.id), *at);
            if new_at < *at {
                carry.clear(); // rotated: the file starts again
            }
            *at = new_at;
            carry.extend_from_slice(&bytes);
            let Some(end) = carry.iter().rposition(|b| *b == b'\n') else {
                continue;
            };
            let whole: Vec<u8> = carry.drain(..=end).collect();
            per.push(parse_lines(src, &String::from_utf8_lossy(&whole), Some(now_us())));
        }
        for l in merge(per, None, None) {
            print(&mut out, &l, json)?;
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::agent::{InstanceInfo, InstanceState};

    fn inst(id: &str, state: InstanceState) -> InstanceInfo {
        let mut i: InstanceInfo = serde_json::from_value(serde_json::json!({
            "id": id, "release": id.rsplit_once('-').unwrap().0, "addr": "127.0.0.1:1", "port": 1,
            "state": "ready", "healthy": true, "restarts": 0, "started_at_ms": 0,
        }))
        .unwrap();
        i.state = state;
        i
    }

    #[test]
    fn stopped_instances_are_left_out_unless_all_or_named() {
        let t = [
            inst("v1-0", InstanceState::Stopped),
            inst("v1-1", InstanceState::Ready),
            inst("v2-2", InstanceState::Stopped),
        ];
        let ids = |r: Result<Vec<Source>, String>| r.unwrap().into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(sources(&t, Some("v1"), false, |_| false)), ["v1-1"]);
        assert_eq!(ids(sources(&t, Some("v1"), true, |_| false)), ["v1-0", "v1-1"]);
        assert_eq!(ids(sources(&t, None, false, |_| false)), ["v1-1"]);
        assert_eq!(ids(sources(&t, Some("v1-0"), false, |_| false)), ["v1-0"]);
        let e = sources(&t, Some("v2"), false, |_| false).unwrap_err();
        assert!(e.contains("no running instance of v2") && e.contains("--all"), "{e}");
        assert!(
            sources(&t, Some("v9"), false, |_| false)
                .unwrap_err()
                .contains("no instance or release")
        );
        assert_eq!(ids(sources(&t, Some("v9-4"), false, |id| id == "v9-4")), ["v9-4"]);
    }

    #[test]
    fn lines_of_several_instances_merge_by_stamp_and_unstamped_ones_follow_their_neighbour() {
        let a = Source {
            id: "v1-0".into(),
            release: "v1".into(),
        };
        let b = Source {
            id: "v1-1".into(),
            release: "v1".into(),
        };
        let la = parse_lines(
            &a,
            "2026-12-04T04:00:01.000000Z out a1\nan old unstamped line\n2026-12-04T04:00:03.000000Z err+ a3\n",
            None,
        );
        let lb = parse_lines(
            &b,
            "2026-12-04T04:00:02.000000Z out b2\n2026-12-04T04:00:04.000000Z out b4\n",
            None,
        );
        let texts = |v: &[Line]| v.iter().map(|l| l.text.clone()).collect::<Vec<_>>();
        let m = merge(vec![la.clone(), lb.clone()], None, None);
        assert_eq!(texts(&m), ["a1", "an old unstamped line", "b2", "a3", "b4"]);
        assert!(m[3].cut && m[3].stream == Some(Stream::Err));
        let since = agent::parse_rfc3339("2026-12-04T04:00:02Z").unwrap();
        assert_eq!(
            texts(&merge(vec![la.clone(), lb.clone()], Some(since), None)),
            ["b2", "a3", "b4"]
        );
        assert_eq!(texts(&merge(vec![la, lb], None, Some(2))), ["a3", "b4"]);
    }

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = agent::parse_rfc3339("2026-12-04T04:10:00Z").unwrap();
        assert_eq!(
            parse_since("10m", now).unwrap(),
            agent::parse_rfc3339("2026-12-04T04:00:00Z").unwrap()
        );
        assert_eq!(
            parse_since("2026-12-04T05:00:00+01:00", now).unwrap(),
            now - 600_000_000
        );
        assert!(parse_since("yesterday", now).unwrap_err().contains("RFC 3339"));
    }
}
