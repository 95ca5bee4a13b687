//! Encryption at rest (SPEC D2): AES-256-GCM under a three-level hierarchy.
//!
//! ```text
//! master key        (file 0600, env var or command; never stored in sled)
//!   └ scope key     one per tenant + one for system records, stored wrapped
//!       │            by the master key under `sys/keyring/{scope}`
//!       └ data key  fresh for every stored object, stored wrapped by the
//!                    scope key inside the object's envelope
//! ```
//!
//! Every envelope authenticates the store key it lives under (as AES-GCM
//! associated data), so a value copied or moved to another key — another
//! tenant's, say — fails to open instead of being read as that key's data.
//! Rotating the master key rewraps the scope keys only; no data is
//! rewritten. Deleting an object deletes its wrapped data key with it;
//! deleting a tenant deletes its scope key, after which every byte of that
//! tenant still on disk or in a backup is unreadable.

use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use hmac::Mac;
use sha2::{Digest, Sha256};

/// Bytes of every key in the hierarchy.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Magic of an object envelope: `SB`, version 1.
const OBJECT_MAGIC: [u8; 3] = *b"SB\x01";
/// Magic of a blob chunk sealed under its blob's data key.
pub const CHUNK_MAGIC: [u8; 3] = *b"SB\x02";
/// Magic of a wrapped scope key.
const KEYRING_MAGIC: [u8; 4] = *b"SBK1";

/// Bytes an object envelope adds to its plaintext.
pub const OBJECT_OVERHEAD: usize = 3 + NONCE_LEN + KEY_LEN + TAG_LEN + TAG_LEN;
/// Bytes a sealed chunk adds to its plaintext.
pub const CHUNK_OVERHEAD: usize = 3 + NONCE_LEN + TAG_LEN;

/// Why a cryptographic operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptError {
    /// Authentication failed: the ciphertext was altered, moved to another
    /// key, or sealed under another key.
    #[error("authentication failed: the data was altered or belongs to another key")]
    Authentication,
    /// The bytes are not an envelope this version can read.
    #[error("not a Switchboard envelope ({0})")]
    Format(String),
    /// A master key source could not be used.
    #[error("{0}")]
    MasterKey(String),
    /// The operating system's random source failed.
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// Fills a buffer from the OS random source.
pub fn random<const N: usize>() -> Result<[u8; N], CryptError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|e| CryptError::Random(e.to_string()))?;
    Ok(out)
}

fn cipher(key: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

fn seal_with(
    cipher: &Aes256Gcm,
    nonce: &[u8; NONCE_LEN],
    msg: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptError> {
    cipher
        .encrypt(nonce.into(), Payload { msg, aad })
        .map_err(|_| CryptError::Format("plaintext too large to seal".into()))
}

fn open_with(
    cipher: &Aes256Gcm,
    nonce: &[u8],
    msg: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptError> {
    cipher
        .decrypt(nonce.into(), Payload { msg, aad })
        .map_err(|_| CryptError::Authentication)
}

/// AEAD seal with a random nonce: `nonce || ciphertext || tag`.
pub fn seal(key: &[u8; KEY_LEN], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptError> {
    let nonce: [u8; NONCE_LEN] = random()?;
    let mut out = nonce.to_vec();
    out.extend(seal_with(&cipher(key), &nonce, plaintext, aad)?);
    Ok(out)
}

/// Opens what `seal` produced.
pub fn open(key: &[u8; KEY_LEN], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptError::Format("sealed data is too short".into()));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    open_with(&cipher(key), nonce, ct, aad)
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <hmac::Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

// ---- master key --------------------------------------------------------

/// The root of the hierarchy. Held in memory only.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; KEY_LEN],
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(key: [u8; KEY_LEN]) -> MasterKey {
        let digest = Sha256::new()
            .chain_update(b"switchboard master key id\0")
            .chain_update(key)
            .finalize();
        MasterKey {
            key,
            id: hex::encode(&digest[..8]),
        }
    }

    /// A fresh random key.
    pub fn generate() -> Result<MasterKey, CryptError> {
        Ok(MasterKey::from_bytes(random()?))
    }

    /// Parses the text form: 64 hex digits (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<MasterKey, CryptError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .map_err(|_| CryptError::MasterKey("a master key is 64 hexadecimal digits".into()))?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
            CryptError::MasterKey(format!(
                "a master key is 32 bytes (64 hexadecimal digits), got {} bytes",
                b.len()
            ))
        })?;
        Ok(MasterKey::from_bytes(key))
    }

    /// The text form written to key files.
    pub fn to_hex(&self) -> String {
        hex::encode(self.key)
    }

    /// A key derived from this one for one purpose (HMAC-SHA256).
    pub fn derive(&self, label: &[u8]) -> [u8; KEY_LEN] {
        hmac_sha256(&self.key, label)
    }

    /// A short public identifier (first 8 bytes of a hash of the key).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// A file holding the hex key, created (mode 0600) on first run.
    File(PathBuf),
    /// An environment variable holding the hex key.
    Env(String),
    /// A shell command that prints the hex key (a KMS or vault client).
    Command(String),
}

impl MasterKeySource {
    /// Loads the key; a missing file is created when `create` is set.
    pub fn load(&self, create: bool) -> Result<MasterKey, CryptError> {
        match self {
            MasterKeySource::File(path) => load_key_file(path, create),
            MasterKeySource::Env(var) => {
                let text = std::env::var(var).map_err(|_| {
                    CryptError::MasterKey(format!(
                        "the environment variable {var} holding the master key is not set"
                    ))
                })?;
                MasterKey::parse(&text).map_err(|e| CryptError::MasterKey(format!("{var}: {e}")))
            }
            MasterKeySource::Command(cmd) => {
                let out = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|e| {
                        CryptError::MasterKey(format!("cannot run the master key command: {e}"))
                    })?;
                if !out.status.success() {
                    return Err(CryptError::MasterKey(format!(
                        "the master key command failed ({})",
                        out.status
                    )));
                }
                let text = String::from_utf8(out.stdout).map_err(|_| {
                    CryptError::MasterKey("the master key command printed non-UTF-8".into())
                })?;
                MasterKey::parse(&text).map_err(|e| {
                    CryptError::MasterKey(format!("the master key command's output: {e}"))
                })
            }
        }
    }
}

/// Reads a hex key file, refusing one that group or others can read;
/// creates it (0600) when missing and `create` is set.
pub fn load_key_file(path: &Path, create: bool) -> Result<MasterKey, CryptError> {
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(path)
                    .map_err(|e| CryptError::MasterKey(format!("{shown}: {e}")))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(CryptError::MasterKey(format!(
                        "{shown} is accessible to group or others (mode {:o}); run `chmod 600 {shown}`",
                        mode & 0o777
                    )));
                }
            }
            MasterKey::parse(&text).map_err(|e| CryptError::MasterKey(format!("{shown}: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = MasterKey::generate()?;
            write_key_file(path, &key)?;
            Ok(key)
        }
        Err(e) => Err(CryptError::MasterKey(format!(
            "cannot read the key file {shown}: {e}"
        ))),
    }
}

/// Writes `key` to a new file (mode 0600, synced); refuses to overwrite.
pub fn write_key_file(path: &Path, key: &MasterKey) -> Result<(), CryptError> {
    crate::support::fsutil::write_secret(path, format!("{}\n", key.to_hex()).as_bytes())
        .map_err(|e| CryptError::MasterKey(format!("cannot write {}: {e}", path.display())))
}

// ---- scope keys ----------------------------------------------------------

/// A tenant's (or the system's) key, unwrapped in memory.
pub struct ScopeKey {
    raw: [u8; KEY_LEN],
    cipher: Aes256Gcm,
}

impl ScopeKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(raw: [u8; KEY_LEN]) -> ScopeKey {
        ScopeKey {
            cipher: cipher(&raw),
            raw,
        }
    }

    /// A fresh random key.
    pub fn generate() -> Result<ScopeKey, CryptError> {
        Ok(ScopeKey::from_bytes(random()?))
    }

    /// A key derived for one purpose (HMAC-SHA256 of the label), e.g. a
    /// plugin's named signing key. Deterministic, so nothing is stored.
    pub fn derive(&self, label: &[u8]) -> [u8; KEY_LEN] {
        hmac_sha256(&self.raw, label)
    }

    /// Seals an object stored under `store_key` with a fresh data key.
    ///
    /// Layout: `SB\x01 | nonce (12) | data key wrapped (32 + 16) | data`.
    /// The data key is used once, so its nonce is fixed at zero.
    pub fn seal_object(&self, store_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptError> {
        let material: [u8; KEY_LEN + NONCE_LEN] = random()?;
        let (dek, nonce) = material.split_at(KEY_LEN);
        let mut dek_arr = [0u8; KEY_LEN];
        dek_arr.copy_from_slice(dek);
        let mut nonce_arr = [0u8; NONCE_LEN];
        nonce_arr.copy_from_slice(nonce);
        let wrapped = seal_with(&self.cipher, &nonce_arr, dek, &dek_aad(store_key))?;
        let data = seal_with(&cipher(&dek_arr), &[0u8; NONCE_LEN], plaintext, store_key)?;
        let mut out = Vec::with_capacity(OBJECT_OVERHEAD + plaintext.len());
        out.extend_from_slice(&OBJECT_MAGIC);
        out.extend_from_slice(&nonce_arr);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Opens what `seal_object` produced for the same `store_key`.
    pub fn open_object(&self, store_key: &[u8], envelope: &[u8]) -> Result<Vec<u8>, CryptError> {
        if envelope.len() < OBJECT_OVERHEAD {
            return Err(CryptError::Format(format!(
                "{} bytes is shorter than any envelope",
                envelope.len()
            )));
        }
        if envelope[..3] != OBJECT_MAGIC {
            return Err(CryptError::Format("unknown envelope header".into()));
        }
        let nonce = &envelope[3..3 + NONCE_LEN];
        let wrapped = &envelope[3 + NONCE_LEN..3 + NONCE_LEN + KEY_LEN + TAG_LEN];
        let data = &envelope[3 + NONCE_LEN + KEY_LEN + TAG_LEN..];
        let dek = open_with(&self.cipher, nonce, wrapped, &dek_aad(store_key))?;
        let dek: [u8; KEY_LEN] = dek.try_into().map_err(|_| CryptError::Authentication)?;
        open_with(&cipher(&dek), &[0u8; NONCE_LEN], data, store_key)
    }
}

fn dek_aad(store_key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(store_key.len() + 5);
    aad.extend_from_slice(store_key);
    aad.extend_from_slice(b"\0dek");
    aad
}

/// Seals one blob chunk under its blob's data key: `SB\x02 | nonce | data`.
pub fn seal_chunk(
    blob_key: &[u8; KEY_LEN],
    store_key: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptError> {
    let mut out = CHUNK_MAGIC.to_vec();
    out.extend(seal(blob_key, plaintext, store_key)?);
    Ok(out)
}

/// Opens a chunk sealed by `seal_chunk`.
pub fn open_chunk(
    blob_key: &[u8; KEY_LEN],
    store_key: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptError> {
    if sealed.len() < CHUNK_OVERHEAD || sealed[..3] != CHUNK_MAGIC {
        return Err(CryptError::Format("not a sealed blob chunk".into()));
    }
    open(blob_key, &sealed[3..], store_key)
}

/// Wraps a scope key under the master key for the keyring record at
/// `record_key`: `SBK1 | master id (8) | nonce | key + tag`.
pub fn wrap_scope_key(
    master: &MasterKey,
    record_key: &[u8],
    scope: &ScopeKey,
) -> Result<Vec<u8>, CryptError> {
    let mut out = KEYRING_MAGIC.to_vec();
    out.extend(hex::decode(master.id()).map_err(|e| CryptError::Format(e.to_string()))?);
    out.extend(seal(&master.key, &scope.raw, record_key)?);
    Ok(out)
}

/// The id of the master key a keyring record was wrapped under.
pub fn wrapped_by(record: &[u8]) -> Result<String, CryptError> {
    if record.len() < 12 || record[..4] != KEYRING_MAGIC {
        return Err(CryptError::Format("not a keyring record".into()));
    }
    Ok(hex::encode(&record[4..12]))
}

/// Unwraps a keyring record.
pub fn unwrap_scope_key(
    master: &MasterKey,
    record_key: &[u8],
    record: &[u8],
) -> Result<ScopeKey, CryptError> {
    let by = wrapped_by(record)?;
    if by != master.id() {
        return Err(CryptError::MasterKey(format!(
            "this data is wrapped by master key {by}, not by the supplied key {}",
            master.id()
        )));
    }
    let raw = open(&master.key, &record[12..], record_key)?;
    let raw: [u8; KEY_LEN] = raw.try_into().map_err(|_| CryptError::Authentication)?;
    Ok(ScopeKey::from_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_round_trip_and_bind_their_store_key() {
        let k = ScopeKey::generate().unwrap();
        let env = k.seal_object(b"t/a/k/p/x", b"secret marker").unwrap();
        assert_eq!(env.len(), OBJECT_OVERHEAD + 13);
        assert_eq!(k.open_object(b"t/a/k/p/x", &env).unwrap(), b"secret marker");
        assert!(!env.windows(6).any(|w| w == b"secret"));
        // Moved to another key: refused, never garbage.
        assert_eq!(
            k.open_object(b"t/b/k/p/x", &env),
            Err(CryptError::Authentication)
        );
        // Another tenant's key: refused.
        let other = ScopeKey::generate().unwrap();
        assert_eq!(
            other.open_object(b"t/a/k/p/x", &env),
            Err(CryptError::Authentication)
        );
        // Any flipped bit: refused.
        for i in 3..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x40;
            assert!(k.open_object(b"t/a/k/p/x", &bad).is_err(), "byte {i}");
        }
        assert!(matches!(
            k.open_object(b"t/a/k/p/x", &env[..10]),
            Err(CryptError::Format(_))
        ));
    }

    #[test]
    fn keyring_records_need_the_right_master_key() {
        let m1 = MasterKey::generate().unwrap();
        let m2 = MasterKey::generate().unwrap();
        let scope = ScopeKey::generate().unwrap();
        let rec = wrap_scope_key(&m1, b"sys/keyring/tenant/a", &scope).unwrap();
        assert_eq!(wrapped_by(&rec).unwrap(), m1.id());
        let back = unwrap_scope_key(&m1, b"sys/keyring/tenant/a", &rec).unwrap();
        assert_eq!(back.raw, scope.raw);
        assert!(matches!(
            unwrap_scope_key(&m2, b"sys/keyring/tenant/a", &rec),
            Err(CryptError::MasterKey(_))
        ));
        assert_eq!(
            unwrap_scope_key(&m1, b"sys/keyring/tenant/b", &rec).err(),
            Some(CryptError::Authentication)
        );
    }

    #[test]
    fn master_keys_parse_strictly() {
        let m = MasterKey::generate().unwrap();
        assert_eq!(
            MasterKey::parse(&format!(" {}\n", m.to_hex()))
                .unwrap()
                .id(),
            m.id()
        );
        assert!(MasterKey::parse("abc").is_err());
        assert!(MasterKey::parse(&"zz".repeat(32)).is_err());
        assert!(MasterKey::parse(&"00".repeat(31)).is_err());
    }

    #[test]
    fn key_files_are_created_private_and_open_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("master.key");
        let a = load_key_file(&path, true).unwrap();
        let b = load_key_file(&path, false).unwrap();
        assert_eq!(a.id(), b.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_key_file(&path, false).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
        assert!(load_key_file(&dir.path().join("missing"), false).is_err());
    }

    #[test]
    fn chunks_round_trip_and_detect_tampering() {
        let key: [u8; 32] = random().unwrap();
        let sealed = seal_chunk(&key, b"t/a/bc/p/1/0", b"audio").unwrap();
        assert_eq!(
            open_chunk(&key, b"t/a/bc/p/1/0", &sealed).unwrap(),
            b"audio"
        );
        assert!(open_chunk(&key, b"t/a/bc/p/1/1", &sealed).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            open_chunk(&key, b"t/a/bc/p/1/0", &bad),
            Err(CryptError::Authentication)
        );
    }
}
