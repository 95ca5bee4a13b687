//! Meeting spaces (SPEC M1-M4): created ad hoc or scheduled with a title
//! and invitees, a unique access code of random digits and a chat
//! conversation owned in the chat plugin (members: the organizer and the
//! invitees, later the attendees), so invitees use the space's chat and
//! files before any live session. Listed for their organizer, invitees
//! and attendees, hidden per user, deleted by the organizer only —
//! with their chat, files and recordings.
//!
//! The routes under `/spaces`. A space's record and its members' roles
//! are read and written through `members.rs`; deleting a space ends its
//! running session through `live.rs` (spaces sit above live sessions).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::json;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::plugins::{call_gone_ok, call_ok};
use switchboard_sdk::{Method, Request, audit, config, crypto, kv};

use crate::live;
use crate::members::{MAX_INVITEES, load, not_found, resolve_user, role_of, set_role, view};
use crate::model::{self, Role, Space};
use crate::{Reply, registered};

/// Attempts at drawing an unused code before giving up.
const CODE_ATTEMPTS: u32 = 16;
/// Everyone with a role in one space (invitees and attendees).
const MAX_MEMBERS: usize = 20_000;

/// The space and the caller's role in it (404 for anyone without one).
fn membership(req: &Request, sid: &str) -> Result<(String, Space, Role), ApiError> {
    let me = registered(req)?;
    let space = load(sid)?;
    let role = role_of(&me, sid)?.ok_or_else(not_found)?;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    title: String,
    #[serde(default)]
    invitees: Vec<String>,
    #[serde(default)]
    starts_at: Option<u64>,
}

pub fn create(req: &Request, _: &Params) -> Reply {
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
        invited.insert(resolve_user(name)?);
    }
    invited.remove(&me);
    let digits = config::get::<u32>("code-digits").unwrap_or(10).clamp(9, 12);
    let mut code = None;
    for _ in 0..CODE_ATTEMPTS {
        let candidate = draw_code(digits);
        if kv::get(model::code(&candidate)?)?.is_none() {
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
    let conv = call_ok(
        "chat",
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
    kv::set_json(model::space(&id), &space)?;
    kv::set(model::code(&code)?, id.as_bytes())?;
    set_role(&me, &id, Role::Organizer)?;
    for u in &invited {
        set_role(u, &id, Role::Invited)?;
    }
    audit::success(
        "meeting.space.create",
        &format!("space/{id}"),
        json!({ "invited": invited.len(), "scheduled": space.starts_at.is_some() }),
    )?;
    Ok(http::json(201, &view(&space, Role::Organizer)))
}

pub fn show(req: &Request, p: &Params) -> Reply {
    let (_, space, role) = membership(req, p.get("sid").unwrap_or_default())?;
    Ok(http::json(200, &view(&space, role)))
}

pub fn list(req: &Request, _: &Params) -> Reply {
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
        if !with_hidden && kv::get(model::hidden(&me, &sid))?.is_some() {
            continue;
        }
        let (Some(space), Ok(role)) = (
            kv::get_json::<Space>(model::space(&sid))?,
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
pub fn hide(req: &Request, p: &Params) -> Reply {
    let (me, space, _) = membership(req, p.get("sid").unwrap_or_default())?;
    kv::set(model::hidden(&me, &space.id), b"")?;
    Ok(http::empty(204))
}

pub fn unhide(req: &Request, p: &Params) -> Reply {
    let (me, space, _) = membership(req, p.get("sid").unwrap_or_default())?;
    kv::delete(model::hidden(&me, &space.id))?;
    Ok(http::empty(204))
}

/// Deletes the space and everything in it: a running session ends, its
/// recordings are deleted (their media crypto-shredded), its chat with
/// messages and files is deleted, and every record here goes, including
/// the attendees' roles and past sessions. The organizer only (M4);
/// audited. A recording under legal hold refuses the whole deletion.
pub fn delete(req: &Request, p: &Params) -> Reply {
    let (me, space, role) = membership(req, p.get("sid").unwrap_or_default())?;
    if role != Role::Organizer {
        return Err(ApiError::new(
            403,
            "organizer_only",
            "only the organizer deletes a space",
        ));
    }
    if let Some(lid) = &space.live {
        live::end_session(lid, Some(&me))?;
    }
    let recordings = kv::scan_all(model::recordings_prefix(&space.id), 10_000)?;
    let prefix_len = model::recordings_prefix(&space.id).len();
    for e in &recordings {
        let rid = String::from_utf8_lossy(&e.key[prefix_len..]).into_owned();
        call_gone_ok("recording", Method::Delete, &format!("/recordings/{rid}"))?;
        kv::delete(&e.key)?;
    }
    call_gone_ok(
        "chat",
        Method::Delete,
        &format!("/owned/space:{}", space.id),
    )?;
    let members = kv::scan_all(model::member_prefix(&space.id), MAX_MEMBERS)?;
    let prefix_len = model::member_prefix(&space.id).len();
    for e in &members {
        let user = String::from_utf8_lossy(&e.key[prefix_len..]).into_owned();
        kv::delete(model::role(&user, &space.id))?;
        kv::delete(model::hidden(&user, &space.id))?;
        kv::delete(&e.key)?;
    }
    let sessions = kv::scan_all(model::sessions_prefix(&space.id), 100_000)?;
    let prefix_len = model::sessions_prefix(&space.id).len();
    for e in &sessions {
        let lid = String::from_utf8_lossy(&e.key[prefix_len..]).into_owned();
        for p in kv::scan_all(model::participants_prefix(&lid), 100_000)? {
            kv::delete(&p.key)?;
        }
        kv::delete(model::live(&lid))?;
        kv::delete(&e.key)?;
    }
    kv::delete(model::code(&space.code)?)?;
    kv::delete(model::space(&space.id))?;
    audit::success(
        "meeting.space.delete",
        &format!("space/{}", space.id),
        json!({ "by": me, "recordings": recordings.len(), "sessions": sessions.len() }),
    )?;
    Ok(http::empty(204))
}
