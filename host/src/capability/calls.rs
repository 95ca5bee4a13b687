//! `calls`, `dial` and `mwi` (`switchboard:telephony@0.1.0`): a plugin
//! works its own call legs. Every command is checked now (the leg is the
//! plugin's and in a state that allows it, arguments within bounds) and
//! carried out only once the call commits, in issue order (a call that
//! traps or conflicts issues nothing): the effect hands it to call
//! control. `get-leg` is a read. A leg or operation of another plugin or
//! tenant answers `not-found`, as an unknown id does (no existence
//! oracle). Dialing passes the dialing policy first (SPEC T1): a refusal
//! is `denied("restricted: …")`, counted and audited.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, twit, wrap};
use crate::call::CallCtx;
use crate::call::legs::{
    self, CallEvent, CallEventKind, CollectOpts, LegSnapshot, LegState, Prompt, ToneName,
};
use crate::call::txn::Effect;
use crate::telephony::Telephony;
use crate::telephony::legs::{Command, HandingTo};
use crate::telephony::policy::Account;

/// Largest `set-state`.
pub const MAX_STATE_BYTES: usize = 4096;
/// Most commands one plugin call may issue.
pub const MAX_COMMANDS_PER_CALL: usize = 64;
/// Most items in one play.
pub const MAX_PLAY_ITEMS: usize = 64;
/// Most keys in one play (over all its `digits` items).
pub const MAX_PLAY_KEYS: usize = 64;
/// Longest tone item, and longest collect wait.
pub const MAX_WAIT_MS: u32 = 60_000;
/// Most digits a collect gathers, and keys in a `digits` item.
pub const MAX_DIGITS: usize = 32;
/// A dial's ring time bounds.
pub const RING_MS: std::ops::RangeInclusive<u32> = 1_000..=300_000;
/// Longest dial string.
pub const MAX_DIAL_BYTES: usize = 64;

/// The capability's host-wide state: call control.
pub type State = Arc<Telephony>;

/// The effect of one command: after the commit, call control gets it.
struct Submit {
    telephony: Arc<Telephony>,
    plugin: String,
    command: Command,
}

impl Effect for Submit {
    fn apply(&self, tenant: &str) {
        self.telephony
            .submit(tenant, &self.plugin, self.command.clone());
    }
}

fn queue(ctx: &mut CallCtx, telephony: &State, command: Command) -> Result<(), CapError> {
    if ctx.txn.effects_of::<Submit>().count() >= MAX_COMMANDS_PER_CALL {
        return Err(CapError::TooLarge(format!(
            "at most {MAX_COMMANDS_PER_CALL} call commands per plugin call"
        )));
    }
    let plugin = ctx.plugin_name().to_string();
    ctx.txn.push_effect(Submit {
        telephony: telephony.clone(),
        plugin,
        command,
    });
    Ok(())
}

fn is_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The plugin's leg `id` as the commands this call has already issued
/// will leave it (an `answer` earlier in the call lets a `play` follow; a
/// leg dialled earlier in the call exists), or `not-found` whatever the
/// reason.
fn leg(ctx: &mut CallCtx, telephony: &State, id: &str) -> Result<LegSnapshot, CapError> {
    ctx.charge(id.len())?;
    let not_found = || CapError::NotFound(format!("no call leg {id:?}"));
    if !is_id(id) {
        return Err(not_found());
    }
    let mut snapshot = telephony.lookup(ctx.tenant_id(), ctx.plugin_name(), id);
    for submit in ctx.txn.effects_of::<Submit>() {
        match &submit.command {
            Command::Answer(leg) if leg == id => {
                if let Some(s) = snapshot.as_mut() {
                    s.state = LegState::Answered;
                }
            }
            Command::Hangup(leg, _) if leg == id => {
                if let Some(s) = snapshot.as_mut() {
                    s.state = LegState::Ended;
                }
            }
            // A leg handed to another plugin is no longer this one's.
            Command::HandOff { leg, .. } if leg == id => snapshot = None,
            // Out of its room, a leg may be played to again (an
            // announcement, then back in).
            Command::Leave(leg) if leg == id => {
                if let Some(s) = snapshot.as_mut() {
                    s.room = None;
                }
            }
            // Unbridging the leg, or ending or unbridging its partner,
            // leaves it on its own.
            Command::Unbridge(leg) | Command::Hangup(leg, _) => {
                if let Some(s) = snapshot.as_mut()
                    && (leg == id || s.bridged_with.as_ref() == Some(leg))
                {
                    s.bridged_with = None;
                }
            }
            Command::Dial {
                leg, caller, to, ..
            } if leg == id => {
                snapshot = Some(LegSnapshot {
                    id: id.to_string(),
                    state: LegState::Ringing,
                    direction: legs::Direction::Outbound,
                    caller: caller.clone(),
                    callee: to.number.clone(),
                    codec: String::new(),
                    secure: false,
                    bridged_with: None,
                    room: None,
                    user: None,
                    on_hold: false,
                    diverted: None,
                    started_ms: crate::support::clock::now_ms(),
                    answered_ms: None,
                });
            }
            _ => {}
        }
    }
    snapshot.ok_or_else(not_found)
}

fn in_state(snapshot: &LegSnapshot, want: LegState, what: &str) -> Result<(), CapError> {
    if snapshot.state == want {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(format!(
            "{what} needs a leg that is {}, this one is {}",
            state_name(want),
            state_name(snapshot.state)
        )))
    }
}

fn check_keys(keys: &str, allowed: &str) -> Result<(), CapError> {
    if keys.len() > MAX_DIGITS {
        return Err(CapError::TooLarge(format!("at most {MAX_DIGITS} keys")));
    }
    if let Some(bad) = keys.chars().find(|c| !allowed.contains(*c)) {
        return Err(CapError::InvalidArgument(format!(
            "{bad:?} is not a telephone key ({allowed})"
        )));
    }
    Ok(())
}

fn state_name(s: LegState) -> &'static str {
    match s {
        LegState::Offered => "offered",
        LegState::Ringing => "ringing",
        LegState::Answered => "answered",
        LegState::Ended => "ended",
    }
}

const KEYS: &str = "0123456789*#ABCD";

/// Answers an offered leg (an answered one stays as it is: a leg handed
/// over answered).
pub fn answer(ctx: &mut CallCtx, t: &State, id: &str) -> Result<(), CapError> {
    let l = leg(ctx, t, id)?;
    if l.state == LegState::Answered {
        return Ok(());
    }
    in_state(&l, LegState::Offered, "answer")?;
    queue(ctx, t, Command::Answer(id.to_string()))
}

/// Ends a leg.
pub fn hangup(ctx: &mut CallCtx, t: &State, id: &str, cause: legs::Cause) -> Result<(), CapError> {
    let l = leg(ctx, t, id)?;
    if l.state == LegState::Ended {
        return Ok(());
    }
    queue(ctx, t, Command::Hangup(id.to_string(), cause))
}

/// Largest blob a play reads: 10 minutes of 16-bit PCM and a header.
pub const MAX_PLAY_BLOB_BYTES: u64 = 10 * 60 * 16_000 + 4096;
/// Most audio one play holds (µ-law, 8 kB a second): 10 minutes.
pub const MAX_PLAY_AUDIO_BYTES: usize = 10 * 60 * 8_000;

/// Plays prompts into an answered leg; returns the operation's id.
pub fn play(
    ctx: &mut CallCtx,
    t: &State,
    id: &str,
    items: Vec<Prompt>,
    barge_in: bool,
) -> Result<String, CapError> {
    let l = leg(ctx, t, id)?;
    in_state(&l, LegState::Answered, "play")?;
    if l.bridged_with.is_some() || l.room.is_some() {
        return Err(CapError::InvalidArgument(
            "the leg hears its peers (a bridge or a room): unbridge or leave first".into(),
        ));
    }
    if items.is_empty() || items.len() > MAX_PLAY_ITEMS {
        return Err(CapError::InvalidArgument(format!(
            "a play has 1-{MAX_PLAY_ITEMS} items"
        )));
    }
    let keys: usize = items
        .iter()
        .map(|i| match i {
            Prompt::Digits(k) => k.len(),
            _ => 0,
        })
        .sum();
    if keys > MAX_PLAY_KEYS {
        return Err(CapError::TooLarge(format!(
            "at most {MAX_PLAY_KEYS} keys in one play"
        )));
    }
    let issued = ctx
        .txn
        .effects_of::<Submit>()
        .filter(|s| matches!(&s.command, Command::Play { leg, .. } if leg == id))
        .count();
    if issued >= crate::telephony::legs::MAX_QUEUED_PLAYS {
        return Err(CapError::TooLarge(format!(
            "at most {} plays queued on a leg",
            crate::telephony::legs::MAX_QUEUED_PLAYS
        )));
    }
    for item in &items {
        match item {
            Prompt::Tone { ms, .. } if *ms == 0 || *ms > MAX_WAIT_MS => {
                return Err(CapError::InvalidArgument(format!(
                    "a tone lasts 1-{MAX_WAIT_MS} ms"
                )));
            }
            Prompt::Digits(keys) => {
                ctx.charge(keys.len())?;
                check_keys(keys, KEYS)?;
            }
            Prompt::Library(name) => {
                ctx.charge(name.len())?;
                if crate::media::prompts::get(name).is_none() {
                    return Err(CapError::NotFound(format!(
                        "no prompt {name:?} in the library (docs/telephony.md lists them)"
                    )));
                }
            }
            Prompt::Tone { .. } | Prompt::Audio(_) => {}
            Prompt::Blob(_) => {}
        }
    }
    // Blobs are read now, in this call's view of the store: the play
    // holds their audio, whatever happens to the blob afterwards.
    let mut items = items;
    let mut audio_bytes = 0usize;
    for item in &mut items {
        if let Prompt::Blob(blob) = item {
            let size = super::blobs::size(ctx, blob)?;
            if size > MAX_PLAY_BLOB_BYTES {
                return Err(CapError::TooLarge(format!(
                    "blob {blob} holds {size} bytes; a play takes at most {MAX_PLAY_BLOB_BYTES} (10 minutes)"
                )));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            while (bytes.len() as u64) < size {
                let piece =
                    (size - bytes.len() as u64).min(u64::from(super::blobs::MAX_READ_BYTES));
                let got = super::blobs::read(ctx, blob, bytes.len() as u64, piece as u32)?;
                if got.is_empty() {
                    break;
                }
                bytes.extend_from_slice(&got);
            }
            let audio = crate::media::record::wav_to_ulaw(&bytes)
                .map_err(|e| CapError::InvalidArgument(format!("blob {blob}: {e}")))?;
            // One play holds at most 10 minutes of audio, however many
            // blobs (or the same one again) it names.
            audio_bytes += audio.len();
            if audio_bytes > MAX_PLAY_AUDIO_BYTES {
                return Err(CapError::TooLarge(
                    "a play holds at most 10 minutes of audio".into(),
                ));
            }
            *item = Prompt::Audio(audio.into());
        }
    }
    let op = crate::support::encoding::random_hex(16);
    queue(
        ctx,
        t,
        Command::Play {
            leg: id.to_string(),
            op: op.clone(),
            items,
            barge_in,
        },
    )?;
    Ok(op)
}

/// Collects digits on an answered leg; returns the operation's id.
pub fn collect(
    ctx: &mut CallCtx,
    t: &State,
    id: &str,
    opts: CollectOpts,
) -> Result<String, CapError> {
    let l = leg(ctx, t, id)?;
    in_state(&l, LegState::Answered, "collect")?;
    if opts.max_digits == 0 || usize::from(opts.max_digits) > MAX_DIGITS {
        return Err(CapError::InvalidArgument(format!(
            "max-digits is 1-{MAX_DIGITS}"
        )));
    }
    check_keys(&opts.terminators, KEYS)?;
    for (name, ms) in [("first-ms", opts.first_ms), ("between-ms", opts.between_ms)] {
        if ms == 0 || ms > MAX_WAIT_MS {
            return Err(CapError::InvalidArgument(format!(
                "{name} is 1-{MAX_WAIT_MS}"
            )));
        }
    }
    let op = crate::support::encoding::random_hex(16);
    queue(
        ctx,
        t,
        Command::Collect {
            leg: id.to_string(),
            op: op.clone(),
            opts,
        },
    )?;
    Ok(op)
}

/// Stops a play or a collect.
pub fn stop(ctx: &mut CallCtx, t: &State, op: &str) -> Result<(), CapError> {
    ctx.charge(op.len())?;
    let not_found = || CapError::NotFound(format!("no operation {op:?}"));
    if !is_id(op) {
        return Err(not_found());
    }
    // An operation of this call's own (issued before, not yet applied)
    // counts too.
    let pending = ctx.txn.effects_of::<Submit>().any(|s| {
        matches!(&s.command, Command::Play { op: o, .. } | Command::Collect { op: o, .. } if o == op)
    });
    if !pending {
        t.lookup_op(ctx.tenant_id(), ctx.plugin_name(), op)
            .ok_or_else(not_found)?;
    }
    queue(ctx, t, Command::Stop(op.to_string()))
}

/// Bridges two answered legs of the plugin.
pub fn bridge(ctx: &mut CallCtx, t: &State, a: &str, b: &str) -> Result<(), CapError> {
    if a == b {
        return Err(CapError::InvalidArgument(
            "a leg cannot be bridged with itself".into(),
        ));
    }
    for id in [a, b] {
        let l = leg(ctx, t, id)?;
        in_state(&l, LegState::Answered, "bridge")?;
    }
    queue(ctx, t, Command::Bridge(a.to_string(), b.to_string()))
}

/// Ends a leg's bridge.
pub fn unbridge(ctx: &mut CallCtx, t: &State, id: &str) -> Result<(), CapError> {
    leg(ctx, t, id)?;
    queue(ctx, t, Command::Unbridge(id.to_string()))
}

/// Ends a leg's play and the ones queued behind it.
pub fn stop_plays(ctx: &mut CallCtx, t: &State, id: &str) -> Result<(), CapError> {
    leg(ctx, t, id)?;
    queue(ctx, t, Command::StopPlays(id.to_string()))
}

/// Longest room name.
pub const MAX_ROOM_NAME: usize = 64;

/// Puts an answered leg into the plugin's conference room `room`.
pub fn join(ctx: &mut CallCtx, t: &State, id: &str, room: &str) -> Result<(), CapError> {
    ctx.charge(room.len())?;
    let valid = !room.is_empty()
        && room.len() <= MAX_ROOM_NAME
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(CapError::InvalidArgument(format!(
            "room names are 1-{MAX_ROOM_NAME} of [A-Za-z0-9._-]"
        )));
    }
    let l = leg(ctx, t, id)?;
    in_state(&l, LegState::Answered, "join")?;
    // The class of service of everyone the leg is for (SPEC T1): the user
    // and phone it is, the user and phone it was placed for.
    let (phone, placed_for) = accounts_of(ctx, t, id)?;
    if !t.may_conference(&ctx.tenant.record.dialing, &phone, placed_for.as_ref()) {
        return Err(CapError::Denied(
            "restricted: the class of service of the user or phone has no conference".into(),
        ));
    }
    if l.room.as_deref() != Some(room)
        && t.room_members(ctx.tenant_id(), ctx.plugin_name(), room)
            >= crate::media::engine::MAX_ROOM_MEMBERS
    {
        return Err(CapError::QuotaExceeded(format!(
            "room {room:?} has {} members",
            crate::media::engine::MAX_ROOM_MEMBERS
        )));
    }
    queue(
        ctx,
        t,
        Command::Join {
            leg: id.to_string(),
            room: room.to_string(),
        },
    )
}

/// Takes a leg out of its room.
pub fn leave(ctx: &mut CallCtx, t: &State, id: &str) -> Result<(), CapError> {
    leg(ctx, t, id)?;
    queue(ctx, t, Command::Leave(id.to_string()))
}

/// Keeps `state` with the leg.
pub fn set_state(ctx: &mut CallCtx, t: &State, id: &str, state: Vec<u8>) -> Result<(), CapError> {
    ctx.charge(state.len())?;
    if state.len() > MAX_STATE_BYTES {
        return Err(CapError::TooLarge(format!(
            "leg state of {} bytes exceeds {MAX_STATE_BYTES}",
            state.len()
        )));
    }
    leg(ctx, t, id)?;
    queue(ctx, t, Command::SetState(id.to_string(), state))
}

/// The leg as it is now.
pub fn get_leg(ctx: &mut CallCtx, t: &State, id: &str) -> Result<LegSnapshot, CapError> {
    leg(ctx, t, id)
}

/// Refuses the transfer a leg's phone asked for; the phone hears
/// `cause`. A transfer already settled (timed out, the leg ended) makes it
/// a no-op, so a plugin racing the phone never fails its event.
pub fn decline_transfer(
    ctx: &mut CallCtx,
    t: &State,
    id: &str,
    cause: legs::Cause,
) -> Result<(), CapError> {
    let l = leg(ctx, t, id)?;
    let declined = ctx
        .txn
        .effects_of::<Submit>()
        .any(|s| matches!(&s.command, Command::DeclineTransfer(leg, _) if leg == id));
    if l.state != LegState::Answered || declined || !t.transfer_pending(id) {
        return Ok(());
    }
    queue(ctx, t, Command::DeclineTransfer(id.to_string(), cause))
}

/// Longest recording, ms (4 h).
pub const MAX_RECORD_MS: u32 = 4 * 3600 * 1000;

/// Records an answered leg into a new blob of the plugin; returns the
/// operation's id (the blob's comes with `recorded`).
pub fn record(
    ctx: &mut CallCtx,
    t: &State,
    id: &str,
    opts: legs::RecordOpts,
) -> Result<String, CapError> {
    ctx.charge(
        opts.class.len() + opts.terminators.len() + opts.owner.as_ref().map_or(0, String::len),
    )?;
    let l = leg(ctx, t, id)?;
    in_state(&l, LegState::Answered, "record")?;
    if !crate::tenant::is_valid_class(&opts.class) {
        return Err(CapError::InvalidArgument(format!(
            "retention class {:?} must be 1-32 of [a-z0-9-], starting with a letter",
            opts.class
        )));
    }
    if let Some(o) = &opts.owner
        && (o.is_empty() || o.len() > 128 || !o.bytes().all(|b| b.is_ascii_graphic() && b != b'/'))
    {
        return Err(CapError::InvalidArgument(
            "owner must be 1-128 printable ASCII characters without '/'".into(),
        ));
    }
    if !(1_000..=MAX_RECORD_MS).contains(&opts.max_ms) {
        return Err(CapError::InvalidArgument(format!(
            "max-ms is 1000-{MAX_RECORD_MS}"
        )));
    }
    if opts.silence_ms != 0 && !(1_000..=MAX_WAIT_MS).contains(&opts.silence_ms) {
        return Err(CapError::InvalidArgument(format!(
            "silence-ms is 0 or 1000-{MAX_WAIT_MS}"
        )));
    }
    if opts.chunk_ms != 0 && !(1_000..=MAX_WAIT_MS).contains(&opts.chunk_ms) {
        return Err(CapError::InvalidArgument(format!(
            "chunk-ms is 0 or 1000-{MAX_WAIT_MS}"
        )));
    }
    check_keys(&opts.terminators, KEYS)?;
    let issued = ctx
        .txn
        .effects_of::<Submit>()
        .any(|s| matches!(&s.command, Command::Record { leg, .. } if leg == id));
    if issued || t.recording_on(id) {
        return Err(CapError::InvalidArgument(
            "a recording already runs on this leg".into(),
        ));
    }
    let limits = &ctx.tenant.record.limits;
    let quota = crate::call::txn::Quota {
        tenant_bytes: limits.storage_bytes,
        owner_bytes: limits.owner_storage_bytes,
    };
    let op = crate::support::encoding::random_hex(16);
    let blob = crate::support::encoding::random_hex(16);
    queue(
        ctx,
        t,
        Command::Record {
            leg: id.to_string(),
            op: op.clone(),
            blob,
            opts,
            quota,
            incarnation: ctx.tenant.record.incarnation.clone(),
        },
    )?;
    Ok(op)
}

/// Gives a leg to the plugin `number` routes to in the tenant, as the
/// call of `diversion`'s user if given (an active user of the tenant).
pub fn hand_off(
    ctx: &mut CallCtx,
    t: &State,
    id: &str,
    number: &str,
    diversion: Option<legs::Diversion>,
) -> Result<(), CapError> {
    ctx.charge(number.len() + diversion.as_ref().map_or(0, |d| d.user.len()))?;
    let l = leg(ctx, t, id)?;
    if !matches!(l.state, LegState::Offered | LegState::Answered) {
        return Err(CapError::InvalidArgument(format!(
            "cannot hand off a leg that is {}",
            state_name(l.state)
        )));
    }
    if number.is_empty() || number.len() > MAX_DIAL_BYTES {
        return Err(CapError::InvalidArgument(format!(
            "a number is 1-{MAX_DIAL_BYTES} bytes"
        )));
    }
    let recording = t.recording_on(id)
        || ctx
            .txn
            .effects_of::<Submit>()
            .any(|s| matches!(&s.command, Command::Record { leg, .. } if leg == id));
    if recording {
        return Err(CapError::InvalidArgument(
            "the leg is being recorded: stop the recording first".into(),
        ));
    }
    let record = &ctx.tenant.record;
    let route = record
        .route_for(number)
        .filter(|r| {
            record
                .plugins
                .get(&r.plugin)
                .is_some_and(|e| e.grants.contains(&switchboard_signing::Capability::Calls))
        })
        .cloned()
        .ok_or_else(|| CapError::NotFound(format!("no route for {number:?}")))?;
    // Checked last, on a leg of the plugin's own and a routed number, with
    // one answer for every kind of wrong user.
    if let Some(d) = &diversion {
        let known = d.user.len() <= 64
            && super::identity::lookup_user(ctx, &d.user)?
                .is_some_and(|u| u.active && u.id == d.user);
        if !known {
            return Err(CapError::InvalidArgument(
                "a diversion names an active user of the tenant by id".into(),
            ));
        }
    }
    queue(
        ctx,
        t,
        Command::HandOff {
            leg: id.to_string(),
            number: number.to_string(),
            to: HandingTo {
                plugin: route.plugin,
                args: route.args.into_bytes(),
                diversion,
            },
        },
    )
}

/// Pauses (`true`) or resumes a recording.
pub fn pause(ctx: &mut CallCtx, t: &State, op: &str, paused: bool) -> Result<(), CapError> {
    ctx.charge(op.len())?;
    let not_found = || CapError::NotFound(format!("no recording {op:?}"));
    if !is_id(op) {
        return Err(not_found());
    }
    let issued = ctx
        .txn
        .effects_of::<Submit>()
        .any(|s| matches!(&s.command, Command::Record { op: o, .. } if o == op));
    if !issued
        && t.lookup_op(ctx.tenant_id(), ctx.plugin_name(), op)
            .is_none()
    {
        return Err(not_found());
    }
    queue(ctx, t, Command::Pause(op.to_string(), paused))
}

/// Whom the plugin's leg `id` is for (`Telephony::accounts`: its phone,
/// and whom a placed leg was placed for), a dial issued in this
/// invocation included.
fn accounts_of(
    ctx: &mut CallCtx,
    t: &State,
    id: &str,
) -> Result<(Account, Option<Account>), CapError> {
    leg(ctx, t, id)?;
    let issued = ctx
        .txn
        .effects_of::<Submit>()
        .find_map(|s| match &s.command {
            Command::Dial {
                leg, user, device, ..
            } if leg == id => Some((
                Account::default(),
                Some(Account {
                    user: user.clone(),
                    device: device.clone(),
                }),
            )),
            _ => None,
        });
    issued
        .or_else(|| t.accounts(ctx.tenant_id(), ctx.plugin_name(), id))
        .ok_or_else(|| CapError::NotFound(format!("no call leg {id:?}")))
}

/// What a number reaches: the route's plugin, and its arguments when
/// the route is the asker's own.
pub struct RouteSeen {
    pub plugin: String,
    pub args: Option<Vec<u8>>,
    /// The route names the number itself, not a pattern.
    pub exact: bool,
}

/// What a number reaches in the plugin's tenant.
pub fn route_of(ctx: &mut CallCtx, number: &str) -> Result<Option<RouteSeen>, CapError> {
    ctx.charge(number.len())?;
    if number.is_empty() || number.len() > MAX_DIAL_BYTES {
        return Err(CapError::InvalidArgument(format!(
            "a number is 1-{MAX_DIAL_BYTES} bytes"
        )));
    }
    let own = ctx.plugin_name().to_string();
    Ok(ctx.tenant.record.route_for(number).map(|r| RouteSeen {
        plugin: r.plugin.clone(),
        args: (r.plugin == own).then(|| r.args.clone().into_bytes()),
        exact: !r.is_pattern(),
    }))
}

/// How a plugin asks for a call.
pub struct DialRequest {
    pub to: String,
    pub purpose: crate::telephony::policy::Purpose,
    pub on_behalf_of: Option<String>,
    /// The plugin's leg whose phone the call is for.
    pub for_leg: Option<String>,
    pub ring_ms: u32,
    pub state: Vec<u8>,
    pub account_code: Option<String>,
    pub caller_id: Option<String>,
}

/// Places a call through the dialing policy; returns the new leg's id
/// (the leg exists once the call commits).
pub fn dial(ctx: &mut CallCtx, t: &State, req: DialRequest) -> Result<String, CapError> {
    ctx.charge(req.to.len() + req.state.len())?;
    if req.to.is_empty() || req.to.len() > MAX_DIAL_BYTES {
        return Err(CapError::InvalidArgument(format!(
            "a number is 1-{MAX_DIAL_BYTES} bytes"
        )));
    }
    if !RING_MS.contains(&req.ring_ms) {
        return Err(CapError::InvalidArgument(format!(
            "ring-ms is {}-{}",
            RING_MS.start(),
            RING_MS.end()
        )));
    }
    if req.state.len() > MAX_STATE_BYTES {
        return Err(CapError::TooLarge(format!(
            "leg state exceeds {MAX_STATE_BYTES} bytes"
        )));
    }
    let mut caller = match &req.on_behalf_of {
        Some(user) if crate::events::valid_user(user) => user.clone(),
        Some(user) => {
            return Err(CapError::InvalidArgument(format!(
                "{user:?} is not a user id"
            )));
        }
        None => String::new(),
    };
    // A call for a leg's phone: its user (the host knows it; the plugin
    // cannot name another) and its device's restriction apply.
    // An emergency call is never stopped by the plugin's mistake here
    // (an unknown leg, another user named): it goes as it is.
    let emergency = t.is_emergency(&ctx.tenant.record.dialing, &req.to);
    let mut device = None;
    if let Some(for_leg) = &req.for_leg {
        match accounts_of(ctx, t, for_leg) {
            Ok((phone, _)) => {
                match phone.user {
                    Some(user) if !caller.is_empty() && caller != user && !emergency => {
                        return Err(CapError::InvalidArgument(format!(
                            "on-behalf-of names {caller:?} but leg {for_leg:?} is {user:?}'s phone"
                        )));
                    }
                    // An emergency call goes as the plugin named it.
                    Some(user) if !caller.is_empty() && caller != user => {}
                    Some(user) => caller = user,
                    None => {}
                }
                device = phone.device;
            }
            Err(e) if !emergency => return Err(e),
            Err(_) => {}
        }
    }
    // A malformed account code or caller id is the plugin's mistake, but
    // never stops an emergency call (they are dropped from it instead).
    let mut account_code = req.account_code.clone();
    if let Some(code) = &req.account_code
        && !crate::telephony::policy::is_account_code(code)
    {
        if !emergency {
            return Err(CapError::InvalidArgument(
                "an account code is 2-16 digits".into(),
            ));
        }
        account_code = None;
    }
    let shown = match &req.caller_id {
        Some(id)
            if (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b)) =>
        {
            id.clone()
        }
        Some(_) if !emergency => {
            return Err(CapError::InvalidArgument(
                "a caller id is 1-64 of A-Z a-z 0-9 + . _ -".into(),
            ));
        }
        _ => caller.clone(),
    };
    let to = t
        .check_dial(
            ctx.tenant_id(),
            ctx.plugin_name(),
            &ctx.tenant.record.dialing,
            &req.to,
            crate::telephony::policy::Asking {
                user: (!caller.is_empty()).then_some(caller.as_str()),
                device: device.as_deref(),
                purpose: req.purpose,
                account_code: account_code.as_deref(),
            },
        )
        .map_err(|r| CapError::Denied(r.to_string()))?;
    // The tenant's talk minutes a day out of it (emergency calls and
    // calls inside the tenant are never refused for it).
    if let Some(cap) = ctx.tenant.record.dialing.max_outbound_minutes_per_day
        && to.number.starts_with('+')
        && t.outbound_ms_today(ctx.tenant_id()) >= u64::from(cap) * 60_000
    {
        t.refuse_over_minutes(ctx.tenant_id(), ctx.plugin_name(), &req.to, cap);
        return Err(CapError::QuotaExceeded(format!(
            "the tenant's {cap} outbound minutes for today are used up"
        )));
    }
    let dials_issued = ctx
        .txn
        .effects_of::<Submit>()
        .filter(|s| matches!(s.command, Command::Dial { .. }))
        .count();
    if t.legs_of(ctx.tenant_id()) + dials_issued >= crate::telephony::legs::MAX_LEGS_PER_TENANT {
        return Err(CapError::QuotaExceeded(
            "the tenant has too many live call legs".into(),
        ));
    }
    // The tenant's cap on concurrent outbound calls (emergency calls are
    // never refused), counting the dials this call already issued.
    let max_outbound = ctx.tenant.record.dialing.max_outbound_calls;
    if let Some(cap) = max_outbound
        && to.class != crate::telephony::policy::Class::Emergency
        && t.outbound_live(ctx.tenant_id()) + dials_issued >= cap as usize
    {
        t.refuse_over_cap(ctx.tenant_id(), ctx.plugin_name(), &req.to, cap);
        return Err(CapError::QuotaExceeded(format!(
            "the tenant's {cap} concurrent outbound calls are in use"
        )));
    }
    let id = crate::support::encoding::random_hex(16);
    queue(
        ctx,
        t,
        Command::Dial {
            leg: id.clone(),
            caller: shown,
            to,
            ring_ms: req.ring_ms,
            state: req.state,
            account_code,
            user: (!caller.is_empty()).then_some(caller),
            device,
            max_outbound,
        },
    )?;
    Ok(id)
}

/// After commit: the user's devices hear the new counts.
struct MwiChanged {
    telephony: Arc<Telephony>,
    user: String,
}

impl Effect for MwiChanged {
    fn apply(&self, tenant: &str) {
        self.telephony.mwi_changed(tenant, &self.user);
    }
}

/// Message-waiting counts a user's devices show: stored in the call's
/// transaction, told to the SIP door once it commits.
pub fn set_mwi(
    ctx: &mut CallCtx,
    telephony: &State,
    user: &str,
    new: u32,
    old: u32,
) -> Result<(), CapError> {
    ctx.charge(user.len())?;
    if !crate::events::valid_user(user) {
        return Err(CapError::InvalidArgument(format!(
            "{user:?} is not a user id"
        )));
    }
    let key = crate::store::keys::mwi(ctx.tenant_id(), user);
    let value = serde_json::to_vec(&serde_json::json!({ "new": new, "old": old }))
        .map_err(|e| CapError::Internal(e.to_string()))?;
    ctx.txn.set(key, value);
    ctx.txn.push_effect(MwiChanged {
        telephony: telephony.clone(),
        user: user.to_string(),
    });
    Ok(())
}

/// Links the telephony `types` interface (types only).
pub(crate) fn add_types_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    twit::types::add_to_linker::<T, ViewOf<()>>(linker, |t| View {
        call: t.parts().0,
        state: &(),
    })
}

impl twit::types::Host for View<'_, ()> {}

/// Links the `calls` interface.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    twit::calls::add_to_linker::<T, ViewOf<State>>(linker, |t| {
        let (call, caps) = t.parts();
        View {
            call,
            state: &caps.telephony,
        }
    })
}

/// Links the `dial` interface.
pub(crate) fn add_dial_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    twit::dial::add_to_linker::<T, ViewOf<State>>(linker, |t| {
        let (call, caps) = t.parts();
        View {
            call,
            state: &caps.telephony,
        }
    })
}

/// Links the `mwi` interface.
pub(crate) fn add_mwi_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    twit::mwi::add_to_linker::<T, ViewOf<State>>(linker, |t| {
        let (call, caps) = t.parts();
        View {
            call,
            state: &caps.telephony,
        }
    })
}

use twit::types as t;

impl twit::calls::Host for View<'_, State> {
    fn answer(&mut self, leg: String) -> WitResult<()> {
        wrap(answer(self.call, self.state, &leg))
    }

    fn hangup(&mut self, leg: String, cause: t::Cause) -> WitResult<()> {
        wrap(hangup(self.call, self.state, &leg, cause_of(cause)))
    }

    fn play(&mut self, leg: String, items: Vec<t::Prompt>, barge_in: bool) -> WitResult<String> {
        let items = items
            .into_iter()
            .map(|p| match p {
                t::Prompt::Tone(item) => Prompt::Tone {
                    tone: match item.tone {
                        t::Tone::Ringback => ToneName::Ringback,
                        t::Tone::Busy => ToneName::Busy,
                        t::Tone::Silence => ToneName::Silence,
                    },
                    ms: item.ms,
                },
                t::Prompt::Digits(keys) => Prompt::Digits(keys),
                t::Prompt::Library(name) => Prompt::Library(name),
                t::Prompt::Blob(id) => Prompt::Blob(id),
            })
            .collect();
        wrap(play(self.call, self.state, &leg, items, barge_in))
    }

    fn collect(&mut self, leg: String, opts: t::CollectOpts) -> WitResult<String> {
        let opts = CollectOpts {
            max_digits: opts.max_digits,
            terminators: opts.terminators,
            first_ms: opts.first_ms,
            between_ms: opts.between_ms,
        };
        wrap(collect(self.call, self.state, &leg, opts))
    }

    fn stop(&mut self, op: String) -> WitResult<()> {
        wrap(stop(self.call, self.state, &op))
    }

    fn bridge(&mut self, a: String, b: String) -> WitResult<()> {
        wrap(bridge(self.call, self.state, &a, &b))
    }

    fn unbridge(&mut self, leg: String) -> WitResult<()> {
        wrap(unbridge(self.call, self.state, &leg))
    }

    fn stop_plays(&mut self, leg: String) -> WitResult<()> {
        wrap(stop_plays(self.call, self.state, &leg))
    }

    fn join(&mut self, leg: String, room: String) -> WitResult<()> {
        wrap(join(self.call, self.state, &leg, &room))
    }

    fn leave(&mut self, leg: String) -> WitResult<()> {
        wrap(leave(self.call, self.state, &leg))
    }

    fn set_state(&mut self, leg: String, state: Vec<u8>) -> WitResult<()> {
        wrap(set_state(self.call, self.state, &leg, state))
    }

    fn get_leg(&mut self, leg: String) -> WitResult<t::LegSnapshot> {
        wrap(get_leg(self.call, self.state, &leg).map(wit_snapshot))
    }

    fn decline_transfer(&mut self, leg: String, cause: t::Cause) -> WitResult<()> {
        wrap(decline_transfer(
            self.call,
            self.state,
            &leg,
            cause_of(cause),
        ))
    }

    fn record_leg(&mut self, leg: String, opts: t::RecordOpts) -> WitResult<String> {
        let opts = legs::RecordOpts {
            owner: opts.owner,
            class: opts.class,
            max_ms: opts.max_ms,
            silence_ms: opts.silence_ms,
            terminators: opts.terminators,
            chunk_ms: opts.chunk_ms,
        };
        wrap(record(self.call, self.state, &leg, opts))
    }

    fn hand_off(
        &mut self,
        leg: String,
        number: String,
        diversion: Option<t::Diversion>,
    ) -> WitResult<()> {
        let diversion = diversion.map(|d| legs::Diversion {
            user: d.user,
            reason: match d.reason {
                t::DivertReason::Always => legs::DivertReason::Always,
                t::DivertReason::Busy => legs::DivertReason::Busy,
                t::DivertReason::NoAnswer => legs::DivertReason::NoAnswer,
            },
        });
        wrap(hand_off(self.call, self.state, &leg, &number, diversion))
    }

    fn pause(&mut self, op: String) -> WitResult<()> {
        wrap(pause(self.call, self.state, &op, true))
    }

    fn resume(&mut self, op: String) -> WitResult<()> {
        wrap(pause(self.call, self.state, &op, false))
    }

    fn route_of(&mut self, number: String) -> WitResult<Option<t::Route>> {
        wrap(route_of(self.call, &number).map(|r| {
            r.map(|r| t::Route {
                plugin: r.plugin,
                args: r.args,
                exact: r.exact,
            })
        }))
    }
}

impl twit::dial::Host for View<'_, State> {
    fn dial(&mut self, to: String, opts: twit::dial::DialOpts) -> WitResult<String> {
        use crate::telephony::policy::Purpose;
        let req = DialRequest {
            to,
            purpose: match opts.purpose {
                twit::dial::DialPurpose::Call => Purpose::Call,
                twit::dial::DialPurpose::Forward => Purpose::Forward,
                twit::dial::DialPurpose::Transfer => Purpose::Transfer,
                twit::dial::DialPurpose::Callback => Purpose::Callback,
            },
            on_behalf_of: opts.on_behalf_of,
            for_leg: opts.for_leg,
            ring_ms: opts.ring_ms,
            account_code: opts.account_code,
            caller_id: opts.caller_id,
            state: opts.state,
        };
        wrap(dial(self.call, self.state, req))
    }
}

impl twit::mwi::Host for View<'_, State> {
    fn set_mwi(&mut self, user: String, new_messages: u32, old_messages: u32) -> WitResult<()> {
        wrap(set_mwi(
            self.call,
            self.state,
            &user,
            new_messages,
            old_messages,
        ))
    }
}

fn cause_of(c: t::Cause) -> legs::Cause {
    match c {
        t::Cause::Normal => legs::Cause::Normal,
        t::Cause::Busy => legs::Cause::Busy,
        t::Cause::NoAnswer => legs::Cause::NoAnswer,
        t::Cause::Rejected => legs::Cause::Rejected,
        t::Cause::Failed => legs::Cause::Failed,
        t::Cause::Restricted => legs::Cause::Restricted,
        t::Cause::Unavailable => legs::Cause::Unavailable,
        t::Cause::Timeout => legs::Cause::Timeout,
    }
}

/// An event as API 0.3.0's `on-call` receives it.
pub(crate) fn wit_event(e: CallEvent) -> t::CallEvent {
    let kind = match e.kind {
        CallEventKind::Offered(args) => t::CallEventKind::Offered(args),
        CallEventKind::Ringing => t::CallEventKind::Ringing,
        CallEventKind::Answered => t::CallEventKind::Answered,
        CallEventKind::Digit(k) => t::CallEventKind::Digit(k.to_string()),
        CallEventKind::Played { op, end } => t::CallEventKind::Played(t::Played {
            op,
            end: wit_op_end(end),
        }),
        CallEventKind::Collected { op, digits, end } => t::CallEventKind::Collected(t::Collected {
            op,
            digits,
            end: wit_op_end(end),
        }),
        CallEventKind::Recorded { op, blob, ms, end } => t::CallEventKind::Recorded(t::Recorded {
            op,
            blob,
            ms,
            end: wit_op_end(end),
        }),
        CallEventKind::RecordingChunk {
            op,
            blob,
            offset,
            len,
        } => t::CallEventKind::RecordingChunk(t::RecordingChunk {
            op,
            blob,
            offset,
            len,
        }),
        CallEventKind::Bridged(other) => t::CallEventKind::Bridged(other),
        CallEventKind::Unbridged => t::CallEventKind::Unbridged,
        CallEventKind::Joined(room) => t::CallEventKind::Joined(room),
        CallEventKind::Left(room) => t::CallEventKind::Left(room),
        CallEventKind::Transfer(to) => t::CallEventKind::Transfer(to),
        CallEventKind::AttendedTransfer(other) => t::CallEventKind::AttendedTransfer(other),
        CallEventKind::Held => t::CallEventKind::Held,
        CallEventKind::Resumed => t::CallEventKind::Resumed,
        CallEventKind::HandedOff(n) => t::CallEventKind::HandedOff(n),
        CallEventKind::Ended(cause) => t::CallEventKind::Ended(wit_cause(cause)),
    };
    t::CallEvent {
        leg: e.leg,
        seq: e.seq,
        at_ms: e.at_ms,
        state: e.state,
        snapshot: wit_snapshot(e.snapshot),
        kind,
    }
}

/// A leg snapshot as API 0.3.0 shows it.
pub(crate) fn wit_snapshot(s: legs::LegSnapshot) -> t::LegSnapshot {
    t::LegSnapshot {
        id: s.id,
        state: match s.state {
            legs::LegState::Offered => t::LegState::Offered,
            legs::LegState::Ringing => t::LegState::Ringing,
            legs::LegState::Answered => t::LegState::Answered,
            legs::LegState::Ended => t::LegState::Ended,
        },
        direction: match s.direction {
            legs::Direction::Inbound => t::Direction::Inbound,
            legs::Direction::Outbound => t::Direction::Outbound,
        },
        caller: s.caller,
        callee: s.callee,
        codec: s.codec,
        secure: s.secure,
        bridged_with: s.bridged_with,
        room: s.room,
        user: s.user,
        on_hold: s.on_hold,
        diverted: s.diverted.map(|d| t::Diversion {
            user: d.user,
            reason: match d.reason {
                legs::DivertReason::Always => t::DivertReason::Always,
                legs::DivertReason::Busy => t::DivertReason::Busy,
                legs::DivertReason::NoAnswer => t::DivertReason::NoAnswer,
            },
        }),
        started_ms: s.started_ms,
        answered_ms: s.answered_ms,
    }
}

fn wit_op_end(end: legs::OpEnd) -> t::OpEnd {
    match end {
        legs::OpEnd::Done => t::OpEnd::Done,
        legs::OpEnd::Stopped => t::OpEnd::Stopped,
        legs::OpEnd::Barged => t::OpEnd::Barged,
        legs::OpEnd::Timeout => t::OpEnd::Timeout,
        legs::OpEnd::Hangup => t::OpEnd::Hangup,
    }
}

/// A cause as API 0.3.0 shows it.
pub(crate) fn wit_cause(c: legs::Cause) -> t::Cause {
    match c {
        legs::Cause::Normal => t::Cause::Normal,
        legs::Cause::Busy => t::Cause::Busy,
        legs::Cause::NoAnswer => t::Cause::NoAnswer,
        legs::Cause::Rejected => t::Cause::Rejected,
        legs::Cause::Failed => t::Cause::Failed,
        legs::Cause::Restricted => t::Cause::Restricted,
        legs::Cause::Unavailable => t::Cause::Unavailable,
        legs::Cause::Timeout => t::Cause::Timeout,
    }
}
