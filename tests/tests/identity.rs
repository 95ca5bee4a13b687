//! Identity and access (SPEC I1–I4, I7, I8) over the real HTTP API on a
//! loopback port: welcome passwords, the password policy, brute-force
//! throttling and locks without enumeration, sessions, TOTP, roles and
//! separation of duties, guest sessions and cross-tenant isolation.

use serde_json::json;
use switchboard::admin::{self, Actor, Op};
use switchboard::harness::Harness;
use switchboard_tests::accounts::{
    STRONG, activate, code_now, console, create_user, enrol_mfa, login, person,
};
use switchboard_tests::http::Server;
use switchboard_tests::{component, manifest};

async fn setup(adjust: impl FnOnce(&mut switchboard::RuntimeConfig)) -> (Harness, Server) {
    let h = Harness::with_config(adjust).unwrap();
    let s = Server::start(h.runtime().clone()).await;
    (h, s)
}

/// The whole audit trail of `realm`, as the console exports it.
async fn audit_trail(h: &Harness, realm: &str) -> serde_json::Value {
    console(
        h,
        Op::AuditExport {
            realm: realm.into(),
            after: 0,
            limit: 10_000,
        },
    )
    .await
}

async fn tenant(h: &Harness, id: &str) {
    h.runtime().create_tenant(id, None).await.unwrap();
}

#[tokio::test]
async fn i2_welcome_password_must_be_changed_first_and_policy_names_every_rule() {
    let (h, s) = setup(|_| {}).await;
    tenant(&h, "acme").await;
    let (_, welcome) = create_user(&h, "acme", "alice", "user").await;
    let r = login(&s, Some("acme"), "alice", &welcome).await;
    assert_eq!(r.status, 200);
    let restricted = r.json()["token"].as_str().unwrap().to_string();
    assert_eq!(r.json()["session"]["restriction"], "change-password");

    // Nothing else is allowed before the change.
    let r = s
        .call("GET", "/api/v1/auth/sessions", Some(&restricted), None)
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "password_change_required")
    );
    let r = s
        .call("GET", "/api/v1/admin/tenants", Some(&restricted), None)
        .await;
    assert_eq!(r.code(), "password_change_required");
    // Neither a second factor nor an event stream (not even its ticket).
    for path in [
        "/api/v1/auth/mfa/enroll",
        "/api/v1/auth/mfa/confirm",
        "/api/v1/auth/stream-ticket",
    ] {
        let r = s
            .call(
                "POST",
                path,
                Some(&restricted),
                Some(&json!({"code": "123456"})),
            )
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "password_change_required"),
            "{path}"
        );
    }
    let r = s
        .call("GET", "/api/v1/auth/me", Some(&restricted), None)
        .await;
    assert_eq!(r.json()["restriction"], "change-password");

    // A weak password: one message per unmet rule, nothing changed.
    let r = s
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&restricted),
            Some(&json!({"current": welcome, "new": "short"})),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "password_policy"));
    let msg = r.json()["message"].as_str().unwrap().to_string();
    for rule in ["at least 8", "@ ! # $ % & _ - = +", "digit", "upper-case"] {
        assert!(msg.contains(rule), "{msg}");
    }
    let r = s
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&restricted),
            Some(&json!({"current": welcome, "new": "Password1!"})),
        )
        .await;
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("less common"),
        "{}",
        r.text()
    );
    // Wrong current password.
    let r = s
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&restricted),
            Some(&json!({"current": "Nope-nope1", "new": STRONG})),
        )
        .await;
    assert_eq!(r.code(), "invalid_credentials");
    // Oversized and malformed bodies.
    let huge = "A".repeat(2000);
    let r = s
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&restricted),
            Some(&json!({"current": welcome, "new": huge})),
        )
        .await;
    assert_eq!(r.code(), "invalid_argument");
    let r = s
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&restricted),
            Some(&json!({"current": welcome, "new": STRONG, "x": 1})),
        )
        .await;
    assert_eq!(r.code(), "bad_request");

    // The change ends every session and returns a full one.
    let r = s
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&restricted),
            Some(&json!({"current": welcome, "new": STRONG})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_string();
    assert!(r.json()["session"]["restriction"].is_null());
    let r = s
        .call("GET", "/api/v1/auth/me", Some(&restricted), None)
        .await;
    assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
    let r = s
        .call("GET", "/api/v1/auth/sessions", Some(&token), None)
        .await;
    assert_eq!(r.status, 200);
    // The welcome password no longer works; the new one does.
    assert_eq!(
        login(&s, Some("acme"), "alice", &welcome).await.code(),
        "invalid_credentials"
    );
    assert_eq!(login(&s, Some("acme"), "alice", STRONG).await.status, 200);
}

#[tokio::test]
async fn i3_failures_lock_with_one_answer_for_unknown_wrong_and_locked() {
    let (h, s) = setup(|c| {
        c.identity.throttle.free_failures = 100;
        c.identity.throttle.lock_after = 3;
    })
    .await;
    tenant(&h, "acme").await;
    person(&h, &s, "acme", "bob", "user").await;

    let unknown = login(&s, Some("acme"), "nobody", "Wrong-pass1").await;
    let wrong = login(&s, Some("acme"), "bob", "Wrong-pass1").await;
    let no_tenant = login(&s, Some("no-such-tenant"), "bob", STRONG).await;
    for r in [&unknown, &wrong, &no_tenant] {
        assert_eq!(r.status, 401);
        assert_eq!(r.body, unknown.body, "identical answers");
    }
    // Two more failures lock bob; then even the right password gets the
    // same answer as an unknown name.
    login(&s, Some("acme"), "bob", "Wrong-pass2").await;
    login(&s, Some("acme"), "bob", "Wrong-pass3").await;
    let locked = login(&s, Some("acme"), "bob", STRONG).await;
    assert_eq!((locked.status, &locked.body), (401, &unknown.body));
    // Unknown names lock the same way (no enumeration by lock behaviour).
    for _ in 0..3 {
        login(&s, Some("acme"), "ghost", "Wrong-pass1").await;
    }
    assert_eq!(
        login(&s, Some("acme"), "ghost", "Wrong-pass1").await.body,
        unknown.body
    );

    // The lock is audited, counted, shown to admins and liftable.
    let trail = audit_trail(&h, "acme").await;
    let entries = trail["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "auth.lockout" && e["target"] == "bob")
    );
    let fail = entries
        .iter()
        .find(|e| e["action"] == "auth.login" && e["outcome"] == "failure")
        .unwrap();
    assert_eq!(fail["source"], "127.0.0.1");
    let metrics = s.call("GET", "/metrics", None, None).await.text();
    let lockouts: u64 = metrics
        .lines()
        .find(|l| l.starts_with("switchboard_auth_lockouts_total "))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(lockouts >= 2, "{metrics}");
    let users = console(
        &h,
        Op::UserList {
            realm: "acme".into(),
        },
    )
    .await;
    let bob = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(bob["locked"], true);
    console(
        &h,
        Op::UserUnlock {
            realm: "acme".into(),
            user: bob["id"].as_str().unwrap().into(),
        },
    )
    .await;
    assert_eq!(login(&s, Some("acme"), "bob", STRONG).await.status, 200);
}

#[tokio::test]
async fn i3_attempts_are_throttled_with_growing_delays() {
    let (h, s) = setup(|c| {
        c.identity.throttle.free_failures = 2;
        c.identity.throttle.lock_after = 50;
    })
    .await;
    tenant(&h, "acme").await;
    login(&s, Some("acme"), "carol", "Wrong-pass1").await;
    login(&s, Some("acme"), "carol", "Wrong-pass1").await;
    let r = login(&s, Some("acme"), "carol", "Wrong-pass1").await;
    assert_eq!((r.status, r.code().as_str()), (429, "throttled"));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another name from the same address is not (yet) slowed.
    assert_eq!(
        login(&s, Some("acme"), "dave", "Wrong-pass1").await.status,
        401
    );
}

#[tokio::test]
async fn i4_sessions_are_listed_revoked_and_stored_only_as_hashes() {
    let (h, s) = setup(|_| {}).await;
    tenant(&h, "acme").await;
    let (_, first) = person(&h, &s, "acme", "erin", "user").await;
    let second = login(&s, Some("acme"), "erin", STRONG).await.json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(first.starts_with("sb1.acme.") && first.len() == "sb1.acme.".len() + 43);

    let list = s
        .call("GET", "/api/v1/auth/sessions", Some(&first), None)
        .await
        .json();
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let other = sessions.iter().find(|x| x["current"] == false).unwrap();
    let r = s
        .call(
            "DELETE",
            &format!("/api/v1/auth/sessions/{}", other["id"].as_str().unwrap()),
            Some(&first),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.call("GET", "/api/v1/auth/me", Some(&second), None)
            .await
            .code(),
        "unauthenticated"
    );

    // Malformed, forged and cross-tenant tokens: one answer.
    tenant(&h, "beta").await;
    let forged_realm = first.replacen("sb1.acme.", "sb1.beta.", 1);
    let mut flipped = first.clone();
    flipped.pop();
    flipped.push(if first.ends_with('A') { 'B' } else { 'A' });
    for bad in [
        "",
        "Bearer",
        "sb1.acme.x",
        &forged_realm,
        &flipped,
        &"x".repeat(5000),
    ] {
        let r = s.call("GET", "/api/v1/auth/me", Some(bad), None).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "unauthenticated"),
            "{bad}"
        );
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }

    // Logout revokes.
    assert_eq!(
        s.call("POST", "/api/v1/auth/logout", Some(&first), None)
            .await
            .status,
        200
    );
    assert_eq!(
        s.call("GET", "/api/v1/auth/me", Some(&first), None)
            .await
            .code(),
        "unauthenticated"
    );

    // No token is on disk in the clear (the store is encrypted too, so
    // scan the raw files for the secret part).
    let third = login(&s, Some("acme"), "erin", STRONG).await.json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    h.runtime().flush().unwrap();
    let secret = third.rsplit('.').next().unwrap().as_bytes().to_vec();
    for entry in walk(h.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
            "{}",
            entry.display()
        );
    }
}

/// A token that authenticated is remembered with the stored bytes of its
/// session and account (the fast session check); every change to either
/// must be seen by the very next request, as without the cache.
#[tokio::test]
async fn i4_a_remembered_token_sees_every_change_at_once() {
    use switchboard::audit::Scope;
    use switchboard::identity::AccountChange;
    let (h, s) = setup(|_| {}).await;
    tenant(&h, "acme").await;
    tenant(&h, "beta").await;
    let ids = h.runtime().identity();
    let acme = Scope::tenant("acme");
    let (erin, token) = person(&h, &s, "acme", "erin", "user").await;
    for _ in 0..3 {
        let caller = ids.authenticate(&token).unwrap();
        assert_eq!(caller.display_name, "erin");
    }
    // A change that keeps the session: seen at once.
    let rename = AccountChange {
        display_name: Some("Erin B".into()),
        ..Default::default()
    };
    ids.update_user(&acme, &erin, rename).await.unwrap();
    assert_eq!(ids.authenticate(&token).unwrap().display_name, "Erin B");
    assert_eq!(ids.authenticate(&token).unwrap().display_name, "Erin B");

    // A role change and a disabled account end the session.
    let promote = AccountChange {
        role: Some("tenant-admin".into()),
        ..Default::default()
    };
    ids.update_user(&acme, &erin, promote).await.unwrap();
    assert!(ids.authenticate(&token).is_err());
    let token = login(&s, Some("acme"), "erin", STRONG).await.json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        ids.authenticate(&token).unwrap().role.as_str(),
        "tenant-admin"
    );
    let disable = AccountChange {
        active: Some(false),
        ..Default::default()
    };
    ids.update_user(&acme, &erin, disable).await.unwrap();
    assert!(ids.authenticate(&token).is_err());

    // Signing out, and a deleted tenant recreated under the same id.
    let (_, fay) = person(&h, &s, "beta", "fay", "user").await;
    ids.authenticate(&fay).unwrap();
    ids.authenticate(&fay).unwrap();
    let caller = ids.authenticate(&fay).unwrap();
    ids.logout(&caller).await.unwrap();
    assert!(ids.authenticate(&fay).is_err());
    let (_, fay) = person(&h, &s, "beta", "fay2", "user").await;
    ids.authenticate(&fay).unwrap();
    h.runtime().delete_tenant("beta").await.unwrap();
    assert!(ids.authenticate(&fay).is_err());
    tenant(&h, "beta").await;
    assert!(ids.authenticate(&fay).is_err());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn i7_totp_enrolment_login_replay_and_recovery_codes() {
    let (h, s) = setup(|_| {}).await;
    tenant(&h, "acme").await;
    let (_, token) = person(&h, &s, "acme", "frank", "user").await;

    let r = s
        .call("POST", "/api/v1/auth/mfa/enroll", Some(&token), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let secret = r.json()["secret"].as_str().unwrap().to_string();
    assert!(
        r.json()["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    // A wrong confirmation code enrols nothing.
    let r = s
        .call(
            "POST",
            "/api/v1/auth/mfa/confirm",
            Some(&token),
            Some(&json!({"code": "000000"})),
        )
        .await;
    assert!(r.code() == "mfa_invalid" || code_now(&secret, 0) == "000000");
    let r = s
        .call(
            "POST",
            "/api/v1/auth/mfa/confirm",
            Some(&token),
            Some(&json!({"code": code_now(&secret, 0)})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let recovery: Vec<String> = serde_json::from_value(r.json()["recovery_codes"].clone()).unwrap();
    assert_eq!(recovery.len(), 10);

    // The password alone is no longer enough.
    let r = login(&s, Some("acme"), "frank", STRONG).await;
    assert_eq!((r.status, r.code().as_str()), (401, "mfa_required"));
    let mut body =
        json!({"tenant": "acme", "username": "frank", "password": STRONG, "totp": "123456"});
    if code_now(&secret, 0) != "123456"
        && code_now(&secret, -1) != "123456"
        && code_now(&secret, 1) != "123456"
    {
        let r = s
            .call("POST", "/api/v1/auth/login", None, Some(&body))
            .await;
        assert_eq!(r.code(), "mfa_invalid");
    }
    // The next step's code (within the window), once.
    body["totp"] = json!(code_now(&secret, 1));
    assert_eq!(
        s.call("POST", "/api/v1/auth/login", None, Some(&body))
            .await
            .status,
        200
    );
    let r = s
        .call("POST", "/api/v1/auth/login", None, Some(&body))
        .await;
    assert_eq!(r.code(), "mfa_invalid", "a code is never accepted twice");
    // A recovery code works once.
    let mut body = json!({"tenant": "acme", "username": "frank", "password": STRONG, "recovery_code": recovery[3]});
    assert_eq!(
        s.call("POST", "/api/v1/auth/login", None, Some(&body))
            .await
            .status,
        200
    );
    assert_eq!(
        s.call("POST", "/api/v1/auth/login", None, Some(&body))
            .await
            .code(),
        "mfa_invalid"
    );
    body["recovery_code"] = json!("not-a-code");
    assert_eq!(
        s.call("POST", "/api/v1/auth/login", None, Some(&body))
            .await
            .code(),
        "mfa_invalid"
    );
}

#[tokio::test]
async fn i7_mfa_is_required_for_operators_and_by_tenant_policy() {
    let (h, s) = setup(|_| {}).await;
    tenant(&h, "acme").await;
    // An operator: welcome password first, then enrolment, before anything.
    let (_, token) = person(&h, &s, "system", "olga", "operator").await;
    let me = s
        .call("GET", "/api/v1/auth/me", Some(&token), None)
        .await
        .json();
    assert_eq!(me["restriction"], "enrol-mfa");
    let r = s
        .call("GET", "/api/v1/admin/tenants", Some(&token), None)
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "mfa_enrolment_required")
    );
    let secret = s
        .call("POST", "/api/v1/auth/mfa/enroll", Some(&token), None)
        .await
        .json()["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .call(
            "POST",
            "/api/v1/auth/mfa/confirm",
            Some(&token),
            Some(&json!({"code": code_now(&secret, 0)})),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s
        .call("GET", "/api/v1/admin/tenants", Some(&token), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A tenant that requires MFA for everyone.
    let (_, welcome) = create_user(&h, "acme", "gina", "user").await;
    console(
        &h,
        Op::PolicySet {
            realm: "acme".into(),
            policy: serde_json::from_value(json!({"mfa": "all"})).unwrap(),
        },
    )
    .await;
    let token = activate(&s, Some("acme"), "gina", &welcome).await;
    let r = s
        .call("GET", "/api/v1/auth/sessions", Some(&token), None)
        .await;
    assert_eq!(r.code(), "mfa_enrolment_required");
    // Out-of-range policies are refused.
    let r = admin::execute(
        h.runtime(),
        &Actor::Console,
        Op::PolicySet {
            realm: "acme".into(),
            policy: serde_json::from_value(json!({"session_idle_minutes": 0})).unwrap(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(r.code, "invalid_argument");
}

#[tokio::test]
async fn i1_i8_roles_are_enforced_and_operators_see_no_tenant_content() {
    let (h, s) = setup(|_| {}).await;
    tenant(&h, "acme").await;
    tenant(&h, "beta").await;
    let (_, acme_admin) = person(&h, &s, "acme", "root-of-acme", "tenant-admin").await;
    let (_, user) = person(&h, &s, "acme", "plain", "user").await;
    let (_, beta_admin) = person(&h, &s, "beta", "root-of-beta", "tenant-admin").await;

    // The tenant admin manages its own tenant...
    let r = s
        .call(
            "POST",
            "/api/v1/admin/realms/acme/users",
            Some(&acme_admin),
            Some(&json!({"username": "hank", "role": "user"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["welcome_password"].as_str().unwrap().len() >= 8);
    assert_eq!(
        s.call(
            "GET",
            "/api/v1/admin/realms/acme/users",
            Some(&acme_admin),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(
        s.call(
            "GET",
            "/api/v1/admin/realms/acme/audit",
            Some(&acme_admin),
            None
        )
        .await
        .status,
        200
    );
    // ...and nothing of another tenant or of the host.
    for (m, p) in [
        ("GET", "/api/v1/admin/realms/beta/users"),
        ("GET", "/api/v1/admin/realms/beta/audit"),
        ("GET", "/api/v1/admin/realms/system/users"),
        ("GET", "/api/v1/admin/tenants"),
        ("POST", "/api/v1/admin/trust"),
    ] {
        let body = json!({"public_key": "00", "label": "x"});
        let r = s.call(m, p, Some(&acme_admin), Some(&body)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "forbidden"),
            "{m} {p}: {}",
            r.text()
        );
    }
    // Beta's admin cannot reach acme's users either, even by id.
    let acme_users = s
        .call(
            "GET",
            "/api/v1/admin/realms/acme/users",
            Some(&acme_admin),
            None,
        )
        .await
        .json();
    let hank = acme_users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "hank")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (m, p) in [
        ("GET", format!("/api/v1/admin/realms/acme/users/{hank}")),
        (
            "POST",
            format!("/api/v1/admin/realms/acme/users/{hank}/reset-password"),
        ),
        ("DELETE", format!("/api/v1/admin/realms/acme/users/{hank}")),
    ] {
        let r = s.call(m, &p, Some(&beta_admin), None).await;
        assert_eq!(r.code(), "forbidden", "{m} {p}");
    }
    // A plain user has no admin API at all.
    let r = s
        .call("GET", "/api/v1/admin/realms/acme/users", Some(&user), None)
        .await;
    assert_eq!(r.code(), "forbidden");

    // An operator (MFA enrolled) bootstraps tenants and their admins but
    // sees neither the user directory nor the tenant's audit content.
    let (_, op) = person(&h, &s, "system", "opal", "operator").await;
    enrol_mfa(&s, &op).await;
    let r = s
        .call(
            "POST",
            "/api/v1/admin/tenants",
            Some(&op),
            Some(&json!({"id": "gamma"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s
        .call(
            "POST",
            "/api/v1/admin/tenants",
            Some(&op),
            Some(&json!({"id": "system"})),
        )
        .await;
    assert_eq!(r.code(), "invalid_tenant_id");
    // Operators do not mint operators (the console does): no second
    // identity to approve one's own access with.
    let r = s
        .call(
            "POST",
            "/api/v1/admin/realms/system/users",
            Some(&op),
            Some(&json!({"username": "puppet", "role": "operator"})),
        )
        .await;
    assert_eq!(r.code(), "forbidden");
    let r = s
        .call(
            "POST",
            "/api/v1/admin/realms/gamma/users",
            Some(&op),
            Some(&json!({"username": "boss", "role": "tenant-admin"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s
        .call(
            "POST",
            "/api/v1/admin/realms/gamma/users",
            Some(&op),
            Some(&json!({"username": "someone", "role": "user"})),
        )
        .await;
    assert_eq!(r.code(), "forbidden");
    let listed = s
        .call("GET", "/api/v1/admin/realms/acme/users", Some(&op), None)
        .await
        .json();
    let roles: Vec<&str> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["tenant-admin"], "operators see tenant admins only");
    let r = s
        .call("GET", "/api/v1/admin/realms/acme/audit", Some(&op), None)
        .await;
    assert_eq!(r.code(), "forbidden");
    let r = s
        .call(
            "GET",
            &format!("/api/v1/admin/realms/acme/users/{hank}"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(r.code(), "forbidden");
    assert_eq!(
        s.call(
            "GET",
            "/api/v1/admin/realms/acme/audit/verify",
            Some(&op),
            None
        )
        .await
        .status,
        200
    );

    // Every refusal is in the trail of the tenant it aimed at.
    let trail = audit_trail(&h, "acme").await;
    assert!(
        trail["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "admin.denied"
                && e["actor"]["kind"] == "operator"
                && e["source"] == "127.0.0.1"),
        "{trail}"
    );
}

#[tokio::test]
async fn i1_partners_configure_only_their_assigned_tenants() {
    let (h, s) = setup(|_| {}).await;
    tenant(&h, "acme").await;
    tenant(&h, "beta").await;
    h.install(&manifest("directory"), &component("directory"))
        .await
        .unwrap();
    let v = console(
        &h,
        Op::UserCreate {
            realm: "system".into(),
            account: serde_json::from_value(
                json!({"username": "pat", "role": "partner", "tenants": ["acme"]}),
            )
            .unwrap(),
        },
    )
    .await;
    let p = activate(&s, None, "pat", v["welcome_password"].as_str().unwrap()).await;
    enrol_mfa(&s, &p).await;
    let body = json!({"version": "0.1.0"});
    let r = s
        .call(
            "PUT",
            "/api/v1/admin/tenants/acme/plugins/directory",
            Some(&p),
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s
        .call(
            "PUT",
            "/api/v1/admin/tenants/beta/plugins/directory",
            Some(&p),
            Some(&body),
        )
        .await;
    assert_eq!(r.code(), "forbidden");
    let listed = s
        .call("GET", "/api/v1/admin/tenants", Some(&p), None)
        .await
        .json();
    assert_eq!(listed["tenants"].as_array().unwrap().len(), 1);
    for path in [
        "/api/v1/admin/realms/acme/users",
        "/api/v1/admin/realms/acme/audit",
    ] {
        assert_eq!(
            s.call("GET", path, Some(&p), None).await.code(),
            "forbidden",
            "{path}"
        );
    }
}

#[tokio::test]
async fn i1_plugins_see_their_tenant_only_and_mint_scoped_guest_sessions() {
    let (h, s) = setup(|_| {}).await;
    h.install(&manifest("directory"), &component("directory"))
        .await
        .unwrap();
    for t in ["acme", "beta"] {
        tenant(&h, t).await;
        h.enable(t, "directory").await.unwrap();
    }
    let (alice, _) = create_user(&h, "acme", "alice", "user").await;
    let r = h
        .get("acme", "directory", "u1", &format!("/users/{alice}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["display_name"], "alice");
    assert_eq!(
        h.get("acme", "directory", "u1", "/users/alice")
            .await
            .unwrap()
            .status,
        200,
        "by login name"
    );
    let r = h
        .get("beta", "directory", "u1", &format!("/users/{alice}"))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "another tenant's user is invisible");

    let r = h
        .post(
            "acme",
            "directory",
            "u1",
            "/guests?name=Visitor&resource=meeting%2F42&ttl_ms=600000",
            b"",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let guest = r.json().unwrap().as_str().unwrap().to_string();
    let me = s.call("GET", "/api/v1/auth/me", Some(&guest), None).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["role"], "guest");
    assert_eq!(me.json()["guest"]["resource"], "meeting/42");
    // Guests have no admin API and no password.
    assert_eq!(
        s.call("GET", "/api/v1/admin/realms/acme/users", Some(&guest), None)
            .await
            .code(),
        "forbidden"
    );
    // A call that traps after minting leaves no usable session.
    let r = h
        .post(
            "acme",
            "directory",
            "u1",
            "/guests?name=V&resource=m&trap=1",
            b"",
        )
        .await;
    assert!(r.is_err());
    // Bad arguments are the plugin's to see.
    let r = h
        .post("acme", "directory", "u1", "/guests?name=&resource=m", b"")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
}

/// An operator with a second factor, signed in; returns the token.
async fn operator(h: &Harness, s: &Server, name: &str) -> String {
    let (_, token) = person(h, s, "system", name, "operator").await;
    enrol_mfa(s, &token).await;
    token
}

#[tokio::test]
async fn k1_the_bootstrap_secret_makes_one_operator_once_and_guesses_are_throttled() {
    let (h, s) = setup(|_| {}).await;
    let ids = h.runtime().identity();
    let first = ids
        .bootstrap_secret()
        .await
        .unwrap()
        .expect("no operator yet");
    // A second start before anyone used it prints a new secret, and the
    // first no longer works.
    let second = ids.bootstrap_secret().await.unwrap().expect("still none");
    assert_ne!(first.secret, second.secret);
    let body = |secret: &str| json!({"secret": secret, "username": "root"});
    let url = "/api/v1/auth/bootstrap";
    let r = s.call("POST", url, None, Some(&body(&first.secret))).await;
    assert_eq!((r.status, r.code().as_str()), (403, "bootstrap_refused"));
    let r = s.call("POST", url, None, Some(&body(&second.secret))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["username"], "root");
    assert!(r.json()["welcome_password"].as_str().unwrap().len() >= 12);
    let r = s.call("POST", url, None, Some(&body(&second.secret))).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "bootstrap_refused"),
        "used once"
    );
    // An operator exists: no secret at the next start.
    assert!(ids.bootstrap_secret().await.unwrap().is_none());
    let operators = ids
        .users(&switchboard::audit::Scope::System)
        .unwrap()
        .into_iter()
        .filter(|u| u.role == switchboard::identity::Role::Operator)
        .count();
    assert_eq!(operators, 1);
    // Malformed bodies are refused as such.
    let r = s.call("POST", url, None, Some(&json!({"secret": 1}))).await;
    assert_eq!(r.code(), "bad_request");
    // Guessing slows down, then stops, for the guessing address.
    let mut throttled = None;
    for i in 0..40 {
        let r = s
            .call("POST", url, None, Some(&body(&format!("guess-{i}"))))
            .await;
        if r.status == 429 {
            throttled = Some(r);
            break;
        }
        assert_eq!(r.code(), "bootstrap_refused");
    }
    let r = throttled.expect("guesses were throttled");
    assert_eq!(r.code(), "throttled");
    assert!(r.header("retry-after").is_some());
    // Every step is in the system trail.
    let trail = audit_trail(&h, "system").await;
    let count = |action: &str, outcome: &str| {
        trail["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action && e["outcome"] == outcome)
            .count()
    };
    assert_eq!(count("bootstrap.issue", "success"), 2);
    assert_eq!(count("bootstrap.use", "success"), 1);
    assert!(count("bootstrap.use", "denied") >= 4);
}

#[tokio::test]
async fn i8_an_access_request_answers_those_who_may_not_see_it_as_an_unknown_id() {
    let (h, s) = setup(|_| {}).await;
    tenant(&h, "acme").await;
    tenant(&h, "globex").await;
    let opal = operator(&h, &s, "opal").await;
    let (_, acme_admin) = person(&h, &s, "acme", "acme-admin", "tenant-admin").await;
    let (_, globex_admin) = person(&h, &s, "globex", "globex-admin", "tenant-admin").await;
    let (_, acme_user) = person(&h, &s, "acme", "ann", "user").await;
    let body = json!({"tenant": "acme", "ticket": "T-9", "reason": "customer reports lost messages", "scope": "audit-read", "minutes": 30});
    let r = s
        .call("POST", "/api/v1/admin/access", Some(&opal), Some(&body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let random = "0123456789abcdef0123456789abcdef";
    let answer = |r: &switchboard_tests::http::Reply, of: &str| {
        (
            r.status,
            r.code(),
            r.json()["message"].as_str().unwrap_or("").replace(of, "ID"),
        )
    };
    for token in [&globex_admin, &acme_user] {
        for (method, suffix) in [("POST", "/approve"), ("POST", "/deny"), ("DELETE", "")] {
            let real = s
                .call(
                    method,
                    &format!("/api/v1/admin/access/{id}{suffix}"),
                    Some(token),
                    None,
                )
                .await;
            let unknown = s
                .call(
                    method,
                    &format!("/api/v1/admin/access/{random}{suffix}"),
                    Some(token),
                    None,
                )
                .await;
            assert_eq!(real.status, 404, "{}", real.text());
            assert_eq!(
                answer(&real, &id),
                answer(&unknown, random),
                "{method} {suffix}"
            );
        }
    }
    // Nothing changed, and the request's own tenant admin may decide it.
    let r = s
        .call(
            "POST",
            &format!("/api/v1/admin/access/{id}/approve"),
            Some(&acme_admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The attempts are on the system's trail (not the tenant's: strangers
    // cannot write into it).
    let trail = audit_trail(&h, "system").await;
    let denied = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "access.decide" && e["outcome"] == "denied")
        .count();
    assert_eq!(denied, 4, "two strangers, approve and deny each");
}

#[tokio::test]
async fn i8_just_in_time_access_needs_a_second_person_and_is_audited() {
    let (h, s) = setup(|_| {}).await;
    tenant(&h, "acme").await;
    let opal = operator(&h, &s, "opal").await;
    let oscar = operator(&h, &s, "oscar").await;
    let (_, admin) = person(&h, &s, "acme", "acme-admin", "tenant-admin").await;
    let (_, _) = create_user(&h, "acme", "locked-out", "user").await;

    // Without a grant: no audit content.
    assert_eq!(
        s.call("GET", "/api/v1/admin/realms/acme/audit", Some(&opal), None)
            .await
            .code(),
        "forbidden"
    );

    // Bad requests are refused with reasons.
    for (body, code) in [
        (
            json!({"tenant": "acme", "ticket": "", "reason": "customer reports lost messages", "scope": "audit-read"}),
            "invalid_argument",
        ),
        (
            json!({"tenant": "acme", "ticket": "T-1", "reason": "short", "scope": "audit-read"}),
            "invalid_argument",
        ),
        (
            json!({"tenant": "acme", "ticket": "T-1", "reason": "customer reports lost messages", "scope": "audit-read", "minutes": 0}),
            "invalid_argument",
        ),
        (
            json!({"tenant": "acme", "ticket": "T-1", "reason": "customer reports lost messages", "scope": "audit-read", "minutes": 100000}),
            "invalid_argument",
        ),
        (
            json!({"tenant": "nope", "ticket": "T-1", "reason": "customer reports lost messages", "scope": "audit-read"}),
            "tenant_not_found",
        ),
        (
            json!({"tenant": "acme", "ticket": "T-1", "reason": "customer reports lost messages", "scope": "everything"}),
            "bad_request",
        ),
    ] {
        let r = s
            .call("POST", "/api/v1/admin/access", Some(&opal), Some(&body))
            .await;
        assert_eq!(r.code(), code, "{body}: {}", r.text());
    }
    // Tenant admins do not request; they approve.
    let body = json!({"tenant": "acme", "ticket": "T-1", "reason": "customer reports lost messages", "scope": "audit-read", "minutes": 30});
    assert_eq!(
        s.call("POST", "/api/v1/admin/access", Some(&admin), Some(&body))
            .await
            .code(),
        "forbidden"
    );

    let r = s
        .call("POST", "/api/v1/admin/access", Some(&opal), Some(&body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    // Still nothing while pending; the requester cannot approve.
    assert_eq!(
        s.call("GET", "/api/v1/admin/realms/acme/audit", Some(&opal), None)
            .await
            .code(),
        "forbidden"
    );
    let r = s
        .call(
            "POST",
            &format!("/api/v1/admin/access/{id}/approve"),
            Some(&opal),
            None,
        )
        .await;
    assert_eq!(r.code(), "forbidden");
    // A second operator approves: the grant works, for its scope only.
    let r = s
        .call(
            "POST",
            &format!("/api/v1/admin/access/{id}/approve"),
            Some(&oscar),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["expires_ms"].as_u64().unwrap() > 0);
    let r = s
        .call(
            "POST",
            &format!("/api/v1/admin/access/{id}/approve"),
            Some(&oscar),
            None,
        )
        .await;
    assert_eq!(r.code(), "not_pending");
    let r = s
        .call("GET", "/api/v1/admin/realms/acme/audit", Some(&opal), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s
        .call("GET", "/api/v1/admin/realms/acme/users", Some(&opal), None)
        .await
        .json();
    assert!(
        r["users"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["role"] == "tenant-admin"),
        "audit-read does not open the directory"
    );
    // The other operator has no grant of their own.
    assert_eq!(
        s.call("GET", "/api/v1/admin/realms/acme/audit", Some(&oscar), None)
            .await
            .code(),
        "forbidden"
    );

    // Directory management, approved by the tenant's admin; what is done
    // under it carries the grant's id.
    let manage = json!({"tenant": "acme", "ticket": "T-2", "reason": "user locked out before a board meeting", "scope": "directory-manage", "minutes": 15});
    let id2 = s
        .call("POST", "/api/v1/admin/access", Some(&opal), Some(&manage))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .call(
            "POST",
            &format!("/api/v1/admin/access/{id2}/approve"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let users = s
        .call("GET", "/api/v1/admin/realms/acme/users", Some(&opal), None)
        .await
        .json();
    let target = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "locked-out")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .call(
            "POST",
            &format!("/api/v1/admin/realms/acme/users/{target}/unlock"),
            Some(&opal),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Revoked: closed again at once.
    let r = s
        .call(
            "DELETE",
            &format!("/api/v1/admin/access/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        s.call("GET", "/api/v1/admin/realms/acme/audit", Some(&opal), None)
            .await
            .code(),
        "forbidden"
    );

    // Every step is in the tenant's trail (and the system's).
    let trail = audit_trail(&h, "acme").await;
    let entries = trail["entries"].as_array().unwrap();
    for a in [
        "access.request",
        "access.approve",
        "access.use",
        "access.revoke",
    ] {
        assert!(entries.iter().any(|e| e["action"] == a), "{a} missing");
    }
    let unlock = entries
        .iter()
        .find(|e| e["action"] == "user.unlock")
        .unwrap();
    assert_eq!(unlock["access"], id2.as_str());
    assert_eq!(unlock["actor"]["kind"], "operator");
    let sys = audit_trail(&h, "system").await;
    assert!(
        sys["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "access.use")
    );
    // The tenant's admin sees the requests about their tenant only.
    let list = s
        .call(
            "GET",
            "/api/v1/admin/access?tenant=acme",
            Some(&admin),
            None,
        )
        .await
        .json();
    assert_eq!(list["requests"].as_array().unwrap().len(), 2);
    assert_eq!(
        s.call("GET", "/api/v1/admin/access", Some(&admin), None)
            .await
            .code(),
        "forbidden"
    );
}
