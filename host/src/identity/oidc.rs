//! The OpenID Connect 1.0 / OAuth 2.0 provider's records (SPEC I5): the
//! clients a tenant's admins register, the codes and access tokens issued
//! to them, the tenant's ID-token signing key, and the sweep of expired
//! records. The provider's endpoints and pages are the gateway's
//! (`gateway::oidc`); this module is what they and the admin vocabulary
//! (`admin::Op::OidcClient*`) share. Callers check that the tenant exists.
//!
//! ```text
//! t/{tenant}/oidc/c/{client id}        client (secret hash, redirect URIs)
//! t/{tenant}/oidc/code/{sha256(code)}  pending authorization code
//! t/{tenant}/oidc/at/{sha256(token)}   access token
//! t/{tenant}/oidc/used/{sha256(code)}  a redeemed code (replay detection)
//! ```

use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{self, Scope, outcome};
use crate::error::ApiError;
use crate::identity::{AuthError, Identity};
use crate::support::clock::now_ms;
use crate::support::encoding::{b64url, random_b64url, random_hex, sha256_hex};

/// How long an authorization code lives.
pub(crate) const CODE_TTL_MS: u64 = 60_000;

/// How long an access token lives.
const ACCESS_TTL_MS: u64 = 3_600_000;

/// How long an ID token is valid.
const ID_TOKEN_TTL_SECS: u64 = 600;

/// Code redemption is one at a time (read, check, consume).
static REDEEM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a redeemed code is remembered (to detect replays).
pub(crate) const USED_TTL_MS: u64 = 24 * 3_600_000;

/// Most redirect URIs per client.
pub(crate) const MAX_REDIRECT_URIS: usize = 16;

/// A registered client (relying party).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    pub id: String,
    pub name: String,
    /// SHA-256 (hex) of the secret; `None` for public clients (PKCE only).
    pub secret_hash: Option<String>,
    pub redirect_uris: Vec<String>,
    pub created_ms: u64,
}

/// A client as admins see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientView {
    pub id: String,
    pub name: String,
    pub public: bool,
    pub redirect_uris: Vec<String>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Grant {
    pub(crate) client: String,
    pub(crate) user: String,
    pub(crate) redirect_uri: String,
    pub(crate) challenge: String,
    pub(crate) nonce: Option<String>,
    pub(crate) scope: String,
    pub(crate) auth_time_s: u64,
    pub(crate) expires_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AccessToken {
    pub(crate) client: String,
    pub(crate) user: String,
    pub(crate) scope: String,
    pub(crate) expires_ms: u64,
    /// The code it was issued for (revoked if that code is replayed).
    pub(crate) code: String,
}

pub(crate) fn client_key(tenant: &str, id: &str) -> Vec<u8> {
    format!("t/{tenant}/oidc/c/{id}").into_bytes()
}

pub(crate) fn code_key(tenant: &str, hash: &str) -> Vec<u8> {
    format!("t/{tenant}/oidc/code/{hash}").into_bytes()
}

pub(crate) fn used_key(tenant: &str, hash: &str) -> Vec<u8> {
    format!("t/{tenant}/oidc/used/{hash}").into_bytes()
}

pub(crate) fn token_key(tenant: &str, hash: &str) -> Vec<u8> {
    format!("t/{tenant}/oidc/at/{hash}").into_bytes()
}

pub(crate) fn by_code_key(tenant: &str, code_hash: &str) -> Vec<u8> {
    format!("t/{tenant}/oidc/bycode/{code_hash}").into_bytes()
}

pub(crate) fn random_b64(n: usize) -> String {
    random_b64url(n).unwrap_or_else(|_| random_hex(n))
}

/// Checks a redirect URI at registration: absolute, no fragment, `https`,
/// or `http` to a loopback host (RFC 8252 native apps).
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > 2048 || uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "redirect URI {uri:?} is too long or has spaces or control characters"
        ));
    }
    let parsed: hyper::Uri = uri
        .parse()
        .map_err(|_| format!("redirect URI {uri:?} is not an absolute URI"))?;
    if uri.contains('#') {
        return Err(format!("redirect URI {uri:?} must not have a fragment"));
    }
    let host = parsed.host().unwrap_or_default();
    match parsed.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        _ => Err(format!(
            "redirect URI {uri:?} must use https (or http to 127.0.0.1, localhost or [::1])"
        )),
    }
}

/// Registers a client; returns it and its secret (shown once) unless
/// public.
pub async fn add_client(
    identity: &Identity,
    tenant: &str,
    name: &str,
    redirect_uris: Vec<String>,
    public: bool,
) -> Result<(ClientView, Option<String>), ApiError> {
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::new(
            400,
            "invalid_argument",
            "client name must be 1-128 characters",
        ));
    }
    if redirect_uris.is_empty() || redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(ApiError::new(
            400,
            "invalid_argument",
            format!("a client needs 1-{MAX_REDIRECT_URIS} redirect URIs"),
        ));
    }
    for u in &redirect_uris {
        check_redirect_uri(u).map_err(|m| ApiError::new(400, "invalid_redirect_uri", m))?;
    }
    let secret = (!public).then(|| random_b64(32));
    let client = Client {
        id: format!("c{}", random_hex(12)),
        name: name.to_string(),
        secret_hash: secret.as_ref().map(|s| sha256_hex(s.as_bytes())),
        redirect_uris,
        created_ms: now_ms(),
    };
    identity
        .commit_audited(
            &[(
                client_key(tenant, &client.id),
                Some(serde_json::to_vec(&client).unwrap_or_default()),
            )],
            &Scope::tenant(tenant),
            audit::Record {
                action: "oidc.client.add",
                target: &client.id,
                outcome: outcome::SUCCESS,
                details: &format!(
                    "{} ({}), redirect URIs {:?}",
                    client.name,
                    if public { "public" } else { "confidential" },
                    client.redirect_uris
                ),
            },
        )
        .await?;
    Ok((view(&client), secret))
}

pub(crate) fn view(c: &Client) -> ClientView {
    ClientView {
        id: c.id.clone(),
        name: c.name.clone(),
        public: c.secret_hash.is_none(),
        redirect_uris: c.redirect_uris.clone(),
        created_ms: c.created_ms,
    }
}

/// The tenant's clients.
pub fn clients(identity: &Identity, tenant: &str) -> Result<Vec<ClientView>, ApiError> {
    let prefix = format!("t/{tenant}/oidc/c/").into_bytes();
    let page = identity
        .store()
        .scan(&prefix, None, 10_000)
        .map_err(AuthError::from)?;
    Ok(page
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<Client>(v).ok())
        .map(|c| view(&c))
        .collect())
}

/// Removes a client; its tokens stop working.
pub async fn remove_client(identity: &Identity, tenant: &str, id: &str) -> Result<(), ApiError> {
    let store = identity.store();
    if store
        .get(&client_key(tenant, id))
        .map_err(AuthError::from)?
        .is_none()
    {
        return Err(ApiError::new(
            404,
            "not_found",
            format!("client {id} not found"),
        ));
    }
    identity
        .commit_audited(
            &[(client_key(tenant, id), None)],
            &Scope::tenant(tenant),
            audit::Record {
                action: "oidc.client.remove",
                target: id,
                outcome: outcome::SUCCESS,
                details: "",
            },
        )
        .await?;
    Ok(())
}

pub(crate) fn client(identity: &Identity, tenant: &str, id: &str) -> Option<Client> {
    if id.is_empty() || id.len() > 64 {
        return None;
    }
    let raw = identity.store().get(&client_key(tenant, id)).ok()??;
    serde_json::from_slice(&raw).ok()
}

/// The tenant's ID-token signing key (derived from its tenant key: nothing
/// stored, destroyed with the tenant).
pub(crate) fn signing_key(
    identity: &Identity,
    tenant: &str,
) -> Result<ed25519_dalek::SigningKey, ApiError> {
    let key = identity
        .store()
        .tenant_key(tenant)
        .map_err(AuthError::from)?;
    Ok(ed25519_dalek::SigningKey::from_bytes(
        &key.derive(b"oidc\0id-token\0ed25519"),
    ))
}

pub(crate) fn kid(key: &ed25519_dalek::VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

pub(crate) fn issuer(identity: &Identity, tenant: &str) -> String {
    format!("{}/oidc/{tenant}", identity.public_url())
}

/// The profile and e-mail claims the granted scopes allow.
pub(crate) fn profile_claims(
    scope: &str,
    user: &crate::identity::UserView,
    out: &mut serde_json::Value,
) {
    let scopes: Vec<&str> = scope.split(' ').collect();
    if scopes.contains(&"profile") {
        out["name"] = json!(user.display_name);
        out["preferred_username"] = json!(user.username);
    }
    if scopes.contains(&"email")
        && let Some(e) = &user.email
    {
        out["email"] = json!(e);
    }
}

pub(crate) fn revoke_tokens_of(identity: &Identity, tenant: &str, code_hash: &str) {
    let store = identity.store();
    if let Ok(Some(token_hash)) = store.get(&by_code_key(tenant, code_hash)) {
        let token = token_key(tenant, &String::from_utf8_lossy(&token_hash));
        let _ = store.apply(&[(token, None), (by_code_key(tenant, code_hash), None)]);
    }
}

/// Stores a single-use authorization code for `grant` durably and audits
/// it; returns the code (only its hash is stored).
pub(crate) async fn issue_code(
    identity: &Identity,
    tenant: &str,
    grant: Grant,
) -> Result<String, crate::store::StoreError> {
    let code = random_b64(32);
    let store = identity.store();
    let seq = store.apply(&[(
        code_key(tenant, &sha256_hex(code.as_bytes())),
        Some(serde_json::to_vec(&grant).unwrap_or_default()),
    )])?;
    store.durable(seq).await?;
    identity.trail().note(
        &Scope::tenant(tenant),
        "oidc.authorize",
        &grant.client,
        outcome::SUCCESS,
        &format!("code issued for user {}", grant.user),
    );
    Ok(code)
}

/// A token request (RFC 6749 4.1.3), as the token endpoint parsed it.
pub(crate) struct Redeem<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) secret: Option<&'a str>,
    pub(crate) code: &'a str,
    pub(crate) redirect_uri: Option<&'a str>,
    pub(crate) code_verifier: &'a str,
}

/// What a redeemed code yields.
pub(crate) struct Tokens {
    pub(crate) access_token: String,
    pub(crate) expires_in_s: u64,
    pub(crate) id_token: String,
    pub(crate) scope: String,
}

/// A token endpoint refusal (RFC 6749 5.2): HTTP status, error code and
/// description.
#[derive(Debug)]
pub(crate) struct TokenError {
    pub(crate) status: u16,
    pub(crate) error: &'static str,
    pub(crate) description: String,
}

fn refuse(status: u16, error: &'static str, description: &str) -> TokenError {
    TokenError {
        status,
        error,
        description: description.to_string(),
    }
}

/// Redeems an authorization code (SPEC I5): authenticates the client,
/// consumes the code exactly once (a replay revokes the tokens issued for
/// it), checks the redirect URI and PKCE, and issues an access token and
/// an Ed25519-signed ID token.
pub(crate) async fn redeem(
    identity: &Identity,
    tenant: &str,
    req: Redeem<'_>,
) -> Result<Tokens, TokenError> {
    let client_failed = || refuse(401, "invalid_client", "client authentication failed");
    let client = client(identity, tenant, req.client_id).ok_or_else(client_failed)?;
    let authenticated = match (&client.secret_hash, req.secret) {
        (Some(h), Some(s)) => {
            let given = sha256_hex(s.as_bytes());
            // Equal-length hex strings: compare without early exit.
            given.len() == h.len()
                && given
                    .bytes()
                    .zip(h.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        (None, None) => true,
        _ => false,
    };
    if !authenticated {
        return Err(client_failed());
    }
    let store = identity.store();
    let trail = identity.trail();
    let realm = Scope::tenant(tenant);
    let hash = sha256_hex(req.code.as_bytes());
    let unavailable = || refuse(503, "temporarily_unavailable", "storage is unavailable");
    // Single use: the code is deleted as it is redeemed; a second use is a
    // replay, and the tokens issued for it are revoked (RFC 6749 4.1.2).
    // Redemption is serialised so two parallel requests cannot both win.
    let redeeming = REDEEM.lock().await;
    let grant: Option<Grant> = store
        .get(&code_key(tenant, &hash))
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_slice(&raw).ok());
    let Some(grant) = grant else {
        if store.get(&used_key(tenant, &hash)).ok().flatten().is_some() {
            revoke_tokens_of(identity, tenant, &hash);
            trail.note(
                &realm,
                "oidc.token",
                &client.id,
                outcome::DENIED,
                "authorization code replayed; its tokens are revoked",
            );
        }
        return Err(refuse(
            400,
            "invalid_grant",
            "the authorization code is invalid, expired or already used",
        ));
    };
    // Another client (or a wrong redirect URI) cannot burn the code.
    if grant.client != client.id {
        return Err(refuse(
            400,
            "invalid_grant",
            "the authorization code was issued to another client",
        ));
    }
    if req.redirect_uri != Some(grant.redirect_uri.as_str()) {
        return Err(refuse(
            400,
            "invalid_grant",
            "redirect_uri differs from the authorization request",
        ));
    }
    let used = store.apply(&[
        (code_key(tenant, &hash), None),
        (
            used_key(tenant, &hash),
            Some(now_ms().to_string().into_bytes()),
        ),
    ]);
    drop(redeeming);
    used.map_err(|_| unavailable())?;
    if grant.expires_ms < now_ms() {
        return Err(refuse(
            400,
            "invalid_grant",
            "the authorization code expired",
        ));
    }
    let verifier = req.code_verifier;
    let verifier_ok = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !verifier_ok || b64url(&Sha256::digest(verifier.as_bytes())) != grant.challenge {
        trail.note(
            &realm,
            "oidc.token",
            &client.id,
            outcome::DENIED,
            "PKCE verification failed",
        );
        return Err(refuse(
            400,
            "invalid_grant",
            "code_verifier does not match the code_challenge",
        ));
    }
    let Ok(Some(user)) = identity.user(&realm, &grant.user) else {
        return Err(refuse(400, "invalid_grant", "the user no longer exists"));
    };
    if !user.active {
        return Err(refuse(
            400,
            "invalid_grant",
            "the user's account is disabled",
        ));
    }
    let access = random_b64(32);
    let record = AccessToken {
        client: client.id.clone(),
        user: user.id.clone(),
        scope: grant.scope.clone(),
        expires_ms: now_ms() + ACCESS_TTL_MS,
        code: hash.clone(),
    };
    let key = signing_key(identity, tenant).map_err(|_| {
        refuse(
            503,
            "temporarily_unavailable",
            "the signing key is unavailable",
        )
    })?;
    let now_s = now_ms() / 1000;
    let mut claims = json!({
        "iss": issuer(identity, tenant),
        "sub": user.id,
        "aud": client.id,
        "iat": now_s,
        "exp": now_s + ID_TOKEN_TTL_SECS,
        "auth_time": grant.auth_time_s,
    });
    if let Some(n) = &grant.nonce {
        claims["nonce"] = json!(n);
    }
    profile_claims(&grant.scope, &user, &mut claims);
    let vk = key.verifying_key();
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid(&vk)});
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = key.sign(signing_input.as_bytes());
    let id_token = format!("{signing_input}.{}", b64url(&sig.to_bytes()));
    let access_hash = sha256_hex(access.as_bytes());
    let seq = store
        .apply(&[
            (
                by_code_key(tenant, &hash),
                Some(access_hash.clone().into_bytes()),
            ),
            (
                token_key(tenant, &access_hash),
                Some(serde_json::to_vec(&record).unwrap_or_default()),
            ),
        ])
        .map_err(|_| unavailable())?;
    store.durable(seq).await.map_err(|_| unavailable())?;
    trail.note(
        &realm,
        "oidc.token",
        &client.id,
        outcome::SUCCESS,
        &format!("tokens issued for user {}", user.id),
    );
    Ok(Tokens {
        access_token: access,
        expires_in_s: ACCESS_TTL_MS / 1000,
        id_token,
        scope: grant.scope,
    })
}

/// The claims an access token may read (OIDC Core 5.3): `None` when the
/// token is missing, expired, its client gone or its user disabled.
pub(crate) fn userinfo(
    identity: &Identity,
    tenant: &str,
    token: &str,
) -> Option<serde_json::Value> {
    let record: AccessToken = identity
        .store()
        .get(&token_key(tenant, &sha256_hex(token.as_bytes())))
        .ok()
        .flatten()
        .and_then(|raw| serde_json::from_slice(&raw).ok())?;
    if record.expires_ms <= now_ms() {
        return None;
    }
    client(identity, tenant, &record.client)?;
    let user = identity
        .user(&Scope::tenant(tenant), &record.user)
        .ok()
        .flatten()?;
    if !user.active {
        return None;
    }
    let mut out = json!({"sub": user.id});
    profile_claims(&record.scope, &user, &mut out);
    Some(out)
}

/// Deletes a tenant's expired codes, replay markers, access tokens and
/// pending single sign-ons (the maintenance loop, hourly). Returns how
/// many records went.
pub fn sweep_expired(
    store: &crate::store::Store,
    tenant: &str,
    now: u64,
) -> Result<usize, crate::store::StoreError> {
    let mut gone = 0;
    for part in ["oidc/code/", "oidc/used/", "oidc/at/", "sso/state/"] {
        let prefix = format!("t/{tenant}/{part}").into_bytes();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.scan(&prefix, after.as_deref(), 512)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            let mut writes: Vec<crate::store::Write> = Vec::new();
            for (k, v) in &page {
                let expires = match part {
                    "oidc/used/" => String::from_utf8_lossy(v)
                        .parse::<u64>()
                        .map(|t| t.saturating_add(USED_TTL_MS))
                        .unwrap_or(0),
                    _ => serde_json::from_slice::<serde_json::Value>(v)
                        .ok()
                        .and_then(|j| j["expires_ms"].as_u64())
                        .unwrap_or(0),
                };
                if expires <= now {
                    gone += 1;
                    writes.push((k.clone(), None));
                    if part == "oidc/at/"
                        && let Ok(t) = serde_json::from_slice::<AccessToken>(v)
                    {
                        writes.push((by_code_key(tenant, &t.code), None));
                    }
                }
            }
            store.apply(&writes)?;
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_checked_at_registration() {
        assert!(check_redirect_uri("https://app.example/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:9000/cb").is_ok());
        for bad in [
            "http://app.example/cb",
            "https://app.example/cb#x",
            "/cb",
            "javascript:alert(1)",
            "https://a b/",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }
}
