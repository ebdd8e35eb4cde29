//! Passing open sockets between processes (SCM_RIGHTS), and systemd's `LISTEN_FDS` and `sd_notify`.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 64;
/// Largest message body (a route table with thousands of instances fits).
pub const MAX_MESSAGE: usize = 64 << 20;

/// Why a framed message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the other side closed the connection")]
    Closed,
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("{0} descriptors attached; at most {MAX_FDS} may be")]
    TooManyFds(usize),
    #[error("message is not valid JSON for {what}: {message}")]
    Json { what: &'static str, message: String },
}

fn nix_io(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// Takes ownership of a descriptor this process was given.
///
/// Only for descriptors nothing else in the process owns: ones just received
/// with SCM_RIGHTS, or the systemd-passed ones checked in [`listen_fds`].
#[allow(unsafe_code)]
fn adopt(raw: RawFd) -> OwnedFd {
    // SAFETY: callers pass descriptors that were handed to this process (the
    // kernel installed them on recvmsg, or systemd left them open for us with
    // LISTEN_PID naming this process) and that no other object owns, so the
    // new OwnedFd is their only owner.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Sends `msg` as JSON (4-byte big-endian length, then the body) with `fds`
/// attached to its first byte.
pub fn send_msg<T: serde::Serialize>(sock: &UnixStream, msg: &T, fds: &[RawFd]) -> Result<(), FdError> {
    if fds.len() > MAX_FDS {
        return Err(FdError::TooManyFds(fds.len()));
    }
    let body = serde_json::to_vec(msg).map_err(|e| FdError::Json {
        what: std::any::type_name::<T>(),
        message: e.to_string(),
    })?;
    if body.len() > MAX_MESSAGE {
        return Err(FdError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    let sent = loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&frame)],
            &cmsgs,
            MsgFlags::empty(),
            None,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(nix_io(e).into()),
        }
    };
    let mut s = sock;
    s.write_all(&frame[sent..])?;
    Ok(())
}

/// Receives one message sent with [`send_msg`] and the descriptors that came
/// with it (close-on-exec).
pub fn recv_msg<T: serde::de::DeserializeOwned>(sock: &UnixStream) -> Result<(T, Vec<OwnedFd>), FdError> {
    let mut fds = Vec::new();
    let mut got: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut want: Option<usize> = None;
    loop {
        if want.is_none() && got.len() >= 4 {
            let n = u32::from_be_bytes([got[0], got[1], got[2], got[3]]) as usize;
            if n > MAX_MESSAGE {
                return Err(FdError::TooLarge(n));
            }
            want = Some(n + 4);
        }
        if let Some(w) = want
            && got.len() >= w
        {
            break;
        }
        if fds.is_empty() {
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let r = loop {
                match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                    Ok(r) => break r,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(nix_io(e).into()),
                }
            };
            let n = r.bytes;
            for c in r.cmsgs().map_err(nix_io)? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    fds.extend(raw.into_iter().map(adopt));
                }
            }
            if n == 0 {
                return Err(FdError::Closed);
            }
            got.extend_from_slice(&chunk[..n]);
        } else {
            // Descriptors only ever come with a message's first bytes.
            let mut s = sock;
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(FdError::Closed);
            }
            got.extend_from_slice(&chunk[..n]);
        }
    }
    let body = &got[4..want.unwrap_or(4)];
    let msg = serde_json::from_slice(body).map_err(|e| FdError::Json {
        what: std::any::type_name::<T>(),
        message: e.to_string(),
    })?;
    Ok((msg, fds))
}

/// The variable a supervising parent sets to its own pid when it passes `LISTEN_FDS` (it cannot know the child's
/// pid for `LISTEN_PID` before the fork): the sockets are this process's when its parent is that pid.
pub const LISTEN_PARENT: &str = "SLIPWAY_LISTEN_PARENT";

/// Sockets systemd (or a supervising parent) passed with socket activation (`LISTEN_FDS`, checked against
/// `LISTEN_PID`, or `SLIPWAY_LISTEN_PARENT` against the parent's pid), with their `FileDescriptorName=` when given.
pub fn listen_fds() -> Vec<(Option<String>, OwnedFd)> {
    let pid_var = |name: &str| std::env::var(name).ok().and_then(|p| p.parse::<u32>().ok());
    let ours = pid_var("LISTEN_PID").is_some_and(|p| p == std::process::id())
        || pid_var(LISTEN_PARENT).is_some_and(|p| p == std::os::unix::process::parent_id());
    let n: usize = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !ours || n == 0 || n > MAX_FDS {
        return Vec::new();
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    (0..n)
        .map(|i| {
            let fd = adopt(3 + i as RawFd);
            let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
            (names.get(i).filter(|s| !s.is_empty()).cloned(), fd)
        })
        .collect()
}

/// Tells systemd (when it started this process with `NOTIFY_SOCKET`) about
/// a state change, e.g. `"READY=1\nMAINPID=1234"`. Returns whether a
/// notification was sent.
pub fn sd_notify(state: &str) -> bool {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return false;
    };
    let sent = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    sent.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_crosses_a_socket_pair_and_still_accepts() {
        let (a, b) = UnixStream::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let big = "x".repeat(300_000);
        let t = std::thread::spawn(move || {
            send_msg(&a, &serde_json::json!({ "hello": big }), &[l.as_raw_fd()]).unwrap();
            drop(l);
        });
        let (msg, fds): (serde_json::Value, _) = recv_msg(&b).unwrap();
        t.join().unwrap();
        assert_eq!(msg["hello"].as_str().unwrap().len(), 300_000);
        assert_eq!(fds.len(), 1);
        let got = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(got.local_addr().unwrap(), addr);
        let _c = std::net::TcpStream::connect(addr).unwrap();
        let (_s, _) = got.accept().unwrap();
    }

    #[test]
    fn a_closed_peer_is_reported() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(recv_msg::<serde_json::Value>(&b), Err(FdError::Closed)));
    }
}
