//! `blobs`: large objects — attachments, recordings, voicemail audio —
//! written by appending and read by range, in the calling plugin's
//! namespace of the calling tenant.
//!
//! A blob is a metadata record (owner, retention class, size, its own data
//! key) and fixed-size chunks, each sealed under the blob's key. Every
//! write goes through the call's transaction, so a blob created by a call
//! that then fails is gone with the call. Deleting a blob deletes its
//! metadata and with it the only copy of its key (crypto-shredding, SPEC
//! D2); the host reclaims the chunks in the background. Sizes count against
//! the tenant's and the owner's quotas (SPEC K5); objects of a class with a
//! retention period are deleted when it ends (SPEC D4).

use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
use crate::call::CallCtx;
use crate::store::crypt;
use crate::store::keys;

pub use crate::call::blob::{BlobMeta, CHUNK_BYTES};

/// Most bytes one `append` takes.
pub const MAX_APPEND_BYTES: usize = 4 << 20;
/// Most bytes one `read` returns.
pub const MAX_READ_BYTES: u32 = 4 << 20;
/// Largest blob.
pub const MAX_BLOB_BYTES: u64 = 1 << 40;

/// The blob's data key, or `internal` when its record is unreadable.
fn data_key(meta: &BlobMeta) -> Result<[u8; crypt::KEY_LEN], CapError> {
    meta.data_key()
        .ok_or_else(|| CapError::Internal("blob metadata is unreadable".into()))
}

/// Blob ids are 32 lower-case hex digits.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_id(id: &str) -> Result<(), CapError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(format!(
            "{id:?} is not a blob id (32 lower-case hex digits)"
        )))
    }
}

fn check_owner(owner: &str) -> Result<(), CapError> {
    let ok = !owner.is_empty()
        && owner.len() <= 128
        && owner.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(
            "owner must be 1-128 printable ASCII characters without '/'".into(),
        ))
    }
}

fn load(ctx: &mut CallCtx, id: &str) -> Result<(Vec<u8>, BlobMeta), CapError> {
    check_id(id)?;
    let key = keys::blob_meta(ctx.tenant_id(), ctx.plugin_name(), id);
    let store = ctx.services.store.clone();
    let raw = ctx
        .txn
        .get(&store, &key)?
        .ok_or_else(|| CapError::NotFound(format!("blob {id}")))?;
    let meta = serde_json::from_slice(&raw)
        .map_err(|_| CapError::Internal(format!("metadata of blob {id} is unreadable")))?;
    Ok((key, meta))
}

fn save(ctx: &mut CallCtx, key: Vec<u8>, meta: &BlobMeta) -> Result<(), CapError> {
    let raw = serde_json::to_vec(meta).map_err(|e| CapError::Internal(e.to_string()))?;
    ctx.txn.set(key, raw);
    Ok(())
}

/// Starts an empty blob; returns its id.
pub fn create(ctx: &mut CallCtx, owner: Option<&str>, class: &str) -> Result<String, CapError> {
    let _span = tracing::trace_span!("sb.blobs.create").entered();
    ctx.charge(owner.map_or(0, str::len) + class.len())?;
    if let Some(o) = owner {
        check_owner(o)?;
    }
    if !crate::tenant::is_valid_class(class) {
        return Err(CapError::InvalidArgument(format!(
            "retention class {class:?} must be 1-32 of [a-z0-9-], starting with a letter"
        )));
    }
    let id = crate::support::encoding::random_hex(16);
    let key: [u8; crypt::KEY_LEN] =
        crypt::random().map_err(|e| CapError::Internal(e.to_string()))?;
    let created_ms = crate::support::clock::now_ms();
    let meta = BlobMeta {
        owner: owner.map(str::to_string),
        class: class.to_string(),
        size: 0,
        created_ms,
        key: hex::encode(key),
        hold: false,
    };
    let (tenant, plugin) = (ctx.tenant_id().to_string(), ctx.plugin_name().to_string());
    save(ctx, keys::blob_meta(&tenant, &plugin, &id), &meta)?;
    ctx.txn.set(
        keys::retention(&tenant, class, created_ms, &plugin, &id),
        Vec::new(),
    );
    Ok(id)
}

/// Appends `data`; returns the new size.
pub fn append(ctx: &mut CallCtx, id: &str, data: &[u8]) -> Result<u64, CapError> {
    let _span = tracing::trace_span!("sb.blobs.append").entered();
    ctx.charge(data.len())?;
    if data.len() > MAX_APPEND_BYTES {
        return Err(CapError::TooLarge(format!(
            "one append takes at most {MAX_APPEND_BYTES} bytes, got {}",
            data.len()
        )));
    }
    let (meta_key, mut meta) = load(ctx, id)?;
    let new_size = meta.size + data.len() as u64;
    if new_size > MAX_BLOB_BYTES {
        return Err(CapError::TooLarge(format!(
            "a blob holds at most {MAX_BLOB_BYTES} bytes"
        )));
    }
    check_quota(ctx, meta.owner.as_deref(), data.len() as u64)?;
    let (tenant, plugin) = (ctx.tenant_id().to_string(), ctx.plugin_name().to_string());
    let blob_key = data_key(&meta)?;
    let store = ctx.services.store.clone();
    let first = meta.size / CHUNK_BYTES;
    let within = (meta.size % CHUNK_BYTES) as usize;
    let mut pending: Vec<u8> = Vec::with_capacity(within + data.len());
    if within > 0 {
        let index = first;
        let chunk_key = keys::blob_chunk(&tenant, &plugin, id, index);
        let sealed = ctx
            .txn
            .get(&store, &chunk_key)?
            .ok_or_else(|| CapError::Internal(format!("blob {id} is missing chunk {index}")))?;
        let mut head = crypt::open_chunk(&blob_key, &chunk_key, &sealed)
            .map_err(|e| CapError::Internal(format!("blob {id} chunk {index}: {e}")))?;
        head.truncate(within);
        pending.extend(head);
    }
    pending.extend_from_slice(data);
    for (index, piece) in (first..).zip(pending.chunks(CHUNK_BYTES as usize)) {
        let chunk_key = keys::blob_chunk(&tenant, &plugin, id, index);
        let sealed = crypt::seal_chunk(&blob_key, &chunk_key, piece)
            .map_err(|e| CapError::Internal(e.to_string()))?;
        ctx.txn.set(chunk_key, sealed);
    }
    meta.size = new_size;
    if let Some(owner) = &meta.owner {
        ctx.txn.add_owner_delta(owner, data.len() as i64);
    }
    save(ctx, meta_key, &meta)?;
    Ok(new_size)
}

/// Refuses early (with a clear error the plugin can act on) what the
/// commit would refuse anyway.
fn check_quota(ctx: &mut CallCtx, owner: Option<&str>, adding: u64) -> Result<(), CapError> {
    let store = ctx.services.store.clone();
    let (tenant_bytes, owner_bytes) = ctx.services.commits.usage(ctx.tenant_id(), owner, &store)?;
    let limits = &ctx.tenant.record.limits;
    if let Some(o) = owner {
        let pending = ctx.txn.owner_delta(o).max(0) as u64;
        let next = owner_bytes + pending + adding;
        if next > limits.owner_storage_bytes {
            return Err(CapError::QuotaExceeded(format!(
                "user {o} would store {next} bytes of files; the per-user quota is {} bytes",
                limits.owner_storage_bytes
            )));
        }
    }
    if tenant_bytes + adding > limits.storage_bytes {
        return Err(CapError::QuotaExceeded(format!(
            "the tenant stores {tenant_bytes} bytes; its quota is {} bytes",
            limits.storage_bytes
        )));
    }
    Ok(())
}

/// Up to `len` bytes from `offset` (fewer at the end of the blob).
pub fn read(ctx: &mut CallCtx, id: &str, offset: u64, len: u32) -> Result<Vec<u8>, CapError> {
    let _span = tracing::trace_span!("sb.blobs.read").entered();
    if len > MAX_READ_BYTES {
        return Err(CapError::TooLarge(format!(
            "one read returns at most {MAX_READ_BYTES} bytes"
        )));
    }
    let (_, meta) = load(ctx, id)?;
    if offset > meta.size {
        return Err(CapError::InvalidArgument(format!(
            "offset {offset} is past the end of the blob ({} bytes)",
            meta.size
        )));
    }
    let end = meta.size.min(offset.saturating_add(u64::from(len)));
    ctx.charge((end - offset) as usize)?;
    let (tenant, plugin) = (ctx.tenant_id().to_string(), ctx.plugin_name().to_string());
    let blob_key = data_key(&meta)?;
    let store = ctx.services.store.clone();
    let mut out = Vec::with_capacity((end - offset) as usize);
    let mut pos = offset;
    while pos < end {
        let index = pos / CHUNK_BYTES;
        let chunk_key = keys::blob_chunk(&tenant, &plugin, id, index);
        let sealed = ctx
            .txn
            .get(&store, &chunk_key)?
            .ok_or_else(|| CapError::Internal(format!("blob {id} is missing chunk {index}")))?;
        let chunk = crypt::open_chunk(&blob_key, &chunk_key, &sealed)
            .map_err(|e| CapError::Internal(format!("blob {id} chunk {index}: {e}")))?;
        let start = (pos - index * CHUNK_BYTES) as usize;
        let stop = ((end - index * CHUNK_BYTES) as usize).min(chunk.len());
        if start >= stop {
            return Err(CapError::Internal(format!(
                "blob {id} chunk {index} is short"
            )));
        }
        out.extend_from_slice(&chunk[start..stop]);
        pos += (stop - start) as u64;
    }
    Ok(out)
}

/// The blob's size in bytes.
pub fn size(ctx: &mut CallCtx, id: &str) -> Result<u64, CapError> {
    Ok(load(ctx, id)?.1.size)
}

/// Deletes a blob; returns whether it existed. Refused under legal hold.
pub fn delete(ctx: &mut CallCtx, id: &str) -> Result<bool, CapError> {
    let _span = tracing::trace_span!("sb.blobs.delete").entered();
    let (meta_key, meta) = match load(ctx, id) {
        Ok(found) => found,
        Err(CapError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    if meta.hold || ctx.tenant.record.legal_hold {
        return Err(CapError::Denied(format!(
            "blob {id} is under legal hold and cannot be deleted"
        )));
    }
    let (tenant, plugin) = (ctx.tenant_id().to_string(), ctx.plugin_name().to_string());
    for w in deletion_writes(&tenant, &plugin, id, meta_key, &meta) {
        match w.1 {
            Some(v) => ctx.txn.set(w.0, v),
            None => ctx.txn.set_delete(w.0),
        }
    }
    if let Some(owner) = &meta.owner {
        ctx.txn.add_owner_delta(owner, -(meta.size as i64));
    }
    Ok(true)
}

/// The writes that delete a blob: its metadata (and key) and retention
/// entry go; a reclamation marker tells the host to delete the chunks.
pub(crate) fn deletion_writes(
    tenant: &str,
    plugin: &str,
    id: &str,
    meta_key: Vec<u8>,
    meta: &BlobMeta,
) -> Vec<crate::store::Write> {
    vec![
        (meta_key, None),
        (
            keys::retention(tenant, &meta.class, meta.created_ms, plugin, id),
            None,
        ),
        (keys::blob_gc(tenant, plugin, id), Some(Vec::new())),
    ]
}

/// Links the `blobs` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::blobs::add_to_linker::<T, ViewOf<()>>(linker, |t| {
        let (call, _) = t.parts();
        View { call, state: &() }
    })
}

impl wit::blobs::Host for View<'_, ()> {
    fn create(&mut self, owner: Option<String>, retention_class: String) -> WitResult<String> {
        wrap(create(self.call, owner.as_deref(), &retention_class))
    }

    fn append(&mut self, id: String, chunk: Vec<u8>) -> WitResult<u64> {
        wrap(append(self.call, &id, &chunk))
    }

    fn read(&mut self, id: String, offset: u64, len: u32) -> WitResult<Vec<u8>> {
        wrap(read(self.call, &id, offset, len))
    }

    fn size(&mut self, id: String) -> WitResult<u64> {
        wrap(size(self.call, &id))
    }

    fn delete(&mut self, id: String) -> WitResult<bool> {
        wrap(delete(self.call, &id))
    }
}
