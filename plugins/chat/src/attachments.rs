//! Attachments (SPEC C5): uploaded in parts into a blob owned by the
//! uploader (retention class `chat`) before the message that carries them
//! is posted, served only as downloads (never inline) with ranges, and
//! removed by a timer when never posted.
//!
//! Uses `conversations` for membership; `messages` links uploads to the
//! message that posts them; `lib.rs` sends the `expire-upload` timer here.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Request, Response, blobs, crypto, kv, timers};

use crate::conversations::membership;
use crate::model::{self, Attachment};
use crate::{Reply, param, setting_int, text};

/// A blob append takes at most this much.
const CHUNK: usize = 4 << 20;

/// Unposted uploads are removed after this long.
const PENDING_UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Uploads one user may have waiting to be posted.
const MAX_PENDING_UPLOADS: u32 = 50;

fn max_attachment_bytes() -> u64 {
    setting_int("max-attachment-mib", 15) << 20
}

/// `POST /conversations/:cid/attachments?name=&type=`: the body is the
/// file, or its first part (more with `.../content?offset=`).
pub fn upload(req: &Request, p: &Params) -> Reply {
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
pub fn append(req: &Request, p: &Params) -> Reply {
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
pub fn download(req: &Request, p: &Params) -> Reply {
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

/// Removes an upload that was never posted.
pub fn expire_upload(payload: &str) -> Result<(), ApiError> {
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
