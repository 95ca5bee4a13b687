//! Durable one-shot timers, delivered to [`crate::Plugin::on_timer`]. A
//! timer scheduled by a request that fails is never set.

use std::time::Duration;

use crate::Error;
use crate::bindings::switchboard::host::timers as raw;

/// Schedules `name` with `payload` after `delay`; returns the timer id.
pub fn schedule(delay: Duration, name: &str, payload: &[u8]) -> Result<String, Error> {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    crate::tx::note(raw::schedule(ms, name, payload))
}

/// Cancels a pending timer of this plugin; returns whether one was pending.
pub fn cancel(id: &str) -> Result<bool, Error> {
    crate::tx::note(raw::cancel(id))
}
