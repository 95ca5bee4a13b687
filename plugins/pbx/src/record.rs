//! Call recording under the tenant's policy (SPEC R1-R5 for calls; the
//! policy is `policy.rs`). A call is recorded on its caller's leg, which
//! hears the other party: the host mixes both sides into a blob of this
//! plugin as the call goes, and drops the audio while the recording is
//! paused (card numbers read out, PCI). The recording itself is the
//! `recording` plugin's, opened when recording starts (so the parties'
//! web clients are told at once, `recording.started`) with source
//! `call:{caller leg}`, the user it belongs to and the other party's
//! user as a participant; pauses and resumptions reach it as they
//! happen. When the recording ends (the call ends, a user stops an
//! on-demand one, a transfer changes who is on the call) the audio is
//! handed over as numbered chunks into its hash chain, by a timer that
//! retries what fails, and the recording is stopped and sealed, so
//! `verify` proves a call as it proves a meeting; the staging blob is
//! then destroyed.
//!
//! Everyone on the call hears the announcement when recording starts
//! (unless the policy is silent, audited so): on the answer, before the
//! parties are bridged; mid-call, out of the bridge and back in once
//! both have heard it. A transfer ends the recording (its owner may be
//! the one leaving): the call's new pair of parties is weighed against
//! the policy afresh once the old recording is sealed, or when the new
//! party answers, whichever comes last, and a new recording (announced
//! again) starts if the policy says so.
//!
//! Uses `policy`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_sdk::calls::{self, LegState, OpEnd, Prompt, RecordOpts, Recorded};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{
    Error, Method, PrincipalKind, Request, Response, audit, blobs, kv, plugins, timers,
};

use crate::policy::{Mode, Policy};

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
/// Turns in a row that may fail before the hand-over waits for an
/// admin (audited; the staging blob is kept).
const MAX_FAILED_TURNS: u32 = 8;
/// How long after a `*` its digit counts as a code.
const CODE_MS: u64 = 3_000;
/// How often a recorded call is looked at, in case the server stopped
/// under it (no `recorded` will ever come).
const WATCH: std::time::Duration = std::time::Duration::from_secs(300);

/// A call being recorded, under `rec/{call}` (`call` is the caller's
/// leg, the one recorded).
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
    /// A transfer ended it: the call's parties are weighed again once it
    /// is sealed.
    #[serde(default)]
    pub again: bool,
    /// A transfer of the recorded leg to another plugin's number, made
    /// once the host's recording has ended (a leg being recorded is not
    /// handed over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_off_to: Option<String>,
    /// After the recording: the audio being handed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feeding: Option<Feed>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Feed {
    /// This plugin's blob the host recorded into.
    pub blob: String,
    pub offset: u64,
    pub size: u64,
    /// Chunks handed over.
    pub seq: u64,
    pub chunk: u32,
    pub ms: u64,
    /// Turns in a row that failed.
    #[serde(default)]
    pub failed: u32,
}

fn key(call: &str) -> String {
    format!("rec/{call}")
}

fn target(call: &str) -> String {
    format!("call/{call}")
}

/// Call `call` in `user`'s list, with the user's leg on it...
fn mine(user: &str, call: &str) -> String {
    format!("mine/{user}/{call}")
}

/// ...and the other way round: `user` (by that leg) on call `call`.
fn on(call: &str, user: &str) -> String {
    format!("on/{call}/{user}")
}

fn answered_leg(leg: &str) -> bool {
    calls::get_leg(leg).is_ok_and(|l| l.state == LegState::Answered)
}

/// Whether `user`'s leg on call `call` (as the index says) is still on
/// it: answered, and the call's leg or bridged with it (a user who
/// transferred the call away, or whose leg went to another plugin, is
/// not).
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
    let c = calls::get_leg(call).ok();
    // Bridged with the call's leg, or hearing an announcement of it.
    Ok(l.bridged_with.as_deref() == Some(call)
        || c.is_some_and(|c| c.bridged_with.as_deref() == Some(leg.as_str()))
        || load(call)?.is_some_and(|r| r.parties.contains(&leg)))
}

/// The users of the tenant on call `call` now.
fn users_of(call: &str) -> Result<Vec<String>, Error> {
    let prefix = format!("on/{call}/");
    let mut out = Vec::new();
    for e in kv::scan(&prefix, None, 16)?.entries {
        let user = String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned();
        if still_on(call, &user)? {
            out.push(user);
        }
    }
    Ok(out)
}

pub fn load(call: &str) -> Result<Option<CallRec>, Error> {
    kv::get_json(key(call))
}

fn save(call: &str, rec: &CallRec) -> Result<(), Error> {
    kv::set_json(key(call), rec)
}

fn api(e: ApiError) -> Error {
    Error::Internal(format!("{}: {}", e.code, e.message))
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

/// The numbers the policy matches a call by: the caller's, the number
/// dialled, the number rung.
fn numbers(caller: &calls::LegSnapshot, callee: &calls::LegSnapshot) -> Vec<String> {
    vec![
        caller.caller.clone(),
        caller.callee.clone(),
        callee.callee.clone(),
    ]
}

/// The callee leg `callee` (rung for `user`, on behalf of `for_user`:
/// the user whose forward rang a number) answered the call on leg
/// `call`. The parties' calls are listed for them (`GET /calls`). A call
/// the policy records always starts recording, and both parties hear the
/// announcement first. Returns whether this took over bridging them.
pub fn answered(call: &str, callee: &str, user: &str, for_user: &str) -> Result<bool, Error> {
    let (a, b) = (calls::get_leg(call)?, calls::get_leg(callee)?);
    if let Some(u) = a.user.as_deref().filter(|u| !u.is_empty()) {
        kv::set(mine(u, call), call)?;
        kv::set(on(call, u), b"")?;
    }
    if !user.is_empty() {
        kv::set(mine(user, call), callee)?;
        kv::set(on(call, user), b"")?;
    }
    if let Some(mut rec) = load(call)? {
        if rec.parties.iter().any(|p| p == callee) {
            // This answer again (events come at least once).
            return Ok(!rec.announcing.is_empty());
        }
        if rec.feeding.is_none() && !rec.stopping {
            // Someone new on a recorded call without a transfer we saw:
            // the recording ends, and the new pair is weighed afresh.
            calls::stop(&rec.op)?;
            rec.stopping = true;
        }
        rec.again = true;
        save(call, &rec)?;
        return Ok(false);
    }
    // The called user first (a forward to a number is still the
    // forwarding user's call), then the caller's, then any user the
    // caller's leg carried over from a transfer.
    let mut users: Vec<String> = Vec::new();
    let carried = users_of(call)?;
    for u in [
        user.to_string(),
        for_user.to_string(),
        a.user.clone().unwrap_or_default(),
    ]
    .into_iter()
    .chain(carried)
    {
        if !u.is_empty() && !users.contains(&u) {
            users.push(u);
        }
    }
    begin(call, callee, &users, &numbers(&a, &b), title(&a, &b))
}

/// Starts the policy's `always` recording of call `call` with party leg
/// `other`, if the policy wants one; whether the announcement took over
/// bridging them. A recording that cannot start leaves the call going
/// on, audited as a failure.
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
    // the tenant's user on the call (`users` has the called one first).
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
        Err(e) => {
            // The recording plugin refused or is not there: the call goes
            // on unrecorded, and the audit says why.
            alarm(
                "pbx.recording.start",
                call,
                json!({ "mode": "always", "why": e.code, "message": e.message }),
            )?;
            Ok(false)
        }
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
/// Nothing is left half done: a host recording that cannot start closes
/// the opened recording again.
fn start(call: &str, other: &str, s: Start, policy: &Policy) -> Result<CallRec, ApiError> {
    let v = plugins::call_ok(
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
    )?;
    let rid = v["id"].as_str().unwrap_or_default().to_string();
    let op = match calls::record(
        call,
        &RecordOpts {
            owner: None,
            class: "recording".into(),
            max_ms: MAX_MS,
            silence_ms: 0,
            terminators: String::new(),
        },
    ) {
        Ok(op) => op,
        Err(e) => {
            plugins::call(
                RECORDING,
                Method::Post,
                &format!("/recordings/{rid}/stop"),
                b"",
            )?;
            return Err(e.into());
        }
    };
    let mut announcing = Vec::new();
    if let Some(prompt) = policy.prompt()? {
        let bridged = calls::get_leg(call)?.bridged_with.is_some();
        if bridged {
            calls::unbridge(call)?;
        }
        for leg in [call, other] {
            if answered_leg(leg) {
                calls::stop_plays(leg)?;
                if let Ok(op) = announce(leg, &prompt) {
                    announcing.push((leg.to_string(), op));
                }
            }
        }
        if announcing.is_empty() && bridged {
            calls::bridge(call, other)?;
        }
    }
    let rec = CallRec {
        parties: vec![call.to_string(), other.to_string()],
        mode: s.mode,
        owner: s.owner,
        rid,
        op,
        paused: false,
        pauses: 0,
        announcing,
        stopping: false,
        again: false,
        hand_off_to: None,
        feeding: None,
    };
    save(call, &rec)?;
    timers::schedule(WATCH, "watch", call.as_bytes())?;
    audit::success(
        "pbx.recording.start",
        &target(call),
        json!({
            "recording": rec.rid, "mode": s.mode, "owner": rec.owner,
            "by": s.by, "announced": !policy.silent,
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
    if rec.announcing.is_empty() {
        rejoin(&rec.parties)?;
    }
    Ok(())
}

/// Bridges the two parties again, if both are still there.
fn rejoin(parties: &[String]) -> Result<(), Error> {
    if let [a, b] = parties
        && answered_leg(a)
        && answered_leg(b)
    {
        return match calls::bridge(a, b) {
            Err(Error::InvalidArgument(_) | Error::NotFound(_)) => Ok(()),
            other => other,
        };
    }
    Ok(())
}

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

/// Carries out `action` on call `call` for `user` (a party of it).
fn act(call: &str, user: &str, action: Action) -> Result<Option<CallRec>, ApiError> {
    let policy = Policy::load()?;
    let rec = load(call)?;
    let refuse = |status, code: &str, msg: &str| Err(ApiError::new(status, code, msg));
    if rec
        .as_ref()
        .is_some_and(|r| r.feeding.is_some() || r.stopping)
    {
        return refuse(
            409,
            "sealing",
            "the last recording of this call is being sealed; try again in a moment",
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
            calls::stop(&rec.op)?;
            rec.stopping = true;
            save(call, &rec)?;
            audit::success(
                "pbx.recording.stop",
                &target(call),
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

/// Pauses or resumes: the host drops or keeps the audio, the recording
/// plugin keeps the interval; a pause is given the policy's longest
/// time, after which it ends by itself.
fn set_paused(
    call: &str,
    rec: &mut CallRec,
    pause: bool,
    by: Option<&str>,
    policy: &Policy,
) -> Result<(), ApiError> {
    let verb = if pause { "pause" } else { "resume" };
    if pause {
        calls::pause(&rec.op)?;
    } else {
        calls::resume(&rec.op)?;
    }
    plugins::call_ok(
        RECORDING,
        Method::Post,
        &format!("/recordings/{}/{verb}", rec.rid),
        &serde_json::Value::Null,
    )?;
    rec.paused = pause;
    if pause {
        rec.pauses += 1;
        let payload = format!("{call}/{}", rec.pauses);
        timers::schedule(
            std::time::Duration::from_secs(u64::from(policy.max_pause_seconds)),
            "unpause",
            payload.as_bytes(),
        )?;
    }
    save(call, rec)?;
    audit::success(
        &format!("pbx.recording.{verb}"),
        &target(call),
        json!({ "recording": rec.rid, "by": by.unwrap_or("policy: the longest pause") }),
    )
}

/// A pause reached the policy's longest: the recording goes on.
pub fn unpause(payload: &str) -> Result<(), Error> {
    let Some((call, n)) = payload.split_once('/') else {
        return Ok(());
    };
    let Some(mut rec) = load(call)? else {
        return Ok(());
    };
    let same = n.parse::<u32>().ok() == Some(rec.pauses);
    if !same || !rec.paused || rec.feeding.is_some() || rec.stopping {
        return Ok(());
    }
    let policy = Policy::load()?;
    if let Err(e) = set_paused(call, &mut rec, false, None, &policy) {
        alarm(
            "pbx.recording.resume",
            call,
            json!({ "recording": rec.rid, "why": e.code }),
        )?;
    }
    Ok(())
}

/// A key pressed on `leg` of call `call` by `user` (a user of the
/// tenant; keys from outside parties control nothing): `*` then a digit
/// within 3 s is a code. A code the policy does not allow this user does
/// nothing (a phone has no screen for it) but is audited as refused.
pub fn pressed(call: &str, leg: &str, user: &str, key: char, at_ms: u64) -> Result<(), Error> {
    let star = format!("star/{leg}");
    if key == '*' {
        return kv::set(&star, at_ms.to_string());
    }
    let Some(then) = kv::get(&star)? else {
        return Ok(());
    };
    kv::delete(&star)?;
    let then: u64 = String::from_utf8_lossy(&then).parse().unwrap_or(0);
    if user.is_empty() || at_ms.saturating_sub(then) > CODE_MS {
        return Ok(());
    }
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
    if let Err(e) = act(call, user, action) {
        audit::append(
            "pbx.recording.refused",
            &target(call),
            audit::Outcome::Denied,
            &json!({ "by": user, "action": action.as_str(), "why": e.code }).to_string(),
        )?;
    }
    Ok(())
}

/// A transfer moves call `call`'s recorded leg to someone else: its
/// recording ends (sealed), and the new pair is weighed afresh; with
/// `hand_off_to`, the leg goes to that plugin's number once the host's
/// recording has ended. Whether a recording was running.
pub fn transferring(call: &str, hand_off_to: Option<&str>) -> Result<bool, Error> {
    let Some(mut rec) = load(call)? else {
        return Ok(false);
    };
    if rec.feeding.is_none() && !rec.stopping {
        calls::stop(&rec.op)?;
        rec.stopping = true;
        audit::success(
            "pbx.recording.stop",
            &target(call),
            json!({ "recording": rec.rid, "why": "transfer" }),
        )
        .map_err(api)?;
    }
    rec.again = hand_off_to.is_none();
    rec.hand_off_to = hand_off_to.map(str::to_string);
    save(call, &rec)?;
    Ok(rec.feeding.is_none())
}

/// The host's recording on `leg` ended: a deferred hand-off goes ahead,
/// parties out of their bridge for an announcement go back in, and the
/// audio is handed over (nothing here fails for the recording plugin's
/// sake: what it refuses is tried again by timer).
pub fn recorded(leg: &str, r: &Recorded) -> Result<(), Error> {
    let Some(mut rec) = load(leg)? else {
        return Ok(());
    };
    if r.op != rec.op || rec.feeding.is_some() {
        return Ok(());
    }
    if !rec.stopping && r.end != OpEnd::Hangup {
        // The 4 h cap, or a full quota, ended it while the call goes on.
        alarm(
            "pbx.recording.cut",
            leg,
            json!({ "recording": rec.rid, "why": if r.end == OpEnd::Done { "longest recording reached" } else { "storage quota full" } }),
        )?;
    }
    if let Some(number) = rec.hand_off_to.take() {
        match calls::hand_off(leg, &number) {
            Ok(()) | Err(Error::NotFound(_) | Error::InvalidArgument(_)) => {}
            Err(e) => return Err(e),
        }
    } else if !rec.announcing.is_empty() {
        rejoin(&rec.parties)?;
    }
    let size = if r.blob.is_empty() {
        0
    } else {
        blobs::size(&r.blob)?
    };
    rec.announcing.clear();
    rec.feeding = Some(Feed {
        blob: r.blob.clone(),
        offset: 0,
        size,
        seq: 0,
        chunk: CHUNK,
        ms: r.ms,
        failed: 0,
    });
    // The first turn now (a short call is sealed at once); what fails
    // or remains goes on by timer.
    feed_rec(leg, rec)
}

/// A turn of handing over a call's audio. What fails is tried again
/// later (backing off); after [`MAX_FAILED_TURNS`] the staging blob is
/// kept and the audit asks for an admin.
pub fn feed(call: &str) -> Result<(), Error> {
    match load(call)? {
        Some(rec) => feed_rec(call, rec),
        None => Ok(()),
    }
}

fn feed_rec(call: &str, mut rec: CallRec) -> Result<(), Error> {
    let Some(mut f) = rec.feeding.clone() else {
        return Ok(());
    };
    match feed_turn(&rec, &mut f) {
        Ok(Turn::More) => {
            f.failed = 0;
            rec.feeding = Some(f);
            save(call, &rec)?;
            timers::schedule(std::time::Duration::ZERO, "feed", call.as_bytes())?;
            Ok(())
        }
        Ok(Turn::Done) => finish(call, &rec, &f, true),
        Ok(Turn::Cut(why)) => {
            // The recording plugin sealed it with what it took (the
            // owner's quota is full): the rest stays in the staging blob
            // for an admin to recover, and the audit says so.
            alarm(
                "pbx.recording.cut",
                call,
                json!({ "recording": rec.rid, "why": why, "kept_chunks": f.seq, "staging_blob": f.blob }),
            )?;
            finish(call, &rec, &f, false)
        }
        Err(e) => {
            f.failed += 1;
            if f.failed == MAX_FAILED_TURNS {
                alarm(
                    "pbx.recording.stuck",
                    call,
                    json!({ "recording": rec.rid, "why": e.code, "message": e.message, "handed_over_chunks": f.seq, "staging_blob": f.blob }),
                )?;
            }
            let wait = 1u64 << f.failed.min(12);
            rec.feeding = Some(f);
            save(call, &rec)?;
            timers::schedule(
                std::time::Duration::from_secs(wait),
                "feed",
                call.as_bytes(),
            )?;
            Ok(())
        }
    }
}

enum Turn {
    More,
    Done,
    /// The recording plugin took no more (why).
    Cut(String),
}

/// Hands over up to [`CHUNKS_PER_TURN`] chunks.
fn feed_turn(rec: &CallRec, f: &mut Feed) -> Result<Turn, ApiError> {
    for _ in 0..CHUNKS_PER_TURN {
        if f.offset >= f.size {
            return Ok(Turn::Done);
        }
        let data = blobs::read(&f.blob, f.offset, f.chunk)?;
        if data.is_empty() {
            // The blob is shorter than it was: what it has is handed over.
            return Ok(Turn::Done);
        }
        let path = format!("/recordings/{}/chunks/{}", rec.rid, f.seq + 1);
        let r = plugins::call_with_headers(
            RECORDING,
            Method::Put,
            &path,
            &[("content-type".into(), "application/octet-stream".into())],
            &data,
        )?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let code = v["code"].as_str().unwrap_or_default();
        match r.status {
            200 | 201 => {
                f.offset += data.len() as u64;
                f.seq += 1;
            }
            413 if f.chunk > MIN_CHUNK => f.chunk /= 2,
            409 if code == "quota_exceeded" || code == "recording_stopped" => {
                return Ok(Turn::Cut(code.to_string()));
            }
            status => {
                return Err(ApiError::new(
                    502,
                    "recording_failed",
                    format!(
                        "the recording plugin refused chunk {} ({status} {code})",
                        f.seq + 1
                    ),
                ));
            }
        }
    }
    Ok(if f.offset >= f.size {
        Turn::Done
    } else {
        Turn::More
    })
}

/// Stops and seals the recording (unless the recording plugin did),
/// destroys the staging copy (unless audio was left in it) and forgets
/// the recording; a transfer's new pair is then weighed against the
/// policy.
fn finish(call: &str, rec: &CallRec, f: &Feed, complete: bool) -> Result<(), Error> {
    if complete {
        let path = format!("/recordings/{}/stop", rec.rid);
        let r = plugins::call(RECORDING, Method::Post, &path, b"")?;
        if r.status >= 500 {
            return Err(Error::Internal(format!(
                "the recording plugin failed to seal ({})",
                r.status
            )));
        }
        if !f.blob.is_empty() {
            match blobs::delete(&f.blob) {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    kv::delete(key(call))?;
    audit::success(
        "pbx.recording.sealed",
        &target(call),
        json!({ "recording": rec.rid, "chunks": f.seq, "bytes": f.offset, "ms": f.ms }),
    )
    .map_err(api)?;
    if rec.again {
        again(call)?;
    }
    Ok(())
}

/// After a transfer: the call's pair as it is now, weighed afresh.
fn again(call: &str) -> Result<(), Error> {
    let Ok(me) = calls::get_leg(call) else {
        return Ok(());
    };
    let Some(other) = me.bridged_with.clone() else {
        // Not connected yet: the new party's answer weighs it.
        return Ok(());
    };
    let them = calls::get_leg(&other)?;
    if me.state != LegState::Answered || them.state != LegState::Answered {
        return Ok(());
    }
    let mut users = users_of(call)?;
    users.sort();
    begin(
        call,
        &other,
        &users,
        &numbers(&me, &them),
        title(&me, &them),
    )
    .map(|_| ())
}

/// The watch over a recorded call: while its leg is there, again later;
/// a leg gone without its recording handed over (the server stopped
/// mid-call, and with it the host's recording) closes the recording with
/// what it holds (nothing), audited as lost.
pub fn watch(call: &str) -> Result<(), Error> {
    let Some(rec) = load(call)? else {
        return Ok(());
    };
    if rec.feeding.is_some() {
        return Ok(());
    }
    match calls::get_leg(call) {
        Err(Error::NotFound(_)) => {}
        Ok(_) => {
            timers::schedule(WATCH, "watch", call.as_bytes())?;
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let path = format!("/recordings/{}/stop", rec.rid);
    let r = plugins::call(RECORDING, Method::Post, &path, b"")?;
    if r.status >= 500 {
        return Err(Error::Internal(format!(
            "the recording plugin failed to seal ({})",
            r.status
        )));
    }
    kv::delete(key(call))?;
    alarm(
        "pbx.recording.lost",
        call,
        json!({ "recording": rec.rid, "why": "the call's recording ended without its audio (the server stopped)" }),
    )
}

/// A transfer makes the party on `leg` of call `call` the caller of a
/// new call (keyed by `leg`): its user goes along.
pub fn carry(call: &str, leg: &str) -> Result<(), Error> {
    let prefix = format!("on/{call}/");
    for e in kv::scan(&prefix, None, 16)?.entries {
        let user = String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned();
        if kv::get(mine(&user, call))?.is_some_and(|l| l == leg.as_bytes()) {
            kv::set(mine(&user, leg), leg)?;
            kv::set(on(leg, &user), b"")?;
        }
    }
    Ok(())
}

/// A party's leg `leg` left call `call` (ended, transferred away, handed
/// to another plugin): the call leaves its user's list.
pub fn left(call: &str, leg: &str, user: &str) -> Result<(), Error> {
    if !user.is_empty() && kv::get(mine(user, call))?.is_some_and(|l| l == leg.as_bytes()) {
        kv::delete(mine(user, call))?;
        kv::delete(on(call, user))?;
    }
    kv::delete(format!("star/{leg}")).map(|_| ())
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

fn view(call: &str, rec: Option<&CallRec>) -> serde_json::Value {
    let state = match rec {
        None => "off",
        Some(r) if r.feeding.is_some() || r.stopping => "sealing",
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
