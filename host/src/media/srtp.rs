//! SRTP and SRTCP (RFC 3711) for the SDES suites of RFC 4568:
//! `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32` (SPEC T2).
//!
//! One [`Srtp`] is one direction of one leg under one master key: the
//! host's own key for what it sends, the peer's for what it receives (keys
//! never cross legs: the B2BUA re-originates every SDP with fresh keys).
//! Per SSRC it keeps the rollover counter and a 128-packet replay window;
//! state for a new SSRC is created only after its first packet
//! authenticates, and at most [`MAX_STREAMS`] SSRCs share a key, so forged
//! packets cost a tag check and nothing else.
//!
//! Rules enforced here, in order, on every packet received: length and
//! version, index estimate (RFC 3711 §3.3.1, Appendix A), replay window,
//! the tag compared in constant time over the packet and its rollover
//! counter, then decryption. Nothing about the stream changes unless the
//! tag is right. The key derivation rate is 0 (RFC 4568's default), so
//! session keys are derived once. A key is refused after its SDES lifetime
//! (RTP and RTCP packets together), and anyway after 2^48 RTP or 2^31 RTCP
//! packets.
//!
//! Sending follows the same index rules: a packet index is never
//! encrypted twice (that would reuse keystream), so a repeated or
//! too-late sequence number is refused rather than sent. The media engine
//! renumbers what it sends, so this only trips on a bug.
//!
//! Key material: master keys, the derived encryption key and salt live in
//! `Zeroizing` buffers or AES key schedules wiped on drop (aes's `zeroize`
//! feature). The keyed HMAC-SHA1 state (from which the authentication key
//! cannot be read back but which is as good as it) comes from `hmac` 0.12,
//! which does not wipe; it lives as long as the leg.

use std::collections::HashMap;

use aes::Aes128;
use aes::cipher::{BlockEncrypt as _, KeyInit as _, StreamCipher as _};
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha1::Sha1;
use subtle::ConstantTimeEq as _;
use zeroize::{Zeroize as _, Zeroizing};

/// Most SSRCs one key serves (a call has one per direction; a few more
/// cover a peer that restarts its stream).
pub const MAX_STREAMS: usize = 8;
/// Packets behind the newest one still accepted once (RFC 3711 asks ≥ 64).
pub const REPLAY_WINDOW: u64 = 128;
/// Master key length (AES-128).
pub const KEY_LEN: usize = 16;
/// Master salt length.
pub const SALT_LEN: usize = 14;

const RTP_HEADER: usize = 12;
const RTCP_HEADER: usize = 8;
/// The SRTCP trailer: the E flag and the 31-bit index.
const RTCP_INDEX_LEN: usize = 4;
/// SRTCP's tag is 80 bits in both suites (RFC 4568 §6.2).
const RTCP_TAG_LEN: usize = 10;
const MAX_RTCP_INDEX: u32 = (1 << 31) - 1;

type HmacSha1 = Hmac<Sha1>;
type CtrCore = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;

/// Why a packet or a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SrtpError {
    /// Shorter than its header and tag.
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    /// Not RTP/RTCP version 2, or a header that runs past the packet.
    #[error("not a well-formed RTP or RTCP version 2 packet")]
    Malformed,
    /// The authentication tag does not match.
    #[error("the authentication tag does not match")]
    AuthFailed,
    /// This packet index was received before.
    #[error("packet index {0} was already received")]
    Replayed(u64),
    /// This packet index is behind the replay window.
    #[error("packet index {0} is older than the replay window")]
    TooOld(u64),
    /// More SSRCs than one key serves.
    #[error("more than {MAX_STREAMS} SSRCs on one key")]
    TooManyStreams,
    /// The key has protected as many packets as it may.
    #[error("the key's packet limit is reached; the call needs a new key")]
    KeyExhausted,
    /// A key-parameters field that cannot be used.
    #[error("SRTP key parameters: {0}")]
    BadKey(String),
}

impl SrtpError {
    /// A stable code for logs, metrics and API answers.
    pub fn code(&self) -> &'static str {
        match self {
            SrtpError::TooShort(_) | SrtpError::Malformed => "srtp_malformed",
            SrtpError::AuthFailed => "srtp_auth_failed",
            SrtpError::Replayed(_) | SrtpError::TooOld(_) => "srtp_replayed",
            SrtpError::TooManyStreams => "srtp_too_many_streams",
            SrtpError::KeyExhausted => "srtp_key_exhausted",
            SrtpError::BadKey(_) => "srtp_bad_key",
        }
    }
}

/// An SDES crypto suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 tag of 80 bits.
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 tag of 32 bits on RTP (80 on RTCP).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Every suite, most preferred first.
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// The suite's name in SDP (`a=crypto`).
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite SDP names, if supported.
    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Bytes of the RTP authentication tag.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// A master key and salt (RFC 3711 §8.2), wiped from memory when dropped.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN + SALT_LEN]>,
    /// Packets the key may protect (SDES lifetime), if limited.
    lifetime: Option<u64>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// Whether `other` is the same key and salt (compared in constant
    /// time).
    pub fn same_as(&self, other: &MasterKey) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.bytes.as_slice().ct_eq(other.bytes.as_slice()))
    }

    /// A fresh random key and salt.
    pub fn generate() -> Result<MasterKey, SrtpError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN + SALT_LEN]);
        getrandom::fill(bytes.as_mut_slice())
            .map_err(|e| SrtpError::BadKey(format!("no randomness for a key: {e}")))?;
        Ok(MasterKey {
            bytes,
            lifetime: None,
        })
    }

    /// Key then salt, 30 bytes.
    pub fn from_bytes(raw: &[u8]) -> Result<MasterKey, SrtpError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN + SALT_LEN]);
        if raw.len() != bytes.len() {
            return Err(SrtpError::BadKey(format!(
                "a key and salt are {} bytes, not {}",
                bytes.len(),
                raw.len()
            )));
        }
        bytes.copy_from_slice(raw);
        Ok(MasterKey {
            bytes,
            lifetime: None,
        })
    }

    /// Parses SDES key parameters (RFC 4568 §6.1):
    /// `inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>]`.
    /// A lifetime is kept and enforced (packets past it are refused with
    /// `KeyExhausted`); an MKI is refused, since one key per direction
    /// never needs one.
    pub fn from_key_params(params: &str) -> Result<MasterKey, SrtpError> {
        let rest = params
            .strip_prefix("inline:")
            .ok_or_else(|| SrtpError::BadKey("only inline: keys are supported".into()))?;
        let mut fields = rest.split('|');
        let b64 = fields.next().unwrap_or_default();
        if b64.len() > 64 {
            return Err(SrtpError::BadKey("the inline key is too long".into()));
        }
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| SrtpError::BadKey("the inline key is not base64".into()))?,
        );
        let mut key = MasterKey::from_bytes(&raw)?;
        for (n, field) in fields.enumerate() {
            if field.contains(':') {
                return Err(SrtpError::BadKey("an MKI is not supported".into()));
            }
            let lifetime = match field.strip_prefix("2^") {
                Some(exp) => exp
                    .parse::<u8>()
                    .ok()
                    .filter(|e| *e <= 48)
                    .map(|e| 1u64 << e),
                None => field.parse::<u64>().ok(),
            };
            match lifetime {
                Some(l) if n == 0 && l > 0 => key.lifetime = Some(l),
                _ => return Err(SrtpError::BadKey(format!("bad key lifetime {field:?}"))),
            }
        }
        Ok(key)
    }

    /// The key parameters to put in SDP: `inline:<base64>`.
    pub fn to_key_params(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "inline:{}",
            base64::engine::general_purpose::STANDARD.encode(self.bytes.as_slice())
        ))
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..KEY_LEN]
    }

    fn salt(&self) -> &[u8] {
        &self.bytes[KEY_LEN..]
    }
}

/// Session keys for one of RTP or RTCP (RFC 3711 §4.3).
#[derive(Clone)]
struct SessionKeys {
    cipher: Aes128,
    salt: Zeroizing<[u8; SALT_LEN]>,
    auth: HmacSha1,
}

impl SessionKeys {
    /// Derives with labels `base` (encryption), `base + 1` (authentication)
    /// and `base + 2` (salt): 0 for RTP, 3 for RTCP.
    fn derive(master: &MasterKey, base: u8) -> SessionKeys {
        let prf = Aes128::new(master.key().into());
        let mut enc = Zeroizing::new([0u8; KEY_LEN]);
        let mut auth = Zeroizing::new([0u8; 20]);
        let mut salt = Zeroizing::new([0u8; SALT_LEN]);
        keystream(&prf, master.salt(), base, enc.as_mut_slice());
        keystream(&prf, master.salt(), base + 1, auth.as_mut_slice());
        keystream(&prf, master.salt(), base + 2, salt.as_mut_slice());
        SessionKeys {
            cipher: <Aes128 as aes::cipher::KeyInit>::new(enc.as_slice().into()),
            salt,
            // HMAC accepts keys of any length.
            auth: <HmacSha1 as hmac::Mac>::new_from_slice(auth.as_slice())
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length")),
        }
    }

    /// AES-CM over `data` with IV = salt·2^16 ⊕ ssrc·2^64 ⊕ index·2^16.
    fn crypt(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..SALT_LEN].copy_from_slice(self.salt.as_slice());
        for (i, b) in ssrc.to_be_bytes().into_iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        let core =
            <CtrCore as aes::cipher::InnerIvInit>::inner_iv_init(self.cipher.clone(), (&iv).into());
        aes::cipher::StreamCipherCoreWrapper::from_core(core).apply_keystream(data);
        iv.zeroize();
    }

    /// HMAC-SHA1 over `parts`, the first `len` bytes.
    fn tag(&self, parts: &[&[u8]], len: usize) -> [u8; 10] {
        let mut mac = self.auth.clone();
        for p in parts {
            mac.update(p);
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 10];
        out[..len].copy_from_slice(&full[..len]);
        out
    }
}

/// The key derivation PRF (RFC 3711 §4.3.3, kdr 0): AES-CM keystream with
/// IV = (salt ⊕ label·2^48)·2^16.
fn keystream(prf: &Aes128, salt: &[u8], label: u8, out: &mut [u8]) {
    let mut block = [0u8; 16];
    for (n, chunk) in out.chunks_mut(16).enumerate() {
        block.fill(0);
        block[..SALT_LEN].copy_from_slice(salt);
        block[7] ^= label;
        // n < 2^16 for every key this derives (at most 20 bytes).
        block[14..].copy_from_slice(&(n as u16).to_be_bytes());
        prf.encrypt_block((&mut block).into());
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    block.zeroize();
}

/// The replay window of one stream: the newest index and a bitmap of the
/// [`REPLAY_WINDOW`] before it.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    top: u64,
    seen: u128,
}

impl Window {
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index > self.top {
            return Ok(());
        }
        let behind = self.top - index;
        if behind >= REPLAY_WINDOW {
            return Err(SrtpError::TooOld(index));
        }
        if self.seen & (1u128 << behind) != 0 {
            return Err(SrtpError::Replayed(index));
        }
        Ok(())
    }

    fn mark(&mut self, index: u64) {
        if index > self.top {
            let ahead = index - self.top;
            self.seen = if ahead >= REPLAY_WINDOW {
                0
            } else {
                self.seen << ahead
            };
            self.top = index;
            self.seen |= 1;
        } else {
            self.seen |= 1u128 << (self.top - index);
        }
    }
}

/// The index state of one RTP stream, sent or received: rollover counter,
/// highest sequence number (s_l) and the replay window.
#[derive(Debug, Clone, Copy)]
struct RtpState {
    roc: u32,
    s_l: u16,
    window: Window,
}

impl RtpState {
    /// The state before a stream's first packet (RFC 3711 §3.3.1: ROC 0,
    /// s_l = its sequence number; nothing seen yet).
    fn first(seq: u16) -> RtpState {
        RtpState {
            roc: 0,
            s_l: seq,
            window: Window {
                top: u64::from(seq),
                seen: 0,
            },
        }
    }

    /// RFC 3711 Appendix A: the index a sequence number most likely has.
    fn estimate(&self, seq: u16) -> Option<u64> {
        let (roc, s_l, seq32) = (self.roc, u32::from(self.s_l), u32::from(seq));
        let v = if s_l < 32768 {
            if seq32 > s_l && seq32 - s_l > 32768 {
                roc.checked_sub(1)?
            } else {
                roc
            }
        } else if s_l - 32768 > seq32 {
            roc.checked_add(1)?
        } else {
            roc
        };
        Some((u64::from(v) << 16) | u64::from(seq))
    }

    /// The index of `seq`, if it is neither used nor behind the window.
    fn index(&self, seq: u16) -> Result<u64, SrtpError> {
        let index = self
            .estimate(seq)
            .ok_or(SrtpError::TooOld(u64::from(seq)))?;
        self.window.check(index)?;
        Ok(index)
    }

    /// The state once `index` was sent or received.
    fn after(mut self, index: u64) -> RtpState {
        let (roc, seq) = ((index >> 16) as u32, index as u16);
        if roc > self.roc {
            (self.roc, self.s_l) = (roc, seq);
        } else if roc == self.roc && seq > self.s_l {
            self.s_l = seq;
        }
        self.window.mark(index);
        self
    }
}

/// SRTP and SRTCP for one direction of one leg under one master key.
pub struct Srtp {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    rtp_in: HashMap<u32, RtpState>,
    rtp_out: HashMap<u32, RtpState>,
    rtcp_in: HashMap<u32, Window>,
    rtcp_out: HashMap<u32, u32>,
    /// Packets processed under this key, against its lifetime.
    packets: u64,
    lifetime: Option<u64>,
}

impl Srtp {
    /// A context for `suite` under `master`.
    pub fn new(suite: Suite, master: &MasterKey) -> Srtp {
        Srtp {
            suite,
            rtp: SessionKeys::derive(master, 0),
            rtcp: SessionKeys::derive(master, 3),
            rtp_in: HashMap::new(),
            rtp_out: HashMap::new(),
            rtcp_in: HashMap::new(),
            rtcp_out: HashMap::new(),
            packets: 0,
            lifetime: master.lifetime,
        }
    }

    /// The suite this context uses.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Counts one more packet under the key, if its lifetime allows.
    fn spend(&mut self) -> Result<(), SrtpError> {
        if self.lifetime.is_some_and(|l| self.packets >= l) {
            return Err(SrtpError::KeyExhausted);
        }
        self.packets += 1;
        Ok(())
    }

    fn rtp_state(
        streams: &HashMap<u32, RtpState>,
        ssrc: u32,
        seq: u16,
    ) -> Result<RtpState, SrtpError> {
        match streams.get(&ssrc) {
            Some(s) => Ok(*s),
            None if streams.len() >= MAX_STREAMS => Err(SrtpError::TooManyStreams),
            None => Ok(RtpState::first(seq)),
        }
    }

    /// Encrypts an RTP packet's payload and appends its tag. A sequence
    /// number already sent (or too far behind) is refused: its keystream
    /// was used.
    pub fn protect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let header = rtp_header_len(packet)?;
        let (ssrc, seq) = rtp_ssrc_seq(packet);
        let state = Self::rtp_state(&self.rtp_out, ssrc, seq)?;
        let index = state.index(seq)?;
        self.spend()?;
        self.rtp.crypt(ssrc, index, &mut packet[header..]);
        let roc = (index >> 16) as u32;
        let n = self.suite.rtp_tag_len();
        let tag = self.rtp.tag(&[packet, &roc.to_be_bytes()], n);
        packet.extend_from_slice(&tag[..n]);
        self.rtp_out.insert(ssrc, state.after(index));
        Ok(())
    }

    /// Checks an SRTP packet and decrypts it in place, removing its tag.
    /// On any error the packet and the stream state are unchanged.
    pub fn unprotect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let n = self.suite.rtp_tag_len();
        if packet.len() < RTP_HEADER + n {
            return Err(SrtpError::TooShort(packet.len()));
        }
        let body = packet.len() - n;
        let header = rtp_header_len(&packet[..body])?;
        let (ssrc, seq) = rtp_ssrc_seq(packet);
        let state = Self::rtp_state(&self.rtp_in, ssrc, seq)?;
        let index = state.index(seq)?;
        let roc = (index >> 16) as u32;
        let want = self.rtp.tag(&[&packet[..body], &roc.to_be_bytes()], n);
        if !bool::from(want[..n].ct_eq(&packet[body..])) {
            return Err(SrtpError::AuthFailed);
        }
        self.spend()?;
        packet.truncate(body);
        self.rtp.crypt(ssrc, index, &mut packet[header..]);
        self.rtp_in.insert(ssrc, state.after(index));
        Ok(())
    }

    /// Encrypts an RTCP compound packet after its first 8 bytes and
    /// appends the E flag, the SRTCP index and the tag.
    pub fn protect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        rtcp_check(packet)?;
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        // The index starts at 1, as libSRTP's does (any start is valid).
        let index = match self.rtcp_out.get(&ssrc) {
            Some(i) if *i >= MAX_RTCP_INDEX => return Err(SrtpError::KeyExhausted),
            Some(i) => i + 1,
            None if self.rtcp_out.len() >= MAX_STREAMS => return Err(SrtpError::TooManyStreams),
            None => 1,
        };
        self.spend()?;
        self.rtcp_out.insert(ssrc, index);
        self.rtcp
            .crypt(ssrc, u64::from(index), &mut packet[RTCP_HEADER..]);
        packet.extend_from_slice(&(index | 0x8000_0000).to_be_bytes());
        let tag = self.rtcp.tag(&[packet], RTCP_TAG_LEN);
        packet.extend_from_slice(&tag);
        Ok(())
    }

    /// Checks an SRTCP packet and decrypts it in place, removing its
    /// trailer. On any error the packet and the stream state are unchanged.
    pub fn unprotect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        if packet.len() < RTCP_HEADER + RTCP_INDEX_LEN + RTCP_TAG_LEN {
            return Err(SrtpError::TooShort(packet.len()));
        }
        let signed = packet.len() - RTCP_TAG_LEN;
        let body = signed - RTCP_INDEX_LEN;
        rtcp_check(&packet[..body])?;
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let trailer = u32::from_be_bytes([
            packet[body],
            packet[body + 1],
            packet[body + 2],
            packet[body + 3],
        ]);
        let (encrypted, index) = (trailer & 0x8000_0000 != 0, trailer & MAX_RTCP_INDEX);
        let window = match self.rtcp_in.get(&ssrc) {
            Some(w) => {
                w.check(u64::from(index))?;
                *w
            }
            None if self.rtcp_in.len() >= MAX_STREAMS => return Err(SrtpError::TooManyStreams),
            None => Window::default(),
        };
        let want = self.rtcp.tag(&[&packet[..signed]], RTCP_TAG_LEN);
        if !bool::from(want.ct_eq(&packet[signed..])) {
            return Err(SrtpError::AuthFailed);
        }
        // Unencrypted SRTCP (E = 0) is never negotiated here.
        if !encrypted {
            return Err(SrtpError::Malformed);
        }
        self.spend()?;
        packet.truncate(body);
        self.rtcp
            .crypt(ssrc, u64::from(index), &mut packet[RTCP_HEADER..]);
        let mut next = window;
        next.mark(u64::from(index));
        self.rtcp_in.insert(ssrc, next);
        Ok(())
    }
}

/// The length of an RTP header with its CSRCs and extension; the payload
/// starts there.
fn rtp_header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    if packet.len() < RTP_HEADER {
        return Err(SrtpError::TooShort(packet.len()));
    }
    if packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    let mut len = RTP_HEADER + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len + 2..len + 4).ok_or(SrtpError::Malformed)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if len > packet.len() {
        return Err(SrtpError::Malformed);
    }
    Ok(len)
}

/// (SSRC, sequence number) of a packet whose header length was checked.
fn rtp_ssrc_seq(packet: &[u8]) -> (u32, u16) {
    (
        u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        u16::from_be_bytes([packet[2], packet[3]]),
    )
}

fn rtcp_check(packet: &[u8]) -> Result<(), SrtpError> {
    if packet.len() < RTCP_HEADER {
        return Err(SrtpError::TooShort(packet.len()));
    }
    if packet[0] >> 6 != 2 {
        return Err(SrtpError::Malformed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    /// libSRTP's reference key (also RFC 3711 B.3's).
    fn reference_key() -> MasterKey {
        MasterKey::from_bytes(&hex(
            "e1f97a0d3e018be0d64fa32c06de4139 0ec675ad498afeebb6960b3aabe6",
        ))
        .unwrap()
    }

    const RTP_PLAIN: &str = "800f1234decafbadcafebabe abababababababababababababababab";
    const SRTP_80: &str = "800f1234decafbadcafebabe 4e55dc4ce79978d88ca4d215949d2402 \
                           b78d6acc99ea179b8dbb";
    const RTCP_PLAIN: &str = "81c8000bcafebabe abababababababababababababababab";
    const SRTCP: &str = "81c8000bcafebabe 7128035be487b9bdbef89041f977a5a8 80000001 \
                         993e08cd54d6c1230798";

    #[test]
    fn session_keys_derive_as_rfc_3711_b3() {
        let master = reference_key();
        let prf = Aes128::new(master.key().into());
        let mut enc = [0u8; 16];
        keystream(&prf, master.salt(), 0, &mut enc);
        assert_eq!(enc.to_vec(), hex("c61e7a93744f39ee10734afe3ff7a087"));
        let mut salt = [0u8; 14];
        keystream(&prf, master.salt(), 2, &mut salt);
        assert_eq!(salt.to_vec(), hex("30cbbc08863d8c85d49db34a9ae1"));
        let mut auth = [0u8; 20];
        keystream(&prf, master.salt(), 1, &mut auth);
        assert_eq!(
            auth.to_vec(),
            hex("cebe321f6ff7716b6fd4ab49af256a156d38baa4")
        );
    }

    #[test]
    fn protect_matches_the_reference_packets_in_both_suites() {
        let key = reference_key();
        let mut p = hex(RTP_PLAIN);
        Srtp::new(Suite::AesCm128HmacSha1_80, &key)
            .protect_rtp(&mut p)
            .unwrap();
        assert_eq!(p, hex(SRTP_80));
        let mut p = hex(RTP_PLAIN);
        Srtp::new(Suite::AesCm128HmacSha1_32, &key)
            .protect_rtp(&mut p)
            .unwrap();
        // The 32-bit tag is the 80-bit one cut short.
        assert_eq!(p, hex(SRTP_80)[..32].to_vec());
        for suite in Suite::ALL {
            let mut p = hex(RTCP_PLAIN);
            Srtp::new(suite, &key).protect_rtcp(&mut p).unwrap();
            assert_eq!(p, hex(SRTCP), "{suite:?}: SRTCP's tag is 80 bits in both");
        }
    }

    #[test]
    fn unprotect_opens_the_reference_packets_once() {
        let mut rx = Srtp::new(Suite::AesCm128HmacSha1_80, &reference_key());
        let mut p = hex(SRTP_80);
        rx.unprotect_rtp(&mut p).unwrap();
        assert_eq!(p, hex(RTP_PLAIN));
        let mut again = hex(SRTP_80);
        assert_eq!(
            rx.unprotect_rtp(&mut again),
            Err(SrtpError::Replayed(0x1234))
        );
        assert_eq!(again, hex(SRTP_80), "a refused packet is left as it was");
        let mut p = hex(SRTCP);
        rx.unprotect_rtcp(&mut p).unwrap();
        assert_eq!(p, hex(RTCP_PLAIN));
        let mut again = hex(SRTCP);
        assert_eq!(rx.unprotect_rtcp(&mut again), Err(SrtpError::Replayed(1)));
    }

    #[test]
    fn any_flipped_bit_or_cut_is_refused_and_changes_nothing() {
        let wire = hex(SRTP_80);
        for bit in 0..wire.len() * 8 {
            let mut rx = Srtp::new(Suite::AesCm128HmacSha1_80, &reference_key());
            let mut p = wire.clone();
            p[bit / 8] ^= 1 << (bit % 8);
            let err = rx.unprotect_rtp(&mut p).unwrap_err();
            assert!(
                matches!(err, SrtpError::AuthFailed | SrtpError::Malformed),
                "bit {bit}: {err:?}"
            );
            assert!(
                rx.rtp_in.is_empty(),
                "bit {bit}: a forged packet made state"
            );
        }
        for len in 0..wire.len() {
            let mut rx = Srtp::new(Suite::AesCm128HmacSha1_80, &reference_key());
            let mut p = wire[..len].to_vec();
            assert!(rx.unprotect_rtp(&mut p).is_err(), "cut to {len}");
            let mut p = hex(SRTCP)[..len.min(37)].to_vec();
            assert!(rx.unprotect_rtcp(&mut p).is_err(), "SRTCP cut to {len}");
        }
        // The right packet under another key fails the same way.
        let other = MasterKey::generate().unwrap();
        let mut p = wire.clone();
        let err = Srtp::new(Suite::AesCm128HmacSha1_80, &other).unprotect_rtp(&mut p);
        assert_eq!(err, Err(SrtpError::AuthFailed));
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// A sender crossing 65535 → 0 and a receiver that sees the packets
    /// reordered around the wrap agree on the rollover counter.
    #[test]
    fn the_rollover_counter_follows_a_wrap_with_reordering() {
        let key = MasterKey::generate().unwrap();
        for suite in Suite::ALL {
            let (mut tx, mut rx) = (Srtp::new(suite, &key), Srtp::new(suite, &key));
            let seqs: Vec<u16> = (65_500u16..=65_535).chain(0..40).collect();
            let mut wire: Vec<(u16, Vec<u8>)> = seqs
                .iter()
                .map(|&s| {
                    let mut p = rtp(s, 7, &s.to_be_bytes());
                    tx.protect_rtp(&mut p).unwrap();
                    (s, p)
                })
                .collect();
            // Post-wrap packets first, then late pre-wrap ones, interleaved:
            // 65500.., then 0, 65533, 1, 65534, 2, 65535, 3.. (the receiver
            // must take ROC - 1 for the late ones).
            let wrap = wire.iter().position(|(s, _)| *s == 0).unwrap();
            for k in 0..3 {
                wire.swap(wrap - 3 + k, wrap + k);
            }
            let order: Vec<u16> = wire.iter().map(|(s, _)| *s).collect();
            assert_eq!(order[wrap - 3..wrap + 3], [0, 1, 2, 65533, 65534, 65535]);
            for (s, mut p) in wire {
                rx.unprotect_rtp(&mut p)
                    .unwrap_or_else(|e| panic!("seq {s}: {e}"));
                assert_eq!(p, rtp(s, 7, &s.to_be_bytes()));
            }
            assert_eq!(rx.rtp_in[&7].roc, 1);
        }
    }

    #[test]
    fn the_replay_window_takes_late_packets_once_and_refuses_older_ones() {
        let key = MasterKey::generate().unwrap();
        let (mut tx, mut rx) = (
            Srtp::new(Suite::AesCm128HmacSha1_80, &key),
            Srtp::new(Suite::AesCm128HmacSha1_80, &key),
        );
        let wire: Vec<Vec<u8>> = (0..300u16)
            .map(|s| {
                let mut p = rtp(s, 1, b"x");
                tx.protect_rtp(&mut p).unwrap();
                p
            })
            .collect();
        rx.unprotect_rtp(&mut wire[0].clone()).unwrap();
        rx.unprotect_rtp(&mut wire[200].clone()).unwrap();
        // 200 - 73 = 127 behind: inside the window, once.
        rx.unprotect_rtp(&mut wire[73].clone()).unwrap();
        assert_eq!(
            rx.unprotect_rtp(&mut wire[73].clone()),
            Err(SrtpError::Replayed(73))
        );
        // 128 behind: outside.
        assert_eq!(
            rx.unprotect_rtp(&mut wire[72].clone()),
            Err(SrtpError::TooOld(72))
        );
        assert_eq!(
            rx.unprotect_rtp(&mut wire[0].clone()),
            Err(SrtpError::TooOld(0))
        );
        rx.unprotect_rtp(&mut wire[299].clone()).unwrap();
        rx.unprotect_rtp(&mut wire[250].clone()).unwrap();
    }

    #[test]
    fn headers_with_csrcs_and_extensions_stay_in_clear() {
        let key = MasterKey::generate().unwrap();
        let (mut tx, mut rx) = (
            Srtp::new(Suite::AesCm128HmacSha1_32, &key),
            Srtp::new(Suite::AesCm128HmacSha1_32, &key),
        );
        // X bit and one CSRC; a one-word extension.
        let mut plain = vec![
            0x91, 0x00, 0, 9, 0, 0, 0, 1, 0, 0, 0, 5, 0xaa, 0xbb, 0xcc, 0xdd,
        ];
        plain.extend_from_slice(&[0xbe, 0xde, 0x00, 0x01, 1, 2, 3, 4]);
        plain.extend_from_slice(b"payload");
        let mut p = plain.clone();
        tx.protect_rtp(&mut p).unwrap();
        assert_eq!(p[..24], plain[..24], "header, CSRC and extension in clear");
        assert_ne!(p[24..31], plain[24..], "payload encrypted");
        rx.unprotect_rtp(&mut p).unwrap();
        assert_eq!(p, plain);
        // An extension length running past the packet is malformed.
        let mut bad = plain[..20].to_vec();
        bad[19] = 0x40;
        assert_eq!(tx.protect_rtp(&mut bad), Err(SrtpError::Malformed));
        let mut v1 = plain.clone();
        v1[0] = 0x40 | (v1[0] & 0x3f);
        assert_eq!(tx.protect_rtp(&mut v1), Err(SrtpError::Malformed));
    }

    #[test]
    fn forged_ssrcs_cannot_fill_the_stream_table() {
        let key = MasterKey::generate().unwrap();
        let mut tx = Srtp::new(Suite::AesCm128HmacSha1_80, &key);
        let mut rx = Srtp::new(Suite::AesCm128HmacSha1_80, &key);
        for ssrc in 0..10_000u32 {
            let mut p = rtp(1, ssrc, b"forged");
            p.extend_from_slice(&[0; 10]);
            assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::AuthFailed));
        }
        assert!(rx.rtp_in.is_empty());
        for ssrc in 0..MAX_STREAMS as u32 {
            let mut p = rtp(1, ssrc, b"real");
            tx.protect_rtp(&mut p).unwrap();
            rx.unprotect_rtp(&mut p).unwrap();
        }
        let mut p = rtp(1, 99, b"one too many");
        assert_eq!(tx.protect_rtp(&mut p), Err(SrtpError::TooManyStreams));
        // The receiver's table is capped too, even for authentic packets
        // (a sender with a fresh table of its own).
        let mut other = Srtp::new(Suite::AesCm128HmacSha1_80, &key);
        let mut p = rtp(1, 99, b"one too many");
        other.protect_rtp(&mut p).unwrap();
        assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::TooManyStreams));
        assert_eq!(rx.rtp_in.len(), MAX_STREAMS);
    }

    /// A sender never encrypts two packets under one index, even across a
    /// wrap with a late packet (65535, 0, 65534, 1): each gets its own
    /// index and the receiver opens all four.
    #[test]
    fn a_sender_never_reuses_an_index() {
        let key = MasterKey::generate().unwrap();
        let (mut tx, mut rx) = (
            Srtp::new(Suite::AesCm128HmacSha1_80, &key),
            Srtp::new(Suite::AesCm128HmacSha1_80, &key),
        );
        for seq in [65535u16, 0, 65534, 1] {
            let mut p = rtp(seq, 3, b"audio");
            tx.protect_rtp(&mut p).unwrap();
            rx.unprotect_rtp(&mut p)
                .unwrap_or_else(|e| panic!("{seq}: {e}"));
        }
        assert_eq!((tx.rtp_out[&3].roc, rx.rtp_in[&3].roc), (1, 1));
        let mut again = rtp(0, 3, b"again");
        assert_eq!(tx.protect_rtp(&mut again), Err(SrtpError::Replayed(65536)));
        assert_eq!(
            again,
            rtp(0, 3, b"again"),
            "a refused packet is not touched"
        );
    }

    #[test]
    fn a_key_is_refused_past_its_lifetime() {
        let raw = reference_key().to_key_params();
        let key = MasterKey::from_key_params(&format!("{}|2^2", raw.as_str())).unwrap();
        let (mut tx, mut rx) = (
            Srtp::new(Suite::AesCm128HmacSha1_32, &key),
            Srtp::new(Suite::AesCm128HmacSha1_32, &key),
        );
        for seq in 0..4u16 {
            let mut p = rtp(seq, 1, b"x");
            tx.protect_rtp(&mut p).unwrap();
            rx.unprotect_rtp(&mut p).unwrap();
        }
        let mut p = rtp(4, 1, b"x");
        assert_eq!(tx.protect_rtp(&mut p), Err(SrtpError::KeyExhausted));
        let mut rtcp = hex(RTCP_PLAIN);
        assert_eq!(tx.protect_rtcp(&mut rtcp), Err(SrtpError::KeyExhausted));
    }

    #[test]
    fn unencrypted_srtcp_is_refused_though_authentic() {
        let key = reference_key();
        let mut rx = Srtp::new(Suite::AesCm128HmacSha1_80, &key);
        // E = 0, plaintext body, tag over it under the RTCP session key.
        let mut p = hex(RTCP_PLAIN);
        p.extend_from_slice(&1u32.to_be_bytes());
        let tag = rx.rtcp.tag(&[&p], RTCP_TAG_LEN);
        p.extend_from_slice(&tag);
        let before = p.clone();
        assert_eq!(rx.unprotect_rtcp(&mut p), Err(SrtpError::Malformed));
        assert_eq!(p, before);
        assert!(rx.rtcp_in.is_empty());
    }

    #[test]
    fn sdes_key_params_parse_and_refuse_precisely() {
        let key = reference_key();
        let params = key.to_key_params().to_string();
        assert_eq!(params, "inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm");
        let back = MasterKey::from_key_params(&params).unwrap();
        assert_eq!(back.bytes.as_slice(), key.bytes.as_slice());
        let k = MasterKey::from_key_params(&format!("{params}|2^20")).unwrap();
        assert_eq!(k.lifetime, Some(1 << 20));
        let k = MasterKey::from_key_params(&format!("{params}|1048576")).unwrap();
        assert_eq!(k.lifetime, Some(1 << 20));
        for (bad, why) in [
            ("4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm", "inline"),
            ("inline:not base64!", "base64"),
            ("inline:AAAA", "30 bytes"),
            (&format!("{params}|1:4"), "MKI"),
            (&format!("{params}|2^99"), "lifetime"),
            (&format!("{params}|0"), "lifetime"),
            (&format!("{params}|2^20|2^20"), "lifetime"),
            (&format!("inline:{}", "A".repeat(200)), "too long"),
        ] {
            let err = MasterKey::from_key_params(bad).unwrap_err();
            assert_eq!(err.code(), "srtp_bad_key");
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        assert_eq!(
            Suite::from_name("AES_CM_128_HMAC_SHA1_32"),
            Some(Suite::AesCm128HmacSha1_32)
        );
        assert_eq!(Suite::from_name("F8_128_HMAC_SHA1_80"), None);
    }

    /// 50,000 mutated packets of every kind, each offered to a receiver
    /// that already took the original: none is accepted (a mutation that
    /// leaves the packet as it was is a replay), none panics, and a refused
    /// packet and the receiver's state are left exactly as they were.
    #[test]
    fn mutated_packets_never_panic_and_never_pass() {
        let key = reference_key();
        for (base, rtcp) in [(hex(SRTP_80), false), (hex(SRTCP), true)] {
            let mut rx = Srtp::new(Suite::AesCm128HmacSha1_80, &key);
            let mut original = base.clone();
            if rtcp {
                rx.unprotect_rtcp(&mut original).unwrap();
            } else {
                rx.unprotect_rtp(&mut original).unwrap();
            }
            let state = format!("{:?} {:?} {}", rx.rtp_in, rx.rtcp_in, rx.packets);
            let seed = 7 + u64::from(rtcp);
            for (i, mut p) in crate::media::hostile::mutations(&base, seed, 25_000).enumerate() {
                let before = p.clone();
                let result = if rtcp {
                    rx.unprotect_rtcp(&mut p)
                } else {
                    rx.unprotect_rtp(&mut p)
                };
                assert!(result.is_err(), "mutation {i} was accepted");
                assert_eq!(p, before, "mutation {i}: a refused packet was changed");
            }
            let after = format!("{:?} {:?} {}", rx.rtp_in, rx.rtcp_in, rx.packets);
            assert_eq!(state, after, "refused packets changed the state");
        }
    }
}
