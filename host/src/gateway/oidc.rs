//! The OpenID Connect 1.0 / OAuth 2.0 provider (SPEC I5): every tenant is
//! its own issuer at `{public url}/oidc/{tenant}`, so applications can sign
//! a tenant's users in with Switchboard accounts.
//!
//! Only what current best practice (RFC 9700, OAuth 2.0 Security BCP)
//! leaves standing is offered: the authorization code flow with PKCE
//! (S256 only, required of every client), exact redirect-URI matching,
//! single-use codes valid 60 s (a replayed code also revokes the tokens
//! issued for it), Ed25519-signed ID tokens (`EdDSA`, RFC 8037), opaque
//! access tokens stored only as hashes. The implicit and password grants,
//! `plain` PKCE and `response_type` other than `code` are refused.
//!
//! Wiring: the gateway hands `/oidc/{tenant}/…` here; the records live in
//! `identity::oidc`. Clients are
//! registered by the tenant's admins (`admin::Op::OidcClient*`). Sign-in
//! at the authorization endpoint goes through `identity::login`, so the
//! password policy, throttling, locks, MFA and the audit trail all apply.
//!
//! ```text
//! t/{tenant}/oidc/c/{client id}        client (secret hash, redirect URIs)
//! t/{tenant}/oidc/code/{sha256(code)}  pending authorization code
//! t/{tenant}/oidc/at/{sha256(token)}   access token
//! t/{tenant}/oidc/used/{sha256(code)}  a redeemed code (replay detection)
//! ```

use std::collections::HashMap;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::reply::{self, HttpResponse, Peer};
use crate::admin::require_tenant;
use crate::audit::{self, Scope, outcome};
use crate::error::ApiError;
use crate::identity::Login;
use crate::identity::oidc::{self, Client, Redeem, client, issuer, kid, random_b64, signing_key};
use crate::runtime::Runtime;
use crate::support::clock::now_ms;
use crate::support::encoding::{b64url, form_decode, percent_decode_plus, percent_encode};

/// The cookie holding a sign-in session at the provider.
const COOKIE: &str = "sb_oidc";

/// The cookie pairing the sign-in form with the browser that asked for it.
const CSRF_COOKIE: &str = "sb_oidc_csrf";

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Answers `/oidc/{tenant}/…`.
pub async fn route(rt: &Runtime, req: Request<Incoming>, peer: Peer) -> HttpResponse {
    let path = req.uri().path().to_string();
    let rest = path.trim_start_matches("/oidc/");
    let (tenant, endpoint) = rest.split_once('/').unwrap_or((rest, ""));
    let tenant = tenant.to_string();
    if require_tenant(rt, &tenant).is_err() {
        return reply::error_response(&ApiError::new(404, "not_found", "no such issuer"));
    }
    let ctx = audit::Context {
        source: Some(peer.addr.to_string()),
        request_id: Some(crate::support::encoding::request_id()),
        ..audit::Context::system()
    };
    let method = req.method().clone();
    audit::with_context(ctx, async {
        match (method, endpoint) {
            (Method::GET, ".well-known/openid-configuration") => discovery(rt, &tenant),
            (Method::GET, "jwks") => match signing_key(rt.identity(), &tenant) {
                Ok(k) => {
                    let vk = k.verifying_key();
                    reply::json_response(
                        200,
                        &json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": b64url(vk.as_bytes()), "kid": kid(&vk), "use": "sig", "alg": "EdDSA"}]}),
                    )
                }
                Err(e) => reply::error_response(&e),
            },
            (Method::GET, "authorize") => {
                let query = req.uri().query().unwrap_or("").to_string();
                let cookies = Cookies::of(&req);
                authorize(rt, &tenant, &query, &cookies, None, peer).await
            }
            (Method::POST, "authorize") => {
                let cookies = Cookies::of(&req);
                let body = match reply::read_body(req.into_body(), reply::MAX_BODY_BYTES).await {
                    Ok(b) => b,
                    Err(e) => return reply::error_response(&e),
                };
                let f = form_decode(&String::from_utf8_lossy(&body));
                let query = f.get("request").cloned().unwrap_or_default();
                authorize(rt, &tenant, &query, &cookies, Some(&f), peer).await
            }
            (Method::POST, "token") => token(rt, &tenant, req).await,
            (Method::GET | Method::POST, "userinfo") => userinfo(rt, &tenant, &req),
            _ => reply::error_response(&ApiError::new(404, "not_found", "no such OpenID Connect endpoint")),
        }
    })
    .await
}

fn discovery(rt: &Runtime, tenant: &str) -> HttpResponse {
    let iss = issuer(rt.identity(), tenant);
    reply::json_response(
        200,
        &json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "userinfo_endpoint": format!("{iss}/userinfo"),
            "jwks_uri": format!("{iss}/jwks"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "scopes_supported": ["openid", "profile", "email"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "name", "preferred_username", "email"],
            "authorization_response_iss_parameter_supported": true,
        }),
    )
}

/// The provider's cookies on a request.
struct Cookies {
    /// The provider sign-in session (a session usable only here).
    session: Option<String>,
    /// The double-submit token of the sign-in form (login CSRF).
    csrf: Option<String>,
}

impl Cookies {
    fn of(req: &Request<Incoming>) -> Cookies {
        let header = req
            .headers()
            .get(hyper::header::COOKIE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let find = |name: &str| {
            header
                .split(';')
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        Cookies {
            session: find(COOKIE),
            csrf: find(CSRF_COOKIE),
        }
    }
}

/// `; Secure` when the server is reached over https.
fn secure(rt: &Runtime) -> &'static str {
    if rt.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// An error shown to the user agent (never redirected: the redirect URI
/// or client could not be trusted).
fn page_error(status: u16, code: &str, message: &str) -> HttpResponse {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Sign-in error</title><h1>Sign-in cannot continue</h1><p>{}</p><p><code>{}</code></p>",
        html_escape(message),
        html_escape(code)
    );
    html(status, body)
}

fn html(status: u16, body: String) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        "x-frame-options",
        hyper::header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    resp
}

fn redirect(location: &str, cookie: Option<String>) -> HttpResponse {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = hyper::header::HeaderValue::from_str(location) {
        resp.headers_mut().insert(hyper::header::LOCATION, v);
    }
    if let Some(c) = cookie
        && let Ok(v) = hyper::header::HeaderValue::from_str(&c)
    {
        resp.headers_mut().insert(hyper::header::SET_COOKIE, v);
    }
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// Redirects an error to the (verified) client (RFC 6749 4.1.2.1).
fn redirect_error(
    redirect_uri: &str,
    state: Option<&String>,
    iss: &str,
    error: &str,
    description: &str,
) -> HttpResponse {
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let mut loc = format!(
        "{redirect_uri}{sep}error={}&error_description={}&iss={}",
        percent_encode(error),
        percent_encode(description),
        percent_encode(iss)
    );
    if let Some(s) = state {
        loc.push_str(&format!("&state={}", percent_encode(s)));
    }
    redirect(&loc, None)
}

fn login_form(
    rt: &Runtime,
    tenant: &str,
    client: &Client,
    query: &str,
    message: Option<&str>,
) -> HttpResponse {
    let status = if message.is_some() { 401 } else { 200 };
    let csrf = random_b64(16);
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Sign in</title>\
<h1>Sign in to {client_name}</h1><p>with your {tenant} account</p>{msg}\
<form method=post action=\"/oidc/{tenant}/authorize\">\
<input type=hidden name=request value=\"{query}\">\
<input type=hidden name=csrf value=\"{csrf}\">\
<label>User name <input name=username autocomplete=username required></label>\
<label>Password <input name=password type=password autocomplete=current-password required></label>\
<label>Authenticator code (if enrolled) <input name=totp inputmode=numeric autocomplete=one-time-code></label>\
<button>Sign in</button></form>",
        client_name = html_escape(&client.name),
        tenant = html_escape(tenant),
        msg = message
            .map(|m| format!("<p role=alert>{}</p>", html_escape(m)))
            .unwrap_or_default(),
        query = html_escape(query),
    );
    let mut resp = html(status, body);
    let cookie = format!(
        "{CSRF_COOKIE}={csrf}; Path=/oidc/{tenant}/; HttpOnly; SameSite=Strict; Max-Age=1800{}",
        secure(rt)
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(hyper::header::SET_COOKIE, v);
    }
    resp
}

/// The authorization endpoint (GET: from the client; POST: the sign-in
/// form).
async fn authorize(
    rt: &Runtime,
    tenant: &str,
    query: &str,
    cookies: &Cookies,
    login: Option<&HashMap<String, String>>,
    peer: Peer,
) -> HttpResponse {
    if query.len() > 8192 {
        return page_error(
            400,
            "invalid_request",
            "the authorization request is too long",
        );
    }
    let q = form_decode(query);
    let iss = issuer(rt.identity(), tenant);
    let get = |k: &str| q.get(k).filter(|v| !v.starts_with('\u{0}'));
    // 1. The client and redirect URI must be trusted before anything is
    //    redirected anywhere (RFC 6749 4.1.2.1, RFC 9700 4.1).
    let Some(client) = get("client_id").and_then(|id| client(rt.identity(), tenant, id)) else {
        return page_error(400, "invalid_client", "unknown client_id");
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return page_error(400, "invalid_request", "redirect_uri is required");
    };
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        rt.audit_log()
            .append(
                &Scope::tenant(tenant),
                audit::Record {
                    action: "oidc.authorize",
                    target: &client.id,
                    outcome: outcome::DENIED,
                    details: &format!(
                        "unregistered redirect_uri {:?}",
                        redirect_uri.chars().take(200).collect::<String>()
                    ),
                },
            )
            .ok();
        return page_error(
            400,
            "invalid_request",
            "redirect_uri does not exactly match a URI registered for this client",
        );
    }
    let state = get("state");
    // 2. The rest is reported to the client.
    match get("response_type").map(String::as_str) {
        Some("code") => {}
        Some(_) => {
            return redirect_error(
                redirect_uri,
                state,
                &iss,
                "unsupported_response_type",
                "only the authorization code flow (response_type=code) is supported",
            );
        }
        None => {
            return redirect_error(
                redirect_uri,
                state,
                &iss,
                "invalid_request",
                "response_type is required",
            );
        }
    }
    let scope = get("scope").cloned().unwrap_or_default();
    if !scope.split(' ').any(|s| s == "openid") {
        return redirect_error(
            redirect_uri,
            state,
            &iss,
            "invalid_scope",
            "the openid scope is required",
        );
    }
    let challenge = get("code_challenge").cloned().unwrap_or_default();
    match get("code_challenge_method").map(String::as_str) {
        Some("S256") => {}
        Some(m) => {
            let m = m.chars().take(20).collect::<String>();
            return redirect_error(
                redirect_uri,
                state,
                &iss,
                "invalid_request",
                &format!("code_challenge_method {m} is not supported; use S256"),
            );
        }
        None => {
            return redirect_error(
                redirect_uri,
                state,
                &iss,
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            );
        }
    }
    if challenge.len() != 43
        || !challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return redirect_error(
            redirect_uri,
            state,
            &iss,
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
        );
    }
    let nonce = get("nonce").cloned();
    if nonce.as_ref().is_some_and(|n| n.len() > 512) {
        return redirect_error(
            redirect_uri,
            state,
            &iss,
            "invalid_request",
            "nonce is too long",
        );
    }
    // 3. Who is signing in: an existing provider session, or the form.
    let ids = rt.identity();
    let realm = Scope::tenant(tenant);
    let (user, set_cookie) = if let Some(form) = login {
        // The form must come from a page this browser was given (a
        // cross-site post cannot know the cookie's value).
        let paired = match (form.get("csrf"), &cookies.csrf) {
            (Some(f), Some(c)) => !f.is_empty() && f == c,
            _ => false,
        };
        if !paired {
            return login_form(
                rt,
                tenant,
                &client,
                query,
                Some(
                    "This sign-in form has expired or did not come from this site; please sign in again.",
                ),
            );
        }
        let attempt = Login {
            username: form.get("username").map(String::as_str).unwrap_or_default(),
            password: form.get("password").map(String::as_str).unwrap_or_default(),
            totp: form
                .get("totp")
                .map(String::as_str)
                .filter(|t| !t.is_empty()),
            recovery_code: None,
            source: Some(peer.addr),
            user_agent: None,
            // A session good only for this provider, not for the API.
            via: "oidc",
        };
        match ids.login(&realm, attempt).await {
            Ok(issued) if issued.session.restriction.is_none() => {
                let cookie = format!(
                    "{COOKIE}={}; Path=/oidc/{tenant}/; HttpOnly; SameSite=Lax; Max-Age=43200{}",
                    issued.token,
                    secure(rt)
                );
                (issued.user.id, Some(cookie))
            }
            Ok(_) => {
                return login_form(
                    rt,
                    tenant,
                    &client,
                    query,
                    Some(
                        "Your account needs a new password or a second factor first: sign in to Switchboard directly to finish setting it up.",
                    ),
                );
            }
            Err(e) => return login_form(rt, tenant, &client, query, Some(&e.to_string())),
        }
    } else {
        match cookies
            .session
            .as_deref()
            .and_then(|c| ids.authenticate(c).ok())
        {
            Some(c)
                if c.realm == realm
                    && c.restriction.is_none()
                    && c.guest.is_none()
                    && c.via == "oidc" =>
            {
                (c.user, None)
            }
            _ => return login_form(rt, tenant, &client, query, None),
        }
    };
    // 4. A single-use code bound to client, redirect URI, PKCE and nonce.
    let grant = oidc::Grant {
        client: client.id.clone(),
        user,
        redirect_uri: redirect_uri.clone(),
        challenge,
        nonce,
        scope,
        auth_time_s: now_ms() / 1000,
        expires_ms: now_ms() + oidc::CODE_TTL_MS,
    };
    let Ok(code) = oidc::issue_code(rt.identity(), tenant, grant).await else {
        return page_error(503, "temporarily_unavailable", "storage is unavailable");
    };
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let mut loc = format!(
        "{redirect_uri}{sep}code={}&iss={}",
        percent_encode(&code),
        percent_encode(&iss)
    );
    if let Some(s) = state {
        loc.push_str(&format!("&state={}", percent_encode(s)));
    }
    redirect(&loc, set_cookie)
}

/// A token endpoint error (RFC 6749 5.2).
fn token_error(status: u16, error: &str, description: &str) -> HttpResponse {
    let mut resp = reply::json_response(
        status,
        &json!({"error": error, "error_description": description}),
    );
    if status == 401 {
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic"),
        );
    }
    resp
}

/// Client credentials from `Authorization: Basic` or the form.
fn client_credentials(
    req_auth: Option<&str>,
    f: &HashMap<String, String>,
) -> Result<(String, Option<String>), &'static str> {
    let basic = req_auth.and_then(|h| {
        h.strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
    });
    match (basic, f.get("client_secret")) {
        (Some(_), Some(_)) => Err("use one client authentication method, not two"),
        (Some(b), None) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| "malformed Basic credentials")?;
            let text = String::from_utf8(raw).map_err(|_| "malformed Basic credentials")?;
            let (id, secret) = text.split_once(':').ok_or("malformed Basic credentials")?;
            Ok((percent_decode_plus(id), Some(percent_decode_plus(secret))))
        }
        (None, secret) => {
            let id = f
                .get("client_id")
                .cloned()
                .ok_or("client authentication is required")?;
            Ok((id, secret.cloned()))
        }
    }
}

async fn token(rt: &Runtime, tenant: &str, req: Request<Incoming>) -> HttpResponse {
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match reply::read_body(req.into_body(), reply::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return token_error(400, "invalid_request", &e.message),
    };
    let f = form_decode(&String::from_utf8_lossy(&body));
    if f.values().any(|v| v.starts_with('\u{0}')) {
        return token_error(400, "invalid_request", "a parameter was repeated");
    }
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {}
        Some(g) => {
            let g = g.chars().take(40).collect::<String>();
            return token_error(
                400,
                "unsupported_grant_type",
                &format!("grant_type {g} is not supported; only authorization_code is"),
            );
        }
        None => return token_error(400, "invalid_request", "grant_type is required"),
    }
    let (client_id, secret) = match client_credentials(auth.as_deref(), &f) {
        Ok(c) => c,
        Err(m) => return token_error(401, "invalid_client", m),
    };
    let redeem = Redeem {
        client_id: &client_id,
        secret: secret.as_deref(),
        code: f.get("code").map_or("", String::as_str),
        redirect_uri: f.get("redirect_uri").map(String::as_str),
        code_verifier: f.get("code_verifier").map_or("", String::as_str),
    };
    match oidc::redeem(rt.identity(), tenant, redeem).await {
        Ok(t) => reply::json_response(
            200,
            &json!({
                "access_token": t.access_token,
                "token_type": "Bearer",
                "expires_in": t.expires_in_s,
                "id_token": t.id_token,
                "scope": t.scope,
            }),
        ),
        Err(e) => token_error(e.status, e.error, &e.description),
    }
}

fn userinfo(rt: &Runtime, tenant: &str, req: &Request<Incoming>) -> HttpResponse {
    let unauthorized = || {
        let mut r = reply::json_response(
            401,
            &json!({"error": "invalid_token", "error_description": "the access token is missing, invalid or expired"}),
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        r
    };
    let Some(token) = reply::bearer(req) else {
        return unauthorized();
    };
    match oidc::userinfo(rt.identity(), tenant, &token) {
        Some(out) => reply::json_response(200, &out),
        None => unauthorized(),
    }
}
