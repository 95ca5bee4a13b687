//! Thread priorities and the cores threads run on.

/// Sets the calling thread's nice value (on Linux, per thread): above 0
/// yields to the rest of the machine, below 0 goes ahead of it (which
/// needs `CAP_SYS_NICE`). Returns the OS error when it is refused; 0
/// changes nothing.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn set_nice(nice: i32) -> std::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    // SAFETY: setpriority reads three integers and writes no memory of
    // ours; `who` 0 names the calling thread.
    os_result(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) })
}

/// A libc call's return code as a result: 0 is success, else the OS
/// error it left.
#[cfg(target_os = "linux")]
fn os_result(rc: i32) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere: nothing.
#[cfg(not(target_os = "linux"))]
pub fn set_nice(_nice: i32) -> std::io::Result<()> {
    Ok(())
}

/// Puts the calling thread in the real-time FIFO class at `priority`
/// (1-99; on Linux, per thread): it runs as soon as it is ready, ahead
/// of every ordinary thread on its CPU (the kernel still keeps 5 % of
/// each second for them by default). Needs `CAP_SYS_NICE`; returns the
/// OS error when it is refused.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn set_realtime(priority: u8) -> std::io::Result<()> {
    if !(1..=99).contains(&priority) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a real-time priority is 1-99",
        ));
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: sched_setscheduler reads the parameter struct we own and
    // writes no memory of ours; `pid` 0 names the calling thread.
    os_result(unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) })
}

/// Elsewhere: nothing.
#[cfg(not(target_os = "linux"))]
pub fn set_realtime(_priority: u8) -> std::io::Result<()> {
    Ok(())
}

/// Most CPUs a thread may be pinned to by number.
pub const MAX_CPU: usize = 1023;

/// Keeps the calling thread on `cpus` (on Linux, per thread): its share
/// of the machine is then those cores, whatever else runs elsewhere.
/// Empty changes nothing. Returns the OS error when it is refused (e.g.
/// none of `cpus` is available to the process).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: cpu_set_t is plain data (an array of words), all zeroes is
    // the empty set; CPU_SET writes within it for numbers below
    // CPU_SETSIZE (checked); sched_setaffinity reads `size` bytes of it,
    // and `pid` 0 names the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("CPU {cpu} is beyond what a CPU set holds"),
                ));
            }
            libc::CPU_SET(cpu, &mut set);
        }
        os_result(libc::sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))
    }
}

/// Elsewhere: nothing.
#[cfg(not(target_os = "linux"))]
pub fn set_affinity(_cpus: &[usize]) -> std::io::Result<()> {
    Ok(())
}

/// Checks a list of CPU numbers from the configuration: at most 64 of
/// them, each at most [`MAX_CPU`], none twice.
pub fn check_cpus(setting: &str, cpus: &[usize]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    if cpus.len() > 64 {
        return Err(format!("{setting}: at most 64 CPUs"));
    }
    for &c in cpus {
        if c > MAX_CPU || !seen.insert(c) {
            return Err(format!(
                "{setting}: CPU numbers 0-{MAX_CPU}, each once (not {c})"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    #[allow(unsafe_code)]
    fn a_real_time_thread_is_fifo_or_refused_with_the_os_error() {
        std::thread::spawn(|| {
            for bad in [0, 100] {
                let e = set_realtime(bad).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            }
            match set_realtime(1) {
                // SAFETY: sched_getscheduler reads nothing of ours; 0 is
                // the calling thread.
                Ok(()) => assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_FIFO),
                // Without CAP_SYS_NICE: refused, and the thread unchanged.
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
                    // SAFETY: as above.
                    assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
                }
            }
        })
        .join()
        .unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    #[allow(unsafe_code)]
    fn a_thread_pinned_to_one_cpu_runs_there() {
        std::thread::spawn(|| {
            // The last CPU this process may use (a cpuset or taskset may
            // leave out CPU 0).
            // SAFETY: a zeroed cpu_set_t is the empty set; the call fills
            // at most its size; CPU_ISSET reads within it.
            let cpu = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(
                    libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                    0
                );
                (0..libc::CPU_SETSIZE as usize)
                    .rev()
                    .find(|c| libc::CPU_ISSET(*c, &set))
                    .unwrap()
            };
            set_affinity(&[cpu]).unwrap();
            // SAFETY: sched_getcpu takes nothing and returns a number.
            let now = unsafe { libc::sched_getcpu() };
            assert_eq!(now, cpu as i32);
            assert!(set_affinity(&[5000]).is_err(), "beyond a CPU set");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn cpu_lists_are_checked() {
        assert!(set_affinity(&[]).is_ok());
        assert!(check_cpus("x", &[0, 1]).is_ok());
        assert!(check_cpus("x", &[1, 1]).is_err());
        assert!(check_cpus("x", &[4096]).is_err());
    }
}
