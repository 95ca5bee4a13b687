//! The runtime's own request, response and principal types. They do not
//! depend on any WIT version: each API-version adapter converts to and from
//! them, so the gateway and the tests speak one language whatever version a
//! plugin was built against (SPEC K8).

use serde::{Deserialize, Serialize};

/// What the caller is allowed to be (SPEC I1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Operator,
    Partner,
    TenantAdmin,
    User,
    Guest,
    Anonymous,
    /// The host itself: timers, init, migrate, events.
    System,
}

/// How the caller reached the system (SPEC M6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Registered,
    Guest,
    Pstn,
    Service,
    Anonymous,
}

/// The authenticated caller, as the host established it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub tenant: String,
    pub user: Option<String>,
    pub role: Role,
    pub kind: Kind,
}

impl Principal {
    /// A registered user of `tenant`.
    pub fn user(tenant: &str, user: &str) -> Principal {
        Principal {
            tenant: tenant.to_string(),
            user: Some(user.to_string()),
            role: Role::User,
            kind: Kind::Registered,
        }
    }

    /// The host acting for `tenant` (timers, lifecycle hooks).
    pub fn system(tenant: &str) -> Principal {
        Principal {
            tenant: tenant.to_string(),
            user: None,
            role: Role::System,
            kind: Kind::Service,
        }
    }
}

/// HTTP method of a plugin request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    /// The method's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            other => return Err(format!("unsupported HTTP method {other:?}")),
        })
    }
}

/// A request to a plugin's `handle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Path below the plugin's mount point, starting with `/`.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub principal: Principal,
    pub caller_plugin: Option<String>,
    pub request_id: String,
}

impl Request {
    /// A request with no query, headers or body.
    pub fn new(method: Method, path: &str, principal: Principal) -> Request {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path.to_string(), String::new()),
        };
        Request {
            method,
            path,
            query,
            headers: Vec::new(),
            body: Vec::new(),
            principal,
            caller_plugin: None,
            request_id: String::new(),
        }
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Bytes this request hands across the host/guest boundary.
    pub fn size_bytes(&self) -> usize {
        self.path.len()
            + self.query.len()
            + self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// A plugin's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as UTF-8 text (lossy), for tests and tools.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Size of the response across the boundary.
    pub fn size_bytes(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// An event delivered to a plugin's `on-event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub source: String,
    pub kind: String,
    pub data: Vec<u8>,
}

/// What the runtime knows about a plugin route before calling it.
pub struct RouteInfo {
    /// A public route of the manifest: no session needed.
    pub public: bool,
    pub requests_per_second: u32,
}

/// What a plugin was asked to do.
#[derive(Clone)]
pub enum Invocation {
    Handle(Request),
    Init,
    Migrate(String),
    Event(Event),
    Timer {
        id: String,
        name: String,
        payload: Vec<u8>,
    },
    /// API ≥ 0.2.0: the plugin's self-description.
    Describe,
    /// API ≥ 0.3.0: an event of one of the plugin's call legs.
    Call(super::legs::CallEvent),
}

/// What a plugin returned.
pub enum Outcome {
    Response(Response),
    Done,
    /// `describe`'s answer; `None` for API versions without it.
    Description(Option<String>),
}

/// Whether a header is one only the host sets.
pub(crate) fn is_host_header(name: &str) -> bool {
    name.len() > 14 && name[..14].eq_ignore_ascii_case("x-switchboard-")
}
