//! Event-stream clients for the tests: real WebSockets over TLS to
//! `GET /api/v1/events`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::http::{Server, tls_connect};

/// A client's event stream.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens a stream with `Authorization: Bearer` (or a `?query`); an HTTP
/// refusal comes back as "status body".
pub async fn connect(s: &Server, token: Option<&str>, query: &str) -> Result<Ws, String> {
    connect_to(s.addr, token, query).await
}

/// `connect` to a server at `addr` (e.g. in another process).
pub async fn connect_to(addr: SocketAddr, token: Option<&str>, query: &str) -> Result<Ws, String> {
    let mut req = format!("wss://{addr}/api/v1/events{query}")
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let tls = tls_connect(addr).await;
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Err(format!(
                "{} {}",
                resp.status().as_u16(),
                String::from_utf8_lossy(&body)
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The next JSON frame within `wait`, or `None`.
pub async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// The next event frame of `kind` within `wait`, skipping others.
pub async fn next_of(ws: &mut Ws, kind: &str, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = next(ws, left).await?;
        if frame["kind"] == kind {
            return Some(frame);
        }
    }
}

/// The close code the server ended the stream with.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return Some(f.code.into()),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

/// A stream that said `ready`.
pub async fn ready(s: &Server, token: &str) -> Ws {
    ready_at(s.addr, token).await
}

/// `ready` on a server at `addr`.
pub async fn ready_at(addr: SocketAddr, token: &str) -> Ws {
    let mut ws = connect_to(addr, Some(token), "").await.unwrap();
    let hello = next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(hello["type"], "ready");
    ws
}
