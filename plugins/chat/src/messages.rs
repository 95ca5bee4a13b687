//! Messages (SPEC C2-C4, C7): paging both ways, posting (with a client id
//! that makes retries safe, attachments already uploaded and replies that
//! keep a copy of what they quote), edits that keep their history, and
//! deletes that leave a tombstone and destroy text, history, index
//! entries and attachments. Each change goes to the conversation's event
//! group; files shared and removed are audited by id and size.
//!
//! Uses `conversations` for membership and `search` to keep the index in
//! step with the text.

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Request, audit, blobs, crypto, kv};

use crate::conversations::{membership, publish_group};
use crate::model::{self, Attachment, Deletion, Message, Quote, Revision};
use crate::search::{index_message, unindex_message};
use crate::{Reply, limit_param, param, setting_bool, setting_int, text};

/// Most attachments on one message.
const MAX_ATTACHMENTS: usize = 10;

/// Most edits of one message (its history is kept).
const MAX_EDITS: u32 = 100;

/// The quote kept in a reply is cut to this many characters.
const MAX_QUOTE_CHARS: usize = 1000;

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

fn load_message(cid: &str, seq: u64) -> Result<Message, ApiError> {
    kv::get_json::<Message>(model::message(cid, seq))?.ok_or_else(|| {
        ApiError::new(
            404,
            "message_not_found",
            format!("conversation has no message {seq}"),
        )
    })
}

fn message_target(cid: &str, seq: u64) -> String {
    format!("conversation/{cid}/message/{seq}")
}

pub fn list(req: &Request, p: &Params) -> Reply {
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

pub fn show(req: &Request, p: &Params) -> Reply {
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

pub fn post(req: &Request, p: &Params) -> Reply {
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
        audit::success(
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

pub fn edit(req: &Request, p: &Params) -> Reply {
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
    audit::success(
        "chat.message.edit",
        &message_target(&cid, message.seq),
        json!({ "sender": me, "edits": message.edits }),
    )?;
    publish_message(&cid, "chat.message.edited", &message)?;
    Ok(http::json(200, &message))
}

pub fn delete(req: &Request, p: &Params) -> Reply {
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
        audit::success(
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
    audit::success(
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

pub fn history(req: &Request, p: &Params) -> Reply {
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
