//! Meetings (SPEC M1-M11): meeting spaces with an access code, invitees
//! and a chat; live sessions joined directly by the tenant's registered
//! users and through a waiting room by guests; participants of three
//! kinds (registered, guest, PSTN) removed and invited during a session;
//! recording under the initiator-stops rule; WebRTC signalling relayed
//! between admitted participants; everything audited.
//!
//! The plugin owns its spaces' chat conversations (the chat plugin's
//! `/owned` API) and its sessions' recordings (the recording plugin)
//! through the `plugins` capability, and proxies chat for guests, whose
//! sessions reach this plugin only. See `docs/meetings.md`.
//!
//! This file is the door: the router in `Meetings::handle` and the timer
//! dispatch, plus a little glue the areas share (`Reply`, `registered`,
//! `source_address`, `to_value`). One module per area, each importing
//! only those below it:
//!
//! | module | what |
//! |---|---|
//! | `spaces` | the `/spaces` routes: create, list, show, hide, delete |
//! | `dialin` | phone callers dialling in: the access code, the phone bridge |
//! | `media` | inside a session: signalling, recording, chat for guests |
//! | `live` | live sessions: start, join, waiting room, roster, end |
//! | `members` | a space and the roles users hold in it |
//! | `guess` | throttling of access-code guessing |
//! | `model` | what is stored, under which keys |
//!
//! `spaces`, `media` and `dialin` use `live`; `live` uses `members` and `guess`;
//! all but `guess` use `model`. Calls into the chat and recording
//! plugins go through the SDK's `plugins::call_ok` and friends.

mod dialin;
mod guess;
mod live;
mod media;
mod members;
mod model;
mod spaces;

use serde_json::Value;
use switchboard_sdk::http::{ApiError, RequestExt as _, Router};
use switchboard_sdk::{Plugin, PrincipalKind, Request, Response, TimerEvent, tx};

struct Meetings;

switchboard_sdk::export_plugin!(Meetings);

impl Plugin for Meetings {
    fn handle(request: Request) -> Response {
        let mut response = Router::new()
            .get("/spaces", spaces::list)
            .post("/spaces", spaces::create)
            .get("/spaces/:sid", spaces::show)
            .delete("/spaces/:sid", spaces::delete)
            .post("/spaces/:sid/hide", spaces::hide)
            .post("/spaces/:sid/unhide", spaces::unhide)
            .post("/spaces/:sid/live", live::start)
            .post("/join", live::join)
            .post("/guest/join", live::guest_join)
            .get("/live/:lid", live::show)
            .post("/live/:lid/knock", live::knock)
            .post("/live/:lid/lobby/:pid/admit", live::admit)
            .post("/live/:lid/lobby/:pid/reject", live::reject)
            .post("/live/:lid/participants/:pid/remove", live::remove)
            .post("/live/:lid/invite", live::invite)
            .post("/live/:lid/leave", live::leave)
            .post("/live/:lid/end", live::end)
            .post("/pstn/join", live::pstn_join)
            .post("/live/:lid/pstn/:pid/leave", live::pstn_leave)
            .post("/live/:lid/signal", media::signal)
            .post("/live/:lid/recording", media::record_start)
            .post("/live/:lid/recording/stop", media::record_stop)
            .get("/live/:lid/chat/*rest", media::chat_proxy)
            .post("/live/:lid/chat/*rest", media::chat_proxy)
            .patch("/live/:lid/chat/*rest", media::chat_proxy)
            .delete("/live/:lid/chat/*rest", media::chat_proxy)
            .handle(&request);
        tx::finish(&mut response);
        response
    }

    fn on_call(event: switchboard_sdk::calls::CallEvent) -> Result<(), String> {
        dialin::on_call(event).map_err(|e| format!("{e:?}"))
    }

    fn on_timer(timer: TimerEvent) -> Result<(), String> {
        let result = match timer.name.as_str() {
            "end-live" => {
                let lid = String::from_utf8_lossy(&timer.payload).into_owned();
                match live::end_session(&lid, None) {
                    // The space (and the session) were deleted meanwhile.
                    Err(e) if e.status == 404 => Ok(()),
                    other => other.map(|_| ()),
                }
            }
            "sweep-guesses" => guess::sweep(),
            "stop-recording" => live::retry_stop(&String::from_utf8_lossy(&timer.payload)),
            "tell-phones" => live::tell_phones_later(&String::from_utf8_lossy(&timer.payload)),
            "hang-up-legs" => live::hang_up_legs(&String::from_utf8_lossy(&timer.payload)),
            _ => Ok(()),
        };
        result.map_err(|e| format!("{}: {}", e.code, e.message))
    }
}

pub(crate) type Reply = Result<Response, ApiError>;

/// The client's address as the host reports it.
pub(crate) fn source_address(req: &Request) -> String {
    req.header("x-switchboard-source-address")
        .unwrap_or("")
        .to_string()
}

/// The caller, who must be a registered user of the tenant.
pub(crate) fn registered(req: &Request) -> Result<String, ApiError> {
    let user = req.user()?.to_string();
    if req.principal.kind != PrincipalKind::Registered {
        return Err(ApiError::new(
            403,
            "registered_only",
            "this is for the tenant's registered users",
        ));
    }
    Ok(user)
}

pub(crate) fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
