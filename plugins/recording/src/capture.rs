//! Capture (SPEC R1, R3, M9): a recording is opened for a source by its
//! initiator, receives media as numbered chunks appended to one blob and
//! chained by hash, is paused and resumed by the initiator, and is
//! stopped and sealed by the initiator (or by the plugin that started it
//! when its source ends). A full storage quota ends the recording sealed
//! with what was accepted.
//!
//! Uses `access` for the record and who may act, `seal` for the chain and
//! the seal.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::json;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Error, PrincipalKind, Request, blobs, config, crypto, identity, kv, tx};

use crate::access::{
    MAX_PARTICIPANTS, active_ns, announce, audience, audit_ok, by_owner, by_plugin_only,
    initiator_only, managed, participant, plugin_only_error, save, valid_source, view,
};
use crate::model::{self, Chunk, Pause, Recording, Source, SourceKind, State};
use crate::seal::{chain_next, genesis, seal, seal_at, unhex};
use crate::{Reply, param, source_address};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    source: Source,
    #[serde(default)]
    participants: Vec<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    /// A call recording a plugin starts (`pbx`, from its call events or
    /// for a user): the user (id) it belongs to: initiator, owner, quota.
    #[serde(default)]
    owner: Option<String>,
    /// With `owner`: the tenant policy it is recorded under.
    #[serde(default)]
    policy: Option<String>,
}

/// Opens a recording of a source. The caller is its initiator and owner.
/// A plugin starting it for its user (meetings) vouches for the
/// participants (users or guests); a user starting one directly names
/// users of the tenant. One recording runs per source at a time.
pub fn start(req: &Request, _: &Params) -> Reply {
    let body: Start = req.json()?;
    let source = body.source;
    valid_source(&source)?;
    let me = match body.owner.as_deref() {
        Some(owner) => call_owner(req, &source, owner, body.policy.as_deref())?,
        None if body.policy.is_some() => {
            return Err(ApiError::bad_request(
                "invalid_policy",
                "a policy goes with an owner",
            ));
        }
        None => {
            let me = req.user()?.to_string();
            if req.principal.kind != PrincipalKind::Registered {
                return Err(ApiError::new(
                    403,
                    "registered_only",
                    "only registered users start recordings",
                ));
            }
            me
        }
    };
    if source.kind == SourceKind::Meeting && req.caller_plugin.is_none() {
        return Err(ApiError::new(
            403,
            "meeting_via_plugin",
            "meeting recordings are started through the meetings plugin",
        ));
    }
    let owner_ns = req
        .caller_plugin
        .clone()
        .unwrap_or_else(|| format!("user.{me}"));
    if body.participants.len() > MAX_PARTICIPANTS {
        return Err(ApiError::new(
            413,
            "too_many_participants",
            format!("at most {MAX_PARTICIPANTS} participants"),
        ));
    }
    let mut participants = BTreeSet::new();
    for p in &body.participants {
        participants.insert(participant(req, p)?);
    }
    participants.remove(&me);
    let title = match body.title {
        Some(t) if t.chars().count() > 200 || t.chars().any(char::is_control) => {
            return Err(ApiError::bad_request(
                "invalid_title",
                "a title has at most 200 characters and no control characters",
            ));
        }
        t => t,
    };
    let content_type = body
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match content_type.split_once('/') {
        Some((a, b)) if content_type.len() <= 127 && token(a) && token(b) => {}
        _ => {
            return Err(ApiError::bad_request(
                "invalid_type",
                "a content type looks like type/subtype",
            ));
        }
    }
    // A call's recordings follow one another as its parties change (a
    // transfer), the last one still receiving its audio while the next
    // runs: the plugin recording the call keeps them one at a time.
    let one_per_source = body.owner.is_none();
    if one_per_source && let Some(running) = kv::get(model::active(&owner_ns, &source))? {
        return Err(ApiError::new(
            409,
            "already_recording",
            format!(
                "this source is being recorded already ({})",
                String::from_utf8_lossy(&running)
            ),
        ));
    }
    let id = crypto::random_id();
    // A call recorded under the tenant's `always` policy is the tenant's
    // record: its quota holds it, so a user filling their own storage
    // cannot cut it short.
    let quota_owner = (body.policy.as_deref() != Some("always")).then_some(me.as_str());
    let blob = blobs::create(quota_owner, "recording")?;
    let rec = Recording {
        head: genesis(&id),
        id,
        source,
        title,
        initiator: me.clone(),
        owner_plugin: req.caller_plugin.clone(),
        policy: body.policy,
        participants: participants.into_iter().collect(),
        content_type: content_type.to_ascii_lowercase(),
        state: State::Recording,
        started_at: switchboard_sdk::now_ms(),
        stopped_at: None,
        pauses: Vec::new(),
        chunks: 0,
        bytes: 0,
        blob,
        seal: None,
        shredded: None,
    };
    save(&rec)?;
    if one_per_source {
        kv::set(
            model::active(&active_ns(&rec), &rec.source),
            rec.id.as_bytes(),
        )?;
    }
    kv::set(model::source_index(&rec.source, &rec.id), b"")?;
    kv::set(model::blob(&rec.blob), rec.id.as_bytes())?;
    for u in audience(&rec) {
        kv::set(model::user_index(&u, &rec.id), b"")?;
    }
    audit_ok(
        "recording.start",
        &rec,
        json!({ "source": rec.source, "from": source_address(req) }),
    )?;
    announce(&rec, "recording.started")?;
    Ok(http::json(201, &view(req, &rec)))
}

/// The initiator of a call recording a plugin starts on a user's behalf
/// (SPEC R1, R5): only a plugin names one (it vouches, as for
/// participants), only for a call, and only an active user of the tenant
/// (their quota holds the media).
fn call_owner(
    req: &Request,
    source: &Source,
    owner: &str,
    policy: Option<&str>,
) -> Result<String, ApiError> {
    let allowed: String = config::get("call-plugins").unwrap_or_else(|| "pbx".into());
    let from_calls_plugin = req
        .caller_plugin
        .as_deref()
        .is_some_and(|p| allowed.split(',').any(|a| a.trim() == p));
    if !from_calls_plugin || source.kind != SourceKind::Call {
        return Err(ApiError::new(
            403,
            "owner_via_plugin",
            "only a calls plugin the tenant names (call-plugins) names the owner of a call recording",
        ));
    }
    if !matches!(policy, Some("always" | "on_demand")) {
        return Err(ApiError::bad_request(
            "invalid_policy",
            "a call recording's policy is always or on_demand",
        ));
    }
    http::check_user_id(owner)?;
    match identity::lookup_user(owner)? {
        Some(u) if u.active => Ok(u.id),
        _ => Err(ApiError::bad_request(
            "unknown_user",
            format!("no active user {owner:?} in this tenant"),
        )),
    }
}

pub fn pause(req: &Request, p: &Params) -> Reply {
    let mut rec = initiator_only(req, param(p, "rid"), "pause")?;
    match rec.state {
        State::Recording => {}
        State::Paused => return Err(ApiError::new(409, "recording_paused", "already paused")),
        _ => return Err(stopped_error()),
    }
    rec.state = State::Paused;
    rec.pauses.push(Pause {
        from: switchboard_sdk::now_ms(),
        to: None,
        after_chunk: rec.chunks,
    });
    save(&rec)?;
    audit_ok(
        "recording.pause",
        &rec,
        json!({ "after_chunk": rec.chunks }),
    )?;
    announce(&rec, "recording.paused")?;
    Ok(http::json(200, &view(req, &rec)))
}

pub fn resume(req: &Request, p: &Params) -> Reply {
    let mut rec = initiator_only(req, param(p, "rid"), "resume")?;
    match rec.state {
        State::Paused => {}
        State::Recording => {
            return Err(ApiError::new(
                409,
                "not_paused",
                "the recording is not paused",
            ));
        }
        _ => return Err(stopped_error()),
    }
    rec.state = State::Recording;
    if let Some(last) = rec.pauses.last_mut() {
        last.to = Some(switchboard_sdk::now_ms());
    }
    save(&rec)?;
    audit_ok(
        "recording.resume",
        &rec,
        json!({ "after_chunk": rec.chunks }),
    )?;
    announce(&rec, "recording.resumed")?;
    Ok(http::json(200, &view(req, &rec)))
}

fn stopped_error() -> ApiError {
    ApiError::new(
        409,
        "recording_stopped",
        "the recording has stopped; it accepts nothing more",
    )
}

/// Stops and seals (only the initiator: SPEC M9). The plugin that started
/// a recording may also stop it with `?reason=source_ended` when what was
/// recorded is over (a meeting's live session ended); that is audited
/// with the reason.
pub fn stop(req: &Request, p: &Params) -> Reply {
    let source_ended = req.query_param("reason").as_deref() == Some("source_ended");
    let mut rec = if source_ended {
        let rec = managed(req, param(p, "rid"))?;
        if !by_owner(req, &rec) {
            return Err(ApiError::new(
                403,
                "not_initiator",
                "only the plugin that started a recording stops it when its source ends",
            ));
        }
        rec
    } else {
        initiator_only(req, param(p, "rid"), "stop")?
    };
    if !matches!(rec.state, State::Recording | State::Paused) {
        return Err(stopped_error());
    }
    // A call's audio arrives after the call: the plugin that recorded it
    // says when capture ended (not before the start, not after now).
    let ended_at = req
        .query_param("ended_at")
        .filter(|_| by_plugin_only(&rec) && by_owner(req, &rec))
        .and_then(|t| t.parse::<u64>().ok())
        .map(|t| {
            let last_pause = rec.pauses.iter().map(|p| p.from).max().unwrap_or(0);
            t.clamp(rec.started_at.max(last_pause), switchboard_sdk::now_ms())
        });
    match ended_at {
        Some(at) => seal_at(req, &mut rec, at)?,
        None => seal(req, &mut rec)?,
    }
    Ok(http::json(200, &view(req, &rec)))
}

/// `PUT /recordings/:rid/chunks/:seq`: the body is chunk `seq` (from 1).
/// The next chunk is appended; the last one again (a retry after a lost
/// answer) is acknowledged if identical; anything else is refused. An
/// optional `X-Chunk-SHA256` header is checked against the body.
pub fn upload_chunk(req: &Request, p: &Params) -> Reply {
    let mut rec = managed(req, param(p, "rid"))?;
    // A call's audio comes from the plugin that recorded the call, and
    // only from it; anything else from its initiator (directly, or
    // through the plugin that started it acting for them).
    let plugin_feeds = by_plugin_only(&rec);
    if plugin_feeds && !by_owner(req, &rec) {
        return Err(plugin_only_error());
    }
    if !plugin_feeds && req.principal.user.as_deref() != Some(rec.initiator.as_str()) {
        return Err(ApiError::new(
            403,
            "not_initiator",
            "media is uploaded by the recording's initiator (directly or through the plugin that started it)",
        ));
    }
    let seq = match param(p, "seq").parse::<u64>() {
        Ok(n) if n > 0 && !param(p, "seq").starts_with(['0', '+']) => n,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_seq",
                "chunks are numbered 1, 2, 3...",
            ));
        }
    };
    let max = config::get::<u64>("max-chunk-kib").unwrap_or(4096) << 10;
    if req.body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_chunk",
            "a chunk has at least one byte",
        ));
    }
    if req.body.len() as u64 > max {
        return Err(ApiError::new(
            413,
            "chunk_too_large",
            format!("a chunk has at most {} KiB", max >> 10),
        ));
    }
    let hash = crypto::sha256(&req.body);
    if let Some(claimed) = req.header("x-chunk-sha256")
        && unhex(&claimed.to_ascii_lowercase()).as_deref() != Some(&hash[..])
    {
        return Err(ApiError::bad_request(
            "checksum_mismatch",
            "the body's SHA-256 is not X-Chunk-SHA256; the chunk was damaged on the way",
        ));
    }
    if seq <= rec.chunks {
        // A retry of a chunk already taken: fine if identical.
        let stored = kv::get_json::<Chunk>(model::chunk(&rec.id, seq))?;
        return match stored {
            Some(c) if c.hash == crypto::hex(&hash) => Ok(http::json(
                200,
                &json!({ "seq": seq, "duplicate": true, "next_chunk": rec.chunks + 1 }),
            )),
            _ => Err(ApiError::new(
                409,
                "chunk_conflict",
                format!(
                    "chunk {seq} was stored with other content; the next chunk is {}",
                    rec.chunks + 1
                ),
            )),
        };
    }
    match rec.state {
        State::Recording => {}
        // A call's audio reaches us after the call, through the plugin
        // that recorded it: the host already dropped what was said while
        // paused.
        State::Paused if by_plugin_only(&rec) => {}
        State::Paused => {
            return Err(ApiError::new(
                409,
                "recording_paused",
                "the recording is paused: no media is accepted until it resumes",
            ));
        }
        State::Stopped | State::Shredded => return Err(stopped_error()),
    }
    if seq != rec.chunks + 1 {
        return Err(ApiError::new(
            409,
            "out_of_order",
            format!("the next chunk is {}, not {seq}", rec.chunks + 1),
        ));
    }
    let offset = rec.bytes;
    match blobs::append(&rec.blob, &req.body) {
        Ok(_) => {}
        Err(Error::QuotaExceeded(m)) => {
            // The owner's quota is full: the recording ends here, sealed
            // with what was accepted, and the refusal says so.
            seal(req, &mut rec)?;
            tx::keep_writes();
            return Ok(http::json(
                409,
                &json!({
                    "code": "quota_exceeded",
                    "message": format!("the initiator's storage quota is full ({m}); the recording was stopped and sealed with {} chunks", rec.chunks),
                    "recording": view(req, &rec),
                }),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let chain = chain_next(&rec.head, seq, &hash);
    kv::set_json(
        model::chunk(&rec.id, seq),
        &Chunk {
            seq,
            offset,
            len: req.body.len() as u64,
            hash: crypto::hex(&hash),
            chain: chain.clone(),
        },
    )?;
    rec.chunks = seq;
    rec.bytes += req.body.len() as u64;
    rec.head = chain;
    save(&rec)?;
    Ok(http::json(
        201,
        &json!({ "seq": seq, "bytes": rec.bytes, "next_chunk": seq + 1 }),
    ))
}
