//! The HTTP API of the host itself: sign-in and self-service under
//! `/api/v1/auth/…`, administration under `/api/v1/admin/…` (one route per
//! `admin::Op`), behind the gateway (`crate::gateway`). Every answer is JSON; every error has the
//! shape `{"code": …, "message": …}` with a stable code.
//!
//! Bodies are limited to 64 KiB (plugin packages to 64 MiB), parsed
//! strictly (unknown fields refused), and every request runs inside an
//! audit context naming the caller and source address, so whatever it
//! changes is attributed in the trail.

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde::Deserialize;
use serde_json::json;

use super::reply::{
    HttpResponse, MAX_BODY_BYTES, Peer, attachment_response, caller, cookie_value, error_response,
    json_response, parse, read_body,
};
use crate::admin::{self, Actor, Op, require_tenant};
use crate::audit;
use crate::error::ApiError;
use crate::identity::access::AccessScope;
use crate::identity::{AuthError, Login, Restriction, sso};
use crate::runtime::Runtime;

fn user_agent(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

/// Answers one request to the host API (paths under `/api/v1/auth` and
/// `/api/v1/admin`); `None` for other paths.
pub async fn route(rt: &Runtime, req: Request<Incoming>, peer: Peer) -> Option<HttpResponse> {
    let path = req.uri().path().to_string();
    let request_id = crate::support::encoding::request_id();
    let result = match path.as_str() {
        p if p.starts_with("/api/v1/auth/") => auth(rt, req, peer, &request_id).await,
        p if p.starts_with("/api/v1/admin/") => admin_route(rt, req, peer, &request_id).await,
        _ => return None,
    };
    Some(match result {
        Ok(r) => r,
        Err(e) => error_response(&e),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    /// Absent for operators and partners (the system realm).
    #[serde(default)]
    tenant: Option<String>,
    username: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    current: String,
    new: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

async fn auth(
    rt: &Runtime,
    req: Request<Incoming>,
    peer: Peer,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    let ids = rt.identity();
    let method = req.method().clone();
    let path = req
        .uri()
        .path()
        .trim_start_matches("/api/v1/auth/")
        .to_string();
    let ua = user_agent(&req);
    let source = Some(peer.addr.to_string());
    if (method.clone(), path.as_str()) == (Method::POST, "login") {
        let body: LoginBody = parse(&read_body(req.into_body(), MAX_BODY_BYTES).await?)?;
        let realm = match &body.tenant {
            None => audit::Scope::System,
            Some(t) => audit::Scope::parse(t)
                .filter(|s| *s != audit::Scope::System)
                // An invalid tenant id answers like a wrong password.
                .unwrap_or_else(|| audit::Scope::tenant("-")),
        };
        let login = Login {
            username: &body.username,
            password: &body.password,
            totp: body.totp.as_deref(),
            recovery_code: body.recovery_code.as_deref(),
            source: Some(peer.addr),
            user_agent: ua.as_deref(),
            via: "password",
        };
        let ctx = audit::Context {
            source: source.clone(),
            request_id: Some(request_id.to_string()),
            ..audit::Context::system()
        };
        let issued = audit::with_context(ctx, ids.login(&realm, login)).await;
        return throttled_or(issued.map(|i| json!(i)));
    }
    if (method.clone(), path.as_str()) == (Method::POST, "bootstrap") {
        // The first operator, with the secret `serve` printed (SPEC K1).
        let body: BootstrapBody = parse(&read_body(req.into_body(), MAX_BODY_BYTES).await?)?;
        let ctx = audit::Context {
            source: source.clone(),
            request_id: Some(request_id.to_string()),
            ..audit::Context::system()
        };
        let made = audit::with_context(
            ctx,
            ids.bootstrap(&body.secret, &body.username, Some(peer.addr)),
        )
        .await;
        if made.is_ok() {
            let file = rt.data_dir().join(crate::identity::bootstrap::SECRET_FILE);
            let _ = std::fs::remove_file(file);
        }
        return throttled_or(made.map(|op| {
            json!({
                "id": op.id,
                "username": op.username,
                "welcome_password": op.welcome_password,
                "next": "sign in with POST /api/v1/auth/login (no tenant), change the welcome password with POST /api/v1/auth/password, then enrol TOTP with POST /api/v1/auth/mfa/enroll and /mfa/confirm",
            })
        }));
    }
    if let Some(rest) = path.strip_prefix("sso/")
        && method == Method::GET
    {
        let (tenant, step) = rest.split_once('/').unwrap_or((rest, ""));
        let ctx = audit::Context {
            source: source.clone(),
            request_id: Some(request_id.to_string()),
            ..audit::Context::system()
        };
        return audit::with_context(ctx, async {
            match step {
                "start" => {
                    require_tenant(rt, tenant)?;
                    let (url, state) = sso::start(rt.identity(), tenant).await?;
                    let mut resp = json_response(303, &json!({ "location": url }));
                    let secure = if rt.public_url().starts_with("https://") { "; Secure" } else { "" };
                    let cookie = format!(
                        "{}={state}; Path=/api/v1/auth/sso/{tenant}/; HttpOnly; SameSite=Lax; Max-Age=600{secure}",
                        sso::state_cookie_name(tenant)
                    );
                    for (name, value) in [(hyper::header::LOCATION, url), (hyper::header::SET_COOKIE, cookie)] {
                        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
                            resp.headers_mut().insert(name, v);
                        }
                    }
                    Ok(resp)
                }
                "callback" => {
                    let query = req.uri().query().unwrap_or("");
                    let cookie = cookie_value(&req, &sso::state_cookie_name(tenant));
                    require_tenant(rt, tenant)?;
                    let issued =
                        sso::callback(rt.identity(), tenant, query, cookie.as_deref(), source.clone()).await?;
                    Ok(json_response(200, &json!(issued)))
                }
                _ => Err(not_found()),
            }
        })
        .await;
    }
    let caller = caller(rt, &req)?;
    let ctx = caller.audit_context(source.clone(), Some(request_id.to_string()));
    audit::with_context(ctx, async {
        match (method, path.as_str()) {
            (Method::GET, "me") => {
                let user = ids.user(&caller.realm, &caller.user)?;
                Ok(json_response(
                    200,
                    &json!({
                        "realm": caller.realm.label(),
                        "tenant": caller.tenant(),
                        "user": user,
                        "role": caller.role.as_str(),
                        "session": caller.session,
                        "restriction": caller.restriction,
                        "guest": caller.guest,
                    }),
                ))
            }
            (Method::POST, "logout") => {
                ids.logout(&caller).await?;
                Ok(json_response(200, &json!({ "signed_out": true })))
            }
            (Method::POST, "password") => {
                let body: PasswordBody = parse(&read_body(req.into_body(), MAX_BODY_BYTES).await?)?;
                let issued = ids
                    .change_password(&caller, &body.current, &body.new, source, ua.as_deref())
                    .await;
                throttled_or(issued.map(|i| json!(i)))
            }
            (Method::POST, "mfa/enroll" | "mfa/confirm")
                if caller.restriction == Some(Restriction::ChangePassword) =>
            {
                Err(AuthError::Restricted(Restriction::ChangePassword).into())
            }
            (Method::POST, "mfa/enroll") => {
                let (secret, uri) = ids.mfa_enroll(&caller).await?;
                Ok(json_response(200, &json!({ "secret": secret, "otpauth_uri": uri })))
            }
            (Method::POST, "mfa/confirm") => {
                let body: CodeBody = parse(&read_body(req.into_body(), MAX_BODY_BYTES).await?)?;
                let codes = ids.mfa_confirm(&caller, &body.code).await?;
                Ok(json_response(200, &json!({ "recovery_codes": codes })))
            }
            (m, p) => {
                if let Some(r) = caller.restriction {
                    return Err(AuthError::Restricted(r).into());
                }
                match (m, p) {
                    (Method::GET, "sessions") => Ok(json_response(
                        200,
                        &json!({ "sessions": ids.sessions(&caller.realm, &caller.user, Some(&caller.session))? }),
                    )),
                    (Method::DELETE, p) if p.starts_with("sessions/") => {
                        let id = &p["sessions/".len()..];
                        ids.revoke_session(&caller.realm, &caller.user, id).await?;
                        Ok(json_response(200, &json!({ "revoked": id })))
                    }
                    // A user's own SIP devices (SPEC T2): see them, and give
                    // one a new password (a lost or leaked phone).
                    (Method::GET, "devices") => {
                        let devices = match caller.tenant() {
                            Some(t) if caller.guest.is_none() => ids.devices(t, Some(&caller.user))?,
                            _ => Vec::new(),
                        };
                        Ok(json_response(200, &json!({ "devices": devices })))
                    }
                    (Method::POST, p)
                        if p
                            .strip_prefix("devices/")
                            .and_then(|r| r.strip_suffix("/password"))
                            .is_some() =>
                    {
                        let name = p
                            .strip_prefix("devices/")
                            .and_then(|r| r.strip_suffix("/password"))
                            .unwrap_or_default();
                        let tenant = caller
                            .tenant()
                            .filter(|_| caller.guest.is_none())
                            .ok_or_else(not_found)?
                            .to_string();
                        let realm = rt.sip_realm(&tenant);
                        let password = ids
                            .reset_own_device_password(&tenant, &caller.user, name, &realm)
                            .await?;
                        rt.telephony().device_changed(&tenant, name);
                        Ok(json_response(
                            200,
                            &json!({
                                "name": name,
                                "password": password.as_str(),
                                "register": {
                                    "aor": format!("sips:{name}@{realm}"),
                                    "username": name,
                                    "realm": realm,
                                    "transport": "tls",
                                },
                            }),
                        ))
                    }
                    _ => Err(not_found()),
                }
            }
        }
    })
    .await
}

/// A sign-in style answer: 200 with `value`, or the error — a throttled
/// one with `Retry-After`.
fn throttled_or(result: Result<serde_json::Value, AuthError>) -> Result<HttpResponse, ApiError> {
    match result {
        Ok(value) => Ok(json_response(200, &value)),
        Err(AuthError::Throttled { retry_after_ms }) => {
            let e = AuthError::Throttled { retry_after_ms };
            let mut resp = error_response(&e.into());
            resp.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(retry_after_ms.div_ceil(1000)),
            );
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such API route")
}

fn query_str(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            crate::support::encoding::form_decode(&format!("v={v}"))
                .remove("v")
                .unwrap_or_default()
        })
}

fn query_u64(query: &str, name: &str) -> Result<Option<u64>, ApiError> {
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=')
            && k == name
        {
            return v.parse().map(Some).map_err(|_| {
                ApiError::new(
                    400,
                    "bad_request",
                    format!("query parameter {name} must be a number"),
                )
            });
        }
    }
    Ok(None)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    id: String,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootstrapBody {
    secret: String,
    username: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustBody {
    public_key: String,
    label: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableBody {
    version: String,
    #[serde(default)]
    grants: Option<Vec<String>>,
    #[serde(default)]
    config: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    allow_rollback: bool,
}

/// `{"class": "recording", "days": 90}`, or `{"class": …, "keep": true}`
/// to keep forever.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    class: String,
    #[serde(default)]
    days: Option<u32>,
    #[serde(default)]
    keep: bool,
}

/// `{"on": true}` for the tenant, plus `"plugin"` and `"blob"` for one
/// object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    on: bool,
    #[serde(default)]
    plugin: Option<String>,
    #[serde(default)]
    blob: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesBody {
    routes: Vec<crate::tenant::Route>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrunkBody {
    trunk: crate::tenant::Trunk,
    #[serde(default)]
    password: Option<crate::admin::TrunkPassword>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceUdpBody {
    udp: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceBody {
    name: String,
    user: String,
    #[serde(default)]
    udp: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessBody {
    tenant: String,
    ticket: String,
    reason: String,
    scope: AccessScope,
    #[serde(default)]
    minutes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientBody {
    name: String,
    redirect_uris: Vec<String>,
    #[serde(default)]
    public: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    session: Option<String>,
}

/// Maps `/api/v1/admin/…` onto an `Op`.
async fn admin_route(
    rt: &Runtime,
    req: Request<Incoming>,
    peer: Peer,
    request_id: &str,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(rt, &req)?;
    let method = req.method().clone();
    let path = req
        .uri()
        .path()
        .trim_start_matches("/api/v1/admin/")
        .to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let seg: Vec<&str> = path.split('/').collect();
    let s = |x: &str| x.to_string();
    let body = |limit| async move { read_body(req.into_body(), limit).await };
    let actor = Actor::Caller(Box::new(caller));
    use Method as M;
    // Call records may also be downloaded as CSV or JSON lines.
    let export = match (&method, seg.as_slice()) {
        (&M::GET, ["tenants", _, "calls"]) => match query_str(&query, "format").as_deref() {
            None | Some("json") => None,
            Some("csv") => Some(true),
            Some("jsonl") => Some(false),
            Some(_) => {
                return Err(ApiError::new(
                    400,
                    "bad_request",
                    "format is json, jsonl or csv",
                ));
            }
        },
        _ => None,
    };
    let op = match (&method, seg.as_slice()) {
        (&M::GET, ["tenants"]) => Op::TenantList,
        (&M::POST, ["tenants"]) => {
            let b: TenantBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::TenantCreate {
                id: b.id,
                region: b.region,
            }
        }
        (&M::DELETE, ["tenants", t]) => Op::TenantDelete { id: s(t) },
        (&M::GET, ["tenants", t, "limits"]) => Op::TenantLimits { id: s(t) },
        (&M::GET, ["tenants", t, "usage"]) => Op::TenantUsage { id: s(t) },
        (&M::PATCH, ["tenants", t, "limits"]) => Op::TenantLimitsSet {
            id: s(t),
            set: parse(&body(MAX_BODY_BYTES).await?)?,
        },
        (&M::PUT, ["tenants", t, "plugins", name]) => {
            let b: EnableBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::PluginEnable {
                tenant: s(t),
                name: s(name),
                version: b.version,
                grants: b.grants,
                config: b.config,
                allow_rollback: b.allow_rollback,
            }
        }
        (&M::GET, ["tenants", t, "retention"]) => Op::RetentionShow { tenant: s(t) },
        (&M::PUT, ["tenants", t, "retention"]) => {
            let b: RetentionBody = parse(&body(MAX_BODY_BYTES).await?)?;
            if b.days.is_some() == b.keep {
                return Err(ApiError::new(
                    400,
                    "bad_request",
                    "give either \"days\" (1-36500) or \"keep\": true",
                ));
            }
            Op::RetentionSet {
                tenant: s(t),
                class: b.class,
                days: b.days,
            }
        }
        (&M::GET, ["tenants", t, "calls"]) => Op::CallRecords {
            tenant: s(t),
            from_ms: query_u64(&query, "from")?.unwrap_or(0),
            to_ms: query_u64(&query, "to")?,
            after: query_str(&query, "after"),
            limit: query_u64(&query, "limit")?.map(|l| l as usize),
        },
        (&M::GET, ["tenants", t, "calls", "counts"]) => Op::CallCounts {
            tenant: s(t),
            from_ms: query_u64(&query, "from")?.unwrap_or(0),
            to_ms: query_u64(&query, "to")?,
        },
        (&M::GET, ["tenants", t, "dialing"]) => Op::DialingShow { tenant: s(t) },
        (&M::PUT, ["tenants", t, "dialing"]) => Op::DialingSet {
            tenant: s(t),
            dialing: parse(&body(MAX_BODY_BYTES).await?)?,
        },
        (&M::GET, ["tenants", t, "routes"]) => Op::RoutesShow { tenant: s(t) },
        (&M::PUT, ["tenants", t, "routes"]) => {
            let b: RoutesBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::RoutesSet {
                tenant: s(t),
                routes: b.routes,
            }
        }
        (&M::GET, ["tenants", t, "trunks"]) => Op::TrunkList { tenant: s(t) },
        (&M::PUT, ["tenants", t, "trunks"]) => {
            let b: TrunkBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::TrunkSet {
                tenant: s(t),
                trunk: b.trunk,
                password: b.password,
            }
        }
        (&M::DELETE, ["tenants", t, "trunks", name]) => Op::TrunkRemove {
            tenant: s(t),
            name: s(name),
        },
        (&M::GET, ["tenants", t, "devices"]) => Op::DeviceList {
            tenant: s(t),
            user: query_str(&query, "user"),
        },
        (&M::POST, ["tenants", t, "devices"]) => {
            let b: DeviceBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::DeviceAdd {
                tenant: s(t),
                name: b.name,
                user: b.user,
                udp: b.udp,
            }
        }
        (&M::DELETE, ["tenants", t, "devices", d]) => Op::DeviceRemove {
            tenant: s(t),
            name: s(d),
        },
        (&M::POST, ["tenants", t, "devices", d, "password"]) => Op::DevicePassword {
            tenant: s(t),
            name: s(d),
        },
        (&M::PUT, ["tenants", t, "devices", d, "udp"]) => {
            let b: DeviceUdpBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::DeviceUdp {
                tenant: s(t),
                name: s(d),
                udp: b.udp,
            }
        }
        (&M::PUT, ["tenants", t, "hold"]) => {
            let b: HoldBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::HoldSet {
                tenant: s(t),
                on: b.on,
                plugin: b.plugin,
                blob: b.blob,
            }
        }
        (&M::GET, ["tenants", t, "plugins", name, "config"]) => Op::PluginConfigShow {
            tenant: s(t),
            name: s(name),
        },
        (&M::PUT, ["tenants", t, "plugins", name, "config"]) => Op::PluginConfigSet {
            tenant: s(t),
            name: s(name),
            config: parse(&body(MAX_BODY_BYTES).await?)?,
        },
        (&M::DELETE, ["tenants", t, "plugins", name]) => Op::PluginDisable {
            tenant: s(t),
            name: s(name),
        },
        (&M::GET, ["realms", r, "users"]) => Op::UserList { realm: s(r) },
        (&M::POST, ["realms", r, "users"]) => Op::UserCreate {
            realm: s(r),
            account: parse(&body(MAX_BODY_BYTES).await?)?,
        },
        (&M::GET, ["realms", r, "users", u]) => Op::UserShow {
            realm: s(r),
            user: s(u),
        },
        (&M::PATCH, ["realms", r, "users", u]) => Op::UserUpdate {
            realm: s(r),
            user: s(u),
            change: parse(&body(MAX_BODY_BYTES).await?)?,
        },
        (&M::DELETE, ["realms", r, "users", u]) => Op::UserDelete {
            realm: s(r),
            user: s(u),
        },
        (&M::POST, ["realms", r, "users", u, "reset-password"]) => Op::UserResetPassword {
            realm: s(r),
            user: s(u),
        },
        (&M::POST, ["realms", r, "users", u, "unlock"]) => Op::UserUnlock {
            realm: s(r),
            user: s(u),
        },
        (&M::POST, ["realms", r, "users", u, "reset-mfa"]) => Op::UserResetMfa {
            realm: s(r),
            user: s(u),
        },
        (&M::GET, ["realms", r, "users", u, "sessions"]) => Op::SessionList {
            realm: s(r),
            user: s(u),
        },
        (&M::DELETE, ["realms", r, "users", u, "sessions"]) => {
            let raw = body(MAX_BODY_BYTES).await?;
            let session = if raw.is_empty() {
                None
            } else {
                parse::<RevokeBody>(&raw)?.session
            };
            Op::SessionRevoke {
                realm: s(r),
                user: s(u),
                session,
            }
        }
        (&M::DELETE, ["realms", r, "users", u, "sessions", id]) => Op::SessionRevoke {
            realm: s(r),
            user: s(u),
            session: Some(s(id)),
        },
        (&M::GET, ["realms", r, "policy"]) => Op::PolicyShow { realm: s(r) },
        (&M::PUT, ["realms", r, "policy"]) => Op::PolicySet {
            realm: s(r),
            policy: parse(&body(MAX_BODY_BYTES).await?)?,
        },
        (&M::GET, ["realms", r, "audit"]) => Op::AuditExport {
            realm: s(r),
            after: query_u64(&query, "after")?.unwrap_or(0),
            limit: query_u64(&query, "limit")?.unwrap_or(1000) as usize,
        },
        (&M::GET, ["realms", r, "audit", "verify"]) => Op::AuditVerify { realm: s(r) },
        (&M::GET, ["audit-key"]) => Op::AuditKey,
        (&M::GET, ["trust"]) => Op::TrustList,
        (&M::POST, ["trust"]) => {
            let b: TrustBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::TrustAdd {
                public_key: b.public_key,
                label: b.label,
            }
        }
        (&M::DELETE, ["trust", id]) => Op::TrustRevoke { key_id: s(id) },
        (&M::GET, ["plugins"]) => Op::PluginList,
        (&M::POST, ["plugins"]) => {
            // Authorised before the body is read: only those who may
            // install send tens of megabytes. A refusal goes through
            // `execute` with no package, so it is audited as any other.
            let refused = Op::PluginInstall {
                package: Default::default(),
            };
            if admin::may(&actor, &refused).is_err() {
                refused
            } else {
                let bytes = body(rt.max_package_bytes()).await.map_err(|e| {
                    if e.code == "body_too_large" {
                        ApiError::new(
                            413,
                            "package_too_large",
                            format!(
                                "a package may have at most {} bytes",
                                rt.max_package_bytes()
                            ),
                        )
                    } else {
                        e
                    }
                })?;
                Op::PluginInstall {
                    package: crate::support::encoding::Base64Bytes(bytes.to_vec()),
                }
            }
        }
        (&M::GET, ["tenants", t, "oidc-clients"]) => Op::OidcClientList { tenant: s(t) },
        (&M::POST, ["tenants", t, "oidc-clients"]) => {
            let b: ClientBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::OidcClientAdd {
                tenant: s(t),
                name: b.name,
                redirect_uris: b.redirect_uris,
                public: b.public,
            }
        }
        (&M::DELETE, ["tenants", t, "oidc-clients", id]) => Op::OidcClientRemove {
            tenant: s(t),
            id: s(id),
        },
        (&M::GET, ["tenants", t, "sso"]) => Op::SsoShow { tenant: s(t) },
        (&M::PUT, ["tenants", t, "sso"]) => Op::SsoSet {
            tenant: s(t),
            config: parse(&body(MAX_BODY_BYTES).await?)?,
        },
        (&M::DELETE, ["tenants", t, "sso"]) => Op::SsoRemove { tenant: s(t) },
        (&M::GET, ["access"]) => Op::AccessList {
            tenant: query_str(&query, "tenant"),
        },
        (&M::POST, ["access"]) => {
            let b: AccessBody = parse(&body(MAX_BODY_BYTES).await?)?;
            Op::AccessRequest {
                tenant: b.tenant,
                ticket: b.ticket,
                reason: b.reason,
                scope: b.scope,
                minutes: b.minutes.unwrap_or(60),
            }
        }
        (&M::POST, ["access", id, "approve"]) => Op::AccessDecide {
            id: s(id),
            approve: true,
        },
        (&M::POST, ["access", id, "deny"]) => Op::AccessDecide {
            id: s(id),
            approve: false,
        },
        (&M::DELETE, ["access", id]) => Op::AccessRevoke { id: s(id) },
        _ => return Err(not_found()),
    };
    let ctx = admin::context_of(
        &actor,
        Some(peer.addr.to_string()),
        Some(request_id.to_string()),
    );
    let value = audit::with_context(ctx, admin::execute(rt, &actor, op)).await?;
    match export {
        Some(csv) => Ok(records_download(&value, csv)),
        None => Ok(json_response(200, &value)),
    }
}

/// A page of call records (`{"records": […]}`) as a CSV or JSON-lines
/// download; the next page: `after` = the last record's leg.
fn records_download(page: &serde_json::Value, csv: bool) -> HttpResponse {
    use crate::telephony::records::{CSV_HEADER, CallRecord};
    let records: Vec<CallRecord> =
        serde_json::from_value(page["records"].clone()).unwrap_or_default();
    let mut text = String::new();
    if csv {
        text.push_str(CSV_HEADER);
        text.push_str("\r\n");
    }
    for r in &records {
        if csv {
            text.push_str(&r.csv_row());
            text.push_str("\r\n");
        } else {
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
            text.push('\n');
        }
    }
    if csv {
        attachment_response(text, "text/csv; charset=utf-8", "calls.csv")
    } else {
        attachment_response(text, "application/x-ndjson", "calls.jsonl")
    }
}
