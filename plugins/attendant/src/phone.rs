//! The telephone side (SPEC V4): a caller through an attendant's menus.
//!
//! A call reaches the plugin through a number the tenant routed here with
//! an attendant's id as the route's arguments. The menu for the moment
//! (open, closed, holiday: `hours`) says its prompts, which keys cut
//! short, and waits for a key. A choice leads to another menu, an
//! extension or a queue (the caller is handed to that number's plugin), a
//! mailbox (handed to the voicemail number as that user's call), a fixed
//! outside number (placed through the tenant's dialing policy, the caller
//! hearing ringback until it answers and bridged with it), or goodbye.
//! With dial-by-extension a caller may key any number routed in the
//! tenant to another plugin. A wrong key or none says so and asks again;
//! when the menu's tries run out the caller goes to its default (or
//! goodbye). A caller never keys an outside number: only the admin's
//! fixed numbers are dialled, and only as the policy allows.
//!
//! The leg's stage is kept with the leg (`set-state`); an event of any
//! operation but the one awaited is stale and ignored.

use serde::{Deserialize, Serialize};
use switchboard_sdk::calls::{
    self, CallEvent, CallEventKind, Cause, CollectOpts, DialOpts, DialPurpose, DivertReason, OpEnd,
    Prompt, Tone,
};
use switchboard_sdk::{Error, log, now_ms};

use crate::hours;
use crate::model::{self, Attendant, Say, Target};

/// Menus a call may pass through (a backstop: the configuration's checks
/// already keep a silent caller from going round).
const MAX_HOPS: u8 = 20;
/// How long an outside number rings, ms.
const RING_MS: u32 = 30_000;
/// The plugin whose numbers are users' extensions (dial-by-extension).
const EXTENSIONS: &str = "pbx";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "kebab-case")]
enum Stage {
    /// A menu speaks, then waits for keys.
    Menu {
        att: String,
        menu: String,
        tries: u8,
        hops: u8,
    },
    /// The caller hears ringback while `out` rings.
    Calling { out: String },
    /// The caller is bridged with `out`.
    Connected { out: String },
    /// The outside leg placed for `caller` from menu `menu` (as the
    /// menu's `default`, or a choice).
    Outbound {
        caller: String,
        att: String,
        menu: String,
        hops: u8,
        ringback: String,
        #[serde(default)]
        answered: bool,
        #[serde(default)]
        default: bool,
    },
    /// The last words, then hang up.
    Closing,
}

#[derive(Debug, Serialize, Deserialize)]
struct LegState {
    stage: Stage,
    #[serde(default)]
    op: String,
    #[serde(default)]
    collecting: bool,
}

fn state_bytes(stage: Stage, op: String, collecting: bool) -> Vec<u8> {
    serde_json::to_vec(&LegState {
        stage,
        op,
        collecting,
    })
    .unwrap_or_default()
}

fn save(leg: &str, stage: Stage, op: String, collecting: bool) -> Result<(), Error> {
    calls::set_state(leg, &state_bytes(stage, op, collecting))
}

fn lib(name: &str) -> Prompt {
    Prompt::Library(name.to_string())
}

fn close(leg: &str, words: &[&str]) -> Result<(), Error> {
    let items: Vec<Prompt> = words.iter().map(|w| lib(w)).collect();
    let op = calls::play(leg, &items, false)?;
    save(leg, Stage::Closing, op, false)
}

/// A call event of one of our legs.
pub fn on_call(e: CallEvent) -> Result<(), Error> {
    let leg = e.leg.as_str();
    if let CallEventKind::Offered(args) = &e.kind {
        calls::answer(leg)?;
        let id = String::from_utf8_lossy(args).trim().to_string();
        let Some(a) = model::valid_id(&id)
            .then(|| model::attendant(&id))
            .transpose()?
            .flatten()
        else {
            log::warn(&format!("no attendant {id:?} for this number"));
            return close(leg, &["unreachable", "goodbye"]);
        };
        let (menu, _, _) = hours::menu_at(&a, now_ms());
        return run_menu(leg, &id, &a, &menu, 0, 0, Vec::new());
    }
    let Ok(state) = serde_json::from_slice::<LegState>(&e.state) else {
        return Ok(());
    };
    match (&e.kind, state.stage) {
        (CallEventKind::Played(p), stage) if p.op == state.op && p.end != OpEnd::Hangup => {
            match stage {
                Stage::Menu { att, menu, .. } if !state.collecting => {
                    let Some(opts) = collect_opts(&att, &menu)? else {
                        return close(leg, &["goodbye"]);
                    };
                    let op = calls::collect(leg, &opts)?;
                    save(leg, stage_again(&e.state)?, op, true)
                }
                Stage::Closing => calls::hangup(leg, Cause::Normal),
                _ => Ok(()),
            }
        }
        (
            CallEventKind::Collected(c),
            Stage::Menu {
                att,
                menu,
                tries,
                hops,
            },
        ) if c.op == state.op && c.end != OpEnd::Hangup => {
            choose(&e, &att, &menu, tries, hops, &c.digits)
        }
        // The outside number answered: the caller is put through (if
        // they are still there).
        (
            CallEventKind::Answered,
            Stage::Outbound {
                caller,
                att,
                menu,
                hops,
                ringback,
                default,
                ..
            },
        ) => {
            let waiting =
                calls::get_leg(&caller).is_ok_and(|c| c.state == calls::LegState::Answered);
            if !waiting {
                return ignore_gone(calls::hangup(leg, Cause::Normal));
            }
            calls::bridge(leg, &caller)?;
            save(
                leg,
                Stage::Outbound {
                    caller: caller.clone(),
                    att,
                    menu,
                    hops,
                    ringback,
                    answered: true,
                    default,
                },
                String::new(),
                false,
            )?;
            save(
                &caller,
                Stage::Connected {
                    out: leg.to_string(),
                },
                String::new(),
                false,
            )
        }
        // Unbridged while the outside leg is still up: the media of the
        // two could not be joined, so neither would hear the other and
        // both calls end. (When the outside party hangs up, the bridge
        // ends too: its `ended` hangs the caller up, normally.)
        (CallEventKind::Unbridged, Stage::Connected { out })
            if calls::get_leg(&out).is_ok_and(|l| l.state == calls::LegState::Answered) =>
        {
            ignore_gone(calls::hangup(&out, Cause::Failed))?;
            ignore_gone(calls::hangup(leg, Cause::Failed))
        }
        // The outside number is over: after talking, so is the call;
        // unanswered or refused, the caller is back at the menu.
        (
            CallEventKind::Ended(_),
            Stage::Outbound {
                caller,
                att,
                menu,
                hops,
                ringback,
                answered,
                default,
            },
        ) => {
            let Ok(c) = calls::get_leg(&caller) else {
                return Ok(());
            };
            if answered || c.state != calls::LegState::Answered {
                return ignore_gone(calls::hangup(&caller, Cause::Normal));
            }
            ignore_gone(calls::stop(&ringback))?;
            let Some(a) = model::attendant(&att)? else {
                return close(&caller, &["goodbye"]);
            };
            if default {
                return close(&caller, &["unreachable", "goodbye"]);
            }
            run_menu(
                &caller,
                &att,
                &a,
                &menu,
                0,
                hops + 1,
                vec![lib("unreachable")],
            )
        }
        // The caller hung up: so does the outside leg.
        (CallEventKind::Ended(_), Stage::Calling { out } | Stage::Connected { out }) => {
            ignore_gone(calls::hangup(&out, Cause::Normal))
        }
        _ => Ok(()),
    }
}

/// The stage stored with the event, again (moved out by the match).
fn stage_again(state: &[u8]) -> Result<Stage, Error> {
    serde_json::from_slice::<LegState>(state)
        .map(|s| s.stage)
        .map_err(|e| Error::Internal(format!("leg state: {e}")))
}

fn ignore_gone(r: Result<(), Error>) -> Result<(), Error> {
    match r {
        Ok(()) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The keys menu `menu` of attendant `att` waits for (none: the menu is
/// gone).
fn collect_opts(att: &str, menu: &str) -> Result<Option<CollectOpts>, Error> {
    let Some(m) = model::attendant(att)?.and_then(|a| a.menus.get(menu).cloned()) else {
        return Ok(None);
    };
    Ok(Some(if m.dial_by_extension {
        CollectOpts {
            max_digits: 8,
            terminators: "#".into(),
            first_ms: m.wait_ms,
            between_ms: 2_000,
        }
    } else {
        CollectOpts {
            max_digits: 1,
            terminators: String::new(),
            first_ms: m.wait_ms,
            between_ms: 1_000,
        }
    }))
}

/// Says menu `menu` (after `before`) and waits for a key.
fn run_menu(
    leg: &str,
    att: &str,
    a: &Attendant,
    menu: &str,
    tries: u8,
    hops: u8,
    before: Vec<Prompt>,
) -> Result<(), Error> {
    if hops > MAX_HOPS {
        return close(leg, &["goodbye"]);
    }
    let Some(m) = a.menus.get(menu) else {
        return close(leg, &["goodbye"]);
    };
    let stage = || Stage::Menu {
        att: att.to_string(),
        menu: menu.to_string(),
        tries,
        hops,
    };
    let mut items = before;
    for s in &m.say {
        match s {
            Say::Library(n) => items.push(lib(n)),
            Say::Prompt(n) => match model::prompt(n)? {
                Some(r) => items.push(Prompt::Blob(r.blob)),
                None => log::warn(&format!("uploaded prompt {n} is gone")),
            },
        }
    }
    if !items.is_empty() {
        match calls::play(leg, &items, true) {
            Ok(op) => return save(leg, stage(), op, false),
            // A prompt the library lacks, or audio gone: the menu goes on
            // without words rather than failing the call.
            Err(Error::NotFound(e) | Error::InvalidArgument(e)) => {
                log::warn(&format!("menu {menu} cannot be said: {e}"));
            }
            Err(e) => return Err(e),
        }
    }
    let Some(opts) = collect_opts(att, menu)? else {
        return close(leg, &["goodbye"]);
    };
    let op = calls::collect(leg, &opts)?;
    save(leg, stage(), op, true)
}

/// The caller keyed `digits` at menu `menu`.
fn choose(
    e: &CallEvent,
    att: &str,
    menu: &str,
    tries: u8,
    hops: u8,
    digits: &str,
) -> Result<(), Error> {
    let leg = e.leg.as_str();
    let Some(a) = model::attendant(att)? else {
        return close(leg, &["goodbye"]);
    };
    let Some(m) = a.menus.get(menu).cloned() else {
        return close(leg, &["goodbye"]);
    };
    if let Some(t) = m.choices.get(digits) {
        return go(e, att, &a, menu, hops, t, false);
    }
    let why = if digits.is_empty() {
        "no-input"
    } else {
        // Dial-by-extension reaches users' extensions only: numbers the
        // tenant routed, by the number itself, to the `pbx` plugin. Never
        // a pattern (`_9.` outside lines), never another plugin's number
        // (a mailbox's PIN prompt): what callers from outside may key.
        if m.dial_by_extension
            && digits.len() >= 2
            && digits.bytes().all(|b| b.is_ascii_digit())
            && matches!(calls::route_of(digits), Ok(Some(r)) if r.exact && r.plugin == EXTENSIONS)
        {
            let t = Target::Extension {
                number: digits.to_string(),
            };
            return go(e, att, &a, menu, hops, &t, false);
        }
        "invalid"
    };
    if tries + 1 >= m.tries {
        return match &m.default {
            Some(t) => go(e, att, &a, menu, hops, t, true),
            None => close(leg, &[why, "goodbye"]),
        };
    }
    run_menu(leg, att, &a, menu, tries + 1, hops, vec![lib(why)])
}

/// Takes the caller where `t` leads, from menu `from`. A target that
/// fails sends the caller back to the menu, unless it was the menu's
/// default (`default`): then goodbye, so a silent caller is not sent
/// round again (nor an outside number dialled again and again).
fn go(
    e: &CallEvent,
    att: &str,
    a: &Attendant,
    from: &str,
    hops: u8,
    t: &Target,
    default: bool,
) -> Result<(), Error> {
    let leg = e.leg.as_str();
    let back = |why: &str| {
        if default {
            close(leg, &[why, "goodbye"])
        } else {
            run_menu(leg, att, a, from, 0, hops + 1, vec![lib(why)])
        }
    };
    match t {
        Target::Menu { menu } => run_menu(leg, att, a, menu, 0, hops + 1, Vec::new()),
        Target::Extension { number } | Target::Queue { number } => {
            match calls::hand_off(leg, number) {
                Err(Error::NotFound(_) | Error::InvalidArgument(_)) => back("unreachable"),
                other => other,
            }
        }
        Target::Mailbox { user } => {
            let Some(vm) = &a.voicemail else {
                return back("unreachable");
            };
            match calls::divert(leg, vm, user, DivertReason::Always) {
                Err(Error::NotFound(_) | Error::InvalidArgument(_)) => back("unreachable"),
                other => other,
            }
        }
        Target::External {
            number,
            account_code,
        } => {
            let ringback = calls::play(leg, &[calls::tone(Tone::Ringback, 60_000)], false)?;
            let shown: String = e
                .snapshot
                .caller
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "+._-".contains(*c))
                .take(64)
                .collect();
            let opts = DialOpts {
                purpose: DialPurpose::Call,
                on_behalf_of: None,
                for_leg: None,
                ring_ms: RING_MS,
                state: state_bytes(
                    Stage::Outbound {
                        caller: leg.to_string(),
                        att: att.to_string(),
                        menu: from.to_string(),
                        hops,
                        ringback: ringback.clone(),
                        answered: false,
                        default,
                    },
                    String::new(),
                    false,
                ),
                account_code: account_code.clone(),
                caller_id: Some(shown).filter(|s| !s.is_empty()),
            };
            match calls::dial(number, &opts) {
                Ok(out) => save(leg, Stage::Calling { out }, ringback, false),
                Err(Error::Denied(m)) if m.starts_with("restricted") => {
                    calls::stop(&ringback)?;
                    back("restricted")
                }
                Err(Error::Denied(_) | Error::NotFound(_) | Error::InvalidArgument(_)) => {
                    calls::stop(&ringback)?;
                    back("unreachable")
                }
                Err(e) => Err(e),
            }
        }
        Target::Hangup => close(leg, &["goodbye"]),
    }
}
