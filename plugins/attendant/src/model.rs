//! An attendant's configuration, what is stored, and the checks every
//! configuration passes before it is kept (SPEC V4).
//!
//! | key | value |
//! |---|---|
//! | `att/{id}` | [`Attendant`]: time zone, hours, holidays, menus |
//! | `prompt/{name}` | [`Recording`]: an uploaded prompt's blob |
//!
//! The checks: every menu named exists; every extension or queue number
//! is routed in the tenant (to another plugin than this one); every
//! mailbox is an active user's and the voicemail number is routed; every
//! uploaded prompt exists; and no caller can be passed around menus for
//! ever: a caller who keys nothing follows the menus' defaults, which
//! must end somewhere other than a menu.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use switchboard_sdk::calls;
use switchboard_sdk::http::ApiError;
use switchboard_sdk::{Error, identity, kv};

use crate::hours;

/// This plugin's name (routes naming it lead back here).
pub const NAME: &str = "attendant";
/// Retention class of uploaded prompts.
pub const PROMPT_CLASS: &str = "attendant-prompt";
/// Most menus in an attendant.
const MAX_MENUS: usize = 64;
/// Most items a menu says.
const MAX_SAY: usize = 16;

/// One attendant: the tenant routes a number to the plugin with the
/// attendant's id as the route's arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attendant {
    /// IANA time zone the hours and holidays are in (`Europe/London`).
    pub time_zone: String,
    /// Opening hours per weekday (`mon` … `sun`): `[["09:00", "17:30"]]`;
    /// a day not named is closed all day. `24:00` ends a day.
    #[serde(default)]
    pub hours: BTreeMap<String, Vec<[String; 2]>>,
    /// Days closed all day, `YYYY-MM-DD` in the time zone.
    #[serde(default)]
    pub holidays: Vec<String>,
    /// The menu while open.
    pub open: String,
    /// The menu after hours.
    pub closed: String,
    /// The menu on holidays (default: `closed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holiday: Option<String>,
    /// The voicemail number (routed to the voicemail plugin), for
    /// `mailbox` targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail: Option<String>,
    pub menus: BTreeMap<String, Menu>,
}

/// A menu: what it says, then the caller's choice.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Menu {
    /// Said in order (keys cut it short).
    pub say: Vec<Say>,
    /// One key (`0`-`9`, `*`, `#`) each.
    #[serde(default)]
    pub choices: BTreeMap<String, Target>,
    /// Whether a caller may key an extension (2-8 digits, then `#` or a
    /// pause) to be put through to any number routed in the tenant.
    #[serde(default)]
    pub dial_by_extension: bool,
    /// How long to wait for a key, ms (1 000-30 000).
    #[serde(default = "default_wait")]
    pub wait_ms: u32,
    /// Wrong or missing answers before `default` (1-5).
    #[serde(default = "default_tries")]
    pub tries: u8,
    /// Where a caller goes when the tries run out; none: goodbye.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Target>,
}

fn default_wait() -> u32 {
    5_000
}

fn default_tries() -> u8 {
    3
}

/// Something a menu says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Say {
    /// A prompt of the host's library (`welcome`, `after-hours`, …).
    Library(String),
    /// A prompt the admin uploaded here.
    Prompt(String),
}

/// Where a choice leads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "to", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// Another menu of this attendant.
    Menu { menu: String },
    /// A user's extension (the number's plugin rings them).
    Extension { number: String },
    /// A queue: a number routed to a contact-center plugin (any plugin
    /// but this one), the caller handed to it with the route's args.
    Queue { number: String },
    /// A user's mailbox (by id or login name; kept as the id): the
    /// caller leaves a message there.
    Mailbox { user: String },
    /// A fixed outside number, placed through the tenant's dialing
    /// policy (no user: the tenant's default restriction decides), billed
    /// to `account_code` where the tenant wants one.
    External {
        number: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account_code: Option<String>,
    },
    /// Goodbye.
    Hangup,
}

/// An uploaded prompt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recording {
    pub blob: String,
    pub ms: u64,
}

fn bad(code: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// An id of an attendant, a menu or a prompt: 1-32 of `[a-z0-9-]`.
pub fn valid_id(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub fn attendant(id: &str) -> Result<Option<Attendant>, Error> {
    kv::get_json(format!("att/{id}"))
}

pub fn save_attendant(id: &str, a: &Attendant) -> Result<(), Error> {
    kv::set_json(format!("att/{id}"), a)
}

pub fn delete_attendant(id: &str) -> Result<bool, Error> {
    kv::delete(format!("att/{id}"))
}

pub fn attendants() -> Result<Vec<(String, Attendant)>, Error> {
    Ok(kv::scan_all("att/", 1000)?
        .into_iter()
        .filter_map(|e| {
            let id = String::from_utf8_lossy(&e.key["att/".len()..]).into_owned();
            serde_json::from_slice(&e.value).ok().map(|a| (id, a))
        })
        .collect())
}

pub fn prompt(name: &str) -> Result<Option<Recording>, Error> {
    kv::get_json(format!("prompt/{name}"))
}

pub fn save_prompt(name: &str, r: &Recording) -> Result<(), Error> {
    kv::set_json(format!("prompt/{name}"), r)
}

pub fn delete_prompt(name: &str) -> Result<bool, Error> {
    kv::delete(format!("prompt/{name}"))
}

pub fn prompts() -> Result<Vec<(String, Recording)>, Error> {
    Ok(kv::scan_all("prompt/", 1000)?
        .into_iter()
        .filter_map(|e| {
            let name = String::from_utf8_lossy(&e.key["prompt/".len()..]).into_owned();
            serde_json::from_slice(&e.value).ok().map(|r| (name, r))
        })
        .collect())
}

/// A number's route, when it leads to another plugin than this one.
fn routed_elsewhere(number: &str) -> Result<bool, ApiError> {
    if number.is_empty() || number.len() > 32 {
        return Ok(false);
    }
    match calls::route_of(number) {
        Ok(route) => Ok(route.is_some_and(|r| r.plugin != NAME)),
        Err(Error::InvalidArgument(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Checks `a` and puts it in its stored form (mailbox users as ids).
pub fn check(mut a: Attendant) -> Result<Attendant, ApiError> {
    hours::zone(&a.time_zone).ok_or_else(|| {
        bad(
            "invalid_time_zone",
            format!("no time zone {:?}", a.time_zone),
        )
    })?;
    for (day, spans) in &a.hours {
        if hours::weekday(day).is_none() {
            return Err(bad(
                "invalid_hours",
                format!("{day:?} is not mon, tue, wed, thu, fri, sat or sun"),
            ));
        }
        if spans.len() > 8 {
            return Err(bad("invalid_hours", "at most 8 spans a day"));
        }
        for [from, to] in spans {
            match (hours::minute_of_day(from), hours::minute_of_day(to)) {
                (Some(f), Some(t)) if f < t => {}
                _ => {
                    return Err(bad(
                        "invalid_hours",
                        format!(
                            "{day} {from}-{to}: spans are HH:MM to a later HH:MM (24:00 ends a day)"
                        ),
                    ));
                }
            }
        }
    }
    if a.holidays.len() > 400 {
        return Err(bad("invalid_holidays", "at most 400 holidays"));
    }
    for d in &a.holidays {
        if !hours::valid_date(d) {
            return Err(bad(
                "invalid_holidays",
                format!("{d:?} is not a YYYY-MM-DD date"),
            ));
        }
    }
    if a.menus.is_empty() || a.menus.len() > MAX_MENUS {
        return Err(bad("invalid_attendant", format!("1-{MAX_MENUS} menus")));
    }
    let known = |m: &str| -> Result<(), ApiError> {
        if a.menus.contains_key(m) {
            Ok(())
        } else {
            Err(bad("unknown_menu", format!("no menu {m:?}")))
        }
    };
    known(&a.open)?;
    known(&a.closed)?;
    if let Some(h) = &a.holiday {
        known(h)?;
    }
    if let Some(vm) = &a.voicemail
        && !routed_elsewhere(vm)?
    {
        return Err(bad(
            "unknown_target",
            format!("the voicemail number {vm:?} is not routed to a plugin"),
        ));
    }
    let voicemail = a.voicemail.clone();
    let names: BTreeSet<String> = a.menus.keys().cloned().collect();
    for (id, menu) in a.menus.iter_mut() {
        if !valid_id(id) {
            return Err(bad(
                "invalid_attendant",
                format!("menu id {id:?}: 1-32 of a-z 0-9 -"),
            ));
        }
        if menu.say.len() > MAX_SAY {
            return Err(bad(
                "invalid_attendant",
                format!("menu {id}: at most {MAX_SAY} prompts"),
            ));
        }
        for s in &menu.say {
            match s {
                Say::Library(n) if valid_library(n) => {}
                Say::Library(n) => {
                    return Err(bad(
                        "unknown_prompt",
                        format!("menu {id}: no library prompt {n:?}"),
                    ));
                }
                Say::Prompt(n) => {
                    if !valid_id(n) || prompt(n)?.is_none() {
                        return Err(bad(
                            "unknown_prompt",
                            format!("menu {id}: no uploaded prompt {n:?}"),
                        ));
                    }
                }
            }
        }
        if !(1000..=30_000).contains(&menu.wait_ms) || !(1..=5).contains(&menu.tries) {
            return Err(bad(
                "invalid_attendant",
                format!("menu {id}: wait_ms is 1000-30000 and tries 1-5"),
            ));
        }
        for key in menu.choices.keys() {
            if key.len() != 1 || !"0123456789*#".contains(key.as_str()) {
                return Err(bad(
                    "invalid_attendant",
                    format!("menu {id}: a choice is one key of 0-9, * or #, not {key:?}"),
                ));
            }
            if key == "#" && menu.dial_by_extension {
                return Err(bad(
                    "invalid_attendant",
                    format!("menu {id}: # ends an extension there, so it cannot be a choice"),
                ));
            }
        }
        for target in menu.choices.values_mut().chain(menu.default.iter_mut()) {
            check_target(id, target, &names, voicemail.as_deref())?;
        }
    }
    loops(&a)?;
    Ok(a)
}

/// A library prompt's name (whether the library has it is known only
/// when it plays: the host answers `not-found`, and the menu goes on
/// without it).
fn valid_library(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_target(
    menu: &str,
    t: &mut Target,
    menus: &BTreeSet<String>,
    voicemail: Option<&str>,
) -> Result<(), ApiError> {
    let unknown = |what: String| Err(bad("unknown_target", format!("menu {menu}: {what}")));
    match t {
        Target::Menu { menu: m } if !menus.contains(m.as_str()) => {
            Err(bad("unknown_menu", format!("menu {menu}: no menu {m:?}")))
        }
        Target::Extension { number } | Target::Queue { number } if !routed_elsewhere(number)? => {
            unknown(format!("{number:?} is not routed to a plugin"))
        }
        Target::Mailbox { user } => {
            if voicemail.is_none() {
                return unknown("a mailbox needs the attendant's voicemail number".into());
            }
            match identity::lookup_user(user)?.filter(|u| u.active) {
                Some(u) => {
                    *user = u.id;
                    Ok(())
                }
                None => unknown(format!("no active user {user:?}")),
            }
        }
        Target::External {
            number,
            account_code,
        } => {
            let digits = number.strip_prefix('+').unwrap_or(number);
            if digits.len() < 2 || digits.len() > 31 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return unknown(format!("{number:?} is not a number (+ and 2-31 digits)"));
            }
            if let Some(code) = account_code
                && (!(2..=16).contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_digit()))
            {
                return unknown(format!("account code {code:?}: 2-16 digits"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Refuses menus that could pass a caller around for ever: the defaults
/// (what a caller who keys nothing, or only wrong keys, follows) must
/// leave the menus. A menu without a default says goodbye, so every
/// chain of defaults then ends the call or leaves; a caller who keeps
/// choosing menus is stopped by the per-call cap (`phone::MAX_HOPS`).
fn loops(a: &Attendant) -> Result<(), ApiError> {
    for start in a.menus.keys() {
        let mut seen = BTreeSet::new();
        let mut at = start.as_str();
        while let Some(Target::Menu { menu }) = a.menus.get(at).and_then(|m| m.default.as_ref()) {
            if !seen.insert(at) {
                return Err(bad(
                    "menu_loop",
                    format!(
                        "the defaults from menu {start} come back to {at}: a caller who keys nothing would go round for ever; give one a default that leaves"
                    ),
                ));
            }
            at = menu;
        }
    }
    Ok(())
}

/// Whether uploaded prompt `name` is said by any attendant.
pub fn prompt_in_use(name: &str) -> Result<Option<String>, Error> {
    Ok(attendants()?.into_iter().find_map(|(id, a)| {
        a.menus
            .values()
            .any(|m| m.say.contains(&Say::Prompt(name.to_string())))
            .then_some(id)
    }))
}
