//! The on-disk compile cache: a component is compiled once per (digest,
//! engine fingerprint) and later loaded in microseconds. Loading compiled
//! code is trusting it (`Component::deserialize` runs what it is given), so
//! every cache file carries an HMAC-SHA256 under a host key kept in the
//! data folder; a file whose tag does not verify is recompiled, never
//! loaded.
//!
//! File layout: `SBCC1\n` · 32-byte tag · serialized component. The tag
//! covers the digest, the fingerprint and the serialized bytes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8] = b"SBCC1\n";
const TAG_LEN: usize = 32;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a verified cache file.
    Hit,
    /// Compiled (no cache file yet).
    Compiled,
    /// A cache file existed but failed authentication; recompiled.
    Rejected,
}

/// The compile cache of one data folder.
pub struct CompileCache {
    dir: PathBuf,
    key: [u8; 32],
    fingerprint: String,
}

impl CompileCache {
    /// Opens the cache in `dir`, with the MAC key at `key_path` (created,
    /// mode 0600, when missing).
    pub fn open(engine: &Engine, dir: &Path, key_path: &Path) -> std::io::Result<CompileCache> {
        fs::create_dir_all(dir)?;
        let key = crate::support::fsutil::secret_key_file(key_path)?;
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            key,
            fingerprint: engine_fingerprint(engine),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", self.fingerprint))
    }

    fn tag(&self, digest: &str, payload: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(digest.as_bytes());
        mac.update(b"\0");
        mac.update(self.fingerprint.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac
    }

    /// The component for `digest` from the cache, if an entry exists and
    /// verifies. `Compiled` means no entry; `Rejected` means an entry
    /// failed authentication or loading (and must be overwritten).
    pub fn lookup(&self, engine: &Engine, digest: &str) -> (Option<Component>, CacheOutcome) {
        let path = self.path(digest);
        let Ok(bytes) = fs::read(&path) else {
            return (None, CacheOutcome::Compiled);
        };
        let Some(payload) = self.verified_payload(digest, &bytes) else {
            tracing::warn!(digest, path = %path.display(), "compile cache entry failed authentication; recompiling");
            return (None, CacheOutcome::Rejected);
        };
        // SAFETY: `Component::deserialize` requires bytes produced by
        // `Component::serialize` of a compatible engine. The payload's HMAC,
        // under a key only this host holds, proves we wrote it with an engine
        // of this exact fingerprint; the bytes were read into memory before
        // the check, so the file cannot change underneath.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, payload) };
        match loaded {
            Ok(component) => (Some(component), CacheOutcome::Hit),
            Err(e) => {
                tracing::warn!(digest, error = %e, "cached component failed to load; recompiling");
                (None, CacheOutcome::Rejected)
            }
        }
    }

    fn verified_payload<'a>(&self, digest: &str, bytes: &'a [u8]) -> Option<&'a [u8]> {
        let rest = bytes.strip_prefix(MAGIC)?;
        if rest.len() < TAG_LEN {
            return None;
        }
        let (tag, payload) = rest.split_at(TAG_LEN);
        self.tag(digest, payload).verify_slice(tag).ok()?;
        Some(payload)
    }

    /// Writes `component` (already validated) as the entry of `digest`.
    pub fn store(&self, digest: &str, component: &Component) -> wasmtime::Result<()> {
        let payload = component.serialize()?;
        let tag = self.tag(digest, &payload).finalize().into_bytes();
        let path = self.path(digest);
        let tmp = path.with_extension("tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&tag)?;
        file.write_all(&payload)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The cache file of `digest` (tests corrupt it on purpose).
    pub fn file_for(&self, digest: &str) -> PathBuf {
        self.path(digest)
    }
}

/// A stable string naming the engine's compilation settings and version.
fn engine_fingerprint(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl std::hash::Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    h.0.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(&h.0.finalize()[..12])
}
