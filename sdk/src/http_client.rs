//! Outbound HTTP to the hosts this plugin's signed manifest lists in
//! `outbound-hosts` (`name`, `name:port` or `name:*`), once the tenant
//! granted `http-client`. HTTPS only (plain HTTP only to a loopback target
//! the operator allowed); the host checks every resolved address, caps the
//! time (`timeout_ms`, the operator's maximum and the call's deadline) and
//! the response size. `Host`, `Content-Length`, `Connection` and similar
//! framing headers are the host's.

use crate::bindings::switchboard::host::http_client as raw;
use crate::{Error, Method};

pub use raw::Incoming as HttpResponse;

/// Sends a request and returns the whole answer.
pub fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u32,
) -> Result<HttpResponse, Error> {
    raw::send(&raw::Outgoing {
        method,
        url: url.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_vec(),
        timeout_ms,
    })
}

/// `GET url`.
pub fn get(url: &str) -> Result<HttpResponse, Error> {
    send(Method::Get, url, &[], &[], 0)
}
