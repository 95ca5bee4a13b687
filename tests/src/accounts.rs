//! Account helpers shared by the identity, OIDC and SSO tests: run admin
//! operations as the console, create accounts, and take them through the
//! welcome-password change over the HTTP API.

use serde_json::{Value, json};
use switchboard::admin::{self, Actor, Op};
use switchboard::harness::Harness;
use switchboard::identity::totp;

use crate::http::{Reply, Server};

/// A password that meets the policy.
pub const STRONG: &str = "Tr4il-Blazer#2026";

/// Runs `op` as the local console; panics with the error code on failure.
pub async fn console(h: &Harness, op: Op) -> Value {
    admin::execute(h.runtime(), &Actor::Console, op)
        .await
        .unwrap_or_else(|e| panic!("{} ({})", e.message, e.code))
}

/// Sets `tenant`'s settings of `plugin` (`set`, a JSON object) as the
/// console.
pub async fn plugin_config(h: &Harness, tenant: &str, plugin: &str, set: Value) -> Value {
    console(
        h,
        Op::PluginConfigSet {
            tenant: tenant.into(),
            name: plugin.into(),
            config: set.as_object().cloned().unwrap_or_default(),
        },
    )
    .await
}

/// The audit trail's entries of `tenant` for `action`.
pub fn audits(h: &Harness, tenant: &str, action: &str) -> Vec<switchboard::audit::Entry> {
    h.runtime()
        .audit_log()
        .entries(&switchboard::audit::Scope::tenant(tenant), 0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == action)
        .collect()
}

/// Creates `name` with `role` in `realm`; returns (id, welcome password).
pub async fn create_user(h: &Harness, realm: &str, name: &str, role: &str) -> (String, String) {
    let v = console(
        h,
        Op::UserCreate {
            realm: realm.into(),
            account: serde_json::from_value(json!({"username": name, "role": role})).unwrap(),
        },
    )
    .await;
    (
        v["user"]["id"].as_str().unwrap().to_string(),
        v["welcome_password"].as_str().unwrap().to_string(),
    )
}

/// `POST /api/v1/auth/login`.
pub async fn login(s: &Server, tenant: Option<&str>, name: &str, password: &str) -> Reply {
    let mut body = json!({"username": name, "password": password});
    if let Some(t) = tenant {
        body["tenant"] = json!(t);
    }
    s.call("POST", "/api/v1/auth/login", None, Some(&body))
        .await
}

/// Signs in with the welcome password and changes it to `STRONG`;
/// returns the token of the resulting session.
pub async fn activate(s: &Server, tenant: Option<&str>, name: &str, welcome: &str) -> String {
    let r = login(s, tenant, name, welcome).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let restricted = r.json()["token"].as_str().unwrap().to_string();
    let r = s
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&restricted),
            Some(&json!({"current": welcome, "new": STRONG})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

/// The TOTP code of `secret_b32` at now + `offset_steps` steps.
pub fn code_now(secret_b32: &str, offset_steps: i64) -> String {
    let secret = totp::base32_decode(secret_b32).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let step = (totp::step(now) as i64 + offset_steps) as u64;
    format!("{:06}", totp::hotp(&secret, step))
}

/// Enrols a TOTP second factor for the session `token`; returns the
/// secret.
pub async fn enrol_mfa(s: &Server, token: &str) -> String {
    let secret = s
        .call("POST", "/api/v1/auth/mfa/enroll", Some(token), None)
        .await
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .call(
            "POST",
            "/api/v1/auth/mfa/confirm",
            Some(token),
            Some(&json!({"code": code_now(&secret, 0)})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    secret
}

/// Creates `name` with `role` in `realm` and activates it; returns (id,
/// token). Operators (realm `system`) sign in without a tenant.
pub async fn person(
    h: &Harness,
    s: &Server,
    realm: &str,
    name: &str,
    role: &str,
) -> (String, String) {
    let (id, welcome) = create_user(h, realm, name, role).await;
    let tenant = (realm != "system").then_some(realm);
    (id, activate(s, tenant, name, &welcome).await)
}

/// Creates and activates each (realm, name, role); returns (id, token) of
/// each, in order.
pub async fn people(h: &Harness, s: &Server, who: &[(&str, &str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (realm, name, role) in who {
        let (id, welcome) = create_user(h, realm, name, role).await;
        out.push((id, activate(s, Some(realm), name, &welcome).await));
    }
    out
}
