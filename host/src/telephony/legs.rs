//! The leg table: every live call leg, its owner, its operations and its
//! event queue, as a state machine without I/O. Call control's thread
//! (`switch.rs`) feeds it commands, media events, signalling and clock
//! ticks, and carries out the [`Action`]s it returns (media and
//! signalling); the event dispatcher takes its ready events and reports
//! each delivery.
//!
//! Rules kept here:
//! - a leg belongs to one (tenant, plugin); any other asker finds nothing
//!   (`lookup` answers `None` exactly as for an unknown id);
//! - a leg's events are delivered one at a time, in order, each with its
//!   `seq`; a failed delivery is retried with backoff, and after
//!   [`MAX_DELIVERY_ATTEMPTS`] the leg gets its fallback: it is ended
//!   (`failed`) and its plugin hears nothing more of it;
//! - every wait has a limit (the watchdog in [`Table::tick`]): an offered
//!   or ringing leg, a collect, an idle answered leg, a leg's whole life;
//! - `ended` is a leg's last event; the leg leaves the table once it is
//!   delivered.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::policy::{Account, Class, Dialled};
use super::records::CallRecord;
use super::signalling::Outbound;
use crate::call::legs::{
    CallEvent, CallEventKind, Cause, CollectOpts, Direction, Diversion, LegSnapshot, LegState,
    OpEnd, Prompt, RecordOpts, ToneName,
};
use crate::call::txn::Quota;
use crate::media::engine::Sound;
use crate::media::tone::Tone;

/// Deliveries of one event before the leg gets its fallback.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 3;
/// Wait before the first re-delivery; it doubles each time.
pub const RETRY_BASE_MS: u64 = 200;
/// How long an inbound leg may wait for `answer`.
pub const OFFER_LIMIT_MS: u64 = 120_000;
/// How long an answered leg may sit with nothing happening on it: no
/// bridge, no play, no collect, no key and no command.
pub const IDLE_LIMIT_MS: u64 = 60_000;
/// Longest life of any leg.
pub const MAX_LEG_MS: u64 = 24 * 3600 * 1000;
/// Keys remembered for the next collect (type-ahead).
pub const MAX_TYPEAHEAD: usize = 32;
/// Events queued on one leg; beyond it the oldest undelivered digit
/// events are dropped (a key-mashing caller cannot grow memory).
pub const MAX_QUEUED_EVENTS: usize = 64;
/// Plays queued on one leg (the one playing included); more answer
/// `stopped` at once.
pub const MAX_QUEUED_PLAYS: usize = 8;
/// Events waiting on one leg whatever their kind; a leg whose plugin lets
/// more pile up is ended (`failed`).
pub const MAX_EVENTS_HARD: usize = 4 * MAX_QUEUED_EVENTS;
/// How long past its length a sound may go without the media engine's
/// `PlayDone` before the watchdog takes it as done (an event lost to a
/// full channel must not freeze a leg's prompts).
pub const PLAY_DONE_GRACE_MS: u64 = 2_000;
/// Most live legs of one tenant (inbound and outbound).
pub const MAX_LEGS_PER_TENANT: usize = 2000;
/// How long a transfer a phone asked for may wait for the plugin to end
/// the leg or decline; then the phone hears it failed.
pub const TRANSFER_LIMIT_MS: u64 = 30_000;
/// How long an ended leg's `ended` waits for its recording to be written
/// (its `recorded` comes first); then both go, the blob as far as it got.
pub const RECORD_FLUSH_LIMIT_MS: u64 = 10_000;
/// A DTMF key tone and the gap after it, as played.
const KEY_TONE: Duration = Duration::from_millis(100);
const KEY_GAP: Duration = Duration::from_millis(60);

/// The plugin a leg is handed to, with its route's arguments and whose
/// call it was.
#[derive(Debug, Clone)]
pub struct HandingTo {
    pub plugin: String,
    pub args: Vec<u8>,
    pub diversion: Option<Diversion>,
}

/// A plugin's command, applied after its call committed, in issue order.
#[derive(Debug, Clone)]
pub enum Command {
    Answer(String),
    Hangup(String, Cause),
    Play {
        leg: String,
        op: String,
        items: Vec<Prompt>,
        barge_in: bool,
    },
    Collect {
        leg: String,
        op: String,
        opts: CollectOpts,
    },
    Stop(String),
    /// Ends the leg's play and the queued ones.
    StopPlays(String),
    Bridge(String, String),
    Unbridge(String),
    Join {
        leg: String,
        room: String,
    },
    Leave(String),
    SetState(String, Vec<u8>),
    /// Refuses the transfer the leg's phone asked for.
    DeclineTransfer(String, Cause),
    /// Records the leg into blob `blob` of the plugin (under `quota`,
    /// while the tenant is still the `incarnation` that asked).
    Record {
        leg: String,
        op: String,
        blob: String,
        opts: RecordOpts,
        quota: Quota,
        incarnation: String,
    },
    /// Pauses (true) or resumes a recording.
    Pause(String, bool),
    /// Gives the leg to `to` (a plugin of the tenant) with `args`, as
    /// `number`'s route says.
    HandOff {
        leg: String,
        number: String,
        to: HandingTo,
    },
    Dial {
        leg: String,
        caller: String,
        to: Dialled,
        ring_ms: u32,
        state: Vec<u8>,
        /// The account code the call is billed to (checked).
        account_code: Option<String>,
        /// The user it is placed for (whose restriction allowed it).
        user: Option<String>,
        /// The device it is placed for (whose restriction narrowed it).
        device: Option<String>,
        /// The tenant's cap on concurrent outbound legs, checked again
        /// here (dials committed at once may pass the issue-time check).
        max_outbound: Option<u32>,
    },
}

/// What the table asks call control to carry out.
#[derive(Debug, Clone)]
pub enum Action {
    Play {
        media: u64,
        sound: Sound,
        tag: u64,
    },
    StopPlay(u64),
    Bridge {
        a: String,
        b: String,
        media: (u64, u64),
    },
    Unbridge(u64),
    Join {
        leg: String,
        media: u64,
        room: u64,
    },
    Leave(u64),
    /// A dial refused when carried out for the tenant's outbound cap:
    /// counted and audited like one refused when issued.
    RefusedOverCap {
        tenant: String,
        plugin: String,
        to: String,
        cap: u32,
    },
    /// Write a leg's call record (with the media's figures, read before
    /// the media closes).
    Record {
        tenant: String,
        record: Box<CallRecord>,
        media: Option<u64>,
    },
    Close(u64),
    Answer(String),
    End(String, Cause),
    Originate(Outbound),
    /// Tell the leg's phone its transfer failed (declined, or not
    /// settled in time).
    TransferFailed(String, Cause),
    /// Start recording the leg's media into a blob of its plugin.
    StartRecording(Box<StartRecording>),
    /// Stop (and write out) the leg's recording.
    StopRecording(u64),
    PauseRecording(u64, bool),
}

/// A recording to start: where its audio goes.
#[derive(Debug, Clone)]
pub struct StartRecording {
    pub media: u64,
    pub leg: String,
    pub op: String,
    pub tenant: String,
    pub plugin: String,
    pub blob: String,
    pub opts: RecordOpts,
    pub quota: Quota,
    pub incarnation: String,
}

/// An event to deliver to a plugin's `on-call`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tenant: String,
    pub plugin: String,
    pub event: CallEvent,
}

#[derive(Debug)]
struct Playing {
    op: String,
    segments: VecDeque<Sound>,
    barge_in: bool,
    tag: u64,
    /// When the sound playing now should have ended.
    due_ms: u64,
}

/// How long a sound plays.
fn length_ms(sound: &Sound) -> u64 {
    match sound {
        Sound::Tone(_, length) => length.as_millis() as u64,
        Sound::Clip(clip) => clip.len() as u64 / 8,
        Sound::Audio(audio) => audio.len() as u64 / 8,
    }
}

/// A recording in progress.
#[derive(Debug)]
struct Recording {
    op: String,
    blob: String,
    terminators: String,
    /// Why it is ending, when the table knows better than the engine (a
    /// terminator key: `done`; `stop`: `stopped`).
    ending: Option<OpEnd>,
}

#[derive(Debug)]
struct Collect {
    op: String,
    opts: CollectOpts,
    digits: String,
    deadline_ms: u64,
}

#[derive(Debug)]
struct Leg {
    tenant: String,
    plugin: String,
    snapshot: LegSnapshot,
    /// The trunk the leg came in or went out over.
    trunk: Option<String>,
    /// The account code an outbound leg is billed to.
    account_code: Option<String>,
    /// The user and device whose phone this leg is: an inbound leg's
    /// caller, or the device that answered an outbound leg.
    phone: Account,
    /// The user and device an outbound leg was placed for.
    placed_for: Account,
    /// The first leg it was bridged with (its record names it: the two
    /// legs of one call).
    partner: Option<String>,
    /// The first conference it was in (`{room}~{meeting id}`: its record
    /// names it, as do the records of everyone in that meeting).
    first_room: Option<String>,
    /// When a transfer the phone asked for gives up, if one is pending.
    transfer_due_ms: Option<u64>,
    /// The recording running on the leg, if any.
    recording: Option<Recording>,
    /// An ended leg waiting for its recording to be written before its
    /// `ended` (the cause, and until when it waits).
    held_end: Option<(Cause, u64)>,
    /// Where the leg goes once its `handed-off` is delivered.
    handing_to: Option<HandingTo>,
    /// The plugin is handling or has handled the pending transfer's
    /// event: only then does ending the leg (`normal`) tell the phone the
    /// transfer went through.
    transfer_seen: bool,
    media: Option<u64>,
    /// When an offered or ringing leg gives up.
    deadline_ms: Option<u64>,
    last_activity_ms: u64,
    client_state: Vec<u8>,
    seq: u64,
    queue: VecDeque<CallEvent>,
    in_flight: bool,
    attempts: u32,
    not_before_ms: u64,
    /// The plugin failed the leg's events: it hears nothing more.
    dead: bool,
    playing: Option<Playing>,
    plays: VecDeque<Playing>,
    collect: Option<Collect>,
    typeahead: String,
}

/// Every live leg.
#[derive(Default)]
pub struct Table {
    legs: HashMap<String, Leg>,
    by_media: HashMap<u64, String>,
    /// Operation id → its leg.
    ops: HashMap<String, String>,
    next_tag: u64,
    /// Conference rooms by (tenant, plugin, name): the engine's number for
    /// the room, its members, and a random id of this meeting of the room
    /// (for the records); a room is forgotten when it empties.
    rooms: HashMap<(String, String, String), (u64, usize, String)>,
    next_room: u64,
}

/// The codec name of a static payload type.
pub fn codec_name(payload_type: u8) -> &'static str {
    match payload_type {
        0 => "pcmu",
        8 => "pcma",
        _ => "",
    }
}

fn segments(items: &[Prompt]) -> VecDeque<Sound> {
    let mut out = VecDeque::new();
    for item in items {
        match item {
            Prompt::Tone { tone, ms } => {
                let tone = match tone {
                    ToneName::Ringback => Tone::RINGBACK_US,
                    ToneName::Busy => Tone::BUSY_US,
                    ToneName::Silence => Tone::SILENCE,
                };
                out.push_back(Sound::Tone(tone, Duration::from_millis(u64::from(*ms))));
            }
            Prompt::Digits(keys) => {
                for key in keys.chars() {
                    if let Some(tone) = Tone::dtmf(key) {
                        out.push_back(Sound::Tone(tone, KEY_TONE));
                        out.push_back(Sound::Tone(Tone::SILENCE, KEY_GAP));
                    }
                }
            }
            Prompt::Library(name) => {
                // Checked when issued; an unknown name plays nothing.
                if let Some(clip) = crate::media::prompts::get(name) {
                    out.push_back(Sound::Clip(clip));
                }
            }
            Prompt::Audio(audio) => out.push_back(Sound::Audio(audio.clone())),
            // Read into `Audio` when issued; never reaches the table.
            Prompt::Blob(_) => {}
        }
    }
    out
}

impl Leg {
    fn push(&mut self, kind: CallEventKind, now: u64) {
        if self.dead {
            return;
        }
        // More of a recording while the last word of it still waits: one
        // event says both (a slow plugin never piles them up).
        if let CallEventKind::RecordingChunk {
            op, offset, len, ..
        } = &kind
        {
            let skip = usize::from(self.in_flight);
            if let Some(CallEventKind::RecordingChunk {
                op: o,
                offset: off,
                len: l,
                ..
            }) = self.queue.iter_mut().skip(skip).map(|e| &mut e.kind).last()
                && o == op
                && *off + *l == *offset
            {
                *l += len;
                return;
            }
        }
        if self.queue.len() >= MAX_EVENTS_HARD {
            // The plugin lets events pile up: it hears nothing more of
            // this leg, which the watchdog ends (`failed`).
            tracing::warn!(tenant = %self.tenant, plugin = %self.plugin, leg = %self.snapshot.id, "a call leg's events piled up; ending it");
            self.dead = true;
            self.queue.clear();
            return;
        }
        if self.queue.len() >= MAX_QUEUED_EVENTS {
            // Drop the oldest waiting digit (never the one in flight).
            let skip = usize::from(self.in_flight);
            if let Some(i) = self
                .queue
                .iter()
                .skip(skip)
                .position(|e| matches!(e.kind, CallEventKind::Digit(_)))
            {
                self.queue.remove(i + skip);
            } else if matches!(kind, CallEventKind::Digit(_)) {
                return;
            }
        }
        self.seq += 1;
        self.queue.push_back(CallEvent {
            leg: self.snapshot.id.clone(),
            seq: self.seq,
            at_ms: now,
            state: Vec::new(),
            snapshot: self.snapshot.clone(),
            kind,
        });
    }

    /// Forgets a settled transfer's event the plugin has not taken yet
    /// (it must not act on a transfer the phone was told failed).
    fn drop_transfer_events(&mut self) {
        let skip = usize::from(self.in_flight);
        let mut i = skip;
        while i < self.queue.len() {
            if matches!(
                self.queue[i].kind,
                CallEventKind::Transfer(_) | CallEventKind::AttendedTransfer(_)
            ) {
                self.queue.remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn idle(&self) -> bool {
        self.snapshot.bridged_with.is_none()
            && self.snapshot.room.is_none()
            && self.playing.is_none()
            && self.collect.is_none()
            && self.recording.is_none()
    }

    /// Whether the leg hears peers (a bridge or a room), so a play would
    /// talk over them.
    fn connected(&self) -> bool {
        self.snapshot.bridged_with.is_some() || self.snapshot.room.is_some()
    }

    /// Feeds a key to the running collect; returns how it ended, if it did.
    fn feed(&mut self, key: char, now: u64) -> Option<(String, String, OpEnd)> {
        let c = self.collect.as_mut()?;
        if c.opts.terminators.contains(key) {
            return self.finish_collect(OpEnd::Done);
        }
        c.digits.push(key);
        c.deadline_ms = now + u64::from(c.opts.between_ms);
        if c.digits.len() >= usize::from(c.opts.max_digits.max(1)) {
            return self.finish_collect(OpEnd::Done);
        }
        None
    }

    fn finish_collect(&mut self, end: OpEnd) -> Option<(String, String, OpEnd)> {
        self.collect.take().map(|c| (c.op, c.digits, end))
    }
}

impl Table {
    /// The leg `id` if it belongs to `tenant`'s `plugin`; otherwise `None`,
    /// exactly as for an id that never existed.
    pub fn lookup(&self, tenant: &str, plugin: &str, id: &str) -> Option<LegSnapshot> {
        self.legs
            .get(id)
            // A leg being handed over is no longer its old plugin's.
            .filter(|l| l.tenant == tenant && l.plugin == plugin && l.handing_to.is_none())
            .map(|l| l.snapshot.clone())
    }

    /// Whom leg `id` of `tenant`'s `plugin` is for (its class of
    /// restriction and of service): the user and device whose phone it
    /// is (empty: no phone of the tenant), and, for a leg a plugin
    /// placed, the user and device it was placed for (empty: for no
    /// one).
    pub fn accounts(
        &self,
        tenant: &str,
        plugin: &str,
        id: &str,
    ) -> Option<(Account, Option<Account>)> {
        self.legs
            .get(id)
            .filter(|l| l.tenant == tenant && l.plugin == plugin && l.handing_to.is_none())
            .map(|l| {
                let placed =
                    (l.snapshot.direction == Direction::Outbound).then(|| l.placed_for.clone());
                (l.phone.clone(), placed)
            })
    }

    /// The device (and its owner) that answered outbound leg `id`.
    pub fn answered_on(&mut self, id: &str, phone: Account) {
        if let Some(l) = self.legs.get_mut(id)
            && l.snapshot.direction == Direction::Outbound
        {
            l.phone = phone;
        }
    }

    /// The leg of operation `op` if it belongs to `tenant`'s `plugin`.
    pub fn lookup_op(&self, tenant: &str, plugin: &str, op: &str) -> Option<LegSnapshot> {
        let leg = self.ops.get(op)?;
        self.lookup(tenant, plugin, leg)
    }

    /// The (tenant, plugin) owning leg `id`.
    pub fn owner_of(&self, id: &str) -> Option<(String, String)> {
        self.legs
            .get(id)
            .map(|l| (l.tenant.clone(), l.plugin.clone()))
    }

    /// The tenant of outbound leg `id` if it rings and has no media yet
    /// (the signalling side may prepare its media for an offer).
    pub fn ringing_without_media(&self, id: &str) -> Option<String> {
        self.legs
            .get(id)
            .filter(|l| l.snapshot.state == LegState::Ringing && l.media.is_none())
            .map(|l| l.tenant.clone())
    }

    /// Attaches media opened before the answer; `false` if the leg no
    /// longer waits for it (the caller closes the media).
    pub fn prepared(&mut self, id: &str, media: u64) -> bool {
        let waiting = self
            .legs
            .get(id)
            .is_some_and(|l| l.snapshot.state == LegState::Ringing && l.media.is_none());
        if waiting && let Some(l) = self.legs.get_mut(id) {
            l.media = Some(media);
            self.by_media.insert(media, id.to_string());
        }
        waiting
    }

    /// Whether outbound leg `id` rings (waits for its answer).
    pub fn is_ringing(&self, id: &str) -> bool {
        self.legs
            .get(id)
            .is_some_and(|l| l.snapshot.state == LegState::Ringing)
    }

    pub fn is_answered(&self, id: &str) -> bool {
        self.legs
            .get(id)
            .is_some_and(|l| l.snapshot.state == LegState::Answered)
    }

    /// Notes the trunk an outbound leg goes out over.
    pub fn set_trunk(&mut self, id: &str, trunk: &str) {
        if let Some(l) = self.legs.get_mut(id) {
            l.trunk = Some(trunk.to_string());
        }
    }

    /// The media of leg `id`, if open.
    pub fn media_of(&self, id: &str) -> Option<u64> {
        self.legs.get(id).and_then(|l| l.media)
    }

    /// The tenant of leg `id`.
    pub fn tenant_of(&self, id: &str) -> Option<String> {
        self.legs.get(id).map(|l| l.tenant.clone())
    }

    /// Outbound legs of `tenant` ringing or answered (emergency calls
    /// count too: they occupy a trunk).
    pub fn outbound_live(&self, tenant: &str) -> usize {
        self.legs
            .values()
            .filter(|l| {
                l.tenant == tenant
                    && l.snapshot.direction == Direction::Outbound
                    && l.snapshot.state != LegState::Ended
            })
            .count()
    }

    /// Legs of `tenant` in the table.
    pub fn count(&self, tenant: &str) -> usize {
        self.legs.values().filter(|l| l.tenant == tenant).count()
    }

    /// Legs in the table.
    pub fn len(&self) -> usize {
        self.legs.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        id: String,
        tenant: &str,
        plugin: &str,
        direction: Direction,
        state: LegState,
        caller: &str,
        callee: &str,
        now: u64,
    ) -> &mut Leg {
        let leg = Leg {
            tenant: tenant.to_string(),
            plugin: plugin.to_string(),
            snapshot: LegSnapshot {
                id: id.clone(),
                state,
                direction,
                caller: caller.to_string(),
                callee: callee.to_string(),
                codec: String::new(),
                secure: false,
                bridged_with: None,
                room: None,
                user: None,
                on_hold: false,
                diverted: None,
                started_ms: now,
                answered_ms: None,
            },
            trunk: None,
            account_code: None,
            phone: Account::default(),
            placed_for: Account::default(),
            partner: None,
            first_room: None,
            transfer_due_ms: None,
            transfer_seen: false,
            recording: None,
            held_end: None,
            handing_to: None,
            media: None,
            deadline_ms: None,
            last_activity_ms: now,
            client_state: Vec::new(),
            seq: 0,
            queue: VecDeque::new(),
            in_flight: false,
            attempts: 0,
            not_before_ms: 0,
            dead: false,
            playing: None,
            plays: VecDeque::new(),
            collect: None,
            typeahead: String::new(),
        };
        self.legs.entry(id).or_insert(leg)
    }

    fn attach_media(&mut self, id: &str, media: u64, payload_type: u8, secure: bool) {
        if let Some(l) = self.legs.get_mut(id) {
            l.media = Some(media);
            l.snapshot.codec = codec_name(payload_type).to_string();
            l.snapshot.secure = secure;
            self.by_media.insert(media, id.to_string());
        }
    }

    /// A new inbound leg with its media open: `offered` goes to the plugin.
    pub fn offer(
        &mut self,
        id: String,
        inbound: &super::signalling::Inbound,
        media: u64,
        now: u64,
    ) {
        let leg = self.insert(
            id.clone(),
            &inbound.tenant,
            &inbound.plugin,
            Direction::Inbound,
            LegState::Offered,
            &inbound.caller,
            &inbound.callee,
            now,
        );
        leg.deadline_ms = Some(now + OFFER_LIMIT_MS);
        leg.trunk = inbound.trunk.clone();
        leg.snapshot.user = inbound.user.clone();
        leg.phone = Account {
            user: inbound.user.clone(),
            device: inbound.device.clone(),
        };
        self.attach_media(
            &id,
            media,
            inbound.media.payload_type,
            inbound.media.srtp.is_some(),
        );
        if let Some(l) = self.legs.get_mut(&id) {
            l.push(CallEventKind::Offered(inbound.args.clone()), now);
        }
    }

    /// An outbound leg rings at the far end.
    pub fn ringing(&mut self, id: &str, now: u64) {
        if let Some(l) = self.legs.get_mut(id)
            && l.snapshot.state == LegState::Ringing
        {
            l.push(CallEventKind::Ringing, now);
        }
    }

    /// An outbound leg was answered and its media opened; false if the
    /// leg is no longer waiting for an answer (the media must be closed).
    pub fn answered(
        &mut self,
        id: &str,
        media: u64,
        payload_type: u8,
        secure: bool,
        now: u64,
    ) -> bool {
        let waiting = self
            .legs
            .get(id)
            .is_some_and(|l| l.snapshot.state == LegState::Ringing);
        if !waiting {
            return false;
        }
        self.attach_media(id, media, payload_type, secure);
        if let Some(l) = self.legs.get_mut(id) {
            l.snapshot.state = LegState::Answered;
            l.snapshot.answered_ms = Some(now);
            l.deadline_ms = None;
            l.last_activity_ms = now;
            l.push(CallEventKind::Answered, now);
        }
        true
    }

    /// Ends a leg: its operations end (`hangup`), its bridge partner hears
    /// `unbridged`, its media closes, and `ended` is its last event.
    /// `tell` asks the signalling side to end it too.
    pub fn end(&mut self, id: &str, cause: Cause, tell: bool, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(l) = self.legs.get_mut(id) else {
            return actions;
        };
        if l.snapshot.state == LegState::Ended {
            return actions;
        }
        let mut ops = Vec::new();
        let plays: Vec<Playing> = l
            .playing
            .take()
            .into_iter()
            .chain(l.plays.drain(..))
            .collect();
        for p in plays {
            ops.push(p.op.clone());
            l.push(
                CallEventKind::Played {
                    op: p.op,
                    end: OpEnd::Hangup,
                },
                now,
            );
        }
        if let Some((op, digits, end)) = l.finish_collect(OpEnd::Hangup) {
            ops.push(op.clone());
            l.push(CallEventKind::Collected { op, digits, end }, now);
        }
        // A pending transfer went through only if the plugin heard of it
        // and ended the leg normally; otherwise the phone hears it failed
        // (before the BYE).
        if l.transfer_due_ms.take().is_some() && !(l.transfer_seen && cause == Cause::Normal) {
            let why = if cause == Cause::Normal {
                Cause::Unavailable
            } else {
                cause
            };
            actions.push(Action::TransferFailed(id.to_string(), why));
        }
        let partner = l.snapshot.bridged_with.take();
        let room = l.snapshot.room.take();
        let owner = (l.tenant.clone(), l.plugin.clone());
        actions.push(Action::Record {
            tenant: l.tenant.clone(),
            record: Box::new(CallRecord {
                trunk: l.trunk.clone(),
                account_code: l.account_code.clone(),
                user: l
                    .snapshot
                    .user
                    .clone()
                    .or_else(|| l.placed_for.user.clone()),
                bridged_with: l.partner.clone(),
                room: l.first_room.clone(),
                ..CallRecord::of(&l.plugin, &l.snapshot, cause.name(), now)
            }),
            media: l.media,
        });
        l.snapshot.state = LegState::Ended;
        l.deadline_ms = None;
        if l.recording.is_some() {
            // Closing the media writes the recording out; `recorded` and
            // then `ended` follow when it is (or after the limit).
            l.held_end = Some((cause, now + RECORD_FLUSH_LIMIT_MS));
        } else {
            l.push(CallEventKind::Ended(cause), now);
        }
        if let Some(m) = l.media.take() {
            self.by_media.remove(&m);
            actions.push(Action::Close(m));
        }
        if tell {
            actions.push(Action::End(id.to_string(), cause));
        }
        for op in ops {
            self.ops.remove(&op);
        }
        if let Some(name) = room {
            self.room_left(&owner.0, &owner.1, &name);
        }
        if let Some(p) = partner.and_then(|p| self.legs.get_mut(&p)) {
            p.snapshot.bridged_with = None;
            p.last_activity_ms = now;
            p.push(CallEventKind::Unbridged, now);
        }
        self.forget_if_done(id);
        actions
    }

    fn forget_if_done(&mut self, id: &str) {
        let done = self.legs.get(id).is_some_and(|l| {
            l.snapshot.state == LegState::Ended
                && l.queue.is_empty()
                && !l.in_flight
                && l.held_end.is_none()
        });
        if done {
            self.legs.remove(id);
        }
    }

    /// The signalling side ended a leg.
    pub fn ended(&mut self, id: &str, cause: Cause, now: u64) -> Vec<Action> {
        self.end(id, cause, false, now)
    }

    fn owned(&self, tenant: &str, plugin: &str, id: &str, state: LegState) -> bool {
        self.legs.get(id).is_some_and(|l| {
            l.tenant == tenant
                && l.plugin == plugin
                && l.snapshot.state == state
                && l.handing_to.is_none()
        })
    }

    /// Starts the next queued play of a leg, if none is playing.
    fn next_play(&mut self, id: &str, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(l) = self.legs.get_mut(id) else {
            return actions;
        };
        let Some(media) = l.media else {
            return actions;
        };
        while l.playing.is_none() {
            let Some(mut p) = l.plays.pop_front() else {
                break;
            };
            match p.segments.pop_front() {
                Some(sound) => {
                    self.next_tag += 1;
                    p.tag = self.next_tag;
                    p.due_ms = now + length_ms(&sound) + PLAY_DONE_GRACE_MS;
                    actions.push(Action::Play {
                        media,
                        sound,
                        tag: p.tag,
                    });
                    l.playing = Some(p);
                }
                None => {
                    self.ops.remove(&p.op);
                    l.push(
                        CallEventKind::Played {
                            op: p.op,
                            end: OpEnd::Done,
                        },
                        now,
                    );
                }
            }
        }
        l.last_activity_ms = now;
        actions
    }

    /// Ends the running play of a leg (and, with `all`, the queued ones).
    fn stop_plays(&mut self, id: &str, end: OpEnd, all: bool, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(l) = self.legs.get_mut(id) else {
            return actions;
        };
        let mut stopped = Vec::new();
        if let Some(p) = l.playing.take() {
            if let Some(m) = l.media {
                actions.push(Action::StopPlay(m));
            }
            stopped.push(p.op);
        }
        if all {
            stopped.extend(l.plays.drain(..).map(|p| p.op));
        }
        for op in stopped {
            self.ops.remove(&op);
            l.push(CallEventKind::Played { op, end }, now);
        }
        actions
    }

    /// Applies one of `tenant`'s `plugin`'s commands (checked when it was
    /// issued; a leg that has ended since makes it a no-op).
    pub fn command(&mut self, tenant: &str, plugin: &str, cmd: Command, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let touch = |t: &mut Table, id: &str| {
            if let Some(l) = t.legs.get_mut(id) {
                l.last_activity_ms = now;
            }
        };
        match cmd {
            Command::Answer(id) => {
                if self.owned(tenant, plugin, &id, LegState::Offered)
                    && let Some(l) = self.legs.get_mut(&id)
                {
                    l.snapshot.state = LegState::Answered;
                    l.snapshot.answered_ms = Some(now);
                    l.deadline_ms = None;
                    l.last_activity_ms = now;
                    actions.push(Action::Answer(id));
                }
            }
            Command::Hangup(id, cause) => {
                if self.lookup(tenant, plugin, &id).is_some() {
                    actions = self.end(&id, cause, true, now);
                }
            }
            Command::Play {
                leg,
                op,
                items,
                barge_in,
            } => {
                if self.owned(tenant, plugin, &leg, LegState::Answered)
                    && let Some(l) = self.legs.get_mut(&leg)
                {
                    let queued = l.plays.len() + usize::from(l.playing.is_some());
                    if l.connected() || queued >= MAX_QUEUED_PLAYS {
                        l.push(
                            CallEventKind::Played {
                                op,
                                end: OpEnd::Stopped,
                            },
                            now,
                        );
                        return actions;
                    }
                    l.plays.push_back(Playing {
                        op: op.clone(),
                        segments: segments(&items),
                        barge_in,
                        tag: 0,
                        due_ms: 0,
                    });
                    self.ops.insert(op, leg.clone());
                    actions = self.next_play(&leg, now);
                }
            }
            Command::Collect { leg, op, opts } => {
                if self.owned(tenant, plugin, &leg, LegState::Answered)
                    && let Some(l) = self.legs.get_mut(&leg)
                {
                    if let Some((old, digits, end)) = l.finish_collect(OpEnd::Stopped) {
                        self.ops.remove(&old);
                        l.push(
                            CallEventKind::Collected {
                                op: old,
                                digits,
                                end,
                            },
                            now,
                        );
                    }
                    l.collect = Some(Collect {
                        op: op.clone(),
                        deadline_ms: now + u64::from(opts.first_ms),
                        opts,
                        digits: String::new(),
                    });
                    l.last_activity_ms = now;
                    let typed: Vec<char> = l.typeahead.chars().collect();
                    let mut used = 0;
                    let mut finished = None;
                    for key in typed.iter().copied() {
                        used += 1;
                        if let Some(done) = l.feed(key, now) {
                            finished = Some(done);
                            break;
                        }
                    }
                    l.typeahead = typed[used..].iter().collect();
                    if let Some((op, digits, end)) = finished {
                        l.push(CallEventKind::Collected { op, digits, end }, now);
                    } else {
                        self.ops.insert(op, leg.clone());
                    }
                }
            }
            Command::Stop(op) => {
                let Some(id) = self.ops.get(&op).cloned() else {
                    return actions;
                };
                if self.lookup(tenant, plugin, &id).is_none() {
                    return actions;
                }
                touch(self, &id);
                let Some(l) = self.legs.get_mut(&id) else {
                    return actions;
                };
                if l.playing.as_ref().is_some_and(|p| p.op == op) {
                    actions = self.stop_plays(&id, OpEnd::Stopped, false, now);
                    actions.extend(self.next_play(&id, now));
                } else if let Some(i) = l.plays.iter().position(|p| p.op == op) {
                    l.plays.remove(i);
                    self.ops.remove(&op);
                    l.push(
                        CallEventKind::Played {
                            op,
                            end: OpEnd::Stopped,
                        },
                        now,
                    );
                } else if l.collect.as_ref().is_some_and(|c| c.op == op)
                    && let Some((op, digits, end)) = l.finish_collect(OpEnd::Stopped)
                {
                    self.ops.remove(&op);
                    l.push(CallEventKind::Collected { op, digits, end }, now);
                } else if let Some(r) = l.recording.as_mut().filter(|r| r.op == op)
                    && r.ending.is_none()
                {
                    r.ending = Some(OpEnd::Stopped);
                    if let Some(media) = l.media {
                        actions.push(Action::StopRecording(media));
                    }
                }
            }
            Command::Record {
                leg,
                op,
                blob,
                opts,
                quota,
                incarnation,
            } => {
                let owned = self.owned(tenant, plugin, &leg, LegState::Answered);
                let Some(l) = self
                    .legs
                    .get_mut(&leg)
                    .filter(|l| l.tenant == tenant && l.plugin == plugin)
                else {
                    return actions;
                };
                let media = l.media.filter(|_| owned);
                if l.recording.is_some() || media.is_none() {
                    // Already recording, ended, handed over or without
                    // media: this one never starts (and says so).
                    l.push(
                        CallEventKind::Recorded {
                            op,
                            blob: String::new(),
                            ms: 0,
                            end: OpEnd::Stopped,
                        },
                        now,
                    );
                    return actions;
                }
                l.last_activity_ms = now;
                // A recording takes the keys: those pressed before it
                // answered the prompts before it, and none pressed during
                // it answers the next collect.
                l.typeahead.clear();
                l.recording = Some(Recording {
                    op: op.clone(),
                    blob: blob.clone(),
                    terminators: opts.terminators.clone(),
                    ending: None,
                });
                self.ops.insert(op.clone(), leg.clone());
                let Some(media) = media else {
                    return actions;
                };
                actions.push(Action::StartRecording(Box::new(StartRecording {
                    media,
                    leg,
                    op,
                    tenant: tenant.to_string(),
                    plugin: plugin.to_string(),
                    blob,
                    opts,
                    quota,
                    incarnation,
                })));
            }
            Command::HandOff { leg, number, to } => {
                let live = self
                    .lookup(tenant, plugin, &leg)
                    .is_some_and(|s| matches!(s.state, LegState::Offered | LegState::Answered));
                let free = self
                    .legs
                    .get(&leg)
                    .is_some_and(|l| l.handing_to.is_none() && l.recording.is_none());
                if !live || !free {
                    return actions;
                }
                // What this plugin had going on the leg ends first.
                actions = self.stop_plays(&leg, OpEnd::Stopped, true, now);
                actions.extend(self.unbridge(&leg, now));
                actions.extend(self.leave(&leg, now));
                if let Some(l) = self.legs.get_mut(&leg) {
                    if let Some((op, digits, end)) = l.finish_collect(OpEnd::Stopped) {
                        self.ops.remove(&op);
                        l.push(CallEventKind::Collected { op, digits, end }, now);
                    }
                    if l.transfer_due_ms.take().is_some() {
                        actions.push(Action::TransferFailed(leg.clone(), Cause::Unavailable));
                    }
                    l.typeahead.clear();
                    l.last_activity_ms = now;
                    l.handing_to = Some(to);
                    l.push(CallEventKind::HandedOff(number), now);
                }
            }
            Command::Pause(op, paused) => {
                let Some(id) = self.ops.get(&op).cloned() else {
                    return actions;
                };
                if self.lookup(tenant, plugin, &id).is_none() {
                    return actions;
                }
                if let Some(l) = self.legs.get_mut(&id)
                    && l.recording.as_ref().is_some_and(|r| r.op == op)
                    && let Some(media) = l.media
                {
                    l.last_activity_ms = now;
                    actions.push(Action::PauseRecording(media, paused));
                }
            }
            Command::Bridge(a, b) => {
                if a == b
                    || !self.owned(tenant, plugin, &a, LegState::Answered)
                    || !self.owned(tenant, plugin, &b, LegState::Answered)
                {
                    return actions;
                }
                for id in [&a, &b] {
                    actions.extend(self.unbridge(id, now));
                    actions.extend(self.leave(id, now));
                    actions.extend(self.stop_plays(id, OpEnd::Stopped, true, now));
                }
                let media = (
                    self.legs.get(&a).and_then(|l| l.media),
                    self.legs.get(&b).and_then(|l| l.media),
                );
                if let (Some(ma), Some(mb)) = media {
                    actions.push(Action::Bridge {
                        a,
                        b,
                        media: (ma, mb),
                    });
                }
            }
            Command::Unbridge(id) => {
                if self.lookup(tenant, plugin, &id).is_some() {
                    actions = self.unbridge(&id, now);
                }
            }
            Command::StopPlays(id) => {
                if self.lookup(tenant, plugin, &id).is_some() {
                    actions = self.stop_plays(&id, OpEnd::Stopped, true, now);
                }
            }
            Command::Join { leg, room } => {
                if !self.owned(tenant, plugin, &leg, LegState::Answered) {
                    return actions;
                }
                let here = self.legs.get(&leg).and_then(|l| l.snapshot.room.clone());
                if here.as_deref() == Some(room.as_str()) {
                    return actions;
                }
                actions.extend(self.unbridge(&leg, now));
                actions.extend(self.leave(&leg, now));
                actions.extend(self.stop_plays(&leg, OpEnd::Stopped, true, now));
                let key = (tenant.to_string(), plugin.to_string(), room.clone());
                let next = self.next_room + 1;
                let entry = self
                    .rooms
                    .entry(key)
                    .or_insert_with(|| (next, 0, crate::support::encoding::random_hex(8)));
                if entry.0 == next {
                    self.next_room = next;
                }
                entry.1 += 1;
                let number = entry.0;
                let meeting = format!("{room}~{}", entry.2);
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.first_room.get_or_insert(meeting);
                    l.snapshot.room = Some(room);
                    l.last_activity_ms = now;
                    if let Some(media) = l.media {
                        actions.push(Action::Join {
                            leg: leg.clone(),
                            media,
                            room: number,
                        });
                    }
                }
            }
            Command::Leave(id) => {
                if self.lookup(tenant, plugin, &id).is_some() {
                    actions = self.leave(&id, now);
                }
            }
            Command::SetState(id, state) => {
                if self.lookup(tenant, plugin, &id).is_some()
                    && let Some(l) = self.legs.get_mut(&id)
                {
                    l.client_state = state;
                }
            }
            Command::DeclineTransfer(id, cause) => {
                if self.lookup(tenant, plugin, &id).is_some()
                    && let Some(l) = self.legs.get_mut(&id)
                    && l.transfer_due_ms.take().is_some()
                {
                    l.last_activity_ms = now;
                    l.drop_transfer_events();
                    actions.push(Action::TransferFailed(id, cause));
                }
            }
            Command::Dial {
                leg,
                caller,
                to,
                ring_ms,
                state,
                account_code,
                user,
                device,
                max_outbound,
            } => {
                if self.legs.contains_key(&leg) {
                    return actions;
                }
                let over_cap = to.class != Class::Emergency
                    && max_outbound.is_some_and(|cap| self.outbound_live(tenant) >= cap as usize);
                let full = self.count(tenant) >= MAX_LEGS_PER_TENANT;
                let number = to.number.clone();
                let l = self.insert(
                    leg.clone(),
                    tenant,
                    plugin,
                    Direction::Outbound,
                    LegState::Ringing,
                    &caller,
                    &to.number,
                    now,
                );
                l.deadline_ms = Some(now + u64::from(ring_ms));
                l.client_state = state;
                l.account_code = account_code;
                let l_user = user.clone();
                l.placed_for = Account { user, device };
                if over_cap {
                    // Never placed: the leg ends at once, `restricted`.
                    let mut actions = self.end(&leg, Cause::Restricted, false, now);
                    actions.push(Action::RefusedOverCap {
                        tenant: tenant.to_string(),
                        plugin: plugin.to_string(),
                        to: number,
                        cap: max_outbound.unwrap_or(0),
                    });
                    return actions;
                }
                if full {
                    return self.end(&leg, Cause::Unavailable, false, now);
                }
                actions.push(Action::Originate(Outbound {
                    leg,
                    tenant: tenant.to_string(),
                    caller,
                    user: l_user,
                    to,
                }));
            }
        }
        actions
    }

    fn unbridge(&mut self, id: &str, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(partner) = self
            .legs
            .get_mut(id)
            .and_then(|l| l.snapshot.bridged_with.take())
        else {
            return actions;
        };
        for leg in [id, partner.as_str()] {
            if let Some(l) = self.legs.get_mut(leg) {
                l.snapshot.bridged_with = None;
                l.last_activity_ms = now;
                l.push(CallEventKind::Unbridged, now);
                if let Some(m) = l.media {
                    actions.push(Action::Unbridge(m));
                }
            }
        }
        actions
    }

    /// Takes a leg out of its room (`left`).
    fn leave(&mut self, id: &str, now: u64) -> Vec<Action> {
        let Some(l) = self.legs.get_mut(id) else {
            return Vec::new();
        };
        let Some(name) = l.snapshot.room.take() else {
            return Vec::new();
        };
        l.last_activity_ms = now;
        l.push(CallEventKind::Left(name.clone()), now);
        let media = l.media;
        let (tenant, plugin) = (l.tenant.clone(), l.plugin.clone());
        self.room_left(&tenant, &plugin, &name);
        media.map(Action::Leave).into_iter().collect()
    }

    fn room_left(&mut self, tenant: &str, plugin: &str, name: &str) {
        let key = (tenant.to_string(), plugin.to_string(), name.to_string());
        if let Some(entry) = self.rooms.get_mut(&key) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                self.rooms.remove(&key);
            }
        }
    }

    /// The media engine put (or failed to put) leg `id` into its room.
    pub fn join_done(&mut self, id: &str, ok: bool, now: u64) {
        let Some(l) = self.legs.get_mut(id) else {
            return;
        };
        let Some(name) = l.snapshot.room.clone() else {
            return;
        };
        if ok {
            l.push(CallEventKind::Joined(name), now);
        } else {
            l.snapshot.room = None;
            l.push(CallEventKind::Left(name.clone()), now);
            let (tenant, plugin) = (l.tenant.clone(), l.plugin.clone());
            self.room_left(&tenant, &plugin, &name);
        }
    }

    /// Members of `tenant`'s `plugin`'s room `name`.
    pub fn room_members(&self, tenant: &str, plugin: &str, name: &str) -> usize {
        let key = (tenant.to_string(), plugin.to_string(), name.to_string());
        self.rooms.get(&key).map_or(0, |r| r.1)
    }

    /// The media engine bridged (or failed to bridge) `a` and `b`.
    pub fn bridge_done(&mut self, a: &str, b: &str, ok: bool, now: u64) {
        let both_up = [a, b].iter().all(|id| {
            self.legs
                .get(*id)
                .is_some_and(|l| l.snapshot.state == LegState::Answered)
        });
        for (me, other) in [(a, b), (b, a)] {
            if let Some(l) = self.legs.get_mut(me) {
                l.last_activity_ms = now;
                if ok && both_up {
                    l.snapshot.bridged_with = Some(other.to_string());
                    l.partner.get_or_insert_with(|| other.to_string());
                    l.push(CallEventKind::Bridged(other.to_string()), now);
                } else if l.snapshot.state == LegState::Answered {
                    l.push(CallEventKind::Unbridged, now);
                }
            }
        }
    }

    /// The leg's phone asks to transfer its call to `to`: `transfer`
    /// goes to the plugin, which has [`TRANSFER_LIMIT_MS`] to end the leg
    /// or decline. False (nothing changes) unless the leg is answered,
    /// alive and has no transfer pending.
    pub fn transfer(&mut self, id: &str, to: &str, now: u64) -> bool {
        let Some(l) = self.legs.get_mut(id) else {
            return false;
        };
        if l.snapshot.state != LegState::Answered
            || l.dead
            || l.transfer_due_ms.is_some()
            || l.handing_to.is_some()
        {
            return false;
        }
        l.transfer_due_ms = Some(now + TRANSFER_LIMIT_MS);
        l.transfer_seen = false;
        l.last_activity_ms = now;
        l.push(CallEventKind::Transfer(to.to_string()), now);
        true
    }

    /// Whether a recording runs on leg `id`.
    pub fn recording_on(&self, id: &str) -> bool {
        self.legs.get(id).is_some_and(|l| l.recording.is_some())
    }

    /// Whether leg `id`'s phone asked for a transfer not yet settled.
    pub fn transfer_pending(&self, id: &str) -> bool {
        self.legs
            .get(id)
            .is_some_and(|l| l.transfer_due_ms.is_some())
    }

    /// The leg's phone asks to connect this leg's other party with its
    /// other call `other`'s (an attended transfer): `attended-transfer`
    /// goes to the plugin, settled as a transfer is. False unless both are
    /// answered legs of the same plugin, neither with a transfer pending.
    pub fn transfer_attended(&mut self, id: &str, other: &str, now: u64) -> bool {
        let owner = |l: &Leg| (l.tenant.clone(), l.plugin.clone());
        let ready = |l: &Leg| {
            l.snapshot.state == LegState::Answered
                && !l.dead
                && l.transfer_due_ms.is_none()
                && l.handing_to.is_none()
        };
        let (Some(a), Some(b)) = (self.legs.get(id), self.legs.get(other)) else {
            return false;
        };
        if id == other || owner(a) != owner(b) || !ready(a) || !ready(b) {
            return false;
        }
        let Some(l) = self.legs.get_mut(id) else {
            return false;
        };
        l.transfer_due_ms = Some(now + TRANSFER_LIMIT_MS);
        l.transfer_seen = false;
        l.last_activity_ms = now;
        l.push(CallEventKind::AttendedTransfer(other.to_string()), now);
        true
    }

    /// The far end put an answered leg on hold or took it off: `held` or
    /// `resumed` goes to the plugin when that changes.
    pub fn hold(&mut self, id: &str, on_hold: bool, now: u64) {
        if let Some(l) = self.legs.get_mut(id)
            && l.snapshot.state == LegState::Answered
            && l.snapshot.on_hold != on_hold
        {
            l.snapshot.on_hold = on_hold;
            l.last_activity_ms = now;
            let kind = if on_hold {
                CallEventKind::Held
            } else {
                CallEventKind::Resumed
            };
            l.push(kind, now);
        }
    }

    /// A key pressed on a leg's media.
    pub fn digit(&mut self, media: u64, key: char, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(id) = self.by_media.get(&media).cloned() else {
            return actions;
        };
        let barge = self
            .legs
            .get(&id)
            .and_then(|l| l.playing.as_ref())
            .is_some_and(|p| p.barge_in);
        if barge {
            actions = self.stop_plays(&id, OpEnd::Barged, true, now);
        }
        let Some(l) = self.legs.get_mut(&id) else {
            return actions;
        };
        l.last_activity_ms = now;
        if let Some(r) = l.recording.as_mut()
            && r.ending.is_none()
            && r.terminators.contains(key)
        {
            // A key that ends the recording is spent on it.
            r.ending = Some(OpEnd::Done);
            actions.push(Action::StopRecording(media));
            return actions;
        }
        if l.collect.is_some() {
            if let Some((op, digits, end)) = l.feed(key, now) {
                self.ops.remove(&op);
                l.push(CallEventKind::Collected { op, digits, end }, now);
            }
        } else {
            if l.recording.is_none() {
                if l.typeahead.len() >= MAX_TYPEAHEAD {
                    l.typeahead.remove(0);
                }
                l.typeahead.push(key);
            }
            l.push(CallEventKind::Digit(key), now);
        }
        actions
    }

    /// More of leg `id`'s recording `op` is stored: the plugin is told
    /// (while the recording runs; its end tells the rest).
    pub fn recording_chunk(
        &mut self,
        id: &str,
        op: &str,
        blob: String,
        offset: u64,
        len: u64,
        now: u64,
    ) {
        let Some(l) = self.legs.get_mut(id) else {
            return;
        };
        if l.recording.as_ref().is_some_and(|r| r.op == op) {
            l.push(
                CallEventKind::RecordingChunk {
                    op: op.to_string(),
                    blob,
                    offset,
                    len,
                },
                now,
            );
        }
    }

    /// Leg `id`'s recording `op` is written (`ms` of audio kept; `end` as
    /// the media engine saw it): `recorded` goes to the plugin, then the
    /// leg's held `ended`, if it ended meanwhile.
    pub fn recorded(&mut self, id: &str, op: &str, ms: u64, end: OpEnd, stored: bool, now: u64) {
        let Some(l) = self.legs.get_mut(id) else {
            return;
        };
        let Some(r) = l.recording.take_if(|r| r.op == op) else {
            return;
        };
        self.ops.remove(op);
        let end = match (r.ending, l.held_end) {
            (Some(e), _) => e,
            (None, Some(_)) => OpEnd::Hangup,
            (None, None) => end,
        };
        l.push(
            CallEventKind::Recorded {
                op: r.op,
                // Nothing stored (the quota refused it all): no blob.
                blob: if stored { r.blob } else { String::new() },
                ms,
                end,
            },
            now,
        );
        if let Some((cause, _)) = l.held_end.take() {
            l.push(CallEventKind::Ended(cause), now);
        }
        l.last_activity_ms = now;
        self.forget_if_done(id);
    }

    /// A tone of a play ended: the next segment, or the next play.
    pub fn play_done(&mut self, media: u64, tag: u64, now: u64) -> Vec<Action> {
        let Some(id) = self.by_media.get(&media).cloned() else {
            return Vec::new();
        };
        let Some(l) = self.legs.get_mut(&id) else {
            return Vec::new();
        };
        let Some(p) = l.playing.as_mut().filter(|p| p.tag == tag) else {
            return Vec::new();
        };
        if let Some(sound) = p.segments.pop_front() {
            self.next_tag += 1;
            p.tag = self.next_tag;
            p.due_ms = now + length_ms(&sound) + PLAY_DONE_GRACE_MS;
            return vec![Action::Play {
                media,
                sound,
                tag: p.tag,
            }];
        }
        if let Some(p) = l.playing.take() {
            self.ops.remove(&p.op);
            l.push(
                CallEventKind::Played {
                    op: p.op,
                    end: OpEnd::Done,
                },
                now,
            );
        }
        self.next_play(&id, now)
    }

    /// The watchdog: every wait that ran out.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut expired = Vec::new();
        let mut overdue = Vec::new();
        for (id, l) in &mut self.legs {
            if l.dead && l.snapshot.state != LegState::Ended {
                expired.push((id.clone(), Cause::Failed));
                continue;
            }
            if let (Some(p), Some(media)) = (&l.playing, l.media)
                && p.due_ms <= now
            {
                overdue.push((media, p.tag));
            }
            match l.snapshot.state {
                LegState::Offered | LegState::Ringing
                    if l.deadline_ms.is_some_and(|d| d <= now) =>
                {
                    expired.push((id.clone(), Cause::NoAnswer));
                }
                LegState::Answered => {
                    if l.transfer_due_ms.is_some_and(|d| d <= now) {
                        l.transfer_due_ms = None;
                        l.drop_transfer_events();
                        actions.push(Action::TransferFailed(id.clone(), Cause::Timeout));
                    }
                    if now.saturating_sub(l.snapshot.started_ms) >= MAX_LEG_MS
                        || (l.idle() && now.saturating_sub(l.last_activity_ms) >= IDLE_LIMIT_MS)
                    {
                        expired.push((id.clone(), Cause::Timeout));
                    } else if l.collect.as_ref().is_some_and(|c| c.deadline_ms <= now)
                        && let Some((op, digits, end)) = l.finish_collect(OpEnd::Timeout)
                    {
                        l.last_activity_ms = now;
                        self.ops.remove(&op);
                        l.push(CallEventKind::Collected { op, digits, end }, now);
                    }
                }
                _ => {}
            }
        }
        let stuck: Vec<(String, String)> = self
            .legs
            .iter()
            .filter(|(_, l)| l.held_end.is_some_and(|(_, until)| until <= now))
            .filter_map(|(id, l)| l.recording.as_ref().map(|r| (id.clone(), r.op.clone())))
            .collect();
        for (id, op) in stuck {
            // The recording was never reported written: the plugin hears
            // of it with what was kept unknown, and the leg's end.
            self.recorded(&id, &op, 0, OpEnd::Hangup, false, now);
        }
        for (media, tag) in overdue {
            actions.extend(self.play_done(media, tag, now));
        }
        for (id, cause) in expired {
            actions.extend(self.end(&id, cause, true, now));
        }
        actions
    }

    /// Events ready to deliver now: the first waiting event of each leg
    /// with none in flight. They are marked in flight.
    pub fn take_ready(&mut self, now: u64, max: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        for l in self.legs.values_mut() {
            if out.len() >= max {
                break;
            }
            if l.in_flight || l.dead || l.not_before_ms > now {
                continue;
            }
            let Some(front) = l.queue.front() else {
                continue;
            };
            let mut event = front.clone();
            event.state = l.client_state.clone();
            l.in_flight = true;
            // The plugin is handling the transfer from now on (its
            // `hangup` is committed before the delivery is reported).
            if matches!(
                event.kind,
                CallEventKind::Transfer(_) | CallEventKind::AttendedTransfer(_)
            ) && l.transfer_due_ms.is_some()
            {
                l.transfer_seen = true;
            }
            out.push(Delivery {
                tenant: l.tenant.clone(),
                plugin: l.plugin.clone(),
                event,
            });
        }
        out
    }

    /// Whether any leg has an event waiting that is not in flight.
    pub fn has_ready(&self) -> bool {
        self.legs
            .values()
            .any(|l| !l.in_flight && !l.dead && !l.queue.is_empty())
    }

    /// How the delivery of event `seq` of leg `id` went. After the last
    /// failed attempt the leg is ended (`failed`) and its events dropped.
    pub fn delivered(&mut self, id: &str, seq: u64, ok: bool, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(l) = self.legs.get_mut(id) else {
            return actions;
        };
        l.in_flight = false;
        let handed = l
            .queue
            .front()
            .is_some_and(|e| e.seq == seq && matches!(e.kind, CallEventKind::HandedOff(_)));
        if handed && l.snapshot.state != LegState::Ended {
            // The old plugin's last word, taken or not: the leg is the new
            // plugin's now, starting with its offer.
            l.queue.pop_front();
            l.attempts = 0;
            if let Some(HandingTo {
                plugin,
                args,
                diversion,
            }) = l.handing_to.take()
            {
                l.plugin = plugin;
                l.snapshot.diverted = diversion;
                l.client_state.clear();
                // Whatever queued behind it was the old plugin's business.
                l.queue.clear();
                l.push(CallEventKind::Offered(args), now);
            }
            return Vec::new();
        }
        if ok {
            if l.queue.front().is_some_and(|e| e.seq == seq) {
                l.queue.pop_front();
            }
            l.attempts = 0;
        } else {
            // A failed delivery issued nothing: the plugin has not taken it.
            if l.queue
                .front()
                .is_some_and(|e| matches!(e.kind, CallEventKind::Transfer(_)))
            {
                l.transfer_seen = false;
            }
            l.attempts += 1;
            if l.attempts >= MAX_DELIVERY_ATTEMPTS {
                tracing::warn!(tenant = %l.tenant, plugin = %l.plugin, leg = id, seq, "the plugin failed a call event {MAX_DELIVERY_ATTEMPTS} times; ending the leg");
                l.dead = true;
                l.queue.clear();
                actions = self.end(id, Cause::Failed, true, now);
            } else {
                l.not_before_ms = now + RETRY_BASE_MS * (1 << (l.attempts - 1));
            }
        }
        self.forget_if_done(id);
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::signalling::{Inbound, MediaOffer};

    const T: &str = "acme";
    const P: &str = "pbx";

    fn inbound() -> Inbound {
        Inbound {
            tenant: T.into(),
            plugin: P.into(),
            args: b"a".to_vec(),
            caller: "alice".into(),
            callee: "100".into(),
            user: None,
            device: None,
            media: MediaOffer {
                remote: "127.0.0.1:4000".parse().unwrap(),
                payload_type: 0,
                dtmf: Some(101),
                srtp: None,
            },
            trunk: None,
        }
    }

    /// Delivers every waiting event successfully, in order; returns the
    /// kinds of `id`'s.
    fn kinds(t: &mut Table, id: &str, now: u64) -> Vec<CallEventKind> {
        let mut out = Vec::new();
        loop {
            let ready = t.take_ready(now, 100);
            if ready.is_empty() {
                return out;
            }
            for d in ready {
                if d.event.leg == id {
                    out.push(d.event.kind.clone());
                }
                t.delivered(&d.event.leg, d.event.seq, true, now);
            }
        }
    }

    fn answered(t: &mut Table, id: &str, now: u64) {
        t.command(T, P, Command::Answer(id.into()), now);
    }

    #[test]
    fn a_transfer_is_pending_once_and_is_declined_or_times_out() {
        let mut t = Table::default();
        t.offer("a".into(), &inbound(), 1, 0);
        // Not before the leg is answered.
        assert!(!t.transfer("a", "201", 0));
        answered(&mut t, "a", 0);
        kinds(&mut t, "a", 0);
        assert!(t.transfer("a", "201", 10));
        assert!(t.transfer_pending("a"));
        // One at a time.
        assert!(!t.transfer("a", "202", 11));
        assert_eq!(
            kinds(&mut t, "a", 12),
            vec![CallEventKind::Transfer("201".into())]
        );
        // Another plugin cannot decline it; the owner can, once.
        assert!(
            t.command(
                T,
                "other",
                Command::DeclineTransfer("a".into(), Cause::Busy),
                13
            )
            .is_empty()
        );
        let acts = t.command(T, P, Command::DeclineTransfer("a".into(), Cause::Busy), 14);
        assert!(
            matches!(&acts[..], [Action::TransferFailed(l, Cause::Busy)] if l == "a"),
            "{acts:?}"
        );
        assert!(
            t.command(T, P, Command::DeclineTransfer("a".into(), Cause::Busy), 15)
                .is_empty()
        );
        // Unsettled past the limit: the phone hears a timeout; the leg lives.
        assert!(t.transfer("a", "203", 100));
        assert!(
            t.tick(100 + TRANSFER_LIMIT_MS - 1)
                .iter()
                .all(|a| !matches!(a, Action::TransferFailed(..)))
        );
        let acts = t.tick(100 + TRANSFER_LIMIT_MS);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::TransferFailed(l, Cause::Timeout) if l == "a")),
            "{acts:?}"
        );
        assert!(!t.transfer_pending("a") && t.is_answered("a"));
        // Hold and resume: events only on a change, the snapshot says so.
        t.hold("a", true, 200);
        t.hold("a", true, 201);
        assert_eq!(t.lookup(T, P, "a").map(|s| s.on_hold), Some(true));
        t.hold("a", false, 202);
        let got = kinds(&mut t, "a", 203);
        assert_eq!(
            got.iter()
                .filter(|k| matches!(k, CallEventKind::Held | CallEventKind::Resumed))
                .count(),
            2,
            "{got:?}"
        );
    }

    #[test]
    fn ending_a_leg_tells_the_phone_its_transfer_went_through_only_if_the_plugin_took_it() {
        let failed = |acts: &[Action]| {
            acts.iter().find_map(|a| match a {
                Action::TransferFailed(_, c) => Some(*c),
                _ => None,
            })
        };
        let hang_up = |t: &mut Table, id: &str, cause: Cause| {
            t.command(T, P, Command::Hangup(id.into(), cause), 50)
        };
        let mut t = Table::default();
        let legs = ["seen", "unseen", "busy", "declined"];
        for (i, id) in legs.iter().enumerate() {
            t.offer(id.to_string(), &inbound(), i as u64 + 1, 0);
            answered(&mut t, id, 0);
        }
        kinds(&mut t, "seen", 0);
        for id in legs {
            assert!(t.transfer(id, "201", 10));
        }
        // Taken by the plugin (delivered one by one), then ended
        // normally: it went through.
        for d in t.take_ready(11, 100) {
            let ok = d.event.leg == "seen" || d.event.leg == "busy";
            t.delivered(&d.event.leg, d.event.seq, ok, 11);
        }
        let acts = hang_up(&mut t, "seen", Cause::Normal);
        assert_eq!(failed(&acts), None, "{acts:?}");
        // Ended before the plugin took it: it failed, before the BYE.
        let acts = hang_up(&mut t, "unseen", Cause::Normal);
        assert_eq!(failed(&acts), Some(Cause::Unavailable), "{acts:?}");
        let at = |f: fn(&Action) -> bool| acts.iter().position(f).unwrap();
        assert!(
            at(|a| matches!(a, Action::TransferFailed(..))) < at(|a| matches!(a, Action::End(..)))
        );
        // Taken, but ended for another cause: that cause.
        let acts = hang_up(&mut t, "busy", Cause::Busy);
        assert_eq!(failed(&acts), Some(Cause::Busy), "{acts:?}");
        // Declined before the plugin took the event: the event is dropped.
        let acts = t.command(
            T,
            P,
            Command::DeclineTransfer("declined".into(), Cause::Rejected),
            13,
        );
        assert_eq!(failed(&acts), Some(Cause::Rejected));
        assert!(!kinds(&mut t, "declined", 14).contains(&CallEventKind::Transfer("201".into())));
    }

    #[test]
    fn a_recording_ends_on_its_key_and_holds_back_the_legs_end_until_written() {
        use crate::call::legs::RecordOpts;
        let quota = Quota {
            tenant_bytes: 1 << 30,
            owner_bytes: 1 << 30,
        };
        let record = |leg: &str, op: &str| Command::Record {
            leg: leg.into(),
            op: op.into(),
            blob: format!("blob-{op}"),
            opts: RecordOpts {
                owner: None,
                class: "recording".into(),
                max_ms: 60_000,
                silence_ms: 0,
                terminators: "#".into(),
                chunk_ms: 0,
            },
            quota,
            incarnation: "i1".into(),
        };
        let mut t = Table::default();
        t.offer("a".into(), &inbound(), 7, 0);
        answered(&mut t, "a", 0);
        kinds(&mut t, "a", 0);
        let acts = t.command(T, P, record("a", "r1"), 1);
        assert!(
            matches!(&acts[..], [Action::StartRecording(s)] if s.media == 7 && s.blob == "blob-r1"),
            "{acts:?}"
        );
        assert!(t.recording_on("a"));
        // Another plugin cannot pause it; a second recording never starts.
        assert!(
            t.command(T, "other", Command::Pause("r1".into(), true), 2)
                .is_empty()
        );
        let acts = t.command(T, P, Command::Pause("r1".into(), true), 2);
        assert!(
            matches!(&acts[..], [Action::PauseRecording(7, true)]),
            "{acts:?}"
        );
        assert!(t.command(T, P, record("a", "r2"), 3).is_empty());
        // `#` ends it (the key is spent on it, not a digit event).
        let acts = t.digit(7, '#', 4);
        assert!(matches!(&acts[..], [Action::StopRecording(7)]), "{acts:?}");
        t.recorded("a", "r1", 1234, OpEnd::Stopped, true, 5);
        let got = kinds(&mut t, "a", 6);
        assert!(
            got.contains(&CallEventKind::Recorded {
                op: "r2".into(),
                blob: String::new(),
                ms: 0,
                end: OpEnd::Stopped,
            }),
            "{got:?}"
        );
        assert!(
            got.contains(&CallEventKind::Recorded {
                op: "r1".into(),
                blob: "blob-r1".into(),
                ms: 1234,
                end: OpEnd::Done,
            }),
            "the table's reason wins: {got:?}"
        );
        assert!(!got.contains(&CallEventKind::Digit('#')));
        // A recording takes the keys: one pressed before it (that skipped
        // a greeting) and one pressed during it answer no later collect.
        t.digit(7, '*', 6);
        t.command(T, P, record("a", "r4"), 7);
        t.digit(7, '5', 7);
        t.digit(7, '#', 8);
        t.recorded("a", "r4", 900, OpEnd::Done, true, 8);
        let collect = Command::Collect {
            leg: "a".into(),
            op: "c".into(),
            opts: CollectOpts {
                max_digits: 1,
                terminators: String::new(),
                first_ms: 1000,
                between_ms: 1000,
            },
        };
        t.command(T, P, collect, 9);
        t.digit(7, '1', 9);
        let got = kinds(&mut t, "a", 9);
        assert!(got.contains(&CallEventKind::Digit('5')), "{got:?}");
        assert!(
            got.contains(&CallEventKind::Collected {
                op: "c".into(),
                digits: "1".into(),
                end: OpEnd::Done,
            }),
            "{got:?}"
        );
        // Ended while recording: `ended` waits for `recorded`.
        t.command(T, P, record("a", "r3"), 10);
        t.ended("a", Cause::Normal, 11);
        assert_eq!(kinds(&mut t, "a", 12), Vec::<CallEventKind>::new());
        t.recorded("a", "r3", 500, OpEnd::Hangup, true, 13);
        let got = kinds(&mut t, "a", 14);
        assert!(
            matches!(
                &got[..],
                [
                    CallEventKind::Recorded {
                        end: OpEnd::Hangup,
                        ..
                    },
                    CallEventKind::Ended(Cause::Normal)
                ]
            ),
            "{got:?}"
        );
        assert!(
            t.lookup(T, P, "a").is_none(),
            "the leg is gone once all is delivered"
        );
        // A recording never reported written: both after the limit.
        t.offer("b".into(), &inbound(), 8, 100);
        answered(&mut t, "b", 100);
        t.command(T, P, record("b", "r4"), 101);
        t.ended("b", Cause::Busy, 102);
        t.tick(102 + RECORD_FLUSH_LIMIT_MS - 1);
        assert!(
            !kinds(&mut t, "b", 103)
                .iter()
                .any(|k| matches!(k, CallEventKind::Ended(_)))
        );
        t.tick(102 + RECORD_FLUSH_LIMIT_MS);
        let got = kinds(&mut t, "b", 104);
        assert!(
            got.ends_with(&[CallEventKind::Ended(Cause::Busy)]),
            "{got:?}"
        );
    }

    #[test]
    fn a_handed_off_leg_is_the_new_plugins_from_its_offer() {
        let bob = Diversion {
            user: "bob".into(),
            reason: crate::call::legs::DivertReason::Busy,
        };
        let hand = |leg: &str| Command::HandOff {
            leg: leg.into(),
            number: "800".into(),
            to: HandingTo {
                plugin: "vm".into(),
                args: b"box-1".to_vec(),
                diversion: Some(bob.clone()),
            },
        };
        let mut t = Table::default();
        t.offer("a".into(), &inbound(), 1, 0);
        t.offer("b".into(), &inbound(), 2, 0);
        answered(&mut t, "a", 0);
        answered(&mut t, "b", 0);
        t.command(T, P, Command::Bridge("a".into(), "b".into()), 1);
        t.bridge_done("a", "b", true, 1);
        kinds(&mut t, "a", 1);
        // Another plugin cannot hand it off.
        assert!(t.command(T, "other", hand("a"), 2).is_empty());
        let acts = t.command(T, P, hand("a"), 2);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Unbridge(1))),
            "{acts:?}"
        );
        // A second hand-off meanwhile changes nothing.
        t.command(T, P, hand("a"), 3);
        t.digit(1, '5', 3);
        // The old plugin hears unbridged, then handed-off, and no more.
        let mut old = Vec::new();
        let mut new = Vec::new();
        for _ in 0..4 {
            for d in t.take_ready(4, 100) {
                if d.event.leg == "a" {
                    if d.plugin == P {
                        old.push(d.event.kind.clone());
                    } else {
                        new.push((d.plugin.clone(), d.event.kind.clone()));
                    }
                }
                t.delivered(&d.event.leg, d.event.seq, true, 4);
            }
        }
        assert_eq!(
            old.last(),
            Some(&CallEventKind::HandedOff("800".into())),
            "{old:?}"
        );
        assert_eq!(
            old.iter()
                .filter(|k| matches!(k, CallEventKind::HandedOff(_)))
                .count(),
            1
        );
        // The new plugin starts with its offer; the key pressed during the
        // hand-off was the old plugin's business.
        assert_eq!(
            new,
            [("vm".to_string(), CallEventKind::Offered(b"box-1".to_vec()))]
        );
        assert!(t.lookup(T, P, "a").is_none());
        assert_eq!(
            t.lookup(T, "vm", "a").map(|s| s.state),
            Some(LegState::Answered)
        );
        // The new plugin sees whose call it was.
        assert_eq!(
            t.lookup(T, "vm", "a").and_then(|s| s.diverted),
            Some(bob.clone())
        );
        // Its partner was unbridged and stays the old plugin's.
        assert_eq!(t.lookup(T, P, "b").and_then(|s| s.bridged_with), None);
        // A leg that ends before its handed-off is delivered stays put.
        t.offer("c".into(), &inbound(), 3, 10);
        t.command(T, P, hand("c"), 11);
        t.ended("c", Cause::Normal, 12);
        let got = kinds(&mut t, "c", 13);
        assert!(
            got.ends_with(&[
                CallEventKind::HandedOff("800".into()),
                CallEventKind::Ended(Cause::Normal)
            ]),
            "{got:?}"
        );
    }

    #[test]
    fn a_leg_is_found_only_by_its_owner() {
        let mut t = Table::default();
        t.offer("l1".into(), &inbound(), 1, 0);
        assert!(t.lookup(T, P, "l1").is_some());
        assert!(t.lookup(T, "other", "l1").is_none());
        assert!(t.lookup("globex", P, "l1").is_none());
        // Another owner's commands do nothing.
        assert!(
            t.command("globex", P, Command::Hangup("l1".into(), Cause::Normal), 1)
                .is_empty()
        );
        assert!(
            t.command(T, "other", Command::Answer("l1".into()), 1)
                .is_empty()
        );
        assert_eq!(t.lookup(T, P, "l1").unwrap().state, LegState::Offered);
    }

    #[test]
    fn events_go_one_at_a_time_in_order_and_a_failure_is_retried_then_ends_the_leg() {
        let mut t = Table::default();
        t.offer("l1".into(), &inbound(), 1, 0);
        answered(&mut t, "l1", 0);
        t.digit(1, '5', 0);
        t.digit(1, '6', 0);
        let first = t.take_ready(0, 10);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].event.seq, 1);
        // Nothing more of that leg while one is in flight.
        assert!(t.take_ready(0, 10).is_empty());
        // A failure: the same event again, after the backoff.
        t.delivered("l1", 1, false, 0);
        assert!(t.take_ready(RETRY_BASE_MS - 1, 10).is_empty());
        let again = t.take_ready(RETRY_BASE_MS, 10);
        assert_eq!(again[0].event.seq, 1);
        t.delivered("l1", 1, true, RETRY_BASE_MS);
        let next = t.take_ready(RETRY_BASE_MS, 10);
        assert_eq!(next[0].event.kind, CallEventKind::Digit('5'));
        assert_eq!(next[0].event.seq, 2);
        // Three failures in a row: the leg ends `failed`, told to signalling.
        let mut now = RETRY_BASE_MS;
        let mut actions = t.delivered("l1", 2, false, now);
        for _ in 1..MAX_DELIVERY_ATTEMPTS {
            now += 10_000;
            let d = t.take_ready(now, 10);
            assert_eq!(d[0].event.seq, 2);
            actions = t.delivered("l1", 2, false, now);
        }
        assert!(
            matches!(
                actions[..],
                [Action::Record { ref record, .. }, Action::Close(1), Action::End(ref l, Cause::Failed)]
                    if l == "l1" && record.cause == "failed"
            ),
            "{actions:?}"
        );
        assert!(t.is_empty(), "the failed leg is gone, its events dropped");
    }

    #[test]
    fn the_state_kept_is_handed_back_with_each_event() {
        let mut t = Table::default();
        t.offer("l1".into(), &inbound(), 1, 0);
        t.command(T, P, Command::SetState("l1".into(), b"menu-2".to_vec()), 0);
        let d = t.take_ready(0, 10);
        assert_eq!(d[0].event.state, b"menu-2");
        assert_eq!(d[0].event.kind, CallEventKind::Offered(b"a".to_vec()));
    }

    #[test]
    fn the_watchdog_ends_unanswered_and_idle_legs_and_times_out_collects() {
        let mut t = Table::default();
        t.offer("offered".into(), &inbound(), 1, 0);
        t.offer("idle".into(), &inbound(), 2, 0);
        answered(&mut t, "idle", 0);
        t.offer("collecting".into(), &inbound(), 3, 0);
        answered(&mut t, "collecting", 0);
        let opts = CollectOpts {
            max_digits: 4,
            terminators: "#".into(),
            first_ms: 5000,
            between_ms: 1000,
        };
        t.command(
            T,
            P,
            Command::Collect {
                leg: "collecting".into(),
                op: "c1".into(),
                opts,
            },
            0,
        );
        t.digit(3, '7', 4000);
        assert!(t.tick(4999).is_empty(), "the digit reset the wait");
        t.tick(5000);
        assert_eq!(
            kinds(&mut t, "collecting", 5000),
            [
                CallEventKind::Offered(b"a".to_vec()),
                CallEventKind::Collected {
                    op: "c1".into(),
                    digits: "7".into(),
                    end: OpEnd::Timeout
                }
            ]
        );
        let idle_end = t.tick(IDLE_LIMIT_MS);
        assert!(
            idle_end
                .iter()
                .any(|a| matches!(a, Action::End(l, Cause::Timeout) if l == "idle"))
        );
        let offer_end = t.tick(OFFER_LIMIT_MS);
        assert!(
            offer_end
                .iter()
                .any(|a| matches!(a, Action::End(l, Cause::NoAnswer) if l == "offered"))
        );
        assert_eq!(
            kinds(&mut t, "offered", OFFER_LIMIT_MS).last(),
            Some(&CallEventKind::Ended(Cause::NoAnswer))
        );
    }

    /// A play of `ms` of ringback on `leg`.
    fn ringback(leg: &str, op: &str, ms: u32, barge_in: bool) -> Command {
        Command::Play {
            leg: leg.into(),
            op: op.into(),
            items: vec![Prompt::Tone {
                tone: ToneName::Ringback,
                ms,
            }],
            barge_in,
        }
    }

    #[test]
    fn recording_chunks_are_told_only_for_the_running_recording() {
        let mut t = Table::default();
        t.offer("l".into(), &inbound(), 1, 0);
        answered(&mut t, "l", 0);
        let record = Command::Record {
            leg: "l".into(),
            op: "r1".into(),
            blob: "b1".into(),
            opts: crate::call::legs::RecordOpts {
                owner: None,
                class: "recording".into(),
                max_ms: 60_000,
                silence_ms: 0,
                terminators: String::new(),
                chunk_ms: 1000,
            },
            quota: Quota {
                tenant_bytes: 1 << 30,
                owner_bytes: 1 << 30,
            },
            incarnation: String::new(),
        };
        t.command(T, P, record, 0);
        t.recording_chunk("l", "r1", "b1".into(), 44, 65_492, 10);
        // Another operation's, or an unknown leg's, are nobody's.
        t.recording_chunk("l", "r0", "b0".into(), 44, 10, 11);
        t.recording_chunk("x", "r1", "b1".into(), 44, 10, 12);
        // A second one while the first still waits: merged into it.
        t.recording_chunk("l", "r1", "b1".into(), 65_536, 65_536, 13);
        t.recorded("l", "r1", 4_000, OpEnd::Done, true, 20);
        // After the end, nothing more.
        t.recording_chunk("l", "r1", "b1".into(), 65_536, 10, 21);
        let got = kinds(&mut t, "l", 30);
        let chunks: Vec<_> = got
            .iter()
            .filter(|k| matches!(k, CallEventKind::RecordingChunk { .. }))
            .collect();
        assert_eq!(
            chunks,
            [&CallEventKind::RecordingChunk {
                op: "r1".into(),
                blob: "b1".into(),
                offset: 44,
                len: 65_492 + 65_536
            }],
            "{got:?}"
        );
        let last = got
            .iter()
            .rposition(|k| matches!(k, CallEventKind::Recorded { .. }));
        let chunk_at = got
            .iter()
            .position(|k| matches!(k, CallEventKind::RecordingChunk { .. }));
        assert!(chunk_at < last, "the chunk comes before the end: {got:?}");
    }

    #[test]
    fn stop_plays_ends_the_playing_prompt_and_the_queued_ones() {
        let mut t = Table::default();
        t.offer("l".into(), &inbound(), 1, 0);
        answered(&mut t, "l", 0);
        let play = |op: &str| ringback("l", op, 60_000, false);
        t.command(T, P, play("p1"), 0);
        t.command(T, P, play("p2"), 0);
        // Another plugin's leg id is nobody's business here.
        assert!(
            t.command(T, "other", Command::StopPlays("l".into()), 5)
                .is_empty()
        );
        let acts = t.command(T, P, Command::StopPlays("l".into()), 10);
        assert!(matches!(acts[..], [Action::StopPlay(1)]), "{acts:?}");
        let got = kinds(&mut t, "l", 10);
        for op in ["p1", "p2"] {
            assert!(
                got.contains(&CallEventKind::Played {
                    op: op.into(),
                    end: OpEnd::Stopped
                }),
                "{op}: {got:?}"
            );
        }
        // Nothing is left to start: a new play starts at once.
        let next = t.command(T, P, play("p3"), 20);
        assert!(
            matches!(next[..], [Action::Play { media: 1, .. }]),
            "{next:?}"
        );
    }

    #[test]
    fn keys_before_a_collect_are_type_ahead_and_barge_in_stops_the_prompts() {
        let mut t = Table::default();
        t.offer("l".into(), &inbound(), 1, 0);
        answered(&mut t, "l", 0);
        let play = |op: &str| ringback("l", op, 1000, true);
        let started = t.command(T, P, play("p1"), 0);
        assert!(matches!(started[..], [Action::Play { media: 1, .. }]));
        assert!(t.command(T, P, play("p2"), 0).is_empty(), "queued");
        let stop = t.digit(1, '4', 10);
        assert!(matches!(stop[..], [Action::StopPlay(1)]));
        t.digit(1, '2', 20);
        t.command(
            T,
            P,
            Command::Collect {
                leg: "l".into(),
                op: "c".into(),
                opts: CollectOpts {
                    max_digits: 2,
                    terminators: String::new(),
                    first_ms: 1000,
                    between_ms: 1000,
                },
            },
            30,
        );
        let got = kinds(&mut t, "l", 30);
        assert_eq!(
            got[1..],
            [
                CallEventKind::Played {
                    op: "p1".into(),
                    end: OpEnd::Barged
                },
                CallEventKind::Played {
                    op: "p2".into(),
                    end: OpEnd::Barged
                },
                CallEventKind::Digit('4'),
                CallEventKind::Digit('2'),
                CallEventKind::Collected {
                    op: "c".into(),
                    digits: "42".into(),
                    end: OpEnd::Done
                },
            ]
        );
    }

    #[test]
    fn a_stale_play_done_is_ignored_and_segments_play_in_order() {
        let mut t = Table::default();
        t.offer("l".into(), &inbound(), 1, 0);
        answered(&mut t, "l", 0);
        let a = t.command(
            T,
            P,
            Command::Play {
                leg: "l".into(),
                op: "p".into(),
                items: vec![Prompt::Digits("12".into())],
                barge_in: false,
            },
            0,
        );
        let Action::Play { tag, .. } = a[0] else {
            panic!("{a:?}")
        };
        assert!(
            t.play_done(1, tag + 100, 1).is_empty(),
            "not the tag playing"
        );
        // Key, gap, key, gap: four segments, then `played`.
        let mut tag = tag;
        for _ in 0..3 {
            let next = t.play_done(1, tag, 1);
            let [Action::Play { tag: n, .. }] = next[..] else {
                panic!("{next:?}")
            };
            tag = n;
        }
        assert!(t.play_done(1, tag, 1).is_empty());
        assert_eq!(
            kinds(&mut t, "l", 1).last(),
            Some(&CallEventKind::Played {
                op: "p".into(),
                end: OpEnd::Done
            })
        );
    }

    #[test]
    fn a_key_masher_cannot_grow_a_legs_queue() {
        let mut t = Table::default();
        t.offer("l".into(), &inbound(), 1, 0);
        answered(&mut t, "l", 0);
        for i in 0..10_000u32 {
            t.digit(1, char::from(b'0' + (i % 10) as u8), u64::from(i));
        }
        let got = kinds(&mut t, "l", 20_000);
        assert!(got.len() <= MAX_QUEUED_EVENTS, "{}", got.len());
        assert_eq!(got[0], CallEventKind::Offered(b"a".to_vec()));
        // The newest keys are kept.
        assert_eq!(got.last(), Some(&CallEventKind::Digit('9')));
    }

    #[test]
    fn ending_a_bridged_leg_unbridges_its_partner() {
        let mut t = Table::default();
        t.offer("a".into(), &inbound(), 1, 0);
        t.offer("b".into(), &inbound(), 2, 0);
        answered(&mut t, "a", 0);
        answered(&mut t, "b", 0);
        let acts = t.command(T, P, Command::Bridge("a".into(), "b".into()), 0);
        assert!(matches!(
            acts.last(),
            Some(Action::Bridge { media: (1, 2), .. })
        ));
        t.bridge_done("a", "b", true, 0);
        assert_eq!(
            t.lookup(T, P, "b").unwrap().bridged_with.as_deref(),
            Some("a")
        );
        t.ended("a", Cause::Normal, 1);
        assert_eq!(t.lookup(T, P, "b").unwrap().bridged_with, None);
        assert_eq!(
            kinds(&mut t, "b", 1)[1..],
            [CallEventKind::Bridged("a".into()), CallEventKind::Unbridged]
        );
        // A failed bridge says `unbridged` on both.
        t.offer("c".into(), &inbound(), 3, 0);
        answered(&mut t, "c", 0);
        t.bridge_done("b", "c", false, 2);
        assert_eq!(kinds(&mut t, "c", 2)[1..], [CallEventKind::Unbridged]);
    }

    #[test]
    fn rooms_are_counted_left_on_failure_and_forgotten_when_empty() {
        let mut t = Table::default();
        for (id, media) in [("a", 1), ("b", 2)] {
            t.offer(id.into(), &inbound(), media, 0);
            answered(&mut t, id, 0);
        }
        let join = |t: &mut Table, id: &str| {
            t.command(
                T,
                P,
                Command::Join {
                    leg: id.into(),
                    room: "r".into(),
                },
                1,
            )
        };
        let acts = join(&mut t, "a");
        assert!(matches!(acts[..], [Action::Join { media: 1, .. }]));
        t.join_done("a", true, 1);
        join(&mut t, "b");
        t.join_done("b", false, 1);
        assert_eq!(t.room_members(T, P, "r"), 1, "b could not join");
        // No play talks over a room.
        t.command(
            T,
            P,
            Command::Play {
                leg: "a".into(),
                op: "p".into(),
                items: vec![Prompt::Digits("1".into())],
                barge_in: false,
            },
            2,
        );
        let mut all = Vec::new();
        loop {
            let ready = t.take_ready(2, 100);
            if ready.is_empty() {
                break;
            }
            for d in ready {
                t.delivered(&d.event.leg, d.event.seq, true, 2);
                all.push((d.event.leg, d.event.kind));
            }
        }
        let of = |id: &str| -> Vec<CallEventKind> {
            all.iter()
                .filter(|(l, _)| l == id)
                .map(|(_, k)| k.clone())
                .collect()
        };
        assert_eq!(
            of("a")[1..],
            [
                CallEventKind::Joined("r".into()),
                CallEventKind::Played {
                    op: "p".into(),
                    end: OpEnd::Stopped
                }
            ]
        );
        assert_eq!(of("b").last(), Some(&CallEventKind::Left("r".into())));
        t.ended("a", Cause::Normal, 3);
        assert_eq!(t.room_members(T, P, "r"), 0);
        assert!(t.rooms.is_empty(), "the empty room is forgotten");
    }

    #[test]
    fn a_leg_knows_whom_it_is_for_and_only_its_owner_may_ask() {
        let mut t = Table::default();
        let phone = |user: &str, device: &str| Account {
            user: Some(user.into()),
            device: Some(device.into()),
        };
        // An inbound leg from a phone: its user and device.
        let mut from_phone = inbound();
        from_phone.user = Some("ann".into());
        from_phone.device = Some("ann-desk".into());
        t.offer("a".into(), &from_phone, 1, 0);
        assert_eq!(
            t.accounts(T, P, "a"),
            Some((phone("ann", "ann-desk"), None))
        );
        // Another plugin or tenant learns nothing.
        assert_eq!(t.accounts(T, "other", "a"), None);
        assert_eq!(t.accounts("other", P, "a"), None);
        // A dialled leg: whom it was placed for, then the phone that
        // answered it (only an outbound leg takes one).
        let dial = Command::Dial {
            leg: "d".into(),
            caller: String::new(),
            to: Dialled {
                class: Class::Internal,
                number: "user:bob".into(),
            },
            ring_ms: 5000,
            state: Vec::new(),
            account_code: None,
            user: Some("ann".into()),
            device: Some("ann-desk".into()),
            max_outbound: None,
        };
        t.command(T, P, dial, 0);
        assert!(t.answered("d", 2, 0, false, 0));
        t.answered_on("d", phone("bob", "bob-desk"));
        t.answered_on("a", phone("eve", "eve-desk"));
        assert_eq!(
            t.accounts(T, P, "d"),
            Some((phone("bob", "bob-desk"), Some(phone("ann", "ann-desk"))))
        );
        assert_eq!(
            t.accounts(T, P, "a"),
            Some((phone("ann", "ann-desk"), None))
        );
    }

    #[test]
    fn the_outbound_cap_holds_when_it_is_carried_out_and_spares_emergency() {
        let mut t = Table::default();
        let dial = |leg: &str, class: Class| Command::Dial {
            leg: leg.into(),
            caller: String::new(),
            to: Dialled {
                class,
                number: "+12025550123".into(),
            },
            ring_ms: 5000,
            state: Vec::new(),
            account_code: None,
            user: None,
            device: None,
            max_outbound: Some(1),
        };
        let first = t.command(T, P, dial("d1", Class::National), 0);
        assert!(matches!(first[..], [Action::Originate(_)]));
        // Passed the issue-time check with the first, but is over the cap
        // when carried out: never placed, ended `restricted`.
        let second = t.command(T, P, dial("d2", Class::National), 0);
        assert!(
            second.iter().all(|a| !matches!(a, Action::Originate(_))),
            "{second:?}"
        );
        assert!(
            second
                .iter()
                .any(|a| matches!(a, Action::RefusedOverCap { cap: 1, .. })),
            "audited and counted like a refusal when issued: {second:?}"
        );
        assert_eq!(
            kinds(&mut t, "d2", 0),
            [CallEventKind::Ended(Cause::Restricted)]
        );
        let sos = t.command(T, P, dial("d3", Class::Emergency), 0);
        assert!(matches!(sos[..], [Action::Originate(_)]));
        assert_eq!(t.outbound_live(T), 2);
    }

    #[test]
    fn a_plugin_cannot_pile_up_plays_or_events_and_a_lost_play_done_is_not_waited_for() {
        let mut t = Table::default();
        t.offer("l".into(), &inbound(), 1, 0);
        answered(&mut t, "l", 0);
        let play = |op: String| Command::Play {
            leg: "l".into(),
            op,
            items: vec![Prompt::Tone {
                tone: ToneName::Busy,
                ms: 1000,
            }],
            barge_in: false,
        };
        for i in 0..MAX_QUEUED_PLAYS + 3 {
            t.command(T, P, play(format!("p{i}")), 0);
        }
        let stopped = kinds(&mut t, "l", 0)
            .iter()
            .filter(|k| {
                matches!(
                    k,
                    CallEventKind::Played {
                        end: OpEnd::Stopped,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(stopped, 3, "plays beyond the queue answer `stopped`");
        // The engine's PlayDone for p0 never comes: after its length and
        // the grace, the watchdog moves on to p1.
        assert!(t.tick(1000 + PLAY_DONE_GRACE_MS - 1).is_empty());
        let next = t.tick(1000 + PLAY_DONE_GRACE_MS);
        assert!(matches!(next[..], [Action::Play { .. }]), "{next:?}");
        assert_eq!(
            kinds(&mut t, "l", 3100),
            [CallEventKind::Played {
                op: "p0".into(),
                end: OpEnd::Done
            }]
        );
        // Events nobody takes pile up to the hard limit; then the leg is
        // ended `failed`.
        for i in 0..MAX_EVENTS_HARD as u64 {
            t.command(
                T,
                P,
                Command::Join {
                    leg: "l".into(),
                    room: format!("r{}", i % 2),
                },
                4000 + i,
            );
            t.join_done("l", true, 4000 + i);
        }
        let acts = t.tick(10_000);
        assert!(
            acts.iter()
                .any(|a| matches!(a, Action::End(l, Cause::Failed) if l == "l")),
            "{acts:?}"
        );
    }
}
