//! Presence (SPEC C6): the status a user chooses (available, away, busy),
//! shown to others only while one of their streams is connected to the
//! running host (else offline), from the host's `presence.*` events;
//! watchers get changes through an event group per user.
//!
//! Sits apart from conversations (it borrows only the `Users` body);
//! `lib.rs` sends the host's presence events here.

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Request, events, kv};

use crate::conversations::Users;
use crate::model::{self, Presence, Status};
use crate::{Reply, registered};

/// Most users named in one presence request.
const MAX_PRESENCE_USERS: usize = 500;

fn current_boot() -> Result<u64, ApiError> {
    Ok(kv::get(model::BOOT)?
        .and_then(|b| String::from_utf8_lossy(&b).parse().ok())
        .unwrap_or(0))
}

/// What others see: the chosen status while a stream is connected to the
/// running host, else offline.
fn effective(p: &Presence, boot: u64) -> Status {
    if p.online && p.boot == boot && boot != 0 {
        p.status
    } else {
        Status::Offline
    }
}

fn presence_of(user: &str) -> Result<Presence, ApiError> {
    Ok(kv::get_json::<Presence>(model::presence(user))?.unwrap_or_default())
}

fn announce(user: &str, status: Status) -> Result<(), ApiError> {
    let data = json!({ "user": user, "status": status }).to_string();
    events::publish_to_group(&model::watchers(user), "chat.presence", data.as_bytes())?;
    events::publish_to_users(&[user.to_string()], "chat.presence", data.as_bytes())?;
    Ok(())
}

#[derive(Deserialize)]
struct HostPresence {
    user: String,
    online: bool,
    boot: u64,
}

pub fn reset(data: &[u8]) -> Result<(), ApiError> {
    let v: Value = serde_json::from_slice(data)
        .map_err(|e| ApiError::bad_request("invalid_event", e.to_string()))?;
    let boot = v["boot"].as_u64().unwrap_or(0);
    kv::set(model::BOOT, boot.to_string())?;
    Ok(())
}

pub fn changed(data: &[u8]) -> Result<(), ApiError> {
    let e: HostPresence = serde_json::from_slice(data)
        .map_err(|e| ApiError::bad_request("invalid_event", e.to_string()))?;
    if http::check_user_id(&e.user).is_err() {
        return Ok(());
    }
    let boot = current_boot()?;
    if e.boot != boot {
        kv::set(model::BOOT, e.boot.to_string())?;
    }
    let mut p = presence_of(&e.user)?;
    let before = effective(&p, boot);
    p.online = e.online;
    p.boot = e.boot;
    p.since = switchboard_sdk::now_ms();
    kv::set_json(model::presence(&e.user), &p)?;
    let after = effective(&p, e.boot);
    if before != after {
        announce(&e.user, after)?;
    }
    Ok(())
}

fn users_param(req: &Request) -> Result<Vec<String>, ApiError> {
    let raw = req.query_param("users").unwrap_or_default();
    let users: Vec<String> = raw
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    check_users(&users)?;
    Ok(users)
}

fn check_users(users: &[String]) -> Result<(), ApiError> {
    if users.is_empty() || users.len() > MAX_PRESENCE_USERS {
        return Err(ApiError::bad_request(
            "invalid_users",
            format!("name 1-{MAX_PRESENCE_USERS} user ids"),
        ));
    }
    users.iter().try_for_each(|u| http::check_user_id(u))
}

fn presence_list(users: &[String]) -> Result<Value, ApiError> {
    let boot = current_boot()?;
    let mut out = Vec::new();
    for u in users {
        let p = presence_of(u)?;
        out.push(json!({ "user": u, "status": effective(&p, boot), "since": p.since }));
    }
    Ok(json!({ "presence": out }))
}

pub fn show(req: &Request, _: &Params) -> Reply {
    registered(req)?;
    let users = users_param(req)?;
    Ok(http::json(200, &presence_list(&users)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStatus {
    status: Status,
}

pub fn set(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let body: SetStatus = req.json()?;
    if body.status == Status::Offline {
        return Err(ApiError::bad_request(
            "invalid_status",
            "offline is what others see when you have no stream open; choose available, away or busy",
        ));
    }
    let boot = current_boot()?;
    let mut p = presence_of(&me)?;
    let before = effective(&p, boot);
    p.status = body.status;
    kv::set_json(model::presence(&me), &p)?;
    let after = effective(&p, boot);
    if before != after {
        announce(&me, after)?;
    }
    Ok(http::json(
        200,
        &json!({ "user": me, "status": after, "chosen": p.status }),
    ))
}

pub fn watch(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let body: Users = req.json()?;
    check_users(&body.users)?;
    for u in &body.users {
        events::join_group(&model::watchers(u), &me)?;
    }
    Ok(http::json(200, &presence_list(&body.users)?))
}

pub fn unwatch(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let body: Users = req.json()?;
    check_users(&body.users)?;
    for u in &body.users {
        events::leave_group(&model::watchers(u), &me)?;
    }
    Ok(http::empty(204))
}
