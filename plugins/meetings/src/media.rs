//! What happens inside a running session: WebRTC signalling relayed
//! between admitted participants (M10), recording under the rule that any
//! registered participant starts it and only its initiator stops it (M9),
//! and the space's chat for guests, whose sessions reach this plugin only.
//!
//! Sessions and their participants come from `live.rs`; recordings are
//! the recording plugin's and the chat the chat plugin's, reached through
//! the SDK's `plugins` helpers.

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::plugins::{call_json, call_ok};
use switchboard_sdk::{Method, PrincipalKind, Request, Response, audit, events, kv, plugins, tx};

use crate::Reply;
use crate::live::{self, in_session, registered_in_session};
use crate::members;
use crate::model::{self, Kind, Recording, State};

/// Signalling messages a client may relay.
const SIGNAL_TYPES: [&str; 5] = ["offer", "answer", "candidate", "end-of-candidates", "bye"];
/// Largest signalling payload (an SDP with many candidates fits).
const MAX_SIGNAL_BYTES: usize = 32 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Signal {
    to: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

/// `POST /live/{id}/signal {"to", "type", "data"}`: relays an offer,
/// answer or ICE candidate to another participant present, as a
/// `meeting.signal` event on their stream naming the sender. Both ends
/// must be admitted and present; waiting guests neither send nor receive.
pub fn signal(req: &Request, p: &Params) -> Reply {
    let live = live::load(p.get("lid").unwrap_or_default())?;
    let me = in_session(req, &live)?;
    let body: Signal = req.json()?;
    if !SIGNAL_TYPES.contains(&body.kind.as_str()) {
        return Err(ApiError::bad_request(
            "invalid_signal",
            format!("type is one of {}", SIGNAL_TYPES.join(", ")),
        ));
    }
    let size = body.data.to_string().len();
    if size > MAX_SIGNAL_BYTES {
        return Err(ApiError::new(
            413,
            "signal_too_large",
            format!("signalling data is at most {MAX_SIGNAL_BYTES} bytes"),
        ));
    }
    http::check_user_id(&body.to)?;
    if body.to == me.id {
        return Err(ApiError::bad_request(
            "invalid_signal",
            "signal another participant, not yourself",
        ));
    }
    let target = live::participant_where(
        &live.id,
        &body.to,
        |t| t.state == State::Present && t.kind != Kind::Pstn,
        live::NOT_PRESENT,
    )?;
    let data = json!({ "live": live.id, "from": me.id, "type": body.kind, "data": body.data });
    events::publish_to_users(&[target.id], "meeting.signal", data.to_string().as_bytes())?;
    Ok(http::empty(202))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartRecording {
    #[serde(default)]
    content_type: Option<String>,
}

/// `POST /live/{id}/recording {"content_type"?}`: any registered
/// participant present starts recording the session, through the
/// recording plugin (their quota, the tenant's retention). Everyone
/// present is told, and everyone who comes later (M9).
pub fn record_start(req: &Request, p: &Params) -> Reply {
    let mut live = live::load(p.get("lid").unwrap_or_default())?;
    let me = registered_in_session(req, &live)?;
    let body: StartRecording = if req.body.is_empty() {
        StartRecording::default()
    } else {
        req.json()?
    };
    if let Some(rec) = live::current_recording(&live)? {
        return Err(ApiError::new(
            409,
            "already_recording",
            format!("{} is recording this session", rec.by),
        ));
    }
    let all = live::participants(&live.id)?;
    let present: Vec<String> = all
        .iter()
        .filter(|p| p.state == State::Present)
        .map(|p| p.id.clone())
        .collect();
    let space =
        kv::get_json::<model::Space>(model::space(&live.space))?.ok_or_else(members::not_found)?;
    let rec = call_ok(
        "recording",
        Method::Post,
        "/recordings",
        &json!({
            "source": { "kind": "meeting", "id": live.id },
            "participants": present.iter().filter(|p| **p != me.id).collect::<Vec<_>>(),
            "content_type": body.content_type.unwrap_or_else(|| "video/webm".into()),
            "title": space.title,
        }),
    )?;
    let rid = rec["id"].as_str().unwrap_or_default().to_string();
    let now = switchboard_sdk::now_ms();
    live.recording = Some(Recording {
        id: rid.clone(),
        by: me.id.clone(),
        started_at: now,
    });
    kv::set_json(model::live(&live.id), &live)?;
    kv::set(model::recording_of(&live.space, &rid), b"")?;
    audit::success(
        "meeting.recording.start",
        &format!("space/{}", live.space),
        json!({ "live": live.id, "recording": rid, "by": me.id }),
    )?;
    let data = json!({ "live": live.id, "on": true, "recording": rid, "by": me.id, "since": now });
    events::publish_to_users(&present, "meeting.recording", data.to_string().as_bytes())?;
    // Callers on the phone hear it too (M9).
    live::tell_phones(&live)?;
    Ok(http::json(201, &rec))
}

/// `POST /live/{id}/recording/stop`: its initiator only (M9); the
/// recording is sealed and everyone present is told.
pub fn record_stop(req: &Request, p: &Params) -> Reply {
    let mut live = live::load(p.get("lid").unwrap_or_default())?;
    let me = registered_in_session(req, &live)?;
    let Some(rec) = live.recording.clone() else {
        return Err(ApiError::new(
            409,
            "not_recording",
            "this session is not being recorded",
        ));
    };
    if rec.by != me.id {
        return Err(ApiError::new(
            403,
            "not_initiator",
            "only the participant who started the recording stops it",
        ));
    }
    let (status, stopped) = call_json(
        "recording",
        Method::Post,
        &format!("/recordings/{}/stop", rec.id),
        &Value::Null,
    )?;
    if status == 409 {
        // It had stopped already (through the recording plugin, or the
        // quota ran out): forget it, and say so.
        live.recording = None;
        kv::set_json(model::live(&live.id), &live)?;
        tx::keep_writes();
        return Err(ApiError::new(
            409,
            "not_recording",
            "the recording had stopped already",
        ));
    }
    if status >= 400 {
        return Err(ApiError::new(
            502,
            "recording_failed",
            format!(
                "the recording plugin refused: {}",
                stopped["message"].as_str().unwrap_or("no reason given")
            ),
        ));
    }
    live.recording = None;
    kv::set_json(model::live(&live.id), &live)?;
    audit::success(
        "meeting.recording.stop",
        &format!("space/{}", live.space),
        json!({ "live": live.id, "recording": rec.id, "by": me.id }),
    )?;
    let present: Vec<String> = live::participants(&live.id)?
        .into_iter()
        .filter(|p| p.state == State::Present)
        .map(|p| p.id)
        .collect();
    let data = json!({ "live": live.id, "on": false, "recording": rec.id, "by": me.id });
    events::publish_to_users(&present, "meeting.recording", data.to_string().as_bytes())?;
    Ok(http::json(200, &stopped))
}

/// The first path segment a participant may reach in the space's
/// conversation through this plugin.
const CHAT_PARTS: [&str; 4] = ["messages", "attachments", "read", "members"];

/// `/live/{id}/chat/{rest}`: the space's conversation for participants
/// present — guests' only way to it, since their sessions reach this
/// plugin alone. Forwarded to the chat plugin as the caller (chat checks
/// membership again: admitted guests are members while present).
pub fn chat_proxy(req: &Request, p: &Params) -> Reply {
    let live = live::load(p.get("lid").unwrap_or_default())?;
    in_session(req, &live)?;
    let rest = p.get("rest").unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    let allowed = segments.first().is_some_and(|s| CHAT_PARTS.contains(s))
        && segments.iter().all(|s| {
            !s.is_empty()
                && *s != "."
                && *s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    // Guests see the conversation, not who else is a member of the space.
    let guest_barred = req.principal.kind == PrincipalKind::Guest && segments[0] == "members";
    if !allowed || guest_barred {
        return Err(ApiError::not_found("no such route in the meeting's chat"));
    }
    let space =
        kv::get_json::<model::Space>(model::space(&live.space))?.ok_or_else(members::not_found)?;
    let mut path = format!("/conversations/{}/{rest}", space.conversation);
    if !req.query.is_empty() {
        path.push('?');
        path.push_str(&req.query);
    }
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("range") || k.eq_ignore_ascii_case("content-type"))
        .cloned()
        .collect();
    let r = plugins::call_with_headers("chat", req.method, &path, &headers, &req.body)?;
    Ok(Response {
        status: r.status,
        headers: r.headers,
        body: r.body,
    })
}
