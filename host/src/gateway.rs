//! The network gateway (SPEC N1–N3, D1): the one front door of the server.
//! TLS only (1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN); an optional plain
//! HTTP port that only redirects. Every request passes the same steps:
//!
//! 1. the source address's rate limit (not `/healthz`);
//! 2. routing: plugin routes `/api/v1/t/{tenant}/p/{plugin}/…`, the event
//!    stream `/api/v1/events`, the host's own API (`/api/v1/auth`,
//!    `/api/v1/admin`, `/oidc`), `/healthz`, `/metrics`, `/status`;
//! 3. for plugin routes: the tenant and its enabled plugin, then either a
//!    public route of the plugin's signed manifest (anonymous principal)
//!    or a session of that tenant (principal from the session), the
//!    tenant's rate limit, the body (size cap, read timeout), the call;
//! 4. one error shape, `{"code": …, "message": …}`, with stable codes;
//!    HSTS and `nosniff` on every answer; latency and counts in `/metrics`.

pub mod api;
pub mod limits;
pub mod oidc;
pub mod reply;
pub mod status;
pub mod tls;
pub mod ws;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use self::reply::{HttpResponse, Peer, error_response, json_response};
use crate::call::types::{Kind, Method, Principal, Request as PluginRequest, Role};
use crate::error::ApiError;
use crate::identity::{AuthError, Caller};
use crate::runtime::Runtime;
use crate::support::encoding::{constant_time_eq, sha256_hex};
use crate::support::sync::Recover as _;
use limits::RateLimiter;

/// Gateway settings (`[gateway]` in the server config).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Largest request body of a plugin route, bytes.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
    /// Time allowed for a request head to arrive (also the idle time of a
    /// kept-alive HTTP/1.1 connection), seconds.
    pub header_timeout_s: u64,
    /// Time allowed for a request body to arrive, seconds.
    pub body_timeout_s: u64,
    /// Time allowed for a TLS handshake, seconds.
    pub handshake_timeout_s: u64,
    /// Connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Connections one source address (IPv6: /64) may hold open, event
    /// streams included.
    pub max_connections_per_address: usize,
    /// Requests per second one source address (IPv6: /64) may make.
    pub per_address_rps: u32,
    /// Burst above that rate.
    pub per_address_burst: u32,
    /// `Strict-Transport-Security` max-age, seconds (0: no header).
    pub hsts_max_age_s: u64,
    /// A plain-HTTP address that only redirects to HTTPS (e.g. `0.0.0.0:80`).
    pub redirect_listen: Option<SocketAddr>,
    /// Bearer token for `/metrics` from other machines (loopback always may).
    pub metrics_token: Option<String>,
    /// HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Time given to in-flight requests on shutdown, seconds.
    pub drain_timeout_s: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 8 << 20,
            max_header_bytes: 16 << 10,
            header_timeout_s: 10,
            body_timeout_s: 30,
            handshake_timeout_s: 10,
            max_connections: 10_000,
            max_connections_per_address: 256,
            per_address_rps: 100,
            per_address_burst: 200,
            hsts_max_age_s: 31_536_000,
            redirect_listen: None,
            metrics_token: None,
            max_streams_per_connection: 100,
            drain_timeout_s: 30,
        }
    }
}

/// Headers a client may not pass to a plugin: credentials stay with the
/// host, `x-switchboard-*` is the host's to set, hop-by-hop headers are
/// the connection's.
fn hidden_from_plugins(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "cookie"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "proxy-authorization"
    ) || name.starts_with("x-switchboard-")
}

/// Headers a plugin may not set on its answer: framing and connection
/// headers are the server's, HSTS is the operator's, and cookies, service
/// workers and site-data clearing on the shared origin would reach other
/// plugins and tenants.
fn hidden_from_clients(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "content-length"
            | "strict-transport-security"
            | "set-cookie"
            | "alt-svc"
            | "service-worker-allowed"
            | "clear-site-data"
    )
}

/// A connection's place in the server's limits (total and per address).
/// Requests carry it so an upgraded event stream keeps holding it after
/// hyper lets go of the connection.
pub struct ConnectionSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    counts: std::sync::Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl ConnectionSlot {
    /// Takes a slot for `peer`, or `None` when the server or the address
    /// is at its limit.
    pub fn take(
        total: &std::sync::Arc<tokio::sync::Semaphore>,
        counts: &std::sync::Arc<Mutex<HashMap<IpAddr, usize>>>,
        peer: IpAddr,
        per_address: usize,
    ) -> Option<ConnectionSlot> {
        let key = limits::address_key(peer);
        let permit = total.clone().try_acquire_owned().ok()?;
        let mut map = counts.lock().recover();
        let n = map.entry(key).or_default();
        if *n >= per_address.max(1) {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            _permit: permit,
            counts: counts.clone(),
            key,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().recover();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The slot of the connection a request came on (a request extension).
#[derive(Clone)]
pub struct OnConnection(pub std::sync::Arc<ConnectionSlot>);

/// The gateway's state, shared by every connection.
pub struct Gateway {
    pub(crate) rt: Runtime,
    pub(crate) config: GatewayConfig,
    by_address: RateLimiter<IpAddr>,
    by_tenant: RateLimiter<String>,
    pub(crate) tickets: Mutex<HashMap<String, (String, Instant)>>,
    pub(crate) started: Instant,
    pub(crate) fingerprint: String,
}

/// Lifetime of a stream ticket.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Tickets outstanding at once.
const MAX_TICKETS: usize = 100_000;
/// Unused tickets one session may hold.
const MAX_TICKETS_PER_SESSION: usize = 8;

impl Gateway {
    pub fn new(rt: Runtime, config: GatewayConfig, fingerprint: String) -> Gateway {
        Gateway {
            rt,
            config,
            by_address: RateLimiter::default(),
            by_tenant: RateLimiter::default(),
            tickets: Mutex::new(HashMap::new()),
            started: Instant::now(),
            fingerprint,
        }
    }

    /// Answers one request.
    pub async fn respond(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let class = route_class(&path);
        let mut resp = match self.dispatch(req, peer, class).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        let h = resp.headers_mut();
        if self.config.hsts_max_age_s > 0
            && let Ok(v) = HeaderValue::from_str(&format!("max-age={}", self.config.hsts_max_age_s))
        {
            h.insert(hyper::header::STRICT_TRANSPORT_SECURITY, v);
        }
        h.entry(hyper::header::X_CONTENT_TYPE_OPTIONS)
            .or_insert(HeaderValue::from_static("nosniff"));
        let status = resp.status().as_u16();
        let status_class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        crate::metrics::REQUESTS.inc(&[class, status_class]);
        crate::metrics::LATENCY.observe(class, started.elapsed().as_secs_f64());
        resp
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        class: &'static str,
    ) -> Result<HttpResponse, ApiError> {
        let path = req.uri().path().to_string();
        if path != "/healthz" {
            let key = limits::address_key(peer.ip());
            let rate = f64::from(self.config.per_address_rps);
            let burst = f64::from(self.config.per_address_burst.max(1));
            if let Err(wait) = self.by_address.check(&key, rate, burst, Instant::now()) {
                crate::metrics::RATE_LIMITED.inc(&["address", ""]);
                return Ok(rate_limited(
                    wait,
                    "this address is sending too many requests",
                ));
            }
        }
        if path == "/api/v1/auth/stream-ticket" {
            return ws::ticket_route(self, &req);
        }
        if path == "/api/v1/openapi.json" {
            return openapi(&req);
        }
        match class {
            "plugin" => self.plugin_route(req, peer).await,
            "events" => ws::events_route(self, req, peer).await,
            "health" => Ok(json_response(200, &json!({ "status": "ok" }))),
            "metrics" => self.metrics(&req, peer),
            "status" => status::route(self, &req).await,
            _ if path.starts_with("/oidc/") => {
                Ok(oidc::route(&self.rt, req, Peer::from(peer)).await)
            }
            _ => match api::route(&self.rt, req, Peer::from(peer)).await {
                Some(r) => Ok(r),
                None => Err(ApiError::new(
                    404,
                    "not_found",
                    format!("no route for {path}"),
                )),
            },
        }
    }

    fn metrics(&self, req: &Request<Incoming>, peer: SocketAddr) -> Result<HttpResponse, ApiError> {
        let allowed = peer.ip().is_loopback()
            || self.config.metrics_token.as_deref().is_some_and(|want| {
                reply::bearer_header(req.headers())
                    .is_some_and(|got| constant_time_eq(got.as_bytes(), want.as_bytes()))
            });
        if !allowed {
            return Err(ApiError::new(
                401,
                "unauthenticated",
                "metrics need the operator's metrics token ([gateway] metrics_token)",
            ));
        }
        let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::render())));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        Ok(resp)
    }

    /// `/api/v1/t/{tenant}/p/{plugin}/…`.
    async fn plugin_route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<HttpResponse, ApiError> {
        let (tenant, plugin, rest) = split_plugin_path(req.uri().path())?;
        let method: Method = req.method().as_str().parse().map_err(|_| {
            ApiError::new(
                405,
                "method_not_allowed",
                format!("method {} is not supported", req.method()),
            )
        })?;
        let route = self
            .rt
            .plugin_route(&tenant, &plugin, method.as_str(), &rest)
            .map_err(call_error)?;
        let mut host_headers: Vec<(String, String)> =
            vec![("x-switchboard-source-address".into(), peer.ip().to_string())];
        let principal = if route.public {
            Principal {
                tenant: tenant.clone(),
                user: None,
                role: Role::Anonymous,
                kind: Kind::Anonymous,
            }
        } else {
            let caller = reply::caller(&self.rt, &req)?;
            principal_for(&caller, &tenant, &plugin, &mut host_headers)?
        };
        // Anonymous callers of public routes share a quarter of the
        // tenant's rate, so they cannot use up what its users need.
        let (bucket, rate) = if route.public {
            (
                format!("{tenant}#public"),
                f64::from(route.requests_per_second) / 4.0,
            )
        } else {
            (tenant.clone(), f64::from(route.requests_per_second))
        };
        if let Err(wait) = self
            .by_tenant
            .check(&bucket, rate, rate * 2.0, Instant::now())
        {
            crate::metrics::RATE_LIMITED.inc(&["tenant", &tenant]);
            return Ok(rate_limited(
                wait,
                "this tenant is sending too many requests",
            ));
        }
        crate::metrics::TENANT_REQUESTS.inc(&[&tenant, &plugin]);
        let query = req.uri().query().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in req.headers() {
            let name = name.as_str();
            if hidden_from_plugins(name) {
                continue;
            }
            if let Ok(v) = value.to_str() {
                headers.push((name.to_string(), v.to_string()));
            }
        }
        headers.extend(host_headers);
        let body = self.read_body(req.into_body()).await?;
        let request_id = crate::support::encoding::request_id();
        let request = PluginRequest {
            method,
            path: rest,
            query,
            headers,
            body: body.to_vec(),
            principal: principal.clone(),
            caller_plugin: None,
            request_id: request_id.clone(),
        };
        let ctx = crate::audit::Context {
            source: Some(peer.ip().to_string()),
            request_id: Some(request_id.clone()),
            ..crate::audit::Context::system()
        };
        let result =
            crate::audit::with_context(ctx, self.rt.handle(&tenant, &plugin, request)).await;
        match result {
            Ok(r) => Ok(plugin_response(r, &request_id)),
            Err(e) => {
                let reason = match &e {
                    crate::runtime::CallError::Trap(_) => Some("trap"),
                    crate::runtime::CallError::Timeout(_) => Some("timeout"),
                    crate::runtime::CallError::Memory(_) => Some("memory"),
                    _ => None,
                };
                if let Some(reason) = reason {
                    crate::metrics::PLUGIN_FAILURES.inc(&[&tenant, &plugin, reason]);
                }
                Err(call_error(e))
            }
        }
    }

    /// Reads a plugin route's body within the size cap and read timeout.
    async fn read_body(&self, body: Incoming) -> Result<Bytes, ApiError> {
        let limit = self.config.max_body_bytes;
        let read = Limited::new(body, limit).collect();
        match tokio::time::timeout(Duration::from_secs(self.config.body_timeout_s), read).await {
            Err(_) => Err(ApiError::new(
                408,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    self.config.body_timeout_s
                ),
            )),
            Ok(Ok(c)) => Ok(c.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
                413,
                "body_too_large",
                format!("the request body exceeds {limit} bytes"),
            )),
            Ok(Err(e)) => Err(ApiError::new(
                400,
                "bad_request",
                format!("cannot read the body: {e}"),
            )),
        }
    }

    /// Issues a single-use ticket that opens one event stream for the
    /// session `token` within `TICKET_TTL` (browsers cannot set headers on
    /// a WebSocket, and a session token in a URL would end up in logs).
    pub(crate) fn issue_ticket(&self, token: &str) -> Result<String, ApiError> {
        let ticket = format!("st1.{}", crate::support::encoding::random_hex(24));
        let now = Instant::now();
        let mut tickets = self.tickets.lock().recover();
        let mut mine = 0;
        tickets.retain(|_, (t, at)| {
            let live = now.duration_since(*at) < TICKET_TTL;
            mine += usize::from(live && t.as_str() == token);
            live
        });
        if mine >= MAX_TICKETS_PER_SESSION {
            return Err(ApiError::new(
                429,
                "rate_limited",
                format!("at most {MAX_TICKETS_PER_SESSION} unused stream tickets per session"),
            ));
        }
        if tickets.len() >= MAX_TICKETS {
            return Err(ApiError::new(
                503,
                "busy",
                "too many stream tickets outstanding; retry shortly",
            ));
        }
        tickets.insert(sha256_hex(&ticket), (token.to_string(), now));
        Ok(ticket)
    }

    /// Redeems a ticket once: the session token it stands for.
    pub(crate) fn redeem_ticket(&self, ticket: &str) -> Option<String> {
        let mut tickets = self.tickets.lock().recover();
        let (token, at) = tickets.remove(&sha256_hex(ticket))?;
        (at.elapsed() < TICKET_TTL).then_some(token)
    }
}

/// The principal of `caller` for a call to `plugin` of `tenant`, or why
/// the caller may not make it.
fn principal_for(
    caller: &Caller,
    tenant: &str,
    plugin: &str,
    host_headers: &mut Vec<(String, String)>,
) -> Result<Principal, ApiError> {
    if caller.tenant() != Some(tenant) {
        // Operators and partners administer; they do not use tenants'
        // plugins (SPEC I8), and no session crosses tenants.
        return Err(ApiError::new(
            403,
            "wrong_tenant",
            "this session does not belong to this tenant",
        ));
    }
    if let Some(r) = caller.restriction {
        return Err(AuthError::Restricted(r).into());
    }
    let (role, kind) = match (&caller.guest, caller.role) {
        (Some(guest), _) => {
            if guest.plugin != plugin {
                return Err(ApiError::new(
                    403,
                    "guest_scope",
                    format!("this guest session is for the {} plugin only", guest.plugin),
                ));
            }
            host_headers.push((
                "x-switchboard-guest-resource".into(),
                guest.resource.clone(),
            ));
            host_headers.push((
                "x-switchboard-guest-name".into(),
                guest.display_name.clone(),
            ));
            (Role::Guest, Kind::Guest)
        }
        (None, crate::identity::Role::TenantAdmin) => (Role::TenantAdmin, Kind::Registered),
        (None, _) => (Role::User, Kind::Registered),
    };
    Ok(Principal {
        tenant: tenant.to_string(),
        user: Some(caller.user.clone()),
        role,
        kind,
    })
}

/// The route class of a path, for metrics.
/// The host API's description (`host/openapi.json`), public.
const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of the host's
/// own routes (each plugin serves its own).
fn openapi(req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    if req.method() != hyper::Method::GET {
        return Err(ApiError::new(
            405,
            "method_not_allowed",
            "use GET /api/v1/openapi.json",
        ));
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn route_class(path: &str) -> &'static str {
    if path.starts_with("/api/v1/t/") {
        "plugin"
    } else if path == "/api/v1/events" {
        "events"
    } else if path.starts_with("/api/v1/auth/") {
        "auth"
    } else if path.starts_with("/api/v1/admin/") {
        "admin"
    } else if path.starts_with("/oidc/") {
        "oidc"
    } else if path == "/healthz" {
        "health"
    } else if path == "/metrics" {
        "metrics"
    } else if path == "/status" {
        "status"
    } else {
        "other"
    }
}

/// Splits `/api/v1/t/{tenant}/p/{plugin}{rest}`.
fn split_plugin_path(path: &str) -> Result<(String, String, String), ApiError> {
    let bad = || {
        ApiError::new(
            404,
            "not_found",
            "plugin routes are /api/v1/t/{tenant}/p/{plugin}/...",
        )
    };
    let rest = path.strip_prefix("/api/v1/t/").ok_or_else(bad)?;
    let (tenant, rest) = rest.split_once('/').ok_or_else(bad)?;
    let rest = rest.strip_prefix("p/").ok_or_else(bad)?;
    let (plugin, rest) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !name_ok(tenant) || !name_ok(plugin) {
        return Err(bad());
    }
    Ok((tenant.to_string(), plugin.to_string(), rest.to_string()))
}

/// The API error of a failed call.
fn call_error(e: crate::runtime::CallError) -> ApiError {
    ApiError::new(e.http_status(), e.code(), e.to_string())
}

fn rate_limited(wait: Duration, message: &str) -> HttpResponse {
    let secs = limits::retry_after_secs(wait);
    let mut resp = error_response(&ApiError::new(
        429,
        "rate_limited",
        format!("{message}; retry in {secs} s"),
    ));
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// A plugin's answer as an HTTP response.
fn plugin_response(r: crate::call::types::Response, request_id: &str) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(r.body)));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    for (k, v) in r.headers {
        let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
            continue;
        };
        if hidden_from_clients(name.as_str()) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(&v) {
            h.append(name, value);
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    // Whatever a plugin serves (its own pages, a user's upload) runs with
    // no origin of its own: no scripts against the shared origin, no
    // cookies, no storage. Browsers apply every CSP header sent, so a
    // plugin's own policy can only narrow this one.
    h.append(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_paths_split_into_tenant_plugin_and_rest() {
        assert_eq!(
            split_plugin_path("/api/v1/t/acme/p/chat/rooms/1").unwrap(),
            ("acme".into(), "chat".into(), "/rooms/1".into())
        );
        assert_eq!(split_plugin_path("/api/v1/t/acme/p/chat").unwrap().2, "/");
        for bad in [
            "/api/v1/t/",
            "/api/v1/t/acme",
            "/api/v1/t/acme/x/chat",
            "/api/v1/t/ACME/p/chat",
            "/api/v1/t/acme/p//x",
            "/api/v1/t/ac%2fme/p/chat",
            "/api/v1/t/../p/chat",
        ] {
            assert!(split_plugin_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_and_host_headers_never_reach_plugins() {
        for h in [
            "authorization",
            "cookie",
            "x-switchboard-guest-resource",
            "connection",
        ] {
            assert!(hidden_from_plugins(h), "{h}");
        }
        assert!(!hidden_from_plugins("content-type"));
        for h in [
            "set-cookie",
            "strict-transport-security",
            "transfer-encoding",
            "service-worker-allowed",
            "clear-site-data",
        ] {
            assert!(hidden_from_clients(h), "{h}");
        }
        assert!(!hidden_from_clients("content-disposition"));
    }
}
