//! The example plugin: everything a partner needs to see once — routing,
//! JSON bodies, kv with paging, settings, timers, events, lifecycle hooks
//! and a transactional call into another plugin (`ledger`).

use serde::{Deserialize, Serialize};
use switchboard_sdk::http::{self, ApiError, Params, RequestExt, Router};
use switchboard_sdk::{
    Event, Method, Plugin, Request, Response, TimerEvent, config, kv, log, plugins, timers,
};

struct Example;

impl Plugin for Example {
    fn init() -> Result<(), String> {
        kv::set("initialized", "yes").map_err(|e| e.to_string())
    }

    fn migrate(from_version: String) -> Result<(), String> {
        kv::set("migrated-from", from_version).map_err(|e| e.to_string())
    }

    fn handle(request: Request) -> Response {
        Router::new()
            .get("/noop", |_, _| Ok(http::empty(204)))
            .get("/whoami", whoami)
            .get("/public/hello", hello)
            .get("/counter/:name", counter_get)
            .post("/counter/:name/increment", counter_increment)
            .put("/notes/:id", note_put)
            .get("/notes/:id", note_get)
            .delete("/notes/:id", note_delete)
            .get("/notes", note_list)
            .get("/config", |_, _| Ok(http::json(200, &config::all())))
            .post("/timers", timer_schedule)
            .delete("/timers/:id", timer_cancel)
            .get("/fired/:name", fired_get)
            .get("/events/:kind", event_get)
            .get("/kv-loop", kv_loop)
            .post("/transfer", transfer)
            .get("/raw/:key", raw_get)
            .get("/ledger-whoami", |_, _| {
                let resp = plugins::call("ledger", Method::Get, "/whoami", b"")?;
                Ok(Response {
                    status: resp.status,
                    headers: resp.headers,
                    body: resp.body,
                })
            })
            .handle(&request)
    }

    fn on_event(event: Event) -> Result<(), String> {
        kv::set(format!("events/{}", event.kind), event.data).map_err(|e| e.to_string())
    }

    fn on_timer(timer: TimerEvent) -> Result<(), String> {
        log::info("timer fired");
        kv::set(format!("fired/{}", timer.name), timer.payload).map_err(|e| e.to_string())
    }
}

switchboard_sdk::export_plugin!(Example);

fn whoami(req: &Request, _: &Params) -> Result<Response, ApiError> {
    Ok(http::json(
        200,
        &serde_json::json!({
            "tenant": req.principal.tenant,
            "user": req.principal.user,
            "role": format!("{:?}", req.principal.role),
        }),
    ))
}

fn hello(_: &Request, _: &Params) -> Result<Response, ApiError> {
    let greeting: String = config::get("greeting").unwrap_or_default();
    Ok(http::text(200, &greeting))
}

#[derive(Serialize)]
struct Counter<'a> {
    name: &'a str,
    value: u64,
}

fn counter_key(name: &str) -> String {
    format!("counter/{name}")
}

fn counter_get(_: &Request, p: &Params) -> Result<Response, ApiError> {
    let name = p.get("name").unwrap_or_default();
    let value: u64 = kv::get_json(counter_key(name))?.unwrap_or(0);
    Ok(http::json(200, &Counter { name, value }))
}

fn counter_increment(_: &Request, p: &Params) -> Result<Response, ApiError> {
    let name = p.get("name").unwrap_or_default();
    let value: u64 = kv::get_json(counter_key(name))?.unwrap_or(0) + 1;
    kv::set_json(counter_key(name), &value)?;
    Ok(http::json(200, &Counter { name, value }))
}

#[derive(Serialize, Deserialize)]
struct Note {
    text: String,
    #[serde(default)]
    author: Option<String>,
}

fn note_put(req: &Request, p: &Params) -> Result<Response, ApiError> {
    if !config::get::<bool>("notes-enabled").unwrap_or(true) {
        return Err(ApiError::forbidden("the tenant admin has disabled notes"));
    }
    let mut note: Note = req.json()?;
    if note.text.is_empty() || note.text.len() > 4000 {
        return Err(ApiError::bad_request(
            "invalid_note",
            "note text must be 1-4000 bytes",
        ));
    }
    note.author = Some(req.user()?.to_string());
    kv::set_json(format!("note/{}", p.get("id").unwrap_or_default()), &note)?;
    Ok(http::json(200, &note))
}

fn note_get(_: &Request, p: &Params) -> Result<Response, ApiError> {
    match kv::get_json::<Note>(format!("note/{}", p.get("id").unwrap_or_default()))? {
        Some(note) => Ok(http::json(200, &note)),
        None => Err(ApiError::not_found("no such note")),
    }
}

fn note_delete(_: &Request, p: &Params) -> Result<Response, ApiError> {
    let existed = kv::delete(format!("note/{}", p.get("id").unwrap_or_default()))?;
    Ok(http::empty(if existed { 204 } else { 404 }))
}

fn note_list(req: &Request, _: &Params) -> Result<Response, ApiError> {
    let limit: u32 = req
        .query_param("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(50);
    let after = req.query_param("after").map(|a| format!("note/{a}"));
    let page = kv::scan("note/", after.as_deref().map(str::as_bytes), limit)?;
    let ids: Vec<String> = page
        .entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.key["note/".len()..]).into_owned())
        .collect();
    let next = page
        .next
        .map(|k| String::from_utf8_lossy(&k["note/".len()..]).into_owned());
    Ok(http::json(
        200,
        &serde_json::json!({ "ids": ids, "next": next }),
    ))
}

#[derive(Deserialize)]
struct TimerSpec {
    delay_ms: u64,
    name: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    then_fail: bool,
}

fn timer_schedule(req: &Request, _: &Params) -> Result<Response, ApiError> {
    let spec: TimerSpec = req.json()?;
    let id = timers::schedule(
        std::time::Duration::from_millis(spec.delay_ms),
        &spec.name,
        spec.payload.as_bytes(),
    )?;
    if spec.then_fail {
        panic!("failing after scheduling, on request");
    }
    Ok(http::json(200, &serde_json::json!({ "id": id })))
}

fn timer_cancel(_: &Request, p: &Params) -> Result<Response, ApiError> {
    let cancelled = timers::cancel(p.get("id").unwrap_or_default())?;
    Ok(http::json(
        200,
        &serde_json::json!({ "cancelled": cancelled }),
    ))
}

fn fired_get(_: &Request, p: &Params) -> Result<Response, ApiError> {
    match kv::get(format!("fired/{}", p.get("name").unwrap_or_default()))? {
        Some(v) => Ok(http::text(200, &String::from_utf8_lossy(&v))),
        None => Err(ApiError::not_found("not fired")),
    }
}

fn event_get(_: &Request, p: &Params) -> Result<Response, ApiError> {
    match kv::get(format!("events/{}", p.get("kind").unwrap_or_default()))? {
        Some(v) => Ok(http::text(200, &String::from_utf8_lossy(&v))),
        None => Err(ApiError::not_found("no such event")),
    }
}

fn raw_get(_: &Request, p: &Params) -> Result<Response, ApiError> {
    match kv::get(p.get("key").unwrap_or_default())? {
        Some(v) => Ok(http::text(200, &String::from_utf8_lossy(&v))),
        None => Err(ApiError::not_found("no such key")),
    }
}

/// `n` reads of one key: the benchmark of a host call.
fn kv_loop(req: &Request, _: &Params) -> Result<Response, ApiError> {
    let n: u32 = req
        .query_param("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let mut found = 0u32;
    for _ in 0..n {
        if kv::get("bench")?.is_some() {
            found += 1;
        }
    }
    Ok(http::json(200, &found))
}

/// Writes here and in `ledger` in one transaction. `?fail=after` panics
/// after the ledger call; `?fail=callee` makes the ledger panic.
fn transfer(req: &Request, _: &Params) -> Result<Response, ApiError> {
    let n: u64 = kv::get_json("transfers")?.unwrap_or(0) + 1;
    kv::set_json("transfers", &n)?;
    let fail = req.query_param("fail");
    let path = if fail.as_deref() == Some("callee") {
        "/record-then-panic"
    } else {
        "/record"
    };
    let resp = plugins::call("ledger", Method::Post, path, b"{}")?;
    if fail.as_deref() == Some("after") {
        panic!("failing after the ledger call, on request");
    }
    Ok(http::json(
        200,
        &serde_json::json!({ "transfers": n, "ledger_status": resp.status, "ledger": String::from_utf8_lossy(&resp.body) }),
    ))
}
