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

mod model;
mod text;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _, Router};
use switchboard_sdk::{
    Event, Plugin, PrincipalKind, Request, Response, TimerEvent, audit, blobs, config, crypto,
    events, identity, kv, timers,
};

use model::{
    Attachment, Conversation, Deletion, Kind, Member, Message, Presence, Quote, Revision, Status,
};

struct Chat;

/// Most attachments on one message.
const MAX_ATTACHMENTS: usize = 10;
/// Most edits of one message (its history is kept).
const MAX_EDITS: u32 = 100;
/// Most users named in one presence request.
const MAX_PRESENCE_USERS: usize = 500;
/// A blob append takes at most this much.
const CHUNK: usize = 4 << 20;
/// Unposted uploads are removed after this long.
const PENDING_UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Keys the purge of a deleted conversation removes per timer run.
const PURGE_BATCH: u32 = 400;
/// Uploads one user may have waiting to be posted.
const MAX_PENDING_UPLOADS: u32 = 50;
/// The quote kept in a reply is cut to this many characters.
const MAX_QUOTE_CHARS: usize = 1000;

const OPENAPI: &str = include_str!("../openapi.json");

impl Plugin for Chat {
    fn handle(request: Request) -> Response {
        let mut response = Router::new()
            .get("/openapi.json", openapi)
            .get("/conversations", list_conversations)
            .post("/conversations", create_conversation)
            .get("/conversations/:cid", get_conversation)
            .patch("/conversations/:cid", rename_conversation)
            .get("/conversations/:cid/members", list_members)
            .post("/conversations/:cid/members", add_members)
            .delete("/conversations/:cid/members/:user", remove_member)
            .get("/conversations/:cid/messages", list_messages)
            .post("/conversations/:cid/messages", post_message)
            .get("/conversations/:cid/messages/:seq", get_message)
            .patch("/conversations/:cid/messages/:seq", edit_message)
            .delete("/conversations/:cid/messages/:seq", delete_message)
            .get("/conversations/:cid/messages/:seq/history", message_history)
            .post("/conversations/:cid/read", mark_read)
            .post("/conversations/:cid/attachments", upload_attachment)
            .post(
                "/conversations/:cid/attachments/:aid/content",
                append_attachment,
            )
            .get("/conversations/:cid/attachments/:aid", download_attachment)
            .get("/search", search)
            .get("/presence", get_presence)
            .put("/presence", set_presence)
            .post("/presence/watch", watch_presence)
            .post("/presence/unwatch", unwatch_presence)
            .post("/owned", owned_create)
            .get("/owned/:resource", owned_get)
            .delete("/owned/:resource", owned_delete)
            .post("/owned/:resource/members", owned_add_members)
            .delete("/owned/:resource/members/:user", owned_remove_member)
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
            "presence.reset" => presence_reset(&event.data),
            "presence.changed" => presence_changed(&event.data),
            _ => Ok(()),
        }
        .map_err(|e| format!("{}: {}", e.code, e.message))
    }

    fn on_timer(timer: TimerEvent) -> Result<(), String> {
        let payload = String::from_utf8_lossy(&timer.payload).into_owned();
        match timer.name.as_str() {
            "purge" => purge(&payload),
            "expire-upload" => expire_upload(&payload),
            _ => Ok(()),
        }
        .map_err(|e| format!("{}: {}", e.code, e.message))
    }
}

switchboard_sdk::export_plugin!(Chat);

type Reply = Result<Response, ApiError>;

// ---- helpers ---------------------------------------------------------------

impl Conversation {
    /// A new conversation with no members yet, id drawn at random.
    fn new(
        kind: Kind,
        title: Option<String>,
        created_by: &str,
        now: u64,
        owner: Option<String>,
        resource: Option<String>,
    ) -> Conversation {
        Conversation {
            id: crypto::random_id(),
            kind,
            title,
            created_by: created_by.to_string(),
            created_at: now,
            last_seq: 0,
            last_at: now,
            members: 0,
            owner,
            resource,
            deleted: false,
        }
    }
}

fn setting_bool(key: &str) -> bool {
    config::get::<bool>(key).unwrap_or(true)
}

fn setting_int(key: &str, default: u64) -> u64 {
    config::get::<u64>(key).unwrap_or(default)
}

fn param<'a>(p: &'a Params, name: &str) -> &'a str {
    p.get(name).unwrap_or_default()
}

fn json_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn publish_group(cid: &str, kind: &str, data: &Value) -> Result<(), ApiError> {
    events::publish_to_group(&model::group(cid), kind, data.to_string().as_bytes())?;
    Ok(())
}

/// Largest event the plugin sends whole; an event carries at most 64 KiB.
const MAX_EVENT_BYTES: usize = 60 << 10;

/// Publishes a message to the conversation's members: the whole message,
/// or, when that is too big for an event, its id and sender with
/// `"truncated": true` for clients to fetch it.
fn publish_message(cid: &str, kind: &str, message: &Message) -> Result<(), ApiError> {
    let full = json!({ "message": message });
    if full.to_string().len() <= MAX_EVENT_BYTES {
        return publish_group(cid, kind, &full);
    }
    let slim = json!({ "message": {
        "conversation": message.conversation, "seq": message.seq, "sender": message.sender,
        "sent_at": message.sent_at, "edited_at": message.edited_at, "edits": message.edits,
    }, "truncated": true });
    publish_group(cid, kind, &slim)
}

fn limit_param(req: &Request, default: u32, max: u32) -> Result<u32, ApiError> {
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

fn not_found_conversation() -> ApiError {
    ApiError::new(
        404,
        "conversation_not_found",
        "no such conversation, or you are not a member",
    )
}

/// A live conversation by id (404 when deleted or unknown).
fn load_conversation(cid: &str) -> Result<Conversation, ApiError> {
    http::check_id(cid, "conversation")?;
    match kv::get_json::<Conversation>(model::conversation(cid))? {
        Some(c) if !c.deleted => Ok(c),
        _ => Err(not_found_conversation()),
    }
}

/// The caller, the conversation and their membership. Non-members get the
/// same 404 as for a conversation that does not exist.
fn membership(req: &Request, cid: &str) -> Result<(String, Conversation, Member), ApiError> {
    let user = req.user()?.to_string();
    let conv = load_conversation(cid)?;
    let member =
        kv::get_json::<Member>(model::member(cid, &user))?.ok_or_else(not_found_conversation)?;
    Ok((user, conv, member))
}

fn load_message(cid: &str, seq: u64) -> Result<Message, ApiError> {
    kv::get_json::<Message>(model::message(cid, seq))?.ok_or_else(|| {
        ApiError::new(
            404,
            "message_not_found",
            format!("conversation has no message {seq}"),
        )
    })
}

fn registered(req: &Request) -> Result<String, ApiError> {
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

/// The id of an active user of this tenant named by id or login name.
fn resolve_user(id_or_name: &str) -> Result<String, ApiError> {
    if id_or_name.is_empty() || id_or_name.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_user",
            "a user is named by id or login name",
        ));
    }
    match identity::lookup_user(id_or_name)? {
        Some(u) if u.active => Ok(u.id),
        _ => Err(ApiError::bad_request(
            "unknown_user",
            format!(
                "no active user {:?} in this tenant",
                id_or_name.chars().take(80).collect::<String>()
            ),
        )),
    }
}

/// Adds `user` to `conv` (not yet stored): membership, the user's index
/// and the event group.
fn add_member(conv: &mut Conversation, user: &str, by: &str, now: u64) -> Result<bool, ApiError> {
    if kv::get(model::member(&conv.id, user))?.is_some() {
        return Ok(false);
    }
    kv::set_json(
        model::member(&conv.id, user),
        &Member {
            user: user.to_string(),
            joined_at: now,
            added_by: by.to_string(),
            last_read: 0,
        },
    )?;
    kv::set(model::user_conversation(user, &conv.id), b"")?;
    events::join_group(&model::group(&conv.id), user)?;
    conv.members += 1;
    Ok(true)
}

fn drop_member(conv: &mut Conversation, user: &str) -> Result<bool, ApiError> {
    if !kv::delete(model::member(&conv.id, user))? {
        return Ok(false);
    }
    kv::delete(model::user_conversation(user, &conv.id))?;
    events::leave_group(&model::group(&conv.id), user)?;
    conv.members = conv.members.saturating_sub(1);
    Ok(true)
}

fn member_ids(cid: &str, limit: u32) -> Result<Vec<String>, ApiError> {
    let page = kv::scan(model::members_prefix(cid), None, limit)?;
    Ok(page
        .entries
        .iter()
        .filter_map(|e| serde_json::from_slice::<Member>(&e.value).ok())
        .map(|m| m.user)
        .collect())
}

/// Every member id, page by page.
fn all_member_ids(cid: &str) -> Result<Vec<String>, ApiError> {
    let prefix = model::members_prefix(cid);
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = kv::scan(&prefix, after.as_deref(), 1000)?;
        out.extend(
            page.entries
                .iter()
                .filter_map(|e| serde_json::from_slice::<Member>(&e.value).ok())
                .map(|m| m.user),
        );
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

fn conversation_view(conv: &Conversation, member: Option<&Member>) -> Result<Value, ApiError> {
    let mut v = json_value(conv);
    if let Some(m) = member {
        v["last_read"] = json!(m.last_read);
        v["unread"] = json!(conv.last_seq.saturating_sub(m.last_read));
    }
    if conv.kind == Kind::Direct {
        v["members_list"] = json!(member_ids(&conv.id, 2)?);
    }
    Ok(v)
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

fn message_target(cid: &str, seq: u64) -> String {
    format!("conversation/{cid}/message/{seq}")
}

/// The index tag of a word: a keyed hash (HMAC-SHA-256 under a key the
/// host holds for this tenant's chat) of its first three characters. Key
/// names are not encrypted at rest, so words never appear in them; several
/// words share a tag, and search checks each candidate message.
fn index_tag(word: &str) -> Result<String, ApiError> {
    let head: String = word.chars().take(text::TAG_CHARS).collect();
    let mac = crypto::hmac_sha256("search-index", head.as_bytes())?;
    Ok(crypto::hex(&mac[..12]))
}

/// The distinct index tags of a text.
fn index_tags(body: &str) -> Result<BTreeSet<String>, ApiError> {
    text::tokens(body).iter().map(|t| index_tag(t)).collect()
}

fn index_message(cid: &str, seq: u64, body: &str) -> Result<(), ApiError> {
    for tag in index_tags(body)? {
        kv::set(model::index(cid, &tag, seq), b"")?;
    }
    Ok(())
}

fn unindex_message(cid: &str, seq: u64, body: &str) -> Result<(), ApiError> {
    for tag in index_tags(body)? {
        kv::delete(model::index(cid, &tag, seq))?;
    }
    Ok(())
}

// ---- conversations -----------------------------------------------------------

fn openapi(_: &Request, _: &Params) -> Reply {
    Ok(Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: OPENAPI.as_bytes().to_vec(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConversation {
    kind: Kind,
    /// Direct: the other user (id or login name).
    #[serde(default)]
    user: Option<String>,
    /// Group: its title and first members (besides the creator).
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    members: Vec<String>,
}

fn create_conversation(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let body: CreateConversation = req.json()?;
    let now = switchboard_sdk::now_ms();
    match body.kind {
        Kind::Direct => {
            let Some(other) = body.user.as_deref() else {
                return Err(ApiError::bad_request(
                    "invalid_member",
                    "a direct conversation names the other user in \"user\"",
                ));
            };
            if body.title.is_some() || !body.members.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_member",
                    "a direct conversation has no title and exactly one other member",
                ));
            }
            let other = resolve_user(other)?;
            if other == me {
                return Err(ApiError::bad_request(
                    "invalid_member",
                    "a direct conversation is with another user",
                ));
            }
            let pair = model::direct_pair(&me, &other);
            if let Some(existing) = kv::get(&pair)? {
                let cid = String::from_utf8_lossy(&existing).into_owned();
                let conv = load_conversation(&cid)?;
                let member = kv::get_json::<Member>(model::member(&cid, &me))?;
                return Ok(http::json(200, &conversation_view(&conv, member.as_ref())?));
            }
            let mut conv = Conversation::new(Kind::Direct, None, &me, now, None, None);
            add_member(&mut conv, &me, &me, now)?;
            add_member(&mut conv, &other, &me, now)?;
            kv::set(&pair, conv.id.as_bytes())?;
            kv::set_json(model::conversation(&conv.id), &conv)?;
            created(&conv, &me)
        }
        Kind::Group => {
            let title = text::title(body.title.as_deref().unwrap_or_default())?;
            if body.user.is_some() {
                return Err(ApiError::bad_request(
                    "invalid_member",
                    "a group names its members in \"members\"",
                ));
            }
            let max = setting_int("max-group-members", 1000) as usize;
            if body.members.len() > max {
                return Err(ApiError::new(
                    413,
                    "too_many_members",
                    format!("a group has at most {max} members"),
                ));
            }
            let mut users = BTreeSet::new();
            for m in &body.members {
                users.insert(resolve_user(m)?);
                if users.len() + 1 > max {
                    return Err(ApiError::new(
                        413,
                        "too_many_members",
                        format!("a group has at most {max} members"),
                    ));
                }
            }
            users.remove(&me);
            let mut conv = Conversation::new(Kind::Group, Some(title), &me, now, None, None);
            add_member(&mut conv, &me, &me, now)?;
            for u in &users {
                add_member(&mut conv, u, &me, now)?;
            }
            kv::set_json(model::conversation(&conv.id), &conv)?;
            created(&conv, &me)
        }
        Kind::Owned => Err(ApiError::bad_request(
            "invalid_kind",
            "owned conversations are created by their plugin through POST /owned",
        )),
    }
}

fn created(conv: &Conversation, me: &str) -> Reply {
    let members = all_member_ids(&conv.id)?;
    audit_ids("chat.conversation.create", conv, me, &members)?;
    publish_group(
        &conv.id,
        "chat.conversation.created",
        &json!({ "conversation": conv }),
    )?;
    let member = kv::get_json::<Member>(model::member(&conv.id, me))?;
    Ok(http::json(201, &conversation_view(conv, member.as_ref())?))
}

fn list_conversations(req: &Request, _: &Params) -> Reply {
    let me = req.user()?.to_string();
    let limit = limit_param(req, 100, 500)?;
    let after = match req.query_param("after") {
        Some(a) => {
            http::check_id(&a, "conversation")?;
            Some(model::user_conversation(&me, &a).into_bytes())
        }
        None => None,
    };
    let prefix = format!("uc/{me}/");
    let page = kv::scan(&prefix, after.as_deref(), limit)?;
    let mut out = Vec::new();
    let mut total_unread = 0u64;
    for e in &page.entries {
        let cid = String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned();
        let Ok(conv) = load_conversation(&cid) else {
            continue;
        };
        let member = kv::get_json::<Member>(model::member(&cid, &me))?;
        if let Some(m) = &member {
            total_unread += conv.last_seq.saturating_sub(m.last_read);
        }
        out.push((conv.last_at, conversation_view(&conv, member.as_ref())?));
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.0));
    let next = page
        .next
        .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
    Ok(http::json(
        200,
        &json!({
            "conversations": out.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "unread": total_unread,
            "next": next,
        }),
    ))
}

fn get_conversation(req: &Request, p: &Params) -> Reply {
    let (_, conv, member) = membership(req, param(p, "cid"))?;
    Ok(http::json(200, &conversation_view(&conv, Some(&member))?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    title: String,
}

fn rename_conversation(req: &Request, p: &Params) -> Reply {
    let (me, mut conv, _) = membership(req, param(p, "cid"))?;
    let body: Rename = req.json()?;
    let title = text::title(&body.title)?;
    if conv.kind != Kind::Group {
        return Err(ApiError::bad_request(
            "not_a_group",
            "only groups have titles to change",
        ));
    }
    conv.title = Some(title);
    kv::set_json(model::conversation(&conv.id), &conv)?;
    publish_group(
        &conv.id,
        "chat.conversation.updated",
        &json!({ "conversation": conv, "by": me }),
    )?;
    Ok(http::json(200, &conv))
}

fn list_members(req: &Request, p: &Params) -> Reply {
    let (_, conv, _) = membership(req, param(p, "cid"))?;
    let after = match req.query_param("after") {
        Some(u) => {
            http::check_user_id(&u)?;
            Some(model::member(&conv.id, &u).into_bytes())
        }
        None => None,
    };
    let limit = limit_param(req, 500, 1000)?;
    let prefix = model::members_prefix(&conv.id);
    let page = kv::scan(&prefix, after.as_deref(), limit)?;
    let members: Vec<Value> = page
        .entries
        .iter()
        .filter_map(|e| serde_json::from_slice::<Member>(&e.value).ok())
        .map(|m| json!({ "user": m.user, "joined_at": m.joined_at, "added_by": m.added_by, "last_read": m.last_read }))
        .collect();
    let next = page
        .next
        .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
    Ok(http::json(
        200,
        &json!({ "members": members, "next": next }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Users {
    users: Vec<String>,
}

fn add_members(req: &Request, p: &Params) -> Reply {
    let cid = param(p, "cid");
    let me = registered(req)?;
    let conv = load_conversation(cid)?;
    let is_member = kv::get(model::member(cid, &me))?.is_some();
    if !is_member && !req.is_admin() {
        return Err(not_found_conversation());
    }
    let body: Users = req.json()?;
    group_only(&conv)?;
    if body.users.is_empty() || body.users.len() > 1000 {
        return Err(ApiError::bad_request(
            "invalid_users",
            "name 1-1000 users to add",
        ));
    }
    let mut users = BTreeSet::new();
    for u in &body.users {
        users.insert(resolve_user(u)?);
    }
    // An admin who is not a member manages the group but cannot read it
    // by joining it.
    if !is_member && users.contains(&me) {
        return Err(ApiError::forbidden(
            "tenant admins who are not members may not add themselves",
        ));
    }
    change_members(conv, &me, &users, &BTreeSet::new())
}

fn group_only(conv: &Conversation) -> Result<(), ApiError> {
    match conv.kind {
        Kind::Group => Ok(()),
        Kind::Direct => Err(ApiError::bad_request(
            "not_a_group",
            "a direct conversation always has its two members",
        )),
        Kind::Owned => Err(ApiError::new(
            403,
            "owned_by_plugin",
            format!(
                "the members of this conversation are managed by {}",
                conv.owner.as_deref().unwrap_or("its plugin")
            ),
        )),
    }
}

/// Adds and removes members, publishing each change; answers with the
/// conversation.
fn change_members(
    mut conv: Conversation,
    by: &str,
    add: &BTreeSet<String>,
    remove: &BTreeSet<String>,
) -> Reply {
    let now = switchboard_sdk::now_ms();
    let max = if conv.kind == Kind::Owned {
        10_000
    } else {
        setting_int("max-group-members", 1000) as u32
    };
    // Count first: a refused change writes nothing.
    let mut new = 0u32;
    for u in add {
        if kv::get(model::member(&conv.id, u))?.is_none() {
            new += 1;
        }
    }
    if new > 0 && conv.members.saturating_add(new) > max {
        return Err(ApiError::new(
            413,
            "too_many_members",
            format!("this conversation has at most {max} members"),
        ));
    }
    let mut added = Vec::new();
    for u in add {
        if add_member(&mut conv, u, by, now)? {
            added.push(u.clone());
        }
    }
    let mut removed = Vec::new();
    for u in remove {
        if drop_member(&mut conv, u)? {
            removed.push(u.clone());
        }
    }
    kv::set_json(model::conversation(&conv.id), &conv)?;
    announce_members(&conv, by, "added", &added)?;
    announce_members(&conv, by, "removed", &removed)?;
    Ok(http::json(200, &conv))
}

/// Ids per membership event (an event carries at most 64 KiB).
const IDS_PER_EVENT: usize = 1000;
/// Ids named in one audit entry (its details carry at most 4 KiB).
const IDS_PER_AUDIT: usize = 100;

/// Tells the members (and the removed) about a membership change and
/// audits it: `change` is `added` or `removed`.
fn announce_members(
    conv: &Conversation,
    by: &str,
    change: &str,
    users: &[String],
) -> Result<(), ApiError> {
    if users.is_empty() {
        return Ok(());
    }
    let kind = format!("chat.member.{change}");
    for part in users.chunks(IDS_PER_EVENT) {
        let data = json!({ "conversation": conv.id, "users": part, "by": by });
        publish_group(&conv.id, &kind, &data)?;
        if change == "removed" {
            // The removed are out of the group already: tell them directly.
            events::publish_to_users(part, &kind, data.to_string().as_bytes())?;
        }
    }
    let action = if change == "added" {
        "chat.member.add"
    } else {
        "chat.member.remove"
    };
    audit_ids(action, conv, by, users)
}

/// Audit entries naming `users` (as many entries as their number needs).
fn audit_ids(
    action: &str,
    conv: &Conversation,
    by: &str,
    users: &[String],
) -> Result<(), ApiError> {
    let target = format!("conversation/{}", conv.id);
    for part in users.chunks(IDS_PER_AUDIT) {
        audit_ok(action, &target, json!({ "by": by, "users": part }))?;
    }
    Ok(())
}

fn remove_member(req: &Request, p: &Params) -> Reply {
    let cid = param(p, "cid");
    let target = param(p, "user");
    let me = req.user()?.to_string();
    let conv = load_conversation(cid)?;
    let is_member = kv::get(model::member(cid, &me))?.is_some();
    // Anyone may leave; members and tenant admins may remove others.
    if !(is_member || req.is_admin() && req.principal.kind != PrincipalKind::Guest) {
        return Err(not_found_conversation());
    }
    http::check_user_id(target)?;
    group_only(&conv)?;
    if kv::get(model::member(cid, target))?.is_none() {
        return Err(ApiError::new(
            404,
            "member_not_found",
            "that user is not a member",
        ));
    }
    let one = BTreeSet::from([target.to_string()]);
    change_members(conv, &me, &BTreeSet::new(), &one)
}

// ---- messages ----------------------------------------------------------------

fn list_messages(req: &Request, p: &Params) -> Reply {
    let (_, conv, _) = membership(req, param(p, "cid"))?;
    let limit = limit_param(req, 50, 200)?;
    let seq_param = |name: &str| -> Result<Option<u64>, ApiError> {
        match req.query_param(name) {
            None => Ok(None),
            Some(s) if s == "0" => Ok(Some(0)),
            Some(s) => text::seq(&s).map(Some),
        }
    };
    let before = seq_param("before")?;
    let after = seq_param("after")?;
    let mut messages = Vec::new();
    match (before, after) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_cursor",
            "give before (newest first) or after (oldest first), not both",
        )),
        (_, Some(after)) => {
            // Oldest first from a cursor: seqs are dense, so fetch them.
            let end = conv.last_seq.min(after.saturating_add(limit as u64));
            for seq in after + 1..=end {
                if let Some(m) = kv::get_json::<Message>(model::message(&conv.id, seq))? {
                    messages.push(m);
                }
            }
            let next = (end < conv.last_seq).then_some(end);
            Ok(http::json(
                200,
                &json!({ "messages": messages, "next_after": next }),
            ))
        }
        (before, None) => {
            let start = before.map(|b| model::message(&conv.id, b).into_bytes());
            let page = kv::scan(model::messages_prefix(&conv.id), start.as_deref(), limit)?;
            for e in &page.entries {
                if let Ok(m) = serde_json::from_slice::<Message>(&e.value) {
                    messages.push(m);
                }
            }
            let next = page.next.and(messages.last().map(|m| m.seq));
            Ok(http::json(
                200,
                &json!({ "messages": messages, "next_before": next }),
            ))
        }
    }
}

fn get_message(req: &Request, p: &Params) -> Reply {
    let (_, conv, _) = membership(req, param(p, "cid"))?;
    let seq = text::seq(param(p, "seq"))?;
    Ok(http::json(200, &load_message(&conv.id, seq)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Post {
    #[serde(default)]
    text: String,
    #[serde(default)]
    reply_to: Option<u64>,
    #[serde(default)]
    attachments: Vec<String>,
    /// Makes retries safe: a second post with the same id returns the
    /// first message.
    #[serde(default)]
    client_id: Option<String>,
}

fn post_message(req: &Request, p: &Params) -> Reply {
    let (me, mut conv, mut member) = membership(req, param(p, "cid"))?;
    let body: Post = req.json()?;
    let cid = conv.id.clone();
    // Checks first: nothing is written unless all pass. A retry of a post
    // that went through returns it, whatever else changed since.
    let client_key = match &body.client_id {
        Some(c) => {
            if c.is_empty()
                || c.len() > 64
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(ApiError::bad_request(
                    "invalid_client_id",
                    "client_id is 1-64 of [A-Za-z0-9._-]",
                ));
            }
            let mac = crypto::hmac_sha256("client-id", c.as_bytes())?;
            let hashed = crypto::hex(&mac[..16]);
            let key = model::client_id(&cid, &me, &hashed);
            if let Some(seq) = kv::get(&key)? {
                let seq = String::from_utf8_lossy(&seq).parse::<u64>().unwrap_or(0);
                return Ok(http::json(200, &load_message(&cid, seq)?));
            }
            Some(key)
        }
        None => None,
    };
    if body.attachments.len() > MAX_ATTACHMENTS {
        return Err(ApiError::bad_request(
            "too_many_attachments",
            format!("a message carries at most {MAX_ATTACHMENTS} attachments"),
        ));
    }
    let mut attachments = Vec::new();
    for aid in &body.attachments {
        http::check_id(aid, "attachment")?;
        let a = kv::get_json::<Attachment>(model::attachment(&cid, aid))?
            .filter(|a| a.uploader == me && a.message.is_none())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_attachment",
                    format!(
                        "attachment {aid} is not an unposted upload of yours in this conversation"
                    ),
                )
            })?;
        if attachments.iter().any(|x: &Attachment| x.id == a.id) {
            return Err(ApiError::bad_request(
                "invalid_attachment",
                "an attachment is listed twice",
            ));
        }
        attachments.push(a);
    }
    let max_chars = setting_int("max-message-chars", 4000) as usize;
    text::message(&body.text, max_chars, !attachments.is_empty())?;
    let reply_to = match body.reply_to {
        None => None,
        Some(seq) => {
            let original = load_message(&cid, seq)?;
            if original.deleted.is_some() {
                return Err(ApiError::new(
                    409,
                    "message_deleted",
                    format!("message {seq} was deleted; there is nothing to quote"),
                ));
            }
            Some(Quote {
                seq,
                sender: original.sender,
                sent_at: original.sent_at,
                text: original.text.chars().take(MAX_QUOTE_CHARS).collect(),
                attachments: original.attachments.into_iter().map(|a| a.name).collect(),
            })
        }
    };
    // Writes.
    let now = switchboard_sdk::now_ms();
    let seq = conv.last_seq + 1;
    for a in &mut attachments {
        a.message = Some(seq);
        kv::set_json(model::attachment(&cid, &a.id), a)?;
        kv::delete(model::pending(&me, &a.id))?;
    }
    let message = Message {
        conversation: cid.clone(),
        seq,
        sender: me.clone(),
        sent_at: now,
        text: body.text,
        reply_to,
        attachments: attachments.iter().map(Attachment::reference).collect(),
        edited_at: None,
        edits: 0,
        deleted: None,
    };
    kv::set_json(model::message(&cid, seq), &message)?;
    index_message(&cid, seq, &message.text)?;
    conv.last_seq = seq;
    conv.last_at = now;
    kv::set_json(model::conversation(&cid), &conv)?;
    member.last_read = seq;
    kv::set_json(model::member(&cid, &me), &member)?;
    if let Some(key) = client_key {
        kv::set(key, seq.to_string())?;
    }
    if !message.attachments.is_empty() {
        // Files shared are audited (SPEC M11) by id and size, never by
        // name or content.
        let files: Vec<Value> = message
            .attachments
            .iter()
            .map(|a| json!({ "id": a.id, "bytes": a.size }))
            .collect();
        audit_ok(
            "chat.file.add",
            &message_target(&cid, seq),
            json!({ "sender": me, "files": files }),
        )?;
    }
    publish_message(&cid, "chat.message.created", &message)?;
    Ok(http::json(201, &message))
}

/// The message `seq` of the caller, for changing it: checks membership,
/// existence, that it is not deleted, that the caller sent it, and the
/// tenant's policy setting `policy`.
fn own_message(req: &Request, p: &Params, policy: &str) -> Result<(String, Message), ApiError> {
    let (me, conv, _) = membership(req, param(p, "cid"))?;
    let seq = text::seq(param(p, "seq"))?;
    let message = load_message(&conv.id, seq)?;
    if message.sender != me {
        return Err(ApiError::new(
            403,
            "not_sender",
            "only the sender may change a message",
        ));
    }
    if !setting_bool(policy) {
        let what = if policy == "allow-edit" {
            "editing"
        } else {
            "deleting"
        };
        return Err(ApiError::new(
            403,
            "policy_disabled",
            format!("the tenant admin turned off {what} messages"),
        ));
    }
    Ok((me, message))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    text: String,
}

fn edit_message(req: &Request, p: &Params) -> Reply {
    let (me, mut message) = own_message(req, p, "allow-edit")?;
    let body: Edit = req.json()?;
    let cid = message.conversation.clone();
    if message.deleted.is_some() {
        return Err(ApiError::new(
            409,
            "message_deleted",
            "a deleted message cannot be edited",
        ));
    }
    let max_chars = setting_int("max-message-chars", 4000) as usize;
    text::message(&body.text, max_chars, !message.attachments.is_empty())?;
    if body.text == message.text {
        return Ok(http::json(200, &message));
    }
    if message.edits >= MAX_EDITS {
        return Err(ApiError::new(
            409,
            "edit_limit",
            format!("a message can be edited at most {MAX_EDITS} times"),
        ));
    }
    let now = switchboard_sdk::now_ms();
    kv::set_json(
        model::revision(&cid, message.seq, message.edits),
        &Revision {
            text: message.text.clone(),
            replaced_at: now,
        },
    )?;
    unindex_message(&cid, message.seq, &message.text)?;
    index_message(&cid, message.seq, &body.text)?;
    message.text = body.text;
    message.edits += 1;
    message.edited_at = Some(now);
    kv::set_json(model::message(&cid, message.seq), &message)?;
    audit_ok(
        "chat.message.edit",
        &message_target(&cid, message.seq),
        json!({ "sender": me, "edits": message.edits }),
    )?;
    publish_message(&cid, "chat.message.edited", &message)?;
    Ok(http::json(200, &message))
}

fn delete_message(req: &Request, p: &Params) -> Reply {
    let (me, mut message) = own_message(req, p, "allow-delete")?;
    let cid = message.conversation.clone();
    if message.deleted.is_some() {
        return Ok(http::json(200, &message));
    }
    let now = switchboard_sdk::now_ms();
    // Attachments first: one under legal hold refuses the delete before
    // anything else changed.
    for a in &message.attachments {
        if let Some(att) = kv::get_json::<Attachment>(model::attachment(&cid, &a.id))? {
            match blobs::delete(&att.blob) {
                Ok(_) => {}
                Err(switchboard_sdk::Error::Denied(m)) => {
                    return Err(ApiError::new(
                        409,
                        "legal_hold",
                        format!("an attachment of this message is under legal hold: {m}"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            kv::delete(model::attachment(&cid, &a.id))?;
        }
    }
    if !message.attachments.is_empty() {
        let files: Vec<&str> = message.attachments.iter().map(|a| a.id.as_str()).collect();
        audit_ok(
            "chat.file.remove",
            &message_target(&cid, message.seq),
            json!({ "by": me, "files": files }),
        )?;
    }
    unindex_message(&cid, message.seq, &message.text)?;
    for n in 0..message.edits {
        kv::delete(model::revision(&cid, message.seq, n))?;
    }
    let removed_attachments = message.attachments.len();
    message.text.clear();
    message.attachments.clear();
    message.reply_to = None;
    message.deleted = Some(Deletion {
        at: now,
        by: me.clone(),
    });
    kv::set_json(model::message(&cid, message.seq), &message)?;
    audit_ok(
        "chat.message.delete",
        &message_target(&cid, message.seq),
        json!({ "sender": me, "attachments": removed_attachments }),
    )?;
    publish_group(
        &cid,
        "chat.message.deleted",
        &json!({ "conversation": cid, "seq": message.seq, "deleted": message.deleted }),
    )?;
    Ok(http::json(200, &message))
}

fn message_history(req: &Request, p: &Params) -> Reply {
    let (_, conv, _) = membership(req, param(p, "cid"))?;
    let seq = text::seq(param(p, "seq"))?;
    let message = load_message(&conv.id, seq)?;
    let page = kv::scan(model::revisions_prefix(&conv.id, seq), None, MAX_EDITS)?;
    let revisions: Vec<Revision> = page
        .entries
        .iter()
        .filter_map(|e| serde_json::from_slice(&e.value).ok())
        .collect();
    Ok(http::json(
        200,
        &json!({ "message": message, "revisions": revisions }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Read {
    seq: u64,
}

fn mark_read(req: &Request, p: &Params) -> Reply {
    let (me, conv, mut member) = membership(req, param(p, "cid"))?;
    let body: Read = req.json()?;
    if body.seq > conv.last_seq {
        return Err(ApiError::bad_request(
            "invalid_seq",
            format!("the newest message is {}", conv.last_seq),
        ));
    }
    if body.seq > member.last_read {
        member.last_read = body.seq;
        kv::set_json(model::member(&conv.id, &me), &member)?;
        publish_group(
            &conv.id,
            "chat.read",
            &json!({ "conversation": conv.id, "user": me, "seq": body.seq }),
        )?;
    }
    Ok(http::json(
        200,
        &json!({ "last_read": member.last_read, "unread": conv.last_seq.saturating_sub(member.last_read) }),
    ))
}

// ---- attachments ---------------------------------------------------------------

fn max_attachment_bytes() -> u64 {
    setting_int("max-attachment-mib", 15) << 20
}

/// `POST /conversations/:cid/attachments?name=&type=`: the body is the
/// file, or its first part (more with `.../content?offset=`).
fn upload_attachment(req: &Request, p: &Params) -> Reply {
    let (me, conv, _) = membership(req, param(p, "cid"))?;
    let name = req.query_param("name").unwrap_or_default();
    text::file_name(&name)?;
    let content_type = text::content_type(req.query_param("type").as_deref())?;
    let max = max_attachment_bytes();
    if req.body.len() as u64 > max {
        return Err(too_big(max));
    }
    if req.body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_part",
            "a file has at least one byte",
        ));
    }
    let pending = kv::scan(model::pending_prefix(&me), None, MAX_PENDING_UPLOADS)?;
    if pending.entries.len() as u32 >= MAX_PENDING_UPLOADS {
        return Err(ApiError::new(
            429,
            "too_many_uploads",
            format!(
                "at most {MAX_PENDING_UPLOADS} uploads wait to be posted; post or let them expire"
            ),
        ));
    }
    let blob = blobs::create(Some(&me), "chat")?;
    let size = blobs::append(&blob, &req.body)?;
    let attachment = Attachment {
        id: crypto::random_id(),
        conversation: conv.id.clone(),
        uploader: me,
        name,
        content_type,
        size,
        blob,
        created_at: switchboard_sdk::now_ms(),
        message: None,
    };
    kv::set_json(model::attachment(&conv.id, &attachment.id), &attachment)?;
    kv::set(
        model::pending(&attachment.uploader, &attachment.id),
        conv.id.as_bytes(),
    )?;
    timers::schedule(
        PENDING_UPLOAD_TTL,
        "expire-upload",
        format!("{}/{}", conv.id, attachment.id).as_bytes(),
    )?;
    Ok(http::json(201, &attachment_view(&attachment)))
}

fn too_big(max: u64) -> ApiError {
    ApiError::new(
        413,
        "attachment_too_large",
        format!("an attachment has at most {} MiB", max >> 20),
    )
}

fn attachment_view(a: &Attachment) -> Value {
    json!({
        "id": a.id, "conversation": a.conversation, "uploader": a.uploader, "name": a.name,
        "content_type": a.content_type, "size": a.size, "created_at": a.created_at,
        "message": a.message,
    })
}

/// `POST .../attachments/:aid/content?offset=N`: appends the body when
/// `offset` is the size so far (a retry after a lost answer is told the
/// size instead of duplicating data).
fn append_attachment(req: &Request, p: &Params) -> Reply {
    let (me, conv, _) = membership(req, param(p, "cid"))?;
    let aid = param(p, "aid");
    http::check_id(aid, "attachment")?;
    let mut a = kv::get_json::<Attachment>(model::attachment(&conv.id, aid))?
        .filter(|a| a.uploader == me)
        .ok_or_else(|| ApiError::new(404, "attachment_not_found", "no such upload of yours"))?;
    if a.message.is_some() {
        return Err(ApiError::new(
            409,
            "attachment_posted",
            "a posted attachment cannot change",
        ));
    }
    let offset = req
        .query_param("offset")
        .and_then(|o| o.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_offset",
                "offset is the number of bytes uploaded so far",
            )
        })?;
    if offset != a.size {
        return Err(ApiError::new(
            409,
            "offset_mismatch",
            format!("the upload has {} bytes; continue from there", a.size),
        ));
    }
    if req.body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_part",
            "a part has at least one byte",
        ));
    }
    let max = max_attachment_bytes();
    if a.size + req.body.len() as u64 > max {
        return Err(too_big(max));
    }
    a.size = blobs::append(&a.blob, &req.body)?;
    kv::set_json(model::attachment(&conv.id, aid), &a)?;
    Ok(http::json(200, &attachment_view(&a)))
}

/// Serves an attachment as a download, never inline: a generic type,
/// `Content-Disposition: attachment`, `nosniff` and a sandboxing CSP. The
/// bytes are never looked at. `Range: bytes=a-b` gives a part.
fn download_attachment(req: &Request, p: &Params) -> Reply {
    let (me, conv, _) = membership(req, param(p, "cid"))?;
    let aid = param(p, "aid");
    http::check_id(aid, "attachment")?;
    let a = kv::get_json::<Attachment>(model::attachment(&conv.id, aid))?
        .filter(|a| a.message.is_some() || a.uploader == me)
        .ok_or_else(|| ApiError::new(404, "attachment_not_found", "no such attachment"))?;
    let (status, start, end) = match http::byte_range(req.header("range"), a.size) {
        http::ByteRange::Whole => (200, 0, a.size),
        http::ByteRange::Part(s, e) => (206, s, e),
        http::ByteRange::Unsatisfiable => {
            return Ok(Response {
                status: 416,
                headers: vec![("content-range".into(), format!("bytes */{}", a.size))],
                body: Vec::new(),
            });
        }
    };
    let mut body = Vec::with_capacity((end - start) as usize);
    let mut at = start;
    while at < end {
        let part = blobs::read(&a.blob, at, (end - at).min(CHUNK as u64) as u32)?;
        if part.is_empty() {
            break;
        }
        at += part.len() as u64;
        body.extend_from_slice(&part);
    }
    let mut headers = vec![
        (
            "content-type".to_string(),
            "application/octet-stream".to_string(),
        ),
        ("content-disposition".into(), text::disposition(&a.name)),
        ("x-content-type-options".into(), "nosniff".into()),
        (
            "content-security-policy".into(),
            "sandbox; default-src 'none'".into(),
        ),
        ("cache-control".into(), "private, no-store".into()),
        ("accept-ranges".into(), "bytes".into()),
    ];
    if status == 206 {
        headers.push((
            "content-range".into(),
            format!("bytes {start}-{}/{}", end - 1, a.size),
        ));
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

// ---- search --------------------------------------------------------------------

/// Most index entries read per query word and conversation.
const SEARCH_SCAN: u32 = 500;
/// Most candidate messages checked per conversation.
const SEARCH_CHECK: usize = 200;
/// Most words in a query.
const MAX_QUERY_WORDS: usize = 8;
/// Most conversations one search looks through (the newest-joined first
/// is not guaranteed: conversations are visited in id order).
const SEARCH_CONVERSATIONS: usize = 2000;

fn search(req: &Request, _: &Params) -> Reply {
    let me = req.user()?.to_string();
    let q = req.query_param("q").unwrap_or_default();
    if q.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "a query has at most 200 characters",
        ));
    }
    let mut words = text::tokens(&q);
    if words.is_empty() || words.len() > MAX_QUERY_WORDS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("search for 1-{MAX_QUERY_WORDS} words of two or more letters or digits"),
        ));
    }
    // The longest word leads: its tag is likely the rarest.
    words.sort_by_key(|w| std::cmp::Reverse(w.chars().count()));
    let limit = limit_param(req, 20, 50)? as usize;
    let conversations: Vec<String> = match req.query_param("conversation") {
        Some(cid) => {
            membership(req, &cid)?;
            vec![cid]
        }
        None => {
            let prefix = format!("uc/{me}/");
            let mut out = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = kv::scan(&prefix, after.as_deref(), 1000)?;
                out.extend(
                    page.entries
                        .iter()
                        .map(|e| String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned()),
                );
                match page.next {
                    Some(n) if out.len() < SEARCH_CONVERSATIONS => after = Some(n),
                    _ => break,
                }
            }
            out
        }
    };
    let mut tags = Vec::new();
    for w in &words {
        tags.push(index_tag(w)?);
    }
    let mut hits: Vec<Message> = Vec::new();
    for cid in &conversations {
        // A conversation being purged is gone for its members already.
        if load_conversation(cid).is_err() {
            continue;
        }
        // Candidates: the newest messages with the leading word's tag that
        // carry every other word's tag too; a candidate matches when each
        // query word begins a word of its text.
        let page = kv::scan(model::index_prefix(cid, &tags[0]), None, SEARCH_SCAN)?;
        let mut matched = 0;
        let mut checked = 0;
        for seq in page.entries.iter().filter_map(|e| model::index_seq(&e.key)) {
            let mut has_all = true;
            for tag in &tags[1..] {
                if kv::get(model::index(cid, tag, seq))?.is_none() {
                    has_all = false;
                    break;
                }
            }
            if !has_all {
                continue;
            }
            checked += 1;
            if checked > SEARCH_CHECK {
                break;
            }
            let Some(m) = kv::get_json::<Message>(model::message(cid, seq))? else {
                continue;
            };
            let have = text::tokens(&m.text);
            let all = words
                .iter()
                .all(|w| have.iter().any(|t| t.starts_with(w.as_str())));
            if m.deleted.is_none() && all {
                hits.push(m);
                matched += 1;
                if matched == limit {
                    break;
                }
            }
        }
    }
    hits.sort_by(|a, b| b.sent_at.cmp(&a.sent_at).then(b.seq.cmp(&a.seq)));
    hits.truncate(limit);
    Ok(http::json(200, &json!({ "results": hits })))
}

// ---- presence ------------------------------------------------------------------

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

fn presence_reset(data: &[u8]) -> Result<(), ApiError> {
    let v: Value = serde_json::from_slice(data)
        .map_err(|e| ApiError::bad_request("invalid_event", e.to_string()))?;
    let boot = v["boot"].as_u64().unwrap_or(0);
    kv::set(model::BOOT, boot.to_string())?;
    Ok(())
}

fn presence_changed(data: &[u8]) -> Result<(), ApiError> {
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

fn get_presence(req: &Request, _: &Params) -> Reply {
    registered(req)?;
    let users = users_param(req)?;
    Ok(http::json(200, &presence_list(&users)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStatus {
    status: Status,
}

fn set_presence(req: &Request, _: &Params) -> Reply {
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

fn watch_presence(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let body: Users = req.json()?;
    check_users(&body.users)?;
    for u in &body.users {
        events::join_group(&model::watchers(u), &me)?;
    }
    Ok(http::json(200, &presence_list(&body.users)?))
}

fn unwatch_presence(req: &Request, _: &Params) -> Reply {
    let me = registered(req)?;
    let body: Users = req.json()?;
    check_users(&body.users)?;
    for u in &body.users {
        events::leave_group(&model::watchers(u), &me)?;
    }
    Ok(http::empty(204))
}

// ---- conversations owned by other plugins ------------------------------------------

/// The calling plugin: these routes answer plugins only, never the
/// gateway (whose requests carry no caller plugin).
fn owner(req: &Request) -> Result<String, ApiError> {
    req.caller_plugin.clone().ok_or_else(|| {
        ApiError::new(
            403,
            "plugins_only",
            "owned conversations are managed by their plugin",
        )
    })
}

fn owned_conversation(owner: &str, resource: &str) -> Result<Conversation, ApiError> {
    text::resource(resource)?;
    let cid = kv::get(model::owned(owner, resource))?.ok_or_else(|| {
        ApiError::new(
            404,
            "conversation_not_found",
            "no conversation for that resource",
        )
    })?;
    load_conversation(&String::from_utf8_lossy(&cid))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOwned {
    resource: String,
    title: String,
    #[serde(default)]
    members: Vec<String>,
}

/// Creates the owning plugin's conversation for `resource` (or returns the
/// one that exists). Members are user or guest ids the owner vouches for.
fn owned_create(req: &Request, _: &Params) -> Reply {
    let plugin = owner(req)?;
    let body: CreateOwned = req.json()?;
    text::resource(&body.resource)?;
    let title = text::title(&body.title)?;
    let members: BTreeSet<String> = body.members.into_iter().collect();
    if members.len() > 10_000 {
        return Err(ApiError::new(
            413,
            "too_many_members",
            "at most 10000 members",
        ));
    }
    members.iter().try_for_each(|u| http::check_user_id(u))?;
    let key = model::owned(&plugin, &body.resource);
    if kv::get(&key)?.is_some() {
        let conv = owned_conversation(&plugin, &body.resource)?;
        return Ok(http::json(200, &conv));
    }
    let now = switchboard_sdk::now_ms();
    let by = req.principal.user.clone().unwrap_or_else(|| plugin.clone());
    let mut conv = Conversation::new(
        Kind::Owned,
        Some(title),
        &by,
        now,
        Some(plugin),
        Some(body.resource),
    );
    for u in &members {
        add_member(&mut conv, u, &by, now)?;
    }
    kv::set(&key, conv.id.as_bytes())?;
    kv::set_json(model::conversation(&conv.id), &conv)?;
    let members: Vec<String> = members.into_iter().collect();
    audit_ids("chat.conversation.create", &conv, &by, &members)?;
    publish_group(
        &conv.id,
        "chat.conversation.created",
        &json!({ "conversation": conv }),
    )?;
    Ok(http::json(201, &conv))
}

fn owned_get(req: &Request, p: &Params) -> Reply {
    let plugin = owner(req)?;
    Ok(http::json(
        200,
        &owned_conversation(&plugin, param(p, "resource"))?,
    ))
}

fn owned_add_members(req: &Request, p: &Params) -> Reply {
    let plugin = owner(req)?;
    let conv = owned_conversation(&plugin, param(p, "resource"))?;
    let body: Users = req.json()?;
    if body.users.is_empty() || body.users.len() > 10_000 {
        return Err(ApiError::bad_request(
            "invalid_users",
            "name 1-10000 users to add",
        ));
    }
    body.users.iter().try_for_each(|u| http::check_user_id(u))?;
    let by = req.principal.user.clone().unwrap_or(plugin);
    change_members(
        conv,
        &by,
        &body.users.into_iter().collect(),
        &BTreeSet::new(),
    )
}

fn owned_remove_member(req: &Request, p: &Params) -> Reply {
    let plugin = owner(req)?;
    let conv = owned_conversation(&plugin, param(p, "resource"))?;
    let user = param(p, "user");
    http::check_user_id(user)?;
    let by = req.principal.user.clone().unwrap_or(plugin);
    change_members(
        conv,
        &by,
        &BTreeSet::new(),
        &BTreeSet::from([user.to_string()]),
    )
}

/// Deletes the conversation with everything in it (messages, history,
/// attachments, which are crypto-shredded with their blobs). Access ends
/// at once; the purge runs in batches on a timer.
fn owned_delete(req: &Request, p: &Params) -> Reply {
    let plugin = owner(req)?;
    let resource = param(p, "resource");
    let mut conv = owned_conversation(&plugin, resource)?;
    // Named now: the purge may empty the event group before delivery.
    let members = all_member_ids(&conv.id)?;
    conv.deleted = true;
    kv::set_json(model::conversation(&conv.id), &conv)?;
    kv::delete(model::owned(&plugin, resource))?;
    timers::schedule(Duration::ZERO, "purge", conv.id.as_bytes())?;
    audit_ok(
        "chat.conversation.delete",
        &format!("conversation/{}", conv.id),
        json!({ "owner": plugin, "resource": resource, "messages": conv.last_seq }),
    )?;
    let data = json!({ "conversation": conv.id }).to_string();
    for part in members.chunks(10_000) {
        events::publish_to_users(part, "chat.conversation.deleted", data.as_bytes())?;
    }
    Ok(http::empty(204))
}

// ---- background ------------------------------------------------------------------

/// Removes up to [`PURGE_BATCH`] keys of a deleted conversation and
/// schedules itself again until nothing is left.
fn purge(cid: &str) -> Result<(), ApiError> {
    http::check_id(cid, "conversation")?;
    let mut budget = PURGE_BATCH;
    for prefix in model::purge_prefixes(cid) {
        let page = kv::scan(&prefix, None, budget)?;
        for e in &page.entries {
            if prefix.starts_with("a/")
                && let Ok(a) = serde_json::from_slice::<Attachment>(&e.value)
            {
                blobs::delete(&a.blob)?;
                if a.message.is_none() {
                    kv::delete(model::pending(&a.uploader, &a.id))?;
                }
            }
            if prefix.starts_with("cm/")
                && let Ok(m) = serde_json::from_slice::<Member>(&e.value)
            {
                kv::delete(model::user_conversation(&m.user, cid))?;
                events::leave_group(&model::group(cid), &m.user)?;
            }
            kv::delete(&e.key)?;
        }
        budget -= page.entries.len() as u32;
        if budget == 0 {
            timers::schedule(Duration::ZERO, "purge", cid.as_bytes())?;
            return Ok(());
        }
    }
    kv::delete(model::conversation(cid))?;
    Ok(())
}

/// Removes an upload that was never posted.
fn expire_upload(payload: &str) -> Result<(), ApiError> {
    let Some((cid, aid)) = payload.split_once('/') else {
        return Ok(());
    };
    if let Some(a) = kv::get_json::<Attachment>(model::attachment(cid, aid))?
        && a.message.is_none()
    {
        blobs::delete(&a.blob)?;
        kv::delete(model::attachment(cid, aid))?;
        kv::delete(model::pending(&a.uploader, aid))?;
    }
    Ok(())
}
