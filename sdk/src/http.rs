//! HTTP-shaped helpers: response builders with Switchboard's one error
//! shape (`{"code": ..., "message": ...}`), request accessors, and a small
//! router for `Plugin::handle`.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Method, Request, Response, Role};

/// Largest request body `RequestExt::json` will parse.
pub const MAX_JSON_BODY_BYTES: usize = 1 << 20;

/// A failure to answer with: status, stable code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(400, code, message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", message)
    }

    /// The response carrying this error.
    pub fn into_response(self) -> Response {
        error(self.status, &self.code, &self.message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let (status, code, message) = match e {
            Error::InvalidArgument(m) => (400, "invalid_argument", m),
            Error::TooLarge(m) => (413, "too_large", m),
            Error::Denied(m) => (403, "denied", m),
            Error::NotFound(m) => (404, "not_found", m),
            Error::QuotaExceeded(m) => (507, "quota_exceeded", m),
            Error::Conflict => (409, "conflict", "a concurrent change won; retry".into()),
            Error::Timeout => (504, "timeout", "the host did not answer in time".into()),
            Error::Internal(m) => (500, "internal", m),
        };
        ApiError::new(status, code, message)
    }
}

/// A JSON response.
pub fn json<T: Serialize + ?Sized>(status: u16, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: bytes,
        },
        Err(e) => error(500, "internal", &format!("cannot encode the response: {e}")),
    }
}

/// A plain-text response.
pub fn text(status: u16, body: &str) -> Response {
    Response {
        status,
        headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
        body: body.as_bytes().to_vec(),
    }
}

/// An empty response.
pub fn empty(status: u16) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// The error shape every Switchboard API uses.
pub fn error(status: u16, code: &str, message: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "code": code, "message": message }),
    )
}

/// Accessors on a request.
pub trait RequestExt {
    /// The body parsed as JSON, or a 400 `invalid_json` saying why.
    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError>;
    /// The calling user's id, or 401 `unauthenticated`.
    fn user(&self) -> Result<&str, ApiError>;
    /// The first query parameter `name`, percent-decoded.
    fn query_param(&self, name: &str) -> Option<String>;
    /// The first header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str>;
    /// Whether the caller is a tenant admin (or the host itself).
    fn is_admin(&self) -> bool;
}

impl RequestExt for Request {
    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.len() > MAX_JSON_BODY_BYTES {
            return Err(ApiError::new(
                413,
                "body_too_large",
                format!("request bodies are limited to {MAX_JSON_BODY_BYTES} bytes"),
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not valid JSON for this route: {e}"),
            )
        })
    }

    fn user(&self) -> Result<&str, ApiError> {
        self.principal
            .user
            .as_deref()
            .ok_or_else(|| ApiError::new(401, "unauthenticated", "sign in to use this route"))
    }

    fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn is_admin(&self) -> bool {
        matches!(self.principal.role, Role::TenantAdmin | Role::System)
    }
}

/// Decodes `%XX` escapes and `+` (as space); invalid escapes stay as they
/// are and invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks an id as [`crate::crypto::random_id`] makes them (32 lower-case
/// hex digits); `what` names it in the 400 `invalid_id` answer.
pub fn check_id(id: &str, what: &str) -> Result<(), ApiError> {
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::bad_request(
            "invalid_id",
            format!("a {what} id is 32 lower-case hex digits"),
        ));
    }
    Ok(())
}

/// Checks a user or guest id as the host issues them (1-64 of
/// `[A-Za-z0-9._-]`, safe in keys and event groups); 400 `invalid_user`.
pub fn check_user_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(ApiError::bad_request(
            "invalid_user",
            format!(
                "{:?} is not a user id",
                id.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// What a `Range` header asks of a body of known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// The whole body: no header, or one that is malformed or asks for
    /// several ranges (RFC 9110 lets a server ignore those).
    Whole,
    /// Bytes `[start, end)`.
    Part(u64, u64),
    /// A well-formed range outside the body: answer 416.
    Unsatisfiable,
}

/// Reads one `bytes=` range (`a-b`, `a-`, `-n`) against `size` bytes.
pub fn byte_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Whole;
    };
    let Some((a, b)) = spec.split_once('-') else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let num = |x: &str| x.trim().parse::<u64>().ok();
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => match num(n) {
            Some(n) if n > 0 => (size.saturating_sub(n), size),
            Some(_) => return ByteRange::Unsatisfiable,
            None => return ByteRange::Whole,
        },
        (s, "") => match num(s) {
            Some(s) => (s, size),
            None => return ByteRange::Whole,
        },
        (s, e) => match (num(s), num(e)) {
            (Some(s), Some(e)) if s <= e => (s, e.saturating_add(1).min(size)),
            _ => return ByteRange::Whole,
        },
    };
    if start < end {
        ByteRange::Part(start, end)
    } else {
        ByteRange::Unsatisfiable
    }
}

/// Path parameters captured by a route (`:name` segments, `*rest`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// The value captured for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A route handler.
pub type Handler = fn(&Request, &Params) -> Result<Response, ApiError>;

/// Routes requests by method and path pattern (`/items/:id`,
/// `/files/*path`). Unknown paths answer 404 `not_found`; known paths with
/// another method answer 405 `method_not_allowed`. Patterns are matched in
/// place, without allocating, because a router is built on every call (each
/// call runs in a fresh instance).
#[derive(Default)]
pub struct Router {
    routes: Vec<(Method, &'static str, Handler)>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Router {
        Router {
            routes: Vec::with_capacity(16),
        }
    }

    /// Adds a route.
    pub fn route(mut self, method: Method, pattern: &'static str, handler: Handler) -> Router {
        self.routes.push((method, pattern, handler));
        self
    }

    /// Adds a GET route.
    pub fn get(self, pattern: &'static str, handler: Handler) -> Router {
        self.route(Method::Get, pattern, handler)
    }

    /// Adds a POST route.
    pub fn post(self, pattern: &'static str, handler: Handler) -> Router {
        self.route(Method::Post, pattern, handler)
    }

    /// Adds a PUT route.
    pub fn put(self, pattern: &'static str, handler: Handler) -> Router {
        self.route(Method::Put, pattern, handler)
    }

    /// Adds a PATCH route.
    pub fn patch(self, pattern: &'static str, handler: Handler) -> Router {
        self.route(Method::Patch, pattern, handler)
    }

    /// Adds a DELETE route.
    pub fn delete(self, pattern: &'static str, handler: Handler) -> Router {
        self.route(Method::Delete, pattern, handler)
    }

    /// Dispatches `request` to its route.
    pub fn handle(&self, request: &Request) -> Response {
        let mut path_matched = false;
        for (method, pattern, handler) in &self.routes {
            let Some(params) = match_path(pattern, &request.path) else {
                continue;
            };
            path_matched = true;
            if *method != request.method {
                continue;
            }
            return handler(request, &params).unwrap_or_else(ApiError::into_response);
        }
        if path_matched {
            error(
                405,
                "method_not_allowed",
                "this path does not accept that method",
            )
        } else {
            error(404, "not_found", &format!("no route for {}", request.path))
        }
    }
}

fn match_path(pattern: &str, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/').filter(|s| !s.is_empty());
    let mut rest = path.trim_start_matches('/');
    for seg in pat.by_ref() {
        if let Some(name) = seg.strip_prefix('*') {
            params.push((name.to_string(), rest.trim_end_matches('/').to_string()));
            return Some(Params(params));
        }
        let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if head.is_empty() {
            return None;
        }
        match seg.strip_prefix(':') {
            Some(name) => params.push((name.to_string(), percent_decode(head))),
            None if seg == head => {}
            None => return None,
        }
        rest = tail.trim_start_matches('/');
    }
    rest.is_empty().then_some(Params(params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Principal, PrincipalKind};

    fn req(method: Method, path: &str) -> Request {
        Request {
            method,
            path: path.into(),
            query: "a=1&b=x%20y&c".into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: b"{\"n\":3}".to_vec(),
            principal: Principal {
                tenant: "t".into(),
                user: Some("u".into()),
                role: Role::User,
                kind: PrincipalKind::Registered,
            },
            caller_plugin: None,
            request_id: String::new(),
        }
    }

    fn echo(_: &Request, p: &Params) -> Result<Response, ApiError> {
        Ok(text(200, p.get("id").or(p.get("rest")).unwrap_or("-")))
    }

    #[test]
    fn routes_by_path_and_method() {
        let r = Router::new()
            .get("/items/:id", echo)
            .get("/files/*rest", echo);
        assert_eq!(r.handle(&req(Method::Get, "/items/a%2Fb")).body, b"a/b");
        assert_eq!(r.handle(&req(Method::Get, "/files/x/y")).body, b"x/y");
        assert_eq!(r.handle(&req(Method::Post, "/items/1")).status, 405);
        assert_eq!(r.handle(&req(Method::Get, "/items/1/extra")).status, 404);
        assert_eq!(r.handle(&req(Method::Get, "/nope")).status, 404);
    }

    #[test]
    fn byte_ranges() {
        use ByteRange::*;
        assert_eq!(byte_range(None, 10), Whole);
        assert_eq!(byte_range(Some("bytes=2-4"), 10), Part(2, 5));
        assert_eq!(byte_range(Some("bytes=7-"), 10), Part(7, 10));
        assert_eq!(byte_range(Some("bytes=-3"), 10), Part(7, 10));
        assert_eq!(byte_range(Some("bytes=5-100"), 10), Part(5, 10));
        assert_eq!(byte_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(byte_range(Some("bytes=-0"), 10), Unsatisfiable);
        for ignored in [
            "bytes=4-2",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=5",
        ] {
            assert_eq!(byte_range(Some(ignored), 10), Whole, "{ignored}");
        }
    }

    #[test]
    fn request_accessors() {
        let r = req(Method::Get, "/");
        assert_eq!(r.query_param("b").as_deref(), Some("x y"));
        assert_eq!(r.query_param("c").as_deref(), Some(""));
        assert_eq!(r.query_param("z"), None);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = r.json().unwrap();
        assert_eq!(v["n"], 3);
        assert_eq!(r.user().unwrap(), "u");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }
}
