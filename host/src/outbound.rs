//! Outbound HTTP for host services (single sign-on talks to a tenant's
//! identity provider). One request per connection, bounded in time and
//! size. Until the host gains its TLS stack (the gateway issue), only
//! `http://` to loopback addresses is allowed — the policy sits here, in
//! front of the client, so nothing else can widen it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;

/// Largest response body read.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Time allowed for one request, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutboundError(pub String);

/// Where `url` points, if this host may call it: `http` to a loopback
/// address (`127.0.0.0/8`, `::1`, `localhost`).
pub fn target(url: &str) -> Result<(SocketAddr, String, String), OutboundError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| OutboundError(format!("{url:?} is not an absolute URL")))?;
    if uri.scheme_str() != Some("http") {
        return Err(OutboundError(format!(
            "{url:?}: only http:// to a loopback address is supported until the host's TLS client lands"
        )));
    }
    let host = uri.host().unwrap_or_default();
    let ip: IpAddr = match host {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| OutboundError(format!("{url:?}: the host must be a loopback address")))?,
    };
    if !ip.is_loopback() {
        return Err(OutboundError(format!(
            "{url:?}: the host must be a loopback address"
        )));
    }
    let addr = SocketAddr::new(ip, uri.port_u16().unwrap_or(80));
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    Ok((addr, host.to_string(), path))
}

/// Sends one request.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Reply, OutboundError> {
    let (addr, host, path) = target(url)?;
    tokio::time::timeout(TIMEOUT, async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| OutboundError(format!("cannot connect to {addr}: {e}")))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| OutboundError(format!("HTTP handshake with {addr} failed: {e}")))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "switchboard");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| OutboundError(format!("bad request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| OutboundError(format!("request to {addr} failed: {e}")))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| OutboundError(format!("reading the response from {addr} failed: {e}")))?
            .to_bytes()
            .to_vec();
        Ok(Reply { status, body })
    })
    .await
    .map_err(|_| OutboundError(format!("{url}: no answer within {} s", TIMEOUT.as_secs())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_is_allowed() {
        assert!(target("http://127.0.0.1:8080/x").is_ok());
        assert!(target("http://[::1]:8080/x").is_ok());
        assert!(target("http://localhost/x").is_ok());
        for bad in [
            "https://idp.example/",
            "http://10.0.0.1/",
            "http://idp.example/",
            "ftp://127.0.0.1/",
            "nonsense",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }
}
