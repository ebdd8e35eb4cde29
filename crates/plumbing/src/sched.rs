//! CPU scheduling of background work: threads and database sessions that must give way to the service's own.
//!
//! Two ways to be background work, for two situations:
//!
//! - [`background_this_thread`]: Linux's `SCHED_IDLE` policy. A runnable
//!   normal task preempts it on wake-up, instead of waiting out its time
//!   slice as it would behind a merely niced task. Right when the work runs
//!   on the crawler's own threads (an embedded database) spread over every CPU.
//! - [`nice_this_thread`] with [`confine_to_one_cpu`], and [`lower_process`]
//!   for a database server's process doing the work: nice 19 on one CPU. A
//!   CPU that runs only `SCHED_IDLE` tasks counts as idle when the kernel
//!   places a waking task, so the service's threads get woken onto the
//!   crawler's CPU, where (measured: autogroups on, no full preemption) they
//!   waited up to 5 ms behind it; a niced task keeps its CPU counted busy,
//!   so wake-ups go to the CPUs left free. The niced task also asks for the
//!   shortest time slice ([`BACKGROUND_SLICE_NS`]): since Linux 6.12 a
//!   running task is shielded from wake-up preemption for its slice, and a
//!   service thread woken behind it inside that window waits for the next
//!   scheduler tick.
//!
//! Lowering one's own threads needs no privilege; lowering another process
//! needs the same user or `CAP_SYS_NICE`.

/// The nice value of background work (the lowest priority).
pub const BACKGROUND_NICE: i32 = 19;

/// Puts the calling thread (and threads it starts afterwards) in the background.
pub fn background_this_thread() -> std::io::Result<()> {
    set_idle(0)
}

/// Gives the calling thread (and threads it starts afterwards) nice 19.
pub fn nice_this_thread() -> std::io::Result<()> {
    // PRIO_PROCESS with who = 0 is the calling thread on Linux.
    set_nice(0)
}

/// The CPU background work keeps to: the last one the calling thread may
/// use, or `None` when it may use only one (then there is nothing to leave free).
pub fn background_cpu() -> std::io::Result<Option<usize>> {
    let allowed = allowed_cpus(0)?;
    Ok(match allowed[..] {
        [_, .., last] => Some(last),
        _ => None,
    })
}

/// Confines the calling thread to [`background_cpu`], so background work
/// leaves the other CPUs free for the service's own wake-ups (an idle CPU is
/// found at once; a CPU busy with even `SCHED_IDLE` work may keep a woken
/// task waiting until the next tick). Returns the CPU, or `None` when the
/// thread may use only one anyway.
pub fn confine_to_one_cpu() -> std::io::Result<Option<usize>> {
    let Some(cpu) = background_cpu()? else {
        return Ok(None);
    };
    set_affinity(0, cpu)?;
    Ok(Some(cpu))
}

/// Puts another process (a database server's process doing background
/// work) at nice 19 and, if `cpu` is given, on that CPU alone. Needs the
/// same user as the process or `CAP_SYS_NICE`; fails with `EPERM` otherwise.
pub fn lower_process(pid: u32, cpu: Option<usize>) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    if pid <= 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    set_nice(pid)?;
    if let Some(cpu) = cpu {
        set_affinity(pid, cpu)?;
    }
    Ok(())
}

#[allow(unsafe_code)]
fn allowed_cpus(who: libc::pid_t) -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; who = 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(who, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET only reads `set` at an index below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

#[allow(unsafe_code)]
fn set_affinity(who: libc::pid_t, cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it (cpu checked above).
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::CPU_ZERO(&mut one);
        libc::CPU_SET(cpu, &mut one);
    }
    // SAFETY: `one` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(who, std::mem::size_of::<libc::cpu_set_t>(), &one) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The time slice asked for background work: the shortest Linux grants
/// (100 µs). Since Linux 6.12 a task's slice is also how long it is shielded
/// from wake-up preemption once it gets the CPU (1.4 ms by default on two
/// CPUs): a service thread woken behind a background task inside that
/// window waits for the next scheduler tick (4 ms at HZ = 250). Older
/// kernels ignore it.
pub const BACKGROUND_SLICE_NS: u64 = 100_000;

#[allow(unsafe_code)]
fn set_nice(who: libc::pid_t) -> std::io::Result<()> {
    let attr = libc::sched_attr {
        size: std::mem::size_of::<libc::sched_attr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: BACKGROUND_NICE,
        sched_priority: 0,
        sched_runtime: BACKGROUND_SLICE_NS,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `attr` is a valid sched_attr whose size field says its size;
    // the kernel only reads it; `who` is a thread/process id or 0 (the caller).
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, who, &attr as *const libc::sched_attr, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    // A kernel or sandbox without sched_setattr: the nice value alone.
    // SAFETY: a plain system call on integers; `who` is a thread/process id or 0 (the caller).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, who as libc::id_t, BACKGROUND_NICE) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
    fn a_thread_can_nice_itself_without_niceing_its_process() {
        let before = nice_of(0);
        std::thread::spawn(|| {
            nice_this_thread().unwrap();
            assert_eq!(nice_of(0), BACKGROUND_NICE);
        })
        .join()
        .unwrap();
        assert_eq!(nice_of(0), before);
    }

    #[test]
    fn a_child_process_is_lowered_and_put_on_one_cpu() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let cpu = background_cpu().unwrap();
        let lowered = lower_process(child.id(), cpu);
        let pid = child.id() as libc::pid_t;
        let (nice, cpus) = (nice_of(pid), allowed_cpus(pid).unwrap());
        child.kill().unwrap();
        child.wait().unwrap();
        lowered.unwrap();
        assert_eq!(nice, BACKGROUND_NICE);
        match cpu {
            Some(c) => assert_eq!(cpus, vec![c]),
            None => assert_eq!(cpus.len(), 1),
        }
    }

    #[test]
    fn lowering_no_process_is_refused() {
        assert!(lower_process(0, None).is_err());
        assert!(lower_process(u32::MAX, None).is_err());
    }

    #[allow(unsafe_code)]
    fn nice_of(who: libc::pid_t) -> i32 {
        // SAFETY: a plain query; errno is not consulted (nice values here are never -1).
        unsafe { libc::getpriority(libc::PRIO_PROCESS, who as libc::id_t) }
    }

    #[test]
    fn a_niced_thread_asks_for_the_shortest_slice_where_the_kernel_has_slices() {
        std::thread::spawn(|| {
            let slice = || {
                std::fs::read_to_string("/proc/thread-self/sched").ok().and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("se.slice"))
                        .and_then(|l| l.split(':').nth(1))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
            };
            let before = slice();
            nice_this_thread().unwrap();
            assert_eq!(nice_of(0), BACKGROUND_NICE);
            // Kernels before 6.12 (or without scheduler debug) show no slice.
            if let Some(before) = before {
                assert!(before > BACKGROUND_SLICE_NS, "default slice {before}");
                assert_eq!(slice(), Some(BACKGROUND_SLICE_NS));
            }
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
