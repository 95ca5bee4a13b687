//! Recordings (SPEC R1-R5, M9, D4): a recording is opened for a source (a
//! meeting's live session, a call, a screen share) by its initiator and
//! receives media as numbered chunks over HTTPS, appended to one blob
//! (sealed per chunk by the host, owned by the initiator, retention class
//! `recording`). Each chunk's SHA-256 is chained to the previous head; on
//! stop the head, length, times, initiator and pause intervals are signed
//! with an Ed25519 key the host holds for this tenant's recording plugin.
//! `GET .../verify` re-reads everything and proves the recording intact or
//! names what was changed, removed, reordered or added. Access is checked
//! and every play and download audited. Retention and legal holds are the
//! host's (class `recording`, 365 days by default); when the host's
//! sweeper shreds a recording's media it tells this plugin (`blob.expired`).
//! The API is described in `docs/recording.md`.

mod model;

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _, Router};
use switchboard_sdk::{
    Error, Event, Plugin, PrincipalKind, Request, Response, audit, blobs, config, crypto, events,
    identity, kv, tx,
};

use model::{Chunk, Pause, Recording, Seal, SealPayload, Shredded, Source, SourceKind, State};

struct Rec;

/// Largest answer of media, in bytes (a plugin answers with one body).
const MAX_MEDIA_ANSWER: u64 = 8 << 20;
/// Bytes of media one verify call re-reads before handing back a cursor
/// (each byte crosses to the host twice, read and hashed, within the
/// per-call budget of host bytes, 64 MiB by default).
const VERIFY_BUDGET: u64 = 8 << 20;
/// Chunk records one verify call reads at most.
const VERIFY_CHUNKS: u32 = 256;
/// Participants of one recording.
const MAX_PARTICIPANTS: usize = 1000;
/// Problems one verification lists (they travel in the cursor).
const MAX_PROBLEMS: usize = 20;
/// The seal key's name (per tenant and plugin, held by the host).
const SEAL_KEY: &str = "seal";

impl Plugin for Rec {
    fn handle(request: Request) -> Response {
        let mut response = Router::new()
            .get("/recordings", list)
            .post("/recordings", start)
            .get("/recordings/:rid", show)
            .delete("/recordings/:rid", delete)
            .put("/recordings/:rid/chunks/:seq", upload_chunk)
            .post("/recordings/:rid/pause", pause)
            .post("/recordings/:rid/resume", resume)
            .post("/recordings/:rid/stop", stop)
            .post("/recordings/:rid/participants", add_participants)
            .get("/recordings/:rid/media", media)
            .get("/recordings/:rid/verify", verify)
            .get("/seal-key", seal_key)
            .handle(&request);
        tx::finish(&mut response);
        response
    }

    fn on_event(event: Event) -> Result<(), String> {
        if event.source == "host" && event.kind == "blob.expired" {
            return expired(&event.data).map_err(|e| format!("{}: {}", e.code, e.message));
        }
        Ok(())
    }
}

switchboard_sdk::export_plugin!(Rec);

type Reply = Result<Response, ApiError>;

// ---- helpers -------------------------------------------------------------------

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn setting_bool(key: &str) -> bool {
    config::get::<bool>(key).unwrap_or(true)
}

fn param<'a>(p: &'a Params, name: &str) -> &'a str {
    p.get(name).unwrap_or_default()
}

/// The chain head before the first chunk of `rid`.
fn genesis(rid: &str) -> String {
    crypto::hex(&crypto::sha256(
        format!("switchboard-recording-v1:{rid}").as_bytes(),
    ))
}

/// The head after chunk `seq` whose SHA-256 is `hash`, given the head
/// before it: SHA-256(previous head (hex) || seq (u64 BE) || hash).
fn chain_next(previous: &str, seq: u64, hash: &[u8]) -> String {
    let mut buf = Vec::with_capacity(previous.len() + 8 + hash.len());
    buf.extend_from_slice(previous.as_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(hash);
    crypto::hex(&crypto::sha256(&buf))
}

fn valid_source(source: &Source) -> Result<(), ApiError> {
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
fn participant(req: &Request, p: &str) -> Result<String, ApiError> {
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
fn active_ns(rec: &Recording) -> String {
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

fn load(rid: &str) -> Result<Recording, ApiError> {
    http::check_id(rid, "recording")?;
    kv::get_json::<Recording>(model::recording(rid))?.ok_or_else(not_found)
}

fn save(rec: &Recording) -> Result<(), ApiError> {
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
fn visible(req: &Request, rid: &str) -> Result<Recording, ApiError> {
    let rec = load(rid)?;
    if !may_access(req, &rec) {
        return Err(not_found());
    }
    Ok(rec)
}

/// Whether the calling plugin started `rec` (and so manages it).
fn by_owner(req: &Request, rec: &Recording) -> bool {
    req.caller_plugin.is_some() && req.caller_plugin == rec.owner_plugin
}

/// The recording, for the plugin that started it or a caller who may see it.
fn managed(req: &Request, rid: &str) -> Result<Recording, ApiError> {
    let rec = load(rid)?;
    if by_owner(req, &rec) || may_access(req, &rec) {
        Ok(rec)
    } else {
        Err(not_found())
    }
}

/// The recording, for its initiator only (pause, resume, stop: SPEC M9).
fn initiator_only(req: &Request, rid: &str, what: &str) -> Result<Recording, ApiError> {
    let rec = visible(req, rid)?;
    if req.principal.user.as_deref() != Some(rec.initiator.as_str()) {
        return Err(ApiError::new(
            403,
            "not_initiator",
            format!("only the user who started a recording may {what} it"),
        ));
    }
    Ok(rec)
}

fn audience(rec: &Recording) -> Vec<String> {
    let mut all: BTreeSet<String> = rec.participants.iter().cloned().collect();
    all.insert(rec.initiator.clone());
    all.into_iter().collect()
}

/// Tells the initiator and the participants (SPEC M9: everyone is told
/// that recording is on).
fn announce(rec: &Recording, kind: &str) -> Result<(), ApiError> {
    let data = json!({
        "recording": rec.id, "source": rec.source, "initiator": rec.initiator,
        "state": rec.state,
    });
    events::publish_to_users(&audience(rec), kind, data.to_string().as_bytes())?;
    Ok(())
}

fn audit_ok(action: &str, rec: &Recording, details: Value) -> Result<(), ApiError> {
    audit::append(
        action,
        &format!("recording/{}", rec.id),
        audit::Outcome::Success,
        &details.to_string(),
    )?;
    Ok(())
}

fn source_address(req: &Request) -> String {
    req.header("x-switchboard-source-address")
        .unwrap_or("")
        .to_string()
}

fn view(req: &Request, rec: &Recording) -> Value {
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

// ---- lifecycle -------------------------------------------------------------------

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
}

/// Opens a recording of a source. The caller is its initiator and owner.
/// A plugin starting it for its user (meetings) vouches for the
/// participants (users or guests); a user starting one directly names
/// users of the tenant. One recording runs per source at a time.
fn start(req: &Request, _: &Params) -> Reply {
    let me = req.user()?.to_string();
    if req.principal.kind != PrincipalKind::Registered {
        return Err(ApiError::new(
            403,
            "registered_only",
            "only registered users start recordings",
        ));
    }
    let body: Start = req.json()?;
    let source = body.source;
    valid_source(&source)?;
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
    if let Some(running) = kv::get(model::active(&owner_ns, &source))? {
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
    let blob = blobs::create(Some(&me), "recording")?;
    let rec = Recording {
        head: genesis(&id),
        id,
        source,
        title,
        initiator: me.clone(),
        owner_plugin: req.caller_plugin.clone(),
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
    kv::set(
        model::active(&active_ns(&rec), &rec.source),
        rec.id.as_bytes(),
    )?;
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

fn show(req: &Request, p: &Params) -> Reply {
    let rec = visible(req, param(p, "rid"))?;
    Ok(http::json(200, &view(req, &rec)))
}

fn list(req: &Request, _: &Params) -> Reply {
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
fn add_participants(req: &Request, p: &Params) -> Reply {
    let mut rec = managed(req, param(p, "rid"))?;
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

fn pause(req: &Request, p: &Params) -> Reply {
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

fn resume(req: &Request, p: &Params) -> Reply {
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
fn stop(req: &Request, p: &Params) -> Reply {
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
    seal(req, &mut rec)?;
    Ok(http::json(200, &view(req, &rec)))
}

/// Ends the recording and signs what it holds. Writes the recording.
fn seal(req: &Request, rec: &mut Recording) -> Result<(), ApiError> {
    let now = switchboard_sdk::now_ms();
    if let Some(last) = rec.pauses.last_mut()
        && last.to.is_none()
    {
        last.to = Some(now);
    }
    rec.state = State::Stopped;
    rec.stopped_at = Some(now);
    let payload = SealPayload {
        v: 1,
        tenant: req.principal.tenant.clone(),
        recording: rec.id.clone(),
        source: rec.source.clone(),
        initiator: rec.initiator.clone(),
        content_type: rec.content_type.clone(),
        started_at: rec.started_at,
        stopped_at: now,
        chunks: rec.chunks,
        bytes: rec.bytes,
        head: rec.head.clone(),
        pauses: rec
            .pauses
            .iter()
            .map(|p| (p.from, p.to.unwrap_or(now), p.after_chunk))
            .collect(),
    };
    let payload = serde_json::to_string(&payload)
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    let signature = crypto::sign(SEAL_KEY, payload.as_bytes())?;
    let public_key = crypto::public_key(SEAL_KEY)?;
    rec.seal = Some(Seal {
        payload,
        signature: crypto::hex(&signature),
        public_key: crypto::hex(&public_key),
    });
    save(rec)?;
    kv::delete(model::active(&active_ns(rec), &rec.source))?;
    audit_ok(
        "recording.stop",
        rec,
        json!({ "chunks": rec.chunks, "bytes": rec.bytes, "head": rec.head,
                "reason": req.query_param("reason").filter(|r| r == "source_ended") }),
    )?;
    announce(rec, "recording.stopped")?;
    Ok(())
}

/// `PUT /recordings/:rid/chunks/:seq`: the body is chunk `seq` (from 1).
/// The next chunk is appended; the last one again (a retry after a lost
/// answer) is acknowledged if identical; anything else is refused. An
/// optional `X-Chunk-SHA256` header is checked against the body.
fn upload_chunk(req: &Request, p: &Params) -> Reply {
    let mut rec = visible(req, param(p, "rid"))?;
    if req.principal.user.as_deref() != Some(rec.initiator.as_str()) {
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

// ---- access -----------------------------------------------------------------------

/// `GET /recordings/:rid/media[?download=true]` with `Range`: plays (inline
/// for audio and video types) or downloads (always as an attachment).
/// Every answer is audited with who, when and from where. At most 8 MiB
/// per answer: players ask in ranges; an open range is answered in part.
fn media(req: &Request, p: &Params) -> Reply {
    let rec = visible(req, param(p, "rid"))?;
    if shredded_by_host(&rec)? {
        tx::keep_writes();
        return Err(ApiError::new(
            410,
            "recording_shredded",
            "the recording's media was deleted",
        ));
    }
    let download = req.query_param("download").as_deref() == Some("true");
    let size = rec.bytes;
    let (status, start, end) = match http::byte_range(req.header("range"), size) {
        http::ByteRange::Whole if size <= MAX_MEDIA_ANSWER => (200, 0, size),
        http::ByteRange::Whole => {
            return Err(ApiError::new(
                413,
                "range_required",
                format!(
                    "recordings over {} MiB are fetched in ranges (Range: bytes=...)",
                    MAX_MEDIA_ANSWER >> 20
                ),
            ));
        }
        http::ByteRange::Part(s, e) => (206, s, e.min(s + MAX_MEDIA_ANSWER)),
        http::ByteRange::Unsatisfiable => {
            return Ok(Response {
                status: 416,
                headers: vec![("content-range".into(), format!("bytes */{size}"))],
                body: Vec::new(),
            });
        }
    };
    let mut body = Vec::with_capacity((end - start) as usize);
    let mut at = start;
    while at < end {
        let part = blobs::read(&rec.blob, at, (end - at).min(4 << 20) as u32)?;
        if part.is_empty() {
            break;
        }
        at += part.len() as u64;
        body.extend_from_slice(&part);
    }
    let inline_ok = !download
        && (rec.content_type.starts_with("audio/") || rec.content_type.starts_with("video/"));
    let (content_type, disposition) = if inline_ok {
        (rec.content_type.clone(), "inline".to_string())
    } else {
        (
            "application/octet-stream".to_string(),
            format!(
                "attachment; filename=\"recording-{}.{}\"",
                rec.id,
                extension(&rec.content_type)
            ),
        )
    };
    let action = if download {
        "recording.download"
    } else {
        "recording.play"
    };
    audit_ok(
        action,
        &rec,
        json!({ "range": format!("{start}-{}", end.saturating_sub(1)), "bytes": body.len(), "from": source_address(req) }),
    )?;
    let mut headers = vec![
        ("content-type".to_string(), content_type),
        ("content-disposition".into(), disposition),
        ("x-content-type-options".into(), "nosniff".into()),
        (
            "content-security-policy".into(),
            "sandbox; default-src 'none'".into(),
        ),
        ("cache-control".into(), "private, no-store".into()),
        ("accept-ranges".into(), "bytes".into()),
    ];
    if status == 206 && body.is_empty() {
        return Ok(Response {
            status: 416,
            headers: vec![("content-range".into(), format!("bytes */{size}"))],
            body: Vec::new(),
        });
    }
    if status == 206 {
        headers.push((
            "content-range".into(),
            format!("bytes {start}-{}/{size}", start + body.len() as u64 - 1),
        ));
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A file extension for a media type (only ever `[a-z0-9]`).
fn extension(content_type: &str) -> String {
    let sub = content_type
        .split_once('/')
        .map(|(_, s)| s)
        .unwrap_or("bin");
    let ext: String = sub
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .take(8)
        .collect();
    if ext.is_empty() {
        "bin".into()
    } else {
        ext.to_ascii_lowercase()
    }
}

/// Deletes a recording: its media is crypto-shredded at once (unless
/// under legal hold: 409), its record stays as a tombstone. The
/// initiator, a tenant admin (as the tenant allows) or the plugin that
/// started it.
fn delete(req: &Request, p: &Params) -> Reply {
    let mut rec = managed(req, param(p, "rid"))?;
    let is_initiator = req.principal.user.as_deref() == Some(rec.initiator.as_str());
    let is_admin = req.is_admin()
        && req.principal.kind == PrincipalKind::Registered
        && setting_bool("admins-may-access");
    if !(by_owner(req, &rec) || is_initiator || is_admin) {
        return Err(ApiError::forbidden(
            "recordings are deleted by their initiator, a tenant admin or the plugin that started them",
        ));
    }
    match rec.state {
        State::Shredded => return Ok(http::json(200, &view(req, &rec))),
        State::Recording | State::Paused => {
            return Err(ApiError::new(
                409,
                "recording_active",
                "stop the recording before deleting it",
            ));
        }
        State::Stopped => {}
    }
    match blobs::delete(&rec.blob) {
        Ok(_) => {}
        Err(Error::Denied(m)) => {
            return Err(ApiError::new(
                409,
                "legal_hold",
                format!("the recording is under legal hold: {m}"),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    rec.state = State::Shredded;
    rec.shredded = Some(Shredded {
        at: switchboard_sdk::now_ms(),
        reason: "deleted".into(),
        by: req.principal.user.clone(),
    });
    save(&rec)?;
    kv::delete(model::blob(&rec.blob))?;
    audit_ok(
        "recording.delete",
        &rec,
        json!({ "bytes": rec.bytes, "from": source_address(req) }),
    )?;
    Ok(http::json(200, &view(req, &rec)))
}

/// The host's sweeper deleted a blob whose retention ended.
fn expired(data: &[u8]) -> Result<(), ApiError> {
    let v: Value = serde_json::from_slice(data)
        .map_err(|e| ApiError::bad_request("invalid_event", e.to_string()))?;
    let Some(blob) = v["blob"].as_str() else {
        return Ok(());
    };
    let Some(rid) = kv::get(model::blob(blob))? else {
        return Ok(());
    };
    let rid = String::from_utf8_lossy(&rid).into_owned();
    let Ok(mut rec) = load(&rid) else {
        return Ok(());
    };
    if matches!(rec.state, State::Recording | State::Paused) {
        kv::delete(model::active(&active_ns(&rec), &rec.source))?;
    }
    rec.state = State::Shredded;
    rec.shredded = Some(Shredded {
        at: switchboard_sdk::now_ms(),
        reason: "retention".into(),
        by: None,
    });
    save(&rec)?;
    kv::delete(model::blob(blob))?;
    audit_ok("recording.expire", &rec, json!({ "bytes": rec.bytes }))?;
    Ok(())
}

// ---- verification ---------------------------------------------------------------------

/// `GET /recordings/:rid/verify[?cursor=...]`: re-reads the chunk records
/// and the media, recomputes every hash and the chain, and checks the
/// seal's signature and statements. Long recordings are verified over
/// several calls: an answer with `"done": false` carries the `cursor` to
/// pass next. Audited (`recording.verify`) when done.
fn verify(req: &Request, p: &Params) -> Reply {
    let rec = visible(req, param(p, "rid"))?;
    let (mut next, mut head, mut bytes, mut problems) = match req.query_param("cursor") {
        None => (1u64, genesis(&rec.id), 0u64, Vec::<String>::new()),
        Some(c) => parse_cursor(&rec.id, &c)?,
    };
    let prefix = model::chunks_prefix(&rec.id);
    let start = (next > 1).then(|| model::chunk(&rec.id, next - 1).into_bytes());
    let page = kv::scan(&prefix, start.as_deref(), VERIFY_CHUNKS)?;
    let mut read = 0u64;
    let media_gone = rec.state == State::Shredded || shredded_by_host(&rec)?;
    let mut stopped_early = false;
    for e in &page.entries {
        let key_seq = std::str::from_utf8(&e.key[prefix.len()..])
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        let chunk: Chunk = match serde_json::from_slice(&e.value) {
            Ok(c) => c,
            Err(_) => {
                problems.push(format!("chunk {key_seq}: its record is unreadable"));
                continue;
            }
        };
        if key_seq != next {
            if key_seq > next {
                problems.push(format!("chunks {next}..{} are missing", key_seq - 1));
            } else {
                problems.push(format!("chunk {key_seq} appears out of order"));
            }
        }
        if chunk.seq != key_seq {
            problems.push(format!(
                "position {key_seq} holds chunk {}: chunks were reordered",
                chunk.seq
            ));
        }
        if key_seq > rec.chunks {
            problems.push(format!(
                "chunk {key_seq} was added after the recording's last chunk ({})",
                rec.chunks
            ));
        }
        if chunk.offset != bytes {
            problems.push(format!(
                "chunk {key_seq} starts at byte {} instead of {bytes}",
                chunk.offset
            ));
        }
        if !media_gone {
            match read_all(&rec.blob, chunk.offset, chunk.len) {
                Ok(data) => {
                    let actual = crypto::hex(&crypto::sha256(&data));
                    if actual != chunk.hash {
                        problems.push(format!("chunk {key_seq}: its media was changed"));
                    }
                    read += data.len() as u64;
                }
                Err(e) => {
                    problems.push(format!("chunk {key_seq}: its media cannot be read ({e:?})"))
                }
            }
        }
        let hash = unhex(&chunk.hash).unwrap_or_default();
        let expected = chain_next(&head, key_seq, &hash);
        if expected != chunk.chain {
            problems.push(format!("chunk {key_seq}: the hash chain breaks here"));
        }
        head = expected;
        bytes = chunk.offset.saturating_add(chunk.len);
        next = key_seq + 1;
        if problems.len() > MAX_PROBLEMS {
            problems.truncate(MAX_PROBLEMS);
            problems.push("more problems not listed: verification stopped".into());
            break;
        }
        if read >= VERIFY_BUDGET {
            stopped_early = true;
            break;
        }
    }
    let more = stopped_early || page.next.is_some();
    if more && problems.len() <= MAX_PROBLEMS {
        return Ok(http::json(
            200,
            &json!({
                "done": false,
                "cursor": make_cursor(&rec.id, next, &head, bytes, &problems)?,
                "checked_chunks": next - 1,
            }),
        ));
    }
    // Everything read: compare with the record and the seal.
    if next - 1 < rec.chunks {
        problems.push(format!("chunks {next}..{} are missing", rec.chunks));
    }
    if head != rec.head {
        problems.push("the chain head differs from the recording's".into());
    }
    if !media_gone && blobs::size(&rec.blob)? != bytes {
        problems.push("the media holds bytes beyond the last chunk".into());
    }
    let mut signature_valid = None;
    if let Some(seal) = &rec.seal {
        let sig = unhex(&seal.signature).unwrap_or_default();
        let ok = crypto::verify(SEAL_KEY, seal.payload.as_bytes(), &sig)?;
        signature_valid = Some(ok);
        if !ok {
            problems.push("the seal's signature is not valid".into());
        }
        match serde_json::from_str::<SealPayload>(&seal.payload) {
            Ok(s) => {
                if s.recording != rec.id || s.tenant != req.principal.tenant {
                    problems.push("the seal is for another recording".into());
                }
                let pauses: Vec<(u64, u64, u64)> = rec
                    .pauses
                    .iter()
                    .map(|p| (p.from, p.to.unwrap_or(0), p.after_chunk))
                    .collect();
                let stated = (
                    &s.source,
                    &s.initiator,
                    &s.content_type,
                    s.started_at,
                    Some(s.stopped_at),
                    &s.pauses,
                );
                let recorded = (
                    &rec.source,
                    &rec.initiator,
                    &rec.content_type,
                    rec.started_at,
                    rec.stopped_at,
                    &pauses,
                );
                if stated != recorded {
                    problems.push(
                        "the recording's source, initiator, type, times or pauses differ from the sealed ones"
                            .into(),
                    );
                }
                if s.head != head {
                    problems.push("the chain head differs from the sealed one".into());
                }
                if s.chunks != next - 1 || s.bytes != bytes {
                    problems.push(format!(
                        "sealed {} chunks and {} bytes; found {} chunks and {bytes} bytes",
                        s.chunks,
                        s.bytes,
                        next - 1
                    ));
                }
            }
            Err(_) => problems.push("the seal's statement is unreadable".into()),
        }
    } else if rec.state == State::Stopped {
        problems.push("the recording stopped but has no seal".into());
    }
    let intact = problems.is_empty();
    audit_ok(
        "recording.verify",
        &rec,
        json!({ "intact": intact, "problems": problems.len() }),
    )?;
    // A failed verification is an error answer (409 `tampered`) carrying
    // the whole report; its audit entry stays.
    tx::keep_writes();
    Ok(http::json(
        if intact { 200 } else { 409 },
        &json!({
            "code": if intact { "intact" } else { "tampered" },
            "done": true,
            "intact": intact,
            "sealed": rec.seal.is_some(),
            "signature_valid": signature_valid,
            "media_shredded": media_gone,
            "chunks": next - 1,
            "bytes": bytes,
            "head": head,
            "problems": problems,
            "seal": rec.seal,
        }),
    ))
}

/// Whether the host removed the media behind the plugin's back (a
/// retention expiry whose notice was lost): then the recording is marked
/// shredded now.
fn shredded_by_host(rec: &Recording) -> Result<bool, ApiError> {
    if rec.state == State::Shredded {
        return Ok(true);
    }
    match blobs::size(&rec.blob) {
        Ok(_) => Ok(false),
        Err(Error::NotFound(_)) => {
            let mut gone = rec.clone();
            if matches!(gone.state, State::Recording | State::Paused) {
                kv::delete(model::active(&active_ns(&gone), &gone.source))?;
            }
            gone.state = State::Shredded;
            gone.shredded = Some(Shredded {
                at: switchboard_sdk::now_ms(),
                reason: "retention".into(),
                by: None,
            });
            save(&gone)?;
            kv::delete(model::blob(&gone.blob))?;
            audit_ok(
                "recording.expire",
                &gone,
                json!({ "bytes": gone.bytes, "noticed": "on access" }),
            )?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

fn read_all(blob: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(len as usize);
    let mut at = offset;
    while at < offset + len {
        let part = blobs::read(blob, at, (offset + len - at).min(4 << 20) as u32)?;
        if part.is_empty() {
            break;
        }
        at += part.len() as u64;
        out.extend_from_slice(&part);
    }
    Ok(out)
}

/// The state of a verification between calls: next chunk, chain head,
/// bytes and problems so far, with an HMAC (a key the host holds for this
/// plugin) so that a caller cannot skip chunks or forge findings.
fn make_cursor(
    rid: &str,
    next: u64,
    head: &str,
    bytes: u64,
    problems: &[String],
) -> Result<String, ApiError> {
    let body = format!(
        "{next}.{head}.{bytes}.{}",
        crypto::hex(
            serde_json::to_string(problems)
                .unwrap_or_default()
                .as_bytes()
        )
    );
    let mac = crypto::hmac_sha256("verify-cursor", format!("{rid}:{body}").as_bytes())?;
    Ok(format!("{body}.{}", crypto::hex(&mac)))
}

fn parse_cursor(rid: &str, c: &str) -> Result<(u64, String, u64, Vec<String>), ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "pass the cursor as received");
    let (body, mac) = c.rsplit_once('.').ok_or_else(bad)?;
    let expected = crypto::hmac_sha256("verify-cursor", format!("{rid}:{body}").as_bytes())?;
    if unhex(mac).as_deref() != Some(&expected[..]) {
        return Err(bad());
    }
    let mut parts = body.split('.');
    let next = parts
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(bad)?;
    let head = parts
        .next()
        .filter(|h| h.len() == 64 && unhex(h).is_some())
        .ok_or_else(bad)?;
    let bytes = parts
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(bad)?;
    let problems = parts
        .next()
        .and_then(unhex)
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        .ok_or_else(bad)?;
    if next == 0 || parts.next().is_some() {
        return Err(bad());
    }
    Ok((next, head.to_string(), bytes, problems))
}

/// The tenant's recording seal public key, for verifying seals elsewhere.
fn seal_key(req: &Request, _: &Params) -> Reply {
    req.user()?;
    Ok(http::json(
        200,
        &json!({ "algorithm": "Ed25519", "public_key": crypto::hex(&crypto::public_key(SEAL_KEY)?) }),
    ))
}
