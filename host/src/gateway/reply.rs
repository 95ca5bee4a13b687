//! What every HTTP handler of the host answers with and reads from: JSON
//! responses and the one error shape (`{"code", "message"}`), bounded
//! body reading and strict JSON parsing, bearer tokens and cookies, and
//! the signed-in caller of a request. Shared by the gateway's routes, the
//! host API, the OpenID Connect pages and the event streams.

use std::net::{IpAddr, SocketAddr};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::identity::{AuthError, Caller};
use crate::runtime::Runtime;

/// Largest JSON body.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// A response with a JSON body.
pub type HttpResponse = Response<Full<Bytes>>;

/// What the router knows about the connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: IpAddr,
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Self {
        Peer { addr: a.ip() }
    }
}

/// A JSON response.
pub fn json_response(status: u16, body: &Value) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// A download (`text` of `content_type`, as the attachment `filename`:
/// never shown inline).
pub fn attachment_response(
    text: String,
    content_type: &'static str,
    filename: &str,
) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) =
        hyper::header::HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
    {
        h.insert(hyper::header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// The error shape of every API.
pub fn error_response(e: &ApiError) -> HttpResponse {
    let mut resp = json_response(e.status, &json!({ "code": e.code, "message": e.message }));
    if e.code == "unauthenticated" {
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

/// Reads a body of at most `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            413,
            "body_too_large",
            format!("the request body exceeds {limit} bytes"),
        )),
        Err(e) => Err(ApiError::new(
            400,
            "bad_request",
            format!("cannot read the body: {e}"),
        )),
    }
}

/// Parses a JSON body strictly.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::new(400, "bad_request", "a JSON body is required"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "bad_request", format!("malformed JSON body: {e}")))
}

/// The bearer token of a request (`Authorization: Bearer …`).
pub fn bearer(req: &Request<Incoming>) -> Option<String> {
    bearer_header(req.headers())
}

/// The bearer token in `headers`.
pub fn bearer_header(headers: &hyper::HeaderMap) -> Option<String> {
    let h = headers.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The value of cookie `name`, if sent.
pub fn cookie_value(req: &Request<Incoming>, name: &str) -> Option<String> {
    let header = req.headers().get(hyper::header::COOKIE)?.to_str().ok()?;
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Authenticates the request's bearer token.
pub fn caller(rt: &Runtime, req: &Request<Incoming>) -> Result<Caller, ApiError> {
    let token = bearer(req).ok_or(AuthError::Unauthenticated)?;
    let caller = rt.identity().authenticate(&token)?;
    // The OpenID Connect provider's browser session is not an API token.
    if caller.via == "oidc" {
        return Err(AuthError::Unauthenticated.into());
    }
    Ok(caller)
}
