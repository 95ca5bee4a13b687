//! Cryptography with keys the host holds for this plugin in this tenant.
//! Keys are named (`[a-z0-9._-]`, 1–64 characters) and exist as soon as
//! they are used; the plugin never sees key material, and no other plugin
//! or tenant can use them.

use crate::Error;
use crate::bindings::switchboard::host::crypto as raw;

/// `len` random bytes (at most 64 KiB).
pub fn random_bytes(len: u32) -> Vec<u8> {
    raw::random_bytes(len)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    raw::sha256(data)
}

/// HMAC-SHA256 of `data` under the named key.
pub fn hmac_sha256(key: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
    raw::hmac_sha256(key, data)
}

/// Ed25519 signature of `data` under the named key.
pub fn sign(key: &str, data: &[u8]) -> Result<Vec<u8>, Error> {
    raw::sign(key, data)
}

/// Whether `signature` is the named key's signature of `data`.
pub fn verify(key: &str, data: &[u8], signature: &[u8]) -> Result<bool, Error> {
    raw::verify(key, data, signature)
}

/// The named key's Ed25519 public key (32 bytes).
pub fn public_key(key: &str) -> Result<Vec<u8>, Error> {
    raw::public_key(key)
}

/// AES-256-GCM: seals `plaintext`, authenticating `aad` too.
pub fn seal(key: &str, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    raw::seal(key, plaintext, aad)
}

/// Opens what [`seal`] produced; tampering, another key or another `aad`
/// fail with `invalid-argument`.
pub fn open(key: &str, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    raw::open(key, sealed, aad)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random id: 32 lower-case hex digits (128 bits from the host's CSPRNG).
pub fn random_id() -> String {
    hex(&random_bytes(16))
}
