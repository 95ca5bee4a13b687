//! Publisher keys: Ed25519 key pairs in small text files, and key ids.
//!
//! ```text
//! secret file (mode 0600):  SWKEY-ED25519-SECRET-1\n<64 hex: 32-byte seed>\n
//! or, with a passphrase:    SWKEY-ED25519-SECRET-ENC-1\n
//!                           argon2id m=19456 t=2 p=1 <32 hex: salt>\n
//!                           <24 hex: AES-256-GCM nonce>\n<96 hex: sealed seed + tag>\n
//! public file:              SWKEY-ED25519-PUBLIC-1 <key id>\n<64 hex: 32-byte key>\n
//! key id:                   first 16 bytes of SHA-256(public key), 32 hex
//! ```

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

const SECRET_HEADER: &str = "SWKEY-ED25519-SECRET-1";
const SEALED_HEADER: &str = "SWKEY-ED25519-SECRET-ENC-1";
/// Argon2id parameters for sealing secret keys (OWASP's minimum for
/// argon2id: 19 MiB, 2 passes, 1 lane).
const KDF_M_KIB: u32 = 19_456;
const KDF_T: u32 = 2;
const KDF_P: u32 = 1;
const PUBLIC_HEADER: &str = "SWKEY-ED25519-PUBLIC-1";

/// Identifies a publisher key: the first 16 bytes of SHA-256 of the
/// public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s)
            .map_err(|_| KeyError::Malformed(format!("{s:?} is not a key id (32 hex digits)")))?;
        let id: [u8; 16] = bytes
            .try_into()
            .map_err(|_| KeyError::Malformed(format!("{s:?} is not a key id (32 hex digits)")))?;
        Ok(KeyId(id))
    }
}

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a key file of the expected kind.
    #[error("{0}")]
    Malformed(String),
    /// A secret key file is readable by others.
    #[error("{0} is readable by group or others; run `chmod 600` on it")]
    Exposed(String),
    /// The OS random source failed.
    #[error("cannot draw random bytes: {0}")]
    Random(String),
    /// The key file is sealed with a passphrase and none was given.
    #[error("{0} is protected by a passphrase; pass --passphrase-env VAR")]
    PassphraseRequired(String),
    /// The passphrase does not open the key file.
    #[error("the passphrase does not open {0}")]
    BadPassphrase(String),
}

impl KeyError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Io { .. } => "key_io",
            KeyError::Malformed(_) => "key_malformed",
            KeyError::Exposed(_) => "key_exposed",
            KeyError::Random(_) => "key_random",
            KeyError::PassphraseRequired(_) => "key_passphrase_required",
            KeyError::BadPassphrase(_) => "key_bad_passphrase",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A new key pair from the OS random source.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The text of a public key file.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!(
        "{PUBLIC_HEADER} {}\n{}\n",
        KeyId::of(key),
        hex::encode(key.as_bytes())
    )
}

fn kdf(passphrase: &str, salt: &[u8]) -> Result<[u8; 32], KeyError> {
    let params = argon2::Params::new(KDF_M_KIB, KDF_T, KDF_P, Some(32))
        .map_err(|e| KeyError::Malformed(format!("argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| KeyError::Malformed(format!("argon2: {e}")))?;
    Ok(out)
}

fn seal(seed: &[u8; 32], passphrase: &str) -> Result<String, KeyError> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut salt).map_err(|e| KeyError::Random(e.to_string()))?;
    getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
    let params = format!(
        "argon2id m={KDF_M_KIB} t={KDF_T} p={KDF_P} {}",
        hex::encode(salt)
    );
    let key = kdf(passphrase, &salt)?;
    let cipher = aes_gcm::Aes256Gcm::new(&key.into());
    let sealed = cipher
        .encrypt(
            &nonce.into(),
            Payload {
                msg: seed,
                aad: params.as_bytes(),
            },
        )
        .map_err(|_| KeyError::Malformed("sealing the key failed".into()))?;
    Ok(format!(
        "{SEALED_HEADER}\n{params}\n{}\n{}\n",
        hex::encode(nonce),
        hex::encode(sealed)
    ))
}

fn open_sealed(
    path: &Path,
    mut lines: std::str::Lines<'_>,
    passphrase: Option<&str>,
) -> Result<[u8; 32], KeyError> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let bad = || KeyError::Malformed(format!("{}: damaged sealed key file", path.display()));
    let params = lines.next().ok_or_else(bad)?;
    let salt_hex = params
        .strip_prefix(&format!("argon2id m={KDF_M_KIB} t={KDF_T} p={KDF_P} "))
        .ok_or_else(bad)?;
    let salt = hex::decode(salt_hex).map_err(|_| bad())?;
    let nonce: [u8; 12] = lines
        .next()
        .and_then(|l| hex::decode(l.trim()).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let sealed = lines
        .next()
        .and_then(|l| hex::decode(l.trim()).ok())
        .ok_or_else(bad)?;
    let Some(passphrase) = passphrase else {
        return Err(KeyError::PassphraseRequired(path.display().to_string()));
    };
    let key = kdf(passphrase, &salt)?;
    let cipher = aes_gcm::Aes256Gcm::new(&key.into());
    let seed = cipher
        .decrypt(
            &nonce.into(),
            Payload {
                msg: &sealed,
                aad: params.as_bytes(),
            },
        )
        .map_err(|_| KeyError::BadPassphrase(path.display().to_string()))?;
    seed.try_into().map_err(|_| bad())
}

/// Writes `key` to `path` (mode 0600, refusing to overwrite) and its public
/// half to `path.pub`.
pub fn write_key_pair(key: &SigningKey, path: &Path) -> Result<(), KeyError> {
    write_key_pair_sealed(key, path, None)
}

/// `write_key_pair`, sealing the secret with `passphrase` (argon2id +
/// AES-256-GCM) when one is given.
pub fn write_key_pair_sealed(
    key: &SigningKey,
    path: &Path,
    passphrase: Option<&str>,
) -> Result<(), KeyError> {
    let text = match passphrase {
        Some(p) => seal(&key.to_bytes(), p)?,
        None => format!("{SECRET_HEADER}\n{}\n", hex::encode(key.to_bytes())),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    let public = path.with_file_name(format!(
        "{}.pub",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    std::fs::write(&public, public_key_text(&key.verifying_key())).map_err(io(&public))?;
    Ok(())
}

/// Reads a secret key file; refuses one that others can read.
pub fn read_secret(path: &Path) -> Result<SigningKey, KeyError> {
    read_secret_sealed(path, None)
}

/// `read_secret` for a file that may be sealed with `passphrase`.
pub fn read_secret_sealed(path: &Path, passphrase: Option<&str>) -> Result<SigningKey, KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed(path.display().to_string()));
        }
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut lines = text.lines();
    let header = lines.next();
    if header == Some(SEALED_HEADER) {
        return open_sealed(path, lines, passphrase).map(|seed| SigningKey::from_bytes(&seed));
    }
    if header != Some(SECRET_HEADER) {
        return Err(KeyError::Malformed(format!(
            "{} is not a Switchboard secret key (expected {SECRET_HEADER})",
            path.display()
        )));
    }
    let seed = lines
        .next()
        .and_then(|l| hex::decode(l.trim()).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            KeyError::Malformed(format!(
                "{}: the key line is not 64 hex digits",
                path.display()
            ))
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses the text of a public key file.
pub fn parse_public(text: &str) -> Result<VerifyingKey, KeyError> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let Some(id) = header.strip_prefix(PUBLIC_HEADER) else {
        return Err(KeyError::Malformed(format!(
            "not a Switchboard public key (expected {PUBLIC_HEADER})"
        )));
    };
    let bytes = lines
        .next()
        .and_then(|l| hex::decode(l.trim()).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| KeyError::Malformed("the key line is not 64 hex digits".into()))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .ok()
        .filter(|k| !k.is_weak())
        .ok_or_else(|| {
            KeyError::Malformed("the bytes are not a usable Ed25519 public key".into())
        })?;
    let declared: KeyId = id.trim().parse()?;
    if declared != KeyId::of(&key) {
        return Err(KeyError::Malformed(format!(
            "the header names key {declared} but the key is {}",
            KeyId::of(&key)
        )));
    }
    Ok(key)
}

/// Parses a publisher key as an operator is handed it: the whole text of
/// a `KEY.pub` file (header line and key line), or the 64 hex digits of
/// its key line alone. Errors name the publisher key and both forms.
pub fn parse_publisher_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let text = text.trim();
    let forms = format!(
        "give the content of the publisher's KEY.pub file (a line \"{PUBLIC_HEADER} <key id>\" then 64 hex digits) or the 64 hex digits alone"
    );
    if text.starts_with(PUBLIC_HEADER) {
        return parse_public(text).map_err(|e| match e {
            KeyError::Malformed(m) => {
                KeyError::Malformed(format!("the publisher key file is malformed: {m}"))
            }
            other => other,
        });
    }
    let bytes = hex::decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| KeyError::Malformed(format!("not a publisher key: {forms}")))?;
    VerifyingKey::from_bytes(&bytes)
        .ok()
        .filter(|k| !k.is_weak())
        .ok_or_else(|| {
            KeyError::Malformed(
                "the publisher key's 64 hex digits are not a usable Ed25519 public key (a small-order key signs nothing)".into(),
            )
        })
}

/// Reads a public key file.
pub fn read_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    parse_public(&text).map_err(|e| match e {
        KeyError::Malformed(m) => KeyError::Malformed(format!("{}: {m}", path.display())),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_key_is_taken_as_its_file_or_its_hex() {
        let key = generate().unwrap();
        let public = key.verifying_key();
        let file = public_key_text(&public);
        assert_eq!(parse_publisher_key(&file).unwrap(), public);
        assert_eq!(
            parse_publisher_key(&format!("  {file}\n\n")).unwrap(),
            public
        );
        let hex_line = hex::encode(public.to_bytes());
        assert_eq!(parse_publisher_key(&hex_line).unwrap(), public);
        for bad in ["", "xyz", &hex_line[..62], &format!("{hex_line}00")] {
            let e = parse_publisher_key(bad).unwrap_err().to_string();
            assert!(e.contains("KEY.pub") && e.contains("64 hex digits"), "{e}");
        }
        // A small-order key, for which any signature would do, is refused.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let e = parse_publisher_key(&hex::encode(weak))
            .unwrap_err()
            .to_string();
        assert!(e.contains("small-order"), "{e}");
        // A file whose header names another key is refused.
        let other = KeyId::of(&generate().unwrap().verifying_key());
        let forged = format!("{PUBLIC_HEADER} {other}\n{hex_line}\n");
        let e = parse_publisher_key(&forged).unwrap_err().to_string();
        assert!(e.contains("publisher key file"), "{e}");
    }

    #[test]
    fn key_pairs_round_trip_and_secret_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partner.key");
        let key = generate().unwrap();
        write_key_pair(&key, &path).unwrap();
        assert_eq!(read_secret(&path).unwrap().to_bytes(), key.to_bytes());
        let public = read_public(&dir.path().join("partner.key.pub")).unwrap();
        assert_eq!(public, key.verifying_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(read_secret(&path).unwrap_err().code(), "key_exposed");
        }
        // Never overwrite an existing key.
        assert_eq!(write_key_pair(&key, &path).unwrap_err().code(), "key_io");
    }

    #[test]
    fn passphrase_sealed_keys_open_only_with_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealed.key");
        let key = generate().unwrap();
        write_key_pair_sealed(&key, &path, Some("correct horse")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&hex::encode(key.to_bytes())),
            "the seed must not appear"
        );
        assert_eq!(
            read_secret_sealed(&path, Some("correct horse"))
                .unwrap()
                .to_bytes(),
            key.to_bytes()
        );
        assert_eq!(
            read_secret(&path).unwrap_err().code(),
            "key_passphrase_required"
        );
        assert_eq!(
            read_secret_sealed(&path, Some("wrong")).unwrap_err().code(),
            "key_bad_passphrase"
        );
        // A tampered parameter line fails authentication too.
        let tampered = text.replacen("t=2", "t=3", 1);
        std::fs::write(&path, tampered).unwrap();
        assert!(read_secret_sealed(&path, Some("correct horse")).is_err());
    }

    #[test]
    fn public_key_files_are_checked() {
        let key = generate().unwrap().verifying_key();
        let good = public_key_text(&key);
        assert_eq!(parse_public(&good).unwrap(), key);
        let other = generate().unwrap().verifying_key();
        let lying = good.replace(&KeyId::of(&key).to_string(), &KeyId::of(&other).to_string());
        assert_eq!(parse_public(&lying).unwrap_err().code(), "key_malformed");
        assert_eq!(parse_public("junk").unwrap_err().code(), "key_malformed");
        assert!("zz".parse::<KeyId>().is_err());
    }
}
