//! Publisher keys: Ed25519 key pairs in small text files, and key ids.
//!
//! ```text
//! secret file (mode 0600):  SWKEY-ED25519-SECRET-1\n<64 hex: 32-byte seed>\n
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
}

impl KeyError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Io { .. } => "key_io",
            KeyError::Malformed(_) => "key_malformed",
            KeyError::Exposed(_) => "key_exposed",
            KeyError::Random(_) => "key_random",
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

/// Writes `key` to `path` (mode 0600, refusing to overwrite) and its public
/// half to `path.pub`.
pub fn write_key_pair(key: &SigningKey, path: &Path) -> Result<(), KeyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io(path))?;
    let text = format!("{SECRET_HEADER}\n{}\n", hex::encode(key.to_bytes()));
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
    if lines.next() != Some(SECRET_HEADER) {
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
        .map_err(|_| KeyError::Malformed("the bytes are not an Ed25519 public key".into()))?;
    let declared: KeyId = id.trim().parse()?;
    if declared != KeyId::of(&key) {
        return Err(KeyError::Malformed(format!(
            "the header names key {declared} but the key is {}",
            KeyId::of(&key)
        )));
    }
    Ok(key)
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
