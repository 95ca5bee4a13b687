//! `crypto`: hashing, randomness, and keyed operations with keys the host
//! holds per (tenant, plugin, key name). Keys are derived from the tenant's
//! key (HMAC-SHA256 over a label naming the plugin, purpose and name), so
//! nothing extra is stored, a plugin can only ever reach its own keys, and
//! deleting the tenant destroys them all. Plugins never see key material.

use ed25519_dalek::{Signer, Verifier};
use sha2::{Digest, Sha256};
use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
use crate::call::CallCtx;
use crate::store::crypt;

/// Most random bytes one call returns.
pub const MAX_RANDOM_BYTES: u32 = 64 << 10;

fn check_name(name: &str) -> Result<(), CapError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(format!(
            "key name {name:?} must be 1-64 of [a-z0-9._-]"
        )))
    }
}

fn derive(ctx: &CallCtx, purpose: &str, name: &str) -> Result<[u8; 32], CapError> {
    check_name(name)?;
    let key = ctx.services.store.tenant_key(ctx.tenant_id())?;
    let label = format!("crypto\0{}\0{purpose}\0{name}", ctx.plugin_name());
    Ok(key.derive(label.as_bytes()))
}

fn signing_key(ctx: &CallCtx, name: &str) -> Result<ed25519_dalek::SigningKey, CapError> {
    Ok(ed25519_dalek::SigningKey::from_bytes(&derive(
        ctx, "ed25519", name,
    )?))
}

/// `len` bytes from the OS random source (at most 64 KiB).
pub fn random_bytes(ctx: &mut CallCtx, len: u32) -> Result<Vec<u8>, CapError> {
    let len = len.min(MAX_RANDOM_BYTES) as usize;
    ctx.charge(len)?;
    let mut out = vec![0u8; len];
    getrandom::fill(&mut out).map_err(|e| CapError::Internal(e.to_string()))?;
    Ok(out)
}

/// SHA-256 of `data`.
pub fn sha256(ctx: &mut CallCtx, data: &[u8]) -> Result<Vec<u8>, CapError> {
    ctx.charge(data.len())?;
    Ok(Sha256::digest(data).to_vec())
}

/// HMAC-SHA256 of `data` under the named key.
pub fn hmac_sha256(ctx: &mut CallCtx, name: &str, data: &[u8]) -> Result<Vec<u8>, CapError> {
    ctx.charge(data.len())?;
    Ok(crypt::hmac_sha256(&derive(ctx, "hmac", name)?, data).to_vec())
}

/// Ed25519 signature of `data` under the named key.
pub fn sign(ctx: &mut CallCtx, name: &str, data: &[u8]) -> Result<Vec<u8>, CapError> {
    ctx.charge(data.len())?;
    Ok(signing_key(ctx, name)?.sign(data).to_bytes().to_vec())
}

/// Whether `signature` is the named key's signature of `data`.
pub fn verify(
    ctx: &mut CallCtx,
    name: &str,
    data: &[u8],
    signature: &[u8],
) -> Result<bool, CapError> {
    ctx.charge(data.len() + signature.len())?;
    let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
        return Ok(false);
    };
    Ok(signing_key(ctx, name)?
        .verifying_key()
        .verify(data, &sig)
        .is_ok())
}

/// The named key's Ed25519 public key (32 bytes), for others to verify.
pub fn public_key(ctx: &mut CallCtx, name: &str) -> Result<Vec<u8>, CapError> {
    Ok(signing_key(ctx, name)?.verifying_key().to_bytes().to_vec())
}

/// AES-256-GCM seal under the named key: `nonce || ciphertext || tag`.
pub fn seal(
    ctx: &mut CallCtx,
    name: &str,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CapError> {
    ctx.charge(plaintext.len() + aad.len())?;
    crypt::seal(&derive(ctx, "aead", name)?, plaintext, aad)
        .map_err(|e| CapError::Internal(e.to_string()))
}

/// Opens what `seal` produced; tampering or the wrong key/AAD is refused.
pub fn open(ctx: &mut CallCtx, name: &str, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CapError> {
    ctx.charge(sealed.len() + aad.len())?;
    crypt::open(&derive(ctx, "aead", name)?, sealed, aad)
        .map_err(|e| CapError::InvalidArgument(format!("cannot open sealed data: {e}")))
}

/// Links the `crypto` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::crypto::add_to_linker::<T, ViewOf<()>>(linker, |t| {
        let (call, _) = t.parts();
        View { call, state: &() }
    })
}

impl wit::crypto::Host for View<'_, ()> {
    fn random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        // The interface has no error case: a budget or entropy failure is
        // fatal to the call.
        random_bytes(self.call, len).map_err(wasmtime::Error::msg)
    }

    fn sha256(&mut self, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        sha256(self.call, &data).map_err(wasmtime::Error::msg)
    }

    fn hmac_sha256(&mut self, key_name: String, data: Vec<u8>) -> WitResult<Vec<u8>> {
        wrap(hmac_sha256(self.call, &key_name, &data))
    }

    fn sign(&mut self, key_name: String, data: Vec<u8>) -> WitResult<Vec<u8>> {
        wrap(sign(self.call, &key_name, &data))
    }

    fn verify(&mut self, key_name: String, data: Vec<u8>, signature: Vec<u8>) -> WitResult<bool> {
        wrap(verify(self.call, &key_name, &data, &signature))
    }

    fn public_key(&mut self, key_name: String) -> WitResult<Vec<u8>> {
        wrap(public_key(self.call, &key_name))
    }

    fn seal(&mut self, key_name: String, plaintext: Vec<u8>, aad: Vec<u8>) -> WitResult<Vec<u8>> {
        wrap(seal(self.call, &key_name, &plaintext, &aad))
    }

    fn open(&mut self, key_name: String, sealed: Vec<u8>, aad: Vec<u8>) -> WitResult<Vec<u8>> {
        wrap(open(self.call, &key_name, &sealed, &aad))
    }
}
