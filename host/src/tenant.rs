//! The tenant registry: which tenants exist, their limits (SPEC K5), and for
//! each the plugins it enabled — pinned version, granted capabilities and
//! validated settings (SPEC K3, K7). Records live in the store under
//! `sys/tenant/`; an in-memory copy answers the hot path.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use switchboard_signing::Capability;

/// Per-tenant limits. Defaults suit an interactive UC workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one plugin call, nested calls included.
    pub deadline_ms: u64,
    /// Cap on one instance's linear memory.
    pub memory_bytes: u64,
    /// Bytes a call may pass to host functions (keys, values, logs...).
    pub host_bytes_per_call: u64,
    /// Largest response a plugin may return.
    pub response_bytes: u64,
    /// Calls of this tenant running at once.
    pub concurrency: u32,
    /// How long a call waits for a free slot before `tenant_busy`.
    pub queue_timeout_ms: u64,
    /// Bytes the tenant may store: keys plus sealed values and blob chunks.
    pub storage_bytes: u64,
    /// Blob bytes one owner (user) may store, e.g. their recordings.
    pub owner_storage_bytes: u64,
    /// Plugin requests per second the gateway admits for the tenant
    /// (bursts of twice that); more are answered 429 with `Retry-After`.
    pub requests_per_second: u32,
    /// The tenant's weight on the plugin executor when tenants compete for
    /// it (SPEC K5): a tenant with 200 gets twice the CPU of one with 100.
    pub cpu_share: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 2_000,
            memory_bytes: 64 << 20,
            host_bytes_per_call: 64 << 20,
            response_bytes: 16 << 20,
            concurrency: 32,
            queue_timeout_ms: 2_000,
            storage_bytes: 100 << 30,
            owner_storage_bytes: 5 << 30,
            requests_per_second: 500,
            cpu_share: 100,
        }
    }
}

impl Limits {
    /// Refuses limits the host cannot honour.
    pub fn validate(&self, max_memory_bytes: u64) -> Result<(), String> {
        if self.deadline_ms == 0 || self.deadline_ms > 300_000 {
            return Err("deadline_ms must be between 1 and 300000".into());
        }
        if self.memory_bytes < (1 << 20) || self.memory_bytes > max_memory_bytes {
            return Err(format!(
                "memory_bytes must be between 1 MiB and the host's slot size of {max_memory_bytes} bytes"
            ));
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err("concurrency must be between 1 and 1024".into());
        }
        if self.response_bytes == 0 || self.host_bytes_per_call == 0 {
            return Err("response_bytes and host_bytes_per_call must be positive".into());
        }
        if self.storage_bytes == 0 || self.owner_storage_bytes == 0 {
            return Err("storage_bytes and owner_storage_bytes must be positive".into());
        }
        if self.requests_per_second == 0 || self.requests_per_second > 1_000_000 {
            return Err("requests_per_second must be between 1 and 1000000".into());
        }
        if self.cpu_share == 0 || self.cpu_share > 10_000 {
            return Err("cpu_share must be between 1 and 10000".into());
        }
        if self.queue_timeout_ms > 60_000 {
            return Err("queue_timeout_ms must be at most 60000".into());
        }
        Ok(())
    }
}

/// One plugin as a tenant enabled it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enablement {
    pub version: semver::Version,
    pub grants: BTreeSet<Capability>,
    /// The admin's settings as given (defaults are applied on read).
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: String,
    pub region: String,
    pub limits: Limits,
    pub plugins: BTreeMap<String, Enablement>,
    /// Publisher key ids this tenant accepts (SPEC S2); `None`: every key
    /// the operator trusts.
    #[serde(default)]
    pub publishers: Option<BTreeSet<String>>,
    /// The highest version of each plugin this tenant has run, for rollback
    /// protection (SPEC S3).
    #[serde(default)]
    pub highest: BTreeMap<String, semver::Version>,
    /// Retention per class in days, overriding the defaults (SPEC D4);
    /// `None` keeps objects of that class until they are deleted.
    #[serde(default)]
    pub retention: BTreeMap<String, Option<u32>>,
    /// A legal hold on the whole tenant: nothing of it is deleted.
    #[serde(default)]
    pub legal_hold: bool,
    /// Random per creation: a call that ran for a deleted tenant cannot
    /// commit into a new tenant of the same id.
    #[serde(default)]
    pub incarnation: String,
    /// How the tenant's users dial and what they may reach (SPEC T1).
    #[serde(default)]
    pub dialing: Dialing,
    /// The numbers callers reach and the plugins that take their calls
    /// (SPEC T2).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// SIP trunks to the telephone network (SPEC T2): who may send calls
    /// in, where calls out go. Passwords are apart, in the tenant's
    /// sealed store.
    #[serde(default)]
    pub trunks: Vec<Trunk>,
}

/// Most routes a tenant has.
pub const MAX_ROUTES: usize = 1000;
/// Longest route arguments, in bytes.
pub const MAX_ROUTE_ARGS: usize = 1024;

/// A number (an extension, a DID in E.164, a feature code) and the plugin
/// that takes the calls to it, with arguments for that plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// What the caller dials: 1-32 of `0-9 * #`, or `+` and digits; or a
    /// pattern (`_` first, Asterisk's syntax: `X` any digit, `Z` 1-9,
    /// `N` 2-9, `[1-5]` a set, `.` one or more of anything, `!` zero or
    /// more) that a device's call matches when no number does.
    pub number: String,
    /// The plugin (enabled, granted `calls`) that gets the call.
    pub plugin: String,
    /// Handed to the plugin with the call (e.g. the menu or mailbox).
    #[serde(default)]
    pub args: String,
}

impl Route {
    /// Checks a tenant's whole route list: well-formed numbers, each once,
    /// within the bounds.
    pub fn check_all(routes: &[Route]) -> Result<(), String> {
        if routes.len() > MAX_ROUTES {
            return Err(format!("a tenant has at most {MAX_ROUTES} routes"));
        }
        let mut seen = BTreeSet::new();
        for r in routes {
            let n = r.number.as_str();
            let digits = n.strip_prefix('+').unwrap_or(n);
            let ok = !digits.is_empty()
                && n.len() <= 32
                && if let Some(pattern) = n.strip_prefix('_') {
                    parse_pattern(pattern).is_some()
                } else if n.starts_with('+') {
                    digits.bytes().all(|b| b.is_ascii_digit())
                } else {
                    digits
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
                };
            if !ok {
                return Err(format!(
                    "route number {:?}: 1-32 of 0-9 * #, + and digits, or a _pattern",
                    n.chars().take(40).collect::<String>()
                ));
            }
            if !seen.insert(n) {
                return Err(format!("route number {n} is given twice"));
            }
            if r.plugin.is_empty()
                || r.plugin.len() > 64
                || !r
                    .plugin
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!("route {n}: plugin name {:?}", r.plugin));
            }
            if r.args.len() > MAX_ROUTE_ARGS {
                return Err(format!("route {n}: args over {MAX_ROUTE_ARGS} bytes"));
            }
        }
        Ok(())
    }

    /// Whether the route is a pattern (`_…`).
    pub fn is_pattern(&self) -> bool {
        self.number.starts_with('_')
    }

    /// Whether `dialled` is this route's number, or matches its pattern.
    pub fn matches(&self, dialled: &str) -> bool {
        match self.number.strip_prefix('_') {
            Some(p) => parse_pattern(p).is_some_and(|toks| pattern_matches(&toks, dialled)),
            None => self.number == dialled,
        }
    }
}

/// One element of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternTok {
    /// One character of the set.
    One(Vec<u8>),
    /// One or more of anything (`.`), last.
    OneOrMore,
    /// Zero or more of anything (`!`), last.
    Any,
}

/// A route pattern's elements (after its `_`); `None` if malformed.
fn parse_pattern(p: &str) -> Option<Vec<PatternTok>> {
    let mut toks = Vec::new();
    let mut chars = p.bytes().peekable();
    while let Some(c) = chars.next() {
        let tok = match c.to_ascii_uppercase() {
            b'X' => PatternTok::One((b'0'..=b'9').collect()),
            b'Z' => PatternTok::One((b'1'..=b'9').collect()),
            b'N' => PatternTok::One((b'2'..=b'9').collect()),
            b'.' | b'!' if chars.peek().is_some() => return None,
            b'.' => PatternTok::OneOrMore,
            b'!' => PatternTok::Any,
            b'[' => {
                let mut set = Vec::new();
                loop {
                    match chars.next()? {
                        b']' => break,
                        d if d.is_ascii_digit() => {
                            if chars.peek() == Some(&b'-') {
                                chars.next();
                                let hi = chars.next().filter(u8::is_ascii_digit)?;
                                if hi < d {
                                    return None;
                                }
                                set.extend(d..=hi);
                            } else {
                                set.push(d);
                            }
                        }
                        _ => return None,
                    }
                }
                if set.is_empty() {
                    return None;
                }
                PatternTok::One(set)
            }
            d if d.is_ascii_digit() || matches!(d, b'*' | b'#' | b'+') => PatternTok::One(vec![d]),
            _ => return None,
        };
        toks.push(tok);
    }
    (!toks.is_empty()).then_some(toks)
}

/// Whether `dialled` (a number: `0-9 * # +` only, not empty) matches.
fn pattern_matches(toks: &[PatternTok], dialled: &str) -> bool {
    let dial = |b: &u8| b.is_ascii_digit() || matches!(b, b'*' | b'#' | b'+');
    if dialled.is_empty() || !dialled.bytes().all(|b| dial(&b)) {
        return false;
    }
    let mut rest = dialled.as_bytes();
    for tok in toks {
        match tok {
            PatternTok::One(set) => match rest.split_first() {
                Some((c, more)) if set.contains(c) => rest = more,
                _ => return false,
            },
            PatternTok::OneOrMore => return !rest.is_empty(),
            PatternTok::Any => return true,
        }
    }
    rest.is_empty()
}

/// Most trunks a tenant has.
pub const MAX_TRUNKS: usize = 16;
/// Most addresses one trunk allow-lists.
pub const MAX_TRUNK_ADDRESSES: usize = 16;
/// Most caller-id patterns one trunk has.
pub const MAX_TRUNK_CALLER_IDS: usize = 64;
/// Calls one trunk carries at once unless set.
pub const DEFAULT_TRUNK_CALLS: u32 = 100;

/// A SIP trunk (SPEC T2): a provider's signalling reaches the host over
/// UDP only from the allow-listed `addresses`; calls out go to `proxy`.
/// Media is plain RTP (SDES keys never travel without TLS): allow-listing
/// a trunk is the admin allowing that, e.g. on a private link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trunk {
    /// 1-32 of `a-z 0-9 -`.
    pub name: String,
    /// Where the provider's requests may come from: addresses or networks
    /// (`203.0.113.7`, `198.51.100.0/28`, `2001:db8::/64`). Anything else
    /// is dropped unheard.
    pub addresses: Vec<String>,
    /// Where calls out go (`ip:port`, UDP); `None`: inbound only.
    #[serde(default)]
    pub proxy: Option<std::net::SocketAddr>,
    /// The user name for the provider's digest challenges to our calls
    /// (the password is set apart and never shown).
    #[serde(default)]
    pub username: Option<String>,
    /// The number calls out show when the caller's own may not be shown
    /// (E.164); `None`: anonymous (RFC 3323).
    #[serde(default)]
    pub caller_id: Option<String>,
    /// Numbers calls out may show besides the tenant's own DIDs (its `+`
    /// routes): `+digits` or `+digits*`.
    #[serde(default)]
    pub caller_ids: Vec<String>,
    /// Calls at once over this trunk, in and out.
    #[serde(default = "Trunk::default_calls")]
    pub max_calls: u32,
    /// Register with the provider (RFC 3261 §10) at the proxy, with the
    /// user name and password, so its calls for us reach our address;
    /// `false`: the provider knows our address (IP authentication).
    #[serde(default)]
    pub register: bool,
    /// The provider's SIP domain for the registration's address of record
    /// and Request-URI (`sip.provider.example`); `None`: the proxy's
    /// address. Requests still go to the proxy only.
    #[serde(default)]
    pub domain: Option<String>,
    /// Set up by an operator for the tenant (the operator's contract with
    /// the provider): the tenant's admins see it (never its password) but
    /// cannot change or remove it, and a call out over it shows only the
    /// numbers the trunk itself allows (`caller_ids`, `caller_id`), never
    /// one merely because a `+` route of the tenant claims it.
    #[serde(default)]
    pub managed: bool,
    /// How signalling travels: `udp` (the default; `[sip] trunk_listen`),
    /// `tcp` (the same address) or `tls` (`[sip] trunk_tls_listen` for
    /// the provider's connections; ours go to `proxy`, verified).
    #[serde(default)]
    pub transport: TrunkTransport,
    /// Media as SRTP with SDES keys: only over `tls` (keys never travel
    /// in clear); `None`: SRTP over `tls`, plain RTP otherwise.
    #[serde(default)]
    pub srtp: Option<bool>,
    /// The name the provider's certificate must show (`tls`); `None`:
    /// `domain`, else the proxy's IP address.
    #[serde(default)]
    pub tls_name: Option<String>,
    /// PEM certificates to trust for this provider besides Mozilla's
    /// roots (`tls`; a private CA or the provider's own certificate).
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// The numbers calls out over this trunk may go to: E.164 prefixes
    /// (`+44`, `+4420`) or emergency digits as dialled (`999`); empty:
    /// any. A call out takes the trunks whose prefix it matches, the
    /// longest match first (see `Trunk::rank`).
    #[serde(default)]
    pub prefixes: Vec<String>,
}

/// How a trunk's signalling travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl TrunkTransport {
    /// The transport's name in Via (`UDP`, `TCP`, `TLS`).
    pub fn via_name(self) -> &'static str {
        match self {
            TrunkTransport::Udp => "UDP",
            TrunkTransport::Tcp => "TCP",
            TrunkTransport::Tls => "TLS",
        }
    }
}

/// Largest `tls_ca` a trunk holds (PEM text).
pub const MAX_TRUNK_CA_BYTES: usize = 32 * 1024;

impl Default for Trunk {
    /// A trunk with nothing set (no name: `check` refuses it until one is
    /// given), for building one field by field.
    fn default() -> Self {
        Trunk {
            name: String::new(),
            addresses: Vec::new(),
            proxy: None,
            username: None,
            caller_id: None,
            caller_ids: Vec::new(),
            max_calls: DEFAULT_TRUNK_CALLS,
            register: false,
            domain: None,
            managed: false,
            transport: TrunkTransport::Udp,
            srtp: None,
            tls_name: None,
            tls_ca: None,
            prefixes: Vec::new(),
        }
    }
}

impl Trunk {
    fn default_calls() -> u32 {
        DEFAULT_TRUNK_CALLS
    }

    /// Checks a tenant's whole trunk list.
    pub fn check_all(trunks: &[Trunk]) -> Result<(), String> {
        if trunks.len() > MAX_TRUNKS {
            return Err(format!("a tenant has at most {MAX_TRUNKS} trunks"));
        }
        let mut seen = BTreeSet::new();
        for t in trunks {
            t.check()?;
            if !seen.insert(t.name.as_str()) {
                return Err(format!("trunk {} is given twice", t.name));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!(
                "trunk name {:?}: 1-32 of a-z 0-9 -",
                self.name.chars().take(40).collect::<String>()
            ));
        }
        let n = &self.name;
        if self.addresses.is_empty() || self.addresses.len() > MAX_TRUNK_ADDRESSES {
            return Err(format!(
                "trunk {n}: 1-{MAX_TRUNK_ADDRESSES} addresses calls may come from"
            ));
        }
        for a in &self.addresses {
            let net = Net::parse(a).map_err(|e| format!("trunk {n}: {e}"))?;
            if net.ip.is_unspecified() || net.ip.is_multicast() {
                return Err(format!("trunk {n}: address {a} cannot send calls"));
            }
        }
        if let Some(p) = self.proxy
            && (p.ip().is_unspecified() || p.ip().is_multicast() || p.port() == 0)
        {
            return Err(format!("trunk {n}: proxy {p} cannot take calls"));
        }
        if let Some(p) = self.proxy
            && !self.allows(p.ip())
        {
            return Err(format!(
                "trunk {n}: proxy {p} must be one of its addresses (its answers come from there)"
            ));
        }
        if let Some(u) = &self.username {
            let ok = !u.is_empty()
                && u.len() <= 64
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%".contains(&b));
            if !ok {
                return Err(format!("trunk {n}: username: 1-64 SIP user characters"));
            }
        }
        if self.register && (self.proxy.is_none() || self.username.is_none()) {
            return Err(format!(
                "trunk {n}: registering needs a proxy and a username (and a password)"
            ));
        }
        if let Some(d) = &self.domain
            && !is_host_name(d)
        {
            return Err(format!("trunk {n}: domain {d:?} is not a host name"));
        }
        if let Some(c) = &self.caller_id
            && !is_e164(c)
        {
            return Err(format!("trunk {n}: caller_id {c:?} is not an E.164 number"));
        }
        if self.caller_ids.len() > MAX_TRUNK_CALLER_IDS {
            return Err(format!(
                "trunk {n}: at most {MAX_TRUNK_CALLER_IDS} caller_ids"
            ));
        }
        for p in &self.caller_ids {
            if !is_e164(p.strip_suffix('*').unwrap_or(p)) {
                return Err(format!(
                    "trunk {n}: caller_ids {p:?}: +digits, or +digits* for a prefix"
                ));
            }
        }
        if self.max_calls == 0 || self.max_calls > 10_000 {
            return Err(format!("trunk {n}: max_calls 1-10000"));
        }
        if self.prefixes.len() > MAX_TRUNK_CALLER_IDS {
            return Err(format!(
                "trunk {n}: at most {MAX_TRUNK_CALLER_IDS} prefixes"
            ));
        }
        for p in &self.prefixes {
            let digits = p.strip_prefix('+').unwrap_or(p);
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!(
                    "trunk {n}: prefixes {p:?}: +digits (E.164) or digits (emergency numbers as dialled)"
                ));
            }
        }
        self.check_tls()
    }

    /// The transport's own rules: SDES keys only over TLS; a TLS name and
    /// CA only for TLS, well formed.
    fn check_tls(&self) -> Result<(), String> {
        let n = &self.name;
        let tls = self.transport == TrunkTransport::Tls;
        if self.srtp == Some(true) && !tls {
            return Err(format!(
                "trunk {n}: srtp needs transport tls (SDES keys never travel in clear)"
            ));
        }
        if !tls && (self.tls_name.is_some() || self.tls_ca.is_some()) {
            return Err(format!(
                "trunk {n}: tls_name and tls_ca are for transport tls"
            ));
        }
        if let Some(name) = &self.tls_name
            && name.parse::<std::net::IpAddr>().is_err()
            && !is_host_name(name)
        {
            return Err(format!(
                "trunk {n}: tls_name {name:?} is not a host name or address"
            ));
        }
        if let Some(pem) = &self.tls_ca {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            if pem.len() > MAX_TRUNK_CA_BYTES {
                return Err(format!(
                    "trunk {n}: tls_ca is larger than {MAX_TRUNK_CA_BYTES} bytes"
                ));
            }
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
            match certs {
                Ok(c) if !c.is_empty() && c.len() <= 16 => {}
                Ok(_) => {
                    return Err(format!("trunk {n}: tls_ca holds 1-16 PEM certificates"));
                }
                Err(e) => return Err(format!("trunk {n}: tls_ca: {e}")),
            }
        }
        Ok(())
    }

    /// How well this trunk suits a call out to `number` (E.164, or
    /// emergency digits as dialled): `Some(n)` with the length of its
    /// longest prefix `number` starts with (0 for a trunk without
    /// prefixes, which takes any number); `None`: not this trunk's.
    pub fn rank(&self, number: &str) -> Option<usize> {
        if self.prefixes.is_empty() {
            return Some(0);
        }
        self.prefixes
            .iter()
            .filter(|p| number.starts_with(p.as_str()))
            .map(String::len)
            .max()
    }

    /// What a trunk's password is given for: its proxy, user name and
    /// transport, and over TLS the name verified and the CA trusted (a
    /// hash). The password is kept with it and answers only a trunk of
    /// the same scope, so it never reaches a server it was not given for.
    pub fn credential_scope(&self) -> String {
        let tls = (self.transport == TrunkTransport::Tls)
            .then(|| (self.tls_server_name(), self.tls_ca.clone()));
        crate::support::encoding::sha256_hex(format!(
            "{:?}|{:?}|{:?}|{:?}",
            self.proxy, self.username, self.transport, tls
        ))
    }

    /// Whether this trunk's media is SRTP (see `srtp`).
    pub fn secure_media(&self) -> bool {
        self.srtp.unwrap_or(self.transport == TrunkTransport::Tls)
    }

    /// The name the provider's certificate must show: `tls_name`, else
    /// `domain`, else the proxy's address.
    pub fn tls_server_name(&self) -> Option<String> {
        self.tls_name
            .clone()
            .or_else(|| self.domain.clone())
            .or_else(|| self.proxy.map(|p| p.ip().to_string()))
    }

    /// Whether this trunk reaches the provider `other` reaches: the same
    /// proxy, or addresses in common.
    pub fn shares_provider(&self, other: &Trunk) -> bool {
        let nets = |t: &Trunk| -> Vec<Net> {
            t.addresses
                .iter()
                .filter_map(|a| Net::parse(a).ok())
                .collect()
        };
        let theirs = nets(other);
        (self.proxy.is_some() && self.proxy == other.proxy)
            || nets(self)
                .iter()
                .any(|n| theirs.iter().any(|m| n.overlaps(m)))
    }

    /// Whether this trunk's provider may send from `ip`.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.addresses
            .iter()
            .filter_map(|a| Net::parse(a).ok())
            .any(|n| n.contains(ip))
    }

    /// Whether a call out over this trunk may show `number` (an E.164
    /// number) besides the tenant's DIDs.
    pub fn may_show(&self, number: &str) -> bool {
        self.caller_ids.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => number.starts_with(prefix),
            None => p == number,
        })
    }
}

/// A DNS host name: dot-separated labels of letters, digits and `-`,
/// each 1-63, at most 253 in all.
pub fn is_host_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `+` and 2-15 digits, not starting with 0.
pub fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|d| {
        (2..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

/// An address or a network (`ip` or `ip/prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub ip: std::net::IpAddr,
    pub prefix: u8,
}

impl Net {
    /// Reads `ip` or `ip/prefix`; host bits set under the prefix are
    /// refused (a typo would otherwise widen or shift the network).
    pub fn parse(s: &str) -> Result<Net, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix 0-{max}"))?,
        };
        let net = Net { ip, prefix };
        if net.masked(ip) != ip {
            return Err(format!("{s:?}: host bits set below the /{prefix}"));
        }
        if prefix < max / 4 {
            return Err(format!("{s:?}: a network that wide is not a trunk"));
        }
        Ok(net)
    }

    fn masked(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        use std::net::IpAddr;
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    /// Whether this network and `other` share an address.
    pub fn overlaps(&self, other: &Net) -> bool {
        self.contains(other.ip) || other.contains(self.ip)
    }

    /// Whether `ip` is in the network (IPv4-mapped IPv6 read as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.ip.is_ipv4() && self.masked(ip) == self.ip
    }
}

/// A tenant's numbering plan and dialing rules as set (SPEC T1); checked
/// by `telephony::policy` when set, applied to every outbound leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialing {
    /// ISO 3166 alpha-2 region numbers are read in (`GB`); `None`: the
    /// server's default region.
    #[serde(default)]
    pub region: Option<String>,
    /// What users dial for an outside line first (`9`), if anything.
    #[serde(default)]
    pub outside_line: Option<String>,
    /// Shortest and longest extension, in digits.
    #[serde(default = "Dialing::default_extension_digits")]
    pub extension_digits: [usize; 2],
    /// Number classes anyone may dial; `None`: internal, national, mobile
    /// and toll-free.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// E.164 numbers or prefixes (`+4420*`) allowed beyond the classes.
    #[serde(default)]
    pub allow: Vec<String>,
    /// E.164 numbers or prefixes refused whatever else allows them.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Outbound calls the tenant may have ringing or answered at once
    /// (toll fraud runs many calls in parallel); `None`: no cap.
    /// Emergency calls are never refused for it.
    #[serde(default)]
    pub max_outbound_calls: Option<u32>,
    /// Talk minutes a day (UTC) the tenant may spend on calls out to
    /// numbers outside it; `None`: no cap. Emergency calls are never
    /// refused for it.
    #[serde(default)]
    pub max_outbound_minutes_per_day: Option<u32>,
    /// Classes of restriction and of service by name (`lobby`, `staff`):
    /// what their holders may dial and do.
    #[serde(default)]
    pub restrictions: BTreeMap<String, Restriction>,
    /// Who holds which restriction: user id → restriction name.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Phones holding a restriction of their own (a lobby phone, a
    /// shared kitchen phone): device name → restriction name. A call a
    /// plugin places for a leg of one (`for-leg`) is held to the device's
    /// restriction and to its user's, the narrower of the two, and so is
    /// the leg's place in conference rooms.
    #[serde(default)]
    pub devices: BTreeMap<String, String>,
    /// The restriction of callers not in `users`, and of calls a plugin
    /// places for no user; `None`: no restriction beyond the tenant's.
    #[serde(default)]
    pub default_restriction: Option<String>,
    /// Account codes calls may be billed to (2-16 digits each): a dial
    /// naming one not listed is refused.
    #[serde(default)]
    pub account_codes: Vec<String>,
    /// Number classes a call out needs an account code for
    /// (`international`, …); emergency calls never do.
    #[serde(default)]
    pub account_code_classes: Vec<String>,
    /// The number a user's calls out show (user id → E.164), when the
    /// plugin names no number of its own: one of the tenant's DIDs, or a
    /// number the trunk allows (`caller_ids`); anything else shows the
    /// trunk's `caller_id`.
    #[serde(default)]
    pub presentation: BTreeMap<String, String>,
}

/// A class of restriction (which number classes its holders may dial,
/// within the tenant's) and of service (what else they may do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restriction {
    /// Number classes (`internal`, `national`, …); the tenant's classes
    /// and lists still apply on top: a restriction only narrows.
    pub classes: Vec<String>,
    /// May forward calls (their own, as the `pbx` plugin does) to
    /// numbers outside the tenant.
    #[serde(default)]
    pub forward_external: bool,
    /// May transfer calls (a phone's blind transfer, as the `pbx` plugin
    /// carries it out) to numbers outside the tenant.
    #[serde(default)]
    pub transfer_external: bool,
    /// May have calls placed back to numbers outside the tenant (a
    /// plugin's `callback`, e.g. voicemail's "call the sender").
    #[serde(default)]
    pub callback_external: bool,
    /// May be in conference rooms: `false` keeps the user's phone calls
    /// out of every room (`join` is denied). Default `true`.
    #[serde(default = "Restriction::yes")]
    pub conference: bool,
}

impl Restriction {
    fn yes() -> bool {
        true
    }
}

impl Dialing {
    fn default_extension_digits() -> [usize; 2] {
        [2, 6]
    }
}

impl Default for Dialing {
    fn default() -> Self {
        Dialing {
            region: None,
            outside_line: None,
            extension_digits: Dialing::default_extension_digits(),
            classes: None,
            allow: Vec::new(),
            deny: Vec::new(),
            max_outbound_calls: None,
            max_outbound_minutes_per_day: None,
            account_codes: Vec::new(),
            account_code_classes: Vec::new(),
            presentation: BTreeMap::new(),
            restrictions: BTreeMap::new(),
            users: BTreeMap::new(),
            devices: BTreeMap::new(),
            default_restriction: None,
        }
    }
}

/// Default retention in days per class (SPEC D4). Classes not listed keep
/// their objects until deleted (meeting content lives as long as the
/// meeting).
pub const DEFAULT_RETENTION: &[(&str, u32)] =
    &[("recording", 365), ("audit", 7 * 365 + 2), ("cdr", 400)];

impl TenantRecord {
    /// The route a device of the tenant reaches by dialling `number`: the
    /// route of that number, else the first pattern it matches.
    pub fn route_for(&self, number: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| !r.is_pattern() && r.number == number)
            .or_else(|| {
                self.routes
                    .iter()
                    .find(|r| r.is_pattern() && r.matches(number))
            })
    }

    /// Days objects of `class` are kept, `None` for "until deleted".
    pub fn retention_days(&self, class: &str) -> Option<u32> {
        match self.retention.get(class) {
            Some(days) => *days,
            None => DEFAULT_RETENTION
                .iter()
                .find(|(c, _)| *c == class)
                .map(|(_, d)| *d),
        }
    }

    /// Every class with a retention period, defaults included.
    pub fn retention_policy(&self) -> BTreeMap<String, Option<u32>> {
        let mut policy: BTreeMap<String, Option<u32>> = DEFAULT_RETENTION
            .iter()
            .map(|(c, d)| (c.to_string(), Some(*d)))
            .collect();
        policy.extend(self.retention.clone());
        policy
    }
}

/// Retention classes: `^[a-z][a-z0-9-]{0,31}$`.
pub fn is_valid_class(class: &str) -> bool {
    let b = class.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Tenant ids: `^[a-z0-9][a-z0-9-]{0,62}$` — they appear in URLs and keys.
pub fn is_valid_tenant_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(addresses: &[&str]) -> Trunk {
        Trunk {
            name: "itsp".into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            proxy: Some("203.0.113.5:5060".parse().unwrap()),
            username: Some("acct-1".into()),
            caller_id: Some("+442079460000".into()),
            caller_ids: vec!["+4420794600*".into()],
            max_calls: 10,
            ..Default::default()
        }
    }

    #[test]
    fn route_patterns_match_what_they_say() {
        let route = |n: &str| Route {
            number: n.into(),
            plugin: "pbx".into(),
            args: String::new(),
        };
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("_9.", &["90", "902079460018"], &["9", "802079460018", ""]),
            ("_9!", &["9", "90"], &["8", "9a", "9 1"]),
            ("_!", &["1", "*"], &["", "user:bob", "device:x"]),
            ("_.", &["1", "+44"], &["", "user:bob"]),
            ("_2XX", &["200", "299"], &["20", "2000", "300", "2a0"]),
            ("_NXX", &["200", "999"], &["100", "099"]),
            ("_Z", &["1", "9"], &["0", "10"]),
            ("_[13-5]0", &["10", "30", "50"], &["20", "60", "1"]),
            ("_*7x", &["*70", "*79"], &["*7", "#70"]),
            ("_+44.", &["+442079460018"], &["+44", "+33123"]),
        ];
        for (pattern, yes, no) in cases {
            let r = route(pattern);
            assert!(
                Route::check_all(std::slice::from_ref(&r)).is_ok(),
                "{pattern}"
            );
            for d in *yes {
                assert!(r.matches(d), "{pattern} should match {d}");
            }
            for d in *no {
                assert!(!r.matches(d), "{pattern} should not match {d}");
            }
        }
        for bad in [
            "_", "_9.1", "_!9", "_[", "_[]", "_[5-1]", "_[a]", "_9Q", "_[1-]",
        ] {
            assert!(Route::check_all(&[route(bad)]).is_err(), "{bad}");
        }
        // An exact number is not a pattern.
        assert!(route("9").matches("9") && !route("9").matches("90"));
    }

    #[test]
    fn trunk_networks_match_what_they_say() {
        let t = trunk(&["203.0.113.0/28", "2001:db8::/64"]);
        assert_eq!(Trunk::check_all(std::slice::from_ref(&t)), Ok(()));
        assert!(t.allows("203.0.113.15".parse().unwrap()));
        assert!(!t.allows("203.0.113.16".parse().unwrap()));
        assert!(t.allows("::ffff:203.0.113.1".parse().unwrap()));
        assert!(t.allows("2001:db8::9".parse().unwrap()));
        assert!(!t.allows("2001:db8:0:1::9".parse().unwrap()));
        assert!(t.may_show("+442079460012"));
        assert!(!t.may_show("+442079461012"));
        // Host bits under the prefix, wide networks, junk: refused.
        for bad in [
            "203.0.113.1/28",
            "10.0.0.0/4",
            "0.0.0.0",
            "224.0.0.1",
            "host",
            "1.2.3.4/33",
            "",
        ] {
            assert!(Trunk::check_all(&[trunk(&[bad])]).is_err(), "{bad}");
        }
        let ok = || trunk(&["203.0.113.5"]);
        assert_eq!(Trunk::check_all(&[ok()]), Ok(()));
        let mut t2 = ok();
        t2.caller_id = Some("+0123".into());
        assert!(Trunk::check_all(&[t2]).is_err());
        let mut t3 = ok();
        t3.username = Some("a b".into());
        assert!(Trunk::check_all(&[t3]).is_err());
        assert!(Trunk::check_all(&[ok(), ok()]).is_err(), "a name twice");
        // The proxy must be an address the trunk is heard from.
        assert!(Trunk::check_all(&[trunk(&["203.0.113.7"])]).is_err());
    }

    #[test]
    fn tenant_ids_cannot_forge_key_separators() {
        assert!(is_valid_tenant_id("acme-2"));
        for bad in ["", "a/b", "..", "A", "-x", "a b", &"x".repeat(64)] {
            assert!(!is_valid_tenant_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn default_limits_are_valid() {
        Limits::default().validate(256 << 20).unwrap();
        let zero = Limits {
            concurrency: 0,
            ..Limits::default()
        };
        assert!(zero.validate(256 << 20).is_err());
    }
}
