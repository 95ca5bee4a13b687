//! Call recording under the tenant's policy (SPEC R1-R5 for calls; the
//! policy is `policy.rs`). A call is recorded on its caller's leg, which
//! hears the other party: the host mixes both sides into a staging blob
//! of this plugin as the call goes, and drops the audio while the
//! recording is paused (card numbers read out, PCI). The recording
//! itself is the `recording` plugin's, opened when recording starts (so
//! the parties' web clients are told at once, `recording.started`) with
//! source `call:{caller leg}`, the user it belongs to and the other
//! party's user as a participant; pauses and resumptions reach it as
//! they happen. When the host's recording ends (the call ends, the user
//! stops an on-demand one, a transfer changes who is on the call) the
//! call is free for the next recording at once, and the audio is handed
//! over as numbered chunks into the recording's hash chain, by a timer
//! that retries what fails, and the recording is stopped and sealed, so
//! `verify` proves a call as it proves a meeting; the staging blob is
//! then destroyed.
//!
//! Everyone on the call hears the announcement when recording starts
//! (unless the policy is silent, audited so): on the answer, before the
//! parties are bridged; mid-call, out of the bridge and back in once
//! both have heard it. A transfer ends the recording (its owner may be
//! the one leaving); the new party is held apart until the old
//! recording has ended, then the new pair is weighed against the policy
//! and, if it records them, told before they talk.
//!
//! What is kept (keys hold ids only):
//!
//! | key | value |
//! |---|---|
//! | `rec/{call}` | [`CallRec`]: the recording running on the call |
//! | `feed/{rid}` | [`Feed`]: a finished recording's audio being handed over |
//! | `mine/{user}/{call}` | the user's leg on the call (`GET /calls`, membership) |
//! | `on/{call}/{user}` | empty: the other way round |
//! | `star/{leg}` | when `*` was pressed on the leg (a code's first key) |
//!
//! Uses `policy`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_sdk::calls::{
    self, Cause, LegState, OpEnd, Prompt, RecordOpts, Recorded, RecordingChunk,
};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{
    Error, Method, Request, Response, audio, audit, blobs, config, kv, plugins, timers,
};

use crate::me;
use crate::policy::{Mode, Policy, admin};

/// The recording plugin.
const RECORDING: &str = "recording";
/// Longest recording the host takes (4 h); the rest of a longer call is
/// not recorded, and the audit says so.
const MAX_MS: u32 = 14_400_000;
/// First chunk size tried; halved while the recording plugin finds it
/// too large (its `max-chunk-kib`), down to 16 KiB.
const CHUNK: u32 = 1 << 20;
const MIN_CHUNK: u32 = 16 << 10;
/// Chunks handed over per turn (a timer carries on).
const CHUNKS_PER_TURN: u32 = 4;
/// Turns in a row that may fail (backing off: 2 s, 4 s … 256 s) before
/// the hand-over stops and waits for an admin (audited; the staging
/// blob is kept; `POST /admin/recording/stuck/{rid}`).
const MAX_FAILED_TURNS: u32 = 8;
/// How long after a `*` its digit counts as a code.
const CODE_MS: u64 = 3_000;
/// How often a recorded call is looked at, in case the server stopped
/// under it (no `recorded` will ever come).
const WATCH: std::time::Duration = std::time::Duration::from_secs(300);

/// The recording running on a call, under `rec/{call}` (`call` is the
/// caller's leg, the one recorded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRec {
    /// The two parties' legs, the recorded one first.
    pub parties: Vec<String>,
    pub mode: Mode,
    /// Whom the recording belongs to.
    pub owner: String,
    /// The recording plugin's recording.
    pub rid: String,
    /// The host's recording on the caller's leg.
    pub op: String,
    pub paused: bool,
    /// Since when (ms), while paused.
    #[serde(default)]
    pub paused_at: u64,
    /// Paused so far, ms (the policy's `max_pause_seconds` is the most).
    #[serde(default)]
    pub paused_ms: u64,
    /// Pauses so far (names the pause a limit timer is for).
    #[serde(default)]
    pub pauses: u32,
    /// Announcements still playing, (leg, op): the parties are bridged
    /// when the last one ends.
    #[serde(default)]
    pub announcing: Vec<(String, String)>,
    /// This plugin asked the host to end the recording (a stop, a
    /// transfer): the end is no surprise.
    #[serde(default)]
    pub stopping: bool,
    /// A party who answered while the recording was ending, held apart
    /// until it has: then weighed against the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Next>,
    /// A transfer of the recorded leg to another plugin's number, made
    /// once the host's recording has ended (a leg being recorded is not
    /// handed over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_off_to: Option<String>,
    /// The watch found the leg gone once (twice: lost).
    #[serde(default)]
    pub missing: bool,
    /// The staging blob, once the host has said (its first chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// How far into the staging blob the audio is handed over already.
    #[serde(default)]
    pub fed: u64,
    /// Chunks handed over already (the WAV header is the first).
    #[serde(default)]
    pub seq: u64,
    /// How far the staging blob may be read (the host said so).
    #[serde(default)]
    pub stored: u64,
    /// The chunk size the recording plugin takes (learned from its 413s).
    #[serde(default = "chunk_size")]
    pub chunk: u32,
    /// A turn of handing on is scheduled.
    #[serde(default)]
    pub live: bool,
    /// The recording plugin took no more (why): the host's recording was
    /// stopped; nothing more is handed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
}

fn chunk_size() -> u32 {
    CHUNK
}

/// A new party of a call: its leg, the user rung, and the user whose
/// forward rang a number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Next {
    pub leg: String,
    pub user: String,
    pub forwarded_for: String,
}

/// A finished recording's audio on its way, under `feed/{rid}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Feed {
    pub call: String,
    pub rid: String,
    /// This plugin's blob the host recorded into.
    pub blob: String,
    pub offset: u64,
    pub size: u64,
    /// Chunks handed over.
    pub seq: u64,
    pub chunk: u32,
    pub ms: u64,
    /// When the host's recording ended (the seal says so).
    #[serde(default)]
    pub ended_at: u64,
    /// Turns in a row that failed.
    #[serde(default)]
    pub failed: u32,
    /// Given up after [`MAX_FAILED_TURNS`]: waits for an admin.
    #[serde(default)]
    pub stuck: bool,
    /// The staging blob's own header (stamped at the end) is handed over
    /// as it is: nothing was handed on during the call.
    #[serde(default)]
    pub real_header: bool,
    /// Nothing more goes in (why): the recording plugin closed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
    /// Why the last turn failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn key(call: &str) -> String {
    format!("rec/{call}")
}

fn feed_key(rid: &str) -> String {
    format!("feed/{rid}")
}

const FEEDS: &str = "feed/";

fn target(call: &str) -> String {
    format!("call/{call}")
}

fn mine(user: &str, call: &str) -> String {
    format!("mine/{user}/{call}")
}

fn on(call: &str, user: &str) -> String {
    format!("on/{call}/{user}")
}

fn star(leg: &str) -> String {
    format!("star/{leg}")
}

fn answered_leg(leg: &str) -> bool {
    calls::get_leg(leg).is_ok_and(|l| l.state == LegState::Answered)
}

pub fn load(call: &str) -> Result<Option<CallRec>, Error> {
    kv::get_json(key(call))
}

fn save(call: &str, rec: &CallRec) -> Result<(), Error> {
    kv::set_json(key(call), rec)
}

fn now() -> u64 {
    switchboard_sdk::now_ms()
}

/// Audits what went wrong with a call's recording (an admin's alarm);
/// the call itself goes on.
fn alarm(action: &str, call: &str, details: serde_json::Value) -> Result<(), Error> {
    audit::append(
        action,
        &target(call),
        audit::Outcome::Failure,
        &details.to_string(),
    )
}

fn ok(action: &str, call: &str, details: serde_json::Value) -> Result<(), Error> {
    audit::append(
        action,
        &target(call),
        audit::Outcome::Success,
        &details.to_string(),
    )
}

/// Ends the host's recording `op`; one that has ended already (its
/// `recorded` on the way) is fine.
fn stop_op(op: &str) -> Result<(), Error> {
    match calls::stop(op) {
        Err(Error::NotFound(_)) => Ok(()),
        other => other,
    }
}

// ---- who is on a call -------------------------------------------------

/// The users of the tenant listed on call `call`, with their legs.
fn listed(call: &str) -> Result<Vec<(String, String)>, Error> {
    let prefix = format!("on/{call}/");
    let mut out = Vec::new();
    for e in kv::scan(&prefix, None, 16)?.entries {
        let user = String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned();
        if let Some(leg) = kv::get(mine(&user, call))? {
            out.push((user, String::from_utf8_lossy(&leg).into_owned()));
        }
    }
    Ok(out)
}

/// Lists `user` on call `call` by their leg `leg`.
fn list_on(call: &str, user: &str, leg: &str) -> Result<(), Error> {
    if user.is_empty() {
        return Ok(());
    }
    kv::set(mine(user, call), leg)?;
    kv::set(on(call, user), b"")
}

/// The user of the tenant on `leg` of call `call` (none: a party from
/// outside).
fn user_on(call: &str, leg: &str) -> Result<Option<String>, Error> {
    Ok(listed(call)?
        .into_iter()
        .find(|(_, l)| l == leg)
        .map(|(u, _)| u))
}

/// Whether `user`'s leg on call `call` is still on it: answered, and the
/// call's leg, bridged with it, or one of its recording's parties (a
/// user who transferred the call away, or whose leg went to another
/// plugin, is not).
fn still_on(call: &str, user: &str) -> Result<bool, Error> {
    let Some(leg) = kv::get(mine(user, call))? else {
        return Ok(false);
    };
    let leg = String::from_utf8_lossy(&leg).into_owned();
    let Ok(l) = calls::get_leg(&leg) else {
        return Ok(false);
    };
    if l.state != LegState::Answered {
        return Ok(false);
    }
    if leg == call {
        return Ok(true);
    }
    if l.bridged_with.as_deref() == Some(call) {
        return Ok(true);
    }
    Ok(load(call)?.is_some_and(|r| r.parties.contains(&leg)))
}

/// The users of the tenant on call `call` now.
fn users_of(call: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for (user, _) in listed(call)? {
        if still_on(call, &user)? {
            out.push(user);
        }
    }
    Ok(out)
}

/// Leg `leg` left call `call` (ended, transferred away, handed to
/// another plugin): its user's listing goes.
pub fn left(call: &str, leg: &str) -> Result<(), Error> {
    for (user, l) in listed(call)? {
        if l == leg {
            kv::delete(mine(&user, call))?;
            kv::delete(on(call, &user))?;
        }
    }
    Ok(())
}

/// A leg is over for this plugin: its pending code key goes.
pub fn gone(leg: &str) -> Result<(), Error> {
    kv::delete(star(leg)).map(|_| ())
}

/// Leg `leg`, listed on the calls `from`, is on call `to` now (a transfer
/// made it the caller of a new call, or joined it to another): its user
/// goes along.
pub fn move_leg(from: &[&str], leg: &str, to: &str) -> Result<(), Error> {
    for call in from {
        for (user, l) in listed(call)? {
            if l == leg {
                if *call != to {
                    kv::delete(mine(&user, call))?;
                    kv::delete(on(call, &user))?;
                }
                list_on(to, &user, leg)?;
            }
        }
    }
    Ok(())
}

// ---- starting ---------------------------------------------------------

/// The numbers the policy matches a call by: the caller's, the number
/// dialled, the number rung.
fn numbers(caller: &calls::LegSnapshot, callee: &calls::LegSnapshot) -> Vec<String> {
    vec![
        caller.caller.clone(),
        caller.callee.clone(),
        callee.callee.clone(),
    ]
}

/// A title for the recording: who called whom, printable only.
fn title(caller: &calls::LegSnapshot, callee: &calls::LegSnapshot) -> String {
    let clean = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect::<String>()
    };
    format!(
        "Call {} to {}",
        clean(&caller.caller),
        clean(&callee.callee)
    )
}

/// The callee leg `callee` (rung for `user`; `forwarded_for`: the user
/// whose forward rang a number) answered call `call`. Both parties are
/// listed (`GET /calls`). A recording still ending (a transfer) holds
/// the new party apart until it has; otherwise the policy is weighed.
/// Returns whether this took over bridging them.
pub fn answered(call: &str, callee: &str, user: &str, forwarded_for: &str) -> Result<bool, Error> {
    let a = calls::get_leg(call)?;
    if let Some(u) = a.user.as_deref() {
        list_on(call, u, call)?;
    }
    list_on(call, user, callee)?;
    let next = Next {
        leg: callee.to_string(),
        user: user.to_string(),
        forwarded_for: forwarded_for.to_string(),
    };
    if let Some(mut rec) = load(call)? {
        if rec.parties.iter().any(|p| p == callee)
            || rec.next.as_ref().is_some_and(|n| n.leg == callee)
        {
            // This answer again (events come at least once).
            return Ok(!rec.announcing.is_empty() || rec.next.is_some());
        }
        // Someone new on a recorded call: the recording ends, and the new
        // pair is weighed once it has.
        if !rec.stopping {
            stop_op(&rec.op)?;
            rec.stopping = true;
        }
        rec.next = Some(next);
        save(call, &rec)?;
        return Ok(true);
    }
    weigh(call, &next)
}

/// Weighs call `call` with its new party `next` against the policy: a
/// recording if it says always (the parties told first). Whether that
/// took over bridging them.
fn weigh(call: &str, next: &Next) -> Result<bool, Error> {
    let (a, b) = (calls::get_leg(call)?, calls::get_leg(&next.leg)?);
    // The called user first (a forward to a number is still the
    // forwarding user's call), then the caller's side.
    let mut users: Vec<String> = Vec::new();
    let caller_side = a
        .user
        .clone()
        .into_iter()
        .chain(users_of(call)?.into_iter().filter(|u| *u != next.user));
    for u in [next.user.clone(), next.forwarded_for.clone()]
        .into_iter()
        .chain(caller_side)
    {
        if !u.is_empty() && !users.contains(&u) {
            users.push(u);
        }
    }
    begin(call, &next.leg, &users, &numbers(&a, &b), title(&a, &b))
}

/// Starts the policy's `always` recording of call `call` with party leg
/// `other`, if the policy wants one; whether the announcement took over
/// bridging them. A recording the recording plugin refuses leaves the
/// call going on, audited as a failure.
fn begin(
    call: &str,
    other: &str,
    users: &[String],
    numbers: &[String],
    title: String,
) -> Result<bool, Error> {
    let policy = Policy::load()?;
    let u: Vec<&str> = users.iter().map(String::as_str).collect();
    let n: Vec<&str> = numbers.iter().map(String::as_str).collect();
    if !policy.always(&u, &n) {
        return Ok(false);
    }
    // The recording is the policy's user's: one the policy names, else
    // the tenant's user on the call (the called one first).
    let named = users
        .iter()
        .find(|x| policy.always(&[x.as_str()], &[]))
        .or_else(|| users.first());
    let Some(owner) = named.cloned() else {
        // No user of the tenant on the call (a number calling a number
        // the policy names): nobody whose recording it would be.
        alarm(
            "pbx.recording.skipped",
            call,
            json!({ "why": "no user of the tenant on the call" }),
        )?;
        return Ok(false);
    };
    let participants: Vec<String> = users.iter().filter(|x| **x != owner).cloned().collect();
    let started = start(
        call,
        other,
        Start {
            mode: Mode::Always,
            owner,
            participants,
            title,
            by: None,
        },
        &policy,
    );
    match started {
        Ok(rec) => Ok(!rec.announcing.is_empty()),
        Err(Failed::Refused(e)) => {
            alarm(
                "pbx.recording.start",
                call,
                json!({ "mode": "always", "why": e.code, "message": e.message }),
            )?;
            Ok(false)
        }
        Err(Failed::Broken(e)) => Err(e),
    }
}

struct Start {
    mode: Mode,
    owner: String,
    participants: Vec<String>,
    title: String,
    /// The user who started it (on demand), none for the policy.
    by: Option<String>,
}

/// Why a start did not happen: refused before anything was issued (the
/// call goes on), or broken after (the whole invocation must be dropped,
/// so nothing half done stays).
enum Failed {
    Refused(ApiError),
    Broken(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        Failed::Broken(e)
    }
}

impl From<Failed> for ApiError {
    fn from(f: Failed) -> ApiError {
        match f {
            Failed::Refused(e) => e,
            Failed::Broken(e) => ApiError::new(500, "internal", format!("{e:?}")),
        }
    }
}

/// Plays the announcement to `leg`: the tenant's own, or the library's
/// when the upload cannot be played.
fn announce(leg: &str, prompt: &Prompt) -> Result<String, Error> {
    match calls::play(leg, std::slice::from_ref(prompt), false) {
        Err(Error::InvalidArgument(_) | Error::NotFound(_))
            if matches!(prompt, Prompt::Blob(_)) =>
        {
            calls::play(leg, &[Prompt::Library("recording-on".into())], false)
        }
        other => other,
    }
}

/// Opens the recording, starts the host's, and has both parties hear the
/// announcement out of their bridge (bridged again when both heard it).
fn start(call: &str, other: &str, s: Start, policy: &Policy) -> Result<CallRec, Failed> {
    let prompt = policy.prompt()?;
    let opened = plugins::call_ok(
        RECORDING,
        Method::Post,
        "/recordings",
        &json!({
            "source": { "kind": "call", "id": call },
            "owner": s.owner,
            "participants": s.participants,
            "policy": s.mode.as_str(),
            "title": s.title,
            "content_type": "audio/wav",
        }),
    )
    .map_err(Failed::Refused)?;
    let rid = opened["id"].as_str().unwrap_or_default().to_string();
    let recording = calls::record(
        call,
        &RecordOpts {
            owner: None,
            class: "recording".into(),
            max_ms: MAX_MS,
            silence_ms: 0,
            terminators: String::new(),
            // Handed on to the recording plugin as the call goes.
            chunk_ms: config::get::<u32>("recording-chunk-seconds")
                .unwrap_or(10)
                .clamp(1, 60)
                * 1000,
        },
    );
    let op = match recording {
        Ok(op) => op,
        Err(e) => {
            // The leg cannot be recorded (it ended meanwhile): the opened
            // recording is closed again, empty.
            let r = plugins::call(
                RECORDING,
                Method::Post,
                &format!("/recordings/{rid}/stop"),
                b"",
            )?;
            if r.status >= 500 {
                return Err(Failed::Broken(Error::Internal(
                    "the recording plugin failed".into(),
                )));
            }
            return Err(Failed::Refused(e.into()));
        }
    };
    // From here every failure drops the whole invocation.
    let mut announcing = Vec::new();
    let mut told = 0;
    if let Some(prompt) = &prompt {
        let bridged = calls::get_leg(call)?.bridged_with.is_some();
        if bridged {
            calls::unbridge(call)?;
        }
        for leg in [call, other] {
            if answered_leg(leg) {
                calls::stop_plays(leg)?;
                announcing.push((leg.to_string(), announce(leg, prompt)?));
                told += 1;
            }
        }
    }
    let rec = CallRec {
        parties: vec![call.to_string(), other.to_string()],
        mode: s.mode,
        owner: s.owner,
        rid,
        op,
        paused: false,
        paused_at: 0,
        paused_ms: 0,
        pauses: 0,
        announcing,
        stopping: false,
        next: None,
        hand_off_to: None,
        missing: false,
        blob: None,
        fed: 0,
        seq: 0,
        stored: 0,
        chunk: CHUNK,
        live: false,
        closed: None,
    };
    save(call, &rec)?;
    timers::schedule(WATCH, "watch", format!("{call}/{}", rec.rid).as_bytes())?;
    ok(
        "pbx.recording.start",
        call,
        json!({
            "recording": rec.rid, "mode": s.mode, "owner": rec.owner,
            "by": s.by, "announced": prompt.is_some(), "parties_told": told,
        }),
    )?;
    Ok(rec)
}

/// A play ended on `leg` of call `call`: the last announcement done, the
/// parties are bridged (again).
pub fn played(call: &str, leg: &str, op: &str) -> Result<(), Error> {
    let Some(mut rec) = load(call)? else {
        return Ok(());
    };
    let before = rec.announcing.len();
    rec.announcing.retain(|(l, o)| !(l == leg && o == op));
    if rec.announcing.len() == before {
        return Ok(());
    }
    save(call, &rec)?;
    if rec.announcing.is_empty() && rec.next.is_none() {
        rejoin(&rec.parties[0], &rec.parties[1])?;
    }
    Ok(())
}

/// Bridges two parties (again), if both are still there.
fn rejoin(a: &str, b: &str) -> Result<(), Error> {
    if answered_leg(a) && answered_leg(b) {
        return match calls::bridge(a, b) {
            Err(Error::InvalidArgument(_) | Error::NotFound(_)) => Ok(()),
            other => other,
        };
    }
    Ok(())
}

// ---- what users do ----------------------------------------------------

/// What a user asks of a call's recording (a code keyed on their phone,
/// or the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Start,
    Stop,
    Pause,
    Resume,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

/// Carries out `action` on call `call` for `user` (a party of it). A
/// refusal (4xx) has issued nothing; a 500 must drop the invocation.
fn act(call: &str, user: &str, action: Action) -> Result<Option<CallRec>, ApiError> {
    let policy = Policy::load()?;
    let rec = load(call)?;
    let refuse = |status, code: &str, msg: &str| Err(ApiError::new(status, code, msg));
    if rec.as_ref().is_some_and(|r| r.stopping) {
        return refuse(
            409,
            "ending",
            "the call's recording is ending; try again in a moment",
        );
    }
    match (action, rec) {
        (Action::Start, Some(_)) => refuse(409, "already_recording", "the call is being recorded"),
        (Action::Start, None) => {
            let me = calls::get_leg(call)?;
            let Some(other) = me.bridged_with.clone() else {
                return refuse(409, "not_connected", "the call is not connected");
            };
            let them = calls::get_leg(&other)?;
            let nums = numbers(&me, &them);
            let n: Vec<&str> = nums.iter().map(String::as_str).collect();
            if !policy.on_demand(user, &n) {
                return refuse(
                    403,
                    "not_permitted",
                    "the tenant's policy does not let you record this call",
                );
            }
            let participants: Vec<String> =
                users_of(call)?.into_iter().filter(|u| u != user).collect();
            let rec = start(
                call,
                &other,
                Start {
                    mode: Mode::OnDemand,
                    owner: user.to_string(),
                    participants,
                    title: title(&me, &them),
                    by: Some(user.to_string()),
                },
                &policy,
            )?;
            Ok(Some(rec))
        }
        (_, None) => refuse(409, "not_recording", "the call is not being recorded"),
        (Action::Stop, Some(mut rec)) => {
            if rec.mode == Mode::Always {
                return refuse(
                    409,
                    "recording_required",
                    "the tenant's policy records this call to its end",
                );
            }
            if rec.owner != user {
                return refuse(
                    403,
                    "not_permitted",
                    "only the user who started a recording stops it",
                );
            }
            stop_op(&rec.op)?;
            rec.stopping = true;
            save(call, &rec)?;
            ok(
                "pbx.recording.stop",
                call,
                json!({ "recording": rec.rid, "by": user }),
            )?;
            Ok(Some(rec))
        }
        (Action::Pause | Action::Resume, Some(mut rec)) => {
            if !policy.users_may_pause {
                return refuse(
                    403,
                    "not_permitted",
                    "the tenant's policy does not let users pause recordings",
                );
            }
            let pause = action == Action::Pause;
            if rec.paused != pause {
                set_paused(call, &mut rec, pause, Some(user), &policy)?;
            }
            Ok(Some(rec))
        }
    }
}

/// Pauses or resumes. The recording plugin first (a refusal issues
/// nothing), then the host drops or keeps the audio. Pauses add up to
/// the policy's `max_pause_seconds` per recording: a pause ends by
/// itself when that is spent, and none starts after.
fn set_paused(
    call: &str,
    rec: &mut CallRec,
    pause: bool,
    by: Option<&str>,
    policy: &Policy,
) -> Result<(), ApiError> {
    let budget = u64::from(policy.max_pause_seconds) * 1000;
    if pause && rec.paused_ms >= budget {
        return Err(ApiError::new(
            409,
            "pause_limit",
            format!(
                "this recording was paused for {} s already, the most the tenant's policy allows",
                policy.max_pause_seconds
            ),
        ));
    }
    let verb = if pause { "pause" } else { "resume" };
    plugins::call_ok(
        RECORDING,
        Method::Post,
        &format!("/recordings/{}/{verb}", rec.rid),
        &serde_json::Value::Null,
    )?;
    let issued = if pause {
        calls::pause(&rec.op)
    } else {
        calls::resume(&rec.op)
    };
    issued.map_err(|e| ApiError::new(500, "internal", format!("{e:?}")))?;
    let t = now();
    rec.paused = pause;
    if pause {
        rec.paused_at = t;
        rec.pauses += 1;
        let payload = format!("{call}/{}/{}", rec.rid, rec.pauses);
        timers::schedule(
            std::time::Duration::from_millis(budget - rec.paused_ms),
            "unpause",
            payload.as_bytes(),
        )?;
    } else if by.is_none() {
        // The limit's timer: the pause took what was left.
        rec.paused_ms = budget;
    } else {
        rec.paused_ms += t.saturating_sub(rec.paused_at);
    }
    save(call, rec)?;
    ok(
        &format!("pbx.recording.{verb}"),
        call,
        json!({
            "recording": rec.rid,
            "by": by.unwrap_or("policy: the longest pause"),
            "paused_ms": rec.paused_ms,
        }),
    )?;
    Ok(())
}

/// A pause reached the policy's longest: the recording goes on.
pub fn unpause(payload: &str) -> Result<(), Error> {
    let mut parts = payload.split('/');
    let (Some(call), Some(rid), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(());
    };
    let Some(mut rec) = load(call)? else {
        return Ok(());
    };
    let same = rec.rid == rid && n.parse::<u32>().ok() == Some(rec.pauses);
    if !same || !rec.paused || rec.stopping {
        return Ok(());
    }
    let policy = Policy::load()?;
    match set_paused(call, &mut rec, false, None, &policy) {
        Ok(()) => Ok(()),
        Err(e) if e.status < 500 => alarm(
            "pbx.recording.resume",
            call,
            json!({ "recording": rec.rid, "why": e.code }),
        ),
        Err(e) => Err(Error::Internal(e.message)),
    }
}

/// A key pressed on `leg` of call `call`: `*` then a digit within 3 s
/// is a code, taken from a user of the tenant only (keys from outside
/// parties control nothing). A code the policy does not allow does
/// nothing (a phone has no screen for it) but is audited as refused.
pub fn pressed(call: &str, leg: &str, key: char, at_ms: u64) -> Result<(), Error> {
    if key == '*' {
        return kv::set(star(leg), at_ms.to_string());
    }
    let Some(then) = kv::get(star(leg))? else {
        return Ok(());
    };
    kv::delete(star(leg))?;
    let then: u64 = String::from_utf8_lossy(&then).parse().unwrap_or(0);
    if at_ms.saturating_sub(then) > CODE_MS {
        return Ok(());
    }
    let Some(user) = user_on(call, leg)? else {
        return Ok(());
    };
    let policy = Policy::load()?;
    let code = format!("*{key}");
    let rec = load(call)?;
    let action = match (code == policy.start_code, code == policy.pause_code, &rec) {
        (true, _, Some(_)) => Action::Stop,
        (true, _, None) => Action::Start,
        (_, true, Some(r)) if r.paused => Action::Resume,
        (_, true, Some(_)) => Action::Pause,
        _ => return Ok(()),
    };
    match act(call, &user, action) {
        Ok(_) => Ok(()),
        Err(e) if e.status >= 500 => Err(Error::Internal(e.message)),
        Err(e) => audit::append(
            "pbx.recording.refused",
            &target(call),
            audit::Outcome::Denied,
            &json!({ "by": user, "action": action.as_str(), "why": e.code }).to_string(),
        ),
    }
}

// ---- transfers and the end of a recording -----------------------------

/// A transfer moves call `call`'s recorded leg to someone else: the
/// recording ends (sealed with what it has); with `hand_off_to`, the leg
/// goes to that plugin's number once the host's recording has ended.
/// Whether a recording was running (a hand-off must then wait).
pub fn transferring(call: &str, hand_off_to: Option<&str>) -> Result<bool, Error> {
    let Some(mut rec) = load(call)? else {
        return Ok(false);
    };
    if !rec.stopping {
        stop_op(&rec.op)?;
        rec.stopping = true;
        ok(
            "pbx.recording.stop",
            call,
            json!({ "recording": rec.rid, "why": "transfer" }),
        )?;
    }
    rec.hand_off_to = hand_off_to.map(str::to_string);
    save(call, &rec)?;
    Ok(true)
}

/// The host's recording on `leg` ended. The call is free for the next
/// recording; a deferred hand-off goes ahead (or the caller hears it
/// failed); a held new party is weighed and joined; parties out of
/// their bridge for an announcement go back in; the audio is handed
/// over (a first turn now, the rest by timer; nothing here fails for
/// the recording plugin's sake).
pub fn recorded(leg: &str, r: &Recorded, at_ms: u64) -> Result<(), Error> {
    let Some(rec) = load(leg)? else {
        return Ok(());
    };
    if r.op != rec.op {
        return Ok(());
    }
    if !rec.stopping && r.end != OpEnd::Hangup {
        let why = match (r.end, r.blob.is_empty()) {
            (OpEnd::Done, _) => "the longest recording (4 h) was reached",
            (_, true) => "the host could not record the leg",
            _ => "the storage quota is full",
        };
        alarm(
            "pbx.recording.cut",
            leg,
            json!({ "recording": rec.rid, "why": why }),
        )?;
    }
    kv::delete(key(leg))?;
    // The host names the blob it wrote; if it could not finish it, the one
    // it named at the start still holds what was stored.
    let blob = if r.blob.is_empty() {
        rec.blob.clone().unwrap_or_default()
    } else {
        r.blob.clone()
    };
    let (size, gone) = staging_size(&blob)?;
    // Nothing handed on during the call: the blob's own header (stamped
    // now, with the length) opens the recording.
    let real_header = rec.seq == 0 && !r.blob.is_empty();
    let feed = Feed {
        ms: r.ms,
        ended_at: at_ms,
        real_header,
        offset: if real_header { 0 } else { rec.fed.max(HEADER) },
        closed: rec.closed.clone().or(gone),
        ..rest_of(leg, &rec, blob, size)
    };
    kv::set_json(feed_key(&rec.rid), &feed)?;
    if let Some(number) = &rec.hand_off_to {
        match calls::hand_off(leg, number) {
            Ok(()) => {}
            Err(Error::NotFound(_) | Error::InvalidArgument(_)) if answered_leg(leg) => {
                // That number takes nobody now: the caller hears so.
                let _ = calls::play(leg, &[calls::tone(calls::Tone::Busy, 3000)], false);
                calls::hangup(leg, Cause::Unavailable)?;
            }
            Err(Error::NotFound(_) | Error::InvalidArgument(_)) => {}
            Err(e) => return Err(e),
        }
    } else if let Some(next) = &rec.next {
        if answered_leg(&next.leg) && !weigh(leg, next)? {
            rejoin(leg, &next.leg)?;
        }
    } else if !rec.announcing.is_empty() {
        rejoin(&rec.parties[0], &rec.parties[1])?;
    }
    feed_turn_saved(feed)
}

/// How long the staging blob is, and why nothing can be read of it (it
/// is gone).
fn staging_size(blob: &str) -> Result<(u64, Option<String>), Error> {
    if blob.is_empty() {
        return Ok((0, None));
    }
    match blobs::size(blob) {
        Ok(n) => Ok((n, None)),
        Err(Error::NotFound(_)) => Ok((
            0,
            Some("the staging copy is gone (deleted or expired)".into()),
        )),
        Err(e) => Err(e),
    }
}

/// The hand-over of what call `call`'s recording `rec` has not handed on
/// yet, from staging blob `blob` of `size` bytes.
fn rest_of(call: &str, rec: &CallRec, blob: String, size: u64) -> Feed {
    Feed {
        call: call.to_string(),
        rid: rec.rid.clone(),
        blob,
        offset: rec.fed.max(HEADER),
        size,
        seq: rec.seq,
        chunk: rec.chunk,
        ms: 0,
        ended_at: now(),
        failed: 0,
        stuck: false,
        error: None,
        real_header: false,
        closed: None,
    }
}

/// A timer's turn of handing over recording `rid`'s audio.
pub fn feed(rid: &str) -> Result<(), Error> {
    match kv::get_json::<Feed>(feed_key(rid))? {
        Some(f) if !f.stuck => feed_turn_saved(f),
        _ => Ok(()),
    }
}

/// One turn: its outcome saved, the next turn scheduled. What fails is
/// counted and tried again later, backing off; after
/// [`MAX_FAILED_TURNS`] the feed is stuck and the audit asks for an
/// admin.
fn feed_turn_saved(mut f: Feed) -> Result<(), Error> {
    let outcome = match f.closed.clone() {
        Some(why) => finish(&f, Some(why)).map(|()| None),
        None => match turn(&mut f) {
            Ok(Turn::Done { why }) => finish(&f, why).map(|()| None),
            Ok(Turn::More) => Ok(Some(Turn::More)),
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(None) => Ok(()),
        Ok(Some(_)) => {
            f.failed = 0;
            f.error = None;
            kv::set_json(feed_key(&f.rid), &f)?;
            timers::schedule(std::time::Duration::ZERO, "feed", f.rid.as_bytes())?;
            Ok(())
        }
        Err(e) => {
            f.failed += 1;
            f.error = Some(format!("{}: {}", e.code, e.message));
            if f.failed >= MAX_FAILED_TURNS {
                f.stuck = true;
                alarm(
                    "pbx.recording.stuck",
                    &f.call,
                    json!({ "recording": f.rid, "why": f.error, "handed_over_chunks": f.seq, "staging_blob": f.blob }),
                )?;
                return kv::set_json(feed_key(&f.rid), &f);
            }
            kv::set_json(feed_key(&f.rid), &f)?;
            timers::schedule(
                std::time::Duration::from_secs(1 << f.failed),
                "feed",
                f.rid.as_bytes(),
            )?;
            Ok(())
        }
    }
}

/// What became of a chunk handed to the recording plugin.
enum Put {
    Taken,
    /// Too large: the chunk size was halved; try again.
    Smaller,
    /// The recording takes nothing more (why).
    Closed(String),
}

/// Hands `data` to the recording plugin as the feed's next chunk.
fn put(f: &mut Feed, data: &[u8]) -> Result<Put, ApiError> {
    let path = format!("/recordings/{}/chunks/{}", f.rid, f.seq + 1);
    let r = plugins::call_with_headers(
        RECORDING,
        Method::Put,
        &path,
        &[("content-type".into(), "application/octet-stream".into())],
        data,
    )?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let code = v["code"].as_str().unwrap_or_default();
    match r.status {
        200 | 201 => Ok(Put::Taken),
        413 if f.chunk > MIN_CHUNK => {
            f.chunk /= 2;
            Ok(Put::Smaller)
        }
        409 if code == "quota_exceeded" || code == "recording_stopped" => {
            Ok(Put::Closed(code.to_string()))
        }
        status => Err(ApiError::new(
            502,
            "recording_failed",
            format!(
                "the recording plugin refused chunk {} ({status} {code})",
                f.seq + 1
            ),
        )),
    }
}

/// The staging blob's WAV header's length.
const HEADER: u64 = 44;

/// More of the call's recording is stored in the staging blob (or the
/// host names it, at the start): noted, and a turn of handing it on to
/// the recording plugin is scheduled, so its chain grows as the call
/// goes. Nothing here can fail the call.
pub fn chunk(call: &str, c: &RecordingChunk) -> Result<(), Error> {
    let Some(mut rec) = load(call)? else {
        return Ok(());
    };
    if c.op != rec.op {
        return Ok(());
    }
    rec.blob = Some(c.blob.clone());
    rec.stored = rec.stored.max(c.offset.saturating_add(c.len));
    if rec.stored > rec.fed.max(HEADER) && !rec.live && rec.closed.is_none() {
        rec.live = true;
        timers::schedule(
            std::time::Duration::ZERO,
            "live",
            format!("{call}/{}", rec.rid).as_bytes(),
        )?;
    }
    save(call, &rec)
}

/// A turn of handing on what is stored of a running call recording
/// (payload `call/rid`). Progress is kept whatever happens; a refusal is
/// tried again later; a recording the recording plugin closed (its
/// owner's quota) stops the host's recording too.
pub fn live(payload: &str) -> Result<(), Error> {
    let Some((call, rid)) = payload.split_once('/') else {
        return Ok(());
    };
    let Some(mut rec) = load(call)? else {
        return Ok(());
    };
    if rec.rid != rid {
        return Ok(());
    }
    rec.live = false;
    let Some(blob) = rec.blob.clone().filter(|_| rec.closed.is_none()) else {
        return save(call, &rec);
    };
    let mut f = rest_of(call, &rec, blob, rec.stored);
    let outcome = turn(&mut f);
    rec.fed = f.offset.max(rec.fed);
    rec.seq = f.seq;
    rec.chunk = f.chunk;
    let again = match outcome {
        Ok(Turn::More) => Some(std::time::Duration::ZERO),
        Ok(Turn::Done { why: None }) => None,
        Ok(Turn::Done { why: Some(why) }) => {
            stop_op(&rec.op)?;
            rec.stopping = true;
            rec.closed = Some(why);
            None
        }
        // The recording plugin is not taking it now: later (what is not
        // handed on meanwhile goes at the end).
        Err(_) => Some(std::time::Duration::from_secs(30)),
    };
    if let Some(delay) = again {
        rec.live = true;
        timers::schedule(delay, "live", payload.as_bytes())?;
    }
    save(call, &rec)
}

enum Turn {
    More,
    /// Nothing more goes in; `why` when not all of it did.
    Done {
        why: Option<String>,
    },
}

/// Hands over up to [`CHUNKS_PER_TURN`] chunks: the WAV header first
/// (the staging blob's own is written only when the recording ends),
/// then the audio from the staging blob.
fn turn(f: &mut Feed) -> Result<Turn, ApiError> {
    let mut taken = 0;
    while taken < CHUNKS_PER_TURN {
        if f.offset >= f.size {
            return Ok(Turn::Done { why: None });
        }
        if f.seq == 0 && !f.real_header {
            match put(f, &audio::wav_header(u32::MAX))? {
                Put::Taken => f.seq = 1,
                // (Halving ends at the smallest size: this loop ends.)
                Put::Smaller => {}
                Put::Closed(why) => return Ok(Turn::Done { why: Some(why) }),
            }
            continue;
        }
        let data = match blobs::read(&f.blob, f.offset, f.chunk) {
            Ok(d) => d,
            Err(Error::NotFound(_)) => {
                return Ok(Turn::Done {
                    why: Some("the staging copy is gone (deleted or expired)".into()),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if data.is_empty() {
            return Ok(Turn::Done {
                why: Some("the staging copy is shorter than it was".into()),
            });
        }
        match put(f, &data)? {
            Put::Taken => {
                f.offset += data.len() as u64;
                f.seq += 1;
                taken += 1;
            }
            Put::Smaller => {}
            Put::Closed(why) => return Ok(Turn::Done { why: Some(why) }),
        }
    }
    Ok(if f.offset >= f.size {
        Turn::Done { why: None }
    } else {
        Turn::More
    })
}

/// Stops and seals the recording (a stopped one stays as it is),
/// destroys the staging copy — unless audio was left in it, which the
/// audit names for an admin — and forgets the feed.
fn finish(f: &Feed, why: Option<String>) -> Result<(), ApiError> {
    let path = format!("/recordings/{}/stop?ended_at={}", f.rid, f.ended_at);
    let r = plugins::call(RECORDING, Method::Post, &path, b"")?;
    if r.status >= 500 {
        return Err(ApiError::new(
            502,
            "recording_failed",
            format!("sealing failed ({})", r.status),
        ));
    }
    let all = why.is_none();
    if all && !f.blob.is_empty() {
        match blobs::delete(&f.blob) {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    kv::delete(feed_key(&f.rid))?;
    if let Some(why) = why {
        alarm(
            "pbx.recording.cut",
            &f.call,
            json!({ "recording": f.rid, "why": why, "handed_over_chunks": f.seq, "staging_blob": f.blob }),
        )?;
    }
    ok(
        "pbx.recording.sealed",
        &f.call,
        json!({ "recording": f.rid, "chunks": f.seq, "bytes": f.offset, "ms": f.ms, "complete": all }),
    )?;
    Ok(())
}

/// The watch over recording `rid` of call `call` (payload `call/rid`):
/// while its leg is there, again later. A leg found gone twice without
/// its recording ending (the server stopped mid-call, and with it the
/// host's recording) hands over what the staging blob holds (the audio
/// stored until then, if the host said where: its first chunk) and seals
/// the recording, audited as lost.
pub fn watch(payload: &str) -> Result<(), Error> {
    let Some((call, rid)) = payload.split_once('/') else {
        return Ok(());
    };
    let Some(mut rec) = load(call)? else {
        return Ok(());
    };
    if rec.rid != rid {
        return Ok(());
    }
    let gone = matches!(calls::get_leg(call), Err(Error::NotFound(_)));
    if !gone || !rec.missing {
        rec.missing = gone;
        save(call, &rec)?;
        timers::schedule(WATCH, "watch", payload.as_bytes())?;
        return Ok(());
    }
    kv::delete(key(call))?;
    let (blob, size, gone) = match rec.blob.clone() {
        Some(b) => {
            let (size, gone) = staging_size(&b)?;
            (b, size, gone)
        }
        None => (
            String::new(),
            0,
            Some("the host never named the staging blob".to_string()),
        ),
    };
    alarm(
        "pbx.recording.lost",
        call,
        json!({ "recording": rec.rid, "why": "the call's recording ended without its end (the server stopped)", "staging_bytes": size }),
    )?;
    feed_turn_saved(Feed {
        ms: size.saturating_sub(HEADER) / 16,
        closed: rec.closed.clone().or(gone),
        ..rest_of(call, &rec, blob, size)
    })
}

// ---- the API ----------------------------------------------------------

fn view(call: &str, rec: Option<&CallRec>) -> serde_json::Value {
    let state = match rec {
        None => "off",
        Some(r) if r.stopping => "ending",
        Some(r) if r.paused => "paused",
        Some(_) => "recording",
    };
    json!({
        "call": call,
        "recording": state,
        "mode": rec.map(|r| r.mode),
        "recording_id": rec.map(|r| r.rid.clone()),
    })
}

/// `GET /calls`: the signed-in user's connected calls and whether each
/// is recorded (entries of calls they left are dropped as found).
pub fn list(req: &Request, _: &Params) -> Result<Response, ApiError> {
    let user = me(req)?;
    let prefix = format!("mine/{user}/");
    let mut out = Vec::new();
    for e in kv::scan_all(&prefix, 1000)? {
        let call = String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned();
        if still_on(&call, &user)? {
            out.push(view(&call, load(&call)?.as_ref()));
        } else if calls::get_leg(&String::from_utf8_lossy(&e.value)).is_err() {
            kv::delete(&e.key)?;
            kv::delete(on(&call, &user))?;
        }
    }
    Ok(http::json(200, &json!({ "calls": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    action: Action,
}

/// `POST /calls/:call/recording {"action": "start"|"stop"|"pause"|"resume"}`
/// on a call the signed-in user is on now.
pub fn control(req: &Request, p: &Params) -> Result<Response, ApiError> {
    let user = me(req)?;
    let call = p.get("call").unwrap_or_default();
    http::check_id(call, "call")?;
    let ask: Ask = serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::bad_request(
            "invalid_action",
            format!("action is start, stop, pause or resume: {e}"),
        )
    })?;
    if !answered_leg(call) || !still_on(call, &user)? {
        return Err(ApiError::new(
            404,
            "call_not_found",
            "no such call of yours",
        ));
    }
    let rec = act(call, &user, ask.action)?;
    Ok(http::json(200, &view(call, rec.as_ref())))
}

/// `GET /admin/recording/stuck`: hand-overs that gave up, with why.
pub fn stuck(req: &Request, _: &Params) -> Result<Response, ApiError> {
    admin(req)?;
    let mut out = Vec::new();
    for e in kv::scan_all(FEEDS, 1000)? {
        if let Ok(f) = serde_json::from_slice::<Feed>(&e.value)
            && f.stuck
        {
            out.push(json!({
                "recording": f.rid, "call": f.call, "why": f.error,
                "handed_over_bytes": f.offset, "bytes": f.size,
            }));
        }
    }
    Ok(http::json(200, &json!({ "stuck": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolve {
    /// `retry`: hand over the rest again; `abandon`: seal with what was
    /// handed over and destroy the staging copy.
    action: String,
}

/// `POST /admin/recording/stuck/:rid {"action": "retry"|"abandon"}`.
pub fn resolve_stuck(req: &Request, p: &Params) -> Result<Response, ApiError> {
    admin(req)?;
    let rid = p.get("rid").unwrap_or_default();
    http::check_id(rid, "recording")?;
    let body: Resolve = req.json()?;
    let Some(mut f) = kv::get_json::<Feed>(feed_key(rid))?.filter(|f| f.stuck) else {
        return Err(ApiError::not_found("no stuck hand-over of that recording"));
    };
    match body.action.as_str() {
        "retry" => {
            f.stuck = false;
            f.failed = 0;
            kv::set_json(feed_key(rid), &f)?;
            timers::schedule(std::time::Duration::ZERO, "feed", rid.as_bytes())?;
        }
        "abandon" => {
            let path = format!("/recordings/{rid}/stop");
            plugins::call_ok(RECORDING, Method::Post, &path, &serde_json::Value::Null).or_else(
                |e| {
                    if e.code == "recording_stopped" {
                        Ok(serde_json::Value::Null)
                    } else {
                        Err(e)
                    }
                },
            )?;
            match blobs::delete(&f.blob) {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            kv::delete(feed_key(rid))?;
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_action",
                "action is retry or abandon",
            ));
        }
    }
    audit::success(
        "pbx.recording.stuck",
        &target(&f.call),
        json!({ "recording": rid, "action": body.action }),
    )?;
    Ok(http::json(
        200,
        &json!({ "recording": rid, "action": body.action }),
    ))
}
