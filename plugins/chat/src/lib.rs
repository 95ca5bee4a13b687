//! Chat (SPEC C1-C7): direct, group and plugin-owned conversations;
//! messages with paging, edits (with history), deletes (tombstones),
//! replies that keep a copy of what they quote, and attachments stored as
//! blobs and only ever served as downloads; real-time events to members'
//! streams; read state and unread counts; presence; search. Built on host
//! capabilities only. The API is described in `docs/chat.md` and served as
//! OpenAPI at `GET /openapi.json`.
//!
//! Every write of a request happens after all of its checks, so a refused
//! request changes nothing (the host keeps a call's writes when it answers
//! below 500, and drops them otherwise).
//!
//! This file is the door: the router in `Chat::handle`, the event and
//! timer dispatch, and a little glue the areas share (`Reply`, settings,
//! path and query parameters, the registered-user check). One module per
//! area, each importing only those below it:
//!
//! | module | what |
//! |---|---|
//! | `owned` | conversations other plugins own (`/owned`), their purge |
//! | `messages` | post, page, edit, delete, history |
//! | `read` | read state |
//! | `attachments` | uploads, downloads, expiry of unposted uploads |
//! | `search` | the keyed word index and `/search` |
//! | `presence` | status, watchers, the host's presence events |
//! | `conversations` | direct and group conversations, membership (the base) |
//! | `model` | what is stored, under which keys |
//! | `text` | checks and tokenizing of user text |
//!
//! `messages` uses `search`; `owned`, `messages`, `read`, `attachments`,
//! `search` and `presence` use `conversations`; all use `model` and `text`
//! as they need.

mod attachments;
mod conversations;
mod messages;
mod model;
mod owned;
mod presence;
mod read;
mod search;
mod text;

use switchboard_sdk::http::{ApiError, Params, RequestExt as _, Router};
use switchboard_sdk::{Event, Plugin, PrincipalKind, Request, Response, TimerEvent, config};

struct Chat;

const OPENAPI: &str = include_str!("../openapi.json");

impl Plugin for Chat {
    fn handle(request: Request) -> Response {
        let mut response = Router::new()
            .get("/openapi.json", openapi)
            .get("/conversations", conversations::list)
            .post("/conversations", conversations::create)
            .get("/conversations/:cid", conversations::show)
            .patch("/conversations/:cid", conversations::rename)
            .get("/conversations/:cid/members", conversations::list_members)
            .post("/conversations/:cid/members", conversations::add_members)
            .delete(
                "/conversations/:cid/members/:user",
                conversations::remove_member,
            )
            .get("/conversations/:cid/messages", messages::list)
            .post("/conversations/:cid/messages", messages::post)
            .get("/conversations/:cid/messages/:seq", messages::show)
            .patch("/conversations/:cid/messages/:seq", messages::edit)
            .delete("/conversations/:cid/messages/:seq", messages::delete)
            .get(
                "/conversations/:cid/messages/:seq/history",
                messages::history,
            )
            .post("/conversations/:cid/read", read::mark_read)
            .post("/conversations/:cid/attachments", attachments::upload)
            .post(
                "/conversations/:cid/attachments/:aid/content",
                attachments::append,
            )
            .get(
                "/conversations/:cid/attachments/:aid",
                attachments::download,
            )
            .get("/search", search::search)
            .get("/presence", presence::show)
            .put("/presence", presence::set)
            .post("/presence/watch", presence::watch)
            .post("/presence/unwatch", presence::unwatch)
            .post("/owned", owned::create)
            .get("/owned/:resource", owned::show)
            .delete("/owned/:resource", owned::delete)
            .post("/owned/:resource/members", owned::add_members)
            .delete("/owned/:resource/members/:user", owned::remove_member)
            .handle(&request);
        // Handlers check before they write; should a host call still fail
        // after a write, a 5xx makes the host drop the half-done change.
        switchboard_sdk::tx::finish(&mut response);
        response
    }

    fn on_event(event: Event) -> Result<(), String> {
        if event.source != "host" {
            return Ok(());
        }
        match event.kind.as_str() {
            "presence.reset" => presence::reset(&event.data),
            "presence.changed" => presence::changed(&event.data),
            _ => Ok(()),
        }
        .map_err(|e| format!("{}: {}", e.code, e.message))
    }

    fn on_timer(timer: TimerEvent) -> Result<(), String> {
        let payload = String::from_utf8_lossy(&timer.payload).into_owned();
        match timer.name.as_str() {
            "purge" => owned::purge(&payload),
            "expire-upload" => attachments::expire_upload(&payload),
            _ => Ok(()),
        }
        .map_err(|e| format!("{}: {}", e.code, e.message))
    }
}

switchboard_sdk::export_plugin!(Chat);

/// What a route handler answers.
pub(crate) type Reply = Result<Response, ApiError>;

/// Tenant setting `key`: on unless the tenant's admin turned it off.
pub(crate) fn setting_bool(key: &str) -> bool {
    config::get::<bool>(key).unwrap_or(true)
}

/// Tenant setting `key`, or `default`.
pub(crate) fn setting_int(key: &str, default: u64) -> u64 {
    config::get::<u64>(key).unwrap_or(default)
}

/// Path parameter `name` (empty when the route has none).
pub(crate) fn param<'a>(p: &'a Params, name: &str) -> &'a str {
    p.get(name).unwrap_or_default()
}

/// The `limit` query parameter: `default` when absent, else 1 to `max`
/// (400 `invalid_limit`).
pub(crate) fn limit_param(req: &Request, default: u32, max: u32) -> Result<u32, ApiError> {
    match req.query_param("limit") {
        None => Ok(default),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit is a number from 1 to {max}"),
            )),
        },
    }
}

/// The caller, who must not be a guest (403 `guests_not_allowed`).
pub(crate) fn registered(req: &Request) -> Result<String, ApiError> {
    let user = req.user()?.to_string();
    if req.principal.kind == PrincipalKind::Guest {
        return Err(ApiError::new(
            403,
            "guests_not_allowed",
            "guests take part only in the conversations they were added to",
        ));
    }
    Ok(user)
}

/// `GET /openapi.json`: the API's description.
fn openapi(_: &Request, _: &Params) -> Reply {
    Ok(Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: OPENAPI.as_bytes().to_vec(),
    })
}
