//! The SIP door (SPEC T2): how devices reach the host's telephony. It
//! listens for SIP over TLS (default port 5061, the HTTPS certificate),
//! authenticates devices by digest, keeps their registrations, and is the
//! B2BUA's signalling side: a device's INVITE becomes an inbound leg of
//! the plugin its tenant routed the dialled number to, with SDP always
//! re-originated and SRTP (SDES) required. It never runs plugin code:
//! call control (`telephony`) does that, and tells the door what to
//! answer through `telephony::signalling::Signalling`.
//!
//! Each tenant has its own SIP domain, `{tenant}.{sip_domain}`, which is
//! also its devices' digest realm. A request for a domain that is no
//! tenant's is challenged and refused like any wrong password, so the
//! door does not tell which tenants exist.
//!
//! Trunks reach it over UDP or TCP (`[sip] trunk_listen`) or TLS (`[sip]
//! trunk_tls_listen`), heard only from the addresses a tenant's trunk
//! allow-lists, or over the connection the door keeps to a trunk's proxy
//! (`link`); they reach only that tenant's DIDs, and calls to numbers
//! outside the tenant go out over them.
//!
//! - `transport`: TLS flows (caps, deadlines, framing, parsing).
//! - `udp`: the trunks' socket and RFC 3261's transaction timers;
//!   `link`: the connections kept to TCP and TLS trunks' proxies.
//! - [`frame`], [`message`]: cutting streams into messages and reading them.
//! - [`auth`]: digest, throttles, lockout, audit.
//! - `registrar`: where devices are (in memory, per flow).
//! - `dialogs`: the B2BUA's dialogs with devices (and their REFERs'
//!   NOTIFYs); `outbound`: calls the host places to devices; `mwi`:
//!   message-waiting subscriptions; `register`: trunks' registrations
//!   with their providers.
//! - [`sdp`]: offer/answer with fresh keys per leg.
//!
//! Not yet: re-INVITEs without an offer.

pub mod auth;
mod dialogs;
pub mod frame;
mod link;
pub mod message;
mod mwi;
mod outbound;
mod register;
mod registrar;
pub mod sdp;
mod transport;
pub mod udp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Deserialize;

use self::auth::{Auth, Verdict};
use self::dialogs::{Dialog, Dialogs, Early, State};
use self::message::{Message, NameAddr, Uri, param};
use self::registrar::Registrar;
use self::transport::{Flow, Flows};
use crate::call::legs::Cause;
use crate::identity::throttle::ThrottleConfig;
use crate::runtime::Runtime;
use crate::support::encoding::random_hex;
use crate::telephony::signalling::{Inbound, MediaOffer, Outbound, Signalling};

/// Calls one device may have at once (each holds media ports).
pub const MAX_CALLS_PER_DEVICE: usize = 8;

/// Methods the door answers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, SUBSCRIBE, REFER";

/// `[sip]` in the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// Listen for SIP over TLS at all.
    pub enabled: bool,
    /// Each tenant's SIP domain is `{tenant}.{domain}` (default
    /// `localhost`: `acme.localhost`). Changing it needs new device
    /// passwords (the digest realm is part of their stored secret).
    pub domain: String,
    /// Where the media engine binds its RTP ports (default 127.0.0.1;
    /// phones on a network need `0.0.0.0` or the host's address).
    pub media_bind: IpAddr,
    /// The RTP port range, both ends included (two ports per call leg at
    /// most).
    pub media_ports: [u16; 2],
    /// The media threads' nice value (Linux, -20-19; default 0). Below 0
    /// keeps audio ahead of plugin work when the machine is saturated;
    /// it needs `CAP_SYS_NICE` (else a warning, and 0).
    pub media_nice: i32,
    /// The CPUs the media threads run on (Linux; default: any). Cores of
    /// their own (and `plugin_cpus` elsewhere) keep audio apart from
    /// plugin work entirely; see docs/benchmarks.md.
    pub media_cpus: Vec<usize>,
    /// A real-time FIFO priority (1-99) for the media threads (Linux,
    /// `CAP_SYS_NICE`; default none), as PBXs run their media: audio then
    /// preempts everything else on its CPUs. Best with `media_cpus`; see
    /// docs/benchmarks.md.
    pub media_realtime: Option<u8>,
    /// Where (default `127.0.0.1:5061`; phones on a network need
    /// `0.0.0.0:5061`).
    pub listen: SocketAddr,
    /// Where trunks reach the host over UDP and TCP (both on this
    /// address, e.g. `203.0.113.1:5060`); `None` (the default): neither.
    /// Only addresses a tenant's trunk over that transport allow-lists are
    /// heard. A specific address, not `0.0.0.0`: it is written into Via
    /// and Contact. (TLS trunks use `trunk_tls_listen`, and the
    /// connections the door makes to their proxies.)
    pub trunk_listen: Option<SocketAddr>,
    /// Where `tls` trunks' providers connect to the host (e.g.
    /// `203.0.113.1:5062`, the HTTPS certificate); `None` (the default):
    /// nowhere (the door's own links to their proxies still work). Apart
    /// from `listen`: a connection there is always a device's.
    pub trunk_tls_listen: Option<SocketAddr>,
    /// The dialing region of tenants that set none (ISO 3166, e.g. `GB`;
    /// default `US`): which numbers are emergency, national, premium.
    pub region: String,
    /// Devices may also use UDP and TCP at `trunk_listen`, each only if
    /// its tenant's admins turned UDP/TCP on for it (`udp`): datagrams
    /// and connections from addresses no trunk allows are then read as
    /// devices' (digest as over TLS; plain RTP only, as SDES keys never
    /// travel in clear). Default `false`: those are dropped unread.
    pub device_udp: bool,
    pub handshake_timeout_s: u64,
    /// A connection with nothing to read for this long is closed (phones
    /// send keep-alives or re-register well within it).
    pub idle_timeout_s: u64,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Registrations shorter than this are refused (423), longer ones
    /// shortened to `max_expires_s`.
    pub min_expires_s: u32,
    pub max_expires_s: u32,
    /// The address put in SDP for media (default: the address the device
    /// reached the door at, when the media engine listens on all).
    pub media_address: Option<IpAddr>,
    /// Accept media addresses on loopback (single-host setups and tests;
    /// otherwise a caller could aim the host's RTP at local services).
    pub allow_loopback_media: bool,
    /// Digest algorithms offered, in order (default SHA-256 then MD5, RFC
    /// 7616). Some phones (libre/baresip 1.x among them) give up on any
    /// challenge they cannot answer instead of taking the next one: a
    /// server with such phones offers `["MD5"]` only. One setting for the
    /// whole server, so challenges never differ by device or tenant (no
    /// oracle).
    pub digest_algorithms: Vec<crate::identity::digest::Algorithm>,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            enabled: true,
            domain: "localhost".into(),
            media_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            media_ports: [20000, 29999],
            media_nice: 0,
            media_cpus: Vec::new(),
            media_realtime: None,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5061),
            trunk_listen: None,
            trunk_tls_listen: None,
            region: "US".into(),
            device_udp: false,
            handshake_timeout_s: 10,
            idle_timeout_s: 600,
            max_connections: 10_000,
            max_connections_per_address: 64,
            min_expires_s: 60,
            max_expires_s: 3600,
            media_address: None,
            allow_loopback_media: false,
            digest_algorithms: vec![
                crate::identity::digest::Algorithm::Sha256,
                crate::identity::digest::Algorithm::Md5,
            ],
        }
    }
}

impl SipConfig {
    /// Checks the settings when the configuration is loaded.
    pub fn validate(&self) -> Result<(), String> {
        let [lo, hi] = self.media_ports;
        if lo < 1024 || lo >= hi || hi - lo < 3 {
            return Err(format!(
                "[sip] media_ports [{lo}, {hi}]: a range of at least 4 ports above 1023, low first"
            ));
        }
        if !(-20..=19).contains(&self.media_nice) {
            return Err(format!(
                "[sip] media_nice {} is not a nice value (-20-19)",
                self.media_nice
            ));
        }
        crate::support::thread::check_cpus("[sip] media_cpus", &self.media_cpus)?;
        if let Some(p) = self.media_realtime
            && !(1..=99).contains(&p)
        {
            return Err(format!(
                "[sip] media_realtime {p} is not a real-time priority (1-99)"
            ));
        }
        let domain_ok = !self.domain.is_empty()
            && self.domain.len() <= 200
            && self.domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !domain_ok {
            return Err(format!("[sip] domain {:?} is not a host name", self.domain));
        }
        if self.trunk_listen.is_some_and(|a| a.ip().is_unspecified()) {
            return Err(
                "[sip] trunk_listen must be a specific address (it goes into Via and Contact)"
                    .into(),
            );
        }
        if let Err(e) = crate::telephony::policy::from_dialing(
            &Default::default(),
            &self.region.to_ascii_uppercase(),
        ) {
            return Err(format!("[sip] region: {e}"));
        }
        if self.device_udp && self.trunk_listen.is_none() {
            return Err("[sip] device_udp needs trunk_listen (the UDP and TCP port)".into());
        }
        if self.digest_algorithms.is_empty() {
            return Err("[sip] digest_algorithms must name SHA-256, MD5 or both".into());
        }
        if self.min_expires_s == 0 || self.min_expires_s > self.max_expires_s {
            return Err("[sip] min_expires_s must be 1 or more and at most max_expires_s".into());
        }
        Ok(())
    }
}

/// Why the door cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SipError {
    /// No randomness for digest nonces.
    #[error("SIP digest: {0}")]
    Digest(#[from] crate::identity::digest::DigestError),
    /// The trunks' UDP socket cannot be used.
    #[error("SIP trunk socket: {0}")]
    Socket(std::io::Error),
}

/// The door.
pub struct Door {
    rt: Runtime,
    config: SipConfig,
    auth: Auth,
    registrar: Registrar,
    dialogs: Dialogs,
    forks: std::sync::Mutex<outbound::Forks>,
    subs: mwi::Subs,
    flows: Arc<Flows>,
    /// The trunks' UDP socket, if the server listens for trunks.
    udp: Option<Arc<udp::Udp>>,
    /// Trunks' registrations with their providers.
    registrations: register::Registrations,
    /// Connections kept to TCP and TLS trunks' proxies.
    links: link::Links,
    limits: transport::Limits,
    tokio: tokio::runtime::Handle,
    me: Weak<Door>,
}

/// The door's sockets.
pub struct Listeners {
    /// SIP over TLS: devices only.
    pub tls: tokio::net::TcpListener,
    /// `[sip] trunk_listen` over UDP: `udp` trunks' providers.
    pub trunk_udp: Option<tokio::net::UdpSocket>,
    /// `[sip] trunk_listen` over TCP: `tcp` trunks' providers.
    pub trunk_tcp: Option<tokio::net::TcpListener>,
    /// `[sip] trunk_tls_listen`: `tls` trunks' providers.
    pub trunk_tls: Option<tokio::net::TcpListener>,
}

/// Runs the SIP door on `listeners` until `shutdown` completes. `tls` is
/// the server's certificate without ALPN. The door becomes call
/// control's signalling side.
pub async fn run(
    rt: Runtime,
    listeners: Listeners,
    tls: Arc<rustls::ServerConfig>,
    config: SipConfig,
    throttle: ThrottleConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SipError> {
    use crate::tenant::TrunkTransport;
    let flows = Arc::new(Flows::default());
    let limits = transport::Limits {
        handshake_timeout: Duration::from_secs(config.handshake_timeout_s.max(1)),
        idle_timeout: Duration::from_secs(config.idle_timeout_s.max(1)),
        max_connections: config.max_connections.max(1),
        max_connections_per_address: config.max_connections_per_address.max(1),
    };
    let auth = Auth::new(throttle, &config.digest_algorithms)?;
    let (udp, timeouts) = match listeners.trunk_udp {
        Some(socket) => {
            let (u, rx) = udp::Udp::new(socket, flows.clone()).map_err(SipError::Socket)?;
            (Some(u), Some(rx))
        }
        None => (None, None),
    };
    let door = Arc::new_cyclic(|me| Door {
        rt: rt.clone(),
        config,
        auth,
        registrar: Registrar::default(),
        dialogs: Dialogs::default(),
        forks: Default::default(),
        subs: Default::default(),
        flows: flows.clone(),
        udp: udp.clone(),
        registrations: Default::default(),
        links: Default::default(),
        limits,
        tokio: tokio::runtime::Handle::current(),
        me: me.clone(),
    });
    rt.telephony()
        .set_signalling(Arc::new(SipSignalling(Arc::downgrade(&door))));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = vec![
        tokio::spawn(door.clone().supervise_registrations(stopped.clone())),
        tokio::spawn(door.clone().supervise_links(stopped.clone())),
    ];
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.changed().await;
    };
    // A provider's address is its trunk's; any other is a device's if
    // the operator lets devices use UDP and TCP, else nobody's.
    let device_udp = door.config.device_udp;
    let party_of = move |rt: &Runtime, ip: IpAddr, transport: TrunkTransport| {
        if rt.any_trunk_allows(ip, transport) {
            Some(transport::Party::Provider)
        } else if device_udp && transport != TrunkTransport::Tls {
            Some(transport::Party::Devices)
        } else {
            None
        }
    };
    if let (Some(u), Some(rx)) = (udp, timeouts) {
        let (door, rt) = (door.clone(), rt.clone());
        let stopped = until_stopped(stopped.clone());
        tasks.push(tokio::spawn(async move {
            let party_of = move |ip| party_of(&rt, ip, TrunkTransport::Udp);
            udp::serve(u, rx, door, party_of, stopped).await;
        }));
    }
    // Providers' own connections, each port for one transport: only
    // from an address a trunk over it allows.
    let trunk_ports = [
        (listeners.trunk_tcp, TrunkTransport::Tcp),
        (listeners.trunk_tls, TrunkTransport::Tls),
    ];
    for (listener, transport) in trunk_ports {
        let Some(listener) = listener else { continue };
        let (door, rt, flows) = (door.clone(), rt.clone(), flows.clone());
        let stopped = until_stopped(stopped.clone());
        let accept = match transport {
            TrunkTransport::Tls => transport::Accept::Tls(tls.clone()),
            _ => transport::Accept::Tcp,
        };
        tasks.push(tokio::spawn(async move {
            let party_of = move |ip| party_of(&rt, ip, transport);
            transport::serve(listener, accept, party_of, flows, door, limits, stopped).await;
        }));
    }
    // The devices' port: every connection is a device's, whatever its
    // address (a provider's address never turns a phone into a trunk).
    let accept = transport::Accept::Tls(tls);
    transport::serve(
        listeners.tls,
        accept,
        |_| Some(transport::Party::Devices),
        flows,
        door,
        limits,
        shutdown,
    )
    .await;
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

impl transport::Handler for Door {
    async fn message(self: Arc<Self>, flow: Arc<Flow>, m: Message) {
        if m.method().is_some() {
            self.request(&flow, m).await;
        } else {
            self.response(&flow, m).await;
        }
    }

    fn dropped(&self, _flow: &Flow, code: &'static str) {
        crate::metrics::SIP_DROPPED.inc(&[code]);
    }

    fn in_use(&self, id: u64) -> bool {
        // A device's UDP peer holding a registration is where calls to
        // it go: not forgotten for being quiet.
        self.carries_calls(id)
            || (self.flows.get(id).is_some_and(|f| f.is_udp()) && self.registrar.holds(id))
    }

    fn allowed(&self, flow: &Flow) -> bool {
        flow.party != transport::Party::Provider
            || self.rt.any_trunk_allows(flow.peer.ip(), flow.transport())
    }

    fn closed(&self, flow: &Flow) {
        self.registrar.flow_closed(flow.id);
        self.flow_gone(flow.id);
        self.subs_flow_gone(flow.id);
        // An offered call can no longer be answered; an answered one goes
        // on (its media does not need the flow) until either side ends it.
        for (leg, _) in self.dialogs.on_flow(flow.id) {
            if self
                .dialogs
                .remove_if(&leg, |d| d.state == State::Offered)
                .is_some()
            {
                self.rt.telephony().ended(&leg, Cause::Normal);
            }
        }
    }
}

impl Door {
    /// Whether flow `id` carries a call or a call ringing: it must not be
    /// forgotten as idle.
    fn carries_calls(&self, id: u64) -> bool {
        !self.dialogs.on_flow(id).is_empty() || self.forks_on(id)
    }
}

/// Runs `round` every `period` (a round late is skipped, not caught up)
/// until `stopped` changes: the supervisors' loop.
async fn every(
    period: Duration,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    mut round: impl FnMut(),
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => round(),
            _ = stopped.changed() => break,
        }
    }
}

/// What a trunk is called as a dialog's party (devices go by their name,
/// which has no `:`).
const TRUNK_PARTY: &str = "trunk:";

fn trunk_party(name: &str) -> String {
    format!("{TRUNK_PARTY}{name}")
}

/// Whether `flow` speaks for `trunk` of `tenant`: our link to it, or a
/// provider's flow over the trunk's transport from an address it allows.
fn trunk_speaks(flow: &Flow, tenant: &str, trunk: &crate::tenant::Trunk) -> bool {
    match &flow.party {
        transport::Party::Link(t, name) => t == tenant && *name == trunk.name,
        transport::Party::Provider => {
            flow.transport() == trunk.transport && trunk.allows(flow.peer.ip())
        }
        transport::Party::Devices => false,
    }
}

/// An identified caller of an INVITE, and what it called.
struct Calling {
    tenant: String,
    /// The device's name, or `trunk:{name}`.
    party: String,
    /// Who the plugin is told calls.
    shown: String,
    /// Calls this party may have at once.
    limit: usize,
    /// The number called (E.164 for a trunk's DID).
    number: String,
    route: Option<crate::tenant::Route>,
    /// SRTP required (devices over TLS).
    secure: bool,
    /// The trunk it came over.
    trunk: Option<String>,
    /// The user whose device calls (none from trunks).
    user: Option<String>,
}

/// What a REFER's `Refer-To` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ReferTo {
    /// A blind transfer to a number or extension.
    Number(String),
    /// An attended transfer: the call to replace (its Call-ID and its two
    /// tags, in either order).
    Replaces {
        call_id: String,
        tags: (String, String),
    },
}

/// RFC 3986 percent-decoding (no `+` for space: Call-IDs may hold one).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a REFER's `Refer-To` names: a number (its user part, separators
/// dropped: 1-32 of `0-9 * #`, or `+` and digits), or, with an embedded
/// `Replaces` (RFC 3891), the call to replace. Anything else is the SIP
/// answer to give: 400 (none, several, unreadable, other embedded
/// headers), 404 (not a number).
pub fn refer_target(m: &Message) -> Result<ReferTo, (u16, &'static str)> {
    let mut values = m.all("Refer-To");
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err((400, "Bad Request (one Refer-To)"));
    };
    if let Some((_, headers)) = value.split_once('?') {
        let headers = headers.split('>').next().unwrap_or_default();
        let mut embedded = headers.split('&');
        let replaces = match (embedded.next(), embedded.next()) {
            (Some(h), None) => h
                .strip_prefix("Replaces=")
                .or_else(|| h.strip_prefix("replaces=")),
            _ => None,
        }
        .ok_or((400, "Bad Request (only Replaces may be embedded)"))?;
        let replaces = unescape(replaces);
        let mut parts = replaces.split(';').map(str::trim);
        let call_id = parts.next().unwrap_or_default().to_string();
        let (mut to, mut from) = (None, None);
        for p in parts {
            match p.split_once('=') {
                Some(("to-tag", v)) => to = Some(v.to_string()),
                Some(("from-tag", v)) => from = Some(v.to_string()),
                _ => {}
            }
        }
        return match (call_id.is_empty() || call_id.len() > 256, to, from) {
            (false, Some(to), Some(from)) if to.len() <= 128 && from.len() <= 128 => {
                Ok(ReferTo::Replaces {
                    call_id,
                    tags: (to, from),
                })
            }
            _ => Err((400, "Bad Request (Replaces)")),
        };
    }
    let to = NameAddr::parse(value)
        .or_else(|_| NameAddr::parse(&format!("<{}>", value.trim())))
        .map_err(|_| (400, "Bad Request (Refer-To)"))?;
    let number: String = to
        .uri
        .user
        .unwrap_or_default()
        .chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
        .collect();
    let digits = number.strip_prefix('+').unwrap_or(&number);
    let ok = !digits.is_empty()
        && number.len() <= 32
        && if number.starts_with('+') {
            digits.bytes().all(|b| b.is_ascii_digit())
        } else {
            digits
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
        };
    if ok {
        Ok(ReferTo::Number(number))
    } else {
        Err((404, "Not Found (transfers go to numbers and extensions)"))
    }
}

/// The SDP body of `m`, if it has one (`Content-Type: application/sdp`,
/// parameters allowed, not empty, UTF-8).
fn sdp_body(m: &Message) -> Option<&str> {
    let is_sdp = m.header("Content-Type").is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
    });
    std::str::from_utf8(&m.body)
        .ok()
        .filter(|text| is_sdp && !text.is_empty())
}

/// What call control needs of an agreed SDP.
fn media_offer(agreed: &sdp::Agreed) -> MediaOffer {
    MediaOffer {
        remote: agreed.remote,
        payload_type: agreed.codec.payload_type(),
        dtmf: agreed.dtmf,
        srtp: agreed
            .srtp
            .as_ref()
            .map(|s| (s.suite, s.theirs.clone(), s.ours.clone())),
    }
}

/// A response to `req` with a fresh To tag.
fn answer(req: &Message, code: u16, reason: &str) -> Message {
    req.response(code, reason, Some(&random_hex(8)))
}

impl Door {
    async fn request(&self, flow: &Arc<Flow>, m: Message) {
        let method = m.method().unwrap_or_default().to_string();
        if method == "ACK" {
            return self.ack(flow, &m);
        }
        if m.header("Max-Forwards").map(str::trim) == Some("0") {
            flow.send(&answer(&m, 483, "Too Many Hops"));
            return;
        }
        if method != "CANCEL"
            && let Some(required) = m.header("Require")
        {
            let mut r = answer(&m, 420, "Bad Extension");
            r.push("Unsupported", required);
            flow.send(&r);
            return;
        }
        if flow.is_trunk() {
            // Trunks call and hang up; devices register over TLS only.
            match method.as_str() {
                "INVITE" if m.to().ok().and_then(|t| t.tag()).is_none() => {
                    return self.trunk_invite(flow, &m).await;
                }
                "REGISTER" | "SUBSCRIBE" | "REFER" => {
                    flow.send(&answer(
                        &m,
                        403,
                        "Forbidden (trunks do not register, subscribe or refer)",
                    ));
                    return;
                }
                _ => {}
            }
        }
        match method.as_str() {
            "REGISTER" => self.register(flow, &m),
            "INVITE" if m.to().ok().and_then(|t| t.tag()).is_some() => {
                self.reinvite(flow, &m).await;
            }
            "INVITE" => self.invite(flow, &m).await,
            "CANCEL" => self.cancel(flow, &m),
            "BYE" => self.bye(flow, &m),
            "REFER" => self.refer(flow, &m).await,
            "OPTIONS" => {
                let mut r = answer(&m, 200, "OK");
                r.push("Allow", ALLOW);
                r.push("Accept", "application/sdp");
                flow.send(&r);
            }
            "SUBSCRIBE" => self.subscribe(flow, &m),
            _ => {
                let mut r = answer(&m, 405, "Method Not Allowed");
                r.push("Allow", ALLOW);
                flow.send(&r);
            }
        }
    }

    /// The domain a request was sent to, and that domain's tenant.
    fn domain_of(&self, m: &Message) -> Option<(String, Option<String>)> {
        let uri = Uri::parse(m.uri()?).ok()?;
        let tenant = self.rt.tenant_of_sip_domain(&uri.host);
        Some((uri.host, tenant))
    }

    /// Sends a challenge or refusal for a verdict that is not `Ok`.
    fn refuse(flow: &Flow, m: &Message, verdict: Verdict, proxy: bool) {
        let r = match verdict {
            Verdict::Challenge(challenges) => {
                let (code, reason, header) = if proxy {
                    (407, "Proxy Authentication Required", "Proxy-Authenticate")
                } else {
                    (401, "Unauthorized", "WWW-Authenticate")
                };
                let mut r = answer(m, code, reason);
                for c in challenges {
                    r.push(header, c);
                }
                r
            }
            Verdict::Refuse(retry) => {
                let mut r = answer(m, 403, "Forbidden");
                if let Some(s) = retry {
                    r.push("Retry-After", s.to_string());
                }
                r
            }
            Verdict::Ok(_) => return,
        };
        flow.send(&r);
    }

    // ---- REGISTER (RFC 3261 §10.3) ----------------------------------------

    fn register(&self, flow: &Flow, m: &Message) {
        let Some((realm, tenant)) = self.domain_of(m) else {
            flow.send(&answer(m, 400, "Bad Request"));
            return;
        };
        let to = match m.to() {
            Ok(to) if to.uri.host == realm && to.uri.user.is_some() => to,
            _ => {
                flow.send(&answer(
                    m,
                    400,
                    "Bad Request (To is not a device of this domain)",
                ));
                return;
            }
        };
        let device_name = to.uri.user.clone().unwrap_or_default();
        let verdict = self.auth.check(
            &self.rt,
            m,
            &auth::Claim {
                header: "Authorization",
                realm: &realm,
                tenant: tenant.as_deref(),
                device: &device_name,
                source: flow.peer.ip(),
                over_tls: flow.is_tls(),
            },
        );
        let Verdict::Ok(device) = verdict else {
            return Self::refuse(flow, m, verdict, false);
        };
        flow.authenticated();
        let contacts = m.list("Contact");
        let default_expires = m
            .header("Expires")
            .and_then(|e| e.trim().parse::<u32>().ok())
            .unwrap_or(3600);
        if contacts.contains(&"*") {
            if contacts.len() != 1 || default_expires != 0 {
                flow.send(&answer(
                    m,
                    400,
                    "Bad Request (Contact: * alone, with Expires: 0)",
                ));
                return;
            }
            self.registrar.clear(&device.tenant, &device.name);
        }
        let mut bindings = self.registrar.lookup(&device.tenant, &device.name);
        for c in contacts.iter().filter(|c| **c != "*") {
            let Ok(contact) = NameAddr::parse(c) else {
                flow.send(&answer(m, 400, "Bad Request (Contact)"));
                return;
            };
            let expires = param(&contact.params, "expires")
                .and_then(|e| e.parse::<u32>().ok())
                .unwrap_or(default_expires);
            if expires > 0 && expires < self.config.min_expires_s {
                let mut r = answer(m, 423, "Interval Too Brief");
                r.push("Min-Expires", self.config.min_expires_s.to_string());
                flow.send(&r);
                return;
            }
            bindings = self.registrar.register(
                &device.tenant,
                &device.name,
                &contact.uri_text,
                flow.id,
                expires.min(self.config.max_expires_s),
            );
        }
        let mut r = answer(m, 200, "OK");
        let now = crate::support::clock::now_ms();
        for b in bindings {
            let left = b.expires_at_ms.saturating_sub(now).div_ceil(1000);
            r.push("Contact", format!("<{}>;expires={left}", b.contact));
        }
        flow.send(&r);
        self.mwi_registered(&device.tenant, &device.name);
    }

    // ---- INVITE from a device or a trunk (the B2BUA's inbound legs) ---------

    async fn invite(&self, flow: &Arc<Flow>, m: &Message) {
        let Some((realm, tenant)) = self.domain_of(m) else {
            flow.send(&answer(m, 400, "Bad Request"));
            return;
        };
        let from_user = m.from().ok().and_then(|f| f.uri.user).unwrap_or_default();
        let verdict = self.auth.check(
            &self.rt,
            m,
            &auth::Claim {
                header: "Proxy-Authorization",
                realm: &realm,
                tenant: tenant.as_deref(),
                device: &from_user,
                source: flow.peer.ip(),
                over_tls: flow.is_tls(),
            },
        );
        let Verdict::Ok(device) = verdict else {
            return Self::refuse(flow, m, verdict, true);
        };
        flow.authenticated();
        let number = Uri::parse(m.uri().unwrap_or_default())
            .ok()
            .and_then(|u| u.user)
            .unwrap_or_default();
        let route = self.rt.route(&device.tenant, &number);
        let caller = Calling {
            trunk: None,
            user: Some(device.user.clone()),
            shown: device.name.clone(),
            tenant: device.tenant,
            party: device.name,
            limit: MAX_CALLS_PER_DEVICE,
            number,
            route,
            // SRTP over TLS; a device allowed UDP/TCP speaks plain RTP there.
            secure: flow.is_tls(),
        };
        self.offer_call(flow, m, caller).await;
    }

    /// An INVITE from a trunk: over UDP or a provider's connection from
    /// an allow-listed address (the listeners dropped all others), or
    /// over our link to its proxy. The tenant is the Request-URI's domain
    /// if it is a tenant's, else the one tenant whose trunk allows the
    /// address over this transport (a link: its own trunk); only its
    /// DIDs are reached.
    async fn trunk_invite(&self, flow: &Arc<Flow>, m: &Message) {
        let Ok(uri) = Uri::parse(m.uri().unwrap_or_default()) else {
            flow.send(&answer(m, 400, "Bad Request"));
            return;
        };
        let mut allowing: Vec<_> = self
            .rt
            .trunks_allowing(flow.peer.ip())
            .into_iter()
            .filter(|(tenant, t)| trunk_speaks(flow, tenant, t))
            .collect();
        // A call to a registration's contact (`sip:{username}@us`) names
        // its trunk, whichever tenants share the provider's address.
        let called = uri.user.clone().unwrap_or_default();
        let registered: Vec<(String, crate::tenant::Trunk)> = allowing
            .iter()
            .filter(|(_, t)| t.register && t.username.as_deref() == Some(called.as_str()))
            .cloned()
            .collect();
        if registered.len() == 1 {
            allowing = registered;
        }
        match self.rt.tenant_of_sip_domain(&uri.host) {
            Some(t) => allowing.retain(|(tenant, _)| *tenant == t),
            None => {
                let first = allowing.first().map(|(t, _)| t.clone());
                if allowing.iter().any(|(t, _)| Some(t) != first.as_ref()) {
                    // Two tenants' trunks share this provider: only the
                    // domain can tell them apart.
                    allowing.clear();
                }
            }
        }
        let Some((tenant, trunk)) = allowing.into_iter().next() else {
            crate::metrics::SIP_DROPPED.inc(&["trunk_unmatched"]);
            flow.send(&answer(m, 403, "Forbidden"));
            return;
        };
        let mut called = uri.user.unwrap_or_default();
        if trunk.register && trunk.username.as_deref() == Some(called.as_str()) {
            // A call to our registered contact: the number is in To.
            called = m.to().ok().and_then(|t| t.uri.user).unwrap_or_default();
        }
        let (number, route) = match self.rt.did_route(&tenant, &called) {
            Some((n, r)) => (n, Some(r)),
            None => (called, None),
        };
        // The caller as the provider asserts it (RFC 3325), else From;
        // only a number is shown, anything else is anonymous.
        let asserted = m
            .header("P-Asserted-Identity")
            .and_then(|p| NameAddr::parse(p).ok())
            .or_else(|| m.from().ok())
            .and_then(|a| a.uri.user)
            .filter(|u| {
                let d = u.strip_prefix('+').unwrap_or(u);
                !d.is_empty() && d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit())
            });
        let caller = Calling {
            trunk: Some(trunk.name.clone()),
            user: None,
            shown: asserted.unwrap_or_else(|| "anonymous".into()),
            party: trunk_party(&trunk.name),
            tenant,
            limit: trunk.max_calls as usize,
            number,
            route,
            secure: trunk.secure_media(),
        };
        self.offer_call(flow, m, caller).await;
    }

    /// Offers an identified caller's INVITE to the plugin its number
    /// routes to.
    async fn offer_call(&self, flow: &Arc<Flow>, m: &Message, c: Calling) {
        let tag = m.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        if self.dialogs.leg_of(m.call_id(), &tag).is_some() {
            // A second INVITE with a live call's Call-ID and tag would
            // hide that call from its own BYE.
            flow.send(&answer(m, 400, "Bad Request (Call-ID and tag in use)"));
            return;
        }
        if self.calls_of(&c.tenant, &c.party) >= c.limit {
            let mut r = answer(m, 503, "Service Unavailable (too many calls)");
            r.push("Retry-After", "5");
            flow.send(&r);
            return;
        }
        flow.send(&answer(m, 100, "Trying"));
        let Some(route) = c.route else {
            flow.send(&answer(m, 404, "Not Found"));
            return;
        };
        let offer = match sdp_body(m) {
            Some(text) => sdp::parse(text),
            None => {
                // A late offer (no SDP in the INVITE) is not supported.
                flow.send(&answer(
                    m,
                    488,
                    "Not Acceptable Here (an SDP offer is required)",
                ));
                return;
            }
        };
        let policy = self.sdp_policy(c.secure, flow);
        let choice = match offer.and_then(|o| self.take_offer(flow, o, &policy)) {
            Ok(ch) => ch,
            Err(e) => {
                crate::metrics::SIP_DROPPED.inc(&[e.code()]);
                let mut r = answer(m, e.sip_status(), "Not Acceptable Here");
                r.push("Warning", format!("399 switchboard \"{}\"", e.code()));
                flow.send(&r);
                return;
            }
        };
        let (offer, choice) = choice;
        let agreed = &choice.agreed;
        let inbound = Inbound {
            tenant: c.tenant.clone(),
            plugin: route.plugin.clone(),
            args: route.args.clone().into_bytes(),
            caller: c.shown.clone(),
            callee: c.number.clone(),
            user: c.user.clone(),
            device: c.user.as_ref().map(|_| c.party.clone()),
            media: media_offer(agreed),
            trunk: c.trunk.clone(),
        };
        let (leg, media) = match self.rt.telephony().offer(inbound).await {
            Ok(x) => x,
            Err(e) => {
                tracing::info!(tenant = %c.tenant, error = %e, "SIP call refused");
                flow.send(&answer(m, 503, "Service Unavailable"));
                return;
            }
        };
        let mut ids = [0u8; 8];
        let _ = getrandom::fill(&mut ids);
        let session_id = u64::from_be_bytes(ids) >> 1;
        let sdp_addr = SocketAddr::new(self.media_ip(media, flow), media.port());
        let agreed = choice.answer(
            &offer,
            sdp::Local {
                addr: sdp_addr,
                session_id,
                session_version: 1,
            },
        );
        let mut dialog = Dialog::uas(
            leg.clone(),
            c.tenant,
            c.party,
            flow.id,
            m,
            random_hex(8),
            agreed.sdp,
            flow.our_uri(&c.number),
        );
        dialog.sdp_addr = sdp_addr;
        dialog.session = (session_id, 1);
        dialog.secure = c.secure;
        let early = self.dialogs.insert(dialog);
        // The plugin may have answered or ended the leg before its dialog
        // was filed.
        match early {
            Some(Early::Answer) => self.answer_leg(&leg),
            Some(Early::End(cause)) => self.end_leg(&leg, cause),
            None => {}
        }
    }

    /// What SDP a leg accepts: SRTP (SDES over TLS) for devices, plain
    /// RTP for trunks (no keys without TLS).
    fn sdp_policy(&self, secure: bool, flow: &Flow) -> sdp::Policy {
        sdp::Policy {
            srtp_required: secure,
            over_tls: flow.is_tls(),
            allow_loopback: self.config.allow_loopback_media,
            codecs: vec![sdp::Codec::Pcmu, sdp::Codec::Pcma],
        }
    }

    /// Chooses how to take `offer` under `policy`, refusing media aimed
    /// at the host's own ports.
    fn take_offer(
        &self,
        flow: &Flow,
        offer: sdp::Session,
        policy: &sdp::Policy,
    ) -> Result<(sdp::Session, sdp::Choice), sdp::SdpError> {
        let choice = sdp::choose(&offer, policy)?;
        self.not_ours(flow, choice.agreed.remote)?;
        Ok((offer, choice))
    }

    /// Refuses a far end's media address that is the host's own media
    /// port range (a caller aiming the host's RTP at its own ports would
    /// loop media or reach another call's leg).
    fn not_ours(&self, flow: &Flow, remote: SocketAddr) -> Result<(), sdp::SdpError> {
        let [lo, hi] = self.config.media_ports;
        let ours = [
            Some(self.config.media_bind),
            self.config.media_address,
            Some(flow.local.ip()),
        ];
        let own_ip =
            remote.ip().is_loopback() || ours.iter().flatten().any(|ip| *ip == remote.ip());
        if own_ip && (lo..=hi).contains(&remote.port()) {
            return Err(sdp::SdpError::NotAcceptable(
                "the media address is the host's own media port range".into(),
            ));
        }
        Ok(())
    }

    /// Calls a device or trunk (`trunk:NAME`) has now: answered, offered
    /// and ringing.
    fn calls_of(&self, tenant: &str, party: &str) -> usize {
        self.dialogs.count_of(tenant, party) + self.ringing_on(tenant, party)
    }

    /// A re-INVITE in an answered call (RFC 3261 §14; hold, a new address
    /// or key): its SDP is taken like an INVITE's, the leg's media follows
    /// it (same port, a fresh key of ours, still bridged), and the answer
    /// mirrors its direction. Anything unusable leaves the call as it was
    /// (RFC 3261 §14.2: `488`, `491`, `500`).
    async fn reinvite(&self, flow: &Arc<Flow>, m: &Message) {
        let (cseq, _) = m.cseq().unwrap_or_default();
        let Some((leg, d)) = self.dialog_of(flow, m) else {
            flow.send(&answer(m, 481, "Call/Transaction Does Not Exist"));
            return;
        };
        if d.state != (State::Answered { acked: true }) || cseq <= d.their_cseq {
            // Before the ACK of our 200 (§14.2), or an old request.
            let mut r = m.response(491, "Request Pending", None);
            r.push("Retry-After", "1");
            flow.send(&r);
            return;
        }
        self.dialogs.with(&leg, |d| d.their_cseq = cseq);
        // SRTP stays SRTP: a re-INVITE is read with the dialog's own rule
        // (a device registered over TLS and UDP cannot move an SRTP call
        // to plain RTP by sending it over UDP).
        let policy = self.sdp_policy(d.secure, flow);
        let chosen = match sdp_body(m) {
            Some(text) => sdp::parse(text).and_then(|o| self.take_offer(flow, o, &policy)),
            None => Err(sdp::SdpError::NotAcceptable(
                "a re-INVITE without an offer is not supported".into(),
            )),
        };
        let (offer, choice) = match chosen {
            Ok(x) => x,
            Err(e) => {
                crate::metrics::SIP_DROPPED.inc(&[e.code()]);
                let mut r = m.response(488, "Not Acceptable Here", None);
                r.push("Warning", format!("399 switchboard \"{}\"", e.code()));
                flow.send(&r);
                return;
            }
        };
        let media = media_offer(&choice.agreed);
        if self.rt.telephony().remedia(&leg, media).await.is_err() {
            flow.send(&m.response(500, "Server Internal Error", None));
            return;
        }
        // The far end sends only (music) or nothing: it holds the call.
        let on_hold = matches!(
            choice.agreed.direction,
            sdp::Direction::RecvOnly | sdp::Direction::Inactive
        );
        self.rt.telephony().hold(&leg, on_hold);
        let version = d.session.1 + 1;
        let sdp = choice.answer(
            &offer,
            sdp::Local {
                addr: d.sdp_addr,
                session_id: d.session.0,
                session_version: version,
            },
        );
        self.dialogs.with(&leg, |d| {
            d.session.1 = version;
            d.target = dialogs::contact_uri(m).unwrap_or_else(|| d.target.clone());
        });
        let mut r = m.response(200, "OK", None);
        r.push("Contact", format!("<{}>", d.contact));
        r.push("Allow", ALLOW);
        r.push("Content-Type", "application/sdp");
        r.body = sdp.sdp.into_bytes();
        flow.send(&r);
    }

    /// A REFER in an answered call: the device asks to transfer its call
    /// (a blind transfer, RFC 3515). Only from the dialog's own device
    /// over TLS, one at a time, to a number or extension (the Refer-To's
    /// user part, read in the tenant's plan; its host is never called).
    /// Accepted (`202`) and reported `100 Trying` at once; the plugin
    /// hears `transfer` and settles it: ending the leg tells the phone
    /// `200 OK`, declining (or 30 s without either) a failure.
    async fn refer(&self, flow: &Arc<Flow>, m: &Message) {
        let Some((leg, d)) = self.dialog_of(flow, m) else {
            flow.send(&answer(m, 481, "Call/Transaction Does Not Exist"));
            return;
        };
        let (cseq, _) = m.cseq().unwrap_or_default();
        if cseq <= d.their_cseq {
            flow.send(&m.response(500, "Server Internal Error (CSeq out of order)", None));
            return;
        }
        self.dialogs.with(&leg, |d| d.their_cseq = cseq);
        if d.state != (State::Answered { acked: true }) || d.refer.is_some() {
            let mut r = m.response(491, "Request Pending", None);
            r.push("Retry-After", "1");
            flow.send(&r);
            return;
        }
        let target = match refer_target(m) {
            Ok(ReferTo::Number(n)) => Ok(n),
            Ok(ReferTo::Replaces { call_id, tags }) => {
                // The call to replace must be another of this device's
                // answered calls, named by its Call-ID and both tags.
                let other = [&tags.0, &tags.1].into_iter().find_map(|theirs| {
                    let leg = self.dialogs.leg_of(&call_id, theirs)?;
                    self.dialogs
                        .with(&leg, |o| {
                            let ours = if theirs == &tags.0 { &tags.1 } else { &tags.0 };
                            (o.tag == *ours
                                && o.tenant == d.tenant
                                && o.device == d.device
                                && leg != d.leg)
                                .then(|| leg.clone())
                        })
                        .flatten()
                });
                match other {
                    Some(o) => Err(o),
                    None => {
                        flow.send(&m.response(403, "Forbidden (no such call of yours)", None));
                        return;
                    }
                }
            }
            Err((code, reason)) => {
                flow.send(&m.response(code, reason, None));
                return;
            }
        };
        // Filed before the plugin can hear of it, so its answer finds it.
        self.dialogs.with(&leg, |d| d.refer = Some(cseq));
        let mut r = m.response(202, "Accepted", None);
        r.push("Contact", format!("<{}>", d.contact));
        flow.send(&r);
        self.refer_progress(&leg, "100 Trying", false);
        let asked = match &target {
            Ok(number) => self.rt.telephony().transfer(&leg, number).await,
            Err(other) => self.rt.telephony().transfer_attended(&leg, other).await,
        };
        if asked.is_err() {
            self.refer_progress(&leg, "403 Forbidden", true);
        }
    }

    /// Sends the NOTIFY of a leg's pending REFER (none if there is none).
    fn refer_progress(&self, leg: &str, status: &str, done: bool) {
        let Some(d) = self.dialogs.with(leg, |d| d.clone()) else {
            return;
        };
        let Some(flow) = self.flow_for(&d) else {
            // Nowhere to tell it; a settled transfer is still settled.
            if done {
                self.dialogs.with(leg, |d| d.refer = None);
            }
            return;
        };
        let notify = self
            .dialogs
            .with(leg, |d| d.refer_notify(&flow.via(), status, done))
            .flatten();
        if let Some(n) = notify {
            flow.send(&n);
        }
    }

    /// The dialog an in-dialog request names (its Call-ID, the device's
    /// tag and ours), if `flow` speaks for its device.
    fn dialog_of(&self, flow: &Flow, m: &Message) -> Option<(String, Dialog)> {
        let tag = m.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let ours = m.to().ok().and_then(|t| t.tag());
        let leg = self.dialogs.leg_of(m.call_id(), &tag)?;
        let d = self.dialogs.with(&leg, |d| d.clone())?;
        let own = Some(&d.tag) == ours.as_ref()
            && self.speaks_for(flow, &(d.tenant.clone(), d.device.clone(), d.flow));
        own.then_some((leg, d))
    }

    fn ack(&self, flow: &Flow, m: &Message) {
        let tag = m.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let ours = m.to().ok().and_then(|t| t.tag());
        if let Some(leg) = self.dialogs.leg_of(m.call_id(), &tag) {
            // Our tag too: an ACK must name the dialog our 200 made.
            let owner = self.dialogs.with(&leg, |d| {
                (Some(&d.tag) == ours.as_ref())
                    .then(|| (d.tenant.clone(), d.device.clone(), d.flow))
            });
            if owner.flatten().is_some_and(|o| self.speaks_for(flow, &o)) {
                self.dialogs.with(&leg, |d| {
                    if d.state == (State::Answered { acked: false }) {
                        d.state = State::Answered { acked: true };
                    }
                });
            }
        }
    }

    /// Whether `flow` speaks for the device of a dialog `(tenant, device,
    /// its flow)`: it is the dialog's own connection, or one the device
    /// registered over. In-dialog requests carry no credentials; this
    /// keeps another connection that learnt the ids out.
    fn speaks_for(&self, flow: &Flow, (tenant, device, own): &(String, String, u64)) -> bool {
        if let Some(name) = device.strip_prefix(TRUNK_PARTY) {
            // A trunk's provider: any address its trunk allows, over the
            // trunk's transport.
            return self
                .rt
                .trunk(tenant, name)
                .is_some_and(|t| trunk_speaks(flow, tenant, &t));
        }
        *own == flow.id
            || self
                .registrar
                .lookup(tenant, device)
                .iter()
                .any(|b| b.flow == flow.id)
    }

    fn cancel(&self, flow: &Flow, m: &Message) {
        let tag = m.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let leg = self.dialogs.leg_of(m.call_id(), &tag);
        // Only the INVITE's own transaction (same branch, same device) may
        // cancel it, and only before its final answer: checked and removed
        // in one step, so the plugin's answer cannot slip in between.
        let removed = leg.as_ref().and_then(|leg| {
            self.dialogs.remove_if(leg, |d| {
                d.state == State::Offered
                    && d.invite.as_ref().and_then(Message::branch) == m.branch()
                    && self.speaks_for(flow, &(d.tenant.clone(), d.device.clone(), d.flow))
            })
        });
        let (Some(leg), Some(d)) = (leg, removed) else {
            flow.send(&answer(m, 481, "Call/Transaction Does Not Exist"));
            return;
        };
        flow.send(&m.response(200, "OK", None));
        if let Some(r) = d.response(487, "Request Terminated") {
            flow.send(&r);
        }
        self.rt.telephony().ended(&leg, Cause::Normal);
    }

    fn bye(&self, flow: &Flow, m: &Message) {
        let tag = m.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let ours = m.to().ok().and_then(|t| t.tag());
        let removed = self.dialogs.leg_of(m.call_id(), &tag).and_then(|leg| {
            self.dialogs.remove_if(&leg, |d| {
                Some(&d.tag) == ours.as_ref()
                    && self.speaks_for(flow, &(d.tenant.clone(), d.device.clone(), d.flow))
            })
        });
        let Some(d) = removed else {
            flow.send(&answer(m, 481, "Call/Transaction Does Not Exist"));
            return;
        };
        flow.send(&m.response(200, "OK", None));
        self.rt.telephony().ended(&d.leg, Cause::Normal);
    }

    /// The flow to reach a dialog's device on: its own, else the device's
    /// newest registration.
    fn flow_for(&self, d: &Dialog) -> Option<Arc<Flow>> {
        self.flows
            .get(d.flow)
            .or_else(|| match d.device.strip_prefix(TRUNK_PARTY) {
                // A trunk's link that was connected again since.
                Some(name) => self
                    .rt
                    .trunk(&d.tenant, name)
                    .and_then(|t| self.trunk_flow(&d.tenant, &t)),
                None => self
                    .registrar
                    .lookup(&d.tenant, &d.device)
                    .iter()
                    .rev()
                    .find_map(|b| self.flows.get(b.flow)),
            })
    }

    /// A device was removed or got a new password: what it holds under
    /// its old credentials ends now (registrations, subscriptions, calls).
    fn device_changed(&self, tenant: &str, device: &str) {
        self.registrar.clear(tenant, device);
        self.subs_device_gone(tenant, device);
        self.cancel_branches_of(tenant, device, |_| true);
        for leg in self.dialogs.legs_of(tenant, device) {
            self.end_leg(&leg, Cause::Normal);
            self.rt.telephony().ended(&leg, Cause::Normal);
        }
    }

    /// A device may no longer use UDP/TCP: its registrations and calls
    /// over them end now; over TLS they go on.
    fn device_plain_off(&self, tenant: &str, device: &str) {
        let plain = |flow: u64| self.flows.get(flow).is_none_or(|f| !f.is_tls());
        self.registrar.clear_where(tenant, device, plain);
        // Nothing more reaches it there: its subscriptions over UDP/TCP
        // end, and calls still ringing it there stop.
        self.subs_device_off(tenant, device, plain);
        self.cancel_branches_of(tenant, device, plain);
        for leg in self.dialogs.legs_of(tenant, device) {
            // A call that began over UDP/TCP (plain RTP) ends; one that
            // began over TLS goes on, wherever its connection is now.
            let over_plain = self.dialogs.with(&leg, |d| !d.secure).unwrap_or(false);
            if over_plain {
                self.end_leg(&leg, Cause::Normal);
                self.rt.telephony().ended(&leg, Cause::Normal);
            }
        }
    }

    // ---- what call control asks ----------------------------------------------

    fn answer_leg(&self, leg: &str) {
        if self.dialogs.early(leg, Early::Answer) {
            return;
        }
        let Some(d) = self.dialogs.with(leg, |d| {
            (d.state == State::Offered).then(|| {
                d.state = State::Answered { acked: false };
                d.clone()
            })
        }) else {
            return;
        };
        let Some(d) = d else { return };
        match (self.flow_for(&d), d.ok()) {
            (Some(flow), Some(ok)) if flow.send(&ok) => {}
            _ => {
                self.dialogs.remove(leg);
                self.rt.telephony().ended(leg, Cause::Normal);
                return;
            }
        }
        // No ACK, no call (RFC 3261 §13.3.1.4).
        let me = self.me.clone();
        let leg = leg.to_string();
        self.tokio.spawn(async move {
            tokio::time::sleep(dialogs::ACK_TIMEOUT).await;
            let Some(door) = me.upgrade() else { return };
            let unacked = door
                .dialogs
                .with(&leg, |d| d.state == State::Answered { acked: false })
                .unwrap_or(false);
            if unacked {
                door.end_leg(&leg, Cause::Timeout);
                door.rt.telephony().ended(&leg, Cause::Timeout);
            }
        });
    }

    fn end_leg(&self, leg: &str, cause: Cause) {
        if self.cancel_fork(leg) {
            return;
        }
        if self.dialogs.early(leg, Early::End(cause)) {
            return;
        }
        let Some(mut d) = self.dialogs.remove(leg) else {
            return;
        };
        let Some(flow) = self.flow_for(&d) else {
            return;
        };
        if cause == Cause::Normal
            && let Some(n) = d.refer_notify(&flow.via(), "200 OK", true)
        {
            // The plugin ended a leg whose phone asked for a transfer:
            // the transfer went through.
            flow.send(&n);
        }
        let m = match d.state {
            State::Offered => {
                let (code, reason) = dialogs::refusal(cause);
                d.response(code, reason)
            }
            State::Answered { .. } => Some(d.bye(&flow.via())),
        };
        if let Some(m) = m {
            flow.send(&m);
        }
    }
}

/// Call control's view of the door.
struct SipSignalling(Weak<Door>);

impl Signalling for SipSignalling {
    fn answer(&self, leg: &str) {
        if let Some(door) = self.0.upgrade() {
            door.answer_leg(leg);
        }
    }

    fn end(&self, leg: &str, cause: Cause) {
        if let Some(door) = self.0.upgrade() {
            door.end_leg(leg, cause);
        }
    }

    fn originate(&self, call: Outbound) {
        if let Some(door) = self.0.upgrade() {
            door.originate(call);
        }
    }

    fn mwi_changed(&self, tenant: &str, user: &str) {
        if let Some(door) = self.0.upgrade() {
            door.mwi_changed(tenant, user);
        }
    }

    fn transfer_failed(&self, leg: &str, cause: Cause) {
        if let Some(door) = self.0.upgrade() {
            let (code, reason) = dialogs::refusal(cause);
            door.refer_progress(leg, &format!("{code} {reason}"), true);
        }
    }

    fn device_changed(&self, tenant: &str, device: &str) {
        if let Some(door) = self.0.upgrade() {
            door.device_changed(tenant, device);
        }
    }

    fn device_plain_off(&self, tenant: &str, device: &str) {
        if let Some(door) = self.0.upgrade() {
            door.device_plain_off(tenant, device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refer(to: &[&str]) -> Message {
        let mut text = String::from(
            "REFER sip:x@acme.localhost SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5000;branch=z9hG4bK1\r\n\
             From: <sip:a@acme.localhost>;tag=1\r\nTo: <sip:x@acme.localhost>;tag=2\r\n\
             Call-ID: c1\r\nCSeq: 2 REFER\r\n",
        );
        for t in to {
            text.push_str(&format!("Refer-To: {t}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn refer_to_names_a_number_or_the_call_to_replace() {
        let ok = |t: &str| refer_target(&refer(&[t]));
        assert_eq!(
            ok("<sip:2-01@acme.localhost>"),
            Ok(ReferTo::Number("201".into()))
        );
        assert_eq!(
            ok("sip:+442079460018@x"),
            Ok(ReferTo::Number("+442079460018".into()))
        );
        assert_eq!(
            ok("<sip:201@acme.localhost?Replaces=abc%40host%3Bto-tag%3Dt1%3Bfrom-tag%3Df1>"),
            Ok(ReferTo::Replaces {
                call_id: "abc@host".into(),
                tags: ("t1".into(), "f1".into()),
            })
        );
        // A `+` in a Call-ID stays a `+`.
        assert!(matches!(
            ok("<sip:x@y?Replaces=a+b%3Bfrom-tag%3Df%3Bto-tag%3Dt>"),
            Ok(ReferTo::Replaces { call_id, .. }) if call_id == "a+b"
        ));
        for (bad, code) in [
            ("<sip:bob@acme.localhost>", 404),
            ("<sip:1234567890123456789012345678901234@x>", 404),
            ("<sip:x@y?Replaces=abc>", 400),
            ("<sip:x@y?Replaces=abc%3Bto-tag%3Dt>", 400),
            ("<sip:x@y?Subject=hi>", 400),
            (
                "<sip:x@y?Subject=hi&Replaces=a%3Bto-tag%3Dt%3Bfrom-tag%3Df>",
                400,
            ),
            ("<mailto:x@y>", 400),
        ] {
            assert_eq!(ok(bad).map_err(|e| e.0), Err(code), "{bad}");
        }
        assert_eq!(refer_target(&refer(&[])).map_err(|e| e.0), Err(400));
        assert_eq!(
            refer_target(&refer(&["<sip:1@x>", "<sip:2@x>"])).map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(unescape("%41%zz%4"), "A%zz%4");
    }
}
