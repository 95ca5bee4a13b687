//! The signed plugin package (`.swpkg`, SPEC S1): one file holding the
//! manifest, the component and Ed25519 signatures over the manifest. The
//! manifest carries the component's SHA-256, so signing the manifest binds
//! the component too. Format in `signing/README.md`.
//!
//! Parsing checks structure, sizes, the manifest (strict, canonical JSON)
//! and the digest; `verify` then checks the publisher's trust and
//! signature. Nothing here compiles or runs the component.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::keys::KeyId;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};

/// File magic: `SWPKG`, format version 1, CR LF (catches text-mode mangling).
pub const MAGIC: &[u8; 8] = b"SWPKG\x01\r\n";
/// Largest component a package may carry.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;
/// Most signatures a package may carry.
pub const MAX_SIGNATURES: usize = 8;
/// Largest package file.
pub const MAX_PACKAGE_BYTES: usize =
    MAGIC.len() + 3 * 5 + MAX_MANIFEST_BYTES + MAX_COMPONENT_BYTES + MAX_SIGNATURES * (5 + 80);

const TAG_MANIFEST: u8 = 1;
const TAG_COMPONENT: u8 = 2;
const TAG_SIGNATURE: u8 = 3;
/// Domain separation: what a signature covers is this prefix, then the
/// manifest bytes.
const SIGNING_CONTEXT: &[u8] = b"switchboard-plugin-manifest-v1\0";

/// A parsed package. Construct with `Package::parse` or `Package::new`.
#[derive(Debug, Clone)]
pub struct Package {
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    component: Vec<u8>,
    signatures: Vec<(KeyId, [u8; 64])>,
}

/// Why a package was refused. Each variant has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// Larger than `MAX_PACKAGE_BYTES` or a section over its limit.
    #[error("package is too large: {0}")]
    TooLarge(String),
    /// Not a package, or its structure is broken.
    #[error("not a valid Switchboard package: {0}")]
    Malformed(String),
    /// The manifest inside is invalid.
    #[error("the package's manifest is invalid: {0}")]
    Manifest(ManifestError),
    /// The manifest bytes are not in canonical form (so two encodings of
    /// one manifest cannot carry different signatures).
    #[error(
        "the package's manifest is not in canonical form; re-sign it with `switchboard plugin sign`"
    )]
    NotCanonical,
    /// The manifest names no publisher or no component digest.
    #[error("the package's manifest lacks `{0}`; packages are made with `switchboard plugin sign`")]
    Incomplete(&'static str),
    /// The component is not the one the manifest names.
    #[error(
        "component digest mismatch: the manifest names sha256 {declared}, the component is {actual}"
    )]
    DigestMismatch { declared: String, actual: String },
    /// No signature by the publisher the manifest names.
    #[error("the package carries no signature by its publisher {0}")]
    Unsigned(KeyId),
    /// The publisher's key is not in the trust store (or the tenant does
    /// not accept it).
    #[error(
        "publisher key {0} is not trusted here; the operator adds it with `switchboard trust add`"
    )]
    UnknownPublisher(KeyId),
    /// The publisher's key was revoked.
    #[error("publisher key {0} has been revoked")]
    Revoked(KeyId),
    /// A signature does not verify.
    #[error(
        "the signature by {0} does not verify: the package was altered or signed with another key"
    )]
    BadSignature(KeyId),
}

impl PackageError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            PackageError::TooLarge(_) => "package_too_large",
            PackageError::Malformed(_) => "package_malformed",
            PackageError::Manifest(e) => e.code(),
            PackageError::NotCanonical => "manifest_not_canonical",
            PackageError::Incomplete(_) => "manifest_incomplete",
            PackageError::DigestMismatch { .. } => "digest_mismatch",
            PackageError::Unsigned(_) => "package_unsigned",
            PackageError::UnknownPublisher(_) => "publisher_unknown",
            PackageError::Revoked(_) => "publisher_revoked",
            PackageError::BadSignature(_) => "signature_invalid",
        }
    }
}

/// What a trust store says about a key.
pub enum Trust {
    /// Trusted, with its public key.
    Trusted(VerifyingKey),
    /// Known but revoked.
    Revoked,
    /// Not known (or not accepted by this tenant).
    Unknown,
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Package {
    /// An unsigned package of `component` published by `publisher`: fills
    /// in the manifest's `publisher` and `component-sha256`.
    pub fn new(
        mut manifest: Manifest,
        component: Vec<u8>,
        publisher: &VerifyingKey,
    ) -> Result<Package, PackageError> {
        if component.len() > MAX_COMPONENT_BYTES {
            return Err(PackageError::TooLarge(format!(
                "component of {} bytes; the limit is {MAX_COMPONENT_BYTES}",
                component.len()
            )));
        }
        manifest.publisher = Some(KeyId::of(publisher).to_string());
        manifest.component_sha256 = Some(sha256_hex(&component));
        manifest.validate().map_err(PackageError::Manifest)?;
        let manifest_bytes = serde_json::to_vec(&manifest)
            .map_err(|e| PackageError::Malformed(format!("cannot encode the manifest: {e}")))?;
        if manifest_bytes.len() > MAX_MANIFEST_BYTES {
            return Err(PackageError::TooLarge(format!(
                "manifest of {} bytes; the limit is {MAX_MANIFEST_BYTES}",
                manifest_bytes.len()
            )));
        }
        Ok(Package {
            manifest_bytes,
            manifest,
            component,
            signatures: Vec::new(),
        })
    }

    /// Adds a signature by `key` (replacing an earlier one by the same key).
    pub fn sign(&mut self, key: &SigningKey) {
        let id = KeyId::of(&key.verifying_key());
        let signature = key.sign(&signed_bytes(&self.manifest_bytes)).to_bytes();
        self.signatures.retain(|(k, _)| *k != id);
        self.signatures.push((id, signature));
    }

    /// The package file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            MAGIC.len() + self.manifest_bytes.len() + self.component.len() + 128,
        );
        out.extend_from_slice(MAGIC);
        section(&mut out, TAG_MANIFEST, &self.manifest_bytes);
        section(&mut out, TAG_COMPONENT, &self.component);
        for (id, sig) in &self.signatures {
            let mut body = Vec::with_capacity(80);
            body.extend_from_slice(&id.0);
            body.extend_from_slice(sig);
            section(&mut out, TAG_SIGNATURE, &body);
        }
        out
    }

    /// Parses a package file: structure, sizes, manifest, canonical form,
    /// digest. Signatures are parsed, not yet verified (`verify`).
    pub fn parse(bytes: &[u8]) -> Result<Package, PackageError> {
        if bytes.len() > MAX_PACKAGE_BYTES {
            return Err(PackageError::TooLarge(format!(
                "{} bytes; the limit is {MAX_PACKAGE_BYTES}",
                bytes.len()
            )));
        }
        let Some(mut rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
            return Err(PackageError::Malformed(
                "the file does not start with the SWPKG v1 header".into(),
            ));
        };
        let mut manifest_bytes: Option<&[u8]> = None;
        let mut component: Option<&[u8]> = None;
        let mut signatures = Vec::new();
        while !rest.is_empty() {
            let (tag, body, tail) = read_section(rest)?;
            rest = tail;
            match tag {
                TAG_MANIFEST if manifest_bytes.is_none() && component.is_none() => {
                    if body.len() > MAX_MANIFEST_BYTES {
                        return Err(PackageError::TooLarge(format!(
                            "manifest of {} bytes; the limit is {MAX_MANIFEST_BYTES}",
                            body.len()
                        )));
                    }
                    manifest_bytes = Some(body);
                }
                TAG_COMPONENT if manifest_bytes.is_some() && component.is_none() => {
                    if body.len() > MAX_COMPONENT_BYTES {
                        return Err(PackageError::TooLarge(format!(
                            "component of {} bytes; the limit is {MAX_COMPONENT_BYTES}",
                            body.len()
                        )));
                    }
                    component = Some(body);
                }
                TAG_SIGNATURE if component.is_some() => {
                    if signatures.len() == MAX_SIGNATURES {
                        return Err(PackageError::TooLarge(format!(
                            "more than {MAX_SIGNATURES} signatures"
                        )));
                    }
                    let (id, sig) = body.split_at_checked(16).ok_or_else(|| {
                        PackageError::Malformed(
                            "a signature section is shorter than 80 bytes".into(),
                        )
                    })?;
                    let id: [u8; 16] = id.try_into().map_err(|_| {
                        PackageError::Malformed("a signature's key id is not 16 bytes".into())
                    })?;
                    let sig: [u8; 64] = sig.try_into().map_err(|_| {
                        PackageError::Malformed("a signature section is not 80 bytes".into())
                    })?;
                    if signatures.iter().any(|(k, _)| *k == KeyId(id)) {
                        return Err(PackageError::Malformed(format!(
                            "two signatures by key {}",
                            KeyId(id)
                        )));
                    }
                    signatures.push((KeyId(id), sig));
                }
                TAG_MANIFEST | TAG_COMPONENT | TAG_SIGNATURE => {
                    return Err(PackageError::Malformed(format!(
                        "section {tag} is duplicated or out of order (manifest, component, signatures)"
                    )));
                }
                other => {
                    return Err(PackageError::Malformed(format!(
                        "unknown section type {other}"
                    )));
                }
            }
        }
        let manifest_bytes =
            manifest_bytes.ok_or_else(|| PackageError::Malformed("no manifest section".into()))?;
        let component =
            component.ok_or_else(|| PackageError::Malformed("no component section".into()))?;
        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| PackageError::Manifest(ManifestError::Malformed(e.to_string())))?;
        manifest.validate().map_err(PackageError::Manifest)?;
        let canonical = serde_json::to_vec(&manifest)
            .map_err(|e| PackageError::Malformed(format!("cannot encode the manifest: {e}")))?;
        if canonical != manifest_bytes {
            return Err(PackageError::NotCanonical);
        }
        let declared = manifest
            .component_sha256
            .clone()
            .ok_or(PackageError::Incomplete("component-sha256"))?;
        if manifest.publisher.is_none() {
            return Err(PackageError::Incomplete("publisher"));
        }
        let actual = sha256_hex(component);
        if declared != actual {
            return Err(PackageError::DigestMismatch { declared, actual });
        }
        Ok(Package {
            manifest_bytes: manifest_bytes.to_vec(),
            manifest,
            component: component.to_vec(),
            signatures,
        })
    }

    /// Checks the publisher the manifest names: trusted (per `trust`), not
    /// revoked, and its signature verifies. Returns the publisher's id.
    pub fn verify(&self, trust: impl Fn(&KeyId) -> Trust) -> Result<KeyId, PackageError> {
        let publisher = self.publisher()?;
        let key = match trust(&publisher) {
            Trust::Trusted(key) => key,
            Trust::Revoked => return Err(PackageError::Revoked(publisher)),
            Trust::Unknown => return Err(PackageError::UnknownPublisher(publisher)),
        };
        if KeyId::of(&key) != publisher {
            return Err(PackageError::UnknownPublisher(publisher));
        }
        let Some((_, sig)) = self.signatures.iter().find(|(k, _)| *k == publisher) else {
            return Err(PackageError::Unsigned(publisher));
        };
        // Strict: no small-order keys or malleable signatures.
        key.verify_strict(
            &signed_bytes(&self.manifest_bytes),
            &Signature::from_bytes(sig),
        )
        .map_err(|_| PackageError::BadSignature(publisher))?;
        Ok(publisher)
    }

    /// The publisher key id the manifest names.
    pub fn publisher(&self) -> Result<KeyId, PackageError> {
        self.manifest
            .publisher
            .as_deref()
            .ok_or(PackageError::Incomplete("publisher"))?
            .parse()
            .map_err(|_| {
                PackageError::Manifest(ManifestError::Invalid("publisher is not a key id".into()))
            })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The component bytes.
    pub fn component(&self) -> &[u8] {
        &self.component
    }

    /// The component's SHA-256, hex.
    pub fn digest(&self) -> String {
        sha256_hex(&self.component)
    }

    /// Key ids of every signature present (verified or not).
    pub fn signers(&self) -> Vec<KeyId> {
        self.signatures.iter().map(|(k, _)| *k).collect()
    }
}

fn signed_bytes(manifest: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, manifest].concat()
}

fn section(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    // Sections are bounded far below 4 GiB by the limits above.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

fn read_section(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), PackageError> {
    let truncated = || PackageError::Malformed("the file is truncated inside a section".into());
    let (&tag, rest) = bytes.split_first().ok_or_else(truncated)?;
    let (len, rest) = rest.split_at_checked(4).ok_or_else(truncated)?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| truncated())?) as usize;
    let (body, rest) = rest.split_at_checked(len).ok_or_else(truncated)?;
    Ok((tag, body, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate;

    fn manifest() -> Manifest {
        Manifest::parse(
            br#"
name = "demo"
version = "1.0.0"
api-version = "0.1.0"
capabilities = ["kv"]
"#,
        )
        .unwrap()
    }

    fn signed() -> (Package, SigningKey) {
        let key = generate().unwrap();
        let mut p = Package::new(
            manifest(),
            b"\0asm\x0d\0\x01\0component".to_vec(),
            &key.verifying_key(),
        )
        .unwrap();
        p.sign(&key);
        (p, key)
    }

    fn trusting(key: &SigningKey) -> impl Fn(&KeyId) -> Trust + '_ {
        move |id| {
            if *id == KeyId::of(&key.verifying_key()) {
                Trust::Trusted(key.verifying_key())
            } else {
                Trust::Unknown
            }
        }
    }

    #[test]
    fn a_signed_package_round_trips_and_verifies() {
        let (p, key) = signed();
        let parsed = Package::parse(&p.to_bytes()).unwrap();
        assert_eq!(
            parsed.verify(trusting(&key)).unwrap(),
            KeyId::of(&key.verifying_key())
        );
        assert_eq!(parsed.manifest().name, "demo");
    }

    #[test]
    fn refusals_have_distinct_codes() {
        let (p, key) = signed();
        let bytes = p.to_bytes();
        // Unknown publisher, revoked publisher.
        let other = generate().unwrap();
        assert_eq!(
            Package::parse(&bytes)
                .unwrap()
                .verify(trusting(&other))
                .unwrap_err()
                .code(),
            "publisher_unknown"
        );
        assert_eq!(
            Package::parse(&bytes)
                .unwrap()
                .verify(|_| Trust::Revoked)
                .unwrap_err()
                .code(),
            "publisher_revoked"
        );
        // Unsigned.
        let unsigned = Package::new(manifest(), b"c".to_vec(), &key.verifying_key()).unwrap();
        let parsed = Package::parse(&unsigned.to_bytes()).unwrap();
        assert_eq!(
            parsed.verify(trusting(&key)).unwrap_err().code(),
            "package_unsigned"
        );
        // Signed by someone else than the named publisher.
        let mut wrong = Package::new(manifest(), b"c".to_vec(), &key.verifying_key()).unwrap();
        wrong.sign(&other);
        assert_eq!(
            Package::parse(&wrong.to_bytes())
                .unwrap()
                .verify(trusting(&key))
                .unwrap_err()
                .code(),
            "package_unsigned"
        );
        // A flipped bit in the signature.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            Package::parse(&flipped)
                .unwrap()
                .verify(trusting(&key))
                .unwrap_err()
                .code(),
            "signature_invalid"
        );
        // A flipped bit in the component: digest mismatch.
        let mut tampered = bytes.clone();
        let pos = bytes.windows(9).rposition(|w| w == b"component").unwrap();
        tampered[pos] ^= 1;
        assert_eq!(
            Package::parse(&tampered).unwrap_err().code(),
            "digest_mismatch"
        );
    }

    #[test]
    fn structural_damage_is_malformed_never_a_panic() {
        let (p, _) = signed();
        let bytes = p.to_bytes();
        for cut in [0, 5, 8, 9, 12, 20, bytes.len() - 1] {
            let code = Package::parse(&bytes[..cut]).unwrap_err().code();
            assert!(code == "package_malformed", "cut at {cut}: {code}");
        }
        // Every single-bit flip is refused or yields the same package.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            let _ = Package::parse(&b).map(|p| p.verify(|_| Trust::Unknown));
        }
        // A duplicated manifest section.
        let mut dup = MAGIC.to_vec();
        section(&mut dup, TAG_MANIFEST, &p.manifest_bytes);
        section(&mut dup, TAG_MANIFEST, &p.manifest_bytes);
        assert_eq!(
            Package::parse(&dup).unwrap_err().code(),
            "package_malformed"
        );
        // Trailing junk.
        let mut junk = bytes.clone();
        junk.push(9);
        assert_eq!(
            Package::parse(&junk).unwrap_err().code(),
            "package_malformed"
        );
    }

    #[test]
    fn non_canonical_and_duplicated_fields_are_refused() {
        let (p, _) = signed();
        let text = String::from_utf8(p.manifest_bytes.clone()).unwrap();
        let spaced = text.replacen(':', ": ", 1);
        let mut out = MAGIC.to_vec();
        section(&mut out, TAG_MANIFEST, spaced.as_bytes());
        section(&mut out, TAG_COMPONENT, &p.component);
        assert_eq!(
            Package::parse(&out).unwrap_err().code(),
            "manifest_not_canonical"
        );
        let dup = text.replacen('{', "{\"name\":\"evil\",", 1);
        let mut out = MAGIC.to_vec();
        section(&mut out, TAG_MANIFEST, dup.as_bytes());
        section(&mut out, TAG_COMPONENT, &p.component);
        assert_eq!(
            Package::parse(&out).unwrap_err().code(),
            "manifest_malformed"
        );
    }
}
