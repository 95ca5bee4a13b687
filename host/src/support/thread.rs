//! Thread priorities.

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
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
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
