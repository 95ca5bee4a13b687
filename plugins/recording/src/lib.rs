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
//!
//! This file is the door: the router in `Rec::handle` and the event
//! dispatch, plus a little glue the areas share (`Reply`, settings, path
//! parameters, the client's address). One module per area, each
//! importing only those below it:
//!
//! | module | what |
//! |---|---|
//! | `capture` | start, chunks, pause, resume, stop |
//! | `seal` | the hash chain, the seal, verification, the seal key |
//! | `playback` | playing and downloading media |
//! | `retention` | deletion, retention expiry, media found gone |
//! | `access` | who may see and manage a recording; list, show, participants |
//! | `model` | what is stored, under which keys |
//!
//! `capture` uses `seal`; `seal` and `playback` use `retention`; all use
//! `access`, and `model` as they need.

mod access;
mod capture;
mod model;
mod playback;
mod retention;
mod seal;

use switchboard_sdk::http::{ApiError, Params, RequestExt as _, Router};
use switchboard_sdk::{Event, Plugin, Request, Response, config, tx};

struct Rec;

impl Plugin for Rec {
    fn handle(request: Request) -> Response {
        let mut response = Router::new()
            .get("/recordings", access::list)
            .post("/recordings", capture::start)
            .get("/recordings/:rid", access::show)
            .delete("/recordings/:rid", retention::delete)
            .put("/recordings/:rid/chunks/:seq", capture::upload_chunk)
            .post("/recordings/:rid/pause", capture::pause)
            .post("/recordings/:rid/resume", capture::resume)
            .post("/recordings/:rid/stop", capture::stop)
            .post("/recordings/:rid/participants", access::add_participants)
            .get("/recordings/:rid/media", playback::media)
            .get("/recordings/:rid/verify", seal::verify)
            .get("/seal-key", seal::seal_key)
            .handle(&request);
        tx::finish(&mut response);
        response
    }

    fn on_event(event: Event) -> Result<(), String> {
        if event.source == "host" && event.kind == "blob.expired" {
            return retention::expired(&event.data)
                .map_err(|e| format!("{}: {}", e.code, e.message));
        }
        Ok(())
    }
}

switchboard_sdk::export_plugin!(Rec);

/// What a route handler answers.
pub(crate) type Reply = Result<Response, ApiError>;

/// Tenant setting `key`: on unless the tenant's admin turned it off.
pub(crate) fn setting_bool(key: &str) -> bool {
    config::get::<bool>(key).unwrap_or(true)
}

/// Path parameter `name` (empty when the route has none).
pub(crate) fn param<'a>(p: &'a Params, name: &str) -> &'a str {
    p.get(name).unwrap_or_default()
}

/// The client's address as the host reports it.
pub(crate) fn source_address(req: &Request) -> String {
    req.header("x-switchboard-source-address")
        .unwrap_or("")
        .to_string()
}
