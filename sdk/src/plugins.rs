//! Calls into other plugins of the same tenant. The callee must be listed
//! under `[dependencies]` in this plugin's `plugin.toml`; it runs inside
//! this request's transaction and sees this request's caller as its
//! principal (the host fills it in).
//!
//! [`call`] and [`call_with_headers`] hand back the callee's raw answer;
//! [`call_json`], [`call_ok`] and [`call_gone_ok`] are for the usual case
//! of a JSON API, and turn the callee's refusal into this plugin's
//! [`ApiError`].

use serde_json::Value;

use crate::bindings::switchboard::host::plugins as raw;
use crate::http::ApiError;
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

/// Calls `plugin` with a JSON body (none when `body` is `null`); its
/// answer's status and JSON (`null` when the answer is not JSON). A failed
/// host call (the callee is not enabled, say) is the error.
pub fn call_json(
    plugin: &str,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<(u16, Value), ApiError> {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = call(plugin, method, path, &body)?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Ok((r.status, v))
}

/// Like [`call_json`], but a refusal becomes this plugin's error: the
/// callee's 4xx code is passed on, a 5xx is a 502 `{plugin}_failed`.
pub fn call_ok(plugin: &str, method: Method, path: &str, body: &Value) -> Result<Value, ApiError> {
    let (status, v) = call_json(plugin, method, path, body)?;
    if status < 400 {
        return Ok(v);
    }
    Err(refusal(plugin, status, &v))
}

/// Like [`call_ok`] without a body, but "it is not there" counts as done
/// (deleting what is already gone, or what a disabled plugin no longer
/// holds): a 404 answer, or a 404 from the host because `plugin` is not
/// enabled, is `Ok`.
pub fn call_gone_ok(plugin: &str, method: Method, path: &str) -> Result<(), ApiError> {
    match call_json(plugin, method, path, &Value::Null) {
        Ok((status, _)) if status < 400 || status == 404 => Ok(()),
        Ok((status, v)) => Err(refusal(plugin, status, &v)),
        // The plugin is not enabled any more: it holds nothing to delete.
        Err(e) if e.status == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The error for a callee's refusal (`status` 400 or more, `v` its JSON):
/// its 4xx code passed on, or a 502 `{plugin}_failed` for a 5xx.
fn refusal(plugin: &str, status: u16, v: &Value) -> ApiError {
    let why = v["message"].as_str().unwrap_or("no reason given");
    if status < 500 {
        ApiError::new(
            status,
            v["code"].as_str().unwrap_or("refused"),
            format!("the {plugin} plugin refused: {why}"),
        )
    } else {
        ApiError::new(
            502,
            &format!("{plugin}_failed"),
            format!("the {plugin} plugin failed: {why}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn refusals_keep_the_callee_code_and_hide_its_failures() {
        let e = refusal("chat", 409, &json!({"code": "busy", "message": "later"}));
        assert_eq!(
            e,
            ApiError::new(409, "busy", "the chat plugin refused: later")
        );
        let e = refusal("chat", 403, &Value::Null);
        assert_eq!(
            e,
            ApiError::new(403, "refused", "the chat plugin refused: no reason given")
        );
        let e = refusal("recording", 503, &json!({"code": "x", "message": "down"}));
        assert_eq!(
            e,
            ApiError::new(502, "recording_failed", "the recording plugin failed: down")
        );
    }
}
