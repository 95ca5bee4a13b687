//! The dialing policy (SPEC T1): one decision for every outbound leg,
//! whatever asks for it (a dial, a transfer, a forward a user set, a
//! callback, a plugin dialing on a user's behalf).
//!
//! 1. **Normalise.** What was dialled is stripped of visual separators and
//!    of the tenant's outside-line prefix (e.g. `9`), then read as a short
//!    extension, an emergency number, or a phone number in the tenant's
//!    region, which becomes E.164 with libphonenumber's data (national
//!    prefixes, international access codes).
//! 2. **Classify** ([`Class`]): emergency, internal, national, mobile,
//!    toll-free, international, premium, shared-cost, or unknown.
//! 3. **Decide** ([`Rules::decide`]), in this order:
//!    - emergency numbers are always allowed, only on an exact match of the
//!      region's table after the outside-line prefix ([`EMERGENCY`]), so
//!      `1120` or `9111` are never emergency calls;
//!    - the tenant's deny patterns refuse;
//!    - the tenant's allow patterns allow (a number, or a prefix ending in
//!      `*`, on the E.164 form), within the caller's class of restriction;
//!    - otherwise the class must be one the tenant allows, by default
//!      internal, national, mobile and toll-free: **international,
//!      premium-rate, shared-cost and unknown numbers are denied by
//!      default**;
//!    - and one the caller's class of restriction allows.
//!
//! A refusal is a [`Refusal`] with a stable code (`restricted`) and the
//! reason, for the SIP answer, the audit entry and the metric. An allowed
//! leg dials the [`Dialled::number`] that was classified (E.164), never
//! the string the user typed, so what is checked is what is dialled.

use std::collections::BTreeSet;

use phonenumber::Type;
use phonenumber::country::Id as Region;

/// Longest dial string read.
pub const MAX_DIALLED: usize = 64;
/// Most allow or deny patterns a tenant may set.
pub const MAX_PATTERNS: usize = 256;

/// Emergency numbers per region (ISO 3166 alpha-2), exact matches. Every
/// region also has 112 (GSM and EU standard) and 911 where listed.
/// Sources: national numbering plans as published by each regulator.
pub const EMERGENCY: &[(&str, &[&str])] = &[
    ("US", &["911"]),
    ("CA", &["911"]),
    ("GB", &["999"]),
    ("IE", &["999"]),
    ("AU", &["000"]),
    ("NZ", &["111"]),
    ("DE", &["110"]),
    ("AT", &["122", "133", "144"]),
    ("CH", &["117", "118", "144"]),
    (
        "FR",
        &["15", "17", "18", "114", "115", "119", "191", "196", "197"],
    ),
    ("BE", &["100", "101"]),
    ("NL", &[]),
    ("ES", &["061", "062", "080", "085", "088", "091", "092"]),
    ("IT", &["113", "115", "118"]),
    ("SE", &[]),
    ("NO", &["110", "113"]),
    ("DK", &[]),
    ("FI", &[]),
    ("PL", &["997", "998", "999"]),
    ("JP", &["110", "118", "119"]),
    ("IN", &["100", "101", "102", "108"]),
    ("BR", &["190", "192", "193"]),
    ("MX", &["911"]),
];

/// What a dialled number is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A short number of the region's emergency services.
    Emergency,
    /// An extension inside the tenant.
    Internal,
    /// A fixed line in the tenant's own country.
    National,
    /// A mobile number in the tenant's own country.
    Mobile,
    /// A freephone number in the tenant's own country.
    TollFree,
    /// Any number in another country.
    International,
    /// A premium-rate number.
    Premium,
    /// A shared-cost number.
    SharedCost,
    /// Valid-looking but not classifiable (personal, UAN, pager, VoIP,
    /// voicemail access, or unknown to the numbering plan).
    Unknown,
}

impl Class {
    /// The name in settings, audit entries and refusals.
    pub fn name(self) -> &'static str {
        match self {
            Class::Emergency => "emergency",
            Class::Internal => "internal",
            Class::National => "national",
            Class::Mobile => "mobile",
            Class::TollFree => "toll-free",
            Class::International => "international",
            Class::Premium => "premium",
            Class::SharedCost => "shared-cost",
            Class::Unknown => "unknown",
        }
    }

    /// The class a name in settings stands for.
    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Every class.
    pub const ALL: [Class; 9] = [
        Class::Emergency,
        Class::Internal,
        Class::National,
        Class::Mobile,
        Class::TollFree,
        Class::International,
        Class::Premium,
        Class::SharedCost,
        Class::Unknown,
    ];
}

impl Class {
    /// Classes only an operator may open for a tenant (the caller pays a
    /// premium, or nobody knows what it costs): a tenant admin's allow
    /// pattern never reaches them.
    pub const OPERATOR_ONLY: [Class; 3] = [Class::Premium, Class::SharedCost, Class::Unknown];
}

/// A tenant's numbering: its region and how its users dial.
#[derive(Debug, Clone)]
pub struct Plan {
    /// ISO 3166 alpha-2 region, e.g. `GB`.
    pub region: String,
    /// The outside-line prefix users dial first, if any (e.g. `9`).
    pub outside_line: Option<String>,
    /// Extensions are all-digit and this many digits long.
    pub extension_digits: std::ops::RangeInclusive<usize>,
}

/// A dialled number, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialled {
    pub class: Class,
    /// The E.164 form (`+442079460018`), or the extension or emergency
    /// digits as dialled.
    pub number: String,
}

/// Why a number may not be dialled: code `restricted`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("restricted: {reason}")]
pub struct Refusal {
    pub reason: String,
    /// The class of the number, when it could be read.
    pub class: Option<Class>,
}

impl Refusal {
    /// The stable code of every refusal.
    pub const CODE: &'static str = "restricted";

    fn new(reason: impl Into<String>, class: Option<Class>) -> Refusal {
        Refusal {
            reason: reason.into(),
            class,
        }
    }
}

/// Why a plan or a rule set cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The region is not an ISO 3166 alpha-2 code libphonenumber knows.
    #[error("unknown region {0:?} (an ISO 3166 code such as GB or US)")]
    Region(String),
    /// A pattern is not `+digits` optionally ending in `*`.
    #[error("bad pattern {0:?} (+ then digits, optionally ending in *)")]
    Pattern(String),
    /// A class name that does not exist.
    #[error("unknown number class {0:?}")]
    Class(String),
    /// Over a limit.
    #[error("{0}")]
    TooMany(String),
    /// The numbering plan is not usable.
    #[error("{0}")]
    Plan(String),
}

impl Plan {
    fn region_id(&self) -> Result<Region, PolicyError> {
        self.region
            .parse::<Region>()
            .map_err(|_| PolicyError::Region(self.region.clone()))
    }

    /// Checks the plan once, when it is set.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.region_id().map(|_| ())
    }

    /// Reads what a user dialled: a number, or a user (`user:{login or
    /// id}`, all of their devices) or one device (`device:{name}`) of the
    /// tenant, which are internal.
    pub fn read(&self, dialled: &str) -> Result<Dialled, Refusal> {
        if dialled.len() > MAX_DIALLED {
            return Err(Refusal::new("the number is too long", None));
        }
        if let Some((kind, name)) = dialled.split_once(':') {
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            return match kind {
                "user" | "device" if name_ok => Ok(Dialled {
                    class: Class::Internal,
                    number: dialled.to_string(),
                }),
                _ => Err(Refusal::new("not a dialable number, user or device", None)),
            };
        }
        // Visual separators only; anything else is not a number.
        let mut digits: String = dialled
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let plus = digits.starts_with('+');
        if plus {
            digits.remove(0);
        }
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Refusal::new("not a dialable number", None));
        }
        let region = self
            .region_id()
            .map_err(|e| Refusal::new(e.to_string(), None))?;
        if !plus {
            // Emergency numbers as dialled (999 behind an outside line 9
            // stays 999), then behind the outside-line prefix (9 112).
            if self.is_emergency(&digits) {
                return Ok(Dialled {
                    class: Class::Emergency,
                    number: digits,
                });
            }
            // A number behind the outside-line prefix is never an extension.
            let outside = self
                .outside_line
                .as_deref()
                .and_then(|p| digits.strip_prefix(p));
            let external = outside.is_some();
            if let Some(rest) = outside {
                digits = rest.to_string();
                if self.is_emergency(&digits) {
                    return Ok(Dialled {
                        class: Class::Emergency,
                        number: digits,
                    });
                }
            }
            if !external && self.extension_digits.contains(&digits.len()) {
                return Ok(Dialled {
                    class: Class::Internal,
                    number: digits,
                });
            }
        }
        // International numbers (`+`, or the region's international access
        // code such as 00 or 011) are parsed with no home region: with one,
        // phonenumber 0.3.10 strips the home region's national prefix from
        // the foreign number (+44 1212… read in the US loses its 1).
        let mut international = plus;
        if !plus {
            let idd = phonenumber::metadata::DATABASE
                .by_id(self.region.as_str())
                .and_then(|m| m.international_prefix())
                .and_then(|re| re.find(&digits))
                .filter(|m| m.start() == 0 && m.end() < digits.len())
                .map(|m| m.end());
            if let Some(end) = idd {
                digits = digits[end..].to_string();
                international = true;
            }
        }
        let parsed = if international {
            phonenumber::parse(None, format!("+{digits}"))
        } else {
            phonenumber::parse(Some(region), &digits)
        };
        let number = parsed.map_err(|_| {
            Refusal::new("not a number of the numbering plan", Some(Class::Unknown))
        })?;
        let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
        if !phonenumber::is_valid(&number) {
            return Err(Refusal::new(
                format!("{e164} is not a valid number"),
                Some(Class::Unknown),
            ));
        }
        let home = number.country().id() == Some(region);
        let class = match number.number_type(&phonenumber::metadata::DATABASE) {
            Type::PremiumRate => Class::Premium,
            Type::SharedCost => Class::SharedCost,
            _ if !home => Class::International,
            Type::FixedLine | Type::FixedLineOrMobile => Class::National,
            Type::Mobile => Class::Mobile,
            Type::TollFree => Class::TollFree,
            _ => Class::Unknown,
        };
        Ok(Dialled {
            class,
            number: e164,
        })
    }

    fn is_emergency(&self, digits: &str) -> bool {
        digits == "112"
            || EMERGENCY
                .iter()
                .any(|(r, list)| *r == self.region && list.contains(&digits))
    }
}

/// A prefix or exact pattern on E.164 numbers: `+4420*`, `+18005550100`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    digits: String,
    prefix: bool,
}

impl Pattern {
    /// Parses `+digits` or `+digits*`.
    pub fn parse(s: &str) -> Result<Pattern, PolicyError> {
        let bad = || PolicyError::Pattern(s.to_string());
        let body = s.strip_prefix('+').ok_or_else(bad)?;
        let (digits, prefix) = match body.strip_suffix('*') {
            Some(d) => (d, true),
            None => (body, false),
        };
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        Ok(Pattern {
            digits: format!("+{digits}"),
            prefix,
        })
    }

    fn matches(&self, e164: &str) -> bool {
        if self.prefix {
            e164.starts_with(&self.digits)
        } else {
            e164 == self.digits
        }
    }
}

/// Longest outside-line prefix.
pub const MAX_OUTSIDE_LINE: usize = 4;
/// Longest extension.
pub const MAX_EXTENSION_DIGITS: usize = 15;

/// A tenant's plan and rules from its settings (`region` when it sets
/// none), checked: the answer to an admin who sets them.
pub fn from_dialing(
    d: &crate::tenant::Dialing,
    default_region: &str,
) -> Result<(Plan, Rules), PolicyError> {
    if let Some(prefix) = &d.outside_line
        && (prefix.is_empty()
            || prefix.len() > MAX_OUTSIDE_LINE
            || !prefix.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(PolicyError::Plan(format!(
            "the outside-line prefix is 1-{MAX_OUTSIDE_LINE} digits"
        )));
    }
    if d.max_outbound_calls == Some(0) {
        return Err(PolicyError::Plan(
            "max_outbound_calls is at least 1 (leave it out for no cap)".into(),
        ));
    }
    let [min, max] = d.extension_digits;
    if min == 0 || min > max || max > MAX_EXTENSION_DIGITS {
        return Err(PolicyError::Plan(format!(
            "extension digits are [min, max] with 1 <= min <= max <= {MAX_EXTENSION_DIGITS}"
        )));
    }
    let plan = Plan {
        region: d
            .region
            .clone()
            .unwrap_or_else(|| default_region.to_string()),
        outside_line: d.outside_line.clone(),
        extension_digits: min..=max,
    };
    plan.validate()?;
    let mut rules = match &d.classes {
        Some(classes) => Rules::from_settings(classes, &d.allow, &d.deny)?,
        None => {
            let mut rules = Rules::from_settings(&[], &d.allow, &d.deny)?;
            rules.classes = Rules::default().classes;
            rules
        }
    };
    if d.max_outbound_minutes_per_day == Some(0) {
        return Err(PolicyError::Plan(
            "max_outbound_minutes_per_day is at least 1 (leave it out for no cap)".into(),
        ));
    }
    if d.restrictions.len() > MAX_RESTRICTIONS
        || d.users.len() > MAX_RESTRICTED_USERS
        || d.devices.len() > MAX_RESTRICTED_USERS
    {
        return Err(PolicyError::TooMany(format!(
            "at most {MAX_RESTRICTIONS} restrictions, and {MAX_RESTRICTED_USERS} users and as many devices holding one"
        )));
    }
    for (name, r) in &d.restrictions {
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(PolicyError::Plan(format!(
                "restriction name {name:?}: 1-32 of a-z 0-9 -"
            )));
        }
        let classes = r
            .classes
            .iter()
            .map(|c| Class::from_name(c).ok_or_else(|| PolicyError::Class(c.clone())))
            .collect::<Result<BTreeSet<Class>, _>>()?;
        rules.restrictions.insert(
            name.clone(),
            Cor {
                classes,
                forward_external: r.forward_external,
                transfer_external: r.transfer_external,
                callback_external: r.callback_external,
                conference: r.conference,
            },
        );
    }
    for (user, name) in d
        .users
        .iter()
        .map(|(u, n)| (u.as_str(), n))
        .chain(d.default_restriction.iter().map(|n| ("(default)", n)))
    {
        if !d.restrictions.contains_key(name) {
            return Err(PolicyError::Plan(format!(
                "{user}: no restriction named {name:?}"
            )));
        }
        if user.len() > 64 {
            return Err(PolicyError::Plan("a user id is at most 64 bytes".into()));
        }
    }
    for (device, name) in &d.devices {
        if crate::identity::devices::check_device_name(device).is_err() {
            return Err(PolicyError::Plan(format!(
                "device {device:?}: a device name (1-32 of a-z 0-9 . _ -)"
            )));
        }
        if !d.restrictions.contains_key(name) {
            return Err(PolicyError::Plan(format!(
                "device {device}: no restriction named {name:?}"
            )));
        }
    }
    rules.users = d.users.clone();
    rules.devices = d.devices.clone();
    rules.default_restriction = d.default_restriction.clone();
    if d.account_codes.len() > MAX_ACCOUNT_CODES {
        return Err(PolicyError::TooMany(format!(
            "at most {MAX_ACCOUNT_CODES} account codes"
        )));
    }
    for code in &d.account_codes {
        if !is_account_code(code) {
            return Err(PolicyError::Plan(format!(
                "account code {code:?}: 2-16 digits"
            )));
        }
        if !rules.account_codes.insert(code.clone()) {
            return Err(PolicyError::Plan(format!(
                "account code {code} is listed twice"
            )));
        }
    }
    rules.account_code_classes = d
        .account_code_classes
        .iter()
        .map(|c| Class::from_name(c).ok_or_else(|| PolicyError::Class(c.clone())))
        .collect::<Result<_, _>>()?;
    if rules.account_code_classes.contains(&Class::Emergency) {
        return Err(PolicyError::Plan(
            "emergency calls never need an account code".into(),
        ));
    }
    if d.presentation.len() > MAX_RESTRICTED_USERS {
        return Err(PolicyError::TooMany(format!(
            "at most {MAX_RESTRICTED_USERS} presentation numbers"
        )));
    }
    for (user, number) in &d.presentation {
        if user.is_empty() || user.len() > 64 || !crate::tenant::is_e164(number) {
            return Err(PolicyError::Plan(format!(
                "presentation {user:?}: a user id and an E.164 number"
            )));
        }
    }
    if !rules.account_code_classes.is_empty() && rules.account_codes.is_empty() {
        return Err(PolicyError::Plan(
            "account_code_classes needs account_codes to choose from".into(),
        ));
    }
    Ok((plan, rules))
}

/// Most account codes a tenant lists.
pub const MAX_ACCOUNT_CODES: usize = 10_000;

/// Whether `code` is an account code's shape: 2-16 digits.
pub fn is_account_code(code: &str) -> bool {
    (2..=16).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit())
}

/// Whom a leg is for, as its class of restriction and of service go:
/// the user and the phone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    pub user: Option<String>,
    pub device: Option<String>,
}

/// Who places a call and how, as the policy weighs it.
#[derive(Debug, Clone, Copy)]
pub struct Asking<'a> {
    /// The user it is placed for (their class of restriction).
    pub user: Option<&'a str>,
    /// The phone it is placed from or for (its class of restriction,
    /// on top of the user's).
    pub device: Option<&'a str>,
    pub purpose: Purpose,
    /// The account code it is billed to.
    pub account_code: Option<&'a str>,
}

/// Why a plugin places a call (`dial-purpose`): a forward needs the
/// class of service `forward_external` to leave the tenant, a transfer
/// `transfer_external`, a callback `callback_external`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Call,
    Forward,
    Transfer,
    Callback,
}

impl Rules {
    /// SPEC T1 for one call: the caller's class of restriction, then the
    /// tenant's rules ([`Rules::decide`]), then the class of service (a
    /// forward or a transfer out of the tenant), then the account code
    /// (one given must be the tenant's; the classes the tenant names need
    /// one). Emergency calls pass whatever else is said.
    pub fn decide_for(&self, dialled: &Dialled, asking: Asking<'_>) -> Result<(), Refusal> {
        let Asking {
            user,
            device,
            purpose,
            account_code,
        } = asking;
        let cor = self.cor_of(user, device);
        self.decide(dialled, &cor.classes)?;
        if dialled.class == Class::Emergency {
            return Ok(());
        }
        let outside = dialled.class != Class::Internal;
        let refuse = |why: &str| Err(Refusal::new(why, Some(dialled.class)));
        // Passing a call on out of the tenant (or calling back out of it)
        // is a user's privilege: for no user, only a default restriction
        // the tenant set grants it.
        if matches!(
            purpose,
            Purpose::Forward | Purpose::Transfer | Purpose::Callback
        ) && outside
            && user.is_none()
            && self.default_restriction.is_none()
        {
            return refuse(
                "forwarding, transferring or calling back out of the tenant needs the user it is done for",
            );
        }
        if purpose == Purpose::Forward && outside && !cor.forward_external {
            return refuse(
                "forwarding to numbers outside the tenant is not allowed for this caller",
            );
        }
        if purpose == Purpose::Transfer && outside && !cor.transfer_external {
            return refuse(
                "transferring to numbers outside the tenant is not allowed for this caller",
            );
        }
        if purpose == Purpose::Callback && outside && !cor.callback_external {
            return refuse(
                "calling back numbers outside the tenant is not allowed for this caller",
            );
        }
        match account_code {
            Some(code) if !self.account_codes.contains(code) => refuse("account code unknown"),
            None if self.account_code_classes.contains(&dialled.class) => Err(Refusal::new(
                format!("account code required for {} numbers", dialled.class.name()),
                Some(dialled.class),
            )),
            _ => Ok(()),
        }
    }
}

/// Most restrictions a tenant defines, and users holding one.
pub const MAX_RESTRICTIONS: usize = 64;
pub const MAX_RESTRICTED_USERS: usize = 10_000;

/// A caller's class of restriction (which classes they may dial) and of
/// service (what else they may do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cor {
    pub classes: BTreeSet<Class>,
    pub forward_external: bool,
    pub transfer_external: bool,
    pub callback_external: bool,
    pub conference: bool,
}

impl Cor {
    /// No restriction beyond the tenant's rules.
    pub fn unrestricted() -> Cor {
        Cor {
            classes: Class::ALL.into_iter().collect(),
            forward_external: true,
            transfer_external: true,
            callback_external: true,
            conference: true,
        }
    }

    /// What both allow: a device's restriction on top of its user's.
    pub fn narrowed(self, other: &Cor) -> Cor {
        Cor {
            classes: self.classes.intersection(&other.classes).copied().collect(),
            forward_external: self.forward_external && other.forward_external,
            transfer_external: self.transfer_external && other.transfer_external,
            callback_external: self.callback_external && other.callback_external,
            conference: self.conference && other.conference,
        }
    }
}

/// A tenant's rules, and the caller's class of restriction.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Classes the tenant lets anyone dial.
    pub classes: BTreeSet<Class>,
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
    /// Classes of restriction by name, who holds which, and the default.
    pub restrictions: std::collections::BTreeMap<String, Cor>,
    pub users: std::collections::BTreeMap<String, String>,
    /// Devices holding a restriction of their own (on top of their
    /// user's).
    pub devices: std::collections::BTreeMap<String, String>,
    pub default_restriction: Option<String>,
    /// Account codes calls may be billed to, and the classes needing one.
    pub account_codes: BTreeSet<String>,
    pub account_code_classes: BTreeSet<Class>,
}

impl Default for Rules {
    /// International, premium, shared-cost and unknown denied.
    fn default() -> Rules {
        Rules {
            classes: [
                Class::Internal,
                Class::National,
                Class::Mobile,
                Class::TollFree,
            ]
            .into_iter()
            .collect(),
            allow: Vec::new(),
            deny: Vec::new(),
            restrictions: Default::default(),
            users: Default::default(),
            devices: Default::default(),
            default_restriction: None,
            account_codes: BTreeSet::new(),
            account_code_classes: BTreeSet::new(),
        }
    }
}

impl Rules {
    /// Rules from settings: class names and pattern strings.
    pub fn from_settings(
        classes: &[String],
        allow: &[String],
        deny: &[String],
    ) -> Result<Rules, PolicyError> {
        if allow.len() + deny.len() > MAX_PATTERNS {
            return Err(PolicyError::TooMany(format!(
                "at most {MAX_PATTERNS} allow and deny patterns"
            )));
        }
        let classes = classes
            .iter()
            .map(|c| Class::from_name(c).ok_or_else(|| PolicyError::Class(c.clone())))
            .collect::<Result<_, _>>()?;
        let patterns = |list: &[String]| {
            list.iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Rules {
            classes,
            allow: patterns(allow)?,
            deny: patterns(deny)?,
            ..Rules::default()
        })
    }

    /// The class of restriction of `user` (a user id), or of a call placed
    /// for no user, narrowed by `device`'s own if it holds one.
    pub fn cor_of(&self, user: Option<&str>, device: Option<&str>) -> Cor {
        let of_user = user
            .and_then(|u| self.users.get(u))
            .or(self.default_restriction.as_ref())
            .and_then(|name| self.restrictions.get(name))
            .cloned()
            .unwrap_or_else(Cor::unrestricted);
        match device
            .and_then(|d| self.devices.get(d))
            .and_then(|name| self.restrictions.get(name))
        {
            Some(of_device) => of_user.narrowed(of_device),
            None => of_user,
        }
    }

    /// Whether a caller whose class of restriction is `cor` (the classes
    /// they may dial) may dial `dialled`.
    pub fn decide(&self, dialled: &Dialled, cor: &BTreeSet<Class>) -> Result<(), Refusal> {
        let class = dialled.class;
        if class == Class::Emergency {
            return Ok(());
        }
        let refuse = |why: String| Err(Refusal::new(why, Some(class)));
        let e164 = dialled.number.starts_with('+');
        if e164 && self.deny.iter().any(|p| p.matches(&dialled.number)) {
            return refuse(format!("{} is on the tenant's deny list", dialled.number));
        }
        if !cor.contains(&class) {
            return refuse(format!(
                "{} numbers are not allowed for this caller",
                class.name()
            ));
        }
        // An allow pattern widens the tenant's classes, but never to the
        // numbers only an operator may open: those need their class.
        if e164
            && !Class::OPERATOR_ONLY.contains(&class)
            && self.allow.iter().any(|p| p.matches(&dialled.number))
        {
            return Ok(());
        }
        if !self.classes.contains(&class) {
            return refuse(format!(
                "{} numbers are not allowed in this tenant",
                class.name()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_out_need_their_service_and_account_codes_are_checked() {
        let mut d = crate::tenant::Dialing {
            region: Some("GB".into()),
            account_codes: vec!["1234".into(), "987654".into()],
            account_code_classes: vec!["mobile".into()],
            ..Default::default()
        };
        d.restrictions.insert(
            "desk".into(),
            crate::tenant::Restriction {
                classes: vec!["internal".into(), "national".into(), "mobile".into()],
                forward_external: true,
                transfer_external: false,
                callback_external: false,
                conference: true,
            },
        );
        d.default_restriction = Some("desk".into());
        let (plan, rules) = from_dialing(&d, "US").unwrap();
        let national = plan.read("02079460018").unwrap();
        let mobile = plan.read("07400123456").unwrap();
        let ext = plan.read("201").unwrap();
        let emergency = plan.read("999").unwrap();
        // A transfer out needs transfer_external; inside it does not.
        let refused = rules
            .decide_for(&national, ask(None, Purpose::Transfer, None))
            .unwrap_err();
        assert!(refused.reason.contains("transferring"), "{refused}");
        assert!(
            rules
                .decide_for(&ext, ask(None, Purpose::Transfer, None))
                .is_ok()
        );
        assert!(
            rules
                .decide_for(&national, ask(None, Purpose::Forward, None))
                .is_ok()
        );
        // Mobile numbers need a listed code; any given code must be listed.
        let refused = rules
            .decide_for(&mobile, ask(None, Purpose::Call, None))
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "restricted: account code required for mobile numbers"
        );
        assert!(
            rules
                .decide_for(&mobile, ask(None, Purpose::Call, Some("1234")))
                .is_ok()
        );
        let refused = rules
            .decide_for(&national, ask(None, Purpose::Call, Some("1235")))
            .unwrap_err();
        assert_eq!(refused.to_string(), "restricted: account code unknown");
        assert!(
            rules
                .decide_for(&national, ask(None, Purpose::Call, Some("987654")))
                .is_ok()
        );
        assert!(
            rules
                .decide_for(&national, ask(None, Purpose::Call, None))
                .is_ok()
        );
        // Emergency: no code needed, and a wrong one does not stop it.
        assert!(
            rules
                .decide_for(&emergency, ask(None, Purpose::Transfer, Some("0")))
                .is_ok()
        );
        // Bad settings are refused.
        for (codes, classes) in [
            (vec!["1"], vec![]),
            (vec!["12a4"], vec![]),
            (vec!["12345678901234567"], vec![]),
            (vec!["1234", "1234"], vec![]),
            (vec![], vec!["mobile"]),
            (vec!["1234"], vec!["emergency"]),
            (vec!["1234"], vec!["lunar"]),
        ] {
            let bad = crate::tenant::Dialing {
                account_codes: codes.iter().map(|c| c.to_string()).collect(),
                account_code_classes: classes.iter().map(|c| c.to_string()).collect(),
                ..d.clone()
            };
            assert!(from_dialing(&bad, "GB").is_err(), "{codes:?} {classes:?}");
        }
    }

    #[test]
    fn a_users_restriction_narrows_and_forwarding_out_needs_its_service() {
        let mut d = crate::tenant::Dialing {
            region: Some("GB".into()),
            ..Default::default()
        };
        d.restrictions.insert(
            "lobby".into(),
            crate::tenant::Restriction {
                classes: vec!["internal".into()],
                forward_external: false,
                transfer_external: false,
                callback_external: false,
                conference: true,
            },
        );
        d.restrictions.insert(
            "staff".into(),
            crate::tenant::Restriction {
                classes: vec!["internal".into(), "national".into(), "premium".into()],
                forward_external: false,
                transfer_external: false,
                callback_external: false,
                conference: true,
            },
        );
        d.users.insert("ann".into(), "staff".into());
        d.default_restriction = Some("lobby".into());
        let (plan, rules) = from_dialing(&d, "US").unwrap();
        let national = plan.read("02079460018").unwrap();
        assert!(
            rules
                .decide_for(&national, ask(Some("ann"), Purpose::Call, None))
                .is_ok()
        );
        assert!(
            rules
                .decide_for(&national, ask(Some("bob"), Purpose::Call, None))
                .is_err()
        );
        assert!(
            rules
                .decide_for(&national, ask(None, Purpose::Call, None))
                .is_err()
        );
        let refused = rules
            .decide_for(&national, ask(Some("ann"), Purpose::Forward, None))
            .unwrap_err();
        assert!(refused.reason.contains("forwarding"), "{refused}");
        // Premium in the restriction does not open what the tenant denies.
        let premium = plan.read("09012345678").unwrap();
        assert!(
            rules
                .decide_for(&premium, ask(Some("ann"), Purpose::Call, None))
                .is_err()
        );
        // Emergency always; an internal forward is no forward out.
        let emergency = plan.read("999").unwrap();
        assert!(
            rules
                .decide_for(&emergency, ask(None, Purpose::Forward, None))
                .is_ok()
        );
        let ext = plan.read("201").unwrap();
        assert!(
            rules
                .decide_for(&ext, ask(Some("ann"), Purpose::Forward, None))
                .is_ok()
        );
        // No restriction at all: the tenant's rules alone, but passing a
        // call out needs a user.
        let open_rules = from_dialing(&crate::tenant::Dialing::default(), "GB")
            .unwrap()
            .1;
        for purpose in [Purpose::Forward, Purpose::Transfer] {
            assert!(
                open_rules
                    .decide_for(&national, ask(None, purpose, None))
                    .is_err()
            );
            assert!(
                open_rules
                    .decide_for(&national, ask(Some("x"), purpose, None))
                    .is_ok()
            );
            assert!(
                open_rules
                    .decide_for(&ext, ask(None, purpose, None))
                    .is_ok()
            );
        }
        // No restriction at all: the tenant's rules alone.
        let open = from_dialing(&crate::tenant::Dialing::default(), "GB")
            .unwrap()
            .1;
        assert!(
            open.decide_for(&national, ask(Some("x"), Purpose::Forward, None))
                .is_ok()
        );
        // A bad name, a dangling holder, an unknown class: refused.
        let mut bad = d.clone();
        bad.restrictions
            .insert("Bad Name".into(), d.restrictions["lobby"].clone());
        assert!(from_dialing(&bad, "GB").is_err());
        let mut bad = d.clone();
        bad.default_restriction = Some("vip".into());
        assert!(from_dialing(&bad, "GB").is_err());
        let mut bad = d;
        bad.restrictions
            .get_mut("lobby")
            .unwrap()
            .classes
            .push("lunar".into());
        assert!(from_dialing(&bad, "GB").is_err());
    }

    #[test]
    fn a_devices_restriction_narrows_its_users_and_callbacks_need_their_service() {
        let restriction =
            |classes: &[&str], external: bool, conference: bool| crate::tenant::Restriction {
                classes: classes.iter().map(|c| c.to_string()).collect(),
                forward_external: external,
                transfer_external: external,
                callback_external: external,
                conference,
            };
        let mut d = crate::tenant::Dialing {
            region: Some("GB".into()),
            ..Default::default()
        };
        d.restrictions.insert(
            "exec".into(),
            restriction(&["internal", "national", "mobile"], true, true),
        );
        d.restrictions
            .insert("lobby".into(), restriction(&["internal"], false, false));
        d.restrictions.insert(
            "kitchen".into(),
            restriction(&["internal", "mobile"], true, true),
        );
        d.users.insert("ann".into(), "exec".into());
        d.devices.insert("lobby-1".into(), "lobby".into());
        d.devices.insert("kitchen".into(), "kitchen".into());
        let (plan, rules) = from_dialing(&d, "US").unwrap();
        let national = plan.read("02079460018").unwrap();
        let mobile = plan.read("07400123456").unwrap();
        let at = |user, device, purpose| Asking {
            user,
            device,
            purpose,
            account_code: None,
        };
        // Ann's own phone: her restriction. The lobby phone narrows it to
        // internal; the kitchen phone to what both allow (mobile).
        assert!(
            rules
                .decide_for(&national, at(Some("ann"), None, Purpose::Call))
                .is_ok()
        );
        let refused = rules
            .decide_for(&national, at(Some("ann"), Some("lobby-1"), Purpose::Call))
            .unwrap_err();
        assert!(
            refused.reason.contains("not allowed for this caller"),
            "{refused}"
        );
        assert!(
            rules
                .decide_for(&national, at(Some("ann"), Some("kitchen"), Purpose::Call))
                .is_err()
        );
        assert!(
            rules
                .decide_for(&mobile, at(Some("ann"), Some("kitchen"), Purpose::Call))
                .is_ok()
        );
        // A device narrows, never widens: a user with no restriction of
        // their own on the kitchen phone still has the tenant's rules.
        let intl = plan.read("+12025550123").unwrap();
        assert!(
            rules
                .decide_for(&intl, at(Some("bob"), Some("kitchen"), Purpose::Call))
                .is_err()
        );
        // Emergency from any phone.
        let emergency = plan.read("999").unwrap();
        assert!(
            rules
                .decide_for(&emergency, at(None, Some("lobby-1"), Purpose::Call))
                .is_ok()
        );
        // Services narrow too.
        assert!(!rules.cor_of(Some("ann"), Some("lobby-1")).conference);
        assert!(rules.cor_of(Some("ann"), Some("kitchen")).conference);
        assert!(
            rules
                .decide_for(&mobile, at(Some("ann"), Some("lobby-1"), Purpose::Forward))
                .is_err()
        );
        // A callback out needs callback_external, and a user.
        assert!(
            rules
                .decide_for(&national, at(Some("ann"), None, Purpose::Callback))
                .is_ok()
        );
        d.restrictions.get_mut("exec").unwrap().callback_external = false;
        let rules = from_dialing(&d, "US").unwrap().1;
        let refused = rules
            .decide_for(&national, at(Some("ann"), None, Purpose::Callback))
            .unwrap_err();
        assert!(refused.reason.contains("calling back"), "{refused}");
        let open = from_dialing(&crate::tenant::Dialing::default(), "GB")
            .unwrap()
            .1;
        assert!(
            open.decide_for(&national, at(None, None, Purpose::Callback))
                .is_err()
        );
        assert!(
            open.decide_for(&national, at(Some("x"), None, Purpose::Callback))
                .is_ok()
        );
        // A device holding a restriction that does not exist, or a name
        // that is no device name: refused.
        for (device, name) in [("lobby-2", "vip"), ("Lobby Phone", "lobby"), ("", "lobby")] {
            let mut bad = d.clone();
            bad.devices.insert(device.into(), name.into());
            assert!(from_dialing(&bad, "GB").is_err(), "{device:?} {name:?}");
        }
    }

    fn ask<'a>(user: Option<&'a str>, purpose: Purpose, code: Option<&'a str>) -> Asking<'a> {
        Asking {
            user,
            device: None,
            purpose,
            account_code: code,
        }
    }

    fn plan(region: &str) -> Plan {
        Plan {
            region: region.into(),
            outside_line: Some("9".into()),
            extension_digits: 3..=4,
        }
    }

    /// Every class a caller can be allowed (emergency needs no allowing).
    fn everything() -> BTreeSet<Class> {
        Class::ALL
            .into_iter()
            .filter(|c| *c != Class::Emergency)
            .collect()
    }

    fn class(p: &Plan, dialled: &str) -> Class {
        p.read(dialled)
            .unwrap_or_else(|e| panic!("{dialled}: {e}"))
            .class
    }

    #[test]
    fn numbers_are_classified_in_their_region() {
        let gb = plan("GB");
        assert_eq!(class(&gb, "201"), Class::Internal);
        assert_eq!(class(&gb, "9 01212 345678"), Class::National);
        assert_eq!(gb.read("9 01212 345678").unwrap().number, "+441212345678");
        assert_eq!(class(&gb, "907400 123456"), Class::Mobile);
        assert_eq!(class(&gb, "90800 123 4567"), Class::TollFree);
        assert_eq!(class(&gb, "909012345678"), Class::Premium);
        // GB's 084x are premium-rate in libphonenumber's data; shared cost
        // exists in France (08 84).
        assert_eq!(class(&gb, "908431234567"), Class::Premium);
        assert_eq!(class(&plan("FR"), "9 08 84 01 23 45"), Class::SharedCost);
        assert_eq!(class(&gb, "90012015550123"), Class::International);
        assert_eq!(class(&gb, "+1 201 555 0123"), Class::International);
        let us = plan("US");
        assert_eq!(class(&us, "9 (201) 555-0123"), Class::National);
        assert_eq!(class(&us, "9 1 900 234 5678"), Class::Premium);
        assert_eq!(class(&us, "9 011 44 1212 345678"), Class::International);
        // The foreign number keeps every digit (phonenumber 0.3.10 drops the
        // 1 when it parses +44 1212… with US as the home region).
        assert_eq!(
            us.read("9 011 44 1212 345678").unwrap().number,
            "+441212345678"
        );
        assert_eq!(us.read("+44 1212 345678").unwrap().number, "+441212345678");
        let au = Plan {
            region: "AU".into(),
            outside_line: Some("0".into()),
            ..plan("AU")
        };
        assert_eq!(
            au.read("0 0011 44 1212 345678").unwrap().number,
            "+441212345678"
        );
        assert_eq!(class(&us, "9 1 800 234 5678"), Class::TollFree);
    }

    #[test]
    fn emergency_numbers_match_exactly_and_look_alikes_do_not() {
        for (region, number) in [
            ("GB", "999"),
            ("GB", "9999"),
            ("GB", "112"),
            ("US", "911"),
            ("US", "9911"),
            ("GB", "9112"),
        ] {
            let d = plan(region).read(number).unwrap();
            assert_eq!(d.class, Class::Emergency, "{region} {number}");
            // Allowed even with no classes and an empty CoR.
            let none = Rules {
                classes: BTreeSet::new(),
                ..Rules::default()
            };
            none.decide(&d, &BTreeSet::new()).unwrap();
        }
        // Look-alikes: not emergency, and not allowed by default.
        let us = plan("US");
        for number in ["1120", "9111", "91120", "99111", "0911", "+1911"] {
            let d = us.read(number);
            assert!(
                d.as_ref().is_err() || d.as_ref().unwrap().class != Class::Emergency,
                "{number} read as emergency"
            );
            // An extension (1120 with 3–4 digit extensions) stays inside.
            if let Some(d) = d.ok().filter(|d| d.class != Class::Internal) {
                let got = Rules::default().decide(&d, &everything());
                assert!(got.is_err(), "{number}: {d:?}");
            }
        }
        // 999 is not an emergency number in the US.
        assert!(
            us.read("9999")
                .map_or(true, |d| d.class != Class::Emergency)
        );
    }

    #[test]
    fn the_defaults_deny_international_premium_and_shared_cost() {
        let gb = plan("GB");
        let rules = Rules::default();
        for (number, allowed) in [
            ("201", true),
            ("901212345678", true),
            ("907400123456", true),
            ("908001234567", true),
            ("909012345678", false),
            ("908431234567", false),
            ("+33884012345", false),
            ("90012015550123", false),
            ("+8613123456789", false),
        ] {
            let d = gb.read(number).unwrap();
            let got = rules.decide(&d, &everything());
            assert_eq!(got.is_ok(), allowed, "{number}: {got:?}");
            if let Err(r) = got {
                assert!(r.to_string().starts_with("restricted: "), "{r}");
                assert_eq!(r.class, Some(d.class));
            }
        }
    }

    #[test]
    fn patterns_and_the_callers_class_of_restriction_apply() {
        let gb = plan("GB");
        let rules = Rules::from_settings(
            &["internal".into(), "national".into(), "mobile".into()],
            &["+1201*".into()],
            &["+44121234*".into()],
        )
        .unwrap();
        let all = everything();
        // Allowed by pattern though international is not a tenant class.
        rules
            .decide(&gb.read("+12015550123").unwrap(), &all)
            .unwrap();
        // Not by another US prefix.
        assert!(
            rules
                .decide(&gb.read("+12125550123").unwrap(), &all)
                .is_err()
        );
        // Denied by pattern though national is allowed.
        let err = rules
            .decide(&gb.read("901212345678").unwrap(), &all)
            .unwrap_err();
        assert!(err.reason.contains("deny list"), "{err}");
        // A caller restricted to internal calls cannot use the allow list.
        let internal: BTreeSet<Class> = [Class::Internal].into_iter().collect();
        let err = rules
            .decide(&gb.read("+12015550123").unwrap(), &internal)
            .unwrap_err();
        assert!(err.reason.contains("this caller"), "{err}");
        rules.decide(&gb.read("201").unwrap(), &internal).unwrap();
        assert!(
            rules
                .decide(&gb.read("907400123456").unwrap(), &internal)
                .is_err()
        );
    }

    #[test]
    fn bad_input_is_refused_precisely() {
        let gb = plan("GB");
        for bad in [
            "",
            "+",
            "12a4",
            "*72",
            "sip:alice@example.com",
            "9#",
            &"1".repeat(65),
        ] {
            let err = gb.read(bad).unwrap_err();
            assert!(err.to_string().starts_with("restricted: "), "{bad}: {err}");
        }
        // Not valid in the numbering plan.
        assert!(gb.read("900000").is_err());
        assert_eq!(
            Plan {
                region: "XX".into(),
                ..plan("GB")
            }
            .validate(),
            Err(PolicyError::Region("XX".into()))
        );
        for bad in ["4420*", "+", "+*", "+44a", "+1234567890123456", "+44*1"] {
            assert_eq!(
                Pattern::parse(bad),
                Err(PolicyError::Pattern(bad.into())),
                "{bad}"
            );
        }
        assert!(matches!(
            Rules::from_settings(&["posh".into()], &[], &[]),
            Err(PolicyError::Class(_))
        ));
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("+44{i}")).collect();
        assert!(matches!(
            Rules::from_settings(&[], &many, &[]),
            Err(PolicyError::TooMany(_))
        ));
    }

    #[test]
    fn a_tenants_settings_are_checked_before_they_apply() {
        use crate::tenant::Dialing;
        let ok = Dialing::default();
        let (plan, rules) = from_dialing(&ok, "GB").unwrap();
        assert_eq!(plan.region, "GB");
        assert_eq!(rules.classes, Rules::default().classes);
        let bad = [
            Dialing {
                region: Some("XX".into()),
                ..ok.clone()
            },
            Dialing {
                outside_line: Some("9a".into()),
                ..ok.clone()
            },
            Dialing {
                outside_line: Some(String::new()),
                ..ok.clone()
            },
            Dialing {
                outside_line: Some("99999".into()),
                ..ok.clone()
            },
            Dialing {
                extension_digits: [0, 4],
                ..ok.clone()
            },
            Dialing {
                extension_digits: [5, 3],
                ..ok.clone()
            },
            Dialing {
                extension_digits: [1, 16],
                ..ok.clone()
            },
            Dialing {
                classes: Some(vec!["lunar".into()]),
                ..ok.clone()
            },
            Dialing {
                allow: vec!["44*".into()],
                ..ok.clone()
            },
            Dialing {
                deny: vec!["+44*9".into()],
                ..ok.clone()
            },
            Dialing {
                deny: vec!["+1".into(); MAX_PATTERNS + 1],
                ..ok.clone()
            },
            Dialing {
                max_outbound_calls: Some(0),
                ..ok.clone()
            },
        ];
        for d in bad {
            assert!(from_dialing(&d, "GB").is_err(), "{d:?}");
        }
        // An allow pattern never opens a premium-rate number: that class is
        // an operator's to open (toll fraud).
        let sneaky = Dialing {
            allow: vec!["+1900*".into(), "+1*".into()],
            ..ok.clone()
        };
        let (plan, rules) = from_dialing(&sneaky, "US").unwrap();
        let all: BTreeSet<Class> = Class::ALL.into_iter().collect();
        let premium = plan.read("+19005550100").unwrap();
        assert_eq!(premium.class, Class::Premium);
        assert!(rules.decide(&premium, &all).is_err());
        // Classes as set replace the defaults.
        let open = Dialing {
            classes: Some(vec!["internal".into(), "international".into()]),
            ..ok
        };
        let (_, rules) = from_dialing(&open, "US").unwrap();
        assert_eq!(
            rules.classes,
            [Class::Internal, Class::International]
                .into_iter()
                .collect()
        );
    }
}
