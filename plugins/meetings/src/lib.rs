//! Meeting spaces (SPEC M1-M4), the first part of the meetings plugin:
//! a space has a title, an organizer, invitees, an optional schedule, a
//! unique access code of random digits and a chat conversation owned in the
//! chat plugin (members are the organizer and the invitees, so invitees
//! use the space's chat and files before any live session). Spaces are
//! listed for their organizer and invitees, hidden per user, and deleted
//! (with their chat) by the organizer only.
//!
//! Live sessions (M5): started by the organizer or an invitee, one at a
//! time per space, joined by registered users of the tenant with the code
//! (guessing throttled per address and per code, failures audited), left,
//! ended by a participant who may or by the server at 24 hours (a durable
//! timer); the roster reaches every participant's stream.
//!
//! Not built yet (issue 9): the waiting room for guests, removing and
//! inviting during a session, recording rules, WebRTC signalling. This
//! plugin is not bundled until they are.
//!
//! Keys: `s/{sid}` space; `c/{hmac(code)}` → sid; `u/{user}/{sid}` → role;
//! `h/{user}/{sid}` hidden; `l/{lid}` live session; `g/{hmac}` guess
//! counters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _, Router};
use switchboard_sdk::{
    Method, Plugin, PrincipalKind, Request, Response, TimerEvent, audit, config, crypto, events,
    identity, kv, plugins, timers, tx,
};

struct Meetings;

/// Invitees of one space.
const MAX_INVITEES: usize = 1000;
/// Attempts at drawing an unused code before giving up.
const CODE_ATTEMPTS: u32 = 16;

impl Plugin for Meetings {
    fn handle(request: Request) -> Response {
        let mut response = Router::new()
            .get("/spaces", list)
            .post("/spaces", create)
            .get("/spaces/:sid", show)
            .delete("/spaces/:sid", delete)
            .post("/spaces/:sid/hide", hide)
            .post("/spaces/:sid/unhide", unhide)
            .post("/spaces/:sid/live", start_live)
            .post("/join", join)
            .get("/live/:lid", show_live)
            .post("/live/:lid/leave", leave)
            .post("/live/:lid/end", end)
            .handle(&request);
        tx::finish(&mut response);
        response
    }

    fn on_timer(timer: TimerEvent) -> Result<(), String> {
        if timer.name != "end-live" {
            return Ok(());
        }
        let lid = String::from_utf8_lossy(&timer.payload).into_owned();
        end_session(&lid, None)
            .map(|_| ())
            .map_err(|e| format!("{}: {}", e.code, e.message))
    }
}

/// The longest a live session runs (M5).
const MAX_LIVE: Duration = Duration::from_secs(24 * 3600);
/// Failed code attempts allowed per window, per source address and per
/// code (M2: guessing is throttled).
const GUESSES_PER_ADDRESS: u32 = 10;
const GUESSES_PER_CODE: u32 = 20;
/// The throttling window.
const GUESS_WINDOW_MS: u64 = 15 * 60 * 1000;

switchboard_sdk::export_plugin!(Meetings);

type Reply = Result<Response, ApiError>;

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Role {
    Organizer,
    Invited,
    Attended,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Space {
    id: String,
    title: String,
    organizer: String,
    invited: Vec<String>,
    /// Milliseconds since the epoch; `None` for an ad hoc space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    starts_at: Option<u64>,
    created_at: u64,
    /// Digits only; unique within the tenant.
    code: String,
    /// The space's conversation in the chat plugin.
    conversation: String,
    /// The running live session, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    live: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Presence {
    joined_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    left_at: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Live {
    id: String,
    space: String,
    started_by: String,
    started_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ended_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ended_by: Option<String>,
    end_timer: String,
    /// Everyone who joined, with their latest stay.
    participants: BTreeMap<String, Presence>,
}

impl Live {
    fn present(&self) -> Vec<String> {
        self.participants
            .iter()
            .filter(|(_, p)| p.left_at.is_none())
            .map(|(u, _)| u.clone())
            .collect()
    }
}

fn space_key(sid: &str) -> String {
    format!("s/{sid}")
}

/// Access codes are credentials: their index key holds an HMAC (a key the
/// host holds for this plugin), never the digits (key names are not
/// encrypted at rest).
fn code_key(code: &str) -> Result<String, ApiError> {
    let mac = crypto::hmac_sha256("code-index", code.as_bytes())?;
    Ok(format!("c/{}", crypto::hex(&mac[..16])))
}

fn role_key(user: &str, sid: &str) -> String {
    format!("u/{user}/{sid}")
}

fn hidden_key(user: &str, sid: &str) -> String {
    format!("h/{user}/{sid}")
}

fn live_key(lid: &str) -> String {
    format!("l/{lid}")
}

fn source_address(req: &Request) -> String {
    req.header("x-switchboard-source-address")
        .unwrap_or("")
        .to_string()
}

fn load_live(lid: &str) -> Result<Live, ApiError> {
    http::check_id(lid, "live session")?;
    kv::get_json::<Live>(live_key(lid))?.ok_or_else(|| {
        ApiError::new(
            404,
            "live_not_found",
            "no such live session, or you are not in it",
        )
    })
}

/// Tells everyone present who is in the session now.
fn roster(live: &Live) -> Result<(), ApiError> {
    let present = live.present();
    let data = json!({ "live": live.id, "space": live.space, "participants": present });
    events::publish_to_users(&present, "meeting.roster", data.to_string().as_bytes())?;
    Ok(())
}

fn audit_ok(action: &str, target: &str, details: Value) -> Result<(), ApiError> {
    audit::append(
        action,
        target,
        audit::Outcome::Success,
        &details.to_string(),
    )?;
    Ok(())
}

fn not_found() -> ApiError {
    ApiError::new(
        404,
        "space_not_found",
        "no such space, or you are not in it",
    )
}

fn registered(req: &Request) -> Result<String, ApiError> {
    let user = req.user()?.to_string();
    if req.principal.kind != PrincipalKind::Registered {
        return Err(ApiError::new(
            403,
            "registered_only",
            "meeting spaces are for the tenant's registered users",
        ));
    }
    Ok(user)
}

/// The space and the caller's role in it (404 for anyone without one).
fn membership(req: &Request, sid: &str) -> Result<(String, Space, Role), ApiError> {
    let me = registered(req)?;
    http::check_id(sid, "space")?;
    let space = kv::get_json::<Space>(space_key(sid))?.ok_or_else(not_found)?;
    let role = kv::get_json::<Role>(role_key(&me, sid))?.ok_or_else(not_found)?;
    Ok((me, space, role))
}

/// A uniformly random code of `digits` digits (rejection sampling: no
/// modulo bias), not starting with 0 so it keeps its length as a number.
fn draw_code(digits: u32) -> String {
    let span = 9 * 10u64.pow(digits - 1);
    let limit = u64::MAX - (u64::MAX % span);
    loop {
        let bytes = crypto::random_bytes(8);
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&bytes[..8]);
        let n = u64::from_le_bytes(raw);
        if n < limit {
            return (10u64.pow(digits - 1) + n % span).to_string();
        }
    }
}

fn call_chat(method: Method, path: &str, body: &Value) -> Result<Value, ApiError> {
    let r = plugins::call("chat", method, path, body.to_string().as_bytes())?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status >= 400 {
        return Err(ApiError::new(
            502,
            "chat_failed",
            format!(
                "the chat plugin refused: {}",
                v["message"].as_str().unwrap_or("no reason given")
            ),
        ));
    }
    Ok(v)
}

fn view(space: &Space, role: Role) -> Value {
    let mut v = serde_json::to_value(space).unwrap_or(Value::Null);
    v["role"] = json!(role);
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    title: String,
    #[serde(default)]
    invitees: Vec<String>,
    #[serde(default)]
    starts_at: Option<u64>,
}

fn create(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let body: Create = req.json()?;
    let title = body.title.trim().to_string();
    if title.is_empty() || title.chars().count() > 200 || title.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_title",
            "a title has 1-200 characters and no control characters",
        ));
    }
    if body.invitees.len() > MAX_INVITEES {
        return Err(ApiError::new(
            413,
            "too_many_invitees",
            format!("at most {MAX_INVITEES} invitees"),
        ));
    }
    let mut invited = BTreeSet::new();
    for name in &body.invitees {
        match identity::lookup_user(name)? {
            Some(u) if u.active => {
                invited.insert(u.id);
            }
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_user",
                    format!(
                        "no active user {:?} in this tenant",
                        name.chars().take(80).collect::<String>()
                    ),
                ));
            }
        }
    }
    invited.remove(&me);
    let digits = config::get::<u32>("code-digits").unwrap_or(10).clamp(9, 12);
    let mut code = None;
    for _ in 0..CODE_ATTEMPTS {
        let candidate = draw_code(digits);
        if kv::get(code_key(&candidate)?)?.is_none() {
            code = Some(candidate);
            break;
        }
    }
    let Some(code) = code else {
        return Err(ApiError::new(
            503,
            "codes_exhausted",
            "no unused access code was found; raise code-digits",
        ));
    };
    let id = crypto::random_id();
    let mut members: Vec<String> = invited.iter().cloned().collect();
    members.push(me.clone());
    let conv = call_chat(
        Method::Post,
        "/owned",
        &json!({ "resource": format!("space:{id}"), "title": title, "members": members }),
    )?;
    let space = Space {
        id: id.clone(),
        title,
        organizer: me.clone(),
        invited: invited.iter().cloned().collect(),
        starts_at: body.starts_at,
        created_at: switchboard_sdk::now_ms(),
        code: code.clone(),
        conversation: conv["id"].as_str().unwrap_or_default().to_string(),
        live: None,
    };
    kv::set_json(space_key(&id), &space)?;
    kv::set(code_key(&code)?, id.as_bytes())?;
    kv::set_json(role_key(&me, &id), &Role::Organizer)?;
    for u in &invited {
        kv::set_json(role_key(u, &id), &Role::Invited)?;
    }
    audit::append(
        "meeting.space.create",
        &format!("space/{id}"),
        audit::Outcome::Success,
        &json!({ "invited": invited.len(), "scheduled": space.starts_at.is_some() }).to_string(),
    )?;
    Ok(http::json(201, &view(&space, Role::Organizer)))
}

fn show(req: &Request, p: &Params) -> Reply {
    let (_, space, role) = membership(req, p.get("sid").unwrap_or_default())?;
    Ok(http::json(200, &view(&space, role)))
}

fn list(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let prefix = format!("u/{me}/");
    let after = req
        .query_param("after")
        .map(|a| format!("{prefix}{a}").into_bytes());
    let page = kv::scan(&prefix, after.as_deref(), 200)?;
    let with_hidden = req.query_param("hidden").as_deref() == Some("true");
    let mut out = Vec::new();
    for e in &page.entries {
        let sid = String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned();
        if !with_hidden && kv::get(hidden_key(&me, &sid))?.is_some() {
            continue;
        }
        let (Some(space), Ok(role)) = (
            kv::get_json::<Space>(space_key(&sid))?,
            serde_json::from_slice::<Role>(&e.value),
        ) else {
            continue;
        };
        out.push(view(&space, role));
    }
    let next = page
        .next
        .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
    Ok(http::json(200, &json!({ "spaces": out, "next": next })))
}

/// Hides the space from the caller's list; nothing is deleted (M4).
fn hide(req: &Request, p: &Params) -> Reply {
    let (me, space, _) = membership(req, p.get("sid").unwrap_or_default())?;
    kv::set(hidden_key(&me, &space.id), b"")?;
    Ok(http::empty(204))
}

fn unhide(req: &Request, p: &Params) -> Reply {
    let (me, space, _) = membership(req, p.get("sid").unwrap_or_default())?;
    kv::delete(hidden_key(&me, &space.id))?;
    Ok(http::empty(204))
}

/// Deletes the space and everything in it: its chat (messages, files) and
/// its records here. Only the organizer (M4); audited.
fn delete(req: &Request, p: &Params) -> Reply {
    let (me, space, role) = membership(req, p.get("sid").unwrap_or_default())?;
    if role != Role::Organizer {
        return Err(ApiError::new(
            403,
            "organizer_only",
            "only the organizer deletes a space",
        ));
    }
    if let Some(lid) = &space.live {
        let live = end_session(lid, Some(&me))?;
        timers::cancel(&live.end_timer)?;
    }
    call_chat(
        Method::Delete,
        &format!("/owned/space:{}", space.id),
        &Value::Null,
    )?;
    let mut users: Vec<String> = space.invited.clone();
    users.push(space.organizer.clone());
    for u in &users {
        kv::delete(role_key(u, &space.id))?;
        kv::delete(hidden_key(u, &space.id))?;
    }
    kv::delete(code_key(&space.code)?)?;
    kv::delete(space_key(&space.id))?;
    audit::append(
        "meeting.space.delete",
        &format!("space/{}", space.id),
        audit::Outcome::Success,
        &json!({ "by": me }).to_string(),
    )?;
    Ok(http::empty(204))
}

// ---- live sessions ---------------------------------------------------------------

/// Starts the space's live session (organizer or invitee); one at a time.
fn start_live(req: &Request, p: &Params) -> Reply {
    let (me, mut space, role) = membership(req, p.get("sid").unwrap_or_default())?;
    if role == Role::Attended {
        return Err(ApiError::new(
            403,
            "organizer_or_invitee",
            "live sessions are started by the organizer or an invitee",
        ));
    }
    if let Some(lid) = &space.live {
        return Err(ApiError::new(
            409,
            "live_exists",
            format!("this space's live session {lid} is running"),
        ));
    }
    let now = switchboard_sdk::now_ms();
    let id = crypto::random_id();
    let end_timer = timers::schedule(MAX_LIVE, "end-live", id.as_bytes())?;
    let mut participants = BTreeMap::new();
    participants.insert(
        me.clone(),
        Presence {
            joined_at: now,
            left_at: None,
        },
    );
    let live = Live {
        id: id.clone(),
        space: space.id.clone(),
        started_by: me.clone(),
        started_at: now,
        ended_at: None,
        ended_by: None,
        end_timer,
        participants,
    };
    kv::set_json(live_key(&id), &live)?;
    space.live = Some(id.clone());
    kv::set_json(space_key(&space.id), &space)?;
    audit_ok(
        "meeting.live.start",
        &format!("space/{}", space.id),
        json!({ "live": id, "from": source_address(req) }),
    )?;
    roster(&live)?;
    Ok(http::json(201, &live))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Join {
    code: String,
}

/// One guess counter: failures within the current window.
#[derive(Serialize, Deserialize, Default)]
struct Guesses {
    window_start: u64,
    failures: u32,
}

fn guess_key(kind: &str, value: &str) -> Result<String, ApiError> {
    let mac = crypto::hmac_sha256("guess", format!("{kind}:{value}").as_bytes())?;
    Ok(format!("g/{kind}/{}", crypto::hex(&mac[..16])))
}

fn guesses(key: &str, now: u64) -> Result<Guesses, ApiError> {
    Ok(kv::get_json::<Guesses>(key)?
        .filter(|g| now < g.window_start + GUESS_WINDOW_MS)
        .unwrap_or(Guesses {
            window_start: now,
            failures: 0,
        }))
}

/// `POST /join {"code"}`: a registered user of the tenant with the code
/// enters the space's live session directly (M7). Wrong codes count
/// against the caller's address and the code tried; past the limits the
/// answer is 429 with `Retry-After`, whether the code is right or not.
fn join(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let body: Join = req.json()?;
    let code = body.code.trim().to_string();
    let now = switchboard_sdk::now_ms();
    let address = source_address(req);
    let by_address = guess_key("a", &address)?;
    let by_code = guess_key("c", &code)?;
    let (mut a, mut c) = (guesses(&by_address, now)?, guesses(&by_code, now)?);
    if a.failures >= GUESSES_PER_ADDRESS || c.failures >= GUESSES_PER_CODE {
        let until = if a.failures >= GUESSES_PER_ADDRESS {
            a.window_start
        } else {
            c.window_start
        } + GUESS_WINDOW_MS;
        let mut r = http::error(
            429,
            "too_many_attempts",
            "too many wrong codes; try again later",
        );
        r.headers.push((
            "retry-after".into(),
            (until.saturating_sub(now) / 1000 + 1).to_string(),
        ));
        return Ok(r);
    }
    let well_formed = (9..=12).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit());
    let sid = if well_formed {
        kv::get(code_key(&code)?)?
    } else {
        None
    };
    let Some(sid) = sid else {
        a.failures += 1;
        c.failures += 1;
        kv::set_json(&by_address, &a)?;
        kv::set_json(&by_code, &c)?;
        audit::append(
            "meeting.code.guess",
            "meetings",
            audit::Outcome::Failure,
            &json!({ "from": address, "failures": a.failures }).to_string(),
        )?;
        // The counters and the audit entry stand although the answer is 4xx.
        tx::keep_writes();
        return Err(ApiError::new(
            404,
            "code_not_found",
            "no space has this code",
        ));
    };
    let sid = String::from_utf8_lossy(&sid).into_owned();
    let space = kv::get_json::<Space>(space_key(&sid))?.ok_or_else(not_found)?;
    let Some(lid) = space.live.clone() else {
        return Err(ApiError::new(
            409,
            "no_live_session",
            "this space has no live session now",
        ));
    };
    let mut live = load_live(&lid)?;
    live.participants.insert(
        me.clone(),
        Presence {
            joined_at: now,
            left_at: None,
        },
    );
    kv::set_json(live_key(&lid), &live)?;
    if kv::get(role_key(&me, &sid))?.is_none() {
        kv::set_json(role_key(&me, &sid), &Role::Attended)?;
    }
    audit_ok(
        "meeting.join",
        &format!("space/{sid}"),
        json!({ "live": lid, "from": address }),
    )?;
    roster(&live)?;
    let role = kv::get_json::<Role>(role_key(&me, &sid))?.unwrap_or(Role::Attended);
    Ok(http::json(
        200,
        &json!({ "space": view(&space, role), "live": live }),
    ))
}

/// The live session, for those with a role in its space.
fn show_live(req: &Request, p: &Params) -> Reply {
    let live = load_live(p.get("lid").unwrap_or_default())?;
    membership(req, &live.space).map_err(|_| {
        ApiError::new(
            404,
            "live_not_found",
            "no such live session, or you are not in it",
        )
    })?;
    Ok(http::json(200, &live))
}

fn leave(req: &Request, p: &Params) -> Reply {
    let me = req.user()?.to_string();
    let mut live = load_live(p.get("lid").unwrap_or_default())?;
    let present = live
        .participants
        .get(&me)
        .is_some_and(|p| p.left_at.is_none());
    if !present || live.ended_at.is_some() {
        return Err(ApiError::new(
            409,
            "not_in_session",
            "you are not in this live session",
        ));
    }
    if let Some(pr) = live.participants.get_mut(&me) {
        pr.left_at = Some(switchboard_sdk::now_ms());
    }
    kv::set_json(live_key(&live.id), &live)?;
    audit_ok(
        "meeting.leave",
        &format!("space/{}", live.space),
        json!({ "live": live.id, "from": source_address(req) }),
    )?;
    roster(&live)?;
    events::publish_to_users(
        &[me],
        "meeting.left",
        json!({ "live": live.id }).to_string().as_bytes(),
    )?;
    Ok(http::json(200, &live))
}

/// Ends the live session (the organizer or whoever started it); the space
/// stays (M5).
fn end(req: &Request, p: &Params) -> Reply {
    let me = registered(req)?;
    let live = load_live(p.get("lid").unwrap_or_default())?;
    let space = kv::get_json::<Space>(space_key(&live.space))?.ok_or_else(not_found)?;
    if me != space.organizer && me != live.started_by {
        return Err(ApiError::new(
            403,
            "not_allowed",
            "the organizer or whoever started the session ends it",
        ));
    }
    if live.ended_at.is_some() {
        return Err(ApiError::new(
            409,
            "live_ended",
            "this live session has ended",
        ));
    }
    let ended = end_session(&live.id, Some(&me))?;
    timers::cancel(&live.end_timer)?;
    Ok(http::json(200, &ended))
}

/// Ends session `lid` (by `by`, or by the server at the limit): everyone
/// present leaves, the space has no live session any more, all are told.
fn end_session(lid: &str, by: Option<&str>) -> Result<Live, ApiError> {
    let mut live = load_live(lid)?;
    if live.ended_at.is_some() {
        return Ok(live);
    }
    let now = switchboard_sdk::now_ms();
    let present = live.present();
    for u in &present {
        if let Some(p) = live.participants.get_mut(u) {
            p.left_at = Some(now);
        }
    }
    live.ended_at = Some(now);
    live.ended_by = by.map(str::to_string);
    kv::set_json(live_key(lid), &live)?;
    if let Some(mut space) = kv::get_json::<Space>(space_key(&live.space))?
        && space.live.as_deref() == Some(lid)
    {
        space.live = None;
        kv::set_json(space_key(&space.id), &space)?;
    }
    audit_ok(
        "meeting.live.end",
        &format!("space/{}", live.space),
        json!({ "live": lid, "by": by.unwrap_or("the 24-hour limit") }),
    )?;
    let data = json!({ "live": lid, "space": live.space, "by": by });
    events::publish_to_users(&present, "meeting.ended", data.to_string().as_bytes())?;
    Ok(live)
}
