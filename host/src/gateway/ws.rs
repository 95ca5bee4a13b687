//! The event stream: `GET /api/v1/events` upgraded to a WebSocket
//! (RFC 6455, over HTTP/1.1). One stream per signed-in user or guest
//! session; the session is named by `Authorization: Bearer …` or, for
//! browsers (which cannot set headers on a WebSocket), by a single-use
//! ticket from `POST /api/v1/auth/stream-ticket` passed as `?ticket=`.
//!
//! Frames from the server are JSON text:
//! - `{"type":"ready","resumed":bool}` first;
//! - `{"type":"reset"}` when the client asked to resume
//!   (`?last_event_id=` or `Last-Event-ID`) but missed events are no
//!   longer available — reload state;
//! - `{"type":"event","id":"…","plugin":"…","kind":"…","data":…}`.
//!
//! The client sends nothing but control frames (ping, pong, close); a
//! data frame closes the stream with 1003, an oversized or malformed
//! frame with 1009/1002. The stream closes with 1013 when the client falls
//! behind (it may resume), 4001 when the session ends (expiry, sign-out,
//! revocation: re-checked every 30 s), 1001 when the server shuts down.

use std::net::SocketAddr;

use futures_util::{SinkExt as _, StreamExt as _};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::Gateway;
use super::reply::{HttpResponse, json_response};
use crate::error::ApiError;
use crate::identity::AuthError;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `POST /api/v1/auth/stream-ticket`: a single-use, 30-second ticket for
/// opening the caller's event stream.
pub fn ticket_route(gw: &Gateway, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    if req.method() != Method::POST {
        return Err(ApiError::new(
            405,
            "method_not_allowed",
            "use POST /api/v1/auth/stream-ticket",
        ));
    }
    let caller = super::reply::caller(&gw.rt, req)?;
    if caller.tenant().is_none() {
        return Err(no_stream_for_system());
    }
    // The stream would refuse it: refuse the ticket the same way.
    if let Some(r) = caller.restriction {
        return Err(AuthError::Restricted(r).into());
    }
    let token = super::reply::bearer(req).ok_or(AuthError::Unauthenticated)?;
    let ticket = gw.issue_ticket(&token)?;
    Ok(json_response(
        200,
        &json!({ "ticket": ticket, "expires_in": super::TICKET_TTL.as_secs() }),
    ))
}

fn no_stream_for_system() -> ApiError {
    ApiError::new(
        403,
        "forbidden",
        "event streams belong to tenant users and guests",
    )
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name)?.to_str().ok()
}

/// `GET /api/v1/events`.
pub async fn events_route(
    gw: &Gateway,
    mut req: Request<Incoming>,
    _peer: SocketAddr,
) -> Result<HttpResponse, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::new(
            405,
            "method_not_allowed",
            "the event stream is GET /api/v1/events with a WebSocket upgrade",
        ));
    }
    // Authenticate first: an anonymous client learns nothing else.
    let token = match query_param(&req, "ticket") {
        Some(ticket) => gw.redeem_ticket(&ticket).ok_or_else(|| {
            ApiError::new(
                401,
                "unauthenticated",
                "the stream ticket is unknown, used or expired; get a new one",
            )
        })?,
        None => super::reply::bearer(&req).ok_or(AuthError::Unauthenticated)?,
    };
    let caller = gw.rt.identity().authenticate(&token)?;
    if caller.via == "oidc" {
        return Err(AuthError::Unauthenticated.into());
    }
    if let Some(r) = caller.restriction {
        return Err(AuthError::Restricted(r).into());
    }
    let Some(tenant) = caller.tenant().map(str::to_string) else {
        return Err(no_stream_for_system());
    };
    let upgrade_ok = header(&req, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && header(&req, "connection").is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !upgrade_ok || req.version() != hyper::Version::HTTP_11 {
        return Err(ApiError::new(
            426,
            "upgrade_required",
            "the event stream is a WebSocket: send an HTTP/1.1 Upgrade: websocket request",
        ));
    }
    if header(&req, "sec-websocket-version") != Some("13") {
        let mut resp = super::reply::error_response(&ApiError::new(
            426,
            "upgrade_required",
            "only WebSocket version 13 is supported",
        ));
        resp.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return Ok(resp);
    }
    let key = header(&req, "sec-websocket-key")
        .filter(|k| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|b| b.len() == 16)
        })
        .ok_or_else(|| {
            ApiError::new(
                400,
                "bad_request",
                "Sec-WebSocket-Key must be 16 bytes in base64",
            )
        })?
        .to_string();
    let last_id = match query_param(&req, "last_event_id")
        .or_else(|| header(&req, "last-event-id").map(str::to_string))
    {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::new(
                400,
                "bad_request",
                "last_event_id must be an event id as received",
            )
        })?),
    };
    let hub = gw.rt.events().clone();
    // Before subscribing, so a shutdown in between is not missed.
    let shutdown = hub.shutdown_signal();
    // The stream keeps its connection's place in the server's limits.
    let slot = req.extensions_mut().remove::<super::OnConnection>();
    let user = caller.user.clone();
    let sub = hub
        .subscribe(&tenant, &user, last_id)
        .map_err(|e| match e {
            crate::events::SubscribeError::TooManyStreams(n) => ApiError::new(
                429,
                "too_many_streams",
                format!("at most {n} event streams per user are open at once"),
            ),
        })?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let rt = gw.rt.clone();
    let max_frame = hub.config().max_client_frame;
    tokio::spawn(async move {
        let _slot = slot;
        let stream_id = sub.id;
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut config = WebSocketConfig::default();
                config.max_message_size = Some(max_frame);
                config.max_frame_size = Some(max_frame);
                // Clients send only small frames (pings, closes): a read
                // buffer of one such frame, not tungstenite's 128 KiB per
                // stream (an idle stream's memory, `docs/benchmarks.md`).
                config.read_buffer_size = max_frame.clamp(1024, 16 << 10);
                let ws = WebSocketStream::from_raw_socket(
                    hyper_util::rt::TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                run_stream(ws, rt.clone(), token, sub, shutdown).await;
            }
            Err(e) => tracing::debug!(error = %e, "event stream upgrade failed"),
        }
        rt.events().unsubscribe(&tenant, &user, stream_id);
    });
    let accept = {
        use base64::Engine as _;
        use sha1::Digest as _;
        let mut h = sha1::Sha1::new();
        h.update(key.as_bytes());
        h.update(WS_GUID.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(h.finalize())
    };
    let mut resp = Response::new(http_body_util::Full::new(hyper::body::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::UPGRADE,
        HeaderValue::from_static("websocket"),
    );
    h.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).map_err(|_| ApiError::new(500, "internal", "accept key"))?,
    );
    Ok(resp)
}

/// Time a client has to take one frame before it counts as gone.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends one frame; false when the client is gone or does not read.
async fn send<S>(ws: &mut WebSocketStream<S>, msg: Message) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(msg)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            crate::metrics::SLOW_CONSUMERS.inc();
            false
        }
    }
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_string().into(),
    }))
}

/// Pumps one stream until it ends.
async fn run_stream<S>(
    mut ws: WebSocketStream<S>,
    rt: crate::runtime::Runtime,
    token: String,
    mut sub: crate::events::Subscription,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let hello = json!({ "type": "ready", "resumed": !sub.gap && !sub.replay.is_empty() });
    if !send(&mut ws, Message::text(hello.to_string())).await {
        return;
    }
    if sub.gap && !send(&mut ws, Message::text(r#"{"type":"reset"}"#)).await {
        return;
    }
    for event in std::mem::take(&mut sub.replay) {
        if !send(&mut ws, Message::text(event.frame.clone())).await {
            return;
        }
    }
    let mut recheck = tokio::time::interval(rt.events().recheck_every());
    recheck.tick().await;
    let reason = loop {
        tokio::select! {
            event = sub.rx.recv() => match event {
                Some(e) => {
                    if !send(&mut ws, Message::text(e.frame.clone())).await {
                        return;
                    }
                }
                None => break close(CloseCode::Again, "slow consumer: reconnect with last_event_id"),
            },
            incoming = ws.next() => match incoming {
                None => return,
                Some(Ok(Message::Close(_))) => {
                    // tungstenite answers the close itself.
                    let _ = ws.flush().await;
                    return;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    // Pongs to pings are queued by tungstenite; flush them.
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    break close(CloseCode::Unsupported, "this stream only sends; clients send control frames only");
                }
                Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                    break close(CloseCode::Size, "frame too large");
                }
                Some(Err(_)) => break close(CloseCode::Protocol, "malformed frame"),
            },
            _ = recheck.tick() => {
                if rt.identity().authenticate(&token).is_err() {
                    break close(CloseCode::Library(4001), "session ended: sign in again");
                }
            }
            _ = async { shutdown.wait_for(|stopping| *stopping).await.is_ok() } => break close(CloseCode::Away, "server shutting down"),
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = ws.send(reason).await;
        let _ = ws.close(None).await;
    })
    .await;
}
