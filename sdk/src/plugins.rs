//! Calls into other plugins of the same tenant. The callee must be listed
//! under `[dependencies]` in this plugin's `plugin.toml`; it runs inside
//! this request's transaction and sees this request's caller as its
//! principal (the host fills it in).

use crate::bindings::switchboard::host::plugins as raw;
use crate::{Error, Method, Principal, PrincipalKind, Request, Response, Role};

/// Calls `plugin` with `method path` and `body`.
pub fn call(plugin: &str, method: Method, path: &str, body: &[u8]) -> Result<Response, Error> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let request = Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers: vec![("content-type".into(), "application/json".into())],
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
    // The callee may have written in this request's transaction.
    crate::tx::note(raw::call(plugin, &request))
}
