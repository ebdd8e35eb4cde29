//! CPU scheduling of background work: threads that must give way to the service's own at once.
//!
//! Background work runs under Linux's `SCHED_IDLE` policy: a runnable
//! normal task preempts it on wake-up, instead of waiting out its time
//! slice as it would behind a merely niced task (with EEVDF a niced task
//! still runs its slice of about 3 ms, which is what read p99 then shows).
//! Lowering one's own policy needs no privilege.

/// Puts the calling thread (and threads it starts afterwards) in the background.
pub fn background_this_thread() -> std::io::Result<()> {
    set_idle(0)
}

#[allow(unsafe_code)]
fn set_idle(who: libc::pid_t) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, which
    // only reads it; who = 0 means the calling thread on Linux.
    let rc = unsafe { libc::sched_setscheduler(who, libc::SCHED_IDLE, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_can_put_itself_in_the_background() {
        std::thread::spawn(|| {
            background_this_thread().unwrap();
            #[allow(unsafe_code)]
            // SAFETY: a plain query of the calling thread's policy.
            let policy = unsafe { libc::sched_getscheduler(0) };
            assert_eq!(policy, libc::SCHED_IDLE);
        })
        .join()
        .unwrap();
    }
}
