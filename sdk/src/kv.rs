//! Key-value storage in this plugin's namespace of the calling tenant.
//! Every request runs in one transaction: reads see the request's own
//! writes, and the writes are kept only if the request succeeds.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::switchboard::host::kv as raw;

pub use raw::{Entry, Page};

/// The value of `key`.
pub fn get(key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
    raw::get(key.as_ref())
}

/// Sets `key` to `value` (at most 1 MiB; keys 1–1024 bytes).
pub fn set(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
    crate::tx::note(raw::set(key.as_ref(), value.as_ref()))
}

/// Deletes `key`; returns whether it existed.
pub fn delete(key: impl AsRef<[u8]>) -> Result<bool, Error> {
    crate::tx::note(raw::delete(key.as_ref()))
}

/// Up to `limit` (≤ 1000) entries whose keys start with `prefix`, after
/// `start_after`. `Page::next` is the cursor of the following page.
pub fn scan(
    prefix: impl AsRef<[u8]>,
    start_after: Option<&[u8]>,
    limit: u32,
) -> Result<Page, Error> {
    raw::scan(prefix.as_ref(), start_after, limit)
}

/// The entries under `prefix`, page after page, at most `max` of them
/// (the first `max` in key order when there are more).
pub fn scan_all(prefix: impl AsRef<[u8]>, max: usize) -> Result<Vec<Entry>, Error> {
    let prefix = prefix.as_ref();
    let mut out: Vec<Entry> = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    while out.len() < max {
        let want = u32::try_from((max - out.len()).min(1000)).unwrap_or(1000);
        let page = raw::scan(prefix, after.as_deref(), want)?;
        out.extend(page.entries);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    out.truncate(max);
    Ok(out)
}

/// The value of `key` decoded from JSON.
pub fn get_json<T: DeserializeOwned>(key: impl AsRef<[u8]>) -> Result<Option<T>, Error> {
    match get(key)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Internal(format!("stored value is not the expected JSON: {e}"))),
        None => Ok(None),
    }
}

/// Stores `value` as JSON under `key`.
pub fn set_json<T: Serialize + ?Sized>(key: impl AsRef<[u8]>, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    set(key, bytes)
}
