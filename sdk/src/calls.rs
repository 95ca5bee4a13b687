//! Calls (`switchboard:telephony@0.1.0`): the plugin's own call legs.
//!
//! The host owns every leg's signalling and media; a plugin decides. An
//! inbound call arrives at [`crate::Plugin::on_call`] as
//! [`CallEventKind::Offered`]; the plugin answers, plays tones, collects
//! digits, dials other legs, bridges two of them or joins any number into
//! a conference room. Commands take effect only
//! when the plugin's call commits, in the order issued (a call that fails
//! issues none). Events of one leg arrive one at a time, in order, each
//! with its `seq` and the state kept with [`set_state`]. Grants: `calls`
//! (own legs), `dial` (placing calls, through the tenant's dialing
//! policy), `mwi` (message-waiting counts).
//!
//! ```ignore
//! fn on_call(e: CallEvent) -> Result<(), String> {
//!     match e.kind {
//!         CallEventKind::Offered(_) => {
//!             calls::answer(&e.leg).map_err(|e| format!("{e:?}"))?;
//!             calls::play(&e.leg, &[calls::tone(Tone::Ringback, 2000)], false)
//!                 .map_err(|e| format!("{e:?}"))?;
//!         }
//!         _ => {}
//!     }
//!     Ok(())
//! }
//! ```

use crate::Error;
use crate::bindings::switchboard::telephony::{calls as raw, dial as raw_dial, mwi as raw_mwi};

pub use crate::bindings::switchboard::telephony::dial::{DialOpts, DialPurpose};
pub use crate::bindings::switchboard::telephony::types::{
    CallEvent, CallEventKind, Cause, CollectOpts, Collected, Direction, Diversion, DivertReason,
    LegSnapshot, LegState, OpEnd, Played, Prompt, RecordOpts, Recorded, RecordingChunk, Route,
    Tone, ToneItem,
};

/// A tone item for [`play`].
pub fn tone(tone: Tone, ms: u32) -> Prompt {
    Prompt::Tone(ToneItem { tone, ms })
}

/// Answers an offered leg.
pub fn answer(leg: &str) -> Result<(), Error> {
    crate::tx::note(raw::answer(leg))
}

/// Ends a leg (rejects an offered one) with `cause`.
pub fn hangup(leg: &str, cause: Cause) -> Result<(), Error> {
    crate::tx::note(raw::hangup(leg, cause))
}

/// Plays `items` into an answered leg after any queued play; returns the
/// operation id that `played` will name.
pub fn play(leg: &str, items: &[Prompt], barge_in: bool) -> Result<String, Error> {
    crate::tx::note(raw::play(leg, items, barge_in))
}

/// Collects digits on an answered leg; returns the operation id that
/// `collected` will name.
pub fn collect(leg: &str, opts: &CollectOpts) -> Result<String, Error> {
    crate::tx::note(raw::collect(leg, opts))
}

/// Stops a play, a collect or a recording.
pub fn stop(op: &str) -> Result<(), Error> {
    crate::tx::note(raw::stop(op))
}

/// Ends a leg's play and every play queued behind it.
pub fn stop_plays(leg: &str) -> Result<(), Error> {
    crate::tx::note(raw::stop_plays(leg))
}

/// Records an answered leg (what it says and hears) into a new blob of
/// this plugin; returns the operation that `recorded` will name, with the
/// blob.
pub fn record(leg: &str, opts: &RecordOpts) -> Result<String, Error> {
    crate::tx::note(raw::record_leg(leg, opts))
}

/// Gives a leg to the plugin the tenant routed `number` to (voicemail,
/// an attendant): it gets `offered`, this plugin `HandedOff` and nothing
/// more of the leg.
pub fn hand_off(leg: &str, number: &str) -> Result<(), Error> {
    crate::tx::note(raw::hand_off(leg, number, None))
}

/// [`hand_off`] as `user`'s call, diverted for `reason` (a forward): the
/// plugin it goes to sees [`Diversion`] in the leg's snapshot (voicemail
/// takes a message for that user). `user` is an active user's id.
pub fn divert(leg: &str, number: &str, user: &str, reason: DivertReason) -> Result<(), Error> {
    let diversion = Diversion {
        user: user.to_string(),
        reason,
    };
    crate::tx::note(raw::hand_off(leg, number, Some(&diversion)))
}

/// Pauses a recording: nothing is kept until [`resume`].
pub fn pause(op: &str) -> Result<(), Error> {
    crate::tx::note(raw::pause(op))
}

/// Resumes a paused recording.
pub fn resume(op: &str) -> Result<(), Error> {
    crate::tx::note(raw::resume(op))
}

/// Bridges two answered legs of this plugin.
pub fn bridge(a: &str, b: &str) -> Result<(), Error> {
    crate::tx::note(raw::bridge(a, b))
}

/// Ends a leg's bridge.
pub fn unbridge(leg: &str) -> Result<(), Error> {
    crate::tx::note(raw::unbridge(leg))
}

/// Puts an answered leg into this plugin's conference room `room` (made
/// on first join): each member hears the others, never itself.
pub fn join(leg: &str, room: &str) -> Result<(), Error> {
    crate::tx::note(raw::join(leg, room))
}

/// Takes a leg out of its room.
pub fn leave(leg: &str) -> Result<(), Error> {
    crate::tx::note(raw::leave(leg))
}

/// Keeps up to 4 KiB with the leg, handed back with each of its events.
pub fn set_state(leg: &str, state: &[u8]) -> Result<(), Error> {
    crate::tx::note(raw::set_state(leg, state))
}

/// The leg as it is now.
pub fn get_leg(leg: &str) -> Result<LegSnapshot, Error> {
    raw::get_leg(leg)
}

/// Refuses the transfer a leg's phone asked for
/// ([`CallEventKind::Transfer`]): the phone hears `cause` and keeps its
/// call.
pub fn decline_transfer(leg: &str, cause: Cause) -> Result<(), Error> {
    crate::tx::note(raw::decline_transfer(leg, cause))
}

/// What `number` reaches when a phone of the tenant dials it (the
/// route's plugin; its arguments only when it is this plugin).
pub fn route_of(number: &str) -> Result<Option<Route>, Error> {
    raw::route_of(number)
}

/// Places a call (grant `dial`); the number passes the tenant's dialing
/// policy, and a refusal is `Error::Denied("restricted: …")`.
pub fn dial(to: &str, opts: &DialOpts) -> Result<String, Error> {
    crate::tx::note(raw_dial::dial(to, opts))
}

/// Sets the message-waiting counts of a user's phones (grant `mwi`).
pub fn set_mwi(user: &str, new_messages: u32, old_messages: u32) -> Result<(), Error> {
    crate::tx::note(raw_mwi::set_mwi(user, new_messages, old_messages))
}
