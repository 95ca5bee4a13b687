//! Read state (SPEC C6): how far a member has read, announced to the
//! conversation. The unread counts derived from it are shown by
//! `conversations` (`conversation_view`); posting a message marks it read
//! for its sender (`messages`).
//!
//! Uses `conversations` for membership.

use serde::Deserialize;
use serde_json::json;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Request, kv};

use crate::conversations::{membership, publish_group};
use crate::model;
use crate::{Reply, param};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Read {
    seq: u64,
}

pub fn mark_read(req: &Request, p: &Params) -> Reply {
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
