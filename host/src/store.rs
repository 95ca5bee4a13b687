//! Storage: an ordered key-value backend behind a trait free of sled types,
//! so a distributed engine can replace sled later (ARCHITECTURE "Beyond one
//! machine"). The runtime builds every key through `keys`, which is where
//! tenant and plugin namespaces are enforced (SPEC K4).
//!
//! Two layers:
//! - `Backend`: raw ordered bytes, one per database (`SledBackend`);
//! - `Store`: what the rest of the host uses — one system database plus one
//!   database per region (SPEC D3), every value sealed on the way in and
//!   authenticated on the way out (`crypt`, SPEC D2), group commit for
//!   durability, a changelog and online snapshots for backups (SPEC D5).

pub mod crypt;
pub mod keys;
mod sealed;

#[cfg(test)]
pub(crate) use sealed::tests as sealed_tests;
pub use sealed::{SnapshotPage, Store, StoreConfig};

use std::ops::Bound;
use std::path::Path;

/// One write of an atomic batch: `Some` sets, `None` deletes.
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data folder is locked by another process (usually a running
    /// server).
    #[error("the data folder {path} is in use by another process; stop it or pass another --data")]
    Locked { path: String },
    /// The backend reported an I/O or corruption error.
    #[error("storage failed: {0}")]
    Backend(String),
    /// A stored record could not be decoded or failed authentication.
    #[error("stored record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// A key belongs to no configured database (e.g. a tenant in an
    /// unknown region).
    #[error("{0}")]
    Routing(String),
    /// Encryption could not be applied.
    #[error("encryption failed: {0}")]
    Crypt(#[from] crypt::CryptError),
}

/// An ordered byte-key store with atomic batches.
pub trait Backend: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries whose keys start with `prefix`, in key order,
    /// strictly after `start_after` when given.
    fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError>;
    /// Applies every write or none.
    fn apply(&self, writes: &[Write]) -> Result<(), StoreError>;
    /// Makes every applied batch durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// How long opening waits for a lock this process may just have released.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The embedded backend: one sled database, one tree for all records.
pub struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`. A database this process
    /// released a moment ago may still be locked while sled's I/O threads
    /// finish their last write after the handle is dropped, so a lock
    /// conflict is retried for up to a second before it is reported.
    pub fn open(dir: &Path) -> Result<SledBackend, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_RETRY;
        loop {
            match Self::open_once(dir) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    fn open_once(dir: &Path) -> Result<SledBackend, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            // Durability comes from the store's group commit; this only
            // bounds how much a crash can lose of unacknowledged writes.
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked {
                        path: dir.display().to_string(),
                    }
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::Locked {
                    path: dir.display().to_string(),
                },
                other => StoreError::Backend(other.to_string()),
            })?;
        let tree = db.open_tree("data").map_err(backend)?;
        Ok(SledBackend { db, tree })
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let iter = match start_after {
            Some(after) if after >= prefix => self
                .tree
                .range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded)),
            _ => self.tree.scan_prefix(prefix),
        };
        for item in iter {
            let (k, v) = item.map_err(backend)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        self.tree.apply_batch(batch).map_err(backend)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_respects_prefix_cursor_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let db = SledBackend::open(dir.path()).unwrap();
        let writes: Vec<Write> = ["a/1", "a/2", "a/3", "b/1"]
            .iter()
            .map(|k| (k.as_bytes().to_vec(), Some(b"v".to_vec())))
            .collect();
        db.apply(&writes).unwrap();
        let all = db.scan(b"a/", None, 10).unwrap();
        assert_eq!(all.len(), 3);
        let page = db.scan(b"a/", Some(b"a/1"), 1).unwrap();
        assert_eq!(page[0].0, b"a/2");
        // A cursor before the prefix must not leak keys outside it.
        let page = db.scan(b"b/", Some(b"a/9"), 10).unwrap();
        assert_eq!(page.len(), 1);
        db.apply(&[(b"a/2".to_vec(), None)]).unwrap();
        assert_eq!(db.scan(b"a/", None, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_second_open_of_the_same_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _db = SledBackend::open(dir.path()).unwrap();
        match SledBackend::open(dir.path()) {
            Err(StoreError::Locked { .. }) => {}
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }
}
