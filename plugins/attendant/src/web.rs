//! The tenant admin's side (SPEC V4): attendants and their uploaded
//! prompts, over HTTPS. Every route is for tenant admins; every change is
//! checked whole (`model::check`) before anything is kept, and audited.

use serde_json::json;
use switchboard_sdk::audio;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Request, audit, blobs, now_ms};

use crate::Reply;
use crate::hours;
use crate::model::{self, Attendant, Recording};

/// Largest uploaded prompt, bytes (the gateway's body limit is 8 MiB).
const MAX_UPLOAD: usize = 5 << 20;
/// Longest uploaded prompt, ms.
const MAX_PROMPT_MS: u64 = 120_000;

fn admin(req: &Request) -> Result<(), ApiError> {
    if req.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("tenant admins only"))
    }
}

fn id<'a>(p: &'a Params, name: &str) -> Result<&'a str, ApiError> {
    let v = p.get(name).unwrap_or("");
    if model::valid_id(v) {
        Ok(v)
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            format!("{name} is 1-32 of a-z 0-9 -"),
        ))
    }
}

/// `GET /admin/attendants`: every attendant's id and menus.
pub fn list(req: &Request, _: &Params) -> Reply {
    admin(req)?;
    let all: Vec<serde_json::Value> = model::attendants()?
        .into_iter()
        .map(|(id, a)| json!({ "id": id, "time_zone": a.time_zone, "menus": a.menus.keys().collect::<Vec<_>>() }))
        .collect();
    Ok(http::json(200, &json!({ "attendants": all })))
}

/// `GET /admin/attendants/:id`.
pub fn show(req: &Request, p: &Params) -> Reply {
    admin(req)?;
    let a =
        model::attendant(id(p, "id")?)?.ok_or_else(|| ApiError::not_found("no such attendant"))?;
    Ok(http::json(200, &a))
}

/// `PUT /admin/attendants/:id`: the whole attendant, checked.
pub fn put(req: &Request, p: &Params) -> Reply {
    admin(req)?;
    let id = id(p, "id")?;
    let a: Attendant = req.json()?;
    let a = model::check(a)?;
    model::save_attendant(id, &a)?;
    audit::success(
        "attendant.set",
        id,
        json!({ "menus": a.menus.len(), "time_zone": a.time_zone }),
    )?;
    Ok(http::json(200, &a))
}

/// `DELETE /admin/attendants/:id`.
pub fn delete(req: &Request, p: &Params) -> Reply {
    admin(req)?;
    let id = id(p, "id")?;
    if !model::delete_attendant(id)? {
        return Err(ApiError::not_found("no such attendant"));
    }
    audit::success("attendant.delete", id, json!({}))?;
    Ok(http::empty(204))
}

/// `GET /admin/attendants/:id/now[?at_ms=]`: the menu that answers now
/// (or at `at_ms`), why, and the local time it is.
pub fn now(req: &Request, p: &Params) -> Reply {
    admin(req)?;
    let a =
        model::attendant(id(p, "id")?)?.ok_or_else(|| ApiError::not_found("no such attendant"))?;
    let at = match req.query_param("at_ms") {
        None => now_ms(),
        Some(v) => v
            .parse()
            .ok()
            .filter(|ms| hours::valid_moment(*ms))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_time", "at_ms is ms since the epoch, up to 9999")
            })?,
    };
    let (menu, why, local) = hours::menu_at(&a, at);
    Ok(http::json(
        200,
        &json!({ "menu": menu, "why": why, "local": local }),
    ))
}

/// `GET /admin/prompts`: uploaded prompts with their lengths.
pub fn prompts(req: &Request, _: &Params) -> Reply {
    admin(req)?;
    let all: Vec<serde_json::Value> = model::prompts()?
        .into_iter()
        .map(|(name, r)| json!({ "name": name, "ms": r.ms }))
        .collect();
    Ok(http::json(200, &json!({ "prompts": all })))
}

/// `PUT /admin/prompts/:name` with a WAV body: checked, converted to
/// 8 kHz mono 16-bit and kept (replacing one of the same name).
pub fn upload(req: &Request, p: &Params) -> Reply {
    admin(req)?;
    let name = id(p, "name")?;
    if req.body.len() > MAX_UPLOAD {
        return Err(ApiError::new(
            413,
            "prompt_too_large",
            format!("a prompt file is at most {} MiB", MAX_UPLOAD >> 20),
        ));
    }
    let samples = audio::to_8k_mono(&req.body, MAX_PROMPT_MS)
        .map_err(|audio::Refused(why)| ApiError::bad_request("invalid_audio", why))?;
    let ms = samples.len() as u64 / 8;
    let blob = blobs::create(None, model::PROMPT_CLASS)?;
    blobs::append(&blob, &audio::wav_8k(&samples))?;
    if let Some(old) = model::prompt(name)? {
        match blobs::delete(&old.blob) {
            Ok(_) | Err(switchboard_sdk::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    model::save_prompt(name, &Recording { blob, ms })?;
    audit::success("attendant.prompt.set", name, json!({ "ms": ms }))?;
    Ok(http::json(200, &json!({ "name": name, "ms": ms })))
}

/// `DELETE /admin/prompts/:name`: refused while an attendant says it.
pub fn delete_prompt(req: &Request, p: &Params) -> Reply {
    admin(req)?;
    let name = id(p, "name")?;
    let r = model::prompt(name)?.ok_or_else(|| ApiError::not_found("no such prompt"))?;
    if let Some(user) = model::prompt_in_use(name)? {
        return Err(ApiError::new(
            409,
            "prompt_in_use",
            format!("attendant {user} says it"),
        ));
    }
    match blobs::delete(&r.blob) {
        Ok(_) | Err(switchboard_sdk::Error::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    model::delete_prompt(name)?;
    audit::success("attendant.prompt.delete", name, json!({}))?;
    Ok(http::empty(204))
}
