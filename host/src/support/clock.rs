//! The host's one wall clock: milliseconds since the Unix epoch.
//!
//! Every module that stamps, expires or schedules reads the time here, so
//! unit tests can pin it (per thread, `set_for_test`) without touching the
//! system clock. Black-box tests move time by passing it explicitly
//! (`Runtime::fire_timers_due_by`).

#[cfg(test)]
thread_local! {
    static FIXED_MS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> u64 {
    #[cfg(test)]
    if let Some(ms) = FIXED_MS.with(|f| f.get()) {
        return ms;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Pins [`now_ms`] for the current thread (`None` releases it). Unit tests
/// only.
#[cfg(test)]
pub fn set_for_test(ms: Option<u64>) {
    FIXED_MS.with(|f| f.set(ms));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_per_thread_then_released() {
        set_for_test(Some(42));
        assert_eq!(now_ms(), 42);
        std::thread::spawn(|| assert!(now_ms() > 1_600_000_000_000))
            .join()
            .unwrap();
        set_for_test(None);
        assert!(now_ms() > 1_600_000_000_000);
    }
}
