//! `kv`: the calling plugin's key-value namespace in the calling tenant,
//! read and written through the call's transaction. Keys are bytes, so a
//! plugin may use any encoding; the namespace prefix is the host's, so no
//! key can reach another plugin or tenant (SPEC K4).

use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
use crate::call::CallCtx;
use crate::store::{Entry, keys};

/// Longest key accepted.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most entries one scan returns.
pub const MAX_SCAN_LIMIT: u32 = 1000;
/// Most writes one call may buffer.
pub const MAX_WRITES_PER_CALL: usize = 10_000;

fn check_key(key: &[u8]) -> Result<(), CapError> {
    if key.is_empty() {
        return Err(CapError::InvalidArgument("keys must not be empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(CapError::TooLarge(format!(
            "key of {} bytes exceeds the {MAX_KEY_BYTES}-byte limit",
            key.len()
        )));
    }
    Ok(())
}

fn full_key(ctx: &CallCtx, key: &[u8]) -> Vec<u8> {
    keys::kv(ctx.tenant_id(), ctx.plugin_name(), key)
}

/// The value of `key`, seeing this call's own writes.
pub fn get(ctx: &mut CallCtx, key: &[u8]) -> Result<Option<Vec<u8>>, CapError> {
    let _span = tracing::trace_span!("sb.kv.get").entered();
    ctx.charge(key.len())?;
    check_key(key)?;
    let full = full_key(ctx, key);
    let store = ctx.services.store.clone();
    Ok(ctx.txn.get(store.as_ref(), &full)?)
}

/// Buffers `key = value`.
pub fn set(ctx: &mut CallCtx, key: &[u8], value: Vec<u8>) -> Result<(), CapError> {
    let _span = tracing::trace_span!("sb.kv.set").entered();
    ctx.charge(key.len() + value.len())?;
    check_key(key)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(CapError::TooLarge(format!(
            "value of {} bytes exceeds the {MAX_VALUE_BYTES}-byte limit; use blobs for large objects",
            value.len()
        )));
    }
    if ctx.txn.write_count() >= MAX_WRITES_PER_CALL {
        return Err(CapError::TooLarge(format!(
            "a call may write at most {MAX_WRITES_PER_CALL} keys"
        )));
    }
    let full = full_key(ctx, key);
    ctx.txn.set(full, value);
    Ok(())
}

/// Buffers a delete; returns whether the key existed.
pub fn delete(ctx: &mut CallCtx, key: &[u8]) -> Result<bool, CapError> {
    let _span = tracing::trace_span!("sb.kv.delete").entered();
    ctx.charge(key.len())?;
    check_key(key)?;
    let full = full_key(ctx, key);
    let store = ctx.services.store.clone();
    Ok(ctx.txn.delete(store.as_ref(), &full)?)
}

/// One page of a scan.
pub struct ScanPage {
    /// Entries, with keys relative to the plugin's namespace.
    pub entries: Vec<Entry>,
    /// Cursor of the next page, if there may be one.
    pub next: Option<Vec<u8>>,
}

/// One page of a prefix scan.
pub fn scan(
    ctx: &mut CallCtx,
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: u32,
) -> Result<ScanPage, CapError> {
    let _span = tracing::trace_span!("sb.kv.scan").entered();
    ctx.charge(prefix.len() + start_after.map_or(0, <[u8]>::len))?;
    if prefix.len() > MAX_KEY_BYTES || start_after.is_some_and(|s| s.len() > MAX_KEY_BYTES) {
        return Err(CapError::TooLarge(format!(
            "prefix and cursor are limited to {MAX_KEY_BYTES} bytes"
        )));
    }
    let limit = limit.clamp(1, MAX_SCAN_LIMIT) as usize;
    let ns = keys::kv_prefix(ctx.tenant_id(), ctx.plugin_name());
    let mut full_prefix = ns.clone();
    full_prefix.extend_from_slice(prefix);
    let full_after = start_after.map(|a| {
        let mut k = ns.clone();
        k.extend_from_slice(a);
        k
    });
    let store = ctx.services.store.clone();
    let (page, more) = ctx
        .txn
        .scan(store.as_ref(), &full_prefix, full_after.as_deref(), limit)?;
    let entries: Vec<Entry> = page
        .into_iter()
        .map(|(k, v)| (k[ns.len()..].to_vec(), v))
        .collect();
    let bytes: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
    ctx.charge(bytes)?;
    let next = if more {
        entries.last().map(|(k, _)| k.clone())
    } else {
        None
    };
    Ok(ScanPage { entries, next })
}

/// Links the `kv` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::kv::add_to_linker::<T, ViewOf<()>>(linker, |t| View {
        call: t.parts().0,
        state: &(),
    })
}

impl wit::kv::Host for View<'_, ()> {
    fn get(&mut self, key: Vec<u8>) -> WitResult<Option<Vec<u8>>> {
        wrap(get(self.call, &key))
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> WitResult<()> {
        wrap(set(self.call, &key, value))
    }

    fn delete(&mut self, key: Vec<u8>) -> WitResult<bool> {
        wrap(delete(self.call, &key))
    }

    fn scan(
        &mut self,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> WitResult<wit::kv::Page> {
        wrap(
            scan(self.call, &prefix, start_after.as_deref(), limit).map(|page| wit::kv::Page {
                entries: page
                    .entries
                    .into_iter()
                    .map(|(key, value)| wit::kv::Entry { key, value })
                    .collect(),
                next: page.next,
            }),
        )
    }
}
