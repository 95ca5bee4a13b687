//! Retention and deletion (SPEC R5, D4): deleting a recording
//! crypto-shreds its media at once unless it is under legal hold and
//! keeps the record as a tombstone; the host's sweeper tells the plugin
//! when retention removed a recording's media (`blob.expired`, sent here
//! by `lib.rs`), and media found gone without that notice is marked
//! shredded on access.
//!
//! Uses `access` for the record; `playback` and `seal` ask here whether
//! the media is still there.

use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Error, PrincipalKind, Request, blobs, kv};

use crate::access::{active_ns, audit_ok, by_owner, load, managed, save, view};
use crate::model::{self, Recording, Shredded, State};
use crate::{Reply, param, setting_bool, source_address};

/// Deletes a recording: its media is crypto-shredded at once (unless
/// under legal hold: 409), its record stays as a tombstone. The
/// initiator, a tenant admin (as the tenant allows) or the plugin that
/// started it.
pub fn delete(req: &Request, p: &Params) -> Reply {
    let mut rec = managed(req, param(p, "rid"))?;
    // A call recorded under an `always` policy is the tenant's record:
    // its initiator (the recorded user) does not delete it.
    let is_initiator = req.principal.user.as_deref() == Some(rec.initiator.as_str())
        && rec.policy.as_deref() != Some("always");
    let is_admin = req.is_admin()
        && req.principal.kind == PrincipalKind::Registered
        && setting_bool("admins-may-access");
    if !(by_owner(req, &rec) || is_initiator || is_admin) {
        if req.principal.user.as_deref() == Some(rec.initiator.as_str()) {
            return Err(ApiError::new(
                403,
                "kept_by_policy",
                "this call was recorded under the tenant's policy: only tenant admins delete it",
            ));
        }
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
pub fn expired(data: &[u8]) -> Result<(), ApiError> {
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

/// Whether the host removed the media behind the plugin's back (a
/// retention expiry whose notice was lost): then the recording is marked
/// shredded now.
pub fn shredded_by_host(rec: &Recording) -> Result<bool, ApiError> {
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
