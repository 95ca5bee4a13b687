//! Phone callers dialling in (SPEC M6, M9): the meetings plugin's own
//! telephony side.
//!
//! The tenant routes a dial-in number here with the arguments `dial-in`.
//! A caller hears "please enter the meeting access code", keys it and `#`;
//! the code is checked and throttled like the web join's (`guess`: per
//! calling number, per code, and for all phone callers together). With
//! the code of a space whose session runs, the caller is in the roster at
//! once as `pstn` (everyone present is told), hears "you are joining the
//! meeting" (and "this call is being recorded" when it is), and joins the
//! session's **phone bridge**: a conference room of the session's phone
//! callers, each hearing the others. A recording started later is
//! announced to each of them (`live::tell_phones`). Hanging up leaves
//! the session; a registered participant's removal and the session's end
//! (by a participant or at 24 hours) hang the caller up (`live`).
//!
//! Browser participants do not hear phone callers yet, nor phone callers
//! them: the host has no WebRTC media side (docs/meetings.md).
//!
//! Uses `live` for the session and roster, `guess` for the throttle and
//! `model` for the leg's state ([`Dial`]).

use switchboard_sdk::calls::{self, CallEvent, CallEventKind, Cause, CollectOpts, OpEnd, Prompt};
use switchboard_sdk::http::ApiError;
use switchboard_sdk::{Error, kv, log};

use crate::guess::Attempt;
use crate::live;
use crate::model::{self, Dial, DialState, Live};

/// The route arguments of a dial-in number.
pub const DIAL_IN: &str = "dial-in";
/// Tries at the code before goodbye.
const TRIES: u8 = 3;

fn lib(name: &str) -> Prompt {
    Prompt::Library(name.to_string())
}

fn save(leg: &str, dial: Dial, op: String, collecting: bool) -> Result<(), Error> {
    let state = DialState {
        dial,
        op,
        collecting,
    };
    calls::set_state(leg, &serde_json::to_vec(&state).unwrap_or_default())
}

fn say(leg: &str, dial: Dial, words: &[&str], barge_in: bool) -> Result<(), Error> {
    let items: Vec<Prompt> = words.iter().map(|w| lib(w)).collect();
    match calls::play(leg, &items, barge_in) {
        Ok(op) => save(leg, dial, op, false),
        // The caller hung up meanwhile: nothing to say, and what this
        // event wrote stands (a wrong code keyed just before hanging up
        // still counts against the throttle). The stage is kept all the
        // same, so the `ended` that follows finds an admitted caller and
        // lets them leave.
        Err(_) if !answered(leg) => match save(leg, dial, String::new(), false) {
            Ok(()) | Err(Error::NotFound(_) | Error::InvalidArgument(_)) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Whether the leg is still up.
fn answered(leg: &str) -> bool {
    calls::get_leg(leg).is_ok_and(|l| l.state == calls::LegState::Answered)
}

fn close(leg: &str, words: &[&str]) -> Result<(), Error> {
    say(leg, Dial::Closing, words, false)
}

/// The plugin's API errors, as the host's for a call event.
fn host(e: ApiError) -> Error {
    Error::Internal(format!("{}: {}", e.code, e.message))
}

/// A call event of one of our legs.
pub fn on_call(e: CallEvent) -> Result<(), Error> {
    let leg = e.leg.as_str();
    if let CallEventKind::Offered(args) = &e.kind {
        if String::from_utf8_lossy(args).trim() != DIAL_IN {
            return calls::hangup(leg, Cause::Unavailable);
        }
        calls::answer(leg)?;
        return say(
            leg,
            Dial::Code { tries: 0 },
            &["welcome", "enter-access-code"],
            true,
        );
    }
    let Ok(state) = serde_json::from_slice::<DialState>(&e.state) else {
        return Ok(());
    };
    match (&e.kind, state.dial) {
        (CallEventKind::Played(p), dial) if p.op == state.op && p.end != OpEnd::Hangup => {
            match dial {
                Dial::Code { tries } if !state.collecting => {
                    let opts = CollectOpts {
                        max_digits: 12,
                        terminators: "#".into(),
                        first_ms: 10_000,
                        between_ms: 4_000,
                    };
                    let op = calls::collect(leg, &opts)?;
                    save(leg, Dial::Code { tries }, op, true)
                }
                Dial::Joining { lid, pid } | Dial::Announcing { lid, pid } => {
                    into_bridge(leg, &lid, &pid, &p.op)
                }
                Dial::Closing => calls::hangup(leg, Cause::Normal),
                _ => Ok(()),
            }
        }
        (CallEventKind::Collected(c), Dial::Code { tries })
            if c.op == state.op && c.end != OpEnd::Hangup =>
        {
            code(&e, tries, &c.digits)
        }
        // Out of the bridge other than for an announcement (it was full):
        // the caller cannot take part.
        (CallEventKind::Left(_), Dial::InBridge { lid, pid }) => {
            live::pstn_gone(&lid, &pid, "the phone bridge is full").map_err(host)?;
            close(leg, &["goodbye"])
        }
        (
            CallEventKind::Ended(_),
            Dial::Joining { lid, pid }
            | Dial::InBridge { lid, pid }
            | Dial::Announcing { lid, pid },
        ) => live::pstn_gone(&lid, &pid, "hung up").map_err(host),
        _ => Ok(()),
    }
}

/// The caller keyed `digits` as the access code.
fn code(e: &CallEvent, tries: u8, digits: &str) -> Result<(), Error> {
    let leg = e.leg.as_str();
    let again = |why: &str| {
        if tries + 1 >= TRIES {
            close(leg, &[why, "goodbye"])
        } else {
            say(
                leg,
                Dial::Code { tries: tries + 1 },
                &[why, "enter-access-code"],
                true,
            )
        }
    };
    if digits.is_empty() {
        return again("no-input");
    }
    let caller = &e.snapshot.caller;
    let attempt = match Attempt::check_phone(caller, digits) {
        Ok(a) => a,
        Err(_) => return close(leg, &["too-many-attempts", "goodbye"]),
    };
    let (space, session) = match live::by_code(attempt, digits) {
        Ok(found) => found,
        Err(e) if e.code == "code_not_found" => return again("invalid"),
        Err(e) if e.code == "no_live_session" => {
            return close(leg, &["meeting-not-started", "goodbye"]);
        }
        Err(e) => return Err(host(e)),
    };
    // Gone already: nobody to admit.
    if !answered(leg) {
        return Ok(());
    }
    let label = shown(caller);
    let p = match live::admit_pstn(&space, &session, model::NAME, label, Some(leg.to_string())) {
        Ok(p) => p,
        Err(e) if e.code == "session_full" || e.code == "bridge_full" => {
            return close(leg, &["unreachable", "goodbye"]);
        }
        Err(e) => return Err(host(e)),
    };
    let mut words = vec!["joining-meeting"];
    if session.recording.is_some() {
        words.push("recording-on");
    }
    say(
        leg,
        Dial::Joining {
            lid: session.id.clone(),
            pid: p.id,
        },
        &words,
        false,
    )
}

/// How a phone caller is shown in the roster: "Phone" and the last four
/// digits of the calling number (never the whole number).
fn shown(caller: &str) -> String {
    let digits: Vec<char> = caller.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 4 {
        return "Phone".into();
    }
    let last: String = digits[digits.len() - 4..].iter().collect();
    format!("Phone …{last}")
}

/// After a prompt: into the session's phone bridge, if the caller is still
/// in a running session (else goodbye). A recording that started while
/// the caller was out of the bridge (joining, or hearing an earlier
/// announcement) is said first, once. A bridge that takes no more (full,
/// or the caller's phone may not conference) ends the call.
fn into_bridge(leg: &str, lid: &str, pid: &str, played: &str) -> Result<(), Error> {
    let session = kv::get_json::<Live>(model::live(lid))?.filter(|l| l.ended_at.is_none());
    let me = match &session {
        Some(_) => live::participants(lid)
            .map_err(host)?
            .into_iter()
            .find(|p| p.id == pid && p.state == model::State::Present),
        None => None,
    };
    let (Some(session), Some(mut me)) = (session, me) else {
        log::info(&format!("phone caller {pid} is no longer in session {lid}"));
        return close(leg, &["left-meeting", "goodbye"]);
    };
    // An announcement is under way (queued after what just ended): its
    // own end takes the caller in.
    if me.told_op.as_deref().is_some_and(|op| op != played) {
        return Ok(());
    }
    let here = || (lid.to_string(), pid.to_string());
    if let Some(rec) = &session.recording
        && me.told.as_deref() != Some(rec.id.as_str())
    {
        let says = [lib("recording-started")];
        let op = calls::play(leg, &says, false)?;
        me.told = Some(rec.id.clone());
        me.told_op = Some(op.clone());
        live::save_participant(lid, &me).map_err(host)?;
        let (lid, pid) = here();
        return save(leg, Dial::Announcing { lid, pid }, op, false);
    }
    if me.told_op.take().is_some() {
        live::save_participant(lid, &me).map_err(host)?;
    }
    match calls::join(leg, &model::phone_bridge(lid)) {
        Ok(()) => {
            let (lid, pid) = here();
            save(leg, Dial::InBridge { lid, pid }, String::new(), false)
        }
        Err(Error::QuotaExceeded(_) | Error::Denied(_) | Error::InvalidArgument(_)) => {
            let why = if answered(leg) {
                "the phone bridge took no more"
            } else {
                "hung up"
            };
            live::pstn_gone(lid, pid, why).map_err(host)?;
            close(leg, &["unreachable", "goodbye"])
        }
        Err(e) => Err(e),
    }
}
