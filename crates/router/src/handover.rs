//! Router self-upgrade: hand the listening sockets and state to a new process, which takes them over.
//!
//! The old process starts the new binary, sends it the sockets (SCM_RIGHTS) and
//! its state over a Unix socket, and leaves only once the new one reports ready.
//!
//! Both processes accept on the very same listening sockets (one kernel
//! accept queue, shared), so nothing queued is lost when the old one stops
//! accepting — unlike SO_REUSEPORT, where a closing listener's queue is
//! dropped.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plumbing::fds::{FdError, recv_msg, send_msg};
use tokio::sync::oneshot;
use wire::RouteTable;
use wire::api::{Handover, HandoverHealth, HandoverSocket, TakeoverMsg, UpgradeRequest, Upgraded};

use crate::config::Config;

/// How long a new router gets to report ready unless the request says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An upgrade asked for (admin API or SIGUSR2), and where its outcome goes.
pub type UpgradeJob = (UpgradeRequest, oneshot::Sender<Result<Upgraded, UpgradeError>>);

/// Why an upgrade did not happen. In every case the old router keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("an upgrade is already in progress")]
    Busy,
    #[error("this router already handed over to pid {0}")]
    HandedOver(u32),
    #[error("upgrades are not available: this router is not running its own serve loop")]
    Unavailable,
    #[error("this router was not started from a config file, so a new process would not know its config")]
    NoConfigFile,
    #[error("new binary {path}: {reason}")]
    Binary { path: PathBuf, reason: String },
    #[error("cannot open the handover socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("cannot start {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("the new router (pid {pid}) exited with {status} before it was ready; see its output in this router's log")]
    Exited { pid: u32, status: String },
    #[error("the new router (pid {pid}) did not report ready within {after:?}, so it was stopped")]
    Timeout { pid: u32, after: Duration },
    #[error("the new router (pid {pid}) could not take over: {error}")]
    Refused { pid: u32, error: String },
    #[error("handover to the new router (pid {pid}) failed: {source}")]
    Protocol { pid: u32, source: FdError },
}

impl UpgradeError {
    /// Short machine-readable code for API answers.
    pub fn code(&self) -> &'static str {
        match self {
            UpgradeError::Busy | UpgradeError::HandedOver(_) => "upgrade_in_progress",
            UpgradeError::Unavailable => "upgrade_unavailable",
            UpgradeError::NoConfigFile | UpgradeError::Binary { .. } => "upgrade_refused",
            _ => "upgrade_failed",
        }
    }
}

/// Duplicates of the sockets a router serves on, kept for handing over.
#[derive(Debug, Default)]
pub struct Sockets {
    pub listeners: Vec<(String, String, OwnedFd)>,
    pub admin: Option<(String, OwnedFd)>,
}

/// The binary this process runs from (the path of a binary replaced on disk
/// since start, without the kernel's " (deleted)" mark).
pub fn current_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

fn check_binary(path: &Path) -> Result<(), UpgradeError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: &str| UpgradeError::Binary {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(&e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not executable"));
    }
    Ok(())
}

/// Removes the handover socket file when the exchange ends, however it ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the new router takes over besides the sockets.
pub struct Outgoing<'a> {
    pub config: &'a Config,
    pub table: &'a RouteTable,
    pub cookie_key: &'a [u8; 32],
    pub health: Vec<HandoverHealth>,
}

/// Starts the new router and hands everything over. Returns once the new
/// process serves; the caller then stops accepting and leaves.
pub async fn hand_over(out: Outgoing<'_>, sockets: &Sockets, req: UpgradeRequest) -> Result<Upgraded, UpgradeError> {
    let started = Instant::now();
    let config_path = out.config.config_path.clone().ok_or(UpgradeError::NoConfigFile)?;
    let binary = match req.binary {
        Some(b) => b,
        None => current_binary().map_err(|e| UpgradeError::Binary {
            path: PathBuf::from("/proc/self/exe"),
            reason: e.to_string(),
        })?,
    };
    check_binary(&binary)?;
    let timeout = req.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
    let generation = out.table.generation;
    let mut fds = Vec::new();
    let mut listeners = Vec::new();
    let dup = |fd: &OwnedFd| {
        fd.try_clone().map_err(|source| UpgradeError::Socket {
            path: PathBuf::from("(listener)"),
            source,
        })
    };
    for (name, addr, fd) in &sockets.listeners {
        listeners.push(HandoverSocket {
            name: name.clone(),
            addr: addr.clone(),
            fd: fds.len(),
        });
        fds.push(dup(fd)?);
    }
    let admin = match &sockets.admin {
        Some((addr, fd)) => {
            let s = HandoverSocket {
                name: "admin".into(),
                addr: addr.clone(),
                fd: fds.len(),
            };
            fds.push(dup(fd)?);
            Some(s)
        }
        None => None,
    };
    let msg = Handover {
        format: 1,
        from_pid: std::process::id(),
        from_version: env!("CARGO_PKG_VERSION").to_string(),
        table: out.table.clone(),
        cookie_key: crate::state::hex(out.cookie_key),
        listeners,
        admin,
        health: out.health,
    };
    let sock_path = out
        .config
        .state_dir
        .join(format!("upgrade-{}.sock", std::process::id()));
    let bin = binary.clone();
    let (new_pid, new_version) =
        tokio::task::spawn_blocking(move || exchange(&bin, &config_path, &sock_path, &msg, fds, timeout))
            .await
            .map_err(|e| UpgradeError::Spawn {
                path: binary.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
    Ok(Upgraded {
        old_pid: std::process::id(),
        new_pid,
        binary: binary.display().to_string(),
        new_version,
        generation,
        took_ms: started.elapsed().as_millis() as u64,
        old_connections: 0,
    })
}

/// The blocking part: socket, process, messages. Returns the new pid and version.
fn exchange(
    binary: &Path,
    config: &Path,
    sock_path: &Path,
    msg: &Handover,
    fds: Vec<OwnedFd>,
    timeout: Duration,
) -> Result<(u32, String), UpgradeError> {
    let deadline = Instant::now() + timeout;
    let _ = std::fs::remove_file(sock_path);
    let sock_err = |source| UpgradeError::Socket {
        path: sock_path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(sock_path).map_err(sock_err)?;
    let _cleanup = SocketFile(sock_path.to_path_buf());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(sock_path, std::fs::Permissions::from_mode(0o600)).map_err(sock_err)?;
    }
    listener.set_nonblocking(true).map_err(sock_err)?;
    let mut child = spawn(binary, config, sock_path)?;
    let pid = child.id();
    let result = talk(&listener, &mut child, msg, &fds, deadline, timeout);
    match &result {
        Ok(_) => {
            // Reap it if it ever exits while this process still runs.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    result.map(|v| (pid, v))
}

fn spawn(binary: &Path, config: &Path, sock_path: &Path) -> Result<Child, UpgradeError> {
    use std::os::unix::process::CommandExt;
    Command::new(binary)
        .arg("router")
        .arg("--config")
        .arg(config)
        .arg("--takeover")
        .arg(sock_path)
        // Socket activation variables name this process, not the new one.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove(plumbing::fds::LISTEN_PARENT)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        // Its own process group: a Ctrl-C meant for the old router (or the
        // shell that started it) does not reach the new one.
        .process_group(0)
        .spawn()
        .map_err(|source| UpgradeError::Spawn {
            path: binary.to_path_buf(),
            source,
        })
}

fn talk(
    listener: &UnixListener,
    child: &mut Child,
    msg: &Handover,
    fds: &[OwnedFd],
    deadline: Instant,
    timeout: Duration,
) -> Result<String, UpgradeError> {
    let pid = child.id();
    let exited = |child: &mut Child| -> Option<UpgradeError> {
        match child.try_wait() {
            Ok(Some(status)) => Some(UpgradeError::Exited {
                pid,
                status: status.to_string(),
            }),
            _ => None,
        }
    };
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(source) => {
                return Err(UpgradeError::Protocol {
                    pid,
                    source: source.into(),
                });
            }
        }
        if let Some(e) = exited(child) {
            return Err(e);
        }
        if Instant::now() >= deadline {
            return Err(UpgradeError::Timeout { pid, after: timeout });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let proto = |source: FdError| UpgradeError::Protocol { pid, source };
    stream.set_nonblocking(false).map_err(|e| proto(e.into()))?;
    let remaining = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let recv = |stream: &UnixStream| -> Result<TakeoverMsg, UpgradeError> {
        stream
            .set_read_timeout(Some(remaining()))
            .map_err(|e| proto(e.into()))?;
        match recv_msg::<TakeoverMsg>(stream) {
            Ok((m, _)) => Ok(m),
            Err(FdError::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                Err(UpgradeError::Timeout { pid, after: timeout })
            }
            Err(e) => Err(proto(e)),
        }
    };
    let version = match recv(&stream)? {
        TakeoverMsg::Hello { pid: p, version } if p == pid => version,
        TakeoverMsg::Hello { pid: p, .. } => {
            return Err(proto(FdError::Io(std::io::Error::other(format!(
                "a process with pid {p} answered on the handover socket, not the one started ({pid})"
            )))));
        }
        TakeoverMsg::Failed { error, .. } => return Err(UpgradeError::Refused { pid, error }),
        TakeoverMsg::Ready { .. } => {
            return Err(proto(FdError::Io(std::io::Error::other(
                "ready before it got the sockets",
            ))));
        }
    };
    let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
    send_msg(&stream, msg, &raw).map_err(proto)?;
    match recv(&stream)? {
        TakeoverMsg::Ready { .. } => Ok(version),
        TakeoverMsg::Failed { error, .. } => Err(UpgradeError::Refused { pid, error }),
        TakeoverMsg::Hello { .. } => Err(proto(FdError::Io(std::io::Error::other("said hello twice")))),
    }
}

/// The new router's end of a handover.
#[derive(Debug)]
pub struct Takeover {
    stream: UnixStream,
    pub handover: Handover,
    fds: Vec<Option<OwnedFd>>,
}

/// Why a takeover could not even begin.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("cannot reach the old router at {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("handover from the old router failed: {0}")]
    Protocol(#[from] FdError),
    #[error("the old router sent handover format {0}; this router reads format 1")]
    Format(u32),
    #[error("the old router's cookie key is not 64 hex digits")]
    CookieKey,
}

impl Takeover {
    /// Connects to the old router, says hello and receives the sockets and state.
    pub fn connect(path: &Path) -> Result<Takeover, TakeoverError> {
        let stream = UnixStream::connect(path).map_err(|source| TakeoverError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        send_msg(
            &stream,
            &TakeoverMsg::Hello {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            &[],
        )?;
        let (handover, fds): (Handover, Vec<OwnedFd>) = recv_msg(&stream)?;
        let takeover = Takeover {
            stream,
            fds: fds.into_iter().map(Some).collect(),
            handover,
        };
        if takeover.handover.format != 1 {
            let f = takeover.handover.format;
            takeover.failed(&format!("unknown handover format {f}"));
            return Err(TakeoverError::Format(f));
        }
        Ok(takeover)
    }

    /// What the new router starts from.
    pub fn inherited(&mut self) -> Result<Inherited, TakeoverError> {
        let h = &self.handover;
        let cookie_key = crate::state::parse_key(&h.cookie_key).ok_or(TakeoverError::CookieKey)?;
        let mut listeners = Vec::new();
        for l in &h.listeners {
            if let Some(fd) = self.fds.get_mut(l.fd).and_then(Option::take) {
                listeners.push((Some(l.name.clone()), std::net::TcpListener::from(fd)));
            }
        }
        let admin = h.admin.as_ref().and_then(|a| {
            let fd = self.fds.get_mut(a.fd).and_then(Option::take)?;
            Some(match a.addr.strip_prefix("unix:") {
                Some(path) => plumbing::api::Bound::Unix(std::os::unix::net::UnixListener::from(fd), path.into()),
                None => plumbing::api::Bound::Tcp(std::net::TcpListener::from(fd)),
            })
        });
        Ok(Inherited {
            listeners,
            admin,
            table: Some(h.table.clone()),
            cookie_key: Some(cookie_key),
            health: h.health.clone(),
            from_pid: Some(h.from_pid),
        })
    }

    /// Tells the old router this one serves; it stops accepting and leaves.
    pub fn ready(self, generation: u64) -> Result<(), FdError> {
        send_msg(
            &self.stream,
            &TakeoverMsg::Ready {
                pid: std::process::id(),
                generation,
            },
            &[],
        )
    }

    /// Tells the old router this one cannot take over; it keeps serving.
    pub fn failed(&self, error: &str) {
        let _ = send_msg(
            &self.stream,
            &TakeoverMsg::Failed {
                pid: std::process::id(),
                error: error.to_string(),
            },
            &[],
        );
    }
}

/// Tells the old router waiting at `path` that this process cannot take
/// over (e.g. its config is invalid), so its operator sees why.
pub fn report_failure(path: &Path, error: &str) {
    if let Ok(stream) = UnixStream::connect(path) {
        let _ = send_msg(
            &stream,
            &TakeoverMsg::Failed {
                pid: std::process::id(),
                error: error.to_string(),
            },
            &[],
        );
    }
}

/// Sockets and state a router starts from instead of binding and reading
/// its state folder: a handover from an old router, or systemd's sockets.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Listening sockets, with the listener name they served when known.
    pub listeners: Vec<(Option<String>, std::net::TcpListener)>,
    pub admin: Option<plumbing::api::Bound>,
    pub table: Option<wire::RouteTable>,
    pub cookie_key: Option<[u8; 32]>,
    pub health: Vec<wire::api::HandoverHealth>,
    pub from_pid: Option<u32>,
}

impl Inherited {
    /// Sockets systemd passed (socket activation): matched to listeners by
    /// `FileDescriptorName=` or else by address. Non-TCP sockets are ignored.
    pub fn from_systemd() -> Inherited {
        let mut out = Inherited::default();
        for (name, fd) in plumbing::fds::listen_fds() {
            let l = std::net::TcpListener::from(fd);
            match l.local_addr() {
                Ok(_) => out.listeners.push((name, l)),
                Err(e) => tracing::warn!(error = %e, "ignoring a socket from systemd that is not a TCP listener"),
            }
        }
        out
    }

    /// The inherited socket for listener `name` configured at `addr`: the one
    /// with that name if it sits on a compatible address, else one on
    /// exactly that address.
    pub fn take_listener(&mut self, name: &str, addr: std::net::SocketAddr) -> Option<std::net::TcpListener> {
        let fits = |l: &std::net::TcpListener| {
            l.local_addr()
                .is_ok_and(|a| a == addr || (addr.port() == 0 && a.ip() == addr.ip()))
        };
        let by_name = self
            .listeners
            .iter()
            .position(|(n, l)| n.as_deref() == Some(name) && fits(l));
        let i = by_name.or_else(|| {
            self.listeners
                .iter()
                .position(|(_, l)| l.local_addr().is_ok_and(|a| a == addr))
        })?;
        Some(self.listeners.remove(i).1)
    }

    /// The inherited admin socket if it serves the configured address.
    pub fn take_admin(&mut self, want: &plumbing::api::Listen) -> Option<plumbing::api::Bound> {
        use plumbing::api::{Bound, Listen};
        let fits = match (self.admin.as_ref()?, want) {
            (Bound::Tcp(l), Listen::Tcp(addr)) => l
                .local_addr()
                .is_ok_and(|a| a == *addr || (addr.port() == 0 && a.ip() == addr.ip())),
            (Bound::Unix(_, p), Listen::Unix(w)) => p == w,
            _ => false,
        };
        if fits { self.admin.take() } else { None }
    }
}
