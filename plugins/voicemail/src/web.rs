//! The HTTPS side (SPEC V1-V3): a user's own mailbox for web clients, and
//! the tenant admin's mailbox settings.
//!
//! A user reaches only their own mailbox: every route takes the mailbox
//! from the signed-in caller, never from the path, so there is no other
//! user's message to name. Audio is always an attachment (`nosniff`, a
//! sandbox CSP), never rendered inline in the app's origin. Admins set
//! mailbox numbers and phone numbers, unlock and clear PINs; they cannot
//! read messages here.

use serde::Deserialize;
use serde_json::json;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{
    PrincipalKind, Request, Response, audit, blobs, config, identity, now_ms, tx,
};

use crate::model::{self, Folder, Greeting, GreetingKind, Mailbox};
use crate::pin;
use crate::{Reply, copy_message, set_greeting};
use switchboard_sdk::audio as wav;

/// The caller, who must be a registered user (guests have no mailbox).
fn owner(req: &Request) -> Result<String, ApiError> {
    let user = req.user()?.to_string();
    if req.principal.kind != PrincipalKind::Registered {
        return Err(ApiError::new(
            403,
            "registered_only",
            "a mailbox is for the tenant's registered users",
        ));
    }
    Ok(user)
}

fn admin(req: &Request) -> Result<(), ApiError> {
    if req.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("tenant admins only"))
    }
}

fn param<'a>(p: &'a Params, name: &str) -> &'a str {
    p.get(name).unwrap_or("")
}

/// The caller's message `:id` (404 for anyone else's, exactly as for none).
fn own_message(req: &Request, p: &Params) -> Result<(String, model::Message), ApiError> {
    let user = owner(req)?;
    let id = param(p, "id");
    http::check_id(id, "message")?;
    let m = model::message(&user, id)?.ok_or_else(|| ApiError::not_found("no such message"))?;
    Ok((user, m))
}

fn view(mailbox: &Mailbox, counts: model::Counts, now: u64) -> serde_json::Value {
    let g = &mailbox.greetings;
    let greeting = |g: &Option<Greeting>| {
        g.as_ref()
            .map(|g| json!({ "ms": g.ms, "set_ms": g.set_ms, "until_ms": g.until_ms }))
    };
    json!({
        "number": mailbox.number,
        "phone": mailbox.phone,
        "has_pin": mailbox.pin.is_some(),
        "locked_until_ms": (mailbox.locked_until_ms > now).then_some(mailbox.locked_until_ms),
        "counts": counts,
        "greetings": {
            "unavailable": greeting(&g.unavailable),
            "busy": greeting(&g.busy),
            "name": greeting(&g.name),
            "temporary": greeting(&g.temporary),
            "temporary_playing": g.temporary_at(now).is_some(),
        },
    })
}

/// `GET /mailbox`: the caller's mailbox: number, counts, greetings.
pub fn mailbox(req: &Request, _: &Params) -> Reply {
    let user = owner(req)?;
    let mailbox = model::mailbox(&user)?;
    let counts = model::counts(&model::messages(&user)?);
    Ok(http::json(200, &view(&mailbox, counts, now_ms())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    pin: String,
}

/// `PUT /pin {"pin"}`: sets the caller's PIN (the rules in `pin`).
pub fn set_pin(req: &Request, _: &Params) -> Reply {
    let user = owner(req)?;
    let body: PinBody = req.json()?;
    let mut mailbox = model::mailbox(&user)?;
    if let Some((code, why)) = pin::refusal(&body.pin, &mailbox) {
        return Err(ApiError::bad_request(code, why));
    }
    mailbox.pin = Some(pin::hash(&user, &body.pin)?);
    mailbox.failures = 0;
    model::save_mailbox(&user, &mailbox)?;
    audit::success("voicemail.pin.set", &user, json!({ "by": "owner" }))?;
    Ok(http::empty(204))
}

/// `GET /messages[?folder=new|saved]`: the caller's messages in listening
/// order (new before saved, urgent first, then oldest).
pub fn list(req: &Request, _: &Params) -> Reply {
    let user = owner(req)?;
    let folder = match req.query_param("folder") {
        None => None,
        Some(f) => Some(
            Folder::parse(&f)
                .ok_or_else(|| ApiError::bad_request("invalid_folder", "folder is new or saved"))?,
        ),
    };
    let messages: Vec<model::Message> = model::messages(&user)?
        .iter()
        .filter(|m| folder.is_none_or(|f| m.folder == f))
        .map(model::public)
        .collect();
    Ok(http::json(200, &json!({ "messages": messages })))
}

/// `GET /messages/:id`: one message's metadata.
pub fn show(req: &Request, p: &Params) -> Reply {
    let (_, m) = own_message(req, p)?;
    Ok(http::json(200, &model::public(&m)))
}

/// Audio as a download: an attachment, never sniffed or rendered.
fn attachment(name: &str, body: Vec<u8>) -> Response {
    Response {
        status: 200,
        headers: vec![
            ("content-type".into(), "audio/wav".into()),
            (
                "content-disposition".into(),
                format!("attachment; filename=\"{name}.wav\""),
            ),
            ("x-content-type-options".into(), "nosniff".into()),
            (
                "content-security-policy".into(),
                "sandbox; default-src 'none'".into(),
            ),
            ("cache-control".into(), "private, no-store".into()),
        ],
        body,
    }
}

/// Reads a blob for an answer; one the host shredded (retention) is 410.
fn audio(blob: &str) -> Result<Vec<u8>, ApiError> {
    match blobs::read_all(blob) {
        Ok(b) => Ok(b),
        Err(switchboard_sdk::Error::NotFound(_)) => Err(ApiError::new(
            410,
            "audio_gone",
            "the audio was deleted (retention)",
        )),
        Err(e) => Err(e.into()),
    }
}

/// `GET /messages/:id/audio`: the message's WAV, as an attachment.
pub fn download(req: &Request, p: &Params) -> Reply {
    let (user, m) = own_message(req, p)?;
    let body = audio(&m.blob)?;
    audit::success(
        "voicemail.download",
        &user,
        json!({ "message": m.id, "bytes": body.len() }),
    )?;
    Ok(attachment(&format!("voicemail-{}", m.id), body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeardBody {
    #[serde(default = "yes")]
    heard: bool,
}

fn yes() -> bool {
    true
}

/// `POST /messages/:id/heard [{"heard": false}]`: marks it heard (or not).
pub fn heard(req: &Request, p: &Params) -> Reply {
    let (user, mut m) = own_message(req, p)?;
    let body: HeardBody = if req.body.is_empty() {
        HeardBody::default_heard()
    } else {
        req.json()?
    };
    if m.heard != body.heard {
        m.heard = body.heard;
        model::save_message(&user, &m)?;
        model::changed(&user)?;
    }
    Ok(http::json(200, &model::public(&m)))
}

impl HeardBody {
    fn default_heard() -> HeardBody {
        HeardBody { heard: true }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    folder: String,
}

/// `POST /messages/:id/move {"folder": "new"|"saved"}`.
pub fn move_to(req: &Request, p: &Params) -> Reply {
    let (user, mut m) = own_message(req, p)?;
    let body: MoveBody = req.json()?;
    let folder = Folder::parse(&body.folder)
        .ok_or_else(|| ApiError::bad_request("invalid_folder", "folder is new or saved"))?;
    if m.folder != folder {
        m.folder = folder;
        model::save_message(&user, &m)?;
        model::changed(&user)?;
    }
    Ok(http::json(200, &model::public(&m)))
}

/// `DELETE /messages/:id`: deletes it and shreds its audio.
pub fn delete(req: &Request, p: &Params) -> Reply {
    let (user, m) = own_message(req, p)?;
    match model::remove_message(&user, &m) {
        Ok(()) => {}
        Err(switchboard_sdk::Error::Denied(_)) => {
            return Err(ApiError::new(
                409,
                "legal_hold",
                "a legal hold keeps this message",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    model::changed(&user)?;
    Ok(http::empty(204))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardBody {
    to: String,
}

/// `POST /messages/:id/forward {"to": mailbox number}`: a copy into
/// another user's mailbox (new, unheard, marked as forwarded by the
/// caller).
pub fn forward(req: &Request, p: &Params) -> Reply {
    let (user, m) = own_message(req, p)?;
    let body: ForwardBody = req.json()?;
    let to = model::user_of_number(&body.to)?
        .ok_or_else(|| ApiError::not_found("no mailbox has that number"))?;
    if to == user {
        return Err(ApiError::bad_request(
            "same_mailbox",
            "the message is in this mailbox already",
        ));
    }
    match copy_message(&user, &m, &to) {
        Ok(()) => Ok(http::empty(204)),
        Err(switchboard_sdk::Error::QuotaExceeded(_)) => {
            // The copy's blob was made and deleted again: nothing stays.
            tx::keep_writes();
            Err(ApiError::new(409, "mailbox_full", "that mailbox is full"))
        }
        Err(switchboard_sdk::Error::NotFound(_)) => Err(ApiError::new(
            410,
            "audio_gone",
            "the audio was deleted (retention)",
        )),
        Err(e) => Err(e.into()),
    }
}

fn kind(p: &Params) -> Result<GreetingKind, ApiError> {
    GreetingKind::parse(param(p, "kind")).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_greeting",
            "a greeting is unavailable, busy, name or temporary",
        )
    })
}

/// `GET /greetings/:kind/audio`: the caller's greeting, as an attachment.
pub fn greeting_audio(req: &Request, p: &Params) -> Reply {
    let user = owner(req)?;
    let kind = kind(p)?;
    let mut mailbox = model::mailbox(&user)?;
    let g = mailbox
        .greetings
        .slot(kind)
        .clone()
        .ok_or_else(|| ApiError::not_found("no such greeting"))?;
    Ok(attachment(
        &format!("greeting-{}", kind.as_str()),
        audio(&g.blob)?,
    ))
}

/// `PUT /greetings/:kind[?until_ms=…]` with a WAV body: checked, converted
/// to 8 kHz mono 16-bit and kept. A temporary greeting needs `until_ms`
/// (in the future, at most 90 days on).
pub fn upload_greeting(req: &Request, p: &Params) -> Reply {
    let user = owner(req)?;
    let kind = kind(p)?;
    let max_kib: usize = config::get("max-upload-kib").unwrap_or(5120);
    if req.body.len() > max_kib * 1024 {
        return Err(ApiError::new(
            413,
            "greeting_too_large",
            format!("a greeting file is at most {max_kib} KiB"),
        ));
    }
    let now = now_ms();
    let until_ms = match (kind, req.query_param("until_ms")) {
        (GreetingKind::Temporary, Some(u)) => {
            let u: u64 = u.parse().map_err(|_| {
                ApiError::bad_request("invalid_until", "until_ms is ms since the epoch")
            })?;
            if u <= now || u > now + 90 * 24 * 3600 * 1000 {
                return Err(ApiError::bad_request(
                    "invalid_until",
                    "until_ms is in the future, at most 90 days on",
                ));
            }
            Some(u)
        }
        (GreetingKind::Temporary, None) => {
            return Err(ApiError::bad_request(
                "invalid_until",
                "a temporary greeting needs until_ms",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "invalid_until",
                "only a temporary greeting ends",
            ));
        }
        (_, None) => None,
    };
    let max_s: u64 = config::get("max-greeting-seconds").unwrap_or(60);
    let max_ms = if kind == GreetingKind::Name {
        10_000
    } else {
        max_s * 1000
    };
    let samples = wav::to_8k_mono(&req.body, max_ms)
        .map_err(|wav::Refused(why)| ApiError::bad_request("invalid_audio", why))?;
    let ms = samples.len() as u64 / 8;
    if ms < crate::phone::MIN_MS {
        return Err(ApiError::bad_request(
            "invalid_audio",
            "a greeting is at least 1 s long",
        ));
    }
    let blob = blobs::create(Some(&user), model::GREETING_CLASS)?;
    blobs::append(&blob, &wav::wav_8k(&samples))?;
    set_greeting(
        &user,
        kind,
        Some(Greeting {
            blob,
            ms,
            set_ms: now,
            until_ms,
        }),
    )?;
    Ok(http::json(
        200,
        &json!({ "kind": kind, "ms": ms, "until_ms": until_ms }),
    ))
}

/// `DELETE /greetings/:kind`: back to the system's greeting.
pub fn delete_greeting(req: &Request, p: &Params) -> Reply {
    let user = owner(req)?;
    let kind = kind(p)?;
    set_greeting(&user, kind, None)?;
    Ok(http::empty(204))
}

/// `GET /admin/mailboxes`: every mailbox with settings (admins).
pub fn admin_list(req: &Request, _: &Params) -> Reply {
    admin(req)?;
    let now = now_ms();
    let boxes: Vec<serde_json::Value> = model::mailboxes(10_000)?
        .into_iter()
        .map(|(user, m)| {
            json!({
                "user": user,
                "number": m.number,
                "phone": m.phone,
                "has_pin": m.pin.is_some(),
                "locked_until_ms": (m.locked_until_ms > now).then_some(m.locked_until_ms),
            })
        })
        .collect();
    Ok(http::json(200, &json!({ "mailboxes": boxes })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailboxBody {
    /// The mailbox number (1-10 digits), or null for none.
    #[serde(default)]
    number: Option<String>,
    /// The user's phone number (`+` and up to 15 digits), or null.
    #[serde(default)]
    phone: Option<String>,
}

/// The user `:user` of the tenant, by id or login name: their id.
fn tenant_user(p: &Params) -> Result<String, ApiError> {
    let name = param(p, "user");
    http::check_user_id(name)?;
    identity::lookup_user(name)?
        .filter(|u| u.active)
        .map(|u| u.id)
        .ok_or_else(|| ApiError::not_found("no active user of this tenant by that id or name"))
}

/// `PUT /admin/mailboxes/:user {"number", "phone"}`: a user's mailbox
/// number (unique in the tenant) and phone number (admins).
pub fn admin_set(req: &Request, p: &Params) -> Reply {
    admin(req)?;
    let user = tenant_user(p)?;
    let body: MailboxBody = req.json()?;
    let number = body.number.filter(|n| !n.is_empty());
    if let Some(n) = &number
        && (n.len() > model::MAX_NUMBER || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(ApiError::bad_request(
            "invalid_number",
            format!("a mailbox number is 1-{} digits", model::MAX_NUMBER),
        ));
    }
    let phone = body.phone.filter(|n| !n.is_empty());
    if let Some(ph) = &phone {
        let digits = ph.strip_prefix('+').unwrap_or(ph);
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::bad_request(
                "invalid_phone",
                "a phone number is an optional + and 1-15 digits",
            ));
        }
    }
    if let Some(n) = &number
        && let Some(holder) = model::user_of_number(n)?
        && holder != user
    {
        return Err(ApiError::new(
            409,
            "number_taken",
            "another mailbox has that number",
        ));
    }
    let mut mailbox = model::mailbox(&user)?;
    if mailbox.number != number {
        model::set_number(&user, &mut mailbox, number.clone())?;
    }
    mailbox.phone = phone;
    model::save_mailbox(&user, &mailbox)?;
    audit::success(
        "voicemail.mailbox.set",
        &user,
        json!({ "number": number, "phone": mailbox.phone }),
    )?;
    let counts = model::counts(&model::messages(&user)?);
    Ok(http::json(200, &view(&mailbox, counts, now_ms())))
}

/// `POST /admin/mailboxes/:user/unlock`: lifts a lockout (admins).
pub fn admin_unlock(req: &Request, p: &Params) -> Reply {
    admin(req)?;
    let user = tenant_user(p)?;
    let mut mailbox = model::mailbox(&user)?;
    mailbox.failures = 0;
    mailbox.lockouts = 0;
    mailbox.locked_until_ms = 0;
    model::save_mailbox(&user, &mailbox)?;
    audit::success("voicemail.unlock", &user, json!({}))?;
    Ok(http::empty(204))
}

/// `DELETE /admin/mailboxes/:user/pin`: clears a forgotten PIN (admins);
/// the user sets a new one over HTTPS.
pub fn admin_clear_pin(req: &Request, p: &Params) -> Reply {
    admin(req)?;
    let user = tenant_user(p)?;
    let mut mailbox = model::mailbox(&user)?;
    mailbox.pin = None;
    mailbox.failures = 0;
    mailbox.lockouts = 0;
    mailbox.locked_until_ms = 0;
    model::save_mailbox(&user, &mailbox)?;
    audit::success("voicemail.pin.clear", &user, json!({ "by": "admin" }))?;
    Ok(http::empty(204))
}
