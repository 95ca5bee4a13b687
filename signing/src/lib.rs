//! Switchboard's supply-chain library (SPEC S1–S4): the plugin manifest,
//! publisher keys, and the signed package format with its verification.
//! The host and the partner CLI share it; the trust store itself (which keys
//! an operator accepts) lives in the host.

#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod keys;
pub mod manifest;
pub mod package;

pub use keys::{KeyError, KeyId};
pub use manifest::{Capability, Manifest, ManifestError, Setting, SettingKind};
pub use package::{Package, PackageError, Trust};

/// SHA-256 of a component, hex-encoded: the digest that keys compile caches
/// and (later) that signatures bind.
pub fn component_digest(component: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(component))
}
