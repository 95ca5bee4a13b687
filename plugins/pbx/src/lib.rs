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
//! (the V5 hook voicemail will use). Every forward is a dial with purpose
//! `forward` on the user's behalf, so the tenant's dialing policy decides
//! it like any other (T1); a refused forward plays busy and hangs up.
//! A forward never forwards again (no loops).
//!
//! State lives on the legs (`set-state`), so the plugin keeps no table of
//! calls: the caller's leg knows its callee leg and the other way round.

use serde::{Deserialize, Serialize};
use switchboard_sdk::calls::{
    self, CallEvent, CallEventKind, Cause, DialOpts, DialPurpose, LegState, Tone,
};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _, Router};
use switchboard_sdk::{Error, Plugin, PrincipalKind, Request, Response, config, identity, kv};

struct Pbx;

switchboard_sdk::export_plugin!(Pbx);

/// How long ringback plays at most (the dial's ring time ends it first).
const RINGBACK_MS: u32 = 60_000;
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
    },
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

/// Places the call for `caller` to `to` (a number or `user:{id}`).
fn ring(caller: &str, shown_as: &str, user: &str, to: &str, forwarded: bool) -> Result<(), Error> {
    let ring_s: u32 = config::get("ring-seconds").unwrap_or(20);
    let opts = DialOpts {
        purpose: if forwarded {
            DialPurpose::Forward
        } else {
            DialPurpose::Call
        },
        on_behalf_of: (!shown_as.is_empty()).then(|| shown_as.to_string()),
        ring_ms: ring_s.clamp(5, 120) * 1000,
        state: serde_json::to_vec(&Role::Callee {
            caller: caller.to_string(),
            user: user.to_string(),
            forwarded,
            answered: false,
        })
        .unwrap_or_default(),
    };
    let callee = calls::dial(to, &opts)?;
    set(
        caller,
        &Role::Caller {
            callee: Some(callee),
        },
    )
}

/// The caller's call cannot be put through: busy tone, then hang up.
fn give_up(caller: &str, cause: Cause) -> Result<(), Error> {
    set(caller, &Role::Caller { callee: None })?;
    calls::play(caller, &[calls::tone(Tone::Busy, 3000)], false)?;
    calls::hangup(caller, cause)
}

fn on_call(e: &CallEvent) -> Result<(), Error> {
    let leg = e.leg.as_str();
    match (&e.kind, state_of(e)) {
        (CallEventKind::Offered(args), _) => {
            let wanted = String::from_utf8_lossy(args).trim().to_string();
            calls::answer(leg)?;
            let Some(user) = identity::lookup_user(&wanted)?.filter(|u| u.active) else {
                return give_up(leg, Cause::Unavailable);
            };
            let caller = calls::get_leg(leg)?.caller;
            calls::play(leg, &[calls::tone(Tone::Ringback, RINGBACK_MS)], false)?;
            let fwd = forward_of(&user.id);
            let (to, forwarded) = match &fwd.always {
                Some(target) => (target.clone(), true),
                None => (format!("user:{}", user.id), false),
            };
            match ring(leg, &caller, &user.id, &to, forwarded) {
                Ok(()) => Ok(()),
                Err(Error::Denied(_)) => give_up(leg, Cause::Restricted),
                Err(err) => Err(err),
            }
        }
        (
            CallEventKind::Answered,
            Some(Role::Callee {
                caller,
                user,
                forwarded,
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
                    user,
                    forwarded,
                    answered: true,
                },
            )?;
            calls::bridge(leg, &caller)
        }
        (
            CallEventKind::Ended(cause),
            Some(Role::Callee {
                caller,
                user,
                forwarded,
                answered,
            }),
        ) => {
            let Ok(snapshot) = calls::get_leg(&caller) else {
                return Ok(()); // The caller is gone too.
            };
            if answered {
                // The callee hung up: so does the caller.
                return calls::hangup(&caller, Cause::Normal);
            }
            let fwd = forward_of(&user);
            let next = match cause {
                Cause::Busy | Cause::Rejected => fwd.busy,
                Cause::NoAnswer | Cause::Unavailable => fwd.no_answer,
                _ => None,
            };
            match next {
                Some(target) if !forwarded => {
                    match ring(&caller, &snapshot.caller, &user, &target, true) {
                        Ok(()) => Ok(()),
                        Err(Error::Denied(_)) => give_up(&caller, Cause::Restricted),
                        Err(err) => Err(err),
                    }
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
        Router::new()
            .get("/forward", forward_show)
            .put("/forward", forward_set)
            .handle(&request)
    }

    fn on_call(e: CallEvent) -> Result<(), String> {
        on_call(&e).map_err(|err| code(&err))
    }
}

/// The signed-in user (registered, not a guest).
fn me(req: &Request) -> Result<String, ApiError> {
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
