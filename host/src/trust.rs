//! The operator's trust store (SPEC S2): publisher keys whose packages this
//! host accepts, and their revocation. Records live under `sys/trust/`; the
//! runtime keeps an in-memory copy for verification and revocation checks.
//! A tenant may narrow the set further (`TenantRecord::publishers`).

use serde::{Deserialize, Serialize};
use switchboard_signing::KeyId;
use switchboard_signing::package::Trust;

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
