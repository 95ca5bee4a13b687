//! `/status`: the state of each service and plugin, as HTML for browsers
//! and JSON for `Accept: application/json`. Anyone sees whether the
//! services are up; a signed-in operator also sees every installed plugin
//! and tenant count, a tenant's admin the plugins of their tenant (what
//! runs for whom is not public).

use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use serde_json::{Value, json};

use super::Gateway;
use super::reply::{HttpResponse, json_response};
use crate::error::ApiError;

/// The status document.
pub async fn route(gw: &Gateway, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let rt = &gw.rt;
    // The same checks as the API: no provider-only browser sessions, no
    // restricted sessions (welcome password, MFA enrolment pending).
    let caller = super::reply::caller(rt, req)
        .ok()
        .filter(|c| c.restriction.is_none());
    let store = match rt.data_store().probe() {
        Ok(()) => json!({ "name": "storage", "state": "up" }),
        Err(e) => {
            tracing::error!(error = %e, "status: the storage probe failed");
            json!({ "name": "storage", "state": "down", "detail": "see the server log" })
        }
    };
    let last_backup = rt.last_backup_times().map(|(last, _)| last);
    let services = vec![
        json!({ "name": "gateway", "state": "up",
                "detail": format!("TLS certificate {}", gw.fingerprint) }),
        store,
        json!({ "name": "events", "state": "up",
                "detail": format!("{} streams open",
                    crate::metrics::ACTIVE_STREAMS.load(std::sync::atomic::Ordering::Relaxed)) }),
        json!({ "name": "audit", "state": "up" }),
        json!({ "name": "backups",
                "state": if last_backup.is_some_and(|t| t > 0) { "up" } else { "none yet" },
                "last_ms": last_backup }),
    ];
    let overall = if services.iter().all(|s| s["state"] != "down") {
        "ok"
    } else {
        "degraded"
    };
    let mut doc = json!({
        "status": overall,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": gw.started.elapsed().as_secs(),
        "services": services,
    });
    match &caller {
        Some(c) if c.role == crate::identity::Role::Operator => {
            let plugins: Vec<Value> = rt
                .plugins()
                .into_iter()
                .map(|p| {
                    json!({ "name": p.name, "version": p.version.to_string(),
                            "state": if p.revoked { "revoked" } else { "installed" } })
                })
                .collect();
            doc["plugins"] = Value::Array(plugins);
            doc["tenants"] = json!(rt.tenants().len());
        }
        Some(c) if c.role == crate::identity::Role::TenantAdmin && c.guest.is_none() => {
            if let Some(t) = c.tenant()
                && let Some(record) = rt.tenants().into_iter().find(|r| r.id == t)
            {
                let revoked: std::collections::HashSet<(String, String)> = rt
                    .plugins()
                    .into_iter()
                    .filter(|p| p.revoked)
                    .map(|p| (p.name, p.version.to_string()))
                    .collect();
                let plugins: Vec<Value> = record
                    .plugins
                    .iter()
                    .map(|(name, e)| {
                        let v = e.version.to_string();
                        let state = if revoked.contains(&(name.clone(), v.clone())) {
                            "disabled: publisher revoked"
                        } else {
                            "enabled"
                        };
                        json!({ "name": name, "version": v, "state": state })
                    })
                    .collect();
                doc["tenant"] = json!(t);
                doc["plugins"] = Value::Array(plugins);
            }
        }
        _ => {}
    }
    let status = if overall == "ok" { 200 } else { 503 };
    let wants_json = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        return Ok(json_response(status, &doc));
    }
    let mut resp = Response::new(http_body_util::Full::new(Bytes::from(html(&doc))));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => String::new(),
        other => escape(&other.to_string()),
    }
}

/// A small self-contained page (no scripts, no external resources).
fn html(doc: &Value) -> String {
    let mut rows = String::new();
    for s in doc["services"].as_array().into_iter().flatten() {
        rows.push_str(&format!(
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            text(&s["name"]),
            if s["state"] == "down" { "down" } else { "up" },
            text(&s["state"]),
            text(&s["detail"]),
        ));
    }
    let mut plugins = String::new();
    if let Some(list) = doc["plugins"].as_array() {
        plugins.push_str(
            "<h2>Plugins</h2><table><tr><th>Plugin</th><th>Version</th><th>State</th></tr>",
        );
        for p in list {
            plugins.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                text(&p["name"]),
                text(&p["version"]),
                text(&p["state"]),
            ));
        }
        plugins.push_str("</table>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Switchboard status</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2em}}td,th{{padding:.3em 1em;text-align:left}}\
.up{{color:#070}}.down{{color:#b00}}</style></head><body><h1>Switchboard: {}</h1>\
<p>Version {} · up {} s</p><h2>Services</h2><table><tr><th>Service</th><th>State</th><th>Detail</th></tr>{}</table>{}</body></html>",
        text(&doc["status"]),
        text(&doc["version"]),
        text(&doc["uptime_s"]),
        rows,
        plugins
    )
}
