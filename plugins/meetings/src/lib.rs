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

mod guess;
mod live;
mod media;
mod model;
mod spaces;

use serde_json::Value;
use switchboard_sdk::http::{ApiError, RequestExt as _, Router};
use switchboard_sdk::{
    Method, Plugin, PrincipalKind, Request, Response, TimerEvent, audit, plugins, tx,
};

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

pub(crate) fn audit_ok(action: &str, target: &str, details: Value) -> Result<(), ApiError> {
    audit::append(
        action,
        target,
        audit::Outcome::Success,
        &details.to_string(),
    )?;
    Ok(())
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

/// Calls another plugin with a JSON body; its answer's status and JSON.
pub(crate) fn call_json(
    plugin: &str,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), ApiError> {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = plugins::call(plugin, method, path, &body)?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Ok((r.status, v))
}

/// Like [`call_json`], but a refusal becomes this plugin's error: the
/// callee's 4xx code is passed on, a 5xx is a 502 `{plugin}_failed`.
pub(crate) fn call_ok(
    plugin: &str,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let (status, v) = call_json(plugin, method, path, body)?;
    if status < 400 {
        return Ok(v);
    }
    let why = v["message"].as_str().unwrap_or("no reason given");
    Err(if status < 500 {
        ApiError::new(
            status,
            v["code"].as_str().unwrap_or("refused"),
            format!("the {plugin} plugin refused: {why}"),
        )
    } else {
        ApiError::new(
            502,
            &format!("{plugin}_failed"),
            format!("the {plugin} plugin failed: {why}"),
        )
    })
}

/// Like [`call_ok`], but "it is not there" counts as done (deleting what
/// is already gone, or what a disabled plugin no longer holds).
pub(crate) fn call_gone_ok(plugin: &str, method: Method, path: &str) -> Result<(), ApiError> {
    match call_json(plugin, method, path, &Value::Null) {
        Ok((status, _)) if status < 400 || status == 404 => Ok(()),
        Ok((status, v)) if status < 500 => Err(ApiError::new(
            status,
            v["code"].as_str().unwrap_or("refused"),
            format!(
                "the {plugin} plugin refused: {}",
                v["message"].as_str().unwrap_or("no reason given")
            ),
        )),
        Ok((_, v)) => Err(ApiError::new(
            502,
            &format!("{plugin}_failed"),
            format!(
                "the {plugin} plugin failed: {}",
                v["message"].as_str().unwrap_or("no reason given")
            ),
        )),
        // The plugin is not enabled any more: it holds nothing to delete.
        Err(e) if e.status == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

pub(crate) fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
