//! Socket settings the standard library and tokio do not expose.

/// Bounds how long data written on a TCP connection may stay
/// unacknowledged before the kernel gives up on it (Linux
/// `TCP_USER_TIMEOUT`): a peer that vanished then fails the next write
/// within `timeout` instead of after the default ~15 minutes of
/// retransmissions. Elsewhere: nothing.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn set_user_timeout(
    socket: &impl std::os::fd::AsRawFd,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: the descriptor is a live socket borrowed for the call;
    // setsockopt reads `size_of::<c_uint>()` bytes from `&ms`, which
    // outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere: nothing.
#[cfg(not(target_os = "linux"))]
pub fn set_user_timeout<T>(_socket: &T, _timeout: std::time::Duration) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_user_timeout_is_set_on_a_connected_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        super::set_user_timeout(&tcp, std::time::Duration::from_secs(20)).unwrap();
    }
}
