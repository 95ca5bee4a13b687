//! SPEC K1, S1, S2 (issue 19): operators install packages and manage the
//! trust store while the server runs — over the admin API and over the
//! CLI through the control socket — refusals keep their codes and store
//! nothing, and other tenants are served throughout.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use clap::Parser as _;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use switchboard::harness::{Harness, sign};
use switchboard::tenant::Limits;
use switchboard_signing::keys;
use switchboard_tests::accounts::{enrol_mfa, person};
use switchboard_tests::http::{Reply, Server};
use switchboard_tests::*;

const OCTETS: (&str, &str) = ("content-type", "application/octet-stream");

/// An operator with a second factor, signed in; returns the token.
async fn operator(h: &Harness, s: &Server) -> String {
    let (_, token) = person(h, s, "system", "opal", "operator").await;
    enrol_mfa(s, &token).await;
    token
}

/// A partner's key pair written as `partner.key` and `partner.key.pub` in
/// `dir`; returns the key and the `.pub` file's text.
fn partner(dir: &Path) -> (SigningKey, String) {
    let key = keys::generate().unwrap();
    keys::write_key_pair(&key, &dir.join("partner.key")).unwrap();
    let text = std::fs::read_to_string(dir.join("partner.key.pub")).unwrap();
    (key, text)
}

fn with_version(name: &str, version: &str) -> Vec<u8> {
    String::from_utf8(manifest(name))
        .unwrap()
        .replacen(
            "version = \"0.1.0\"\n",
            &format!("version = \"{version}\"\n"),
            1,
        )
        .into_bytes()
}

async fn upload(s: &Server, token: &str, package: &[u8]) -> Reply {
    s.raw(token, "POST", "/api/v1/admin/plugins", &[OCTETS], package)
        .await
}

/// What the admin API lists as installed.
async fn installed(s: &Server, token: &str) -> Value {
    let r = s
        .call("GET", "/api/v1/admin/plugins", Some(token), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["plugins"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_an_operator_installs_and_enables_a_package_while_another_tenant_is_served() {
    let h = harness(&["noop"]).await;
    tenant(&h, "globex", Limits::default(), &["noop"]).await;
    tenant(&h, "acme", Limits::default(), &[]).await;
    let s = Arc::new(Server::start(h.runtime().clone()).await);
    let op = operator(&h, &s).await;
    let (_, gus) = person(&h, &s, "globex", "gus", "user").await;
    let (_, ann) = person(&h, &s, "acme", "ann", "user").await;

    // Globex's user calls its plugin back to back the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (s, stop, served, failed) = (s.clone(), stop.clone(), served.clone(), failed.clone());
        tokio::spawn(async move {
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = s
                    .plugin_call("globex", "noop", &gus, "GET", "/", None)
                    .await;
                if r.status == 204 {
                    served.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("globex failed: {} {}", r.status, r.text());
                }
            }
        })
    };

    // The partner's key as handed over: the whole KEY.pub file.
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = partner(dir.path());
    let r = s
        .call(
            "POST",
            "/api/v1/admin/trust",
            Some(&op),
            Some(&json!({"public_key": public, "label": "partner"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let key_id = r.json()["key_id"].as_str().unwrap().to_string();
    assert_eq!(
        key_id,
        switchboard_signing::KeyId::of(&key.verifying_key()).to_string()
    );

    // Upload, enable, call: no restart.
    let package = sign(&key, &manifest("ledger"), &component("ledger")).unwrap();
    let r = upload(&s, &op, &package).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["name"].as_str(), r.json()["version"].as_str()),
        (Some("ledger"), Some("0.1.0"))
    );
    assert_eq!(r.json()["publisher"], key_id.as_str());
    let r = s
        .call(
            "PUT",
            "/api/v1/admin/tenants/acme/plugins/ledger",
            Some(&op),
            Some(&json!({"version": "0.1.0"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s
        .plugin_call("acme", "ledger", &ann, "GET", "/count", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The same package again is a no-op; other bytes under the same name
    // and version are refused.
    assert_eq!(upload(&s, &op, &package).await.status, 200);
    let other = sign(&key, &manifest("ledger"), &component("noop")).unwrap();
    let r = upload(&s, &op, &other).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "already_installed"),
        "{}",
        r.text()
    );

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    assert_eq!(failed, 0, "globex's calls failed during the install");
    assert!(served >= 5, "globex was served throughout ({served} calls)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_uploads_that_are_refused_keep_their_codes_and_store_nothing() {
    // Packages of at most 1 MiB + 1 MiB of room.
    let h = Harness::with_config(|c| c.max_component_bytes = 1 << 20).unwrap();
    h.install(&manifest("noop"), &component("noop"))
        .await
        .unwrap();
    h.tenant("acme").await.unwrap();
    let s = Server::start(h.runtime().clone()).await;
    let op = operator(&h, &s).await;
    let (_, admin) = person(&h, &s, "acme", "acme-admin", "tenant-admin").await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = partner(dir.path());
    let trust = |public_key: &str| json!({"public_key": public_key, "label": "partner"});
    let r = s
        .call(
            "POST",
            "/api/v1/admin/trust",
            Some(&op),
            Some(&trust(&public)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = installed(&s, &op).await;
    let good = sign(&key, &manifest("ledger"), &component("ledger")).unwrap();

    // Who may not install is refused before the body is read.
    let r = upload(&s, &admin, &good).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.text()
    );
    let r =
        switchboard_tests::http::request(s.addr, "POST", "/api/v1/admin/plugins", &[], &good).await;
    assert_eq!(r.status, 401, "{}", r.text());

    // Oversized: refused while reading, with its own code — and for one
    // who may not install, refused before reading at all.
    let huge = vec![0u8; h.runtime().max_package_bytes() + 1];
    let r = upload(&s, &admin, &huge).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.text()
    );
    let r = upload(&s, &op, &huge).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "package_too_large"),
        "{}",
        r.text()
    );

    // Not a package, truncated, an unknown publisher, a revoked one.
    let stranger = keys::generate().unwrap();
    let by_stranger = sign(&stranger, &manifest("ledger"), &component("ledger")).unwrap();
    for (bytes, code) in [
        (&b"not a package"[..], "package_malformed"),
        (&good[..good.len() / 2], "package_malformed"),
        (&b""[..], "package_malformed"),
        (&by_stranger[..], "publisher_unknown"),
    ] {
        let r = upload(&s, &op, bytes).await;
        assert_eq!((r.status, r.code().as_str()), (400, code), "{}", r.text());
    }
    let revoked = keys::generate().unwrap();
    let hex = hex::encode(revoked.verifying_key().to_bytes());
    let r = s
        .call("POST", "/api/v1/admin/trust", Some(&op), Some(&trust(&hex)))
        .await;
    assert_eq!(
        r.status,
        200,
        "the bare hex form is taken too: {}",
        r.text()
    );
    let id = r.json()["key_id"].as_str().unwrap().to_string();
    let r = s
        .call(
            "DELETE",
            &format!("/api/v1/admin/trust/{id}"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let by_revoked = sign(&revoked, &manifest("ledger"), &component("ledger")).unwrap();
    let r = upload(&s, &op, &by_revoked).await;
    assert_eq!(r.code(), "publisher_revoked", "{}", r.text());

    // Nothing of any of them was stored.
    assert_eq!(installed(&s, &op).await, before);
    assert!(h.runtime().plugins().iter().all(|p| p.name != "ledger"));

    // A key in neither form is refused naming both.
    for bad in ["", "not a key", &hex[..40], "SWKEY-ED25519-PUBLIC-1 00\nzz"] {
        let r = s
            .call("POST", "/api/v1/admin/trust", Some(&op), Some(&trust(bad)))
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "key_malformed"),
            "{bad:?}"
        );
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .contains("publisher key"),
            "{}",
            r.text()
        );
    }

    // A rollback is refused unless an operator overrides it.
    for version in ["0.2.0", "0.1.0"] {
        let p = sign(&key, &with_version("ledger", version), &component("ledger")).unwrap();
        assert_eq!(upload(&s, &op, &p).await.status, 200);
    }
    let enable = |version: &str, allow_rollback: bool| json!({"version": version, "allow_rollback": allow_rollback});
    let url = "/api/v1/admin/tenants/acme/plugins/ledger";
    let r = s
        .call("PUT", url, Some(&admin), Some(&enable("0.2.0", false)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s
        .call("PUT", url, Some(&admin), Some(&enable("0.1.0", false)))
        .await;
    assert_eq!(r.code(), "rollback_refused", "{}", r.text());
    let r = s
        .call("PUT", url, Some(&admin), Some(&enable("0.1.0", true)))
        .await;
    assert_eq!(r.code(), "forbidden", "{}", r.text());
    let r = s
        .call("PUT", url, Some(&op), Some(&enable("0.1.0", true)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_the_cli_manages_tenants_plugins_and_trust_of_a_running_server() {
    let h = harness(&["noop"]).await;
    // The server holds the folder; the CLI can reach it only through the
    // control socket.
    switchboard::control::start(h.runtime()).unwrap();
    let data = h.data_dir().to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = partner(dir.path());
    let pub_file = dir.path().join("partner.key.pub");
    let pkg = dir.path().join("ledger.swpkg");
    std::fs::write(
        &pkg,
        sign(&key, &manifest("ledger"), &component("ledger")).unwrap(),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["switchboard"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data", &data]);
        switchboard::cli::Cli::try_parse_from(all).unwrap()
    };
    let run = |args: &'static [&'static str]| switchboard::cli::run(cli(args));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (pub_file, pkg) = (path(&pub_file), path(&pkg));

    switchboard::cli::run(cli(&["trust", "add", &pub_file, "--label", "partner"]))
        .await
        .unwrap();
    switchboard::cli::run(cli(&["plugin", "install", &pkg]))
        .await
        .unwrap();
    run(&["tenant", "create", "acme"]).await.unwrap();
    run(&[
        "plugin",
        "enable",
        "--tenant",
        "acme",
        "--name",
        "ledger",
        "--version",
        "0.1.0",
    ])
    .await
    .unwrap();
    for verb in [
        &["tenant", "list"][..],
        &["tenant", "usage", "acme"],
        &["tenant", "retention", "acme"],
        &["plugin", "list"],
        &["trust", "list"],
    ] {
        switchboard::cli::run(cli(verb)).await.unwrap();
    }
    // The running server has it all, at once.
    let rt = h.runtime();
    let acme = rt.tenants().into_iter().find(|t| t.id == "acme").unwrap();
    assert!(acme.plugins.contains_key("ledger"));
    assert!(
        rt.handle(
            "acme",
            "ledger",
            switchboard::runtime::Request::new(
                switchboard::runtime::Method::Get,
                "/count",
                switchboard::runtime::Principal::user("acme", "u1"),
            )
        )
        .await
        .is_ok()
    );

    // Refusals come back with their codes.
    let e = switchboard::cli::run(cli(&["plugin", "install", &pub_file]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("package_malformed"), "{e}");
    let e = run(&["tenant", "create", "acme"]).await.unwrap_err();
    assert!(e.to_string().contains("tenant_exists"), "{e}");

    run(&["plugin", "disable", "--tenant", "acme", "--name", "ledger"])
        .await
        .unwrap();
    let id = switchboard_signing::KeyId::of(&key.verifying_key()).to_string();
    switchboard::cli::run(cli(&["trust", "revoke", &id]))
        .await
        .unwrap();
    assert!(rt.plugins().iter().any(|p| p.name == "ledger" && p.revoked));
    let acme = rt.tenants().into_iter().find(|t| t.id == "acme").unwrap();
    assert!(!acme.plugins.contains_key("ledger"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_a_new_tenant_has_the_default_plugins_enabled_and_its_admin_may_disable_them() {
    let h = Harness::with_config(|c| {
        c.default_plugins = ["chat", "recording", "meetings", "not-installed"]
            .map(String::from)
            .to_vec();
    })
    .unwrap();
    for p in ["chat", "recording", "meetings"] {
        h.install(&manifest(p), &component(p)).await.unwrap();
    }
    // A dev build of chat is never a default, however high its version.
    h.install(&with_version("chat", "9.0.0-dev.1"), &component("chat"))
        .await
        .unwrap();
    let s = Server::start(h.runtime().clone()).await;
    let op = operator(&h, &s).await;
    let r = s
        .call(
            "POST",
            "/api/v1/admin/tenants",
            Some(&op),
            Some(&json!({"id": "acme"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut names: Vec<String> = r.json()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    // The three installed defaults; the one not installed is skipped.
    assert_eq!(names, ["chat", "meetings", "recording"]);
    let chat = r.json()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "chat")
        .unwrap()["version"]
        .clone();
    assert_eq!(chat, "0.1.0", "the newest release, not the dev build");

    // The tenant's users use chat at once; no admin step first.
    let (_, admin) = person(&h, &s, "acme", "acme-admin", "tenant-admin").await;
    let (_, ann) = person(&h, &s, "acme", "ann", "user").await;
    let r = s
        .plugin_call("acme", "chat", &ann, "GET", "/conversations", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Its admin may turn one off.
    let r = s
        .call(
            "DELETE",
            "/api/v1/admin/tenants/acme/plugins/meetings",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let acme = h
        .runtime()
        .tenants()
        .into_iter()
        .find(|t| t.id == "acme")
        .unwrap();
    assert!(!acme.plugins.contains_key("meetings") && acme.plugins.contains_key("chat"));
}
