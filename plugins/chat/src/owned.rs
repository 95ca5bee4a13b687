//! Conversations owned by other plugins (SPEC C1, C7; the meetings
//! plugin's spaces): created, found, given members and deleted by their
//! plugin through the `plugins` capability only, never through the
//! gateway. Deleting one ends access at once and purges it in batches on
//! a timer (`purge`, sent here by `lib.rs`).
//!
//! Uses `conversations` for loading, membership changes and audit.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Request, audit, blobs, events, kv, timers};

use crate::conversations::{
    Users, add_member, all_member_ids, audit_ids, change_members, load_conversation, publish_group,
};
use crate::model::{self, Attachment, Conversation, Kind, Member};
use crate::{Reply, param, text};

/// Keys the purge of a deleted conversation removes per timer run.
const PURGE_BATCH: u32 = 400;

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
pub fn create(req: &Request, _: &Params) -> Reply {
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

pub fn show(req: &Request, p: &Params) -> Reply {
    let plugin = owner(req)?;
    Ok(http::json(
        200,
        &owned_conversation(&plugin, param(p, "resource"))?,
    ))
}

pub fn add_members(req: &Request, p: &Params) -> Reply {
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

pub fn remove_member(req: &Request, p: &Params) -> Reply {
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
pub fn delete(req: &Request, p: &Params) -> Reply {
    let plugin = owner(req)?;
    let resource = param(p, "resource");
    let mut conv = owned_conversation(&plugin, resource)?;
    // Named now: the purge may empty the event group before delivery.
    let members = all_member_ids(&conv.id)?;
    conv.deleted = true;
    kv::set_json(model::conversation(&conv.id), &conv)?;
    kv::delete(model::owned(&plugin, resource))?;
    timers::schedule(Duration::ZERO, "purge", conv.id.as_bytes())?;
    audit::success(
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

/// Removes up to [`PURGE_BATCH`] keys of a deleted conversation and
/// schedules itself again until nothing is left.
pub fn purge(cid: &str) -> Result<(), ApiError> {
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
