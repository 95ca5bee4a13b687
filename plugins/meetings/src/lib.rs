//! Meeting spaces (SPEC M1-M4), the first part of the meetings plugin:
//! a space has a title, an organizer, invitees, an optional schedule, a
//! unique access code of random digits and a chat conversation owned in the
//! chat plugin (members are the organizer and the invitees, so invitees
//! use the space's chat and files before any live session). Spaces are
//! listed for their organizer and invitees, hidden per user, and deleted
//! (with their chat) by the organizer only.
//!
//! Not built yet (issue 9): live sessions, joining by code with throttled
//! guessing, the waiting room for guests, recording rules, WebRTC
//! signalling. This plugin is not bundled until they are.
//!
//! Keys: `s/{sid}` space; `c/{code}` → sid; `u/{user}/{sid}` → role;
//! `h/{user}/{sid}` hidden.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _, Router};
use switchboard_sdk::{
    Method, Plugin, PrincipalKind, Request, Response, audit, config, crypto, identity, kv, plugins,
    tx,
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
            .handle(&request);
        tx::finish(&mut response);
        response
    }
}

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
}

fn space_key(sid: &str) -> String {
    format!("s/{sid}")
}

fn code_key(code: &str) -> String {
    format!("c/{code}")
}

fn role_key(user: &str, sid: &str) -> String {
    format!("u/{user}/{sid}")
}

fn hidden_key(user: &str, sid: &str) -> String {
    format!("h/{user}/{sid}")
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
    if sid.len() != 32 || !sid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::bad_request(
            "invalid_id",
            "a space id is 32 lower-case hex digits",
        ));
    }
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
        if kv::get(code_key(&candidate))?.is_none() {
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
    };
    kv::set_json(space_key(&id), &space)?;
    kv::set(code_key(&code), id.as_bytes())?;
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
    kv::delete(code_key(&space.code))?;
    kv::delete(space_key(&space.id))?;
    audit::append(
        "meeting.space.delete",
        &format!("space/{}", space.id),
        audit::Outcome::Success,
        &json!({ "by": me }).to_string(),
    )?;
    Ok(http::empty(204))
}
