//! Conversations (SPEC C1): direct ones (one per pair of users, found
//! again rather than made twice), groups with a title and members that
//! their members and the tenant's admins manage; and what every other
//! area builds on: loading a conversation, the caller's membership (a
//! non-member gets the same 404 as for a conversation that does not
//! exist), adding and dropping members, and publishing to a
//! conversation's event group. Membership changes are published and
//! audited by id.
//!
//! The lowest area: the others use it; it uses only `model`, `text` and
//! the crate's glue.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{PrincipalKind, Request, audit, crypto, events, identity, kv};

use crate::model::{self, Conversation, Kind, Member};
use crate::{Reply, limit_param, param, registered, setting_int, text};

impl Conversation {
    /// A new conversation with no members yet, id drawn at random.
    pub fn new(
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

fn json_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

pub fn publish_group(cid: &str, kind: &str, data: &Value) -> Result<(), ApiError> {
    events::publish_to_group(&model::group(cid), kind, data.to_string().as_bytes())?;
    Ok(())
}

fn not_found_conversation() -> ApiError {
    ApiError::new(
        404,
        "conversation_not_found",
        "no such conversation, or you are not a member",
    )
}

/// A live conversation by id (404 when deleted or unknown).
pub fn load_conversation(cid: &str) -> Result<Conversation, ApiError> {
    http::check_id(cid, "conversation")?;
    match kv::get_json::<Conversation>(model::conversation(cid))? {
        Some(c) if !c.deleted => Ok(c),
        _ => Err(not_found_conversation()),
    }
}

/// The caller, the conversation and their membership. Non-members get the
/// same 404 as for a conversation that does not exist.
pub fn membership(req: &Request, cid: &str) -> Result<(String, Conversation, Member), ApiError> {
    let user = req.user()?.to_string();
    let conv = load_conversation(cid)?;
    let member =
        kv::get_json::<Member>(model::member(cid, &user))?.ok_or_else(not_found_conversation)?;
    Ok((user, conv, member))
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
pub fn add_member(
    conv: &mut Conversation,
    user: &str,
    by: &str,
    now: u64,
) -> Result<bool, ApiError> {
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
pub fn all_member_ids(cid: &str) -> Result<Vec<String>, ApiError> {
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

pub fn create(req: &Request, _: &Params) -> Reply {
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

pub fn list(req: &Request, _: &Params) -> Reply {
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

pub fn show(req: &Request, p: &Params) -> Reply {
    let (_, conv, member) = membership(req, param(p, "cid"))?;
    Ok(http::json(200, &conversation_view(&conv, Some(&member))?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rename {
    title: String,
}

pub fn rename(req: &Request, p: &Params) -> Reply {
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

pub fn list_members(req: &Request, p: &Params) -> Reply {
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
pub struct Users {
    pub users: Vec<String>,
}

pub fn add_members(req: &Request, p: &Params) -> Reply {
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
pub fn change_members(
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
pub fn audit_ids(
    action: &str,
    conv: &Conversation,
    by: &str,
    users: &[String],
) -> Result<(), ApiError> {
    let target = format!("conversation/{}", conv.id);
    for part in users.chunks(IDS_PER_AUDIT) {
        audit::success(action, &target, json!({ "by": by, "users": part }))?;
    }
    Ok(())
}

pub fn remove_member(req: &Request, p: &Params) -> Reply {
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
