//! `http-client`: outbound HTTP for plugins (SPEC N2), only to hosts the
//! plugin's signed manifest lists (`outbound-hosts`) and only when the
//! tenant granted the capability. Every resolved address is checked again
//! at connect time: loopback, private, link-local, CGNAT and cloud
//! metadata addresses are refused unless the operator allowed them
//! (`[http_client] allow_loopback`, `allow_private`). HTTPS is required
//! (verified against Mozilla's roots plus the operator's CA file); plain
//! HTTP only to an allowed loopback address. Each request has a timeout
//! (the plugin's, capped by the operator's and by the call's deadline) and
//! a response size cap.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
use crate::call::CallCtx;
use crate::outbound::{Outbound, Policy};

/// Operator settings (`[http_client]` in the server config).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpClientConfig {
    /// Allow targets on this machine's loopback interface (tests, sidecars).
    pub allow_loopback: bool,
    /// Allow private and link-local targets (an intranet webhook).
    pub allow_private: bool,
    /// Extra trusted CA certificates (PEM) besides Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// Largest response body accepted, bytes.
    pub max_response_bytes: usize,
    /// Longest a request may take, ms (plugins may ask for less).
    pub max_timeout_ms: u64,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        HttpClientConfig {
            allow_loopback: false,
            allow_private: false,
            ca_file: None,
            max_response_bytes: 4 << 20,
            max_timeout_ms: 10_000,
            max_request_bytes: 1 << 20,
        }
    }
}

impl HttpClientConfig {
    /// The outbound client these settings describe.
    pub fn client(&self) -> Result<Outbound, String> {
        Outbound::with_policy(
            self.ca_file.as_deref(),
            Policy {
                allow_loopback: self.allow_loopback,
                allow_private: self.allow_private,
                loopback_setting: "[http_client] allow_loopback",
            },
        )
        .map_err(|e| e.0)
    }
}

/// One outgoing request.
pub struct Outgoing {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

/// The answer.
pub struct Incoming {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Request headers a plugin may not set: the host owns framing and
/// connection management.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
];

/// Whether `url`'s host (and port) is in the manifest's allow-list.
/// Entries are `name` (the scheme's default port), `name:port` or
/// `name:*` (any port); names compare case-insensitively and exactly (no
/// wildcard names, no suffix matches).
pub fn allowed_by_manifest(allow: &[String], url: &str) -> Result<(), CapError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| CapError::InvalidArgument(format!("{url:?} is not an absolute URL")))?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ => {
            return Err(CapError::InvalidArgument(format!(
                "{url:?}: only https:// URLs (http:// to an allowed loopback target)"
            )));
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| CapError::InvalidArgument(format!("{url:?} has no host")))?
        .to_ascii_lowercase();
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(CapError::InvalidArgument(
            "credentials in URLs are not allowed; send an Authorization header".into(),
        ));
    }
    let port = uri.port_u16().unwrap_or(default_port);
    let ok = allow.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        match entry.rsplit_once(':') {
            Some((name, "*")) => name == host,
            Some((name, p)) => name == host && p.parse::<u16>().ok() == Some(port),
            None => entry == host && port == default_port,
        }
    });
    if ok {
        Ok(())
    } else {
        Err(CapError::Denied(format!(
            "{host}:{port} is not among the hosts this plugin's manifest allows"
        )))
    }
}

/// The capability's host-wide state: the operator's settings and the
/// client built from them.
pub struct State {
    pub(crate) config: HttpClientConfig,
    pub(crate) client: Arc<Outbound>,
}

impl State {
    /// The state `config` describes.
    pub fn new(config: HttpClientConfig) -> Result<State, String> {
        let client = Arc::new(config.client()?);
        Ok(State { config, client })
    }
}

/// Sends `req` for the calling plugin.
pub async fn send(ctx: &mut CallCtx, state: &State, req: Outgoing) -> Result<Incoming, CapError> {
    ctx.charge(req.url.len() + req.body.len())?;
    let config = &state.config;
    if req.body.len() > config.max_request_bytes {
        return Err(CapError::TooLarge(format!(
            "request body over {} bytes",
            config.max_request_bytes
        )));
    }
    allowed_by_manifest(&ctx.plugin.plugin.manifest.outbound_hosts, &req.url)?;
    let mut headers = Vec::with_capacity(req.headers.len());
    for (k, v) in &req.headers {
        ctx.charge(k.len() + v.len())?;
        let lower = k.to_ascii_lowercase();
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
            return Err(CapError::InvalidArgument(format!(
                "header {k:?} is set by the host"
            )));
        }
        if hyper::header::HeaderName::from_bytes(k.as_bytes()).is_err()
            || hyper::header::HeaderValue::from_str(v).is_err()
        {
            return Err(CapError::InvalidArgument(format!("malformed header {k:?}")));
        }
        headers.push((lower, v.clone()));
    }
    let left = ctx.deadline.saturating_duration_since(Instant::now());
    let mut timeout = Duration::from_millis(config.max_timeout_ms);
    if req.timeout_ms > 0 {
        timeout = timeout.min(Duration::from_millis(req.timeout_ms.into()));
    }
    // Leave the plugin a little time to use the answer.
    timeout = timeout.min(left.saturating_sub(Duration::from_millis(50)));
    if timeout.is_zero() {
        return Err(CapError::Timeout);
    }
    let client = state.client.clone();
    let tenant = ctx.tenant_id().to_string();
    let plugin = ctx.plugin_name().to_string();
    let started = Instant::now();
    // Waiting on the network is not using the CPU: give the turn back.
    let cpu = ctx.cpu.clone();
    cpu.release();
    let result = client
        .request(
            req.method,
            &req.url,
            &headers,
            req.body,
            timeout,
            config.max_response_bytes,
        )
        .await;
    cpu.take().await;
    tracing::debug!(%tenant, %plugin, url = %req.url, elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "outbound request");
    match result {
        Ok(r) => {
            ctx.charge(r.body.len())?;
            Ok(Incoming {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
        }
        Err(crate::outbound::RequestError::Timeout) => Err(CapError::Timeout),
        Err(crate::outbound::RequestError::TooLarge(m)) => Err(CapError::TooLarge(m)),
        Err(crate::outbound::RequestError::Denied(m)) => Err(CapError::Denied(m)),
        Err(crate::outbound::RequestError::Failed(m)) => Err(CapError::Internal(m)),
    }
}

/// Links the `http-client` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::http_client::add_to_linker::<T, ViewOf<State>>(linker, |t| {
        let (call, caps) = t.parts();
        View {
            call,
            state: &caps.http_client,
        }
    })
}

impl wit::http_client::Host for View<'_, State> {
    async fn send(
        &mut self,
        request: wit::http_client::Outgoing,
    ) -> WitResult<wit::http_client::Incoming> {
        let method = crate::call::types::Method::from(request.method).as_str();
        let outgoing = Outgoing {
            method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            timeout_ms: request.timeout_ms,
        };
        wrap(
            send(self.call, self.state, outgoing)
                .await
                .map(|r| wit::http_client::Incoming {
                    status: r.status,
                    headers: r.headers,
                    body: r.body,
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_allow_list_matches_exact_hosts_and_ports() {
        let allow = vec![
            "api.example.com".to_string(),
            "hooks.example.org:8443".into(),
            "localhost:*".into(),
        ];
        assert!(allowed_by_manifest(&allow, "https://localhost:4431/x").is_ok());
        assert!(allowed_by_manifest(&allow, "https://127.0.0.1:4431/x").is_err());
        assert!(allowed_by_manifest(&allow, "https://api.example.com/v1").is_ok());
        assert!(allowed_by_manifest(&allow, "https://API.example.com/v1").is_ok());
        assert!(allowed_by_manifest(&allow, "https://hooks.example.org:8443/x").is_ok());
        for bad in [
            "https://api.example.com:444/",
            "https://evil.api.example.com/",
            "https://api.example.com.evil.net/",
            "https://hooks.example.org/x",
            "https://user:pw@api.example.com/",
            "ftp://api.example.com/",
            "/relative",
        ] {
            assert!(allowed_by_manifest(&allow, bad).is_err(), "{bad}");
        }
    }
}
