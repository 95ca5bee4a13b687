//! The OpenID Connect provider (SPEC I5), driven end to end by the
//! `openidconnect` crate as a relying party (discovery, PKCE S256, code
//! exchange, ID token signature and nonce, userinfo), then the negative
//! cases of RFC 9700 with raw requests: unregistered, prefixed and encoded
//! redirect URIs, a reused code, missing and `plain` PKCE, implicit and
//! password grants, wrong verifiers, clients and tenants.

use std::collections::HashMap;

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
};
use serde_json::{Value, json};
use switchboard::admin::Op;
use switchboard::harness::Harness;
use switchboard_tests::accounts::{STRONG, activate, console, create_user};
use switchboard_tests::http::{Reply, Server, request, test_pki};

const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// The relying party's HTTP client: requests go to the test server over
/// real sockets.
async fn http_client(
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, std::io::Error> {
    let uri = req.uri().clone();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap())
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let target = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or("/".into());
    let reply = request(addr, req.method().as_str(), &target, &headers, req.body()).await;
    let mut resp = http::Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    Ok(resp.body(reply.body).unwrap())
}

struct Provider {
    h: Harness,
    s: Server,
    client_id: String,
    secret: String,
}

async fn provider() -> Provider {
    let h = Harness::with_config(|c| {
        c.identity.allow_loopback_idp = true;
        c.identity.idp_ca_file = Some(test_pki().ca_file.clone());
    })
    .unwrap();
    let s = Server::start(h.runtime().clone()).await;
    for t in ["acme", "beta"] {
        h.runtime().create_tenant(t, None).await.unwrap();
    }
    let (_, welcome) = create_user(&h, "acme", "alice", "user").await;
    activate(&s, Some("acme"), "alice", &welcome).await;
    console(
        &h,
        Op::UserUpdate {
            realm: "acme".into(),
            user: h
                .runtime()
                .identity()
                .user_by_name(&switchboard::audit::Scope::tenant("acme"), "alice")
                .unwrap()
                .unwrap()
                .id,
            change: serde_json::from_value(
                json!({"email": "alice@acme.example", "display_name": "Alice A."}),
            )
            .unwrap(),
        },
    )
    .await;
    let v = console(
        &h,
        Op::OidcClientAdd {
            tenant: "acme".into(),
            name: "Wiki".into(),
            redirect_uris: vec![REDIRECT.into()],
            public: false,
        },
    )
    .await;
    Provider {
        client_id: v["client"]["id"].as_str().unwrap().to_string(),
        secret: v["client_secret"].as_str().unwrap().to_string(),
        h,
        s,
    }
}

fn issuer(p: &Provider, tenant: &str) -> String {
    p.s.url(&format!("/oidc/{tenant}"))
}

fn query_of(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    switchboard::support::encoding::form_decode(q)
}

fn path_of(url: &str) -> String {
    let after = url.split_once("://").unwrap().1;
    after[after.find('/').unwrap()..].to_string()
}

/// Plays the browser: opens the authorization URL, fills in the sign-in
/// form, and returns the redirect's Location.
async fn sign_in(p: &Provider, auth_url: &str, password: &str) -> Reply {
    submit(p, &path_of(auth_url), "alice", password).await
}

/// Plays the browser at the provider: opens the authorization `path`,
/// fills in the sign-in form (with its CSRF pairing) and posts it.
async fn submit(p: &Provider, path: &str, user: &str, password: &str) -> Reply {
    let page = p.s.call("GET", path, None, None).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    let body = format!(
        "request={}&username={user}&password={}&csrf={}",
        urlencode(&form_field(&html, "request")),
        urlencode(password),
        form_field(&html, "csrf")
    );
    let headers = vec![
        (
            "content-type".to_string(),
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("cookie".to_string(), cookie_of(&page)),
    ];
    let target = path.split('?').next().unwrap().to_string();
    request(p.s.addr, "POST", &target, &headers, body.as_bytes()).await
}

/// A hidden form field's value.
fn form_field(html: &str, name: &str) -> String {
    let marker = format!("name={name} value=\"");
    let start = html.find(&marker).expect("the field") + marker.len();
    html[start..start + html[start..].find('"').unwrap()].replace("&amp;", "&")
}

/// The `name=value` part of a response's Set-Cookie.
fn cookie_of(r: &Reply) -> String {
    r.header("set-cookie")
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn i5_a_mainstream_client_signs_in_with_pkce_and_verifies_the_id_token() {
    let p = provider().await;
    let metadata = CoreProviderMetadata::discover_async(
        IssuerUrl::new(issuer(&p, "acme")).unwrap(),
        &http_client,
    )
    .await
    .expect("discovery");
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(p.client_id.clone()),
        Some(ClientSecret::new(p.secret.clone())),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();

    // A wrong password re-shows the form; no code is issued.
    let r = sign_in(&p, auth_url.as_str(), "Wrong-pass1").await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("sign-in failed"));

    let r = sign_in(&p, auth_url.as_str(), STRONG).await;
    assert_eq!(r.status, 303, "{}", r.text());
    let location = r.header("location").unwrap().to_string();
    assert!(location.starts_with(REDIRECT));
    // The provider's browser session is no API token.
    let provider_session = cookie_of(&r);
    let (name, value) = provider_session.split_once('=').unwrap();
    assert_eq!(name, "sb_oidc");
    let me = p.s.call("GET", "/api/v1/auth/me", Some(value), None).await;
    assert_eq!(me.code(), "unauthenticated");
    let q = query_of(&location);
    assert_eq!(q["state"], *csrf.secret());
    assert_eq!(q["iss"], issuer(&p, "acme"));
    let code = q["code"].clone();

    let tokens = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http_client)
        .await
        .expect("code exchange");
    let id_token = tokens.id_token().expect("an ID token");
    let verifier = client
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EdDsa]);
    let claims = id_token
        .claims(&verifier, &nonce)
        .expect("a valid, signed ID token");
    assert_eq!(claims.issuer().as_str(), issuer(&p, "acme"));
    assert_eq!(claims.preferred_username().unwrap().as_str(), "alice");
    assert_eq!(claims.email().unwrap().as_str(), "alice@acme.example");
    // A wrong nonce is caught by the client.
    assert!(
        id_token
            .claims(&verifier, &Nonce::new("other".into()))
            .is_err()
    );

    let info: CoreUserInfoClaims = client
        .user_info(tokens.access_token().to_owned(), None)
        .unwrap()
        .request_async(&http_client)
        .await
        .expect("userinfo");
    assert_eq!(info.subject().as_str(), claims.subject().as_str());

    // A second authorization reuses the provider session (cookie-less
    // here: the form again), and the code cannot be replayed: its tokens
    // are revoked when someone tries.
    let replay = token_request(
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &"a".repeat(43)),
        ],
        true,
    )
    .await;
    assert_eq!(replay.json()["error"], "invalid_grant");
    let r =
        p.s.call(
            "GET",
            "/oidc/acme/userinfo",
            Some(tokens.access_token().secret()),
            None,
        )
        .await;
    assert_eq!(r.status, 401, "the replayed code's tokens are revoked");

    // The ID token does not verify against another tenant's keys.
    let beta = CoreProviderMetadata::discover_async(
        IssuerUrl::new(issuer(&p, "beta")).unwrap(),
        &http_client,
    )
    .await
    .unwrap();
    let beta_client =
        CoreClient::from_provider_metadata(beta, ClientId::new(p.client_id.clone()), None);
    let beta_verifier = beta_client
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EdDsa])
        .require_issuer_match(false);
    assert!(id_token.claims(&beta_verifier, &nonce).is_err());
    let trail = console(
        &p.h,
        Op::AuditExport {
            realm: "acme".into(),
            after: 0,
            limit: 1000,
        },
    )
    .await;
    let actions: Vec<&str> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["oidc.authorize", "oidc.token"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
}

async fn token_request(p: &Provider, fields: &[(&str, &str)], basic: bool) -> Reply {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    let mut headers = vec![(
        "content-type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    if basic {
        use base64::Engine as _;
        let cred = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", p.client_id, p.secret));
        headers.push(("authorization".into(), format!("Basic {cred}")));
    }
    request(
        p.s.addr,
        "POST",
        "/oidc/acme/token",
        &headers,
        body.join("&").as_bytes(),
    )
    .await
}

/// A fixed PKCE verifier for the raw requests.
const VERIFIER: &str = "dBjftJeZ4CVP-mJ92IgGMeEt6rE-0wI0t3cz5RzEo7Y";

fn authorize_path(client: &str, redirect: &str, extra: &str) -> String {
    let challenge =
        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(VERIFIER.into()));
    format!(
        "/oidc/acme/authorize?response_type=code&client_id={client}&redirect_uri={}&scope=openid&state=s1&code_challenge={}&code_challenge_method=S256{extra}",
        urlencode(redirect),
        challenge.as_str()
    )
}

/// Signs in through the form for `path` and returns the code.
async fn code_for(p: &Provider, path: &str) -> String {
    let url = p.s.url(path);
    let r = sign_in(p, &url, STRONG).await;
    assert_eq!(r.status, 303, "{}", r.text());
    query_of(r.header("location").unwrap())["code"].clone()
}

#[tokio::test]
async fn i5_rfc9700_negative_cases_are_refused() {
    let p = provider().await;
    // Redirect URIs must match exactly: never redirect to anything else.
    for bad in [
        "http://127.0.0.1:9/callback/evil",
        "http://127.0.0.1:9/callbackx",
        "http://127.0.0.1:9/callback?x=1",
        "http://127.0.0.1:9/%63allback",
        "http://127.0.0.1:9/Callback",
        "http://127.0.0.1:10/callback",
        "http://attacker.example/callback",
    ] {
        let r =
            p.s.call("GET", &authorize_path(&p.client_id, bad, ""), None, None)
                .await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.header("location").is_none(), "{bad}: never redirected");
    }
    let r =
        p.s.call("GET", &authorize_path("cunknown", REDIRECT, ""), None, None)
            .await;
    assert_eq!((r.status, r.header("location")), (400, None));

    // Implicit flow, missing and plain PKCE: errors go back to the client.
    let implicit = authorize_path(&p.client_id, REDIRECT, "")
        .replace("response_type=code", "response_type=token");
    let r = p.s.call("GET", &implicit, None, None).await;
    assert_eq!(r.status, 303);
    assert_eq!(
        query_of(r.header("location").unwrap())["error"],
        "unsupported_response_type"
    );
    let no_pkce =
        authorize_path(&p.client_id, REDIRECT, "").replace("&code_challenge_method=S256", "");
    let r = p.s.call("GET", &no_pkce, None, None).await;
    assert_eq!(
        query_of(r.header("location").unwrap())["error"],
        "invalid_request"
    );
    let plain = authorize_path(&p.client_id, REDIRECT, "").replace("method=S256", "method=plain");
    let r = p.s.call("GET", &plain, None, None).await;
    let q = query_of(r.header("location").unwrap());
    assert_eq!(q["error"], "invalid_request");
    assert!(q["error_description"].contains("S256"));
    let no_openid =
        authorize_path(&p.client_id, REDIRECT, "").replace("scope=openid", "scope=email");
    let r = p.s.call("GET", &no_openid, None, None).await;
    assert_eq!(
        query_of(r.header("location").unwrap())["error"],
        "invalid_scope"
    );

    // Token endpoint: password, client-credentials and implicit-style
    // grants are refused.
    for grant in [
        "password",
        "client_credentials",
        "implicit",
        "refresh_token",
    ] {
        let r = token_request(
            &p,
            &[
                ("grant_type", grant),
                ("username", "alice"),
                ("password", STRONG),
            ],
            true,
        )
        .await;
        assert_eq!(
            (r.status, r.json()["error"].as_str().unwrap()),
            (400, "unsupported_grant_type"),
            "{grant}"
        );
    }

    let verifier = VERIFIER;
    // A wrong verifier, a wrong redirect URI, a wrong secret, another
    // client: each is refused, and the code is then spent.
    let code = code_for(&p, &authorize_path(&p.client_id, REDIRECT, "")).await;
    let r = token_request(
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &"x".repeat(43)),
        ],
        true,
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    let r = token_request(
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
        true,
    )
    .await;
    assert_eq!(
        r.json()["error"],
        "invalid_grant",
        "a code is single-use, even after a failed redemption"
    );

    let code = code_for(&p, &authorize_path(&p.client_id, REDIRECT, "")).await;
    let r = token_request(
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/other"),
            ("code_verifier", verifier),
        ],
        true,
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");

    let code = code_for(&p, &authorize_path(&p.client_id, REDIRECT, "")).await;
    let r = token_request(
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", &p.client_id),
            ("client_secret", "wrong"),
        ],
        false,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str().unwrap()),
        (401, "invalid_client")
    );
    // Missing verifier entirely.
    let r = token_request(
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ],
        true,
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_grant");

    let other = console(
        &p.h,
        Op::OidcClientAdd {
            tenant: "acme".into(),
            name: "Other".into(),
            redirect_uris: vec![REDIRECT.into()],
            public: true,
        },
    )
    .await;
    let other_id = other["client"]["id"].as_str().unwrap().to_string();
    let code = code_for(&p, &authorize_path(&p.client_id, REDIRECT, "")).await;
    let r = token_request(
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
            ("client_id", &other_id),
        ],
        false,
    )
    .await;
    assert_eq!(
        r.json()["error"],
        "invalid_grant",
        "a code is bound to its client"
    );

    // The right everything works once.
    let code = code_for(&p, &authorize_path(&p.client_id, REDIRECT, "")).await;
    let ok = token_request(
        &p,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
        true,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The same code at another tenant's token endpoint: unknown client.
    let body = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={verifier}&client_id={}",
        urlencode(REDIRECT),
        p.client_id
    );
    let headers = vec![(
        "content-type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    let r = request(
        p.s.addr,
        "POST",
        "/oidc/beta/token",
        &headers,
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_client");
    // Garbage and oversized inputs.
    let r =
        p.s.call("GET", "/oidc/acme/userinfo", Some("not-a-token"), None)
            .await;
    assert_eq!(r.status, 401);
    let huge = format!("/oidc/acme/authorize?x={}", "a".repeat(9000));
    assert_eq!(p.s.call("GET", &huge, None, None).await.status, 400);
    let r =
        p.s.call(
            "GET",
            "/oidc/nope/.well-known/openid-configuration",
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    // Registration refuses unsafe redirect URIs.
    let err = switchboard::admin::execute(
        p.h.runtime(),
        &switchboard::admin::Actor::Console,
        Op::OidcClientAdd {
            tenant: "acme".into(),
            name: "Bad".into(),
            redirect_uris: vec!["http://attacker.example/cb".into()],
            public: true,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "invalid_redirect_uri");
    let _: Value = ok.json();
}

/// Follows a `/api/v1/auth/sso/{tenant}/start` redirect through the
/// provider's sign-in form; returns the callback path and query.
async fn federate(p: &Provider, tenant: &str, user: &str) -> (String, String) {
    let r =
        p.s.call(
            "GET",
            &format!("/api/v1/auth/sso/{tenant}/start"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let browser = cookie_of(&r);
    assert!(browser.starts_with("sb_sso_"), "{browser}");
    let to_idp = r.header("location").unwrap().to_string();
    assert!(to_idp.starts_with(&issuer(p, "idp")), "{to_idp}");
    let r = submit(p, &path_of(&to_idp), user, STRONG).await;
    assert_eq!(r.status, 303, "{}", r.text());
    (path_of(r.header("location").unwrap()), browser)
}

/// Finishes an SSO sign-in as the browser holding `cookie`.
async fn finish(p: &Provider, back: &str, cookie: &str) -> Reply {
    let headers = vec![("cookie".to_string(), cookie.to_string())];
    request(p.s.addr, "GET", back, &headers, b"").await
}

#[tokio::test]
async fn i6_a_tenant_signs_its_users_in_through_an_external_provider() {
    let p = provider().await;
    // The external provider: another tenant of a Switchboard server.
    p.h.runtime().create_tenant("idp", None).await.unwrap();
    let (_, w) = create_user(&p.h, "idp", "bob", "user").await;
    activate(&p.s, Some("idp"), "bob", &w).await;
    let callback = p.s.url("/api/v1/auth/sso/acme/callback");
    let client = console(
        &p.h,
        Op::OidcClientAdd {
            tenant: "idp".into(),
            name: "Acme Switchboard".into(),
            redirect_uris: vec![callback],
            public: false,
        },
    )
    .await;
    let config = json!({
        "issuer": issuer(&p, "idp"),
        "client_id": client["client"]["id"],
        "client_secret": client["client_secret"],
    });
    // Tenant admins configure it; a user cannot.
    let (_, w) = create_user(&p.h, "acme", "acme-admin", "tenant-admin").await;
    let admin = activate(&p.s, Some("acme"), "acme-admin", &w).await;
    let r =
        p.s.call(
            "PUT",
            "/api/v1/admin/tenants/acme/sso",
            Some(&admin),
            Some(&config),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["client_secret"],
        "(set)",
        "the secret is never shown again"
    );
    let bad = json!({"issuer": "http://idp.example", "client_id": "x", "client_secret": "y"});
    let r =
        p.s.call(
            "PUT",
            "/api/v1/admin/tenants/acme/sso",
            Some(&admin),
            Some(&bad),
        )
        .await;
    assert_eq!(r.code(), "invalid_issuer");

    // Bob of the provider signs in to acme: an account is provisioned and
    // linked; the session is acme's.
    let (back, browser) = federate(&p, "acme", "bob").await;
    // Another browser (no cookie) cannot finish it: no login CSRF.
    assert_eq!(
        p.s.call("GET", &back, None, None).await.code(),
        "sso_failed"
    );
    let (back, browser2) = federate(&p, "acme", "bob").await;
    assert_eq!(
        finish(&p, &back, &browser).await.code(),
        "sso_failed",
        "another sign-in's cookie"
    );
    let r = finish(&p, &back, &browser2).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("sb1.acme."));
    let me =
        p.s.call("GET", "/api/v1/auth/me", Some(&token), None)
            .await
            .json();
    assert_eq!(me["user"]["username"], "bob");
    assert_eq!(me["user"]["federated"], true);
    let first_id = me["user"]["id"].clone();
    // The callback cannot be replayed.
    assert_eq!(finish(&p, &back, &browser2).await.code(), "sso_failed");
    // A second sign-in reaches the same account.
    let (back, browser) = federate(&p, "acme", "bob").await;
    let token = finish(&p, &back, &browser).await.json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let me =
        p.s.call("GET", "/api/v1/auth/me", Some(&token), None)
            .await
            .json();
    assert_eq!(me["user"]["id"], first_id);
    // The federated account has no password to guess.
    assert_eq!(
        switchboard_tests::accounts::login(&p.s, Some("acme"), "bob", STRONG)
            .await
            .code(),
        "invalid_credentials"
    );

    // A forged state and a mix-up issuer are refused.
    let (back, browser) = federate(&p, "acme", "bob").await;
    let forged = back.replace("state=", "state=x");
    assert_eq!(finish(&p, &forged, &browser).await.code(), "sso_failed");
    let mixed = format!("{back}&iss=http%3A%2F%2Fevil.example");
    assert_eq!(finish(&p, &mixed, &browser).await.code(), "sso_failed");
    // An existing local account of the same name is never taken over.
    let (_, w) = create_user(&p.h, "idp", "alice", "user").await;
    activate(&p.s, Some("idp"), "alice", &w).await;
    let (back, browser) = federate(&p, "acme", "alice").await;
    let r = finish(&p, &back, &browser).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "already_exists"),
        "{}",
        r.text()
    );
    // Tenants without a provider say so.
    let r =
        p.s.call("GET", "/api/v1/auth/sso/beta/start", None, None)
            .await;
    assert_eq!(r.code(), "sso_not_configured");
    let trail = console(
        &p.h,
        Op::AuditExport {
            realm: "acme".into(),
            after: 0,
            limit: 10_000,
        },
    )
    .await;
    let sso: Vec<&Value> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "auth.sso")
        .collect();
    assert!(
        sso.iter().any(|e| e["outcome"] == "success")
            && sso.iter().any(|e| e["outcome"] != "success")
    );
}

#[tokio::test]
async fn i5_a_cross_site_form_post_signs_no_one_in() {
    let p = provider().await;
    let path = authorize_path(&p.client_id, REDIRECT, "");
    let query = path.split_once('?').unwrap().1.to_string();
    // A post that did not come from the provider's own page (no CSRF
    // cookie, or a mismatching one) is refused with the form again.
    for (cookie, field) in [("", ""), ("sb_oidc_csrf=aaaa", "bbbb")] {
        let body = format!(
            "request={}&username=alice&password={}&csrf={field}",
            urlencode(&query),
            urlencode(STRONG)
        );
        let headers = vec![
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("cookie".to_string(), cookie.to_string()),
        ];
        let r = request(
            p.s.addr,
            "POST",
            "/oidc/acme/authorize",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(r.header("location").is_none());
    }
}

#[tokio::test]
async fn i6_providers_on_this_machine_or_network_need_the_operator() {
    let h = Harness::new().unwrap();
    h.runtime().create_tenant("acme", None).await.unwrap();
    for (issuer, why) in [
        ("http://127.0.0.1:1/oidc/x", "loopback"),
        ("https://10.1.2.3/oidc/x", "non-public"),
        ("https://169.254.169.254/x", "non-public"),
        ("http://idp.example/x", "https"),
    ] {
        let err = switchboard::admin::execute(
            h.runtime(),
            &switchboard::admin::Actor::Console,
            Op::SsoSet {
                tenant: "acme".into(),
                config: serde_json::from_value(
                    json!({"issuer": issuer, "client_id": "c", "client_secret": "s"}),
                )
                .unwrap(),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, "invalid_issuer", "{issuer}");
        assert!(err.message.contains(why), "{issuer}: {}", err.message);
    }
}

#[tokio::test]
async fn i6_single_sign_on_reaches_the_provider_over_verified_tls() {
    // The server's certificate is signed by a private CA that only the
    // operator's CA file vouches for; the issuer is reached by name.
    let h = Harness::with_config(|c| {
        c.identity.allow_loopback_idp = true;
        c.identity.idp_ca_file = Some(test_pki().ca_file.clone());
    })
    .unwrap();
    let s = Server::start(h.runtime().clone()).await;
    let public = format!("https://localhost:{}", s.addr.port());
    h.runtime().set_public_url(&public);
    for t in ["acme", "idp"] {
        h.runtime().create_tenant(t, None).await.unwrap();
    }
    let (_, w) = create_user(&h, "idp", "bob", "user").await;
    activate(&s, Some("idp"), "bob", &w).await;
    let client = console(
        &h,
        Op::OidcClientAdd {
            tenant: "idp".into(),
            name: "Acme".into(),
            redirect_uris: vec![format!("{public}/api/v1/auth/sso/acme/callback")],
            public: false,
        },
    )
    .await;
    console(
        &h,
        Op::SsoSet {
            tenant: "acme".into(),
            config: serde_json::from_value(json!({
                "issuer": format!("{public}/oidc/idp"),
                "client_id": client["client"]["id"],
                "client_secret": client["client_secret"],
            }))
            .unwrap(),
        },
    )
    .await;
    let p = Provider {
        h,
        s,
        client_id: String::new(),
        secret: String::new(),
    };
    // Discovery, the code exchange and the JWKS all go through TLS,
    // verified against the operator's CA file.
    let r =
        p.s.call("GET", "/api/v1/auth/sso/acme/start", None, None)
            .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let browser = cookie_of(&r);
    let to_idp = r.header("location").unwrap().to_string();
    assert!(
        to_idp.starts_with(&format!("{public}/oidc/idp/authorize")),
        "{to_idp}"
    );
    let r = submit(&p, &path_of(&to_idp), "bob", STRONG).await;
    assert_eq!(r.status, 303, "{}", r.text());
    let back = path_of(r.header("location").unwrap());
    let r = finish(&p, &back, &browser).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["token"].as_str().unwrap().starts_with("sb1.acme."));
}

#[tokio::test]
async fn i6_a_provider_certificate_outside_the_trusted_roots_is_refused() {
    // No CA file: the test CA is not among Mozilla's roots.
    let h = Harness::with_config(|c| c.identity.allow_loopback_idp = true).unwrap();
    let s = Server::start(h.runtime().clone()).await;
    let port = s.addr.port();
    h.runtime().create_tenant("acme", None).await.unwrap();
    console(
        &h,
        Op::SsoSet {
            tenant: "acme".into(),
            config: serde_json::from_value(json!({
                "issuer": format!("https://localhost:{port}/oidc/acme"),
                "client_id": "c",
                "client_secret": "s",
            }))
            .unwrap(),
        },
    )
    .await;
    let r = s
        .call("GET", "/api/v1/auth/sso/acme/start", None, None)
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "idp_unreachable"),
        "{}",
        r.text()
    );
    assert!(
        r.json()["message"].as_str().unwrap().contains("TLS"),
        "{}",
        r.text()
    );
}

#[test]
fn i6_rs256_id_tokens_from_mainstream_providers_verify() {
    use base64::Engine as _;
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding as _, Signer as _};
    use rsa::traits::PublicKeyParts as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut rng = rand::thread_rng();
    let private = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let public = private.to_public_key();
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "r1", "use": "sig", "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())}]});
    let config: switchboard::identity::sso::SsoConfig = serde_json::from_value(
        json!({"issuer": "https://login.example.com", "client_id": "c1", "client_secret": "s"}),
    )
    .unwrap();
    let claims = json!({"iss": "https://login.example.com", "aud": ["c1", "other"], "exp": 2000, "iat": 1000, "nonce": "n", "sub": "u1", "email": "a@example.com"});
    let sign = |key: &rsa::RsaPrivateKey, claims: &Value| {
        let h = b64(json!({"alg": "RS256", "kid": "r1"}).to_string().as_bytes());
        let p = b64(claims.to_string().as_bytes());
        let sig =
            SigningKey::<rsa::sha2::Sha256>::new(key.clone()).sign(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", b64(&sig.to_bytes()))
    };
    let token = sign(&private, &claims);
    let ok =
        switchboard::identity::sso::verify_id_token(&token, &jwks, &config, "n", 1500).unwrap();
    assert_eq!(ok["email"], "a@example.com");
    let other = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let forged = sign(&other, &claims);
    assert_eq!(
        switchboard::identity::sso::verify_id_token(&forged, &jwks, &config, "n", 1500)
            .unwrap_err(),
        "bad signature"
    );
    // HS256 with the public key as secret (algorithm confusion): refused.
    let confused = token.replacen(
        &b64(json!({"alg": "RS256", "kid": "r1"}).to_string().as_bytes()),
        &b64(br#"{"alg":"HS256","kid":"r1"}"#),
        1,
    );
    assert!(
        switchboard::identity::sso::verify_id_token(&confused, &jwks, &config, "n", 1500)
            .unwrap_err()
            .contains("not accepted")
    );
}
