//! Calls into other plugins of the same tenant. The callee must be listed
//! under `[dependencies]` in this plugin's `plugin.toml`; it runs inside
//! this request's transaction and sees this request's caller as its
//! principal (the host fills it in).

use crate::bindings::switchboard::host::plugins as raw;
use crate::{Error, Method, Principal, PrincipalKind, Request, Response, Role};

/// Calls `plugin` with `method path` and `body`.
pub fn call(plugin: &str, method: Method, path: &str, body: &[u8]) -> Result<Response, Error> {
    call_with_headers(plugin, method, path, &[], body)
}

/// Like [`call`] with request headers (e.g. `range`, or a `content-type`
/// other than JSON). Host headers
/// (`x-switchboard-*`) are always the host's, whatever is passed here.
pub fn call_with_headers(
    plugin: &str,
    method: Method,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Response, Error> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut all = headers.to_vec();
    if !all
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        all.push(("content-type".into(), "application/json".into()));
    }
    let request = Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers: all,
        body: body.to_vec(),
        // Replaced by the host with the real caller.
        principal: Principal {
            tenant: String::new(),
            user: None,
            role: Role::Anonymous,
            kind: PrincipalKind::Anonymous,
        },
        caller_plugin: None,
        request_id: String::new(),
    };
    // The callee may have written in this request's transaction when it
    // accepted the call; a refusal (4xx or 5xx) from a callee built with
    // this SDK wrote nothing (its own `tx::finish` sees to that), and GET
    // and HEAD are safe methods (RFC 9110): what a callee writes while
    // answering one (an audit entry of a read) is meant to stand.
    let safe = matches!(method, Method::Get | Method::Head);
    let response = raw::call(plugin, &request)?;
    if response.status < 400 && !safe {
        crate::tx::note(Ok(()))?;
    }
    Ok(response)
}
