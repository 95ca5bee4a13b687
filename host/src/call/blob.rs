//! A blob as stored, shared by the `blobs` capability (plugins write their
//! own) and the host's writers (call recordings it writes for a plugin):
//! a metadata record (owner, retention class, size, its own data key) and
//! fixed-size chunks, each sealed under the blob's key. Deleting the
//! metadata shreds the blob (SPEC D2).

use serde::{Deserialize, Serialize};

use super::Services;
use super::txn::{CommitError, Quota, Txn};
use crate::store::{crypt, keys};

/// Bytes per stored chunk.
pub const CHUNK_BYTES: u64 = 64 << 10;

/// A blob's metadata as stored (sealed like every value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobMeta {
    pub owner: Option<String>,
    pub class: String,
    pub size: u64,
    pub created_ms: u64,
    /// The blob's data key, hex. Deleting this record shreds the blob.
    pub key: String,
    /// Legal hold on this object (SPEC D4).
    #[serde(default)]
    pub hold: bool,
}

impl BlobMeta {
    /// The blob's data key, if the record holds a well-formed one.
    pub fn data_key(&self) -> Option<[u8; crypt::KEY_LEN]> {
        hex::decode(&self.key).ok().and_then(|k| k.try_into().ok())
    }
}

/// A blob the host writes for a plugin, appended in order and finished
/// once (a call recording). Whole chunks are committed as they fill, with
/// the metadata and the owner's usage, under the tenant's quota, so a
/// quota that runs out leaves a consistent blob of what fit. Chunk 0 stays
/// in memory too: `finish` writes it again with its first bytes changed (a
/// header whose sizes are known only at the end), which stores nothing
/// more and so is never refused.
pub struct HostBlob {
    tenant: String,
    plugin: String,
    pub id: String,
    meta: BlobMeta,
    key: [u8; crypt::KEY_LEN],
    quota: Quota,
    /// Chunk 0's bytes, and whether they are stored (it is full).
    head: Vec<u8>,
    head_stored: bool,
    /// Bytes after chunk 0 not yet stored (less than a chunk).
    pending: Vec<u8>,
    /// Bytes after chunk 0 stored (whole chunks).
    stored: u64,
}

impl HostBlob {
    /// A new, empty blob `id` of `tenant`'s `plugin` (nothing is stored
    /// until the first chunk fills or the blob is finished).
    pub fn new(
        tenant: &str,
        plugin: &str,
        id: &str,
        owner: Option<String>,
        class: &str,
        quota: Quota,
    ) -> Result<HostBlob, crypt::CryptError> {
        let key: [u8; crypt::KEY_LEN] = crypt::random()?;
        Ok(HostBlob {
            tenant: tenant.to_string(),
            plugin: plugin.to_string(),
            id: id.to_string(),
            meta: BlobMeta {
                owner,
                class: class.to_string(),
                size: 0,
                created_ms: crate::support::clock::now_ms(),
                key: hex::encode(key),
                hold: false,
            },
            key,
            quota,
            head: Vec::new(),
            head_stored: false,
            pending: Vec::new(),
            stored: 0,
        })
    }

    /// The blob's size so far (stored or not).
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.stored + self.pending.len() as u64
    }

    /// Whether nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes stored so far.
    pub fn stored_len(&self) -> u64 {
        self.meta.size
    }

    /// Writes chunk 0 again with `header` over its first bytes (after a
    /// refused `finish`: the header then names only what was stored).
    pub fn restamp(
        &mut self,
        services: &Services,
        header: &[u8],
        still_valid: &dyn Fn() -> bool,
    ) -> Result<(), CommitError> {
        if !self.head_stored {
            return Ok(());
        }
        let n = header.len().min(self.head.len());
        self.head[..n].copy_from_slice(&header[..n]);
        self.commit(services, &[], true, still_valid)
    }

    /// Appends `bytes`, storing every chunk that fills. A quota refusal
    /// keeps nothing of this append (the blob stays as it was).
    pub fn append(
        &mut self,
        services: &Services,
        bytes: &[u8],
        still_valid: &dyn Fn() -> bool,
    ) -> Result<(), CommitError> {
        let (head_len, pending_len) = (self.head.len(), self.pending.len());
        let room = (CHUNK_BYTES as usize).saturating_sub(self.head.len());
        let take = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..take]);
        self.pending.extend_from_slice(&bytes[take..]);
        let head_full = self.head.len() == CHUNK_BYTES as usize && !self.head_stored;
        let whole = self.pending.len() / CHUNK_BYTES as usize * CHUNK_BYTES as usize;
        if !head_full && whole == 0 {
            return Ok(());
        }
        let chunks = self.pending[..whole].to_vec();
        match self.commit(services, &chunks, head_full, still_valid) {
            Ok(()) => {
                self.pending.drain(..whole);
                Ok(())
            }
            Err(e) => {
                self.head.truncate(head_len);
                self.pending.truncate(pending_len);
                Err(e)
            }
        }
    }

    /// Stores what is left, with `header` over the blob's first bytes;
    /// returns the blob's size. When the quota refuses the rest, the blob
    /// keeps what was stored before (`restamp` then fixes its header).
    pub fn finish(
        &mut self,
        services: &Services,
        header: &[u8],
        still_valid: &dyn Fn() -> bool,
    ) -> Result<u64, CommitError> {
        let n = header.len().min(self.head.len());
        self.head[..n].copy_from_slice(&header[..n]);
        let tail = std::mem::take(&mut self.pending);
        self.commit(services, &tail, true, still_valid)?;
        Ok(self.meta.size)
    }

    /// Stores `chunks` (whole chunks after chunk 0, or the last partial
    /// one) after those stored, and chunk 0 if `with_head`, with the
    /// metadata.
    fn commit(
        &mut self,
        services: &Services,
        chunks: &[u8],
        with_head: bool,
        still_valid: &dyn Fn() -> bool,
    ) -> Result<(), CommitError> {
        let mut txn = Txn::default();
        let (t, p, id) = (&self.tenant, &self.plugin, &self.id);
        // A blob the plugin deleted (or whose tenant went) meanwhile stays
        // gone: its metadata, read here, must be as this writer left it
        // (a commit after a change conflicts).
        let meta_key = keys::blob_meta(t, p, id);
        let seen = txn.get(&services.store, &meta_key)?;
        if self.meta.size > 0 && seen.is_none() {
            return Err(CommitError::Gone);
        }
        let seal = |txn: &mut Txn, index: u64, piece: &[u8]| -> Result<(), CommitError> {
            let chunk_key = keys::blob_chunk(t, p, id, index);
            let sealed = crypt::seal_chunk(&self.key, &chunk_key, piece)
                .map_err(|e| backend(format!("cannot seal a chunk: {e}")))?;
            txn.set(chunk_key, sealed);
            Ok(())
        };
        let first = 1 + self.stored / CHUNK_BYTES;
        for (index, piece) in (first..).zip(chunks.chunks(CHUNK_BYTES as usize)) {
            seal(&mut txn, index, piece)?;
        }
        let mut adding = chunks.len() as u64;
        if with_head {
            seal(&mut txn, 0, &self.head)?;
            if !self.head_stored {
                adding += self.head.len() as u64;
            }
        }
        let mut meta = self.meta.clone();
        meta.size += adding;
        let raw = serde_json::to_vec(&meta).map_err(|e| backend(e.to_string()))?;
        txn.set(keys::blob_meta(t, p, id), raw);
        if self.meta.size == 0 {
            txn.set(
                keys::retention(t, &meta.class, meta.created_ms, p, id),
                Vec::new(),
            );
        }
        if let Some(owner) = &meta.owner
            && adding > 0
        {
            txn.add_owner_delta(owner, adding as i64);
        }
        let _ = services
            .commits
            .commit(t, &services.store, txn, self.quota, still_valid)?;
        if with_head {
            self.head_stored = true;
        }
        self.stored += chunks.len() as u64;
        self.meta = meta;
        Ok(())
    }
}

fn backend(why: String) -> CommitError {
    CommitError::Store(crate::store::StoreError::Backend(why))
}
