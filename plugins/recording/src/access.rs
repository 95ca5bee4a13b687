//! Who may see and manage a recording (SPEC R4, M9), and the record
//! itself: loading and saving it, the view callers get, telling the
//! initiator and participants, and auditing against it. Its initiator
//! sees it; its participants and the tenant's admins as the tenant's
//! settings allow; the host itself; a plugin calling in acts for its
//! user, and the plugin that started a recording also manages it.
//! Anyone else gets the same 404 as for a recording that does not exist.
//! The routes that only read or widen access live here too: list, show,
//! add participants.
//!
//! The base of the plugin: every other area loads recordings through
//! here; it uses only `model` and the crate's glue.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{PrincipalKind, Request, audit, events, identity, kv};

use crate::model::{self, Recording, Source, SourceKind, State};
use crate::{Reply, param, setting_bool};

/// Participants of one recording.
pub const MAX_PARTICIPANTS: usize = 1000;

pub fn valid_source(source: &Source) -> Result<(), ApiError> {
    let id = &source.id;
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(ApiError::bad_request(
            "invalid_source",
            "a source id is 1-128 of [A-Za-z0-9._:-]",
        ));
    }
    Ok(())
}

/// A participant's id: a plugin calling for its user vouches for ids
/// (users or guests); a user names active users of the tenant (by id or
/// login name).
pub fn participant(req: &Request, p: &str) -> Result<String, ApiError> {
    if req.caller_plugin.is_some() {
        http::check_user_id(p)?;
        return Ok(p.to_string());
    }
    if p.is_empty() || p.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_user",
            "a participant is a user id or login name",
        ));
    }
    match identity::lookup_user(p)? {
        Some(u) if u.active => Ok(u.id),
        _ => Err(ApiError::bad_request(
            "unknown_user",
            format!("no active user {p:?} in this tenant"),
        )),
    }
}

/// Whose namespace a recording's "one per source" rule lives in: the
/// starting plugin's, or the starting user's own.
pub fn active_ns(rec: &Recording) -> String {
    rec.owner_plugin
        .clone()
        .unwrap_or_else(|| format!("user.{}", rec.initiator))
}

fn not_found() -> ApiError {
    ApiError::new(
        404,
        "recording_not_found",
        "no such recording, or you may not see it",
    )
}

pub fn load(rid: &str) -> Result<Recording, ApiError> {
    http::check_id(rid, "recording")?;
    kv::get_json::<Recording>(model::recording(rid))?.ok_or_else(not_found)
}

pub fn save(rec: &Recording) -> Result<(), ApiError> {
    kv::set_json(model::recording(&rec.id), rec)?;
    Ok(())
}

/// Whether the caller may list, play and download `rec` (SPEC R4): its
/// initiator; its participants and the tenant's admins as the tenant's
/// settings allow; the host itself. A plugin calling in (meetings) does so
/// for its user, who must pass the same checks.
fn may_access(req: &Request, rec: &Recording) -> bool {
    // The host itself (the CLI, the console) — never another plugin's
    // timer or hook calling in.
    if matches!(req.principal.role, switchboard_sdk::Role::System) && req.caller_plugin.is_none() {
        return true;
    }
    let Some(user) = req.principal.user.as_deref() else {
        return false;
    };
    if user == rec.initiator {
        return true;
    }
    if req.principal.kind == PrincipalKind::Registered
        && req.is_admin()
        && setting_bool("admins-may-access")
    {
        return true;
    }
    rec.participants.iter().any(|p| p == user) && setting_bool("participants-may-access")
}

/// The recording, if the caller may see it (404 otherwise: existence is
/// not revealed).
pub fn visible(req: &Request, rid: &str) -> Result<Recording, ApiError> {
    let rec = load(rid)?;
    if !may_access(req, &rec) {
        return Err(not_found());
    }
    Ok(rec)
}

/// Whether the calling plugin started `rec` (and so manages it).
pub fn by_owner(req: &Request, rec: &Recording) -> bool {
    req.caller_plugin.is_some() && req.caller_plugin == rec.owner_plugin
}

/// The recording, for the plugin that started it or a caller who may see it.
pub fn managed(req: &Request, rid: &str) -> Result<Recording, ApiError> {
    let rec = load(rid)?;
    if by_owner(req, &rec) || may_access(req, &rec) {
        Ok(rec)
    } else {
        Err(not_found())
    }
}

/// Whether only the plugin that started `rec` controls it: a call
/// recording, which follows the call's media there (pausing it here
/// would not stop the audio).
pub fn by_plugin_only(rec: &Recording) -> bool {
    rec.owner_plugin.is_some() && rec.source.kind == SourceKind::Call
}

pub fn plugin_only_error() -> ApiError {
    ApiError::new(
        403,
        "via_calls_plugin",
        "a call recording is paused, resumed and stopped through the plugin that records the call",
    )
}

/// The recording, for its initiator only (pause, resume, stop: SPEC M9);
/// a call recording for the plugin that records the call only.
pub fn initiator_only(req: &Request, rid: &str, what: &str) -> Result<Recording, ApiError> {
    let rec = managed(req, rid)?;
    if by_plugin_only(&rec) {
        return if by_owner(req, &rec) {
            Ok(rec)
        } else {
            Err(plugin_only_error())
        };
    }
    if !may_access(req, &rec) {
        return Err(not_found());
    }
    if req.principal.user.as_deref() != Some(rec.initiator.as_str()) {
        return Err(ApiError::new(
            403,
            "not_initiator",
            format!("only the user who started a recording may {what} it"),
        ));
    }
    Ok(rec)
}

pub fn audience(rec: &Recording) -> Vec<String> {
    let mut all: BTreeSet<String> = rec.participants.iter().cloned().collect();
    all.insert(rec.initiator.clone());
    all.into_iter().collect()
}

/// Tells the initiator and the participants (SPEC M9: everyone is told
/// that recording is on).
pub fn announce(rec: &Recording, kind: &str) -> Result<(), ApiError> {
    let data = json!({
        "recording": rec.id, "source": rec.source, "initiator": rec.initiator,
        "state": rec.state,
    });
    events::publish_to_users(&audience(rec), kind, data.to_string().as_bytes())?;
    Ok(())
}

/// Audits a successful `action` on `rec` (target `recording/{id}`).
pub fn audit_ok(action: &str, rec: &Recording, details: Value) -> Result<(), ApiError> {
    audit::success(action, &format!("recording/{}", rec.id), details)
}

pub fn view(req: &Request, rec: &Recording) -> Value {
    let mut v = serde_json::to_value(rec).unwrap_or(Value::Null);
    // The blob id lets an admin place a legal hold on this recording's
    // media through the host's admin API; nobody else needs it.
    if !req.is_admin()
        && let Some(o) = v.as_object_mut()
    {
        o.remove("blob");
    }
    v["next_chunk"] = json!(rec.chunks + 1);
    v
}

pub fn show(req: &Request, p: &Params) -> Reply {
    let rec = visible(req, param(p, "rid"))?;
    Ok(http::json(200, &view(req, &rec)))
}

pub fn list(req: &Request, _: &Params) -> Reply {
    let me = req.user()?.to_string();
    let limit = match req.query_param("limit") {
        None => 100,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=200).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    "limit is a number from 1 to 200",
                ));
            }
        },
    };
    let after = req.query_param("after");
    if let Some(a) = &after {
        http::check_id(a, "recording")?;
    }
    // Admins (as the tenant allows) list everything; others what they
    // initiated or took part in.
    let all = req.query_param("all").as_deref() == Some("true");
    let everyone = all && req.is_admin() && setting_bool("admins-may-access");
    if all && !everyone {
        return Err(ApiError::forbidden(
            "only tenant admins list every recording",
        ));
    }
    // Recordings of one source: `?source=meeting:space-42`.
    let source = match req.query_param("source") {
        None => None,
        Some(s) => {
            let (kind, id) = s.split_once(':').ok_or_else(|| {
                ApiError::bad_request("invalid_source", "source is kind:id, e.g. meeting:space-42")
            })?;
            let kind = match kind {
                "meeting" => SourceKind::Meeting,
                "call" => SourceKind::Call,
                "screen" => SourceKind::Screen,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_source",
                        "a source kind is meeting, call or screen",
                    ));
                }
            };
            let source = Source {
                kind,
                id: id.to_string(),
            };
            valid_source(&source)?;
            Some(source)
        }
    };
    let prefix = match (&source, everyone) {
        (Some(src), _) => model::source_prefix(src),
        (None, true) => model::RECORDINGS.to_string(),
        (None, false) => model::user_prefix(&me),
    };
    let start = after.map(|a| format!("{prefix}{a}").into_bytes());
    let page = kv::scan(&prefix, start.as_deref(), limit)?;
    let mut out = Vec::new();
    for e in &page.entries {
        let rid = String::from_utf8_lossy(&e.key[prefix.len()..]).into_owned();
        if let Ok(rec) = load(&rid)
            && may_access(req, &rec)
        {
            // Lists stay small: participants and the seal are in the
            // recording itself.
            let mut v = view(req, &rec);
            if let Some(o) = v.as_object_mut() {
                o.remove("participants");
                o.remove("seal");
                o.insert("participant_count".into(), json!(rec.participants.len()));
            }
            out.push(v);
        }
    }
    let next = page
        .next
        .map(|k| String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
    Ok(http::json(200, &json!({ "recordings": out, "next": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Users {
    users: Vec<String>,
}

/// Adds participants (later joiners): the initiator or the starting plugin.
pub fn add_participants(req: &Request, p: &Params) -> Reply {
    let mut rec = managed(req, param(p, "rid"))?;
    if by_plugin_only(&rec) && !by_owner(req, &rec) {
        return Err(plugin_only_error());
    }
    if !by_owner(req, &rec) && req.principal.user.as_deref() != Some(rec.initiator.as_str()) {
        return Err(ApiError::new(
            403,
            "not_initiator",
            "participants are added by the initiator or the plugin that started the recording",
        ));
    }
    let body: Users = req.json()?;
    if body.users.len() > MAX_PARTICIPANTS {
        return Err(ApiError::new(
            413,
            "too_many_participants",
            format!("at most {MAX_PARTICIPANTS} participants"),
        ));
    }
    let mut users = Vec::new();
    for u in &body.users {
        users.push(participant(req, u)?);
    }
    let mut set: BTreeSet<String> = rec.participants.iter().cloned().collect();
    let before = set.len();
    set.extend(users);
    set.remove(&rec.initiator);
    if set.len() > MAX_PARTICIPANTS {
        return Err(ApiError::new(
            413,
            "too_many_participants",
            format!("at most {MAX_PARTICIPANTS} participants"),
        ));
    }
    let added: Vec<String> = set
        .iter()
        .filter(|u| !rec.participants.contains(u))
        .cloned()
        .collect();
    if set.len() != before {
        rec.participants = set.into_iter().collect();
        save(&rec)?;
        for u in &added {
            kv::set(model::user_index(u, &rec.id), b"")?;
        }
        // Later joiners are told that recording is on.
        if matches!(rec.state, State::Recording | State::Paused) {
            let data = json!({ "recording": rec.id, "source": rec.source, "initiator": rec.initiator, "state": rec.state });
            events::publish_to_users(&added, "recording.started", data.to_string().as_bytes())?;
        }
        audit_ok("recording.participants", &rec, json!({ "added": added }))?;
    }
    Ok(http::json(200, &view(req, &rec)))
}
