//! Encodings, digests and random tokens shared by the services and doors:
//! hex SHA-256, unpadded base64url, RFC 3986 percent-encoding and the
//! `application/x-www-form-urlencoded` decoder, random hex and base64url
//! tokens, request ids, and a constant-time comparison. A leaf.

use std::collections::HashMap;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// Lower-case hex of the SHA-256 of `data`.
pub fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(data.as_ref()))
}

/// Unpadded base64url (RFC 4648 §5), as JOSE and PKCE use it.
pub fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Decodes unpadded base64url; `None` for anything else.
pub fn unb64url(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// Bytes that travel in JSON as standard base64 (a package on the control
/// socket) and show only their length in `Debug` (logs never carry them).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes(pub Vec<u8>);

impl std::fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl serde::Serialize for Base64Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for Base64Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Base64Bytes)
            .map_err(|e| serde::de::Error::custom(format!("not standard base64: {e}")))
    }
}

/// `n` random bytes as unpadded base64url.
pub fn random_b64url(n: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)?;
    Ok(b64url(&bytes))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Decodes `application/x-www-form-urlencoded` text. A repeated parameter
/// is ambiguous, so its value becomes `"\0repeated"`, which no check
/// accepts (RFC 6749 §3.1).
pub fn form_decode(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode_plus(k), percent_decode_plus(v));
        out.entry(k)
            .and_modify(|e: &mut String| *e = "\u{0}repeated".into())
            .or_insert(v);
    }
    out
}

/// Decodes `%XX` escapes and `+` as a space (one form value); malformed
/// escapes stay as they are, invalid UTF-8 becomes U+FFFD.
pub fn percent_decode_plus(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
            {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `len` random bytes as lower-case hex.
pub fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    // The OS random source failing is unrecoverable for a server that mints
    // ids and keys; fall back to a time-derived value rather than panic.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
    hex::encode(bytes)
}

/// A process-unique id for correlating logs: a random per-process prefix and
/// a counter. Cheap (no system call per id); not a secret.
pub fn request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| random_hex(4));
    format!("{prefix}-{:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_repeats_are_poisoned() {
        let f = form_decode("a=1&b=x+y%2Fz&c=%ZZ&a=2");
        assert!(f["a"].starts_with('\u{0}'));
        assert_eq!(f["b"], "x y/z");
        assert_eq!(f["c"], "%ZZ");
        assert_eq!(percent_decode_plus("%"), "%");
        assert_eq!(percent_decode_plus("%4"), "%4");
        assert_eq!(percent_decode_plus("%41"), "A");
        assert_eq!(percent_decode_plus("%é1"), "%é1");
    }

    #[test]
    fn form_and_percent_round_trip() {
        let f = form_decode("a=1+2&b=%41%zz&c&a2=%E2%82%AC");
        assert_eq!(f["a"], "1 2");
        assert_eq!(f["b"], "A%zz");
        assert_eq!(f["c"], "");
        assert_eq!(f["a2"], "€");
        assert_eq!(form_decode("x=1&x=2")["x"], "\u{0}repeated");
        assert_eq!(percent_encode("a b/€~"), "a%20b%2F%E2%82%AC~");
        assert_eq!(unb64url(&b64url(b"\xff\x00hi")).unwrap(), b"\xff\x00hi");
        assert!(constant_time_eq(b"ab", b"ab") && !constant_time_eq(b"ab", b"ac"));
        assert_eq!(sha256_hex(""), sha256_hex(b""));
    }
}
