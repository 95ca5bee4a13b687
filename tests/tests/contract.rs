//! The host API's contract (issue 19 item 6): `GET /api/v1/openapi.json`
//! describes every route of the host, and a running server keeps to it.
//! This test replays every documented operation — happy paths and refusals
//! — against a real server over TLS, and checks each answer: its status is
//! one the operation documents, its content type is the documented one, a
//! JSON body validates against the documented schema, and an error's code
//! is among the codes the operation lists. At the end every documented
//! operation must have been called.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use switchboard::admin::Op;
use switchboard::harness::Harness;
use switchboard_tests::accounts::{STRONG, code_now, console, create_user};
use switchboard_tests::http::{Reply, Server};
use switchboard_tests::schema;
use switchboard_tests::{component, manifest};

/// Calls through this check each answer against the document.
struct Contract {
    doc: Value,
    s: Server,
    called: BTreeSet<(String, String)>,
    faults: Vec<String>,
}

enum Body<'a> {
    None,
    Json(Value),
    Bytes(&'a [u8]),
}

impl Contract {
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        params: &[&str],
        token: Option<&str>,
        body: Body<'_>,
    ) -> Reply {
        let mut path = template.to_string();
        for p in params {
            let start = path.find('{').expect("a parameter to fill");
            let end = path[start..].find('}').unwrap() + start;
            path.replace_range(start..=end, p);
        }
        let r = match body {
            Body::None => self.s.call(method, &path, token, None).await,
            Body::Json(v) => self.s.call(method, &path, token, Some(&v)).await,
            Body::Bytes(b) => {
                let extra = [("content-type", "application/octet-stream")];
                self.s
                    .raw(token.unwrap_or(""), method, &path, &extra, b)
                    .await
            }
        };
        let (path_only, _) = template.split_once('?').unwrap_or((template, ""));
        self.called
            .insert((method.to_lowercase(), path_only.to_string()));
        self.check(method, path_only, &r);
        r
    }

    fn check(&mut self, method: &str, template: &str, r: &Reply) {
        let at = format!("{method} {template} -> {}", r.status);
        let Some(op) = self
            .doc
            .pointer(&format!(
                "/paths/{}/{}",
                template.replace('~', "~0").replace('/', "~1"),
                method.to_lowercase()
            ))
            .cloned()
        else {
            self.faults.push(format!("{at}: not in the document"));
            return;
        };
        let status = r.status.to_string();
        let range = format!("{}XX", &status[..1]);
        let Some(answer) = op["responses"]
            .get(&status)
            .or_else(|| op["responses"].get(&range))
            .cloned()
        else {
            self.faults
                .push(format!("{at}: status not documented ({})", r.text()));
            return;
        };
        let answer = schema::resolve(&self.doc, &answer).clone();
        let content_type = r.header("content-type").unwrap_or("").to_string();
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let Some(content) = answer.get("content") else {
            if !r.body.is_empty() && r.status != 101 {
                self.faults
                    .push(format!("{at}: a body where none is documented"));
            }
            return;
        };
        let Some(described) = content.get(&content_type).or_else(|| content.get(&media)) else {
            self.faults.push(format!(
                "{at}: content type {content_type:?} not documented"
            ));
            return;
        };
        if media == "application/json" {
            let Ok(body) = serde_json::from_slice::<Value>(&r.body) else {
                self.faults.push(format!("{at}: not JSON: {}", r.text()));
                return;
            };
            for e in schema::check(&self.doc, &described["schema"], &body) {
                self.faults.push(format!("{at}: {e}"));
            }
            if r.status >= 400 {
                let code = body["code"].as_str().unwrap_or("");
                let listed = op["description"].as_str().unwrap_or("");
                if code.is_empty() || !lists(listed, code) {
                    self.faults
                        .push(format!("{at}: error code {code:?} is not listed for it"));
                }
            }
        }
    }
}

/// Whether `text` names `code` as a whole word.
fn lists(text: &str, code: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| w == code)
}

/// A tenant user signed in with a full session.
async fn tenant_person(c: &mut Contract, admin: &str, name: &str, role: &str) -> (String, String) {
    let r = c
        .call(
            "POST",
            "/api/v1/admin/realms/{realm}/users",
            &["acme"],
            Some(admin),
            Body::Json(json!({"username": name, "role": role})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["user"]["id"].as_str().unwrap().to_string();
    let welcome = r.json()["welcome_password"].as_str().unwrap().to_string();
    let token = sign_in(c, Some("acme"), name, &welcome).await;
    (id, token)
}

/// Login with the welcome password, then the password change.
async fn sign_in(c: &mut Contract, tenant: Option<&str>, name: &str, welcome: &str) -> String {
    let mut body = json!({"username": name, "password": welcome});
    if let Some(t) = tenant {
        body["tenant"] = json!(t);
    }
    let r = c
        .call("POST", "/api/v1/auth/login", &[], None, Body::Json(body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let restricted = r.json()["token"].as_str().unwrap().to_string();
    let r = c
        .call(
            "POST",
            "/api/v1/auth/password",
            &[],
            Some(&restricted),
            Body::Json(json!({"current": welcome, "new": STRONG})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["token"].as_str().unwrap().to_string()
}

/// TOTP enrolment of `token`'s account.
async fn enrol(c: &mut Contract, token: &str) {
    let r = c
        .call(
            "POST",
            "/api/v1/auth/mfa/enroll",
            &[],
            Some(token),
            Body::None,
        )
        .await;
    let secret = r.json()["secret"].as_str().unwrap().to_string();
    let r = c
        .call(
            "POST",
            "/api/v1/auth/mfa/confirm",
            &[],
            Some(token),
            Body::Json(json!({"code": code_now(&secret, 0)})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_api_keeps_to_its_openapi_document() {
    let h = Harness::new().unwrap();
    for p in ["ledger", "example"] {
        h.install(&manifest(p), &component(p)).await.unwrap();
    }
    h.tenant("acme").await.unwrap();
    h.enable("acme", "ledger").await.unwrap();
    h.enable("acme", "example").await.unwrap();
    let s = Server::start(h.runtime().clone()).await;
    let doc = s.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let mut c = Contract {
        doc: doc.json(),
        s,
        called: BTreeSet::new(),
        faults: Vec::new(),
    };
    c.call("GET", "/api/v1/openapi.json", &[], None, Body::None)
        .await;
    assert_eq!(c.doc["openapi"], "3.1.0");
    // Every reference in the document resolves; every operation has a
    // unique id.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&c.doc, &mut all);
    for r in &all {
        assert!(
            r.strip_prefix('#').and_then(|p| c.doc.pointer(p)).is_some(),
            "unresolved $ref {r}"
        );
    }
    let mut ids = BTreeSet::new();
    for ops in c.doc["paths"].as_object().unwrap().values() {
        for op in ops.as_object().unwrap().values() {
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                assert!(ids.insert(id.to_string()), "operationId {id} twice");
            }
        }
    }

    // Health, metrics, status.
    c.call("GET", "/healthz", &[], None, Body::None).await;
    c.call("GET", "/metrics", &[], None, Body::None).await;
    c.call("GET", "/status", &[], None, Body::None).await;

    // First run: the bootstrap secret makes the first operator.
    let secret = h
        .runtime()
        .identity()
        .bootstrap_secret()
        .await
        .unwrap()
        .unwrap();
    let b = "/api/v1/auth/bootstrap";
    c.call(
        "POST",
        b,
        &[],
        None,
        Body::Json(json!({"secret": "wrong", "username": "root"})),
    )
    .await;
    let r = c
        .call(
            "POST",
            b,
            &[],
            None,
            Body::Json(json!({"secret": secret.secret, "username": "root"})),
        )
        .await;
    let welcome = r.json()["welcome_password"].as_str().unwrap().to_string();
    let root = sign_in(&mut c, None, "root", &welcome).await;
    c.call("GET", "/api/v1/admin/tenants", &[], Some(&root), Body::None)
        .await; // restricted: no TOTP yet
    enrol(&mut c, &root).await;

    // Self-service.
    c.call("GET", "/api/v1/auth/me", &[], Some(&root), Body::None)
        .await;
    let r = c
        .call("GET", "/api/v1/auth/sessions", &[], Some(&root), Body::None)
        .await;
    let sid = r.json()["sessions"][0]["id"].as_str().unwrap().to_string();
    c.call(
        "DELETE",
        "/api/v1/auth/sessions/{sid}",
        &["nope"],
        Some(&root),
        Body::None,
    )
    .await;
    c.call(
        "POST",
        "/api/v1/auth/login",
        &[],
        None,
        Body::Json(json!({"username": "root", "password": "wrong"})),
    )
    .await;
    let _ = sid;

    // Tenants, limits, plugins, settings, retention, holds.
    let t = "/api/v1/admin/tenants";
    c.call(
        "POST",
        t,
        &[],
        Some(&root),
        Body::Json(json!({"id": "tmp"})),
    )
    .await;
    c.call(
        "POST",
        t,
        &[],
        Some(&root),
        Body::Json(json!({"id": "Bad Id"})),
    )
    .await;
    c.call("GET", t, &[], Some(&root), Body::None).await;
    c.call(
        "DELETE",
        "/api/v1/admin/tenants/{tenant}",
        &["tmp"],
        Some(&root),
        Body::None,
    )
    .await;
    let l = "/api/v1/admin/tenants/{tenant}/limits";
    c.call("GET", l, &["acme"], Some(&root), Body::None).await;
    let usage = "/api/v1/admin/tenants/{tenant}/usage";
    c.call("GET", usage, &["acme"], Some(&root), Body::None)
        .await;
    c.call("GET", usage, &["nobody"], Some(&root), Body::None)
        .await;
    c.call(
        "PATCH",
        l,
        &["acme"],
        Some(&root),
        Body::Json(json!({"cpu_share": 150})),
    )
    .await;
    c.call(
        "PATCH",
        l,
        &["acme"],
        Some(&root),
        Body::Json(json!({"cpu_share": 0})),
    )
    .await;
    let pl = "/api/v1/admin/tenants/{tenant}/plugins/{plugin}";
    c.call("DELETE", pl, &["acme", "example"], Some(&root), Body::None)
        .await;
    c.call(
        "PUT",
        pl,
        &["acme", "example"],
        Some(&root),
        Body::Json(json!({"version": "0.1.0"})),
    )
    .await;
    c.call(
        "PUT",
        pl,
        &["acme", "nope"],
        Some(&root),
        Body::Json(json!({"version": "0.1.0"})),
    )
    .await;
    let cfg = "/api/v1/admin/tenants/{tenant}/plugins/{plugin}/config";
    c.call("GET", cfg, &["acme", "example"], Some(&root), Body::None)
        .await;
    c.call(
        "PUT",
        cfg,
        &["acme", "example"],
        Some(&root),
        Body::Json(json!({"greeting": "hi"})),
    )
    .await;
    c.call(
        "PUT",
        cfg,
        &["acme", "example"],
        Some(&root),
        Body::Json(json!({"greeting": 3})),
    )
    .await;

    // The tenant's first admin, made by the operator; then its people.
    let r = c
        .call(
            "POST",
            "/api/v1/admin/realms/{realm}/users",
            &["acme"],
            Some(&root),
            Body::Json(json!({"username": "ada", "role": "tenant-admin"})),
        )
        .await;
    let ada_welcome = r.json()["welcome_password"].as_str().unwrap().to_string();
    let ada = sign_in(&mut c, Some("acme"), "ada", &ada_welcome).await;
    let (bob_id, bob) = tenant_person(&mut c, &ada, "bob", "user").await;
    let ret = "/api/v1/admin/tenants/{tenant}/retention";
    c.call("GET", ret, &["acme"], Some(&ada), Body::None).await;
    c.call(
        "PUT",
        ret,
        &["acme"],
        Some(&ada),
        Body::Json(json!({"class": "recording", "days": 90})),
    )
    .await;
    c.call(
        "PUT",
        ret,
        &["acme"],
        Some(&ada),
        Body::Json(json!({"class": "recording", "days": 0})),
    )
    .await;
    // The dialing policy (SPEC T1): admins keep it within the operator's
    // bounds; premium-rate numbers are the operator's to open.
    let dial = "/api/v1/admin/tenants/{tenant}/dialing";
    let r = c.call("GET", dial, &["acme"], Some(&ada), Body::None).await;
    assert_eq!(
        r.json()["effective"]["classes"].as_array().unwrap().len(),
        4
    );
    let gb = json!({"region": "GB", "outside_line": "9", "extension_digits": [3, 4],
        "classes": ["internal", "national", "mobile", "toll-free", "international"],
        "allow": [], "deny": ["+44909*"]});
    let r = c
        .call("PUT", dial, &["acme"], Some(&ada), Body::Json(gb.clone()))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["effective"]["region"], "GB");
    let r = c
        .call(
            "PUT",
            dial,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"region": "XX"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("invalid_dialing"))
    );
    let premium = json!({"classes": ["internal", "premium"]});
    let r = c
        .call(
            "PUT",
            dial,
            &["acme"],
            Some(&ada),
            Body::Json(premium.clone()),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = c
        .call("PUT", dial, &["acme"], Some(&root), Body::Json(premium))
        .await;
    assert_eq!(r.status, 200);
    c.call("PUT", dial, &["acme"], Some(&ada), Body::Json(gb))
        .await;
    // Routes and SIP devices (SPEC T2) are the tenant's.
    let routes = "/api/v1/admin/tenants/{tenant}/routes";
    let r = c
        .call("GET", routes, &["acme"], Some(&ada), Body::None)
        .await;
    assert_eq!(r.json()["routes"], json!([]));
    let r = c
        .call(
            "PUT",
            routes,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"routes": [{"number": "100", "plugin": "example"}]})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("invalid_routes")),
        "example holds no calls grant"
    );
    let r = c
        .call(
            "PUT",
            routes,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"routes": [{"number": "1x", "plugin": "example"}]})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .call(
            "PUT",
            routes,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"routes": []})),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = c
        .call("GET", routes, &["acme"], Some(&root), Body::None)
        .await;
    assert_eq!(r.status, 403);
    // Trunks: the tenant's admins and operators; never a password back.
    let trunks = "/api/v1/admin/tenants/{tenant}/trunks";
    let itsp = json!({"name": "itsp", "addresses": ["203.0.113.0/28"],
        "proxy": "203.0.113.5:5060", "username": "acct-1", "caller_id": "+442079460000"});
    let r = c
        .call(
            "PUT",
            trunks,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"trunk": itsp, "password": "pr0vider-secret"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["trunk"]["has_password"], true);
    let r = c
        .call(
            "PUT",
            trunks,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"trunk": {"name": "bad", "addresses": ["10.0.0.1/4"]}})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("invalid_trunk"))
    );
    let r = c
        .call("GET", trunks, &["acme"], Some(&root), Body::None)
        .await;
    assert_eq!(r.status, 200, "operators manage trunks too");
    assert_eq!(r.json()["trunks"][0]["username"], "acct-1");
    assert!(!r.text().contains("pr0vider-secret"), "no password back");
    let trunk = "/api/v1/admin/tenants/{tenant}/trunks/{trunk}";
    // A managed trunk is the operator's: the tenant's admins see it but
    // neither change nor remove it, nor make one of their own managed.
    let house = json!({"name": "house", "addresses": ["198.51.100.0/28"],
        "proxy": "198.51.100.5:5061", "username": "op-1", "managed": true,
        "caller_ids": ["+4420794601*"], "transport": "tls", "tls_name": "sip.example.net"});
    let r = c
        .call(
            "PUT",
            trunks,
            &["acme"],
            Some(&root),
            Body::Json(json!({"trunk": house, "password": "0perator-secret"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["trunk"]["managed"], true);
    let mut changed = house.clone();
    changed["proxy"] = json!("198.51.100.6:5061");
    for (method, path, args, body) in [
        (
            "PUT",
            trunks,
            vec!["acme"],
            Body::Json(json!({"trunk": changed})),
        ),
        ("DELETE", trunk, vec!["acme", "house"], Body::None),
        (
            "PUT",
            trunks,
            vec!["acme"],
            Body::Json(json!({"trunk": {"name": "mine", "addresses": ["192.0.2.1"],
                "managed": true}})),
        ),
    ] {
        let r = c.call(method, path, &args, Some(&ada), body).await;
        assert_eq!(
            (r.status, r.json()["code"].clone()),
            (403, json!("trunk_managed")),
            "{method} {args:?}"
        );
    }
    let r = c
        .call("GET", trunks, &["acme"], Some(&ada), Body::None)
        .await;
    let listed = r.json()["trunks"].clone();
    let house_listed = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "house")
        .unwrap();
    assert_eq!(house_listed["proxy"], "198.51.100.5:5061", "unchanged");
    assert_eq!(
        house_listed["connection"]["state"], "pending",
        "no SIP door here"
    );
    assert_eq!(house_listed["has_password"], true);
    assert!(!r.text().contains("0perator-secret"), "no password back");
    let r = c
        .call("DELETE", trunk, &["acme", "house"], Some(&root), Body::None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .call("DELETE", trunk, &["acme", "itsp"], Some(&ada), Body::None)
        .await;
    assert_eq!(r.status, 200);
    let r = c
        .call("DELETE", trunk, &["acme", "itsp"], Some(&ada), Body::None)
        .await;
    assert_eq!(r.status, 404);
    let devices = "/api/v1/admin/tenants/{tenant}/devices";
    let r = c
        .call(
            "POST",
            devices,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"name": "bob-desk", "user": "bob"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["register"]["aor"], "sips:bob-desk@acme.localhost");
    assert_eq!(r.json()["password"].as_str().unwrap().len(), 24);
    let r = c
        .call(
            "POST",
            devices,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"name": "bob-desk", "user": "bob"})),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = c
        .call(
            "POST",
            devices,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"name": "Bob Desk", "user": "bob"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .call(
            "GET",
            &format!("{devices}?user={bob_id}"),
            &["acme"],
            Some(&ada),
            Body::None,
        )
        .await;
    assert_eq!(r.json()["devices"][0]["username"], "bob");
    assert!(!r.text().contains("ha1"), "no secret in the list");
    let r = c
        .call("GET", devices, &["acme"], Some(&root), Body::None)
        .await;
    assert_eq!(r.status, 403);
    // A user sees their own devices and resets one's password; not
    // another user's.
    let mine = "/api/v1/auth/devices";
    let r = c.call("GET", mine, &[], Some(&bob), Body::None).await;
    assert_eq!(r.json()["devices"][0]["name"], "bob-desk");
    let r = c.call("GET", mine, &[], Some(&ada), Body::None).await;
    assert_eq!(r.json()["devices"], json!([]));
    let own = "/api/v1/auth/devices/{device}/password";
    let r = c
        .call("POST", own, &["bob-desk"], Some(&bob), Body::None)
        .await;
    assert_eq!(r.status, 200);
    let r = c
        .call("POST", own, &["bob-desk"], Some(&ada), Body::None)
        .await;
    assert_eq!(r.status, 404, "not ada's device");
    let device = "/api/v1/admin/tenants/{tenant}/devices/{device}";
    let reset = "/api/v1/admin/tenants/{tenant}/devices/{device}/password";
    let r = c
        .call("POST", reset, &["acme", "bob-desk"], Some(&ada), Body::None)
        .await;
    assert_eq!(r.status, 200);
    let udp = "/api/v1/admin/tenants/{tenant}/devices/{device}/udp";
    let r = c
        .call(
            "PUT",
            udp,
            &["acme", "bob-desk"],
            Some(&ada),
            Body::Json(json!({"udp": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["device"]["udp"], true);
    let r = c
        .call(
            "PUT",
            udp,
            &["acme", "nobody"],
            Some(&ada),
            Body::Json(json!({"udp": false})),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = c
        .call(
            "PUT",
            udp,
            &["acme", "bob-desk"],
            Some(&root),
            Body::Json(json!({"udp": false})),
        )
        .await;
    assert_eq!(r.status, 403, "operators see no devices");
    let r = c
        .call(
            "DELETE",
            device,
            &["acme", "bob-desk"],
            Some(&ada),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 200);
    let r = c
        .call(
            "DELETE",
            device,
            &["acme", "bob-desk"],
            Some(&ada),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = c
        .call("POST", reset, &["acme", "bob-desk"], Some(&ada), Body::None)
        .await;
    assert_eq!(r.status, 404);
    // Call records are the tenant's; operators see counts only (I8).
    let calls = "/api/v1/admin/tenants/{tenant}/calls";
    let r = c
        .call(
            "GET",
            &format!("{calls}?from=0&limit=10"),
            &["acme"],
            Some(&ada),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 200);
    // The same page as a CSV download, or JSON lines; nothing else.
    let r = c
        .call(
            "GET",
            &format!("{calls}?format=csv"),
            &["acme"],
            Some(&ada),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("leg,plugin,direction,"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"calls.csv\"")
    );
    let r = c
        .call(
            "GET",
            &format!("{calls}?format=jsonl"),
            &["acme"],
            Some(&ada),
            Body::None,
        )
        .await;
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("application/x-ndjson"))
    );
    let r = c
        .call(
            "GET",
            &format!("{calls}?format=xml"),
            &["acme"],
            Some(&ada),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .call("GET", calls, &["acme"], Some(&root), Body::None)
        .await;
    assert_eq!(r.status, 403);
    let r = c
        .call(
            "GET",
            &format!("{calls}?after=zz"),
            &["acme"],
            Some(&ada),
            Body::None,
        )
        .await;
    assert_eq!(r.status, 404);
    let counts = "/api/v1/admin/tenants/{tenant}/calls/counts";
    let r = c
        .call("GET", counts, &["acme"], Some(&root), Body::None)
        .await;
    assert_eq!(r.status, 200);
    c.call(
        "GET",
        &format!("{counts}?to=x"),
        &["acme"],
        Some(&ada),
        Body::None,
    )
    .await;
    let hold = "/api/v1/admin/tenants/{tenant}/hold";
    c.call(
        "PUT",
        hold,
        &["acme"],
        Some(&root),
        Body::Json(json!({"on": true})),
    )
    .await;
    c.call(
        "PUT",
        hold,
        &["acme"],
        Some(&root),
        Body::Json(json!({"on": false})),
    )
    .await;

    // Accounts and sessions.
    let users = "/api/v1/admin/realms/{realm}/users";
    let user = "/api/v1/admin/realms/{realm}/users/{user}";
    c.call("GET", users, &["acme"], Some(&ada), Body::None)
        .await;
    c.call("GET", users, &["system"], Some(&ada), Body::None)
        .await;
    c.call("GET", user, &["acme", &bob_id], Some(&ada), Body::None)
        .await;
    c.call(
        "PATCH",
        user,
        &["acme", &bob_id],
        Some(&ada),
        Body::Json(json!({"display_name": "Bob B."})),
    )
    .await;
    for action in ["reset-password", "unlock", "reset-mfa"] {
        let tpl = format!("{user}/{action}");
        c.call("POST", &tpl, &["acme", &bob_id], Some(&ada), Body::None)
            .await;
    }
    let (carl_id, carl) = tenant_person(&mut c, &ada, "carl", "user").await;
    let sessions = "/api/v1/admin/realms/{realm}/users/{user}/sessions";
    let r = c
        .call("GET", sessions, &["acme", &carl_id], Some(&ada), Body::None)
        .await;
    let carl_sid = r.json()["sessions"][0]["id"]
        .as_str()
        .unwrap_or("x")
        .to_string();
    c.call(
        "DELETE",
        "/api/v1/admin/realms/{realm}/users/{user}/sessions/{sid}",
        &["acme", &carl_id, &carl_sid],
        Some(&ada),
        Body::None,
    )
    .await;
    c.call(
        "DELETE",
        sessions,
        &["acme", &carl_id],
        Some(&ada),
        Body::Json(json!({})),
    )
    .await;
    let _ = (bob, carl);
    c.call("DELETE", user, &["acme", &carl_id], Some(&ada), Body::None)
        .await;
    let pol = "/api/v1/admin/realms/{realm}/policy";
    let r = c.call("GET", pol, &["acme"], Some(&ada), Body::None).await;
    let policy = r.json();
    c.call("PUT", pol, &["acme"], Some(&ada), Body::Json(policy))
        .await;
    c.call(
        "PUT",
        pol,
        &["acme"],
        Some(&root),
        Body::Json(json!({"mfa": "all"})),
    )
    .await;
    c.call(
        "GET",
        "/api/v1/admin/realms/{realm}/audit?limit=5",
        &["acme"],
        Some(&ada),
        Body::None,
    )
    .await;
    c.call(
        "GET",
        "/api/v1/admin/realms/{realm}/audit/verify",
        &["acme"],
        Some(&ada),
        Body::None,
    )
    .await;
    c.call(
        "GET",
        "/api/v1/admin/audit-key",
        &[],
        Some(&root),
        Body::None,
    )
    .await;

    // Trust and packages.
    let key = switchboard_signing::keys::generate().unwrap();
    let public = switchboard_signing::keys::public_key_text(&key.verifying_key());
    c.call("GET", "/api/v1/admin/trust", &[], Some(&root), Body::None)
        .await;
    let r = c
        .call(
            "POST",
            "/api/v1/admin/trust",
            &[],
            Some(&root),
            Body::Json(json!({"public_key": public, "label": "p"})),
        )
        .await;
    let key_id = r.json()["key_id"].as_str().unwrap().to_string();
    c.call(
        "POST",
        "/api/v1/admin/trust",
        &[],
        Some(&root),
        Body::Json(json!({"public_key": "nope", "label": "p"})),
    )
    .await;
    let pkg = switchboard::harness::sign(&key, &manifest("noop"), &component("noop")).unwrap();
    c.call(
        "POST",
        "/api/v1/admin/plugins",
        &[],
        Some(&root),
        Body::Bytes(&pkg),
    )
    .await;
    c.call(
        "POST",
        "/api/v1/admin/plugins",
        &[],
        Some(&root),
        Body::Bytes(b"not a package"),
    )
    .await;
    c.call("GET", "/api/v1/admin/plugins", &[], Some(&ada), Body::None)
        .await;
    c.call(
        "DELETE",
        "/api/v1/admin/trust/{key_id}",
        &[&key_id],
        Some(&root),
        Body::None,
    )
    .await;

    // OpenID Connect clients and single sign-on.
    let oc = "/api/v1/admin/tenants/{tenant}/oidc-clients";
    let r = c
        .call(
            "POST",
            oc,
            &["acme"],
            Some(&ada),
            Body::Json(json!({"name": "wiki", "redirect_uris": ["https://wiki.example/cb"]})),
        )
        .await;
    let client = r.json()["id"]
        .as_str()
        .or(r.json()["client_id"].as_str())
        .unwrap_or("x")
        .to_string();
    c.call("GET", oc, &["acme"], Some(&ada), Body::None).await;
    c.call(
        "DELETE",
        "/api/v1/admin/tenants/{tenant}/oidc-clients/{id}",
        &["acme", &client],
        Some(&ada),
        Body::None,
    )
    .await;
    let sso = "/api/v1/admin/tenants/{tenant}/sso";
    c.call("GET", sso, &["acme"], Some(&ada), Body::None).await;
    c.call(
        "PUT",
        sso,
        &["acme"],
        Some(&ada),
        Body::Json(
            json!({"issuer": "http://not-https.example", "client_id": "x", "client_secret": "y"}),
        ),
    )
    .await;
    c.call("DELETE", sso, &["acme"], Some(&ada), Body::None)
        .await;
    c.call(
        "GET",
        "/api/v1/auth/sso/{tenant}/start",
        &["acme"],
        None,
        Body::None,
    )
    .await;
    c.call(
        "GET",
        "/api/v1/auth/sso/{tenant}/callback",
        &["acme"],
        None,
        Body::None,
    )
    .await;

    // Just-in-time access: the operator asks, the tenant's admin decides.
    let ask = json!({"tenant": "acme", "ticket": "T-1", "reason": "customer reports lost messages", "scope": "audit-read", "minutes": 30});
    let r = c
        .call(
            "POST",
            "/api/v1/admin/access",
            &[],
            Some(&root),
            Body::Json(ask.clone()),
        )
        .await;
    let first = r.json()["id"].as_str().unwrap().to_string();
    let r = c
        .call(
            "POST",
            "/api/v1/admin/access",
            &[],
            Some(&root),
            Body::Json(ask),
        )
        .await;
    let second = r.json()["id"].as_str().unwrap().to_string();
    c.call("GET", "/api/v1/admin/access", &[], Some(&root), Body::None)
        .await;
    c.call(
        "POST",
        "/api/v1/admin/access/{id}/approve",
        &[&first],
        Some(&root),
        Body::None,
    )
    .await; // not by the requester
    c.call(
        "POST",
        "/api/v1/admin/access/{id}/approve",
        &[&first],
        Some(&ada),
        Body::None,
    )
    .await;
    c.call(
        "POST",
        "/api/v1/admin/access/{id}/deny",
        &[&second],
        Some(&ada),
        Body::None,
    )
    .await;
    c.call(
        "DELETE",
        "/api/v1/admin/access/{id}",
        &[&first],
        Some(&ada),
        Body::None,
    )
    .await;
    c.call(
        "DELETE",
        "/api/v1/admin/access/{id}",
        &["unknown"],
        Some(&ada),
        Body::None,
    )
    .await;

    // Event streams: a ticket, and the stream refusing a plain GET.
    let (_, dora) = tenant_person(&mut c, &ada, "dora", "user").await;
    c.call(
        "POST",
        "/api/v1/auth/stream-ticket",
        &[],
        Some(&dora),
        Body::None,
    )
    .await;
    c.call(
        "POST",
        "/api/v1/auth/stream-ticket",
        &[],
        Some(&root),
        Body::None,
    )
    .await;
    c.call("GET", "/api/v1/events", &[], Some(&dora), Body::None)
        .await;

    // A session ends, another is revoked by its owner; unknown routes.
    let r = c
        .call("GET", "/api/v1/auth/sessions", &[], Some(&dora), Body::None)
        .await;
    let own = r.json()["sessions"][0]["id"]
        .as_str()
        .unwrap_or("x")
        .to_string();
    c.call("POST", "/api/v1/auth/logout", &[], Some(&dora), Body::None)
        .await;
    c.call(
        "DELETE",
        "/api/v1/auth/sessions/{sid}",
        &[&own],
        Some(&ada),
        Body::None,
    )
    .await;
    c.call(
        "GET",
        "/api/v1/auth/me",
        &[],
        Some("sb1.acme.forged"),
        Body::None,
    )
    .await;
    let _ = console(&h, Op::TenantList).await;
    let _ = create_user;

    // Every documented operation was called.
    let mut documented = BTreeSet::new();
    for (path, ops) in c.doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let missed: Vec<_> = documented.difference(&c.called).collect();
    assert!(missed.is_empty(), "documented but never called: {missed:?}");
    let undocumented: Vec<_> = c.called.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "called but not documented: {undocumented:?}"
    );
    assert!(
        c.faults.is_empty(),
        "{} answers break the contract:\n{}",
        c.faults.len(),
        c.faults.join("\n")
    );
}
