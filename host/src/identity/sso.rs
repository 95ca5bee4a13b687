//! Single sign-on through a tenant's external OpenID Connect provider
//! (SPEC I6). The tenant's admin configures the provider's issuer, the
//! client id and secret Switchboard was registered with, and which claim
//! becomes the user name. Sign-in is the authorization code flow with
//! PKCE (S256), `state` and `nonce`, all single-use and short-lived; the
//! ID token's signature (EdDSA or RS256, from the provider's JWKS), issuer,
//! audience, expiry and nonce are checked before anyone is signed in. A
//! first sign-in may provision an account linked to (issuer, subject);
//! an existing local account is never taken over by name.
//!
//! Routes: `GET /api/v1/auth/sso/{tenant}/start` redirects to the
//! provider; `GET /api/v1/auth/sso/{tenant}/callback` finishes and answers
//! with a session like a password sign-in.
//!
//! ```text
//! t/{tenant}/sso/config              provider settings (secret sealed at rest)
//! t/{tenant}/sso/state/{sha256}      pending sign-in (verifier, nonce), 10 min
//! ```

use base64::Engine as _;
use ed25519_dalek::Verifier as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::audit::{self, Scope, outcome};
use crate::error::ApiError;
use crate::identity::Identity;
use crate::identity::{AuthError, Issued};
use crate::outbound::Outbound;
use crate::support::clock::now_ms;
use crate::support::encoding::{
    b64url, form_decode, percent_encode, random_b64url, sha256_hex, unb64url,
};

/// How long a started sign-in may take.
const STATE_TTL_MS: u64 = 600_000;
/// Clock skew tolerated on ID token times.
const SKEW_SECS: u64 = 120;

/// A tenant's identity provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoConfig {
    /// The provider's issuer URL (discovery at
    /// `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// The claim that becomes the user name: `preferred_username`
    /// (default), `email` or `sub`.
    #[serde(default = "default_claim")]
    pub username_claim: String,
    /// Create an account on first sign-in (default true).
    #[serde(default = "yes")]
    pub provision: bool,
}

fn default_claim() -> String {
    "preferred_username".into()
}

fn yes() -> bool {
    true
}

fn config_key(tenant: &str) -> Vec<u8> {
    format!("t/{tenant}/sso/config").into_bytes()
}

fn state_key(tenant: &str, hash: &str) -> Vec<u8> {
    format!("t/{tenant}/sso/state/{hash}").into_bytes()
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    AuthError::from(e).into()
}

fn fail(code: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(400, code, message)
}

/// Sets a tenant's provider (validated).
pub async fn set(identity: &Identity, tenant: &str, config: SsoConfig) -> Result<(), ApiError> {
    if config.issuer.contains(['?', '#']) {
        return Err(fail(
            "invalid_issuer",
            "the issuer URL must not have a query or fragment",
        ));
    }
    identity
        .outbound()
        .check(&config.issuer)
        .map_err(|e| fail("invalid_issuer", e.0))?;
    if config.client_id.is_empty() || config.client_id.len() > 256 {
        return Err(fail(
            "invalid_argument",
            "client_id must be 1-256 characters",
        ));
    }
    if config.client_secret.len() > 512 {
        return Err(fail(
            "invalid_argument",
            "client_secret is longer than 512 characters",
        ));
    }
    if !matches!(
        config.username_claim.as_str(),
        "preferred_username" | "email" | "sub"
    ) {
        return Err(fail(
            "invalid_argument",
            "username_claim must be preferred_username, email or sub",
        ));
    }
    identity
        .commit_audited(
            &[(
                config_key(tenant),
                Some(serde_json::to_vec(&config).unwrap_or_default()),
            )],
            &Scope::tenant(tenant),
            audit::Record {
                action: "sso.configure",
                target: &config.issuer,
                outcome: outcome::SUCCESS,
                details: &format!(
                    "client {}, user name from {}, provision {}",
                    config.client_id, config.username_claim, config.provision
                ),
            },
        )
        .await?;
    Ok(())
}

/// The provider of a tenant, secret redacted.
pub fn show(identity: &Identity, tenant: &str) -> Result<Value, ApiError> {
    let c = load(identity, tenant)?;
    Ok(json!({
        "issuer": c.issuer,
        "client_id": c.client_id,
        "client_secret": "(set)",
        "username_claim": c.username_claim,
        "provision": c.provision,
    }))
}

/// Removes a tenant's provider.
pub async fn remove(identity: &Identity, tenant: &str) -> Result<(), ApiError> {
    load(identity, tenant)?;
    identity
        .commit_audited(
            &[(config_key(tenant), None)],
            &Scope::tenant(tenant),
            audit::Record {
                action: "sso.remove",
                target: tenant,
                outcome: outcome::SUCCESS,
                details: "",
            },
        )
        .await?;
    Ok(())
}

fn load(identity: &Identity, tenant: &str) -> Result<SsoConfig, ApiError> {
    let raw = identity
        .store()
        .get(&config_key(tenant))
        .map_err(store_err)?;
    raw.and_then(|r| serde_json::from_slice(&r).ok())
        .ok_or_else(|| {
            ApiError::new(
                404,
                "sso_not_configured",
                format!("tenant {tenant} has no single sign-on provider"),
            )
        })
}

/// The provider's endpoints, from discovery.
struct Endpoints {
    authorize: String,
    token: String,
    jwks: String,
}

async fn get_json(out: &Outbound, url: &str) -> Result<Value, ApiError> {
    let r = out
        .send(
            "GET",
            url,
            &[("accept", "application/json".into())],
            Vec::new(),
        )
        .await
        .map_err(|e| ApiError::new(502, "idp_unreachable", e.0))?;
    if r.status != 200 {
        return Err(ApiError::new(
            502,
            "idp_error",
            format!("{url} answered {}", r.status),
        ));
    }
    serde_json::from_slice(&r.body)
        .map_err(|e| ApiError::new(502, "idp_error", format!("{url}: not JSON: {e}")))
}

async fn discover(out: &Outbound, config: &SsoConfig) -> Result<Endpoints, ApiError> {
    let issuer = config.issuer.trim_end_matches('/');
    let doc = get_json(out, &format!("{issuer}/.well-known/openid-configuration")).await?;
    if doc["issuer"].as_str() != Some(config.issuer.as_str()) {
        return Err(ApiError::new(
            502,
            "idp_error",
            "the provider's discovery document names another issuer",
        ));
    }
    let field = |name: &str| -> Result<String, ApiError> {
        let v = doc[name]
            .as_str()
            .ok_or_else(|| ApiError::new(502, "idp_error", format!("discovery lacks {name}")))?;
        out.check(v)
            .map_err(|e| ApiError::new(502, "idp_error", e.0))?;
        Ok(v.to_string())
    };
    Ok(Endpoints {
        authorize: field("authorization_endpoint")?,
        token: field("token_endpoint")?,
        jwks: field("jwks_uri")?,
    })
}

fn callback_url(identity: &Identity, tenant: &str) -> String {
    format!(
        "{}/api/v1/auth/sso/{tenant}/callback",
        identity.public_url()
    )
}

#[derive(Serialize, Deserialize)]
struct Pending {
    verifier: String,
    nonce: String,
    expires_ms: u64,
}

fn random_b64(n: usize) -> Result<String, ApiError> {
    random_b64url(n).map_err(|e| ApiError::new(500, "internal", e.to_string()))
}

/// The cookie binding a sign-in to the browser that started it.
pub fn state_cookie_name(tenant: &str) -> String {
    format!("sb_sso_{}", tenant.replace('-', "_"))
}

/// Starts a sign-in: the URL to send the user agent to, and the `state`
/// the caller must set as the browser's cookie (`state_cookie_name`).
pub async fn start(identity: &Identity, tenant: &str) -> Result<(String, String), ApiError> {
    let config = load(identity, tenant)?;
    let endpoints = discover(identity.outbound(), &config).await?;
    let state = random_b64(32)?;
    let verifier = random_b64(32)?;
    let nonce = random_b64(16)?;
    let challenge = b64url(&Sha256::digest(verifier.as_bytes()));
    let pending = Pending {
        verifier,
        nonce: nonce.clone(),
        expires_ms: now_ms() + STATE_TTL_MS,
    };
    let store = identity.store();
    let seq = store
        .apply(&[(
            state_key(tenant, &sha256_hex(state.as_bytes())),
            Some(serde_json::to_vec(&pending).unwrap_or_default()),
        )])
        .map_err(store_err)?;
    store.durable(seq).await.map_err(store_err)?;
    let sep = if endpoints.authorize.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!(
        "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope=openid%20profile%20email&state={}&nonce={}&code_challenge={challenge}&code_challenge_method=S256",
        endpoints.authorize,
        percent_encode(&config.client_id),
        percent_encode(&callback_url(identity, tenant)),
        percent_encode(&state),
        percent_encode(&nonce),
    );
    Ok((url, state))
}

/// Finishes a sign-in from the provider's redirect (its query string).
pub async fn callback(
    identity: &Identity,
    tenant: &str,
    query: &str,
    browser_state: Option<&str>,
    source: Option<String>,
) -> Result<Issued, ApiError> {
    let realm = Scope::tenant(tenant);
    let denied = |why: &str| {
        identity
            .trail()
            .append(
                &realm,
                audit::Record {
                    action: "auth.sso",
                    target: tenant,
                    outcome: outcome::FAILURE,
                    details: why,
                },
            )
            .ok();
    };
    let config = load(identity, tenant)?;
    let q = form_decode(query);
    if let Some(err) = q.get("error") {
        denied(&format!("the provider answered {err}"));
        return Err(fail(
            "sso_failed",
            format!(
                "the identity provider refused the sign-in: {}",
                err.chars().take(100).collect::<String>()
            ),
        ));
    }
    let state = q.get("state").cloned().unwrap_or_default();
    let code = q.get("code").cloned().unwrap_or_default();
    if state.is_empty() || code.is_empty() || state.len() > 256 || code.len() > 2048 {
        denied("callback without a valid state and code");
        return Err(fail("sso_failed", "the callback needs state and code"));
    }
    // The browser finishing must be the one that started (login CSRF).
    if browser_state != Some(state.as_str()) {
        denied("callback from a browser that did not start this sign-in");
        return Err(fail(
            "sso_failed",
            "this sign-in was started in another browser or its cookie is missing; start again",
        ));
    }
    // RFC 9207: when the provider names itself, it must be ours.
    if let Some(iss) = q.get("iss")
        && *iss != config.issuer
    {
        denied("callback from another issuer (mix-up)");
        return Err(fail("sso_failed", "the callback came from another issuer"));
    }
    // The state is single-use: taken before anything else happens.
    let store = identity.store();
    let skey = state_key(tenant, &sha256_hex(state.as_bytes()));
    let pending: Option<Pending> = store
        .get(&skey)
        .map_err(store_err)?
        .and_then(|r| serde_json::from_slice(&r).ok());
    let Some(pending) = pending.filter(|p| p.expires_ms > now_ms()) else {
        denied("unknown, used or expired state");
        return Err(fail(
            "sso_failed",
            "this sign-in is unknown, already finished or expired; start again",
        ));
    };
    store.apply(&[(skey, None)]).map_err(store_err)?;
    let endpoints = discover(identity.outbound(), &config).await?;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        percent_encode(&config.client_id),
        percent_encode(&config.client_secret)
    ));
    let body = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}",
        percent_encode(&code),
        percent_encode(&callback_url(identity, tenant)),
        percent_encode(&pending.verifier)
    );
    let r = identity
        .outbound()
        .send(
            "POST",
            &endpoints.token,
            &[
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("authorization", format!("Basic {basic}")),
                ("accept", "application/json".into()),
            ],
            body.into_bytes(),
        )
        .await
        .map_err(|e| ApiError::new(502, "idp_unreachable", e.0))?;
    let tokens: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status != 200 {
        denied(&format!("token endpoint answered {}", r.status));
        return Err(ApiError::new(
            502,
            "sso_failed",
            format!(
                "the provider refused the code: {}",
                tokens["error"].as_str().unwrap_or("error")
            ),
        ));
    }
    let id_token = tokens["id_token"]
        .as_str()
        .ok_or_else(|| ApiError::new(502, "sso_failed", "the provider returned no ID token"))?;
    let jwks = get_json(identity.outbound(), &endpoints.jwks).await?;
    let claims = match verify_id_token(id_token, &jwks, &config, &pending.nonce, now_ms() / 1000) {
        Ok(c) => c,
        Err(why) => {
            denied(&why);
            return Err(ApiError::new(
                401,
                "sso_failed",
                format!("the ID token was refused: {why}"),
            ));
        }
    };
    let subject = claims["sub"].as_str().unwrap_or_default();
    let username = claims[config.username_claim.as_str()]
        .as_str()
        .ok_or_else(|| {
            fail(
                "sso_failed",
                format!("the ID token has no {} claim", config.username_claim),
            )
        })?;
    Ok(identity
        .sso_sign_in(
            &realm,
            &config.issuer,
            subject,
            username,
            claims["name"].as_str(),
            claims["email"].as_str(),
            config.provision,
            source,
        )
        .await?)
}

/// Checks an ID token (compact JWS) against the provider's JWKS and the
/// expected issuer, audience, time and nonce; returns its claims.
pub fn verify_id_token(
    token: &str,
    jwks: &Value,
    config: &SsoConfig,
    nonce: &str,
    now_s: u64,
) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS".into());
    };
    let header: Value = unb64url(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("malformed header")?;
    let kid = header["kid"].as_str();
    let keys = jwks["keys"]
        .as_array()
        .ok_or("the provider's JWKS has no keys")?;
    let signed = format!("{h}.{p}");
    let sig = unb64url(s).ok_or("malformed signature")?;
    match header["alg"].as_str() {
        Some("EdDSA") => verify_eddsa(keys, kid, signed.as_bytes(), &sig)?,
        Some("RS256") => verify_rs256(keys, kid, signed.as_bytes(), &sig)?,
        other => {
            return Err(format!(
                "signature algorithm {} is not accepted (EdDSA and RS256 are)",
                other.unwrap_or("(none)")
            ));
        }
    }
    let claims: Value = unb64url(p)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("malformed claims")?;
    if claims["iss"].as_str() != Some(config.issuer.as_str()) {
        return Err("issued by another issuer".into());
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => *a == config.client_id,
        Value::Array(list) => list
            .iter()
            .any(|a| a.as_str() == Some(config.client_id.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err("issued for another client".into());
    }
    let exp = claims["exp"].as_u64().ok_or("no expiry")?;
    if exp.saturating_add(SKEW_SECS) < now_s {
        return Err("expired".into());
    }
    if claims["iat"]
        .as_u64()
        .is_some_and(|iat| iat > now_s + SKEW_SECS)
    {
        return Err("issued in the future".into());
    }
    if claims["nonce"].as_str() != Some(nonce) {
        return Err("nonce mismatch (replayed or injected token)".into());
    }
    if claims["sub"].as_str().is_none_or(str::is_empty) {
        return Err("no subject".into());
    }
    Ok(claims)
}

fn matching_key<'a>(keys: &'a [Value], kid: Option<&str>, kty: &str) -> Result<&'a Value, String> {
    keys.iter()
        .filter(|k| k["kty"] == kty && k["use"].as_str().is_none_or(|u| u == "sig"))
        .find(|k| kid.is_none() || k["kid"].as_str() == kid)
        .ok_or_else(|| format!("no {kty} key in the provider's JWKS matches the token"))
}

fn verify_eddsa(
    keys: &[Value],
    kid: Option<&str>,
    signed: &[u8],
    sig: &[u8],
) -> Result<(), String> {
    let key = matching_key(keys, kid, "OKP")?;
    if key["crv"] != "Ed25519" {
        return Err("the provider's OKP key is not Ed25519".into());
    }
    let x: [u8; 32] = key["x"]
        .as_str()
        .and_then(unb64url)
        .and_then(|b| b.try_into().ok())
        .ok_or("malformed key")?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|_| "invalid key")?;
    let sig: [u8; 64] = sig.try_into().map_err(|_| "malformed signature")?;
    vk.verify(signed, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| "bad signature".to_string())
}

/// RSASSA-PKCS1-v1_5 with SHA-256 (what most identity providers sign
/// with), keys of 2048-8192 bits.
fn verify_rs256(
    keys: &[Value],
    kid: Option<&str>,
    signed: &[u8],
    sig: &[u8],
) -> Result<(), String> {
    use rsa::signature::Verifier as _;
    use rsa::traits::PublicKeyParts as _;
    let key = matching_key(keys, kid, "RSA")?;
    let n = key["n"]
        .as_str()
        .and_then(unb64url)
        .ok_or("malformed RSA modulus")?;
    let e = key["e"]
        .as_str()
        .and_then(unb64url)
        .ok_or("malformed RSA exponent")?;
    let public = rsa::RsaPublicKey::new_with_max_size(
        rsa::BigUint::from_bytes_be(&n),
        rsa::BigUint::from_bytes_be(&e),
        8192,
    )
    .map_err(|e| format!("invalid RSA key: {e}"))?;
    if public.size() < 256 {
        return Err("RSA keys under 2048 bits are not accepted".into());
    }
    let vk = rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(public);
    let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(|_| "malformed signature")?;
    vk.verify(signed, &sig)
        .map_err(|_| "bad signature".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer as _;

    fn token(key: &ed25519_dalek::SigningKey, claims: Value) -> String {
        let h = b64url(json!({"alg": "EdDSA", "kid": "k1"}).to_string().as_bytes());
        let p = b64url(claims.to_string().as_bytes());
        let sig = key.sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", b64url(&sig.to_bytes()))
    }

    #[test]
    fn id_tokens_are_checked_claim_by_claim() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": b64url(key.verifying_key().as_bytes())}]});
        let config = SsoConfig {
            issuer: "http://127.0.0.1:1/oidc/idp".into(),
            client_id: "c1".into(),
            client_secret: "s".into(),
            username_claim: default_claim(),
            provision: true,
        };
        let good = json!({"iss": config.issuer, "aud": "c1", "exp": 2000, "iat": 1000, "nonce": "n", "sub": "u1"});
        assert!(verify_id_token(&token(&key, good.clone()), &jwks, &config, "n", 1500).is_ok());
        let mut cases = Vec::new();
        for (field, value) in [
            ("iss", json!("http://other")),
            ("aud", json!("c2")),
            ("exp", json!(100)),
            ("nonce", json!("x")),
            ("sub", json!("")),
        ] {
            let mut c = good.clone();
            c[field] = value;
            cases.push(c);
        }
        for c in cases {
            assert!(
                verify_id_token(&token(&key, c.clone()), &jwks, &config, "n", 1500).is_err(),
                "{c}"
            );
        }
        let other = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        assert_eq!(
            verify_id_token(&token(&other, good.clone()), &jwks, &config, "n", 1500).unwrap_err(),
            "bad signature"
        );
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none"}"#),
            b64url(good.to_string().as_bytes())
        );
        assert!(verify_id_token(&none, &jwks, &config, "n", 1500).is_err());
        assert!(verify_id_token("a.b", &jwks, &config, "n", 1500).is_err());
    }
}
