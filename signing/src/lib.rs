//! Switchboard's supply-chain library: the plugin manifest today; the signed
//! package format, Ed25519 signatures, trust store and revocation arrive with
//! the trust-chain issue (SPEC S1–S4). The host and the partner CLI share it.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod manifest;

pub use manifest::{Capability, Manifest, ManifestError, Setting, SettingKind};

/// SHA-256 of a component, hex-encoded: the digest that keys compile caches
/// and (later) that signatures bind.
pub fn component_digest(component: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(component))
}
