//! What the current request has written, and the rule that keeps a refused
//! request from leaving half a change behind.
//!
//! The host keeps a request's writes when the plugin answers below 500.
//! Handlers should check everything before writing, but a host call can
//! still fail after the first write (a limit, a legal hold, a quota). If
//! the handler then answers 4xx, the half-done change would be kept.
//! [`finish`] turns such an answer into a 500 (same body), so the host
//! drops every write of the request. A handler that means to keep its
//! writes with a 4xx answer (say, "refused, but the recording was sealed")
//! calls [`keep_writes`] first.
//!
//! The SDK's `kv`, `blobs`, `events` (groups), `timers` and `plugins`
//! helpers record their successful writes here (a call into another plugin
//! that accepts a POST, PUT, PATCH or DELETE counts: it may have written;
//! GET and HEAD do not, being safe methods); a failed host call changed
//! nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Response};

// Each request runs in a fresh instance, so these start false.
static WROTE: AtomicBool = AtomicBool::new(false);
static KEEP: AtomicBool = AtomicBool::new(false);

/// Passes a host call's result on, recording a write when it succeeded.
pub(crate) fn note<T>(result: Result<T, Error>) -> Result<T, Error> {
    if result.is_ok() {
        WROTE.store(true, Ordering::Relaxed);
    }
    result
}

/// Whether this request has written anything through the SDK's helpers.
pub fn wrote() -> bool {
    WROTE.load(Ordering::Relaxed)
}

/// Lets this request's writes stand even though it answers 4xx.
pub fn keep_writes() {
    KEEP.store(true, Ordering::Relaxed);
}

/// Applies the rule to the answer of a request: a 4xx after a write
/// becomes a 500 (unless [`keep_writes`] was called).
pub fn finish(response: &mut Response) {
    if wrote() && !KEEP.load(Ordering::Relaxed) && (400..500).contains(&response.status) {
        response.status = 500;
    }
}
