//! Every transactional write the plugin makes goes through here, so the
//! request knows whether it has written anything (see `Chat::handle`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use switchboard_sdk::{Error, blobs, events, kv, timers};

/// Each request runs in a fresh instance, so this starts false.
static WROTE: AtomicBool = AtomicBool::new(false);

/// Passes a host call's result on, noting a write when it succeeded (a
/// failed call changed nothing).
fn mark<T>(result: Result<T, Error>) -> Result<T, Error> {
    if result.is_ok() {
        WROTE.store(true, Ordering::Relaxed);
    }
    result
}

/// Whether this request has written anything.
pub fn wrote() -> bool {
    WROTE.load(Ordering::Relaxed)
}

pub fn set(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
    mark(kv::set(key, value))
}

pub fn set_json<T: Serialize + ?Sized>(key: impl AsRef<[u8]>, value: &T) -> Result<(), Error> {
    mark(kv::set_json(key, value))
}

pub fn delete(key: impl AsRef<[u8]>) -> Result<bool, Error> {
    mark(kv::delete(key))
}

pub fn blob_create(owner: Option<&str>, class: &str) -> Result<String, Error> {
    mark(blobs::create(owner, class))
}

pub fn blob_append(id: &str, data: &[u8]) -> Result<u64, Error> {
    mark(blobs::append(id, data))
}

pub fn blob_delete(id: &str) -> Result<bool, Error> {
    mark(blobs::delete(id))
}

pub fn join_group(group: &str, user: &str) -> Result<(), Error> {
    mark(events::join_group(group, user))
}

pub fn leave_group(group: &str, user: &str) -> Result<(), Error> {
    mark(events::leave_group(group, user))
}

pub fn schedule(delay: Duration, name: &str, payload: &[u8]) -> Result<String, Error> {
    mark(timers::schedule(delay, name, payload))
}
