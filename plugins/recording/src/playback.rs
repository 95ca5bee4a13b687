//! Playing and downloading a recording's media (SPEC R4): inline only for
//! audio and video types, otherwise as an attachment; in ranges of at
//! most 8 MiB; every answer audited with who, what range and from where.
//!
//! Uses `access` for who may see the recording and `retention` to notice
//! media the host shredded.

use serde_json::json;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Request, Response, blobs, tx};

use crate::access::{audit_ok, visible};
use crate::retention::shredded_by_host;
use crate::{Reply, param, source_address};

/// Largest answer of media, in bytes (a plugin answers with one body).
const MAX_MEDIA_ANSWER: u64 = 8 << 20;

/// `GET /recordings/:rid/media[?download=true]` with `Range`: plays (inline
/// for audio and video types) or downloads (always as an attachment).
/// Every answer is audited with who, when and from where. At most 8 MiB
/// per answer: players ask in ranges; an open range is answered in part.
pub fn media(req: &Request, p: &Params) -> Reply {
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
