//! Live sessions (SPEC M5-M8): started by the organizer or an invitee, one
//! at a time per space, ended by the organizer or the starter or by the
//! server at 24 hours (a durable timer, and a check on every access should
//! the timer be lost). Registered users of the tenant with the code join
//! directly; guests get a guest session scoped to the one live session and
//! wait until a registered participant admits them (the waiting room);
//! PSTN callers are brought in by a telephony plugin. Registered
//! participants remove others and invite more; the roster reaches
//! everyone present in real time.
//!
//! Below `spaces.rs` (deleting a space ends its session here) and
//! `media.rs` (which acts inside the sessions loaded here); above
//! `members.rs`, for the space and its roles, and `guess.rs`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::plugins::{call_gone_ok, call_json, call_ok};
use switchboard_sdk::{
    Method, PrincipalKind, Request, audit, calls, config, crypto, events, identity, kv, log,
    timers, tx,
};

use crate::guess::Attempt;
use crate::members::{self, MAX_INVITEES};
use crate::model::{self, Kind, Live, Participant, Role, Space, State};
use crate::{Reply, registered, source_address};

/// The longest a live session runs (M5).
pub const MAX_LIVE: Duration = Duration::from_secs(24 * 3600);
/// People in a session at once (present), and guests waiting.
const MAX_PRESENT: usize = 1000;
const MAX_WAITING: usize = 100;
/// Guest sessions handed out per live session.
const MAX_GUEST_SESSIONS: u32 = 500;
/// Participant records read per session (everyone who ever came).
const MAX_RECORDS: usize = 5000;
/// Users invited in one call.
const MAX_INVITE_BATCH: usize = 50;

fn max_live_ms() -> u64 {
    u64::try_from(MAX_LIVE.as_millis()).unwrap_or(u64::MAX)
}

pub fn not_found() -> ApiError {
    ApiError::new(
        404,
        "live_not_found",
        "no such live session, or you are not in it",
    )
}

fn ended_error() -> ApiError {
    ApiError::new(409, "live_ended", "this live session has ended")
}

/// Live session `lid`. One past its 24 hours whose timer has not ended it
/// (the timer failed or is late) is ended now.
pub fn load(lid: &str) -> Result<Live, ApiError> {
    http::check_id(lid, "live session")?;
    let live = kv::get_json::<Live>(model::live(lid))?.ok_or_else(not_found)?;
    if live.ended_at.is_none()
        && switchboard_sdk::now_ms() >= live.started_at.saturating_add(max_live_ms())
    {
        let ended = end_session(lid, None)?;
        // The end stands whatever this request answers next (callers
        // refuse ended sessions with a 4xx before writing anything).
        tx::keep_writes();
        return Ok(ended);
    }
    Ok(live)
}

fn save(live: &Live) -> Result<(), ApiError> {
    kv::set_json(model::live(&live.id), live)?;
    Ok(())
}

/// Everyone who ever came to session `lid`, in id order.
pub fn participants(lid: &str) -> Result<Vec<Participant>, ApiError> {
    kv::scan_all(model::participants_prefix(lid), MAX_RECORDS)?
        .iter()
        .map(|e| {
            serde_json::from_slice::<Participant>(&e.value)
                .map_err(|e| ApiError::new(500, "corrupt_record", e.to_string()))
        })
        .collect()
}

fn participant(lid: &str, pid: &str) -> Result<Option<Participant>, ApiError> {
    Ok(kv::get_json::<Participant>(model::participant(lid, pid))?)
}

/// Participant `pid` (checked) of session `lid` when `keep` holds for
/// them; `404 participant_not_found` otherwise, saying `who`.
pub fn participant_where(
    lid: &str,
    pid: &str,
    keep: impl Fn(&Participant) -> bool,
    who: &str,
) -> Result<Participant, ApiError> {
    http::check_user_id(pid)?;
    participant(lid, pid)?
        .filter(keep)
        .ok_or_else(|| ApiError::new(404, "participant_not_found", who))
}

fn put(lid: &str, p: &Participant) -> Result<(), ApiError> {
    kv::set_json(model::participant(lid, &p.id), p)?;
    Ok(())
}

fn ids_in(all: &[Participant], state: State) -> Vec<String> {
    all.iter()
        .filter(|p| p.state == state)
        .map(|p| p.id.clone())
        .collect()
}

fn public_view(p: &Participant) -> Value {
    json!({ "id": p.id, "kind": p.kind, "role": p.role, "name": p.name, "since": p.since })
}

/// The session as a participant sees it: who is present, the recording,
/// and (for registered participants) who waits.
fn view(live: &Live, all: &[Participant], with_waiting: bool) -> Value {
    let mut v = crate::to_value(live);
    v["participants"] = all
        .iter()
        .filter(|p| p.state == State::Present)
        .map(public_view)
        .collect();
    if with_waiting {
        v["waiting"] = all
            .iter()
            .filter(|p| p.state == State::Waiting)
            .map(public_view)
            .collect();
    }
    v
}

/// Tells everyone present who is in the session now (M8).
fn announce_roster(live: &Live, all: &[Participant]) -> Result<(), ApiError> {
    let present = ids_in(all, State::Present);
    let people: Vec<Value> = all
        .iter()
        .filter(|p| p.state == State::Present)
        .map(public_view)
        .collect();
    let waiting = all.iter().filter(|p| p.state == State::Waiting).count();
    let data =
        json!({ "live": live.id, "space": live.space, "participants": people, "waiting": waiting });
    events::publish_to_users(&present, "meeting.roster", data.to_string().as_bytes())?;
    Ok(())
}

/// Tells the registered participants present who waits in the lobby (M7).
fn announce_lobby(live: &Live, all: &[Participant]) -> Result<(), ApiError> {
    let admitters: Vec<String> = all
        .iter()
        .filter(|p| p.state == State::Present && p.kind == Kind::Registered)
        .map(|p| p.id.clone())
        .collect();
    let waiting: Vec<Value> = all
        .iter()
        .filter(|p| p.state == State::Waiting)
        .map(public_view)
        .collect();
    let data = json!({ "live": live.id, "waiting": waiting });
    events::publish_to_users(&admitters, "meeting.lobby", data.to_string().as_bytes())?;
    Ok(())
}

fn tell(users: &[String], kind: &str, data: &Value) -> Result<(), ApiError> {
    events::publish_to_users(users, kind, data.to_string().as_bytes())?;
    Ok(())
}

/// The calling user or guest, checked against the session: a guest's
/// session must be scoped to this very live session.
fn caller(req: &Request, live: &Live) -> Result<(String, Option<Participant>), ApiError> {
    let me = req.user()?.to_string();
    match req.principal.kind {
        PrincipalKind::Registered => {}
        PrincipalKind::Guest => {
            if req.header("x-switchboard-guest-resource") != Some(&model::guest_scope(&live.id)) {
                return Err(ApiError::new(
                    403,
                    "guest_scope",
                    "this guest session belongs to another meeting",
                ));
            }
        }
        _ => {
            return Err(ApiError::new(
                403,
                "not_allowed",
                "live sessions are for users and guests",
            ));
        }
    }
    let p = participant(&live.id, &me)?;
    Ok((me, p))
}

/// The caller as a participant present in the running session.
pub fn in_session(req: &Request, live: &Live) -> Result<Participant, ApiError> {
    let (_, p) = caller(req, live)?;
    if live.ended_at.is_some() {
        return Err(ended_error());
    }
    match p {
        Some(p) if p.state == State::Present => Ok(p),
        Some(p) if p.state == State::Waiting => Err(ApiError::new(
            403,
            "not_admitted",
            "you are waiting to be admitted",
        )),
        _ => Err(ApiError::new(
            409,
            "not_in_session",
            "you are not in this live session",
        )),
    }
}

/// The caller as a registered participant present in the session (who
/// admits, rejects, removes, invites and records).
pub fn registered_in_session(req: &Request, live: &Live) -> Result<Participant, ApiError> {
    if req.principal.kind != PrincipalKind::Registered {
        let _ = caller(req, live)?;
        return Err(ApiError::new(
            403,
            "registered_only",
            "only registered participants do this",
        ));
    }
    in_session(req, live)
}

fn display_name(user: &str) -> Result<String, ApiError> {
    Ok(identity::lookup_user(user)?
        .map(|u| u.display_name)
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| user.to_string()))
}

fn space_of(live: &Live) -> Result<Space, ApiError> {
    kv::get_json::<Space>(model::space(&live.space))?.ok_or_else(members::not_found)
}

fn chat_members(sid: &str, add: &[String]) -> Result<(), ApiError> {
    if add.is_empty() {
        return Ok(());
    }
    call_ok(
        "chat",
        Method::Post,
        &format!("/owned/space:{sid}/members"),
        &json!({ "users": add }),
    )?;
    Ok(())
}

fn chat_remove(sid: &str, user: &str) -> Result<(), ApiError> {
    call_gone_ok(
        "chat",
        Method::Delete,
        &format!("/owned/space:{sid}/members/{user}"),
    )
}

/// Tells `who` (a later joiner) that the session is being recorded and
/// adds them to the recording's participants (M9). A recording that has
/// stopped meanwhile (its initiator stopped it through the recording
/// plugin, or their quota ran out) is forgotten instead.
fn tell_recording(live: &Live, who: &str) -> Result<(), ApiError> {
    let Some(rec) = &live.recording else {
        return Ok(());
    };
    let state = call_ok(
        "recording",
        Method::Post,
        &format!("/recordings/{}/participants", rec.id),
        &json!({ "users": [who] }),
    )?;
    if !running(&state) {
        return forget_recording(live);
    }
    tell(
        &[who.to_string()],
        "meeting.recording",
        &json!({ "live": live.id, "on": true, "recording": rec.id, "by": rec.by, "since": rec.started_at }),
    )
}

fn running(recording: &Value) -> bool {
    matches!(recording["state"].as_str(), Some("recording" | "paused"))
}

fn forget_recording(live: &Live) -> Result<(), ApiError> {
    let mut fresh = kv::get_json::<Live>(model::live(&live.id))?.ok_or_else(not_found)?;
    fresh.recording = None;
    save(&fresh)
}

/// The session's recording if it is still running, as far as the caller
/// can see it; one that has stopped outside meetings is forgotten here.
pub fn current_recording(live: &Live) -> Result<Option<model::Recording>, ApiError> {
    let Some(rec) = live.recording.clone() else {
        return Ok(None);
    };
    let (status, v) = call_json(
        "recording",
        Method::Get,
        &format!("/recordings/{}", rec.id),
        &Value::Null,
    )?;
    if status < 400 && !running(&v) {
        forget_recording(live)?;
        return Ok(None);
    }
    Ok(Some(rec))
}

/// Refuses one more participant in `state` when `max` are in it already,
/// or the session holds as many records as it may.
fn check_room(
    all: &[Participant],
    state: State,
    max: usize,
    code: &str,
    message: String,
) -> Result<(), ApiError> {
    if all.iter().filter(|p| p.state == state).count() >= max || all.len() >= MAX_RECORDS {
        return Err(ApiError::new(409, code, message));
    }
    Ok(())
}

fn check_capacity(all: &[Participant]) -> Result<(), ApiError> {
    check_room(
        all,
        State::Present,
        MAX_PRESENT,
        "session_full",
        format!("at most {MAX_PRESENT} people take part at once"),
    )
}

// ---- start, join ------------------------------------------------------------------

/// `POST /spaces/{sid}/live`: starts the space's live session (organizer
/// or invitee); one at a time.
pub fn start(req: &Request, p: &Params) -> Reply {
    let me = registered(req)?;
    let mut space = members::load(p.get("sid").unwrap_or_default())?;
    let role = members::role_of(&me, &space.id)?.ok_or_else(members::not_found)?;
    if role == Role::Attended {
        return Err(ApiError::new(
            403,
            "organizer_or_invitee",
            "live sessions are started by the organizer or an invitee",
        ));
    }
    if let Some(lid) = space.live.clone() {
        // A session past its limit whose timer was lost ends here.
        if load(&lid)?.ended_at.is_none() {
            return Err(ApiError::new(
                409,
                "live_exists",
                format!("this space's live session {lid} is running"),
            ));
        }
        space = members::load(&space.id)?;
    }
    let now = switchboard_sdk::now_ms();
    let id = crypto::random_id();
    let end_timer = timers::schedule(MAX_LIVE, "end-live", id.as_bytes())?;
    let live = Live {
        id: id.clone(),
        space: space.id.clone(),
        started_by: me.clone(),
        started_at: now,
        ended_at: None,
        ended_by: None,
        end_timer,
        recording: None,
        guest_sessions: 0,
    };
    save(&live)?;
    kv::set(model::session_of(&space.id, &id), b"")?;
    let me_p = Participant {
        id: me.clone(),
        kind: Kind::Registered,
        name: display_name(&me)?,
        role: Some(role),
        state: State::Present,
        since: now,
        by: None,
        via: None,
        leg: None,
        told: None,
        told_op: None,
    };
    put(&id, &me_p)?;
    space.live = Some(id.clone());
    kv::set_json(model::space(&space.id), &space)?;
    audit::success(
        "meeting.live.start",
        &format!("space/{}", space.id),
        json!({ "live": id, "from": source_address(req) }),
    )?;
    let all = vec![me_p];
    announce_roster(&live, &all)?;
    Ok(http::json(201, &view(&live, &all, true)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Join {
    code: String,
}

fn well_formed(code: &str) -> bool {
    (9..=12).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit())
}

/// The space of an access code, with its running session, for a join
/// attempt: wrong codes count against the attempt (and answer 404).
pub fn by_code(attempt: Attempt, code: &str) -> Result<(Space, Live), ApiError> {
    let sid = if well_formed(code) {
        kv::get(model::code(code)?)?
    } else {
        None
    };
    let Some(sid) = sid else {
        return Err(attempt.failed());
    };
    let space = members::load(&String::from_utf8_lossy(&sid))?;
    let no_session = || ApiError::new(409, "no_live_session", "this space has no live session now");
    let lid = space.live.clone().ok_or_else(no_session)?;
    let live = load(&lid)?;
    if live.ended_at.is_some() {
        return Err(no_session());
    }
    Ok((space, live))
}

/// `POST /join {"code"}`: a registered user of the tenant with the code
/// enters the space's live session directly (M7) and is listed as having
/// attended. Wrong codes are throttled and audited (see `guess`).
pub fn join(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let body: Join = req.json()?;
    let code = body.code.trim().to_string();
    let address = source_address(req);
    let attempt = match Attempt::check(&address, Some(&me), &code) {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    let (space, live) = by_code(attempt, &code)?;
    let all = participants(&live.id)?;
    let existing = all.iter().find(|p| p.id == me).cloned();
    if existing.as_ref().is_some_and(|p| p.state == State::Removed) {
        return Err(ApiError::new(
            403,
            "removed",
            "you were removed from this live session",
        ));
    }
    if existing.as_ref().is_some_and(|p| p.state == State::Present) {
        let role = members::role_of(&me, &space.id)?.unwrap_or(Role::Attended);
        return Ok(http::json(
            200,
            &json!({ "space": members::view(&space, role), "live": view(&live, &all, true) }),
        ));
    }
    check_capacity(&all)?;
    let role = match members::role_of(&me, &space.id)? {
        Some(r) => r,
        None => {
            members::set_role(&me, &space.id, Role::Attended)?;
            // Attendees keep the space's chat (M4: the space is theirs
            // to come back to).
            chat_members(&space.id, std::slice::from_ref(&me))?;
            Role::Attended
        }
    };
    let me_p = Participant {
        id: me.clone(),
        kind: Kind::Registered,
        name: display_name(&me)?,
        role: Some(role),
        state: State::Present,
        since: switchboard_sdk::now_ms(),
        by: None,
        via: None,
        leg: None,
        told: None,
        told_op: None,
    };
    put(&live.id, &me_p)?;
    audit::success(
        "meeting.join",
        &format!("space/{}", space.id),
        json!({ "live": live.id, "kind": "registered", "from": address }),
    )?;
    tell_recording(&live, &me)?;
    let all = participants(&live.id)?;
    announce_roster(&live, &all)?;
    if all.iter().any(|p| p.state == State::Waiting) {
        announce_lobby(&live, &all)?;
    }
    Ok(http::json(
        200,
        &json!({ "space": members::view(&space, role), "live": view(&live, &all, true) }),
    ))
}

// ---- guests and the waiting room (M7) ----------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestJoin {
    code: String,
    name: String,
}

/// A display name someone gives themselves: 1-64 characters, something
/// visible, no control or bidirectional-override characters.
pub fn clean_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    let visible = name.chars().any(|c| {
        !c.is_whitespace() && !matches!(c, '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}')
    });
    let len = name.chars().count();
    if !visible || len > 64 || name.chars().any(bad) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a display name has 1-64 characters, something visible, and no control or direction-override characters",
        ));
    }
    Ok(name.to_string())
}

/// `POST /guest/join {"code", "name"}` — a public route: someone without
/// an account, with the code of a running session, gets a guest session
/// scoped to that live session only (`Authorization: Bearer` token), valid
/// until the session's 24 hours are up. With it they open their event
/// stream and knock (`POST /live/{id}/knock`); nothing else is open to
/// them until a registered participant admits them.
pub fn guest_join(req: &Request, _: &Params) -> Reply {
    let body: GuestJoin = req.json()?;
    let name = clean_name(&body.name)?;
    let code = body.code.trim().to_string();
    let address = source_address(req);
    let attempt = match Attempt::check(&address, None, &code) {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    let (space, mut live) = by_code(attempt, &code)?;
    if live.guest_sessions >= MAX_GUEST_SESSIONS {
        return Err(ApiError::new(
            409,
            "lobby_full",
            "this session has let in as many guests as it can",
        ));
    }
    let now = switchboard_sdk::now_ms();
    let ttl = live
        .started_at
        .saturating_add(max_live_ms())
        .saturating_sub(now)
        .max(60_000);
    let token = identity::create_guest_session(&name, &model::guest_scope(&live.id), ttl)?;
    live.guest_sessions += 1;
    save(&live)?;
    audit::success(
        "meeting.guest.session",
        &format!("space/{}", space.id),
        json!({ "live": live.id, "from": address }),
    )?;
    Ok(http::json(
        201,
        &json!({ "token": token, "live": live.id, "title": space.title, "expires_in_ms": ttl,
                 "next": format!("POST /live/{}/knock", live.id) }),
    ))
}

/// `POST /live/{id}/knock`: a guest enters the waiting room and the
/// registered participants present are told. Arriving before anyone is
/// there keeps the guest waiting. Turned-away guests stay out.
pub fn knock(req: &Request, p: &Params) -> Reply {
    let live = load(p.get("lid").unwrap_or_default())?;
    if req.principal.kind != PrincipalKind::Guest {
        return Err(ApiError::new(
            403,
            "guests_only",
            "registered users join with the code (POST /join)",
        ));
    }
    let (me, existing) = caller(req, &live)?;
    if live.ended_at.is_some() {
        return Err(ended_error());
    }
    match existing.map(|p| p.state) {
        Some(state @ (State::Waiting | State::Present)) => {
            return Ok(http::json(
                200,
                &json!({ "id": me, "live": live.id, "state": state }),
            ));
        }
        Some(State::Rejected | State::Removed) => {
            return Err(ApiError::new(
                403,
                "turned_away",
                "you were not admitted to this session",
            ));
        }
        Some(State::Left) | None => {}
    }
    check_room(
        &participants(&live.id)?,
        State::Waiting,
        MAX_WAITING,
        "lobby_full",
        format!("at most {MAX_WAITING} guests wait at once"),
    )?;
    let name = req
        .header("x-switchboard-guest-name")
        .unwrap_or("Guest")
        .to_string();
    let guest = Participant {
        id: me.clone(),
        kind: Kind::Guest,
        name,
        role: None,
        state: State::Waiting,
        since: switchboard_sdk::now_ms(),
        by: None,
        via: None,
        leg: None,
        told: None,
        told_op: None,
    };
    put(&live.id, &guest)?;
    audit::success(
        "meeting.knock",
        &format!("space/{}", live.space),
        json!({ "live": live.id, "guest": me, "from": source_address(req) }),
    )?;
    // Reads see this request's own writes: the guest is in the list.
    announce_lobby(&live, &participants(&live.id)?)?;
    Ok(http::json(
        201,
        &json!({ "id": me, "live": live.id, "state": State::Waiting }),
    ))
}

/// The waiting guest `pid` of a session, for an admit or a reject by a
/// registered participant present.
fn waiting_guest(req: &Request, p: &Params) -> Result<(Live, Participant, Participant), ApiError> {
    let live = load(p.get("lid").unwrap_or_default())?;
    let me = registered_in_session(req, &live)?;
    let pid = p.get("pid").unwrap_or_default();
    let guest = participant_where(
        &live.id,
        pid,
        |_| true,
        "nobody with this id is in this session or its waiting room",
    )?;
    if guest.state != State::Waiting {
        return Err(ApiError::new(
            409,
            "not_waiting",
            "this participant is not in the waiting room",
        ));
    }
    Ok((live, me, guest))
}

/// `POST /live/{id}/lobby/{guest}/admit` (a registered participant
/// present): the guest enters the session, its chat and its recording.
pub fn admit(req: &Request, p: &Params) -> Reply {
    let (live, me, mut guest) = waiting_guest(req, p)?;
    let all = participants(&live.id)?;
    check_capacity(&all)?;
    guest.state = State::Present;
    guest.since = switchboard_sdk::now_ms();
    guest.by = Some(me.id.clone());
    put(&live.id, &guest)?;
    chat_members(&live.space, std::slice::from_ref(&guest.id))?;
    audit::success(
        "meeting.admit",
        &format!("space/{}", live.space),
        json!({ "live": live.id, "guest": guest.id, "name": guest.name, "by": me.id, "from": source_address(req) }),
    )?;
    tell_recording(&live, &guest.id)?;
    let all = participants(&live.id)?;
    let space = space_of(&live)?;
    tell(
        &[guest.id.clone()],
        "meeting.admitted",
        &json!({ "live": live.id, "title": space.title, "conversation": space.conversation, "by": me.id }),
    )?;
    announce_roster(&live, &all)?;
    announce_lobby(&live, &all)?;
    Ok(http::json(200, &view(&live, &all, true)))
}

/// `POST /live/{id}/lobby/{guest}/reject`: the guest is turned away and
/// told; the same guest session cannot knock again.
pub fn reject(req: &Request, p: &Params) -> Reply {
    let (live, me, mut guest) = waiting_guest(req, p)?;
    guest.state = State::Rejected;
    guest.since = switchboard_sdk::now_ms();
    guest.by = Some(me.id.clone());
    put(&live.id, &guest)?;
    audit::success(
        "meeting.reject",
        &format!("space/{}", live.space),
        json!({ "live": live.id, "guest": guest.id, "name": guest.name, "by": me.id, "from": source_address(req) }),
    )?;
    tell(
        &[guest.id.clone()],
        "meeting.rejected",
        &json!({ "live": live.id }),
    )?;
    let all = participants(&live.id)?;
    announce_lobby(&live, &all)?;
    Ok(http::json(200, &view(&live, &all, true)))
}

// ---- during the session -----------------------------------------------------------

/// `POST /live/{id}/participants/{pid}/remove` (a registered participant
/// present): a forced leave, audited. Removed guests lose the chat and
/// cannot come back with that guest session; a removed registered user
/// may join again with the code. The organizer cannot be removed.
pub fn remove(req: &Request, p: &Params) -> Reply {
    let live = load(p.get("lid").unwrap_or_default())?;
    let me = registered_in_session(req, &live)?;
    let space = space_of(&live)?;
    let mut target = participant_where(
        &live.id,
        p.get("pid").unwrap_or_default(),
        |t| t.state == State::Present,
        NOT_PRESENT,
    )?;
    if target.id == me.id {
        return Err(ApiError::bad_request(
            "use_leave",
            "to leave, use POST /live/{id}/leave",
        ));
    }
    if target.id == space.organizer {
        return Err(ApiError::new(
            403,
            "organizer_protected",
            "the organizer cannot be removed from their own meeting",
        ));
    }
    target.state = State::Removed;
    target.since = switchboard_sdk::now_ms();
    target.by = Some(me.id.clone());
    // A caller who dialled in: their call ends with it.
    if let Some(leg) = target.leg.take() {
        match calls::hangup(&leg, calls::Cause::Normal) {
            Ok(()) | Err(switchboard_sdk::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    put(&live.id, &target)?;
    if target.kind == Kind::Guest {
        chat_remove(&live.space, &target.id)?;
    }
    audit::success(
        "meeting.remove",
        &format!("space/{}", live.space),
        json!({ "live": live.id, "participant": target.id, "kind": target.kind, "by": me.id, "from": source_address(req) }),
    )?;
    tell(
        std::slice::from_ref(&target.id),
        "meeting.removed",
        &json!({ "live": live.id, "by": me.id }),
    )?;
    let all = participants(&live.id)?;
    announce_roster(&live, &all)?;
    Ok(http::json(200, &view(&live, &all, true)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Invite {
    users: Vec<String>,
}

/// `POST /live/{id}/invite {"users"}` (a registered participant present):
/// the users become invitees of the space (its chat included) and are
/// told, with the code to join.
pub fn invite(req: &Request, p: &Params) -> Reply {
    let live = load(p.get("lid").unwrap_or_default())?;
    let me = registered_in_session(req, &live)?;
    let body: Invite = req.json()?;
    if body.users.is_empty() || body.users.len() > MAX_INVITE_BATCH {
        return Err(ApiError::bad_request(
            "invalid_users",
            format!("invite 1-{MAX_INVITE_BATCH} users at a time"),
        ));
    }
    let mut space = space_of(&live)?;
    let mut fresh = Vec::new();
    for name in &body.users {
        let id = members::resolve_user(name)?;
        if !fresh.contains(&id) && members::role_of(&id, &space.id)?.is_none() {
            fresh.push(id);
        }
    }
    if space.invited.len() + fresh.len() > MAX_INVITEES {
        return Err(ApiError::new(
            413,
            "too_many_invitees",
            format!("a space has at most {MAX_INVITEES} invitees"),
        ));
    }
    for u in &fresh {
        members::set_role(u, &space.id, Role::Invited)?;
        space.invited.push(u.clone());
    }
    if !fresh.is_empty() {
        kv::set_json(model::space(&space.id), &space)?;
        chat_members(&space.id, &fresh)?;
        audit::success(
            "meeting.invite",
            &format!("space/{}", space.id),
            json!({ "live": live.id, "users": fresh, "by": me.id }),
        )?;
        tell(
            &fresh,
            "meeting.invited",
            &json!({ "space": space.id, "title": space.title, "live": live.id, "code": space.code, "by": me.id }),
        )?;
    }
    Ok(http::json(200, &json!({ "invited": fresh })))
}

/// `POST /live/{id}/leave`: a participant present (or a guest waiting)
/// leaves; audited with the client's address.
pub fn leave(req: &Request, p: &Params) -> Reply {
    let live = load(p.get("lid").unwrap_or_default())?;
    let (me, existing) = caller(req, &live)?;
    let mut left = match existing {
        Some(p)
            if live.ended_at.is_none() && matches!(p.state, State::Present | State::Waiting) =>
        {
            p
        }
        _ => {
            return Err(ApiError::new(
                409,
                "not_in_session",
                "you are not in this live session",
            ));
        }
    };
    let was_present = left.state == State::Present;
    left.state = State::Left;
    left.since = switchboard_sdk::now_ms();
    put(&live.id, &left)?;
    if left.kind == Kind::Guest && was_present {
        chat_remove(&live.space, &me)?;
    }
    audit::success(
        "meeting.leave",
        &format!("space/{}", live.space),
        json!({ "live": live.id, "participant": me, "kind": left.kind, "from": source_address(req) }),
    )?;
    let all = participants(&live.id)?;
    if was_present {
        announce_roster(&live, &all)?;
    } else {
        announce_lobby(&live, &all)?;
    }
    tell(
        std::slice::from_ref(&me),
        "meeting.left",
        &json!({ "live": live.id }),
    )?;
    Ok(http::json(
        200,
        &json!({ "live": live.id, "state": State::Left }),
    ))
}

/// `GET /live/{id}`: the session for those with a role in its space or a
/// place in it. A guest waiting sees only their own state.
pub fn show(req: &Request, p: &Params) -> Reply {
    let live = load(p.get("lid").unwrap_or_default())?;
    let (me, mine) = caller(req, &live).map_err(|e| {
        if e.code == "guest_scope" {
            e
        } else {
            not_found()
        }
    })?;
    let registered = req.principal.kind == PrincipalKind::Registered;
    let has_role = registered && members::role_of(&me, &live.space)?.is_some();
    let present = mine.as_ref().is_some_and(|p| p.state == State::Present);
    if !has_role && !present {
        return match mine {
            Some(p) if req.principal.kind == PrincipalKind::Guest => Ok(http::json(
                200,
                &json!({ "id": live.id, "state": p.state, "ended": live.ended_at.is_some() }),
            )),
            _ => Err(not_found()),
        };
    }
    let all = participants(&live.id)?;
    let mut v = view(&live, &all, registered);
    v["state"] = json!(mine.map(|p| p.state));
    Ok(http::json(200, &v))
}

/// `POST /live/{id}/end`: the organizer or whoever started it; the space
/// stays (M5).
pub fn end(req: &Request, p: &Params) -> Reply {
    let me = registered(req)?;
    let live = load(p.get("lid").unwrap_or_default())?;
    let space = kv::get_json::<Space>(model::space(&live.space))?.ok_or_else(not_found)?;
    if members::role_of(&me, &space.id)?.is_none() {
        return Err(not_found());
    }
    if me != space.organizer && me != live.started_by {
        return Err(ApiError::new(
            403,
            "not_allowed",
            "the organizer or whoever started the session ends it",
        ));
    }
    if live.ended_at.is_some() {
        return Err(ended_error());
    }
    let ended = end_session(&live.id, Some(&me))?;
    Ok(http::json(200, &crate::to_value(&ended)))
}

/// Ends session `lid` (by `by`, or by the server at the limit): a running
/// recording is stopped and sealed, everyone present or waiting leaves
/// (guests lose the chat), the space has no live session any more, and
/// all are told.
pub fn end_session(lid: &str, by: Option<&str>) -> Result<Live, ApiError> {
    let mut live = kv::get_json::<Live>(model::live(lid))?.ok_or_else(not_found)?;
    if live.ended_at.is_some() {
        return Ok(live);
    }
    // Each participant's leave is audited like a leave (M11).
    let now = switchboard_sdk::now_ms();
    if let Some(rec) = live.recording.take()
        && !stop_recording(&rec.id)
    {
        // Ending does not wait for the recording plugin: a timer retries.
        timers::schedule(RETRY_STOP, "stop-recording", rec.id.as_bytes())?;
    }
    let all = participants(lid)?;
    let mut told = Vec::new();
    for mut p in all {
        if !matches!(p.state, State::Present | State::Waiting) {
            continue;
        }
        if p.kind == Kind::Guest
            && p.state == State::Present
            && let Err(e) = chat_remove(&live.space, &p.id)
        {
            // The chat plugin is unavailable; the guest's session cannot
            // reach it anyway once this one has ended.
            log::warn(&format!(
                "guest {} kept in the chat of space {}: {}",
                p.id, live.space, e.message
            ));
        }
        p.state = State::Left;
        p.since = now;
        put(lid, &p)?;
        audit::success(
            "meeting.leave",
            &format!("space/{}", live.space),
            json!({ "live": lid, "participant": p.id, "kind": p.kind, "reason": "session ended" }),
        )?;
        told.push(p.id);
    }
    live.ended_at = Some(now);
    live.ended_by = by.map(str::to_string);
    save(&live)?;
    hang_up_phones(lid)?;
    timers::cancel(&live.end_timer)?;
    if let Some(mut space) = kv::get_json::<Space>(model::space(&live.space))?
        && space.live.as_deref() == Some(lid)
    {
        space.live = None;
        kv::set_json(model::space(&space.id), &space)?;
    }
    audit::success(
        "meeting.live.end",
        &format!("space/{}", live.space),
        json!({ "live": lid, "by": by.unwrap_or("the 24-hour limit") }),
    )?;
    tell(
        &told,
        "meeting.ended",
        &json!({ "live": lid, "space": live.space, "by": by }),
    )?;
    Ok(live)
}

/// The answer for someone who is not present.
pub const NOT_PRESENT: &str = "nobody with this id is present in this session";

/// How long before a failed stop of a recording is tried again.
const RETRY_STOP: Duration = Duration::from_secs(60);

/// Stops recording `rid` because its session ended; whether it is stopped
/// (a 409 means it had stopped already, a 404 that it is gone).
pub fn stop_recording(rid: &str) -> bool {
    match call_json(
        "recording",
        Method::Post,
        &format!("/recordings/{rid}/stop?reason=source_ended"),
        &Value::Null,
    ) {
        Ok((status, _)) if status < 400 || status == 409 || status == 404 => true,
        Ok((status, v)) => {
            log::warn(&format!(
                "recording {rid} not stopped at the end of its session: {status} {}",
                v["code"]
            ));
            false
        }
        Err(e) => {
            log::warn(&format!(
                "recording {rid} not stopped at the end of its session: {}",
                e.message
            ));
            false
        }
    }
}

/// The `stop-recording` timer: tries again, and again later if need be.
pub fn retry_stop(rid: &str) -> Result<(), ApiError> {
    if !stop_recording(rid) {
        timers::schedule(RETRY_STOP, "stop-recording", rid.as_bytes())?;
    }
    Ok(())
}

// ---- PSTN callers (M6) -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PstnJoin {
    code: String,
    /// How the caller is shown, e.g. a masked number.
    caller: String,
}

/// The calling plugin, which the tenant must have named as a telephony
/// plugin (setting `telephony-plugins`; none by default): PSTN callers
/// enter without an account, so only a plugin the tenant trusts to check
/// the code brings them in. Guests never reach these routes.
fn plugin_caller(req: &Request) -> Result<String, ApiError> {
    let via = req.caller_plugin.clone().ok_or_else(|| {
        ApiError::new(
            403,
            "plugins_only",
            "PSTN callers are brought in by a telephony plugin",
        )
    })?;
    let trusted = config::get::<String>("telephony-plugins").unwrap_or_default();
    if req.principal.kind == PrincipalKind::Guest
        || !trusted.split(',').any(|name| name.trim() == via)
    {
        return Err(ApiError::new(
            403,
            "not_telephony",
            format!("plugin {via} is not one of this tenant's telephony plugins"),
        ));
    }
    Ok(via)
}

/// `POST /pstn/join {"code", "caller"}` — for a telephony plugin (through
/// the `plugins` capability), after a caller keyed in the code: the caller
/// is present at once (the code is their credential, as for registered
/// users), counted against the code-guessing limits per caller and code.
/// The answer says whether the session is being recorded, which the
/// telephony leg announces to the caller (M9).
pub fn pstn_join(req: &Request, _: &Params) -> Reply {
    let via = plugin_caller(req)?;
    let body: PstnJoin = req.json()?;
    let label = clean_name(&body.caller)?;
    let code = body.code.trim().to_string();
    let who = format!("pstn:{via}:{label}");
    let attempt = match Attempt::check(&source_address(req), Some(&who), &code) {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    let (space, live) = by_code(attempt, &code)?;
    let caller = admit_pstn(&space, &live, &via, label, None)?;
    Ok(http::json(
        201,
        &json!({ "participant": caller.id, "live": live.id, "title": space.title,
                 "recording": live.recording.is_some(),
                 "announce": live.recording.as_ref().map(|_| "This meeting is being recorded.") }),
    ))
}

/// A phone caller with the right code, present at once: in the roster as
/// `pstn`, audited, told to the recording and to everyone present. `leg`
/// is their call leg when they dialled in here.
pub fn admit_pstn(
    space: &Space,
    live: &Live,
    via: &str,
    label: String,
    leg: Option<String>,
) -> Result<Participant, ApiError> {
    let all = participants(&live.id)?;
    check_capacity(&all)?;
    let phones = all
        .iter()
        .filter(|p| p.leg.is_some() && p.state == State::Present)
        .count();
    if leg.is_some() && phones >= MAX_PHONES {
        return Err(ApiError::new(
            409,
            "bridge_full",
            format!("at most {MAX_PHONES} callers dial in at once"),
        ));
    }
    let caller = Participant {
        id: format!("pstn-{}", &crypto::random_id()[..16]),
        kind: Kind::Pstn,
        name: label,
        role: None,
        state: State::Present,
        since: switchboard_sdk::now_ms(),
        by: None,
        via: Some(via.to_string()),
        leg,
        // On joining they hear whether it records: told of this one.
        told: live.recording.as_ref().map(|r| r.id.clone()),
        told_op: None,
    };
    put(&live.id, &caller)?;
    audit::success(
        "meeting.join",
        &format!("space/{}", space.id),
        json!({ "live": live.id, "kind": "pstn", "participant": caller.id, "via": via }),
    )?;
    tell_recording(live, &caller.id)?;
    announce_roster(live, &participants(&live.id)?)?;
    Ok(caller)
}

/// Stores a participant as it now is.
pub fn save_participant(lid: &str, p: &Participant) -> Result<(), ApiError> {
    put(lid, p)
}

/// A caller who dialled in is gone (hung up, or out of the bridge): they
/// leave the session (audited, the roster told). Nothing when they are
/// no longer present.
pub fn pstn_gone(lid: &str, pid: &str, reason: &str) -> Result<(), ApiError> {
    let Some(live) = kv::get_json::<Live>(model::live(lid))? else {
        return Ok(());
    };
    let Some(mut caller) = participant(lid, pid)?.filter(|c| c.state == State::Present) else {
        return Ok(());
    };
    caller.state = State::Left;
    caller.since = switchboard_sdk::now_ms();
    // Their call is over (or ends with the words being said): nothing
    // of theirs is left to hang up.
    caller.leg = None;
    put(lid, &caller)?;
    audit::success(
        "meeting.leave",
        &format!("space/{}", live.space),
        json!({ "live": lid, "participant": pid, "kind": "pstn", "reason": reason }),
    )?;
    announce_roster(&live, &participants(lid)?)
}

/// Callers told in one plugin call (each takes four call commands; the
/// host takes 64 a call): the rest by the `tell-phones` timer.
const TELL_BATCH: usize = 12;
/// Callers hung up in one plugin call: the rest by `hang-up-legs`.
const HANG_UP_BATCH: usize = 50;
/// Phone callers a session's bridge holds (the host's room size).
pub const MAX_PHONES: usize = 64;

/// Tells every caller in the session's phone bridge that recording has
/// started (M9): each leaves the bridge, hears it and goes back in (the
/// host plays nothing into a room). A caller is told once per recording
/// (`told` on the participant, which also tells the join path whether it
/// still has to say it); more than a batch goes on in a timer. A leg
/// already gone is passed over.
pub fn tell_phones(live: &Live) -> Result<(), ApiError> {
    let Some(rec) = &live.recording else {
        return Ok(());
    };
    let waiting: Vec<Participant> = participants(&live.id)?
        .into_iter()
        .filter(|p| p.leg.is_some() && p.state == State::Present)
        .filter(|p| p.told.as_deref() != Some(rec.id.as_str()))
        .collect();
    for mut p in waiting.iter().take(TELL_BATCH).cloned() {
        let Some(leg) = p.leg.clone() else { continue };
        p.told = Some(rec.id.clone());
        p.told_op = None;
        let state = |op: String| {
            let s = model::DialState {
                dial: model::Dial::Announcing {
                    lid: live.id.clone(),
                    pid: p.id.clone(),
                },
                op,
                collecting: false,
            };
            serde_json::to_vec(&s).unwrap_or_default()
        };
        // The stage first: the `left` the leave brings must find it.
        let told = calls::set_state(&leg, &state(String::new()))
            .and_then(|()| calls::leave(&leg))
            .and_then(|()| {
                let says = [calls::Prompt::Library("recording-started".into())];
                calls::play(&leg, &says, false)
            })
            .and_then(|op| {
                p.told_op = Some(op.clone());
                calls::set_state(&leg, &state(op))
            });
        put(&live.id, &p)?;
        match told {
            Ok(()) => {}
            // Joining still: the join path says it (it reads `told`).
            Err(
                switchboard_sdk::Error::NotFound(_) | switchboard_sdk::Error::InvalidArgument(_),
            ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if waiting.len() > TELL_BATCH {
        timers::schedule(Duration::ZERO, "tell-phones", live.id.as_bytes())?;
    }
    Ok(())
}

/// The `tell-phones` timer: the next batch of callers to tell.
pub fn tell_phones_later(lid: &str) -> Result<(), ApiError> {
    match kv::get_json::<Live>(model::live(lid))? {
        Some(live) if live.ended_at.is_none() => tell_phones(&live),
        _ => Ok(()),
    }
}

/// Hangs up the calls of the session's callers who dialled in and are no
/// longer present (removed, or the session ended), a batch at a time; the
/// rest in the `hang-up-phones` timer.
pub fn hang_up_phones(lid: &str) -> Result<(), ApiError> {
    let gone: Vec<Participant> = participants(lid)?
        .into_iter()
        .filter(|p| p.leg.is_some() && p.state != State::Present)
        .collect();
    for mut p in gone.iter().take(HANG_UP_BATCH).cloned() {
        if let Some(leg) = p.leg.take() {
            hang_up_leg(&leg)?;
            put(lid, &p)?;
        }
    }
    // The rest by leg id: the records may be gone by then (a space
    // deleted with its session).
    let rest: Vec<&str> = gone
        .iter()
        .skip(HANG_UP_BATCH)
        .filter_map(|p| p.leg.as_deref())
        .collect();
    if !rest.is_empty() {
        timers::schedule(Duration::ZERO, "hang-up-legs", rest.join(",").as_bytes())?;
    }
    Ok(())
}

/// The `hang-up-legs` timer: legs of callers whose session is over.
pub fn hang_up_legs(legs: &str) -> Result<(), ApiError> {
    for leg in legs
        .split(',')
        .filter(|l| !l.is_empty())
        .take(HANG_UP_BATCH)
    {
        hang_up_leg(leg)?;
    }
    Ok(())
}

fn hang_up_leg(leg: &str) -> Result<(), ApiError> {
    match calls::hangup(leg, calls::Cause::Normal) {
        Ok(()) | Err(switchboard_sdk::Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `POST /live/{id}/pstn/{pid}/leave` — the telephony plugin that brought
/// the caller in, when the call ends.
pub fn pstn_leave(req: &Request, p: &Params) -> Reply {
    let via = plugin_caller(req)?;
    let live = load(p.get("lid").unwrap_or_default())?;
    let pid = p.get("pid").unwrap_or_default();
    let mut caller = participant_where(
        &live.id,
        pid,
        |c| {
            c.kind == Kind::Pstn
                && c.via.as_deref() == Some(via.as_str())
                && c.state == State::Present
                && live.ended_at.is_none()
        },
        "no such PSTN caller of yours is in this session",
    )?;
    caller.state = State::Left;
    caller.since = switchboard_sdk::now_ms();
    put(&live.id, &caller)?;
    audit::success(
        "meeting.leave",
        &format!("space/{}", live.space),
        json!({ "live": live.id, "participant": caller.id, "kind": "pstn", "via": via }),
    )?;
    let all = participants(&live.id)?;
    announce_roster(&live, &all)?;
    Ok(http::json(
        200,
        &json!({ "live": live.id, "state": State::Left }),
    ))
}
