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

/// Confines the calling thread to one CPU — the last one it may use — when
/// it may use several, so background work leaves the other CPUs free for the
/// service's own wake-ups (an idle CPU is found at once; a CPU busy with even
/// `SCHED_IDLE` work may keep a woken task waiting until the next tick).
/// Returns the CPU, or `None` when the thread may use only one anyway.
#[allow(unsafe_code)]
pub fn confine_to_one_cpu() -> std::io::Result<Option<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 = the calling thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET only reads `set` at an index below CPU_SETSIZE.
    let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    let [_, .., last] = allowed[..] else {
        return Ok(None);
    };
    // SAFETY: as above; CPU_ZERO/CPU_SET write within `one`.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::CPU_ZERO(&mut one);
        libc::CPU_SET(last, &mut one);
    }
    // SAFETY: `one` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some(last))
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

    #[test]
    fn a_thread_confined_to_one_cpu_runs_only_there() {
        std::thread::spawn(|| {
            let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            let got = confine_to_one_cpu().unwrap();
            #[allow(unsafe_code)]
            // SAFETY: a plain query of the calling thread's CPU.
            let now = unsafe { libc::sched_getcpu() };
            match got {
                Some(cpu) => {
                    assert_eq!(now as usize, cpu);
                    assert_eq!(std::thread::available_parallelism().unwrap().get(), 1);
                }
                None => assert_eq!(cpus, 1),
            }
        })
        .join()
        .unwrap();
    }
}
