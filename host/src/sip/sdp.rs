//! SDP (RFC 8866) offers and answers (RFC 3264) for one audio stream with
//! G.711 and RFC 4733 telephone events, secured with SDES (RFC 4568).
//!
//! The parser keeps what a call needs and refuses what it cannot trust:
//! at most [`MAX_SDP_BYTES`], [`MAX_MEDIA`] media lines, [`MAX_FORMATS`]
//! formats and [`MAX_CRYPTO`] crypto lines; every number is range-checked.
//! [`answer`] applies the leg's [`Policy`]: SRTP required unless the admin
//! allows plain RTP; keys accepted and offered only when the signalling
//! runs over TLS; the first audio stream with an acceptable codec and
//! suite is taken, every other media line is declined with port 0 in the
//! same order. Each refusal is an [`SdpError`] whose code maps to SIP 488.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::media::srtp::{MasterKey, Suite};

/// Largest SDP body parsed.
pub const MAX_SDP_BYTES: usize = 16 * 1024;
/// Most media lines in one body.
pub const MAX_MEDIA: usize = 16;
/// Most formats on one media line.
pub const MAX_FORMATS: usize = 64;
/// Most `a=crypto` lines on one media line.
pub const MAX_CRYPTO: usize = 16;

/// Why an SDP body was refused (SIP 488 Not Acceptable Here, or 400 for
/// `sdp_malformed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// Not parseable SDP, or over a limit.
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// No audio stream this host can take (codec, transport, address).
    #[error("no acceptable audio stream: {0}")]
    NotAcceptable(String),
    /// SRTP is required for this leg and the offer has none this host
    /// supports.
    #[error("SRTP is required: {0}")]
    SrtpRequired(String),
    /// Keys offered over signalling that is not encrypted.
    #[error("SRTP keys are accepted only over TLS")]
    KeysInClear,
}

impl SdpError {
    /// A stable code for logs, metrics and call records.
    pub fn code(&self) -> &'static str {
        match self {
            SdpError::Malformed(_) => "sdp_malformed",
            SdpError::NotAcceptable(_) => "sdp_not_acceptable",
            SdpError::SrtpRequired(_) => "sdp_srtp_required",
            SdpError::KeysInClear => "sdp_keys_in_clear",
        }
    }

    /// The SIP status to answer with.
    pub fn sip_status(&self) -> u16 {
        match self {
            SdpError::Malformed(_) => 400,
            _ => 488,
        }
    }
}

/// A G.711 codec with its static payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// µ-law, payload type 0.
    Pcmu,
    /// A-law, payload type 8.
    Pcma,
}

impl Codec {
    /// The static payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// The encoding name in `a=rtpmap`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }
}

/// Stream direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction that answers this one (RFC 3264 §6.1).
    fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }
}

/// One `a=crypto` line (RFC 4568 §9.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    /// 1 to 9 digits, as sent.
    pub tag: String,
    pub suite: String,
    pub key_params: String,
    /// SDES session parameters (§6.3), as sent.
    pub session_params: Vec<String>,
}

impl Crypto {
    /// Why this line's session parameters cannot be honoured, if so. Only
    /// those that change nothing on the wire here are accepted: `KDR=0`,
    /// a replay window `WSH` of at least 64, and `-`-prefixed ones (which
    /// may be ignored, RFC 4568 §6.3.7). Unencrypted or unauthenticated
    /// SRTP, FEC and other key derivation rates are refused.
    fn unusable_param(&self) -> Option<&str> {
        self.session_params.iter().map(String::as_str).find(|p| {
            let fine = p.starts_with('-')
                || *p == "KDR=0"
                || p.strip_prefix("WSH=")
                    .and_then(|w| w.parse::<u32>().ok())
                    .is_some_and(|w| w >= 64);
            !fine
        })
    }
}

/// One media line with its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
    /// Payload type → (encoding name, clock rate), from `a=rtpmap`.
    pub rtpmap: HashMap<u8, (String, u32)>,
    pub connection: Option<IpAddr>,
    pub crypto: Vec<Crypto>,
    pub direction: Direction,
    pub ptime: Option<u32>,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub connection: Option<IpAddr>,
    pub media: Vec<Media>,
}

/// Parses an SDP body.
pub fn parse(text: &str) -> Result<Session, SdpError> {
    let bad = |why: String| SdpError::Malformed(why);
    if text.len() > MAX_SDP_BYTES {
        return Err(bad(format!("over {MAX_SDP_BYTES} bytes")));
    }
    let mut session = Session {
        connection: None,
        media: Vec::new(),
    };
    let mut saw_version = false;
    let mut session_direction = Direction::SendRecv;
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        // Nothing that could end a line or a header when echoed.
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad(format!("line {} has control characters", n + 1)));
        }
        let (kind, value) = line
            .split_once('=')
            .filter(|(k, _)| k.len() == 1)
            .ok_or_else(|| bad(format!("line {} is not type=value", n + 1)))?;
        if !saw_version && (kind, value) != ("v", "0") {
            return Err(bad("the first line must be v=0".into()));
        }
        match (kind, session.media.last_mut()) {
            ("v", _) => saw_version = true,
            ("m", _) => {
                if session.media.len() >= MAX_MEDIA {
                    return Err(bad(format!("more than {MAX_MEDIA} media lines")));
                }
                session
                    .media
                    .push(parse_media_line(value, session_direction)?);
            }
            ("c", None) => session.connection = Some(parse_connection(value)?),
            ("c", Some(m)) => m.connection = Some(parse_connection(value)?),
            ("a", None) => {
                if let Some(d) = parse_direction(value) {
                    session_direction = d;
                }
            }
            ("a", Some(m)) => parse_attribute(m, value)?,
            _ => {}
        }
    }
    if !saw_version {
        return Err(bad("no v=0 line".into()));
    }
    Ok(session)
}

fn parse_media_line(value: &str, direction: Direction) -> Result<Media, SdpError> {
    let bad = |why: &str| SdpError::Malformed(format!("m= line: {why}"));
    let mut parts = value.split(' ');
    let kind = parts
        .next()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("no media"))?;
    let port = parts.next().ok_or_else(|| bad("no port"))?;
    // A port count (`49170/2`) is not used for audio; take the first port.
    let port = port.split('/').next().unwrap_or_default();
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    let proto = parts.next().ok_or_else(|| bad("no protocol"))?;
    let formats: Vec<String> = parts
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    if formats.len() > MAX_FORMATS {
        return Err(bad("too many formats"));
    }
    // Media, protocol and formats are echoed in the answer: tokens only
    // (RFC 8866 §9; the protocol may have `/`).
    let token = |t: &str, slash: bool| {
        !t.is_empty()
            && t.len() <= 64
            && t.chars().all(|c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`{|}~".contains(c) || (slash && c == '/')
            })
    };
    if !token(kind, false) || !token(proto, true) || !formats.iter().all(|f| token(f, false)) {
        return Err(bad("not a token"));
    }
    Ok(Media {
        kind: kind.to_string(),
        port,
        proto: proto.to_string(),
        formats,
        rtpmap: HashMap::new(),
        connection: None,
        crypto: Vec::new(),
        direction,
        ptime: None,
    })
}

fn parse_connection(value: &str) -> Result<IpAddr, SdpError> {
    let bad = || SdpError::Malformed(format!("bad c= line {value:?}"));
    let mut parts = value.split(' ');
    let (net, family, addr) = (parts.next(), parts.next(), parts.next());
    if net != Some("IN") || !matches!(family, Some("IP4" | "IP6")) {
        return Err(bad());
    }
    // A multicast TTL suffix (`/127`) is not for calls; refuse it by parse.
    let addr: IpAddr = addr.ok_or_else(bad)?.parse().map_err(|_| bad())?;
    if (family == Some("IP4")) != addr.is_ipv4() {
        return Err(bad());
    }
    Ok(addr)
}

fn parse_direction(value: &str) -> Option<Direction> {
    match value {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

fn parse_attribute(m: &mut Media, value: &str) -> Result<(), SdpError> {
    if let Some(d) = parse_direction(value) {
        m.direction = d;
        return Ok(());
    }
    let (name, rest) = value.split_once(':').unwrap_or((value, ""));
    match name {
        "rtpmap" => {
            let bad = || SdpError::Malformed(format!("bad a=rtpmap:{rest}"));
            let (pt, enc) = rest.split_once(' ').ok_or_else(bad)?;
            let pt: u8 = pt.parse().ok().filter(|p| *p < 128).ok_or_else(bad)?;
            let mut enc = enc.split('/');
            let name = enc.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
            let rate: u32 = enc.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
            if m.rtpmap.len() >= MAX_FORMATS {
                return Err(SdpError::Malformed("too many a=rtpmap lines".into()));
            }
            m.rtpmap.insert(pt, (name.to_string(), rate));
        }
        "crypto" => {
            let bad = || SdpError::Malformed(format!("bad a=crypto:{rest}"));
            let mut parts = rest.split(' ');
            // RFC 4568 §9.1: tag = 1*9DIGIT, echoed as sent.
            let tag = parts
                .next()
                .filter(|t| (1..=9).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(bad)?;
            let suite = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
            let key_params = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
            let session_params: Vec<String> = parts
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            if m.crypto.len() >= MAX_CRYPTO || session_params.len() > 8 {
                return Err(SdpError::Malformed(
                    "too many a=crypto lines or parameters".into(),
                ));
            }
            if m.crypto.iter().any(|c| c.tag == tag) {
                return Err(SdpError::Malformed(format!(
                    "a=crypto tag {tag} given twice"
                )));
            }
            m.crypto.push(Crypto {
                tag: tag.to_string(),
                suite: suite.to_string(),
                key_params: key_params.to_string(),
                session_params,
            });
        }
        "ptime" => {
            let ptime: u32 = rest
                .parse()
                .ok()
                .filter(|p| (10..=200).contains(p))
                .ok_or_else(|| SdpError::Malformed(format!("bad a=ptime:{rest}")))?;
            m.ptime = Some(ptime);
        }
        _ => {}
    }
    Ok(())
}

/// What a leg accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    /// SRTP is required (devices, by default); plain RTP only where the
    /// admin allowed it.
    pub srtp_required: bool,
    /// The signalling runs over TLS, so keys may be exchanged.
    pub over_tls: bool,
    /// Media may go to loopback addresses (tests and single-host setups
    /// only; a caller could otherwise aim our RTP at local services).
    pub allow_loopback: bool,
    /// Codecs in order of preference.
    pub codecs: Vec<Codec>,
}

/// The outcome of an answer: what media flows and how.
#[derive(Debug, Clone)]
pub struct Agreed {
    pub codec: Codec,
    /// RFC 4733 payload type, if both sides do telephone events.
    pub dtmf: Option<u8>,
    /// Where the peer wants media sent (until symmetric RTP latches).
    pub remote: SocketAddr,
    pub direction: Direction,
    pub ptime: u32,
    /// The SDES keys; `None` for plain RTP.
    pub srtp: Option<Sdes>,
    /// The answer's body.
    pub sdp: String,
}

/// The SDES outcome: one suite, a key per direction.
#[derive(Debug, Clone)]
pub struct Sdes {
    pub suite: Suite,
    /// The offer's crypto tag, echoed in the answer.
    pub tag: String,
    /// The peer's key, for what it sends.
    pub theirs: MasterKey,
    /// Our fresh key, for what we send.
    pub ours: MasterKey,
}

/// Where this side receives, for the answer.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    pub addr: SocketAddr,
    /// Origin session id and version (fresh per leg).
    pub session_id: u64,
    /// Origin version: higher with every new SDP of the dialog (RFC 3264
    /// §8).
    pub session_version: u64,
}

/// Answers `offer` under `policy`, receiving at `local`.
pub fn answer(offer: &Session, policy: &Policy, local: Local) -> Result<Agreed, SdpError> {
    Ok(choose(offer, policy)?.answer(offer, local))
}

/// The audio stream of an offer that `policy` accepts and how, before
/// the local address is known (the media opens once the offer is known
/// to be acceptable).
#[derive(Debug, Clone)]
pub struct Choice {
    index: usize,
    /// Everything but the answer's body.
    pub agreed: Agreed,
}

impl Choice {
    /// The agreement with its answer, receiving at `local`.
    pub fn answer(self, offer: &Session, local: Local) -> Agreed {
        let mut agreed = self.agreed;
        agreed.sdp = write_answer(offer, self.index, &agreed, local);
        agreed
    }
}

/// Chooses the first audio stream of `offer` that `policy` accepts.
pub fn choose(offer: &Session, policy: &Policy) -> Result<Choice, SdpError> {
    let mut chosen: Option<(usize, Agreed)> = None;
    let mut last_refusal = SdpError::NotAcceptable("the offer has no audio stream".into());
    for (i, m) in offer.media.iter().enumerate() {
        if chosen.is_some() || m.kind != "audio" || m.port == 0 {
            continue;
        }
        match accept(offer, m, policy) {
            Ok(a) => chosen = Some((i, a)),
            Err(e) => last_refusal = e,
        }
    }
    let Some((index, agreed)) = chosen else {
        return Err(last_refusal);
    };
    Ok(Choice { index, agreed })
}

/// Accepts one audio media line, or says why not.
fn accept(offer: &Session, m: &Media, policy: &Policy) -> Result<Agreed, SdpError> {
    let secure = match m.proto.as_str() {
        "RTP/SAVP" => true,
        "RTP/AVP" => false,
        other => {
            return Err(SdpError::NotAcceptable(format!("transport {other}")));
        }
    };
    if (secure || !m.crypto.is_empty()) && !policy.over_tls {
        return Err(SdpError::KeysInClear);
    }
    if policy.srtp_required && !secure {
        return Err(SdpError::SrtpRequired("the offer is plain RTP/AVP".into()));
    }
    let addr = m
        .connection
        .or(offer.connection)
        .ok_or_else(|| SdpError::Malformed("no c= line for the audio stream".into()))?;
    if !media_address_ok(addr, policy.allow_loopback) {
        return Err(SdpError::NotAcceptable(format!("media address {addr}")));
    }
    let payload_types: Vec<u8> = m.formats.iter().filter_map(|f| f.parse().ok()).collect();
    let named = |pt: u8| m.rtpmap.get(&pt).map(|(n, r)| (n.to_ascii_uppercase(), *r));
    let codec = policy
        .codecs
        .iter()
        .copied()
        .find(|c| {
            let pt = c.payload_type();
            payload_types.contains(&pt) && named(pt).is_none_or(|(n, r)| n == c.name() && r == 8000)
        })
        .ok_or_else(|| SdpError::NotAcceptable("no G.711 codec in common".into()))?;
    let dtmf = payload_types
        .iter()
        .copied()
        .find(|pt| named(*pt).is_some_and(|(n, r)| n == "TELEPHONE-EVENT" && r == 8000));
    let srtp = if secure { Some(sdes(m)?) } else { None };
    Ok(Agreed {
        codec,
        dtmf,
        remote: SocketAddr::new(addr, m.port),
        direction: m.direction.answer(),
        ptime: m.ptime.unwrap_or(20),
        srtp,
        sdp: String::new(),
    })
}

/// Whether media may be sent to `addr`: never to unspecified, multicast,
/// broadcast or link-local addresses (also written as IPv4-mapped IPv6),
/// to loopback only where allowed. Private addresses are normal (phones
/// behind NAT); symmetric RTP latching decides where media really goes.
fn media_address_ok(addr: IpAddr, allow_loopback: bool) -> bool {
    let addr = addr.to_canonical();
    if addr.is_unspecified() || addr.is_multicast() || (addr.is_loopback() && !allow_loopback) {
        return false;
    }
    match addr {
        IpAddr::V4(v4) => !v4.is_broadcast() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
    }
}

/// The first offered crypto line with a supported suite and a usable key,
/// and a fresh key of ours.
fn sdes(m: &Media) -> Result<Sdes, SdpError> {
    let mut refusal = SdpError::SrtpRequired("no supported crypto suite".into());
    for c in &m.crypto {
        let Some(suite) = Suite::from_name(&c.suite) else {
            continue;
        };
        if let Some(p) = c.unusable_param() {
            refusal = SdpError::SrtpRequired(format!("session parameter {p} is not supported"));
            continue;
        }
        match MasterKey::from_key_params(&c.key_params) {
            Ok(theirs) => {
                let ours =
                    MasterKey::generate().map_err(|e| SdpError::SrtpRequired(e.to_string()))?;
                return Ok(Sdes {
                    suite,
                    tag: c.tag.clone(),
                    theirs,
                    ours,
                });
            }
            Err(e) => refusal = SdpError::SrtpRequired(e.to_string()),
        }
    }
    Err(refusal)
}

/// Writes the answer: every media line of the offer in order, the chosen
/// one accepted, the rest declined with port 0.
/// Our offer for a call we place (the B2BUA's outbound legs): G.711 µ-law
/// and A-law, RFC 4733 on 101, and with `srtp` one SDES line (tag 1) with
/// our fresh key for what we send.
pub fn offer(local: Local, srtp: Option<(Suite, &MasterKey)>) -> String {
    let family = if local.addr.is_ipv4() { "IP4" } else { "IP6" };
    let ip = local.addr.ip();
    let proto = if srtp.is_some() {
        "RTP/SAVP"
    } else {
        "RTP/AVP"
    };
    let mut out = format!(
        "v=0\r\no=switchboard {id} {version} IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} {proto} 0 8 {DTMF_PT}\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:{DTMF_PT} telephone-event/8000\r\na=fmtp:{DTMF_PT} 0-15\r\na=ptime:20\r\n",
        id = local.session_id,
        version = local.session_version,
        port = local.addr.port(),
    );
    if let Some((suite, key)) = srtp {
        out.push_str(&format!(
            "a=crypto:1 {} {}\r\n",
            suite.name(),
            key.to_key_params().as_str()
        ));
    }
    out.push_str("a=sendrecv\r\n");
    out
}

/// The telephone-event payload type we offer.
pub const DTMF_PT: u8 = 101;

/// Reads the answer to our [`offer`]: the far end's address, codec,
/// telephone events and (if we offered SDES with `suite`) its key, which
/// must be for our suite and our tag. `ours` stays our key.
pub fn read_answer(
    answer: &Session,
    policy: &Policy,
    suite: Option<Suite>,
    ours: Option<&MasterKey>,
) -> Result<Agreed, SdpError> {
    let mut agreed = choose(answer, policy)?.agreed;
    match (&mut agreed.srtp, suite, ours) {
        (Some(sdes), Some(suite), Some(ours)) => {
            if sdes.suite != suite || sdes.tag != "1" {
                return Err(SdpError::NotAcceptable(
                    "the answer's crypto is not the one offered".into(),
                ));
            }
            sdes.ours = ours.clone();
        }
        (None, None, _) => {}
        _ => {
            return Err(SdpError::NotAcceptable(
                "the answer's media protection is not the one offered".into(),
            ));
        }
    }
    if !policy.codecs.contains(&agreed.codec) {
        return Err(SdpError::NotAcceptable("a codec not offered".into()));
    }
    Ok(agreed)
}

fn write_answer(offer: &Session, index: usize, agreed: &Agreed, local: Local) -> String {
    let family = if local.addr.is_ipv4() { "IP4" } else { "IP6" };
    let ip = local.addr.ip();
    let mut out = format!(
        "v=0\r\no=switchboard {id} {version} IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n",
        id = local.session_id,
        version = local.session_version
    );
    for (i, m) in offer.media.iter().enumerate() {
        if i != index {
            let first = m.formats.first().map_or("0", String::as_str);
            out.push_str(&format!("m={} 0 {} {first}\r\n", m.kind, m.proto));
            continue;
        }
        let pt = agreed.codec.payload_type();
        let proto = if agreed.srtp.is_some() {
            "RTP/SAVP"
        } else {
            "RTP/AVP"
        };
        let dtmf = agreed.dtmf.map(|d| format!(" {d}")).unwrap_or_default();
        out.push_str(&format!(
            "m=audio {} {proto} {pt}{dtmf}\r\n",
            local.addr.port()
        ));
        out.push_str(&format!("a=rtpmap:{pt} {}/8000\r\n", agreed.codec.name()));
        if let Some(d) = agreed.dtmf {
            out.push_str(&format!(
                "a=rtpmap:{d} telephone-event/8000\r\na=fmtp:{d} 0-15\r\n"
            ));
        }
        out.push_str(&format!("a=ptime:{}\r\n", agreed.ptime));
        if let Some(k) = &agreed.srtp {
            out.push_str(&format!(
                "a=crypto:{} {} {}\r\n",
                k.tag,
                k.suite.name(),
                k.ours.to_key_params().as_str()
            ));
        }
        out.push_str(&format!("a={}\r\n", agreed.direction.attribute()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offer as baresip sends it with `mediaenc=srtp-mand`.
    const BARESIP: &str = "v=0\r\n\
        o=- 1432153234 2816381029 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 10002 RTP/SAVP 0 8 101\r\n\
        b=AS:64\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=sendrecv\r\n\
        a=label:1\r\n\
        a=ssrc:1234 cname:x\r\n\
        a=ptime:20\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm\r\n\
        a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm\r\n";

    fn device() -> Policy {
        Policy {
            srtp_required: true,
            over_tls: true,
            allow_loopback: true,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
        }
    }

    fn local() -> Local {
        Local {
            addr: "127.0.0.1:30000".parse().unwrap(),
            session_id: 42,
            session_version: 43,
        }
    }

    /// Media lines in an SDP body.
    fn m_lines(sdp: &str) -> usize {
        sdp.lines().filter(|l| l.starts_with("m=")).count()
    }

    fn answered(offer: &str) -> Result<Agreed, SdpError> {
        answer(&parse(offer)?, &device(), local())
    }

    /// The offer with extra session parameters on its first crypto line.
    fn with_param(param: &str) -> String {
        BARESIP.replace(
            "rtpYLOqvm\r\na=crypto:2",
            &format!("rtpYLOqvm {param}\r\na=crypto:2"),
        )
    }

    #[test]
    fn a_baresip_offer_gets_a_fresh_key_and_the_first_suite() {
        let a = answered(BARESIP).unwrap();
        assert_eq!(a.codec, Codec::Pcmu);
        assert_eq!(a.dtmf, Some(101));
        assert_eq!(a.remote, "127.0.0.1:10002".parse().unwrap());
        let k = a.srtp.as_ref().unwrap();
        let theirs = k.theirs.to_key_params();
        let ours = k.ours.to_key_params();
        assert_eq!((k.suite, k.tag.as_str()), (Suite::AesCm128HmacSha1_80, "1"));
        assert_eq!(
            theirs.as_str(),
            "inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm"
        );
        assert_ne!(ours.as_str(), theirs.as_str(), "our key is fresh");
        let sdp = a.sdp.as_str();
        assert!(sdp.contains("m=audio 30000 RTP/SAVP 0 101\r\n"), "{sdp}");
        let line = format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 {}\r\n", ours.as_str());
        assert!(sdp.contains(&line), "the offer's tag is echoed: {sdp}");
        assert!(sdp.contains("a=sendrecv"));
        assert!(sdp.contains("o=switchboard 42 43 IN IP4 127.0.0.1\r\n"));
        assert!(sdp.contains("a=fmtp:101 0-15\r\n"), "DTMF digits only");
        assert!(
            !sdp.contains("4fl6DT4B"),
            "the peer's key never goes back out"
        );
        assert_eq!(m_lines(sdp), 1);
        // The answer parses as SDP and names our address.
        let back = parse(sdp).unwrap();
        assert_eq!(back.connection, Some("127.0.0.1".parse().unwrap()));
        // Two answers to the same offer carry different keys.
        let b = answered(BARESIP).unwrap();
        assert_ne!(b.srtp.unwrap().ours.to_key_params().as_str(), ours.as_str());
        // The tag is echoed as sent.
        let a = answered(&BARESIP.replace("a=crypto:1 ", "a=crypto:01 ")).unwrap();
        assert!(
            a.sdp.contains("a=crypto:01 AES_CM_128_HMAC_SHA1_80"),
            "{}",
            a.sdp
        );
    }

    #[test]
    fn other_streams_are_declined_in_order_and_hold_is_mirrored() {
        let offer = BARESIP.replace(
            "m=audio 10002",
            "m=video 10004 RTP/SAVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 10002",
        );
        let offer = offer.replace("a=sendrecv", "a=sendonly");
        let a = answered(&offer).unwrap();
        let video = a.sdp.find("m=video 0 RTP/SAVP 96").expect("video declined");
        let audio = a.sdp.find("m=audio 30000").expect("audio accepted");
        assert!(video < audio, "media lines keep the offer's order");
        assert_eq!(
            m_lines(&a.sdp),
            m_lines(&offer),
            "one answer line per offer line"
        );
        assert_eq!(a.direction, Direction::RecvOnly);
        assert!(a.sdp.contains("a=recvonly"));
    }

    #[test]
    fn policy_refusals_say_why() {
        let plain = BARESIP
            .replace("RTP/SAVP", "RTP/AVP")
            .replace("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm\r\n", "")
            .replace("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:4fl6DT4Bi+DWT6MsBt5BOQ7Gda1Jiv7rtpYLOqvm\r\n", "");
        let err = answered(&plain).unwrap_err();
        assert_eq!((err.code(), err.sip_status()), ("sdp_srtp_required", 488));
        // Allowed plain RTP (a trunk on a private link): no crypto answered.
        let trunk = Policy {
            srtp_required: false,
            over_tls: false,
            ..device()
        };
        let a = answer(&parse(&plain).unwrap(), &trunk, local()).unwrap();
        assert!(a.srtp.is_none() && !a.sdp.contains("a=crypto"));
        // Keys over UDP/TCP: refused, even where SRTP is optional and even
        // on an RTP/AVP line.
        let err = answer(&parse(BARESIP).unwrap(), &trunk, local()).unwrap_err();
        assert_eq!(err, SdpError::KeysInClear);
        let avp_with_keys = BARESIP.replace("RTP/SAVP", "RTP/AVP");
        let err = answer(&parse(&avp_with_keys).unwrap(), &trunk, local()).unwrap_err();
        assert_eq!(err, SdpError::KeysInClear);
        // Only unsupported suites.
        let f8 = BARESIP
            .replace("AES_CM_128_HMAC_SHA1_80", "F8_128_HMAC_SHA1_80")
            .replace("AES_CM_128_HMAC_SHA1_32", "AEAD_AES_256_GCM");
        assert_eq!(answered(&f8).unwrap_err().code(), "sdp_srtp_required");
        // A key with an MKI is skipped for the next usable line; alone, it
        // is refused with the reason.
        let mki = BARESIP.replace("rtpYLOqvm\r\na=crypto:2", "rtpYLOqvm|1:4\r\na=crypto:2");
        let k = answered(&mki).unwrap().srtp.unwrap();
        assert_eq!((k.suite, k.tag.as_str()), (Suite::AesCm128HmacSha1_32, "2"));
        let mki = mki.replace("AES_CM_128_HMAC_SHA1_32", "F8_128_HMAC_SHA1_80");
        let err = answered(&mki).unwrap_err();
        assert!(err.to_string().contains("MKI"), "{err}");
        // Session parameters that change the wire format skip the line;
        // harmless ones are accepted.
        for param in [
            "UNENCRYPTED_SRTP",
            "UNAUTHENTICATED_SRTP",
            "KDR=1",
            "FEC_ORDER=FEC_SRTP",
            "WSH=32",
            "FOO=1",
        ] {
            let k = answered(&with_param(param)).unwrap().srtp.unwrap();
            assert_eq!(k.tag, "2", "{param}: the first line is skipped");
            let only = with_param(param).replace("AES_CM_128_HMAC_SHA1_32", "F8_128_HMAC_SHA1_80");
            let err = answered(&only).unwrap_err();
            assert!(err.to_string().contains(param), "{param}: {err}");
        }
        for param in ["KDR=0", "WSH=128", "-FOO=1"] {
            let k = answered(&with_param(param)).unwrap().srtp.unwrap();
            assert_eq!(k.tag, "1", "{param}");
        }
        // No codec in common.
        let opus = BARESIP.replace("RTP/SAVP 0 8 101", "RTP/SAVP 111 101");
        assert_eq!(answered(&opus).unwrap_err().code(), "sdp_not_acceptable");
        // PT 0 remapped to something that is not PCMU is not taken as PCMU.
        let lying = BARESIP.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 opus/48000");
        assert_eq!(answered(&lying).unwrap().codec, Codec::Pcma);
        // Media addresses we never send to, also as IPv4-mapped IPv6.
        for c in [
            "IP4 224.0.0.1",
            "IP4 0.0.0.0",
            "IP4 255.255.255.255",
            "IP4 169.254.169.254",
            "IP6 ::ffff:224.0.0.1",
            "IP6 ::ffff:0.0.0.0",
            "IP6 fe80::1",
            "IP6 ::",
        ] {
            let odd = BARESIP.replace("c=IN IP4 127.0.0.1", &format!("c=IN {c}"));
            assert_eq!(
                answered(&odd).unwrap_err().code(),
                "sdp_not_acceptable",
                "{c}"
            );
        }
        // Loopback only where allowed; private addresses are normal.
        let strict = Policy {
            allow_loopback: false,
            ..device()
        };
        for c in ["IP4 127.0.0.1", "IP6 ::1", "IP6 ::ffff:127.0.0.1"] {
            let odd = BARESIP.replace("c=IN IP4 127.0.0.1", &format!("c=IN {c}"));
            let err = answer(&parse(&odd).unwrap(), &strict, local()).unwrap_err();
            assert_eq!(err.code(), "sdp_not_acceptable", "{c}");
        }
        let nat = BARESIP.replace("c=IN IP4 127.0.0.1", "c=IN IP4 192.168.1.20");
        answer(&parse(&nat).unwrap(), &strict, local()).unwrap();
        // No audio at all.
        let none = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 1 RTP/AVP 96\r\n";
        assert_eq!(answered(none).unwrap_err().code(), "sdp_not_acceptable");
    }

    #[test]
    fn malformed_and_oversized_bodies_are_refused() {
        let cases: Vec<String> = vec![
            String::new(),
            "hello".into(),
            "v=1\r\n".into(),
            "o=x\r\nv=0\r\n".into(),
            "\r\nv=1\r\n".into(),
            "\r\n\r\no=x\r\n".into(),
            "v=0\r\nxx=1\r\n".into(),
            BARESIP.replace("m=audio 10002", "m=audio 70000"),
            BARESIP.replace("m=audio 10002 RTP/SAVP 0 8 101", "m=audio"),
            BARESIP.replace("m=audio 10002 RTP/SAVP", "m=audio\r 10002 RTP/SAVP"),
            BARESIP.replace("RTP/SAVP 0 8 101", "RTP/SAVP 0 8 1\u{7f}01"),
            BARESIP.replace("RTP/SAVP 0 8 101", "RTP/SAVP\"x 0 8 101"),
            BARESIP.replace("c=IN IP4 127.0.0.1", "c=IN IP4 ::1"),
            BARESIP.replace("c=IN IP4 127.0.0.1", "c=IN IP4 224.2.1.1/127"),
            BARESIP.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:300 PCMU/8000"),
            BARESIP.replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU"),
            BARESIP.replace("a=ptime:20", "a=ptime:0"),
            BARESIP.replace("a=crypto:1 ", "a=crypto:x "),
            BARESIP.replace("a=crypto:1 ", "a=crypto:+1 "),
            BARESIP.replace("a=crypto:1 ", "a=crypto:1234567890 "),
            BARESIP.replace("a=crypto:2 ", "a=crypto:1 "),
            BARESIP.replace(
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline",
                "a=crypto:1 AES",
            ),
            format!("{BARESIP}{}", "m=audio 1 RTP/AVP 0\r\n".repeat(MAX_MEDIA)),
            format!(
                "{BARESIP}{}",
                (10..10 + MAX_CRYPTO)
                    .map(|t| format!("a=crypto:{t} AES_CM_128_HMAC_SHA1_80 inline:x\r\n"))
                    .collect::<String>()
            ),
            format!(
                "v=0\r\nm=audio 1 RTP/AVP{}\r\n",
                " 0".repeat(MAX_FORMATS + 1)
            ),
            format!("{BARESIP}a=x:{}\r\n", "y".repeat(MAX_SDP_BYTES)),
        ];
        for body in cases {
            let err = parse(&body).unwrap_err();
            assert_eq!(
                (err.code(), err.sip_status()),
                ("sdp_malformed", 400),
                "{body:.120}"
            );
        }
        // A media line without its own c= and no session c= is malformed
        // at answer time (nowhere to send).
        let no_c = BARESIP.replace("c=IN IP4 127.0.0.1\r\n", "");
        assert_eq!(answered(&no_c).unwrap_err().code(), "sdp_malformed");
    }

    /// 30,000 mutated offers: each parses or is refused, and each parsed
    /// one is answered or refused, without a panic; every answer parses,
    /// has one media line per offered one and no control characters.
    #[test]
    fn mutated_offers_never_panic() {
        let mut answered = 0;
        for bytes in crate::media::hostile::mutations(BARESIP.as_bytes(), 11, 30_000) {
            let text = String::from_utf8_lossy(&bytes);
            let Ok(offer) = parse(&text) else { continue };
            if let Ok(a) = answer(&offer, &device(), local()) {
                parse(&a.sdp).unwrap();
                assert_eq!(m_lines(&a.sdp), offer.media.len());
                assert!(!a.sdp.replace("\r\n", "").chars().any(char::is_control));
                answered += 1;
            }
        }
        assert!(
            answered > 1_000,
            "the mutations should leave many offers usable: {answered}"
        );
    }
}
