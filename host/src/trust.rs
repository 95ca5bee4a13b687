//! The operator's trust store (SPEC S2): publisher keys whose packages this
//! host accepts, and their revocation. Records live under `sys/trust/`; the
//! runtime writes them and keeps this in-memory `TrustStore` for
//! verification and revocation checks. A tenant may narrow the set further
//! (`TenantRecord::publishers`).

use std::collections::HashMap;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use switchboard_signing::KeyId;
use switchboard_signing::package::Trust;

use crate::support::sync::Recover as _;

/// The trust store in memory: every trusted or revoked key by id.
#[derive(Default)]
pub struct TrustStore {
    keys: RwLock<HashMap<KeyId, TrustedKey>>,
}

impl TrustStore {
    /// What the store says about `id` (unknown keys are `Unknown`).
    pub fn of(&self, id: &KeyId) -> Trust {
        match self.keys.read().recover().get(id) {
            Some(k) => k.trust(),
            None => Trust::Unknown,
        }
    }

    /// What `id` would be trusted as were it not revoked: packages signed
    /// by a revoked key still load (marked revoked) so the tenants' other
    /// plugins keep running.
    pub fn ignoring_revocation(&self, id: &KeyId) -> Trust {
        self.get(id)
            .map(|k| {
                TrustedKey {
                    revoked_ms: None,
                    ..k
                }
                .trust()
            })
            .unwrap_or(Trust::Unknown)
    }

    /// The record of `id`.
    pub fn get(&self, id: &KeyId) -> Option<TrustedKey> {
        self.keys.read().recover().get(id).cloned()
    }

    /// Every record, sorted by key id.
    pub fn all(&self) -> Vec<TrustedKey> {
        let mut out: Vec<TrustedKey> = self.keys.read().recover().values().cloned().collect();
        out.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        out
    }

    /// Records `record` for `id` (after it is stored).
    pub fn insert(&self, id: KeyId, record: TrustedKey) {
        self.keys.write().recover().insert(id, record);
    }
}

/// One trusted (or revoked) publisher key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedKey {
    /// Key id (hex), derived from the public key.
    pub key_id: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    /// Operator's label for the publisher.
    pub label: String,
    /// Milliseconds since the Unix epoch.
    pub added_ms: u64,
    /// Set when the key was revoked; revocation is permanent.
    pub revoked_ms: Option<u64>,
}

impl TrustedKey {
    /// What this record says about its key, for package verification.
    pub fn trust(&self) -> Trust {
        if self.revoked_ms.is_some() {
            return Trust::Revoked;
        }
        let key = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok());
        match key {
            Some(k) => Trust::Trusted(k),
            // A damaged record trusts nothing.
            None => Trust::Unknown,
        }
    }

    /// The record's key id, parsed.
    pub fn id(&self) -> Option<KeyId> {
        self.key_id.parse().ok()
    }
}
