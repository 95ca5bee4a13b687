//! Call recording under the tenant's policy (SPEC R1-R5 for calls; the
//! policy is `policy.rs`). A call is recorded on its caller's leg, which
//! hears the other party: the host mixes both sides into a blob of this
//! plugin as the call goes, and drops the audio while the recording is
//! paused (card numbers read out, PCI). The recording itself is the
//! `recording` plugin's, opened when recording starts (so the parties'
//! web clients are told at once, `recording.started`) with source
//! `call:{caller leg}`, the user it belongs to (their quota, their
//! access) and the other party's user as a participant; pauses and
//! resumptions reach it as they happen. When the recording ends (the
//! call ends, or the user stops an on-demand one) the audio is handed
//! over as numbered chunks into its hash chain and the recording is
//! stopped and sealed, so `verify` proves a call as it proves a meeting;
//! the staging blob is then destroyed.
//!
//! Everyone on the call hears the announcement when recording starts
//! (unless the policy is silent, audited so): on the answer, before the
//! parties are bridged; mid-call, out of the bridge and back in once
//! both have heard it; a party joining a recorded call (a transfer)
//! hears it before being bridged in.
//!
//! Uses `policy`.

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_sdk::calls::{self, LegState, RecordOpts, Recorded};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Error, Method, PrincipalKind, Request, Response, audit, blobs, kv, plugins};

use crate::policy::{Mode, Policy};

/// The recording plugin.
const RECORDING: &str = "recording";
/// Longest recording the host takes (4 h); a call going on longer is
/// recorded up to there.
const MAX_MS: u32 = 14_400_000;
/// First chunk size tried; halved while the recording plugin finds it
/// too large (its `max-chunk-kib`), down to 16 KiB.
const CHUNK: u32 = 1 << 20;
const MIN_CHUNK: u32 = 16 << 10;
/// Chunks handed over per invocation (a timer carries on).
const CHUNKS_PER_TURN: u32 = 4;
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
    /// Announcements still playing, (leg, op): the parties are bridged
    /// when the last one ends.
    #[serde(default)]
    pub announcing: Vec<(String, String)>,
    /// After the call: the audio being handed over.
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
}

fn key(call: &str) -> String {
    format!("rec/{call}")
}

/// Call `call` in `user`'s list (`GET /calls`)...
fn mine(user: &str, call: &str) -> String {
    format!("mine/{user}/{call}")
}

/// ...and the other way round: `user` on call `call`.
fn on(call: &str, user: &str) -> String {
    format!("on/{call}/{user}")
}

/// The users of the tenant on call `call`.
fn users_of(call: &str) -> Result<Vec<String>, Error> {
    let prefix = format!("on/{call}/");
    Ok(kv::scan(&prefix, None, 16)?
        .entries
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned())
        .collect())
}

pub fn load(call: &str) -> Result<Option<CallRec>, Error> {
    kv::get_json(key(call))
}

fn save(call: &str, rec: &CallRec) -> Result<(), Error> {
    kv::set_json(key(call), rec)
}

/// What the policy matches a call by: its parties' users and numbers.
struct Parties {
    users: Vec<String>,
    numbers: Vec<String>,
}

impl Parties {
    fn of(caller: &calls::LegSnapshot, callee: &calls::LegSnapshot, callee_user: &str) -> Parties {
        Parties {
            users: [caller.user.clone().unwrap_or_default(), callee_user.into()]
                .into_iter()
                .filter(|u| !u.is_empty())
                .collect(),
            numbers: vec![
                caller.caller.clone(),
                caller.callee.clone(),
                callee.callee.clone(),
            ],
        }
    }

    fn users(&self) -> Vec<&str> {
        self.users.iter().map(String::as_str).collect()
    }

    fn numbers(&self) -> Vec<&str> {
        self.numbers.iter().map(String::as_str).collect()
    }
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

/// The callee leg `callee` (rung for `user`) answered the call on leg
/// `call`. Both parties' calls are listed for them (`GET /calls`). A
/// call the policy records always starts recording, and one that is
/// being recorded already (a transfer brought a new party) goes on: in
/// both cases the new party (and, at the start, both) hear the
/// announcement first. Returns whether this took over bridging them
/// (after the announcement).
pub fn answered(call: &str, callee: &str, user: &str) -> Result<bool, Error> {
    let (a, b) = (calls::get_leg(call)?, calls::get_leg(callee)?);
    let parties = Parties::of(&a, &b, user);
    for u in &parties.users {
        kv::set(mine(u, call), b"")?;
        kv::set(on(call, u), b"")?;
    }
    let policy = Policy::load()?;
    if let Some(mut rec) = load(call)? {
        if rec.feeding.is_some() {
            return Ok(false);
        }
        // A new party: told, and named in the recording.
        rec.parties = vec![call.to_string(), callee.to_string()];
        if !user.is_empty() && user != rec.owner {
            plugins::call_ok(
                RECORDING,
                Method::Post,
                &format!("/recordings/{}/participants", rec.rid),
                &json!({ "users": [user] }),
            )
            .map_err(api)?;
        }
        let took = match policy.prompt()? {
            Some(p) => {
                calls::stop_plays(call)?;
                let op = calls::play(callee, &[p], false)?;
                rec.announcing = vec![(callee.to_string(), op)];
                true
            }
            None => false,
        };
        save(call, &rec)?;
        return Ok(took);
    }
    if !policy.always(&parties.users(), &parties.numbers()) {
        return Ok(false);
    }
    // The recording is the policy's user's: one the policy names, else
    // the tenant's user on the call (the callee first).
    let named = parties
        .users
        .iter()
        .find(|u| policy.always(&[u.as_str()], &[]))
        .or_else(|| parties.users.last());
    let Some(owner) = named.cloned() else {
        // No user of the tenant on the call (a forward out of an outside
        // call): nobody's quota to hold it; said in the audit.
        audit::success(
            "pbx.recording.skipped",
            &format!("call/{call}"),
            json!({ "why": "no user of the tenant on the call" }),
        )
        .map_err(|e| Error::Internal(e.message))?;
        return Ok(false);
    };
    let others: Vec<String> = parties
        .users
        .iter()
        .filter(|u| **u != owner)
        .cloned()
        .collect();
    let started = start(
        call,
        callee,
        Start {
            mode: Mode::Always,
            owner,
            participants: others,
            title: title(&a, &b),
            by: None,
        },
        &policy,
    );
    match started {
        Ok(rec) => Ok(!rec.announcing.is_empty()),
        Err(e) if e.status < 500 || e.code.ends_with("_failed") => {
            // The recording plugin refused or is not there: the call goes
            // on unrecorded, and the audit says why (an admin's alarm).
            audit::append(
                "pbx.recording.start",
                &format!("call/{call}"),
                audit::Outcome::Failure,
                &json!({ "mode": "always", "why": e.code, "message": e.message }).to_string(),
            )?;
            Ok(false)
        }
        Err(e) => Err(api(e)),
    }
}

fn api(e: ApiError) -> Error {
    Error::Internal(format!("{}: {}", e.code, e.message))
}

struct Start {
    mode: Mode,
    owner: String,
    participants: Vec<String>,
    title: String,
    /// The user who started it (on demand), none for the policy.
    by: Option<String>,
}

/// Opens the recording, starts the host's, and has both parties hear the
/// announcement out of their bridge (bridged again when both heard it).
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
    let op = calls::record(
        call,
        &RecordOpts {
            owner: None,
            class: "recording".into(),
            max_ms: MAX_MS,
            silence_ms: 0,
            terminators: String::new(),
        },
    )?;
    let mut announcing = Vec::new();
    if let Some(prompt) = policy.prompt()? {
        calls::unbridge(call)?;
        for leg in [call, other] {
            calls::stop_plays(leg)?;
            announcing.push((
                leg.to_string(),
                calls::play(leg, std::slice::from_ref(&prompt), false)?,
            ));
        }
    }
    let rec = CallRec {
        parties: vec![call.to_string(), other.to_string()],
        mode: s.mode,
        owner: s.owner,
        rid,
        op,
        paused: false,
        announcing,
        feeding: None,
    };
    save(call, &rec)?;
    switchboard_sdk::timers::schedule(WATCH, "watch", call.as_bytes())?;
    audit::success(
        "pbx.recording.start",
        &format!("call/{call}"),
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
    if !rec.announcing.is_empty() {
        return Ok(());
    }
    let live = |l: &str| calls::get_leg(l).is_ok_and(|s| s.state == LegState::Answered);
    if let [a, b] = &rec.parties[..]
        && live(a)
        && live(b)
    {
        calls::bridge(a, b)?;
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

/// Carries out `action` on call `call` for `user` (a party of it).
fn act(call: &str, user: &str, action: Action) -> Result<Option<CallRec>, ApiError> {
    let policy = Policy::load()?;
    let rec = load(call)?;
    let refuse = |status, code: &str, msg: &str| Err(ApiError::new(status, code, msg));
    if rec.as_ref().is_some_and(|r| r.feeding.is_some()) {
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
            let numbers = [me.caller.as_str(), me.callee.as_str(), them.callee.as_str()];
            if !policy.on_demand(user, &numbers) {
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
        (Action::Stop, Some(rec)) => {
            if rec.mode == Mode::Always {
                return refuse(
                    409,
                    "recording_required",
                    "the tenant's policy records this call to its end",
                );
            }
            if !policy.on_demand(user, &[]) && rec.owner != user {
                return refuse(
                    403,
                    "not_permitted",
                    "the tenant's policy does not let you stop it",
                );
            }
            calls::stop(&rec.op)?;
            audit::success(
                "pbx.recording.stop",
                &format!("call/{call}"),
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
            if rec.paused == pause {
                return Ok(Some(rec));
            }
            let (verb, path) = if pause {
                ("pause", format!("/recordings/{}/pause", rec.rid))
            } else {
                ("resume", format!("/recordings/{}/resume", rec.rid))
            };
            if pause {
                calls::pause(&rec.op)?;
            } else {
                calls::resume(&rec.op)?;
            }
            plugins::call_ok(RECORDING, Method::Post, &path, &serde_json::Value::Null)?;
            rec.paused = pause;
            save(call, &rec)?;
            audit::success(
                &format!("pbx.recording.{verb}"),
                &format!("call/{call}"),
                json!({ "recording": rec.rid, "by": user }),
            )?;
            Ok(Some(rec))
        }
    }
}

/// A key pressed on `leg` of call `call` by `user` (a user of the
/// tenant; keys from outside parties control nothing): `*` then a digit
/// within 3 s is a code.
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
    let action = if code == policy.start_code {
        match load(call)? {
            Some(_) => Action::Stop,
            None => Action::Start,
        }
    } else if code == policy.pause_code {
        match load(call)? {
            Some(r) if r.paused => Action::Resume,
            Some(_) => Action::Pause,
            None => return Ok(()),
        }
    } else {
        return Ok(());
    };
    // A code the policy does not allow this user does nothing (refused
    // and said so in the API; a phone has no screen for it).
    match act(call, user, action) {
        Ok(_) => Ok(()),
        Err(e) if e.status < 500 => Ok(()),
        Err(e) => Err(api(e)),
    }
}

/// The host's recording on `leg` ended: the audio is handed over to the
/// recording plugin, then the recording is sealed.
pub fn recorded(leg: &str, r: &Recorded) -> Result<(), Error> {
    let Some(mut rec) = load(leg)? else {
        return Ok(());
    };
    if r.op != rec.op || rec.feeding.is_some() {
        return Ok(());
    }
    if rec.paused {
        // The call ended (or stopped) while paused: the pause ends here.
        plugins::call_ok(
            RECORDING,
            Method::Post,
            &format!("/recordings/{}/resume", rec.rid),
            &serde_json::Value::Null,
        )
        .map_err(api)?;
        rec.paused = false;
    }
    let size = if r.blob.is_empty() {
        0
    } else {
        blobs::size(&r.blob)?
    };
    rec.feeding = Some(Feed {
        blob: r.blob.clone(),
        offset: 0,
        size,
        seq: 0,
        chunk: CHUNK,
        ms: r.ms,
    });
    rec.announcing.clear();
    feed_turn(leg, rec)
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
            switchboard_sdk::timers::schedule(WATCH, "watch", call.as_bytes())?;
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
    audit::append(
        "pbx.recording.lost",
        &format!("call/{call}"),
        audit::Outcome::Failure,
        &json!({ "recording": rec.rid, "why": "the call's recording ended without its audio (the server stopped)" }).to_string(),
    )
}

/// A timer carries on handing over a long call's audio.
pub fn feed(call: &str) -> Result<(), Error> {
    match load(call)? {
        Some(rec) if rec.feeding.is_some() => feed_turn(call, rec),
        _ => Ok(()),
    }
}

/// Hands over up to [`CHUNKS_PER_TURN`] chunks; the last turn stops and
/// seals the recording and destroys the staging blob.
fn feed_turn(call: &str, mut rec: CallRec) -> Result<(), Error> {
    let Some(mut f) = rec.feeding.clone() else {
        return Ok(());
    };
    let mut turns = 0;
    while f.offset < f.size && turns < CHUNKS_PER_TURN {
        let data = blobs::read(&f.blob, f.offset, f.chunk)?;
        if data.is_empty() {
            break;
        }
        let path = format!("/recordings/{}/chunks/{}", rec.rid, f.seq + 1);
        let r = plugins::call_with_headers(
            RECORDING,
            Method::Put,
            &path,
            &[("content-type".into(), "application/octet-stream".into())],
            &data,
        )?;
        match r.status {
            200 | 201 => {
                f.offset += data.len() as u64;
                f.seq += 1;
            }
            413 if f.chunk > MIN_CHUNK => f.chunk /= 2,
            409 => {
                // Sealed by the recording plugin (the owner's quota is
                // full) with what it took: nothing more goes in.
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                audit::success(
                    "pbx.recording.cut",
                    &format!("call/{call}"),
                    json!({ "recording": rec.rid, "why": v["code"], "kept_chunks": f.seq }),
                )
                .map_err(api)?;
                return finish(call, &rec, &f, false);
            }
            status => {
                return Err(Error::Internal(format!(
                    "the recording plugin refused chunk {} ({status})",
                    f.seq + 1
                )));
            }
        }
        turns += 1;
    }
    if f.offset < f.size {
        rec.feeding = Some(f);
        save(call, &rec)?;
        switchboard_sdk::timers::schedule(std::time::Duration::ZERO, "feed", call.as_bytes())?;
        return Ok(());
    }
    finish(call, &rec, &f, true)
}

/// Stops and seals the recording (unless the recording plugin did),
/// destroys the staging copy and forgets the call.
fn finish(call: &str, rec: &CallRec, f: &Feed, stop: bool) -> Result<(), Error> {
    if stop {
        let path = format!("/recordings/{}/stop", rec.rid);
        let r = plugins::call(RECORDING, Method::Post, &path, b"")?;
        if r.status >= 500 {
            return Err(Error::Internal(format!(
                "the recording plugin failed to seal ({})",
                r.status
            )));
        }
    }
    if !f.blob.is_empty() {
        match blobs::delete(&f.blob) {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    kv::delete(key(call))?;
    audit::success(
        "pbx.recording.sealed",
        &format!("call/{call}"),
        json!({ "recording": rec.rid, "chunks": f.seq, "bytes": f.offset, "ms": f.ms }),
    )
    .map_err(api)
}

/// A party's leg ended: the call leaves its user's list.
pub fn ended(call: &str, leg: &str, user: &str) -> Result<(), Error> {
    if !user.is_empty() {
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
        Some(r) if r.feeding.is_some() => "sealing",
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
/// is recorded.
pub fn list(req: &Request, _: &Params) -> Result<Response, ApiError> {
    let user = me(req)?;
    let prefix = format!("mine/{user}/");
    let page = kv::scan(&prefix, None, 50)?;
    let mut out = Vec::new();
    for e in page.entries {
        let call = String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned();
        let live = calls::get_leg(&call).is_ok_and(|l| l.state == LegState::Answered);
        if live {
            out.push(view(&call, load(&call)?.as_ref()));
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
/// on one of the signed-in user's calls.
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
    let live = calls::get_leg(call).is_ok_and(|l| l.state == LegState::Answered);
    if kv::get(mine(&user, call))?.is_none() || !live {
        return Err(ApiError::new(
            404,
            "call_not_found",
            "no such call of yours",
        ));
    }
    let rec = act(call, &user, ask.action)?;
    Ok(http::json(200, &view(call, rec.as_ref())))
}
