//! PBX (SPEC T2, V5): calls between a tenant's users. The tenant admin
//! routes an extension to this plugin with the user it belongs to as the
//! route's arguments (`{"number": "201", "plugin": "pbx", "args": "bob"}`,
//! a login name or user id). A call to it:
//!
//! 1. is answered at once and hears ringback (in-band: the caller's phone
//!    shows the call answered; the call record says when);
//! 2. rings every registered device of the user (`dial("user:{id}")`,
//!    the host forks and the first device to answer wins) for the
//!    tenant's `ring-seconds`, showing the caller's name;
//! 3. is bridged with the device that answers; either side hanging up
//!    ends the other.
//!
//! Forwarding, which each user sets for themselves (`PUT /forward`):
//! `always` sends every call straight to another number or user; `busy`
//! and `no-answer` send the calls their devices refused or did not take
//! (V5); a user who set neither has those calls go to the tenant's
//! `voicemail` number, if the admin set one. A forward to another
//! plugin's number (voicemail) hands the caller over as the user's call
//! with the reason (`divert`), so voicemail knows whose mailbox and which
//! greeting. Any other forward is a dial with purpose
//! `forward` on the user's behalf, so the tenant's dialing policy decides
//! it like any other (T1); a refused forward plays busy and hangs up.
//! A forward never forwards again (no loops).
//!
//! Outside calls: a route whose args are `outside` (usually a pattern,
//! `{"number": "_9.", "plugin": "pbx", "args": "outside"}`) places the
//! number the phone dialled for the phone's user, through the dialing
//! policy. When the tenant wants an account code for that number's class,
//! the caller hears "please enter your account code", keys it in and `#`,
//! and the call is placed billed to it (an unknown code is refused).
//!
//! Blind transfer: a phone in a call transfers it (its REFER reaches us
//! as `transfer`); the other party hears ringback while the target rings
//! and is bridged with it on answer. The target is an extension (rung as
//! its user) or a number (a dial with purpose `transfer` on the
//! transferring user's behalf, so the policy's `transfer_external`
//! decides calls out), or another plugin's number (voicemail, an
//! attendant), which the other party is handed to. A refused or
//! unresolvable target is declined: the phone hears it failed and keeps
//! its call. Forwards to another plugin's number hand the caller over the
//! same way (the V5 divert to voicemail).
//!
//! Attended transfer: a phone with two calls joins their other parties
//! (REFER with Replaces): they are bridged with each other and the
//! phone's two legs end.
//!
//! State lives on the legs (`set-state`), so the plugin keeps no table of
//! calls: the caller's leg knows its callee leg and the other way round.
//!
//! Call recording under the tenant's policy (`policy`, `record`): calls
//! of chosen users or numbers recorded always or on demand (a code keyed
//! on the phone, or `POST /calls/{call}/recording`), announced to every
//! party, paused and resumed without a trace of the paused audio, sealed
//! into the `recording` plugin (`docs/call-recording.md`).
//!
//! | module | what |
//! |---|---|
//! | `record` | recording a call: start, announce, codes, pause, hand-over |
//! | `policy` | the tenant's recording policy and its admin API |

mod policy;
mod record;

use serde::{Deserialize, Serialize};
use switchboard_sdk::calls::{
    self, CallEvent, CallEventKind, Cause, CollectOpts, DialOpts, DialPurpose, DivertReason,
    LegState, Prompt, Tone,
};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _, Router};
use switchboard_sdk::{
    Error, Plugin, PrincipalKind, Request, Response, TimerEvent, config, identity, kv, tx,
};

struct Pbx;

switchboard_sdk::export_plugin!(Pbx);

/// This plugin's name (routes naming it are ours).
const NAME: &str = "pbx";
/// The route args of outside calls.
const OUTSIDE: &str = "outside";
/// How long ringback plays at most (the dial's ring time ends it first).
const RINGBACK_MS: u32 = 60_000;
/// The prefix of the dialing policy's refusal for a missing account code.
const CODE_REQUIRED: &str = "restricted: account code required";
/// Longest forward target.
const MAX_TARGET: usize = 64;

/// A user's forwarding.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Forward {
    /// Every call goes here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    always: Option<String>,
    /// Calls the user's devices refuse as busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    busy: Option<String>,
    /// Calls nobody answers within the ring time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    no_answer: Option<String>,
}

/// What a leg is to this plugin.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "kebab-case")]
enum Role {
    /// The caller's leg, and the leg ringing for it.
    Caller { callee: Option<String> },
    /// A leg we placed for `caller`, to `user` (`forwarded`: a forward's
    /// leg, never forwarded again).
    Callee {
        caller: String,
        user: String,
        forwarded: bool,
        #[serde(default)]
        answered: bool,
        /// The user whose forward rang this number (a mobile): still
        /// their call to the recording policy.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        forwarded_for: String,
    },
    /// A caller's leg keying in an account code for a call out to `to`.
    Code { to: String, user: Option<String> },
    /// A leg whose phone transferred its call away: its end ends nothing.
    Transferred,
}

/// Where a number goes, as this plugin rings it.
enum Target {
    /// A user's devices (an extension routed to this plugin, or `user:`).
    User(String),
    /// Anything else the host dials as it is (a number, `device:`).
    Dial(String),
    /// Another plugin's number (voicemail, an attendant): the call is
    /// handed to it.
    Elsewhere(String),
    /// Nothing: an extension of ours whose user is gone, or (for a
    /// transfer) an unknown number.
    Nobody,
}

/// What `to` reaches: an extension of ours rings its user. A number no
/// route names is dialled as it is (the policy reads it) if `loose`;
/// otherwise only an E.164 number is (a phone's mistyped transfer target
/// must not drop the caller).
fn resolve(to: &str, loose: bool) -> Result<Target, Error> {
    if let Some(user) = to.strip_prefix("user:") {
        return Ok(Target::User(user.to_string()));
    }
    if to.starts_with("device:") {
        return Ok(Target::Dial(to.to_string()));
    }
    match calls::route_of(to) {
        Ok(Some(route)) if route.plugin == NAME => {
            let args = String::from_utf8_lossy(&route.args.unwrap_or_default())
                .trim()
                .to_string();
            if args == OUTSIDE {
                return Ok(Target::Dial(to.to_string()));
            }
            match identity::lookup_user(&args)?.filter(|u| u.active) {
                Some(u) => Ok(Target::User(u.id)),
                None => Ok(Target::Nobody),
            }
        }
        Ok(Some(_)) => Ok(Target::Elsewhere(to.to_string())),
        Ok(None) if loose || to.starts_with('+') => Ok(Target::Dial(to.to_string())),
        Ok(None) => Ok(Target::Nobody),
        Err(Error::InvalidArgument(_)) => Ok(Target::Dial(to.to_string())),
        Err(err) => Err(err),
    }
}

impl Target {
    /// The dial string and the user rung, if a user.
    fn dial(&self) -> Option<(String, String)> {
        match self {
            Target::User(id) => Some((format!("user:{id}"), id.clone())),
            Target::Dial(n) => Some((n.clone(), String::new())),
            Target::Elsewhere(_) | Target::Nobody => None,
        }
    }
}

fn code(e: &Error) -> String {
    format!("{e:?}")
}

fn state_of(e: &CallEvent) -> Option<Role> {
    serde_json::from_slice(&e.state).ok()
}

fn set(leg: &str, role: &Role) -> Result<(), Error> {
    calls::set_state(leg, &serde_json::to_vec(role).unwrap_or_default())
}

fn forward_of(user: &str) -> Forward {
    kv::get_json(format!("fwd/{user}"))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// A call this plugin places for the leg `caller`.
struct Ring<'a> {
    caller: &'a str,
    /// What the rung phone shows as calling.
    shown: &'a str,
    /// The user it is placed for (their dialing restriction applies).
    for_user: Option<String>,
    /// The leg whose phone it is placed for (the host takes its user and
    /// holds the call to that phone's restriction too).
    for_leg: Option<&'a str>,
    /// The user rung (empty for a number).
    user: &'a str,
    to: &'a str,
    purpose: DialPurpose,
    account_code: Option<String>,
}

/// Places the call; returns the new leg (the caller's state names it).
fn ring(r: Ring<'_>) -> Result<String, Error> {
    let ring_s: u32 = config::get("ring-seconds").unwrap_or(20);
    let forwarded_for = if r.purpose == DialPurpose::Forward && r.user.is_empty() {
        r.for_user.clone().unwrap_or_default()
    } else {
        String::new()
    };
    let opts = DialOpts {
        purpose: r.purpose,
        on_behalf_of: r.for_user.filter(|u| !u.is_empty()),
        for_leg: r.for_leg.map(str::to_string),
        ring_ms: ring_s.clamp(5, 120) * 1000,
        state: serde_json::to_vec(&Role::Callee {
            caller: r.caller.to_string(),
            user: r.user.to_string(),
            // A forward, or a call to a number, is never forwarded again.
            forwarded: r.purpose == DialPurpose::Forward || r.user.is_empty(),
            answered: false,
            forwarded_for,
        })
        .unwrap_or_default(),
        account_code: r.account_code,
        caller_id: Some(
            r.shown
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "+._-".contains(*c))
                .take(64)
                .collect::<String>(),
        )
        .filter(|shown| !shown.is_empty()),
    };
    let callee = calls::dial(r.to, &opts)?;
    set(
        r.caller,
        &Role::Caller {
            callee: Some(callee.clone()),
        },
    )?;
    Ok(callee)
}

/// Rings a forward of `user`'s call (leg `caller`) to `target`; with
/// `plugin_only` (the tenant's voicemail number) only another plugin's
/// number is taken, never a number dialled out.
fn forward(
    caller: &str,
    user: &str,
    target: &str,
    reason: DivertReason,
    plugin_only: bool,
) -> Result<(), Error> {
    let resolved = resolve(target, true)?;
    if plugin_only && !matches!(resolved, Target::Elsewhere(_)) {
        return give_up(caller, Cause::Unavailable);
    }
    if let Target::Elsewhere(number) = &resolved {
        // Voicemail, an attendant: the caller goes there as the user's
        // call, and why (a number that plugin cannot take: the caller
        // hears busy).
        set(caller, &Role::Transferred)?;
        return match calls::divert(caller, number, user, reason) {
            Err(Error::NotFound(_) | Error::InvalidArgument(_)) => {
                give_up(caller, Cause::Unavailable)
            }
            other => other,
        };
    }
    let Some((to, rung)) = resolved.dial() else {
        return give_up(caller, Cause::Unavailable);
    };
    let shown = calls::get_leg(caller)?.caller;
    let placed = ring(Ring {
        caller,
        shown: &shown,
        for_user: Some(user.to_string()),
        for_leg: None,
        user: &rung,
        to: &to,
        purpose: DialPurpose::Forward,
        account_code: None,
    });
    match placed {
        Ok(_) => Ok(()),
        Err(err) => match refused(&err) {
            Some(cause) => give_up(caller, cause),
            None => Err(err),
        },
    }
}

/// A call out for the phone's user (an `outside` route), billed to
/// `code`; asks for an account code when the policy wants one.
fn call_out(leg: &str, to: &str, user: Option<String>, code: Option<String>) -> Result<(), Error> {
    // Only a tenant's own phones call out through us: an `outside` route
    // reached from a trunk (no user) would be an open relay.
    if user.is_none() {
        return give_up(leg, Cause::Restricted);
    }
    if code
        .as_ref()
        .is_some_and(|c| !(2..=16).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_digit()))
    {
        return give_up(leg, Cause::Restricted);
    }
    let placed = ring(Ring {
        caller: leg,
        shown: "",
        for_user: user.clone(),
        for_leg: Some(leg),
        user: "",
        to,
        purpose: DialPurpose::Call,
        account_code: code.clone(),
    });
    match placed {
        Ok(_) => {
            calls::play(leg, &[calls::tone(Tone::Ringback, RINGBACK_MS)], false)?;
            Ok(())
        }
        Err(Error::Denied(why)) if code.is_none() && why.starts_with(CODE_REQUIRED) => {
            set(
                leg,
                &Role::Code {
                    to: to.to_string(),
                    user,
                },
            )?;
            calls::play(leg, &[Prompt::Library("enter-account-code".into())], true)?;
            calls::collect(
                leg,
                &CollectOpts {
                    max_digits: 16,
                    terminators: "#".into(),
                    first_ms: 10_000,
                    between_ms: 5_000,
                },
            )?;
            Ok(())
        }
        Err(err) => match refused(&err) {
            Some(cause) => give_up(leg, cause),
            None => Err(err),
        },
    }
}

/// Carries out a blind transfer leg `leg`'s phone asked for: its peer
/// hears ringback and is rung through to `to`; this leg ends (the phone
/// hears it went through). Declined when there is no peer or no way.
fn transfer(e: &CallEvent, role: Option<Role>, to: &str) -> Result<(), Error> {
    let leg = e.leg.as_str();
    // As things are now, not as the event was queued: the leg may have
    // ended, its peer hung up or been transferred itself meanwhile.
    let Ok(me) = calls::get_leg(leg) else {
        return Ok(());
    };
    if me.state != LegState::Answered {
        return Ok(());
    }
    // The other party: the leg bridged with this one, or the one it is
    // about to be bridged with (a transfer right after the answer).
    let pending = match &role {
        Some(Role::Callee {
            caller,
            answered: true,
            ..
        }) => Some(caller.clone()),
        _ => None,
    };
    let peer = me
        .bridged_with
        .clone()
        .or(pending)
        .and_then(|p| calls::get_leg(&p).ok())
        .filter(|p| p.state == LegState::Answered);
    let Some(peer) = peer else {
        return calls::decline_transfer(leg, Cause::Rejected);
    };
    // The call the transfer changes.
    let call = role.as_ref().and_then(|r| call_of(leg, r));
    let target = match resolve(to, false) {
        Ok(Target::Elsewhere(number)) => {
            // To another plugin's number: the other party goes there
            // (first: a number that plugin cannot take is declined). A
            // recorded party goes once its recording has ended.
            if call.as_deref() == Some(peer.id.as_str())
                && record::transferring(&peer.id, Some(&number))?
            {
                if let Some(c) = &call {
                    record::left(c, leg)?;
                }
                set(leg, &Role::Transferred)?;
                return calls::hangup(leg, Cause::Normal);
            }
            return match calls::hand_off(&peer.id, &number) {
                Ok(()) => {
                    if let Some(c) = &call {
                        record::left(c, leg)?;
                    }
                    set(leg, &Role::Transferred)?;
                    calls::hangup(leg, Cause::Normal)
                }
                Err(Error::NotFound(_) | Error::InvalidArgument(_)) => {
                    calls::decline_transfer(leg, Cause::Unavailable)
                }
                Err(err) => Err(err),
            };
        }
        Ok(t) => t.dial(),
        Err(err) => match refused(&err) {
            Some(_) => None,
            None => return Err(err),
        },
    };
    let Some((target, rung)) = target else {
        return calls::decline_transfer(leg, Cause::Unavailable);
    };
    // The transferring user: the one rung on this leg, or the one whose
    // phone placed it (none: the policy lets the call stay inside).
    let by = match role {
        Some(Role::Callee { user, .. }) if !user.is_empty() => Some(user),
        _ => me.user.clone(),
    };
    let placed = ring(Ring {
        caller: &peer.id,
        shown: &peer.caller,
        for_user: by,
        for_leg: Some(leg),
        user: &rung,
        to: &target,
        purpose: DialPurpose::Transfer,
        account_code: None,
    });
    match placed {
        Ok(_) => {
            if let Some(c) = &call {
                // A recorded call's recording ends with the transfer (its
                // owner may be the one leaving); the new pair is weighed
                // afresh. The party who stays takes their user along.
                if *c == peer.id {
                    record::transferring(c, None)?;
                } else {
                    record::move_leg(&[c.as_str()], &peer.id, &peer.id)?;
                }
                record::left(c, leg)?;
            }
            set(leg, &Role::Transferred)?;
            calls::hangup(leg, Cause::Normal)?;
            calls::play(&peer.id, &[calls::tone(Tone::Ringback, RINGBACK_MS)], false)?;
            Ok(())
        }
        Err(err) => match refused(&err) {
            Some(cause) => calls::decline_transfer(leg, cause),
            None => Err(err),
        },
    }
}

/// The other party of a leg: its bridge partner, answered.
fn peer_of(leg: &str) -> Option<calls::LegSnapshot> {
    let me = calls::get_leg(leg).ok()?;
    let peer = calls::get_leg(&me.bridged_with?).ok()?;
    (peer.state == LegState::Answered).then_some(peer)
}

/// An attended transfer: the phone of `leg` connects its other party with
/// that of its other call `other` and leaves both calls.
fn attended(leg: &str, other: &str) -> Result<(), Error> {
    let (Some(a), Some(c)) = (peer_of(leg), peer_of(other)) else {
        return calls::decline_transfer(leg, Cause::Rejected);
    };
    if a.id == other || c.id == leg {
        // The phone's two calls are each other's: nothing to join.
        return calls::decline_transfer(leg, Cause::Rejected);
    }
    // A call being recorded is not joined with another (its recording's
    // owner and announcement would not follow): declined.
    for l in [leg, other, a.id.as_str(), c.id.as_str()] {
        if record::load(l)?.is_some() {
            return calls::decline_transfer(leg, Cause::Rejected);
        }
    }
    // The two parties are each other's now: either hanging up ends the
    // other.
    set(
        &a.id,
        &Role::Caller {
            callee: Some(c.id.clone()),
        },
    )?;
    set(
        &c.id,
        &Role::Callee {
            caller: a.id.clone(),
            user: String::new(),
            forwarded: true,
            answered: true,
            forwarded_for: String::new(),
        },
    )?;
    // Their users are on the joined call (keyed by `a`) now; the phone's
    // two legs are on nothing.
    let old: Vec<&str> = vec![leg, other, a.id.as_str(), c.id.as_str()];
    record::move_leg(&old, &a.id, &a.id)?;
    record::move_leg(&old, &c.id, &a.id)?;
    for l in [leg, other] {
        for call in &old {
            record::left(call, l)?;
        }
        set(l, &Role::Transferred)?;
        calls::hangup(l, Cause::Normal)?;
    }
    calls::bridge(&a.id, &c.id)
}

/// How a dial the host refused is told to the caller (or to a phone
/// whose transfer it was); `None` for a failure worth retrying (the
/// event is delivered again).
fn refused(err: &Error) -> Option<Cause> {
    match err {
        Error::Denied(_) => Some(Cause::Restricted),
        Error::QuotaExceeded(_) => Some(Cause::Busy),
        Error::InvalidArgument(_) | Error::NotFound(_) | Error::TooLarge(_) => {
            Some(Cause::Unavailable)
        }
        _ => None,
    }
}

/// The caller's call cannot be put through: why (a refused number), busy
/// tone, then hang up.
fn give_up(caller: &str, cause: Cause) -> Result<(), Error> {
    set(caller, &Role::Caller { callee: None })?;
    let mut items = Vec::new();
    if cause == Cause::Restricted {
        items.push(Prompt::Library("restricted".into()));
    }
    items.push(calls::tone(Tone::Busy, 3000));
    calls::play(caller, &items, false)?;
    calls::hangup(caller, cause)
}

/// The call a leg is part of: the caller's leg names it.
fn call_of(leg: &str, role: &Role) -> Option<String> {
    match role {
        Role::Caller { .. } => Some(leg.to_string()),
        Role::Callee { caller, .. } => Some(caller.clone()),
        Role::Code { .. } | Role::Transferred => None,
    }
}

fn on_call(e: &CallEvent) -> Result<(), Error> {
    let leg = e.leg.as_str();
    // A leg that ends or goes to another plugin leaves its call.
    if matches!(
        e.kind,
        CallEventKind::Ended(_) | CallEventKind::HandedOff(_)
    ) {
        if let Some(call) = state_of(e).and_then(|role| call_of(leg, &role)) {
            record::left(&call, leg)?;
        }
        record::gone(leg)?;
    }
    match (&e.kind, state_of(e)) {
        (CallEventKind::Offered(args), _) => {
            let wanted = String::from_utf8_lossy(args).trim().to_string();
            calls::answer(leg)?;
            if wanted == OUTSIDE {
                let l = &e.snapshot;
                return call_out(leg, &l.callee, l.user.clone(), None);
            }
            let Some(user) = identity::lookup_user(&wanted)?.filter(|u| u.active) else {
                return give_up(leg, Cause::Unavailable);
            };
            calls::play(leg, &[calls::tone(Tone::Ringback, RINGBACK_MS)], false)?;
            match forward_of(&user.id).always {
                Some(target) => forward(leg, &user.id, &target, DivertReason::Always, false),
                None => {
                    let caller = e.snapshot.user.clone();
                    let placed = ring(Ring {
                        caller: leg,
                        shown: &e.snapshot.caller,
                        for_user: caller,
                        for_leg: Some(leg),
                        user: &user.id,
                        to: &format!("user:{}", user.id),
                        purpose: DialPurpose::Call,
                        account_code: None,
                    });
                    match placed {
                        Ok(_) => Ok(()),
                        Err(err) => match refused(&err) {
                            Some(cause) => give_up(leg, cause),
                            None => Err(err),
                        },
                    }
                }
            }
        }
        (CallEventKind::Collected(c), Some(Role::Code { to, user })) => {
            if c.digits.is_empty() {
                return give_up(leg, Cause::Restricted);
            }
            call_out(leg, &to, user, Some(c.digits.clone()))
        }
        (CallEventKind::Transfer(to), role) => transfer(e, role, to),
        (CallEventKind::AttendedTransfer(other), _) => attended(leg, other),
        (
            CallEventKind::Answered,
            Some(Role::Callee {
                caller,
                user,
                forwarded,
                forwarded_for,
                ..
            }),
        ) => {
            // Either side may have ended since: this leg's `ended` comes
            // next and settles the caller; a caller gone ends this leg.
            if !calls::get_leg(leg).is_ok_and(|l| l.state == LegState::Answered) {
                return Ok(());
            }
            let caller_live = calls::get_leg(&caller).is_ok_and(|c| c.state == LegState::Answered);
            if !caller_live {
                return calls::hangup(leg, Cause::Normal);
            }
            set(
                leg,
                &Role::Callee {
                    caller: caller.clone(),
                    user: user.clone(),
                    forwarded,
                    answered: true,
                    forwarded_for: forwarded_for.clone(),
                },
            )?;
            // A recorded call: the parties hear that first.
            if record::answered(&caller, leg, &user, &forwarded_for)? {
                return Ok(());
            }
            calls::bridge(leg, &caller)
        }
        (CallEventKind::Played(p), Some(role)) => match call_of(leg, &role) {
            Some(call) => record::played(&call, leg, &p.op),
            None => Ok(()),
        },
        (CallEventKind::Digit(k), Some(role)) => match (call_of(leg, &role), k.chars().next()) {
            (Some(call), Some(key)) => record::pressed(&call, leg, key, e.at_ms),
            _ => Ok(()),
        },
        (CallEventKind::Recorded(r), _) => record::recorded(leg, r, e.at_ms),
        (CallEventKind::RecordingChunk(c), _) => record::chunk(leg, c),
        (
            CallEventKind::Ended(cause),
            Some(Role::Callee {
                caller,
                user,
                forwarded,
                answered,
                ..
            }),
        ) => {
            if calls::get_leg(&caller).is_err() {
                return Ok(()); // The caller is gone too.
            }
            if answered {
                // The callee hung up: so does the caller.
                return calls::hangup(&caller, Cause::Normal);
            }
            let fwd = forward_of(&user);
            // Unset, busy and no-answer go to the tenant's voicemail (a
            // plugin's number only: if its route is gone, nothing is
            // dialled out instead).
            let voicemail = || {
                config::get::<String>("voicemail")
                    .filter(|n| !n.is_empty())
                    .map(|n| (n, true))
            };
            let mine = |t: Option<String>| t.map(|t| (t, false));
            let next = match cause {
                Cause::Busy | Cause::Rejected => mine(fwd.busy)
                    .or_else(voicemail)
                    .map(|(t, only)| (t, only, DivertReason::Busy)),
                Cause::NoAnswer | Cause::Unavailable => mine(fwd.no_answer)
                    .or_else(voicemail)
                    .map(|(t, only)| (t, only, DivertReason::NoAnswer)),
                _ => None,
            };
            match next {
                Some((target, only, reason)) if !forwarded => {
                    forward(&caller, &user, &target, reason, only)
                }
                _ => give_up(&caller, *cause),
            }
        }
        (
            CallEventKind::Ended(_),
            Some(Role::Caller {
                callee: Some(callee),
            }),
        ) => match calls::hangup(&callee, Cause::Normal) {
            Ok(()) | Err(Error::NotFound(_)) => Ok(()),
            Err(err) => Err(err),
        },
        _ => Ok(()),
    }
}

impl Plugin for Pbx {
    fn handle(request: Request) -> Response {
        let mut response = Router::new()
            .get("/forward", forward_show)
            .put("/forward", forward_set)
            .get("/calls", record::list)
            .post("/calls/:call/recording", record::control)
            .get("/admin/recording/stuck", record::stuck)
            .post("/admin/recording/stuck/:rid", record::resolve_stuck)
            .get("/admin/recording", policy::show)
            .put("/admin/recording", policy::set)
            .put("/admin/recording/announcement", policy::upload)
            .delete("/admin/recording/announcement", policy::remove)
            .handle(&request);
        tx::finish(&mut response);
        response
    }

    fn on_call(e: CallEvent) -> Result<(), String> {
        on_call(&e).map_err(|err| code(&err))
    }

    fn on_timer(timer: TimerEvent) -> Result<(), String> {
        match timer.name.as_str() {
            "feed" => record::feed(&String::from_utf8_lossy(&timer.payload)),
            "watch" => record::watch(&String::from_utf8_lossy(&timer.payload)),
            "unpause" => record::unpause(&String::from_utf8_lossy(&timer.payload)),
            "live" => record::live(&String::from_utf8_lossy(&timer.payload)),
            _ => Ok(()),
        }
        .map_err(|err| code(&err))
    }
}

/// The signed-in user (registered, not a guest).
pub(crate) fn me(req: &Request) -> Result<String, ApiError> {
    let user = req.user()?.to_string();
    if req.principal.kind != PrincipalKind::Registered {
        return Err(ApiError::new(
            403,
            "registered_only",
            "for the tenant's users",
        ));
    }
    Ok(user)
}

fn forward_show(req: &Request, _: &Params) -> Result<Response, ApiError> {
    let user = me(req)?;
    Ok(http::json(200, &forward_of(&user)))
}

fn forward_set(req: &Request, _: &Params) -> Result<Response, ApiError> {
    let user = me(req)?;
    let fwd: Forward = serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::new(
            400,
            "invalid_forward",
            format!("not a forwarding setting: {e}"),
        )
    })?;
    for target in [&fwd.always, &fwd.busy, &fwd.no_answer]
        .into_iter()
        .flatten()
    {
        let ok = !target.is_empty()
            && target.len() <= MAX_TARGET
            && target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+:._-*# ".contains(&b));
        if !ok {
            return Err(ApiError::new(
                400,
                "invalid_forward",
                format!("forward target {target:?}: a number, user:NAME or device:NAME"),
            ));
        }
    }
    kv::set_json(format!("fwd/{user}"), &fwd)?;
    Ok(http::json(200, &fwd))
}
