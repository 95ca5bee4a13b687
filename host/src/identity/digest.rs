//! SIP digest authentication (RFC 3261 §22, RFC 7616) for devices: SHA-256
//! first, MD5 for the phones that know nothing else; `qop=auth` only.
//!
//! - **Credentials.** A device's secret is kept only as its two HA1
//!   values ([`Ha1`], `H(user:realm:password)`), sealed by the store like
//!   every value; the password itself is never stored. HA1 depends on the
//!   realm, so changing a tenant's SIP domain needs new device passwords.
//! - **Nonces are stateless**: the time they were made, 8 random bytes and
//!   an HMAC-SHA256 over both and the realm under a key of this host, so a
//!   nonce is valid only for the realm that issued it and for
//!   [`NONCE_TTL_MS`]. An expired nonce with a correct answer gets
//!   `stale=true` (the phone retries without asking its user).
//! - **Replay.** Each nonce's highest `nc` is remembered (only after a
//!   correct answer, so forged requests cannot fill the table); a request
//!   must carry a higher one.
//! - **No user oracle.** An unknown user is checked against a random dummy
//!   HA1 made at start, with the same hashing, and fails with the same
//!   [`DigestError::Refused`] as a wrong password; responses are compared
//!   in constant time. The SIP door must do the same store work (look up
//!   and unseal a record) for unknown users as for known ones.
//! - **Restarts.** Nonces issued before this process started are answered
//!   as stale, since their `nc` history is gone.
//!
//! Throttling, lockout and audit belong to the SIP door that calls this.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::support::sync::Recover as _;

/// How long a nonce is accepted.
pub const NONCE_TTL_MS: u64 = 5 * 60 * 1000;
/// Longest `Authorization` header value parsed.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Most parameters in one header.
const MAX_PARAMS: usize = 24;
/// Nonces whose `nc` is remembered at once. At the cap the oldest is
/// forgotten, and every nonce issued up to it is answered as stale from
/// then on (a fresh nonce follows), so forgetting never opens a replay.
const MAX_TRACKED_NONCES: usize = 65_536;
/// Bytes of a nonce: time (8), random (8), MAC (16).
const NONCE_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a request's credentials were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// The header cannot be parsed or lacks a required parameter.
    #[error("malformed digest credentials: {0}")]
    Malformed(String),
    /// A well-formed header asking for something not offered.
    #[error("unsupported digest credentials: {0}")]
    Unsupported(String),
    /// Unknown user, wrong password, wrong realm or a nonce this host did
    /// not make: deliberately one answer.
    #[error("the credentials were refused")]
    Refused,
    /// A correct answer to an expired nonce: challenge again with
    /// `stale=true`.
    #[error("the nonce has expired")]
    Stale,
    /// A nonce count not above the last one accepted for this nonce.
    #[error("the nonce count was already used")]
    Replayed,
    /// A realm that cannot be put in a header (a configuration error).
    #[error("realm {0:?} cannot be used in a challenge")]
    BadRealm(String),
    /// The host cannot make a nonce or key right now (no randomness).
    #[error("digest authentication is unavailable: {0}")]
    Unavailable(String),
}

impl DigestError {
    /// A stable code for logs, metrics and audit entries.
    pub fn code(&self) -> &'static str {
        match self {
            DigestError::Malformed(_) => "digest_malformed",
            DigestError::Unsupported(_) => "digest_unsupported",
            DigestError::Refused => "digest_refused",
            DigestError::Stale => "digest_stale",
            DigestError::Replayed => "digest_replayed",
            DigestError::BadRealm(_) => "digest_bad_realm",
            DigestError::Unavailable(_) => "digest_unavailable",
        }
    }
}

/// A digest hash algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Algorithm {
    /// RFC 7616's SHA-256.
    #[serde(rename = "SHA-256")]
    Sha256,
    /// RFC 2617's MD5, for older phones.
    #[serde(rename = "MD5")]
    Md5,
}

impl Algorithm {
    /// The name in headers.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    fn hex(self, parts: &[&[u8]]) -> String {
        match self {
            Algorithm::Sha256 => {
                let mut h = Sha256::new();
                for p in parts {
                    h.update(p);
                }
                hex::encode(h.finalize())
            }
            Algorithm::Md5 => {
                let mut h = md5::Md5::new();
                for p in parts {
                    md5::Digest::update(&mut h, p);
                }
                hex::encode(md5::Digest::finalize(h))
            }
        }
    }
}

/// A device's stored secret: HA1 under both algorithms, as lowercase hex
/// (what the response computation hashes). Wiped when dropped.
#[derive(Clone)]
pub struct Ha1 {
    sha256: Zeroizing<String>,
    md5: Zeroizing<String>,
}

impl std::fmt::Debug for Ha1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ha1(…)")
    }
}

impl Ha1 {
    /// HA1 of `user` in `realm` with `password`.
    pub fn derive(user: &str, realm: &str, password: &str) -> Ha1 {
        let parts: [&[u8]; 5] = [
            user.as_bytes(),
            b":",
            realm.as_bytes(),
            b":",
            password.as_bytes(),
        ];
        Ha1 {
            sha256: Zeroizing::new(Algorithm::Sha256.hex(&parts)),
            md5: Zeroizing::new(Algorithm::Md5.hex(&parts)),
        }
    }

    /// The form kept in the store: `sha256hex:md5hex`.
    pub fn to_stored(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}:{}", self.sha256.as_str(), self.md5.as_str()))
    }

    /// Reads the stored form back.
    pub fn from_stored(s: &str) -> Result<Ha1, DigestError> {
        let bad = || DigestError::Malformed("a stored HA1 is damaged".into());
        let (sha256, md5) = s.split_once(':').ok_or_else(bad)?;
        let hex_of = |v: &str, n: usize| {
            v.len() == n && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if !hex_of(sha256, 64) || !hex_of(md5, 32) {
            return Err(bad());
        }
        Ok(Ha1 {
            sha256: Zeroizing::new(sha256.to_string()),
            md5: Zeroizing::new(md5.to_string()),
        })
    }

    fn for_algorithm(&self, algorithm: Algorithm) -> &str {
        match algorithm {
            Algorithm::Sha256 => &self.sha256,
            Algorithm::Md5 => &self.md5,
        }
    }
}

/// The parameters of an `Authorization` (or `Proxy-Authorization`) header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub cnonce: String,
    pub nc: u32,
    /// The `nc` as sent (8 hex digits); the response hashes these bytes.
    nc_text: String,
}

impl Credentials {
    /// Parses a header value: `Digest name=value, …` with token or quoted
    /// values. Unknown parameters are ignored (RFC 7616 §3.4); repeated,
    /// missing or oversized ones are refused.
    pub fn parse(value: &str) -> Result<Credentials, DigestError> {
        let malformed = |why: &str| DigestError::Malformed(why.to_string());
        if value.len() > MAX_HEADER_BYTES {
            return Err(malformed("the header is too long"));
        }
        let value = value.trim();
        let (scheme, rest) = value
            .split_once(|c: char| c.is_ascii_whitespace())
            .ok_or_else(|| malformed("no parameters"))?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::Unsupported(format!("scheme {scheme:?}")));
        }
        let params = parse_params(rest)?;
        let get = |name: &str| params.get(name).map(String::as_str);
        let need = |name: &str| {
            get(name)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| DigestError::Malformed(format!("no {name}")))
        };
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("MD5") => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("SHA-256") => Algorithm::Sha256,
            Some(a) => return Err(DigestError::Unsupported(format!("algorithm {a:?}"))),
        };
        match get("qop") {
            Some(q) if q.eq_ignore_ascii_case("auth") => {}
            None => return Err(DigestError::Unsupported("no qop (RFC 2069 digest)".into())),
            Some(q) => return Err(DigestError::Unsupported(format!("qop {q:?}"))),
        }
        if get("userhash").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Err(DigestError::Unsupported("userhash".into()));
        }
        let nc_text = need("nc")?;
        if nc_text.len() != 8 || !nc_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("nc is not 8 hex digits"));
        }
        let nc = u32::from_str_radix(&nc_text, 16).map_err(|_| malformed("bad nc"))?;
        Ok(Credentials {
            username: need("username")?,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: need("response")?,
            algorithm,
            cnonce: need("cnonce")?,
            nc,
            nc_text,
        })
    }
}

/// What a client sends back to a server's challenge (a trunk's provider
/// challenging the host's calls): the `Authorization` value for
/// `method` on `uri` as `user`. `challenge` is the `WWW-Authenticate`
/// or `Proxy-Authenticate` value; SHA-256 or MD5, with `qop=auth` when
/// offered and RFC 2069's form otherwise (providers still send it).
pub fn client_answer(
    challenge: &str,
    method: &str,
    uri: &str,
    user: &str,
    password: &str,
) -> Result<String, DigestError> {
    let malformed = |why: &str| DigestError::Malformed(why.to_string());
    if challenge.len() > MAX_HEADER_BYTES {
        return Err(malformed("the challenge is too long"));
    }
    let (scheme, rest) = challenge
        .trim()
        .split_once(|c: char| c.is_ascii_whitespace())
        .ok_or_else(|| malformed("no parameters"))?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(DigestError::Unsupported(format!("scheme {scheme:?}")));
    }
    let params = parse_params(rest)?;
    let get = |name: &str| params.get(name).map(String::as_str);
    let realm = get("realm").ok_or_else(|| malformed("no realm"))?;
    let nonce = get("nonce")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| malformed("no nonce"))?;
    let algorithm = match get("algorithm") {
        None => Algorithm::Md5,
        Some(a) if a.eq_ignore_ascii_case("MD5") => Algorithm::Md5,
        Some(a) if a.eq_ignore_ascii_case("SHA-256") => Algorithm::Sha256,
        Some(a) => return Err(DigestError::Unsupported(format!("algorithm {a:?}"))),
    };
    let qop_auth = match get("qop") {
        None => false,
        Some(q) if q.split(',').any(|v| v.trim().eq_ignore_ascii_case("auth")) => true,
        Some(q) => return Err(DigestError::Unsupported(format!("qop {q:?}"))),
    };
    // The values go back quoted: refuse what cannot be quoted safely.
    let quotable = |v: &str| !v.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    if ![realm, nonce, uri, user].iter().all(|v| quotable(v))
        || get("opaque").is_some_and(|o| !quotable(o))
    {
        return Err(malformed("a value that cannot be quoted"));
    }
    let ha1 = algorithm.hex(&[
        user.as_bytes(),
        b":",
        realm.as_bytes(),
        b":",
        password.as_bytes(),
    ]);
    let ha2 = algorithm.hex(&[method.as_bytes(), b":", uri.as_bytes()]);
    let mut out = format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm={}",
        algorithm.name()
    );
    let response = if qop_auth {
        let cnonce = crate::support::encoding::random_hex(16);
        let nc = "00000001";
        out.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        algorithm.hex(&[
            ha1.as_bytes(),
            b":",
            nonce.as_bytes(),
            b":",
            nc.as_bytes(),
            b":",
            cnonce.as_bytes(),
            b":auth:",
            ha2.as_bytes(),
        ])
    } else {
        algorithm.hex(&[ha1.as_bytes(), b":", nonce.as_bytes(), b":", ha2.as_bytes()])
    };
    out.push_str(&format!(", response=\"{response}\""));
    if let Some(o) = get("opaque") {
        out.push_str(&format!(", opaque=\"{o}\""));
    }
    Ok(out)
}

/// `name=value` pairs, comma-separated; values are tokens or quoted
/// strings with backslash escapes.
fn parse_params(s: &str) -> Result<HashMap<String, String>, DigestError> {
    let malformed = |why: &str| DigestError::Malformed(why.to_string());
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars
            .next_if(|c| c.is_ascii_whitespace() || *c == ',')
            .is_some()
        {}
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',' && !c.is_ascii_whitespace()) {
            name.push(c.to_ascii_lowercase());
        }
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.next() != Some('=') || name.is_empty() {
            return Err(malformed("a parameter without a value"));
        }
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err(malformed("an unterminated quoted string")),
                    Some('"') => break,
                    Some('\\') => {
                        value.push(chars.next().ok_or_else(|| malformed("a bad escape"))?)
                    }
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && !c.is_ascii_whitespace()) {
                value.push(c);
            }
        }
        if out.len() >= MAX_PARAMS {
            return Err(malformed("too many parameters"));
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(DigestError::Malformed(format!("{name} given twice")));
        }
    }
    Ok(out)
}

/// Issues and checks digest challenges under one host key.
pub struct Digest {
    key: Zeroizing<[u8; 32]>,
    /// Nonces issued before this are stale: their `nc` history was not
    /// kept (another process, or evicted below).
    started_ms: u64,
    /// The HA1 an unknown user is checked against (random, per process).
    dummy: Ha1,
    counts: Mutex<Counts>,
    /// [`MAX_TRACKED_NONCES`], smaller in tests.
    max_tracked: usize,
}

/// Highest `nc` accepted per nonce, oldest nonces first for eviction.
#[derive(Default)]
struct Counts {
    by_mac: HashMap<[u8; 16], (u32, u64)>,
    by_age: std::collections::BTreeSet<(u64, [u8; 16])>,
    /// Nonces issued at or before this lost their history to eviction.
    evicted_up_to: Option<u64>,
}

impl Digest {
    /// A verifier whose nonces are keyed with `key`, started at `now_ms`.
    /// Nonces from before `now_ms` (a previous process with the same key)
    /// are answered as stale, since their `nc` history is gone.
    pub fn new(key: [u8; 32], now_ms: u64) -> Result<Digest, DigestError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut_slice())
            .map_err(|e| DigestError::Unavailable(format!("no randomness: {e}")))?;
        Ok(Digest {
            key: Zeroizing::new(key),
            started_ms: now_ms,
            dummy: Ha1::derive("", "", &hex::encode(secret.as_slice())),
            counts: Mutex::new(Counts::default()),
            max_tracked: MAX_TRACKED_NONCES,
        })
    }

    /// `WWW-Authenticate` values for `realm`: SHA-256 first (RFC 7616
    /// §3.7), then MD5, sharing one nonce.
    pub fn challenge(
        &self,
        realm: &str,
        now_ms: u64,
        stale: bool,
    ) -> Result<Vec<String>, DigestError> {
        self.challenge_with(realm, now_ms, stale, &[Algorithm::Sha256, Algorithm::Md5])
    }

    /// `WWW-Authenticate` values for `realm` offering `algorithms`, in
    /// that order, sharing one nonce.
    pub fn challenge_with(
        &self,
        realm: &str,
        now_ms: u64,
        stale: bool,
        algorithms: &[Algorithm],
    ) -> Result<Vec<String>, DigestError> {
        if realm.is_empty()
            || realm.len() > 253
            || !realm
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(DigestError::BadRealm(realm.chars().take(64).collect()));
        }
        let nonce = self.nonce(realm, now_ms)?;
        let stale = if stale { ", stale=true" } else { "" };
        Ok(algorithms
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{realm}\", qop=\"auth\", algorithm={}, nonce=\"{nonce}\"{stale}",
                    a.name()
                )
            })
            .collect())
    }

    fn nonce(&self, realm: &str, now_ms: u64) -> Result<String, DigestError> {
        let mut raw = [0u8; NONCE_BYTES];
        raw[..8].copy_from_slice(&now_ms.to_be_bytes());
        getrandom::fill(&mut raw[8..16])
            .map_err(|e| DigestError::Unavailable(format!("no randomness for a nonce: {e}")))?;
        let mac = self.mac(realm, &raw[..16]);
        raw[16..].copy_from_slice(&mac);
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
    }

    fn mac(&self, realm: &str, head: &[u8]) -> [u8; 16] {
        let mut mac = <HmacSha256 as hmac::Mac>::new_from_slice(self.key.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(b"switchboard sip digest nonce\0");
        mac.update(realm.as_bytes());
        mac.update(b"\0");
        mac.update(head);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// Checks `creds` for a request with `method` in `realm`. `ha1` is the
    /// user's stored secret, or `None` for an unknown user (answered like a
    /// wrong password after the same work). The SIP door checks `creds.uri`
    /// against the request's URI and throttles before calling this.
    pub fn verify(
        &self,
        creds: &Credentials,
        method: &str,
        realm: &str,
        ha1: Option<&Ha1>,
        now_ms: u64,
    ) -> Result<(), DigestError> {
        // Same work for an unknown user as for a known one: a stored-like
        // HA1 nobody knows the password of.
        let (ha1, known) = match ha1 {
            Some(h) => (h, true),
            None => (&self.dummy, false),
        };
        let expected = response(
            creds.algorithm,
            ha1.for_algorithm(creds.algorithm),
            method,
            &creds.uri,
            &creds.nonce,
            &creds.nc_text,
            &creds.cnonce,
        );
        let answer = creds.response.to_ascii_lowercase();
        let right = bool::from(expected.as_bytes().ct_eq(answer.as_bytes()));
        let nonce = self.open_nonce(realm, &creds.nonce);
        let realm_ok = bool::from(creds.realm.as_bytes().ct_eq(realm.as_bytes()));
        let (Some((issued, mac)), true, true, true) = (nonce, right, known, realm_ok) else {
            return Err(DigestError::Refused);
        };
        let expires = issued.saturating_add(NONCE_TTL_MS);
        if now_ms >= expires || issued > now_ms.saturating_add(60_000) || issued < self.started_ms {
            return Err(DigestError::Stale);
        }
        let mut counts = self.counts.lock().recover();
        let Counts {
            by_mac,
            by_age,
            evicted_up_to,
        } = &mut *counts;
        match by_mac.get_mut(&mac) {
            Some((last, _)) if creds.nc <= *last => return Err(DigestError::Replayed),
            Some((last, _)) => {
                *last = creds.nc;
                return Ok(());
            }
            None => {}
        }
        // A nonce with no history: fresh, unless its history was evicted.
        if evicted_up_to.is_some_and(|up_to| issued <= up_to) {
            return Err(DigestError::Stale);
        }
        while by_mac.len() >= self.max_tracked {
            let Some((oldest, old_mac)) = by_age.pop_first() else {
                break;
            };
            by_mac.remove(&old_mac);
            // An expired nonce is stale anyway; only live ones raise the mark.
            if oldest.saturating_add(NONCE_TTL_MS) > now_ms {
                *evicted_up_to = Some(evicted_up_to.map_or(oldest, |u| u.max(oldest)));
            }
        }
        if evicted_up_to.is_some_and(|up_to| issued <= up_to) {
            return Err(DigestError::Stale);
        }
        by_mac.insert(mac, (creds.nc, issued));
        by_age.insert((issued, mac));
        Ok(())
    }

    /// (issue time, MAC) of a nonce this host made for `realm`.
    fn open_nonce(&self, realm: &str, nonce: &str) -> Option<(u64, [u8; 16])> {
        if nonce.len() > 64 {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()?;
        let raw: [u8; NONCE_BYTES] = raw.try_into().ok()?;
        let mac = self.mac(realm, &raw[..16]);
        if !bool::from(mac.ct_eq(&raw[16..])) {
            return None;
        }
        let mut time = [0u8; 8];
        time.copy_from_slice(&raw[..8]);
        Some((u64::from_be_bytes(time), mac))
    }
}

/// RFC 7616 §3.4.1 with `qop=auth`:
/// `H(HA1:nonce:nc:cnonce:auth:H(method:uri))`.
fn response(
    algorithm: Algorithm,
    ha1: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
) -> String {
    let ha2 = algorithm.hex(&[method.as_bytes(), b":", uri.as_bytes()]);
    algorithm.hex(&[
        ha1.as_bytes(),
        b":",
        nonce.as_bytes(),
        b":",
        nc.as_bytes(),
        b":",
        cnonce.as_bytes(),
        b":auth:",
        ha2.as_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 §3.9.1.
    #[test]
    fn responses_match_rfc_7616s_example() {
        let ha1 = Ha1::derive("Mufasa", "http-auth@example.org", "Circle of Life");
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let uri = "/dir/index.html";
        let md5 = response(
            Algorithm::Md5,
            &ha1.md5,
            "GET",
            uri,
            nonce,
            "00000001",
            cnonce,
        );
        assert_eq!(md5, "8ca523f5e9506fed4657c9700eebdbec");
        let sha = response(
            Algorithm::Sha256,
            &ha1.sha256,
            "GET",
            uri,
            nonce,
            "00000001",
            cnonce,
        );
        assert_eq!(
            sha,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        let header = format!(
            "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", uri=\"{uri}\", \
             algorithm=SHA-256, nonce=\"{nonce}\", nc=00000001, cnonce=\"{cnonce}\", qop=auth, \
             response=\"{sha}\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
        );
        let creds = Credentials::parse(&header).unwrap();
        assert_eq!((creds.username.as_str(), creds.nc), ("Mufasa", 1));
        assert_eq!(creds.algorithm, Algorithm::Sha256);
    }

    const REALM: &str = "acme.sip.example";
    const T0: u64 = 1_800_000_000_000;

    /// What a phone sends back to `challenge`.
    fn answer(
        d: &Digest,
        algorithm: Algorithm,
        user: &str,
        password: &str,
        nc: u32,
    ) -> Credentials {
        let ch = d.challenge(REALM, T0, false).unwrap();
        let nonce = ch[0]
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches('"');
        answer_to(nonce, algorithm, user, password, nc)
    }

    fn answer_to(
        nonce: &str,
        algorithm: Algorithm,
        user: &str,
        password: &str,
        nc: u32,
    ) -> Credentials {
        let ha1 = Ha1::derive(user, REALM, password);
        let nc_text = format!("{nc:08x}");
        let uri = "sip:acme.sip.example;transport=tls";
        let r = response(
            algorithm,
            ha1.for_algorithm(algorithm),
            "REGISTER",
            uri,
            nonce,
            &nc_text,
            "c1",
        );
        Credentials::parse(&format!(
            "Digest username=\"{user}\",realm=\"{REALM}\",nonce=\"{nonce}\",uri=\"{uri}\",\
             response=\"{r}\",algorithm={},cnonce=\"c1\",qop=auth,nc={nc_text}",
            algorithm.name()
        ))
        .unwrap()
    }

    #[test]
    fn the_client_side_answers_our_own_challenges_and_rfc_2069s() {
        let d = Digest::new([7; 32], T0 - 1_000).unwrap();
        let stored = Ha1::from_stored(&Ha1::derive("acct", REALM, "s3cret").to_stored()).unwrap();
        // Each algorithm's challenge with a nonce of its own.
        for i in 0..2 {
            let ch = d.challenge(REALM, T0, false).unwrap()[i].clone();
            let wrong = client_answer(&ch, "INVITE", "sip:+4420@x", "acct", "guess").unwrap();
            assert!(
                d.verify(
                    &Credentials::parse(&wrong).unwrap(),
                    "INVITE",
                    REALM,
                    Some(&stored),
                    T0 + 1
                )
                .is_err()
            );
            let a = client_answer(&ch, "INVITE", "sip:+4420@x", "acct", "s3cret").unwrap();
            let creds = Credentials::parse(&a).unwrap();
            d.verify(&creds, "INVITE", REALM, Some(&stored), T0 + 1)
                .unwrap();
        }
        // No qop: RFC 2069 (RFC 2617 §3.5's values without qop; the
        // expected response computed with Python's hashlib).
        let a = client_answer(
            "Digest realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
        )
        .unwrap();
        assert!(
            a.contains("response=\"670fd8c2df070c60b045671b8b24ff02\""),
            "{a}"
        );
        assert!(a.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));
        for bad in [
            "Basic realm=\"x\"",
            "Digest realm=\"x\"",
            "Digest realm=\"x\", nonce=\"n\", algorithm=SHA-512-256",
            "Digest realm=\"x\", nonce=\"n\", qop=\"auth-int\"",
            "Digest realm=\"x\\\"y\", nonce=\"n\"",
        ] {
            assert!(
                client_answer(bad, "INVITE", "sip:a@b", "u", "p").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_right_answer_passes_once_per_count_in_both_algorithms() {
        let d = Digest::new([7; 32], T0 - 1_000).unwrap();
        let stored = Ha1::from_stored(&Ha1::derive("alice", REALM, "pw").to_stored()).unwrap();
        for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
            let creds = answer(&d, algorithm, "alice", "pw", 1);
            d.verify(&creds, "REGISTER", REALM, Some(&stored), T0 + 1)
                .unwrap();
            assert_eq!(
                d.verify(&creds, "REGISTER", REALM, Some(&stored), T0 + 2),
                Err(DigestError::Replayed)
            );
            let next = answer_to(&creds.nonce, algorithm, "alice", "pw", 2);
            d.verify(&next, "REGISTER", REALM, Some(&stored), T0 + 3)
                .unwrap();
            let back = answer_to(&creds.nonce, algorithm, "alice", "pw", 2);
            assert_eq!(
                d.verify(&back, "REGISTER", REALM, Some(&stored), T0 + 4),
                Err(DigestError::Replayed)
            );
        }
    }

    #[test]
    fn an_unknown_user_looks_exactly_like_a_wrong_password() {
        let d = Digest::new([7; 32], T0 - 1_000).unwrap();
        let alice = Ha1::derive("alice", REALM, "pw");
        let wrong = answer(&d, Algorithm::Sha256, "alice", "guess", 1);
        let unknown = answer(&d, Algorithm::Sha256, "mallory", "pw", 1);
        let e1 = d
            .verify(&wrong, "REGISTER", REALM, Some(&alice), T0)
            .unwrap_err();
        let e2 = d.verify(&unknown, "REGISTER", REALM, None, T0).unwrap_err();
        assert_eq!(e1, DigestError::Refused);
        assert_eq!(e1, e2);
        assert_eq!(e1.to_string(), e2.to_string());
        // Even the empty password of the dummy HA1 does not let an unknown
        // user in.
        let empty = answer(&d, Algorithm::Md5, "mallory", "", 1);
        assert_eq!(
            d.verify(&empty, "REGISTER", REALM, None, T0),
            Err(DigestError::Refused)
        );
        // A stale nonce does not tell them apart either: only a right
        // answer learns that its nonce expired.
        let late = T0 + NONCE_TTL_MS + 1;
        assert_eq!(
            d.verify(&wrong, "REGISTER", REALM, Some(&alice), late),
            Err(DigestError::Refused)
        );
        assert_eq!(
            d.verify(&unknown, "REGISTER", REALM, None, late),
            Err(DigestError::Refused)
        );
        let right = answer(&d, Algorithm::Sha256, "alice", "pw", 1);
        assert_eq!(
            d.verify(&right, "REGISTER", REALM, Some(&alice), late),
            Err(DigestError::Stale)
        );
    }

    #[test]
    fn nonces_are_bound_to_their_host_key_realm_and_time() {
        let d = Digest::new([7; 32], T0 - 1_000).unwrap();
        let alice = Ha1::derive("alice", REALM, "pw");
        // Another host key (or a forged nonce): refused, not stale.
        let other = Digest::new([8; 32], T0 - 1_000).unwrap();
        let foreign = answer(&other, Algorithm::Sha256, "alice", "pw", 1);
        assert_eq!(
            d.verify(&foreign, "REGISTER", REALM, Some(&alice), T0),
            Err(DigestError::Refused)
        );
        // A nonce issued for another realm: refused.
        let ch = d.challenge("globex.sip.example", T0, false).unwrap();
        let nonce = ch[0]
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .trim_end_matches('"');
        let creds = answer_to(nonce, Algorithm::Sha256, "alice", "pw", 1);
        assert_eq!(
            d.verify(&creds, "REGISTER", REALM, Some(&alice), T0),
            Err(DigestError::Refused)
        );
        // The challenge says stale=true when asked to, and offers both.
        let ch = d.challenge(REALM, T0, true).unwrap();
        assert!(ch[0].contains("algorithm=SHA-256") && ch[0].ends_with("stale=true"));
        assert!(ch[1].contains("algorithm=MD5"));
        // A method other than the one answered for fails.
        let creds = answer(&d, Algorithm::Md5, "alice", "pw", 1);
        assert_eq!(
            d.verify(&creds, "INVITE", REALM, Some(&alice), T0),
            Err(DigestError::Refused)
        );
    }

    #[test]
    fn a_restart_or_an_eviction_never_opens_a_replay() {
        let alice = Ha1::derive("alice", REALM, "pw");
        let before = Digest::new([7; 32], T0 - 1_000).unwrap();
        let creds = answer(&before, Algorithm::Sha256, "alice", "pw", 1);
        before
            .verify(&creds, "REGISTER", REALM, Some(&alice), T0)
            .unwrap();
        // The same key in a process started after the nonce was issued.
        let after = Digest::new([7; 32], T0 + 1).unwrap();
        assert_eq!(
            after.verify(&creds, "REGISTER", REALM, Some(&alice), T0 + 2),
            Err(DigestError::Stale)
        );
        // A table of two: a third nonce evicts the oldest, whose replays
        // are then stale, never accepted.
        let mut d = Digest::new([7; 32], T0 - 1_000).unwrap();
        d.max_tracked = 2;
        let nonce_at = |d: &Digest, t: u64| {
            let ch = d.challenge(REALM, t, false).unwrap();
            ch[0]
                .split("nonce=\"")
                .nth(1)
                .unwrap()
                .trim_end_matches('"')
                .to_string()
        };
        let (n1, n2, n3) = (nonce_at(&d, T0), nonce_at(&d, T0 + 1), nonce_at(&d, T0 + 2));
        for n in [&n1, &n2, &n3] {
            let c = answer_to(n, Algorithm::Sha256, "alice", "pw", 1);
            d.verify(&c, "REGISTER", REALM, Some(&alice), T0 + 10)
                .unwrap();
        }
        let replay = answer_to(&n1, Algorithm::Sha256, "alice", "pw", 1);
        assert_eq!(
            d.verify(&replay, "REGISTER", REALM, Some(&alice), T0 + 11),
            Err(DigestError::Stale)
        );
        let next = answer_to(&n1, Algorithm::Sha256, "alice", "pw", 2);
        assert_eq!(
            d.verify(&next, "REGISTER", REALM, Some(&alice), T0 + 11),
            Err(DigestError::Stale)
        );
        // The tracked ones still refuse their replays and take higher nc.
        let replay = answer_to(&n3, Algorithm::Sha256, "alice", "pw", 1);
        assert_eq!(
            d.verify(&replay, "REGISTER", REALM, Some(&alice), T0 + 12),
            Err(DigestError::Replayed)
        );
        let next = answer_to(&n3, Algorithm::Sha256, "alice", "pw", 2);
        d.verify(&next, "REGISTER", REALM, Some(&alice), T0 + 12)
            .unwrap();
    }

    #[test]
    fn the_realm_must_match_and_be_fit_for_a_header() {
        let d = Digest::new([7; 32], T0 - 1_000).unwrap();
        let alice = Ha1::derive("alice", REALM, "pw");
        // Right nonce and response, but the header names another realm.
        let mut creds = answer(&d, Algorithm::Sha256, "alice", "pw", 1);
        creds.realm = "globex.sip.example".into();
        assert_eq!(
            d.verify(&creds, "REGISTER", REALM, Some(&alice), T0),
            Err(DigestError::Refused)
        );
        for bad in ["", "a\"b", "a\r\nX-Injected: 1", "a b", &"x".repeat(300)] {
            let err = d.challenge(bad, T0, false).unwrap_err();
            assert_eq!(err.code(), "digest_bad_realm", "{bad:?}");
        }
    }

    #[test]
    fn malformed_and_unsupported_headers_are_refused_precisely() {
        let ok = "username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", \
                  cnonce=\"c\", qop=auth, nc=00000001";
        Credentials::parse(&format!("Digest {ok}")).unwrap();
        Credentials::parse(&format!("digest {ok}, extra=\"ignored\"")).unwrap();
        Credentials::parse(&format!("Digest {ok}").replace("qop=auth", "qop=AUTH")).unwrap();
        let cases = [
            (format!("Basic {ok}"), "digest_unsupported"),
            (
                format!("Digest {ok}, algorithm=MD5-sess"),
                "digest_unsupported",
            ),
            (
                format!("Digest {ok}").replace("qop=auth", "qop=auth-int"),
                "digest_unsupported",
            ),
            (
                format!("Digest {ok}").replace(", qop=auth", ""),
                "digest_unsupported",
            ),
            (format!("Digest {ok}, userhash=true"), "digest_unsupported"),
            (format!("Digest {ok}, username=\"b\""), "digest_malformed"),
            (
                format!("Digest {ok}").replace("nc=00000001", "nc=1"),
                "digest_malformed",
            ),
            (
                format!("Digest {ok}").replace("nc=00000001", "nc=0000000g"),
                "digest_malformed",
            ),
            (
                format!("Digest {ok}").replace("uri=\"u\"", "uri=\"\""),
                "digest_malformed",
            ),
            (
                format!("Digest {ok}").replace("response=\"x\", ", ""),
                "digest_malformed",
            ),
            (
                format!("Digest {ok}, realm2=\"unterminated"),
                "digest_malformed",
            ),
            (format!("Digest {ok}, novalue"), "digest_malformed"),
            ("Digest".to_string(), "digest_malformed"),
            (
                format!("Digest {ok}, junk=\"{}\"", "x".repeat(MAX_HEADER_BYTES)),
                "digest_malformed",
            ),
            (
                format!(
                    "Digest {ok}{}",
                    (0..30).map(|i| format!(", p{i}=1")).collect::<String>()
                ),
                "digest_malformed",
            ),
        ];
        for (header, code) in cases {
            let err = Credentials::parse(&header).unwrap_err();
            assert_eq!(err.code(), code, "{header}: {err}");
        }
        // Escapes inside quoted strings are honoured.
        let escaped = ok.replace("username=\"a\"", "username=\"a\\\"b\"");
        assert_eq!(
            Credentials::parse(&format!("Digest {escaped}"))
                .unwrap()
                .username,
            "a\"b"
        );
        assert!(Ha1::from_stored("nothex:00").is_err());
    }
}
