//! The telephone side (SPEC V2, V3, V5): leaving a message, and a
//! mailbox's menus by phone.
//!
//! A call reaches this plugin through the tenant's voicemail number (a
//! route to `voicemail`). Two ways in, decided by the host's facts about
//! the leg, never by what the caller keys:
//!
//! - **Deposit**: the leg was handed over with a diversion (the `pbx`
//!   plugin's forward on busy, no answer or always). The caller hears the
//!   user's greeting (temporary while it lasts; else busy or unavailable
//!   by the reason; else the system greeting: the recorded name or the
//!   mailbox number, "is not available"), a beep, and is recorded until
//!   `#`, silence or the length cap. Keys during the greeting only skip
//!   it: nothing a depositing caller presses leads to a PIN prompt or a
//!   mailbox.
//! - **Mailbox**: any other call. From the user's own registered phone
//!   (the leg's `user`, authenticated by the host) it goes straight in
//!   when the tenant allows (`own-device-without-pin`); otherwise the
//!   caller keys the mailbox number and the PIN.
//!
//! The menus: 1 new messages, 2 saved, 3 greetings, `*` leave. While a
//! message plays: 1 again, 2 save, 7 delete, 9 forward to another
//! mailbox, `#` next, `*` main menu. A message whose audio cannot be
//! played (shredded by retention, say) is skipped. Listening walks a
//! folder with a cursor (urgent first, then oldest), so it always moves
//! on and ends: no loops.
//!
//! The leg's stage is kept with the leg (`set-state`); every play or
//! collect names its operation, and an event of any other operation is
//! stale and ignored.

use serde::{Deserialize, Serialize};
use switchboard_sdk::calls::{
    self, CallEvent, CallEventKind, Cause, CollectOpts, DivertReason, OpEnd, Prompt, RecordOpts,
    Recorded,
};
use switchboard_sdk::{Error, blobs, config, now_ms};

use crate::model::{self, Folder, Greeting, GreetingKind, Message};
use crate::pin::{self, Attempt};

/// Tries at a menu or at signing in before the call ends.
const TRIES: u8 = 3;
/// A beep before recording.
const BEEP: &str = "beep";
/// Longest recorded name, ms.
const NAME_MS: u32 = 10_000;
/// Silence that ends a greeting recorded by phone, ms.
const GREETING_SILENCE_MS: u32 = 5_000;
/// Shortest message or greeting kept, ms.
pub const MIN_MS: u64 = 1_000;

/// Where a listener is in a folder: the message playing, by its place in
/// the order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cursor {
    folder: Folder,
    urgent: bool,
    at_ms: u64,
    id: String,
}

impl Cursor {
    fn of(m: &Message) -> Cursor {
        Cursor {
            folder: m.folder,
            urgent: m.urgent,
            at_ms: m.at_ms,
            id: m.id.clone(),
        }
    }

    fn key(&self) -> (bool, u64, &str) {
        (!self.urgent, self.at_ms, &self.id)
    }
}

/// What the leg is doing.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "kebab-case")]
enum Stage {
    /// Deposit: the greeting plays, then the beep, then the recording.
    Greeting {
        user: String,
    },
    Beep {
        user: String,
    },
    Recording {
        user: String,
    },
    /// Deposit: "press 1 for urgent" after `#`.
    Urgency {
        user: String,
        msg: String,
    },
    /// The last words, then hang up.
    Closing,
    AskMailbox {
        tries: u8,
    },
    AskPin {
        tries: u8,
        number: String,
    },
    Menu {
        user: String,
        tries: u8,
    },
    /// A message and the message menu play.
    Playing {
        user: String,
        at: Cursor,
    },
    Choosing {
        user: String,
        at: Cursor,
        tries: u8,
    },
    ForwardTo {
        user: String,
        at: Cursor,
    },
    GreetingMenu {
        user: String,
        tries: u8,
    },
    /// "Record after the tone" and the beep play, then the recording.
    GreetingPrompt {
        user: String,
        kind: GreetingKind,
    },
    GreetingRecording {
        user: String,
        kind: GreetingKind,
    },
}

impl Stage {
    /// The digits a stage asks for once its prompt has played.
    fn collect(&self) -> Option<CollectOpts> {
        let opts = |max_digits, terminators: &str, first_ms| CollectOpts {
            max_digits,
            terminators: terminators.into(),
            first_ms,
            between_ms: 4_000,
        };
        match self {
            Stage::AskMailbox { .. } | Stage::ForwardTo { .. } => Some(opts(10, "#", 8_000)),
            Stage::AskPin { .. } => Some(opts(pin::MAX_PIN as u8, "#", 8_000)),
            Stage::Menu { .. } | Stage::Choosing { .. } | Stage::GreetingMenu { .. } => {
                Some(opts(1, "", 8_000))
            }
            Stage::Urgency { .. } => Some(opts(1, "", 5_000)),
            _ => None,
        }
    }
}

/// The leg's state: its stage, the operation it waits for, and whether
/// that is the stage's collect (after its prompt).
#[derive(Debug, Serialize, Deserialize)]
struct LegState {
    stage: Stage,
    op: String,
    #[serde(default)]
    collecting: bool,
}

fn lib(name: &str) -> Prompt {
    Prompt::Library(name.to_string())
}

/// Plays `items` and moves the leg to `stage` (whose collect, if it has
/// one, follows the prompt).
fn next(leg: &str, stage: Stage, items: &[Prompt]) -> Result<(), Error> {
    // Keys cut prompts short (and count as the answer), skip a greeting
    // and a message; never the last words or a beep.
    let barge_in = stage.collect().is_some()
        || matches!(stage, Stage::Greeting { .. } | Stage::Playing { .. });
    match calls::play(leg, items, barge_in) {
        Ok(op) => save(leg, stage, op, false),
        // The caller hung up meanwhile: nothing to say, and what this
        // event wrote stands (a wrong PIN keyed just before hanging up
        // still counts towards the lockout).
        Err(_) if !answered(leg) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the leg is still up (answered, ours).
fn answered(leg: &str) -> bool {
    calls::get_leg(leg).is_ok_and(|l| l.state == calls::LegState::Answered)
}

fn save(leg: &str, stage: Stage, op: String, collecting: bool) -> Result<(), Error> {
    let state = LegState {
        stage,
        op,
        collecting,
    };
    calls::set_state(leg, &serde_json::to_vec(&state).unwrap_or_default())
}

fn close(leg: &str, items: &[&str]) -> Result<(), Error> {
    let items: Vec<Prompt> = items.iter().map(|n| lib(n)).collect();
    next(leg, Stage::Closing, &items)
}

/// A call event of one of our legs.
pub fn on_call(e: CallEvent) -> Result<(), Error> {
    let leg = e.leg.as_str();
    if let CallEventKind::Offered(_) = &e.kind {
        return offered(&e);
    }
    let Some(state) = serde_json::from_slice::<LegState>(&e.state).ok() else {
        return Ok(());
    };
    let alive = answered(leg);
    match &e.kind {
        CallEventKind::Played(p) if p.op == state.op && p.end != OpEnd::Hangup && alive => {
            played(&e, state, p.end)
        }
        // A PIN keyed in full counts even when the caller hung up right
        // after it (the lockout must see every try).
        CallEventKind::Collected(c)
            if c.op == state.op
                && c.end != OpEnd::Hangup
                && (alive || matches!(state.stage, Stage::AskPin { .. })) =>
        {
            collected(&e, state.stage, &c.digits)
        }
        CallEventKind::Recorded(r) if r.op == state.op => {
            recorded(&e, state.stage, r, alive && r.end != OpEnd::Hangup)
        }
        // A recording of a stage gone by is never kept.
        CallEventKind::Recorded(r) => forget_blob(&r.blob),
        _ => Ok(()),
    }
}

fn offered(e: &CallEvent) -> Result<(), Error> {
    let leg = e.leg.as_str();
    calls::answer(leg)?;
    if let Some(d) = &e.snapshot.diverted {
        return deposit(leg, &d.user, d.reason);
    }
    let own = config::get::<bool>("own-device-without-pin").unwrap_or(true);
    match &e.snapshot.user {
        Some(user) if own => main_menu(leg, user, 0, &[], true),
        _ => next(leg, Stage::AskMailbox { tries: 0 }, &[lib("enter-mailbox")]),
    }
}

/// Deposit: the greeting for `user`'s call diverted for `reason`.
fn deposit(leg: &str, user: &str, reason: DivertReason) -> Result<(), Error> {
    let max = config::get::<usize>("max-messages").unwrap_or(100);
    if model::messages(user)?.len() >= max {
        return close(leg, &["mailbox-full", "goodbye"]);
    }
    let mailbox = model::mailbox(user)?;
    let g = &mailbox.greetings;
    let own = g.temporary_at(now_ms()).or(match reason {
        DivertReason::Busy => g.busy.as_ref().or(g.unavailable.as_ref()),
        _ => g.unavailable.as_ref(),
    });
    let stage = || Stage::Greeting {
        user: user.to_string(),
    };
    if let Some(greeting) = own {
        match next(leg, stage(), &[Prompt::Blob(greeting.blob.clone())]) {
            // A greeting that cannot be played: the system's instead.
            Err(Error::NotFound(_) | Error::InvalidArgument(_)) => {}
            other => return other,
        }
    }
    let mut items = Vec::new();
    let named = g.name.as_ref().map(|n| Prompt::Blob(n.blob.clone()));
    let said = match (named, &mailbox.number) {
        (Some(name), _) => Some(vec![name]),
        (None, Some(number)) => Some([vec![lib("extension")], digits(number)].concat()),
        (None, None) => None,
    };
    let busy = reason == DivertReason::Busy;
    match said {
        Some(who) => {
            items.extend(who);
            items.push(lib(if busy { "is-busy" } else { "is-unavailable" }));
        }
        None => items.push(lib(if busy { "busy" } else { "not-available" })),
    }
    items.push(lib("leave-message"));
    match next(leg, stage(), &items) {
        // The recorded name cannot be played: the words alone.
        Err(Error::NotFound(_) | Error::InvalidArgument(_)) => next(
            leg,
            stage(),
            &[
                lib(if busy { "busy" } else { "not-available" }),
                lib("leave-message"),
            ],
        ),
        other => other,
    }
}

/// The digits of `s` as prompts (`+` and anything else left out).
fn digits(s: &str) -> Vec<Prompt> {
    s.chars()
        .filter(char::is_ascii_digit)
        .map(|c| lib(&format!("digit-{c}")))
        .collect()
}

/// `n` spoken: "seven", "twelve", "forty two"; digit by digit from 100.
fn number(n: usize) -> Vec<Prompt> {
    match n {
        0..=9 => vec![lib(&format!("digit-{n}"))],
        10..=19 => vec![lib(&format!("n-{n}"))],
        20..=99 => {
            let mut v = vec![lib(&format!("n-{}", n / 10 * 10))];
            if !n.is_multiple_of(10) {
                v.push(lib(&format!("digit-{}", n % 10)));
            }
            v
        }
        _ => digits(&n.to_string()),
    }
}

/// The mailbox's main menu after `before`, with its summary ("you have
/// …") when `summary`.
fn main_menu(
    leg: &str,
    user: &str,
    tries: u8,
    before: &[Prompt],
    summary: bool,
) -> Result<(), Error> {
    let c = model::counts(&model::messages(user)?);
    let mut items = before.to_vec();
    if summary {
        if c.new + c.saved == 0 {
            items.push(lib("no-messages"));
        } else {
            items.push(lib("you-have"));
            items.extend(number(c.new as usize));
            items.push(lib(if c.new == 1 {
                "new-message"
            } else {
                "new-messages"
            }));
            items.push(lib("and"));
            items.extend(number(c.saved as usize));
            items.push(lib(if c.saved == 1 {
                "saved-message"
            } else {
                "saved-messages"
            }));
        }
    }
    items.push(lib("voicemail-menu"));
    next(
        leg,
        Stage::Menu {
            user: user.to_string(),
            tries,
        },
        &items,
    )
}

fn played(e: &CallEvent, state: LegState, end: OpEnd) -> Result<(), Error> {
    let leg = e.leg.as_str();
    if let Some(opts) = state.stage.collect()
        && !state.collecting
    {
        let op = calls::collect(leg, &opts)?;
        return save(leg, state.stage, op, true);
    }
    match state.stage {
        Stage::Greeting { user } => {
            let op = calls::play(leg, &[lib(BEEP)], false)?;
            save(leg, Stage::Beep { user }, op, false)
        }
        Stage::Beep { user } => {
            let max_s: u32 = config::get("max-message-seconds").unwrap_or(180);
            let silence_s: u32 = config::get("silence-seconds").unwrap_or(10);
            let opts = RecordOpts {
                owner: Some(user.clone()),
                class: model::MESSAGE_CLASS.into(),
                max_ms: max_s.clamp(10, 300) * 1000,
                silence_ms: silence_s.clamp(2, 60) * 1000,
                terminators: "#".into(),
                chunk_ms: 0,
            };
            match calls::record(leg, &opts) {
                Ok(op) => save(leg, Stage::Recording { user }, op, false),
                Err(Error::QuotaExceeded(_)) => close(leg, &["mailbox-full", "goodbye"]),
                Err(e) => Err(e),
            }
        }
        Stage::Playing { user, at } => {
            if end != OpEnd::Done {
                // Cut short by a key: that key is the choice (type-ahead),
                // and the message is not heard unless the choice says so.
                let stage = Stage::Choosing { user, at, tries: 0 };
                let Some(opts) = stage.collect() else {
                    return Ok(());
                };
                let op = calls::collect(leg, &opts)?;
                return save(leg, stage, op, true);
            }
            // Played through: heard.
            if let Some(mut m) = model::message(&user, &at.id)?
                && !m.heard
            {
                m.heard = true;
                model::save_message(&user, &m)?;
                model::changed(&user)?;
            }
            ask_choice(leg, user, at, 0, "")
        }
        Stage::GreetingPrompt { user, kind } => {
            let max_s: u32 = config::get("max-greeting-seconds").unwrap_or(60);
            let max_ms = if kind == GreetingKind::Name {
                NAME_MS
            } else {
                max_s.clamp(5, 180) * 1000
            };
            let opts = RecordOpts {
                owner: Some(user.clone()),
                class: model::GREETING_CLASS.into(),
                max_ms,
                silence_ms: GREETING_SILENCE_MS,
                terminators: "#".into(),
                chunk_ms: 0,
            };
            match calls::record(leg, &opts) {
                Ok(op) => save(leg, Stage::GreetingRecording { user, kind }, op, false),
                Err(Error::QuotaExceeded(_)) => greeting_menu(leg, &user, 0, &["mailbox-full"]),
                Err(e) => Err(e),
            }
        }
        Stage::Closing => calls::hangup(leg, Cause::Normal),
        _ => Ok(()),
    }
}

fn collected(e: &CallEvent, stage: Stage, digits: &str) -> Result<(), Error> {
    let leg = e.leg.as_str();
    match stage {
        Stage::AskMailbox { tries } => {
            if digits.is_empty() {
                return retry_sign_in(leg, tries, "no-input");
            }
            next(
                leg,
                Stage::AskPin {
                    tries,
                    number: digits.to_string(),
                },
                &[lib("enter-pin")],
            )
        }
        Stage::AskPin { tries, number } => sign_in(e, tries, &number, digits),
        Stage::Urgency { user, msg } => {
            if digits == "1"
                && let Some(mut m) = model::message(&user, &msg)?
            {
                m.urgent = true;
                model::save_message(&user, &m)?;
                model::changed(&user)?;
            }
            close(leg, &["message-saved", "goodbye"])
        }
        Stage::Menu { user, tries } => match digits {
            "1" => listen(leg, &user, Folder::New, None, &[]),
            "2" => listen(leg, &user, Folder::Saved, None, &[]),
            "3" => greeting_menu(leg, &user, 0, &[]),
            "*" => close(leg, &["goodbye"]),
            _ => again(leg, tries, digits, |tries, why| {
                main_menu(leg, &user, tries, &[lib(why)], false)
            }),
        },
        Stage::Choosing { user, at, tries } => choose(leg, user, at, tries, digits),
        Stage::ForwardTo { user, at } => {
            let said = forward(&user, &at.id, digits)?;
            ask_choice(leg, user, at, 0, said)
        }
        Stage::GreetingMenu { user, tries } => {
            let kind = match digits {
                "1" => GreetingKind::Unavailable,
                "2" => GreetingKind::Busy,
                "3" => GreetingKind::Name,
                "4" => GreetingKind::Temporary,
                "*" => return main_menu(leg, &user, 0, &[], true),
                _ => {
                    return again(leg, tries, digits, |tries, why| {
                        greeting_menu(leg, &user, tries, &[why])
                    });
                }
            };
            let op = calls::play(leg, &[lib("record-after-tone"), lib(BEEP)], false)?;
            save(leg, Stage::GreetingPrompt { user, kind }, op, false)
        }
        _ => Ok(()),
    }
}

/// A menu answered with nothing or a wrong key: once more (after
/// `no-input` or `invalid`), until the tries run out.
fn again(
    leg: &str,
    tries: u8,
    digits: &str,
    menu: impl FnOnce(u8, &'static str) -> Result<(), Error>,
) -> Result<(), Error> {
    if tries + 1 >= TRIES {
        return close(leg, &["goodbye"]);
    }
    let why = if digits.is_empty() {
        "no-input"
    } else {
        "invalid"
    };
    menu(tries + 1, why)
}

fn retry_sign_in(leg: &str, tries: u8, why: &str) -> Result<(), Error> {
    if tries + 1 >= TRIES {
        return close(leg, &[why, "goodbye"]);
    }
    next(
        leg,
        Stage::AskMailbox { tries: tries + 1 },
        &[lib(why), lib("enter-mailbox")],
    )
}

/// A mailbox number and PIN keyed in. An unknown mailbox, one without a
/// PIN and a wrong PIN all sound the same.
fn sign_in(e: &CallEvent, tries: u8, number: &str, pin_keyed: &str) -> Result<(), Error> {
    let leg = e.leg.as_str();
    if pin_keyed.is_empty() {
        return retry_sign_in(leg, tries, "no-input");
    }
    let Some(user) = model::user_of_number(number)? else {
        return retry_sign_in(leg, tries, "pin-wrong");
    };
    let mut mailbox = model::mailbox(&user)?;
    let from = format!("phone {}", e.snapshot.caller);
    let attempt = pin::attempt(&user, &mut mailbox, pin_keyed, now_ms(), &from)?;
    model::save_mailbox(&user, &mailbox)?;
    match attempt {
        Attempt::Right => main_menu(leg, &user, 0, &[], true),
        // A locked mailbox sounds like a wrong PIN (audited): a caller
        // learns neither that the number is a mailbox nor that it locked.
        Attempt::Locked | Attempt::Wrong => retry_sign_in(leg, tries, "pin-wrong"),
    }
}

/// Plays the first message of `folder` after `after` (from the start
/// without), preceded by `before`. Messages that cannot be played are
/// passed over; after the last, the main menu.
fn listen(
    leg: &str,
    user: &str,
    folder: Folder,
    after: Option<&Cursor>,
    before: &[Prompt],
) -> Result<(), Error> {
    let found: Vec<Message> = model::messages(user)?
        .into_iter()
        .filter(|m| m.folder == folder)
        .filter(|m| after.is_none_or(|a| (!m.urgent, m.at_ms, m.id.as_str()) > a.key()))
        .collect();
    for m in found {
        let mut items = before.to_vec();
        if m.urgent {
            items.push(lib("urgent"));
        }
        let from_digits = digits(&m.from);
        if !from_digits.is_empty()
            && from_digits.len() <= 15
            && m.from.chars().all(|c| c.is_ascii_digit() || c == '+')
        {
            items.push(lib("message-from"));
            items.extend(from_digits);
        }
        items.push(Prompt::Blob(m.blob.clone()));
        let stage = Stage::Playing {
            user: user.to_string(),
            at: Cursor::of(&m),
        };
        match next(leg, stage, &items) {
            // Its audio is gone (retention shredded it): so is the
            // message.
            Err(Error::NotFound(_)) => {
                model::remove_message(user, &m)?;
                model::changed(user)?;
            }
            // Audio the host cannot play: passed over, and counted as
            // heard so the phones' lamp goes out.
            Err(Error::InvalidArgument(_) | Error::TooLarge(_)) => {
                switchboard_sdk::log::warn(&format!("message {} cannot be played; skipped", m.id));
                if !m.heard {
                    let heard = Message { heard: true, ..m };
                    model::save_message(user, &heard)?;
                    model::changed(user)?;
                }
            }
            other => return other,
        }
    }
    let mut items = before.to_vec();
    items.push(lib("no-more-messages"));
    main_menu(leg, user, 0, &items, false)
}

fn ask_choice(leg: &str, user: String, at: Cursor, tries: u8, before: &str) -> Result<(), Error> {
    let mut items = Vec::new();
    if !before.is_empty() {
        items.push(lib(before));
    }
    items.push(lib("message-menu"));
    next(leg, Stage::Choosing { user, at, tries }, &items)
}

/// The message menu's answer.
fn choose(leg: &str, user: String, at: Cursor, tries: u8, digits: &str) -> Result<(), Error> {
    let msg = model::message(&user, &at.id)?;
    match (digits, msg) {
        ("1", Some(_)) => {
            // Again: from just before it.
            let before = Cursor {
                id: String::new(),
                ..at.clone()
            };
            listen(leg, &user, at.folder, Some(&before), &[])
        }
        ("2", Some(mut m)) => {
            m.folder = Folder::Saved;
            m.heard = true;
            model::save_message(&user, &m)?;
            model::changed(&user)?;
            listen(leg, &user, at.folder, Some(&at), &[lib("message-kept")])
        }
        ("7", Some(m)) => match model::remove_message(&user, &m) {
            Ok(()) => {
                model::changed(&user)?;
                listen(leg, &user, at.folder, Some(&at), &[lib("message-deleted")])
            }
            // Under a legal hold: kept.
            Err(Error::Denied(_)) => ask_choice(leg, user, at, 0, "invalid"),
            Err(e) => Err(e),
        },
        ("9", Some(_)) => next(
            leg,
            Stage::ForwardTo { user, at },
            &[lib("enter-destination")],
        ),
        ("#", _) | (_, None) => listen(leg, &user, at.folder, Some(&at), &[]),
        ("*", _) => main_menu(leg, &user, 0, &[], true),
        _ => {
            if tries + 1 >= TRIES {
                return close(leg, &["goodbye"]);
            }
            let why = if digits.is_empty() {
                "no-input"
            } else {
                "invalid"
            };
            ask_choice(leg, user, at, tries + 1, why)
        }
    }
}

/// Forwards `user`'s message `id` to the mailbox numbered `number`;
/// returns the prompt that says how it went.
fn forward(user: &str, id: &str, number: &str) -> Result<&'static str, Error> {
    let Some(to) = model::user_of_number(number)?.filter(|u| u != user) else {
        return Ok("invalid");
    };
    let Some(m) = model::message(user, id)? else {
        return Ok("invalid");
    };
    match crate::copy_message(user, &m, &to) {
        Ok(()) => Ok("message-forwarded"),
        Err(Error::QuotaExceeded(_)) => Ok("mailbox-full"),
        Err(Error::NotFound(_)) => Ok("invalid"),
        Err(e) => Err(e),
    }
}

fn greeting_menu(leg: &str, user: &str, tries: u8, before: &[&str]) -> Result<(), Error> {
    let mut items: Vec<Prompt> = before.iter().map(|n| lib(n)).collect();
    items.push(lib("greeting-menu"));
    next(
        leg,
        Stage::GreetingMenu {
            user: user.to_string(),
            tries,
        },
        &items,
    )
}

/// A recording ended; `more` when the caller is still there.
fn recorded(e: &CallEvent, stage: Stage, r: &Recorded, more: bool) -> Result<(), Error> {
    let leg = e.leg.as_str();
    let blob = r.blob.as_str();
    // Speech kept: a recording that silence ended holds that silence too.
    let speech = |silence_ms: u32| {
        if r.end == OpEnd::Timeout {
            r.ms.saturating_sub(u64::from(silence_ms))
        } else {
            r.ms
        }
    };
    match stage {
        Stage::Recording { user } => {
            if blob.is_empty() {
                // The owner's quota took nothing.
                return if more {
                    close(leg, &["mailbox-full", "goodbye"])
                } else {
                    Ok(())
                };
            }
            let silence_s: u32 = config::get("silence-seconds").unwrap_or(10);
            if speech(silence_s.clamp(2, 60) * 1000) < MIN_MS {
                forget_blob(blob)?;
                return if more {
                    close(leg, &["message-too-short", "goodbye"])
                } else {
                    Ok(())
                };
            }
            let message = Message {
                id: model::new_id(),
                blob: blob.to_string(),
                folder: Folder::New,
                heard: false,
                urgent: false,
                from: e.snapshot.caller.clone(),
                from_user: e.snapshot.user.clone(),
                at_ms: now_ms().saturating_sub(r.ms),
                ms: r.ms,
                forwarded_by: None,
            };
            model::deliver(&user, &message)?;
            if !more {
                return Ok(());
            }
            next(
                leg,
                Stage::Urgency {
                    user,
                    msg: message.id,
                },
                &[lib("urgent-option")],
            )
        }
        Stage::GreetingRecording { user, kind } => {
            if blob.is_empty() {
                return if more {
                    greeting_menu(leg, &user, 0, &["mailbox-full"])
                } else {
                    Ok(())
                };
            }
            // Too short, or cut off by hanging up: the old greeting stays.
            if speech(GREETING_SILENCE_MS) < MIN_MS || !more {
                forget_blob(blob)?;
                return if more {
                    greeting_menu(leg, &user, 0, &["message-too-short"])
                } else {
                    Ok(())
                };
            }
            let days: u64 = config::get("temporary-greeting-days").unwrap_or(7);
            let now = now_ms();
            let greeting = Greeting {
                blob: blob.to_string(),
                ms: r.ms,
                set_ms: now,
                until_ms: (kind == GreetingKind::Temporary)
                    .then(|| now + days.clamp(1, 90) * 24 * 3600 * 1000),
            };
            crate::set_greeting(&user, kind, Some(greeting))?;
            greeting_menu(leg, &user, 0, &["greeting-saved"])
        }
        _ => forget_blob(blob),
    }
}

/// Deletes a recording that is not kept (none to delete when the quota
/// took nothing; one a legal hold keeps stays until it is lifted, for
/// retention to take).
fn forget_blob(blob: &str) -> Result<(), Error> {
    if blob.is_empty() {
        return Ok(());
    }
    match blobs::delete(blob) {
        Ok(_) | Err(Error::NotFound(_) | Error::Denied(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
