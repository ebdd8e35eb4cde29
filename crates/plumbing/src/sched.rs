//! CPU priority of background work: a thread that should give way to the service's own threads.

/// Lowers the calling thread's CPU priority to `nice` (0 = normal, 19 =
/// lowest). On Linux the nice value belongs to the thread, so only this
/// thread (and threads it starts afterwards) yields to the others.
#[allow(unsafe_code)]
pub fn lower_this_thread(nice: i32) -> std::io::Result<()> {
    let nice = nice.clamp(0, 19);
    // SAFETY: setpriority only reads its integer arguments; who = 0 means
    // the calling thread on Linux.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
