//! Instance processes in their own session, signals to whole process groups, and live processes told from reused pids.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Everything needed to start one instance.
#[derive(Debug)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub log_file: PathBuf,
    /// A listening socket handed over as fd 3 (`LISTEN_FDS=1`).
    pub listen_fd: Option<std::net::TcpListener>,
    /// The program whose hidden `log-stamp` command stamps the output (see `stamp`); without one the output
    /// goes to the log as the process writes it.
    pub stamper: Option<PathBuf>,
}

/// A process the supervisor watches: its own child, or one adopted after
/// the agent restarted (not a child any more, so watched through /proc).
pub enum Proc {
    Child(tokio::process::Child),
    Adopted { pid: u32, start_time: u64 },
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Proc::Child(c) => c.id(),
            Proc::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Waits until the process is gone; its exit status if known.
    pub async fn wait(&mut self) -> Option<i32> {
        match self {
            Proc::Child(c) => c.wait().await.ok().and_then(|s| s.code()),
            Proc::Adopted { pid, start_time } => {
                while is_same_process(*pid, *start_time) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None
            }
        }
    }
}

/// Resolves the program: a path relative to the release folder if such a
/// file exists there, else as given (then `PATH` applies to bare names).
pub fn resolve_program(command: &str, release_dir: &Path) -> PathBuf {
    let in_release = release_dir.join(command);
    if command.contains('/') && !Path::new(command).is_absolute() && in_release.exists() {
        return in_release;
    }
    PathBuf::from(command)
}

/// Opens a process's log for appending, mode 0600 (a log can hold what the process prints: tokens,
/// env values, player data); an existing log that others could read is tightened.
pub(crate) fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if f.metadata()?.permissions().mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

/// Starts the process in a new session (so it outlives the agent and gets
/// none of the agent's terminal signals), with stdout and stderr appended to
/// its log file: through pipes to a stamper of its own when the launch names one, else directly.
pub fn spawn_instance(launch: Launch) -> std::io::Result<tokio::process::Child> {
    let (log, log_err) = match &launch.stamper {
        Some(program) => {
            let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
            let (out_r, out_w) = nix::unistd::pipe2(cloexec)?;
            let (err_r, err_w) = nix::unistd::pipe2(cloexec)?;
            spawn_stamper(program, &launch.log_file, [out_r, err_r])?;
            (Stdio::from(out_w), Stdio::from(err_w))
        }
        None => {
            let log = open_log(&launch.log_file)?;
            let log_err = log.try_clone()?;
            (Stdio::from(log), Stdio::from(log_err))
        }
    };
    let mut cmd = if launch.listen_fd.is_some() {
        // LISTEN_PID must be the app's own pid: let a shell set it, then exec.
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
            .arg(&launch.program)
            .args(&launch.args)
            .env("LISTEN_FDS", "1");
        c
    } else {
        let mut c = tokio::process::Command::new(&launch.program);
        c.args(&launch.args);
        c
    };
    cmd.current_dir(&launch.cwd)
        .envs(&launch.env)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(false);
    let fd = launch.listen_fd.as_ref().map(|l| l.as_raw_fd());
    new_session(&mut cmd, fd);
    let child = cmd.spawn()?;
    drop(launch.listen_fd);
    Ok(child)
}

/// Starts `program log-stamp` in its own session, reading the pipes `outputs` (as fds 3 and 4, passed the way
/// systemd passes sockets) and appending to `log`. Not waited for: the runtime reaps it when it ends.
fn spawn_stamper(program: &Path, log: &Path, outputs: [std::os::fd::OwnedFd; 2]) -> std::io::Result<()> {
    let fds: Vec<_> = outputs.iter().map(|f| f.as_fd()).collect();
    let (mut cmd, passed) = detached_command(
        Path::new("/bin/sh"),
        &[
            "-c".into(),
            "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" log-stamp".into(),
            program.as_os_str().to_owned(),
        ],
        log,
        &[("LISTEN_FDS".into(), "2".into())],
        &fds,
    )?;
    cmd.current_dir("/"); // holds no folder of the service
    let child = tokio::process::Command::from(cmd).spawn()?;
    drop(passed);
    drop(child);
    Ok(())
}

/// Makes the child a session leader and, if given, puts `listen_fd` at fd 3.
#[allow(unsafe_code)]
fn new_session(cmd: &mut tokio::process::Command, listen_fd: Option<i32>) {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setsid(2) and dup2(2), which are async-signal-safe; it allocates nothing
    // and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 onto fd 3 leaves close-on-exec off on the copy.
            if let Some(fd) = listen_fd
                && fd != 3
                && libc::dup2(fd, 3) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Parses a configured signal name; `None` for "none".
pub fn parse_signal(name: &str) -> Result<Option<Signal>, String> {
    let upper = name.trim().to_ascii_uppercase();
    let upper = upper.strip_prefix("SIG").unwrap_or(&upper).to_string();
    Ok(Some(match upper.as_str() {
        "NONE" | "" => return Ok(None),
        "TERM" => Signal::SIGTERM,
        "INT" => Signal::SIGINT,
        "QUIT" => Signal::SIGQUIT,
        "HUP" => Signal::SIGHUP,
        "USR1" => Signal::SIGUSR1,
        "USR2" => Signal::SIGUSR2,
        _ => {
            return Err(format!(
                "{name:?} is not a signal slipway sends (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2, none)"
            ));
        }
    }))
}

/// Sends `sig` to the whole process group led by `pid` (each instance is
/// its own session and group). Errors (already gone) are ignored.
pub fn signal_group(pid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), sig);
}

/// The kernel's start time of `pid` (clock ticks since boot, field 22 of
/// /proc/<pid>/stat), which together with the pid names one process: a pid
/// reused by another process has another start time.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens: skip past the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19; zombies (Z) count as gone.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Instance processes running from a release under `releases`: session leaders (every instance leads its own
/// session) whose working folder is in `releases` and whose environment names their instance (`SLIPWAY_INSTANCE`).
/// Returns each one's instance id, pid and kernel start time. An agent that died between spawning an instance and
/// saving its pid finds it again this way.
pub(crate) fn instance_processes(releases: &Path) -> Vec<(String, u32, u64)> {
    let Ok(releases) = std::fs::canonicalize(releases) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let leads_session = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| st.rsplit_once(')')?.1.split_whitespace().nth(3)?.parse::<u32>().ok())
            == Some(pid);
        let in_releases = std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&releases));
        if !(leads_session && in_releases) {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let id = environ
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"SLIPWAY_INSTANCE="))
            .and_then(|v| std::str::from_utf8(v).ok());
        if let (Some(id), Some(start)) = (id, process_start_time(pid)) {
            out.push((id.to_string(), pid, start));
        }
    }
    out
}

/// Whether `pid` still runs and is the process that started at `start`.
pub fn is_same_process(pid: u32, start: u64) -> bool {
    process_start_time(pid) == Some(start)
}

/// Starts a long-lived helper process (the agent, the router, the control
/// plane) in its own session, output appended to `log`, not waited for.
/// Returns its pid.
pub fn spawn_detached(program: &Path, args: &[std::ffi::OsString], log: &Path) -> std::io::Result<u32> {
    spawn_detached_with(program, args, log, &[], &[])
}

/// Like [`spawn_detached`], with `env` set and the descriptors `fds` passed to the child as fds 3, 4, ...
/// (as systemd passes listening sockets). The caller keeps its own copies open.
pub fn spawn_detached_with(
    program: &Path,
    args: &[std::ffi::OsString],
    log: &Path,
    env: &[(String, String)],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<u32> {
    let (mut cmd, passed) = detached_command(program, args, log, env, fds)?;
    let child = cmd.spawn()?;
    drop(passed);
    Ok(child.id())
}

/// A command set up to start detached (see [`spawn_detached_with`]), and the copies of `fds` it passes on
/// (to be held until it is spawned).
fn detached_command(
    program: &Path,
    args: &[std::ffi::OsString],
    log: &Path,
    env: &[(String, String)],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<(std::process::Command, Vec<std::os::fd::OwnedFd>)> {
    // Copies above the target range first, so that no dup2 in the child overwrites a source it still needs.
    let floor = 3 + fds.len() as i32;
    let high: Vec<std::os::fd::OwnedFd> = fds
        .iter()
        .map(|fd| fd.try_clone_to_owned_above(floor))
        .collect::<std::io::Result<_>>()?;
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = open_log(log)?;
    let err = out.try_clone()?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    detach(&mut cmd, high.iter().map(|f| f.as_raw_fd()).collect());
    Ok((cmd, high))
}

/// A descriptor duplicated (close-on-exec) to the lowest free number at or above `floor`.
trait CloneAbove {
    fn try_clone_to_owned_above(&self, floor: i32) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl CloneAbove for std::os::fd::BorrowedFd<'_> {
    fn try_clone_to_owned_above(&self, floor: i32) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsRawFd;
        // dup gives the lowest free number: the low copies are held until one lands high enough.
        let mut low = Vec::new();
        loop {
            let fd = self.try_clone_to_owned()?;
            if fd.as_raw_fd() >= floor {
                return Ok(fd);
            }
            low.push(fd);
        }
    }
}

#[allow(unsafe_code)]
fn detach(cmd: &mut std::process::Command, fds: Vec<i32>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec and only calls setsid(2)
    // and dup2(2), which are async-signal-safe; `fds` was allocated before the
    // fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 leaves close-on-exec off on the copy: fds 3, 4, ... reach the program.
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::open_log;

    #[test]
    fn process_logs_were_readable_by_everyone_and_are_0600_now() {
        let dir = testkit::TempDir::new("open-log");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let new = dir.join("router.log");
        open_log(&new).unwrap();
        assert_eq!(mode(&new), 0o600);
        let old = dir.join("agent.log");
        std::fs::write(&old, "an old line\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        use std::io::Write;
        writeln!(open_log(&old).unwrap(), "a new line").unwrap();
        assert_eq!(mode(&old), 0o600);
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "an old line\na new line\n");
    }
}
