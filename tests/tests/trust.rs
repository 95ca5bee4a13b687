//! SPEC S1-S3, K7 (issue 3): nothing runs unless a trusted publisher signed
//! it, the tenant chose that version, and the tenant granted what it asks.

use std::collections::BTreeSet;

use switchboard::harness::{Harness, sign};
use switchboard::runtime::{Runtime, RuntimeConfig};
use switchboard::tenant::Limits;
use switchboard_signing::package::MAGIC;
use switchboard_signing::{Capability, KeyId, keys};
use switchboard_tests::*;

fn v(s: &str) -> semver::Version {
    s.parse().unwrap()
}

fn bump(name: &str, to: &str) -> Vec<u8> {
    String::from_utf8(manifest(name))
        .unwrap()
        .replacen("version = \"0.1.0\"\n", &format!("version = \"{to}\"\n"), 1)
        .into_bytes()
}

async fn refused(h: &Harness, package: &[u8]) -> String {
    let e = h.runtime().install_package(package).await.unwrap_err();
    e.code().to_string()
}

#[tokio::test]
async fn s1_every_refusal_has_its_code_and_stores_nothing() {
    let h = Harness::new().unwrap();
    let trusted = h.signing_key().clone();
    h.runtime()
        .trust_add(&trusted.verifying_key(), "trusted")
        .await
        .unwrap();
    let good = sign(&trusted, &manifest("ledger"), &component("ledger")).unwrap();

    // Unknown publisher.
    let stranger = keys::generate().unwrap();
    let by_stranger = sign(&stranger, &manifest("ledger"), &component("ledger")).unwrap();
    assert_eq!(refused(&h, &by_stranger).await, "publisher_unknown");

    // Unsigned: the signature section removed.
    let sig_section = 1 + 4 + 80;
    assert_eq!(
        refused(&h, &good[..good.len() - sig_section]).await,
        "package_unsigned"
    );

    // Bad signature: one bit of the signature flipped.
    let mut bad_sig = good.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    assert_eq!(refused(&h, &bad_sig).await, "signature_invalid");

    // Digest mismatch: one bit of the component flipped.
    let mut bad_component = good.clone();
    let mid = good.len() - sig_section - 1000;
    bad_component[mid] ^= 0x01;
    assert_eq!(refused(&h, &bad_component).await, "digest_mismatch");

    // Malformed and truncated.
    assert_eq!(refused(&h, b"not a package").await, "package_malformed");
    assert_eq!(
        refused(&h, &good[..good.len() / 2]).await,
        "package_malformed"
    );
    assert_eq!(refused(&h, MAGIC).await, "package_malformed");

    // Oversized.
    let mut huge = MAGIC.to_vec();
    huge.resize(70 << 20, 0);
    assert_eq!(refused(&h, &huge).await, "package_too_large");

    // Unsupported API version and undeclared imports are refused after the
    // signature checks, by the same install path.
    let old = sign(&trusted, &manifest("old-api"), &component("old-api")).unwrap();
    assert_eq!(refused(&h, &old).await, "unsupported_api_version");
    let greedy = String::from_utf8(manifest("greedy"))
        .unwrap()
        .replace(r#"["kv", "events"]"#, r#"["kv"]"#);
    let undeclared = sign(&trusted, greedy.as_bytes(), &component("greedy")).unwrap();
    assert_eq!(refused(&h, &undeclared).await, "import_not_declared");

    // Revoked key.
    let revoked = keys::generate().unwrap();
    h.runtime()
        .trust_add(&revoked.verifying_key(), "soon revoked")
        .await
        .unwrap();
    h.runtime()
        .trust_revoke(&KeyId::of(&revoked.verifying_key()))
        .await
        .unwrap();
    let by_revoked = sign(&revoked, &manifest("ledger"), &component("ledger")).unwrap();
    assert_eq!(refused(&h, &by_revoked).await, "publisher_revoked");

    assert!(
        h.runtime().plugins().is_empty(),
        "a refused package was stored"
    );
    assert_eq!(
        std::fs::read_dir(h.data_dir().join("cache"))
            .unwrap()
            .count(),
        0
    );
    // And the good one still installs.
    h.runtime().install_package(&good).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_revoking_a_key_stops_its_packages_and_nothing_else_even_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let partner = keys::generate().unwrap();
    let other = keys::generate().unwrap();
    let partner_id = KeyId::of(&partner.verifying_key());
    {
        let rt = Runtime::open(RuntimeConfig::new(dir.path())).unwrap();
        rt.trust_add(&partner.verifying_key(), "partner")
            .await
            .unwrap();
        rt.trust_add(&other.verifying_key(), "other").await.unwrap();
        rt.install_package(&sign(&partner, &manifest("ledger"), &component("ledger")).unwrap())
            .await
            .unwrap();
        rt.install_package(&sign(&other, &manifest("noop"), &component("noop")).unwrap())
            .await
            .unwrap();
        rt.create_tenant("acme", None).await.unwrap();
        for p in ["ledger", "noop"] {
            rt.enable_plugin("acme", p, &v("0.1.0"), None, Default::default())
                .await
                .unwrap();
        }
        let call = |p: &'static str| {
            let rt = rt.clone();
            async move {
                let req = switchboard::runtime::Request::new(
                    switchboard::runtime::Method::Get,
                    "/count",
                    switchboard::runtime::Principal::user("acme", "u"),
                );
                rt.handle("acme", p, req).await
            }
        };
        assert_eq!(call("ledger").await.unwrap().status, 200);
        let disabled = rt.trust_revoke(&partner_id).await.unwrap();
        assert_eq!(disabled, vec![("ledger".to_string(), v("0.1.0"))]);
        assert_eq!(
            call("ledger").await.unwrap_err().code(),
            "publisher_revoked"
        );
        assert_eq!(call("noop").await.unwrap().status, 204);
        let e = rt
            .enable_plugin("acme", "ledger", &v("0.1.0"), None, Default::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "publisher_revoked");
        assert_eq!(
            rt.trust_add(&partner.verifying_key(), "again")
                .await
                .unwrap_err()
                .code(),
            "key_revoked"
        );
    }
    for _ in 0..50 {
        if let Ok(rt) = Runtime::open(RuntimeConfig::new(dir.path())) {
            let plugins = rt.plugins();
            let ledger = plugins.iter().find(|p| p.name == "ledger").unwrap();
            assert!(ledger.revoked, "revocation must survive a restart");
            let req = switchboard::runtime::Request::new(
                switchboard::runtime::Method::Get,
                "/",
                switchboard::runtime::Principal::user("acme", "u"),
            );
            assert_eq!(
                rt.handle("acme", "noop", req.clone()).await.unwrap().status,
                204
            );
            assert_eq!(
                rt.handle("acme", "ledger", req).await.unwrap_err().code(),
                "publisher_revoked"
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("could not reopen the data folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_a_tenant_may_narrow_the_publishers_it_accepts() {
    let h = harness(&["noop"]).await;
    let other = keys::generate().unwrap();
    h.runtime()
        .trust_add(&other.verifying_key(), "other")
        .await
        .unwrap();
    h.runtime()
        .install_package(&sign(&other, &manifest("ledger"), &component("ledger")).unwrap())
        .await
        .unwrap();
    h.tenant("acme").await.unwrap();
    let mine = KeyId::of(&h.signing_key().verifying_key());
    h.runtime()
        .set_publishers("acme", Some(BTreeSet::from([mine])))
        .await
        .unwrap();
    h.enable("acme", "noop").await.unwrap();
    let e = h
        .runtime()
        .enable_plugin("acme", "ledger", &v("0.1.0"), None, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "publisher_not_accepted", "{e}");
    // Another tenant, not narrowed, may enable it.
    h.tenant("beta").await.unwrap();
    h.runtime()
        .enable_plugin("beta", "ledger", &v("0.1.0"), None, Default::default())
        .await
        .unwrap();
    // Narrowing away the publisher of an enabled plugin is refused.
    let e = h
        .runtime()
        .set_publishers(
            "acme",
            Some(BTreeSet::from([KeyId::of(&other.verifying_key())])),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "publisher_not_accepted", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_rolling_back_needs_the_operator_override() {
    let h = harness(&["ledger"]).await;
    h.install(&bump("ledger", "0.2.0"), &component("ledger"))
        .await
        .unwrap();
    tenant(&h, "acme", Limits::default(), &[]).await;
    let rt = h.runtime();
    rt.enable_plugin("acme", "ledger", &v("0.2.0"), None, Default::default())
        .await
        .unwrap();
    let e = rt
        .enable_plugin("acme", "ledger", &v("0.1.0"), None, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "rollback_refused", "{e}");
    // Disabling and re-enabling does not launder a rollback.
    rt.disable_plugin("acme", "ledger").await.unwrap();
    let e = rt
        .enable_plugin("acme", "ledger", &v("0.1.0"), None, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "rollback_refused");
    rt.enable_plugin_overriding_rollback("acme", "ledger", &v("0.1.0"), None, Default::default())
        .await
        .unwrap();
    let record = rt.tenants().into_iter().find(|t| t.id == "acme").unwrap();
    assert_eq!(record.plugins["ledger"].version, v("0.1.0"));
    assert_eq!(record.highest["ledger"], v("0.2.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_an_upgrade_asking_for_more_is_not_activated_until_granted() {
    let h = harness(&["ledger"]).await;
    let more = String::from_utf8(bump("ledger", "0.2.0")).unwrap().replace(
        r#"capabilities = ["kv"]"#,
        r#"capabilities = ["kv", "log", "timers"]"#,
    );
    h.install(more.as_bytes(), &component("ledger"))
        .await
        .unwrap();
    tenant(&h, "acme", Limits::default(), &[]).await;
    h.runtime()
        .enable_plugin("acme", "ledger", &v("0.1.0"), None, Default::default())
        .await
        .unwrap();
    ok_json(h.post("acme", "ledger", "u", "/record", b"").await);
    let rt = h.runtime();
    let e = rt
        .enable_plugin("acme", "ledger", &v("0.2.0"), None, Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "grants_required");
    assert!(
        e.to_string().contains("log, timers"),
        "the diff is shown: {e}"
    );
    let record = rt.tenants().into_iter().find(|t| t.id == "acme").unwrap();
    assert_eq!(
        record.plugins["ledger"].version,
        v("0.1.0"),
        "still on the old version"
    );
    let grants = BTreeSet::from([Capability::Kv, Capability::Log]);
    rt.enable_plugin(
        "acme",
        "ledger",
        &v("0.2.0"),
        Some(grants.clone()),
        Default::default(),
    )
    .await
    .unwrap();
    let record = rt.tenants().into_iter().find(|t| t.id == "acme").unwrap();
    assert_eq!(record.plugins["ledger"].grants, grants);
    // Data carried over the upgrade.
    assert_eq!(ok_json(h.get("acme", "ledger", "u", "/count").await), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_two_tenants_run_different_versions_side_by_side() {
    let h = harness(&["ledger", "example"]).await;
    h.install(&bump("example", "0.2.0"), &component("example"))
        .await
        .unwrap();
    for t in ["old", "new"] {
        tenant(&h, t, Limits::default(), &["ledger"]).await;
        h.runtime()
            .enable_plugin(t, "example", &v("0.1.0"), None, Default::default())
            .await
            .unwrap();
    }
    h.runtime()
        .enable_plugin("new", "example", &v("0.2.0"), None, Default::default())
        .await
        .unwrap();
    let versions = |t: &str| {
        h.runtime()
            .tenants()
            .into_iter()
            .find(|r| r.id == t)
            .unwrap()
            .plugins["example"]
            .version
            .clone()
    };
    assert_eq!(versions("old"), v("0.1.0"));
    assert_eq!(versions("new"), v("0.2.0"));
    ok_json(
        h.post("old", "example", "u", "/counter/c/increment", b"")
            .await,
    );
    ok_json(
        h.post("new", "example", "u", "/counter/c/increment", b"")
            .await,
    );
    assert_eq!(
        h.get("new", "example", "u", "/raw/migrated-from")
            .await
            .unwrap()
            .text(),
        "0.1.0"
    );
    assert_eq!(
        h.get("old", "example", "u", "/raw/migrated-from")
            .await
            .unwrap()
            .status,
        404
    );
    // Disable keeps data; enabling again (same version) brings it back.
    h.runtime().disable_plugin("old", "example").await.unwrap();
    assert_eq!(
        err_code(h.get("old", "example", "u", "/counter/c").await),
        "plugin_not_enabled"
    );
    h.runtime()
        .enable_plugin("old", "example", &v("0.1.0"), None, Default::default())
        .await
        .unwrap();
    assert_eq!(
        ok_json(h.get("old", "example", "u", "/counter/c").await)["value"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8_plugins_of_every_api_version_run_side_by_side() {
    // first-api is built against 0.1.0, next-api against 0.2.0, ledger
    // and example (the SDK) against 0.3.0.
    let h = harness(&["first-api", "next-api", "ledger", "example"]).await;
    tenant(
        &h,
        "acme",
        Limits::default(),
        &["first-api", "next-api", "ledger", "example"],
    )
    .await;
    for n in 1..=2 {
        assert_eq!(
            h.get("acme", "first-api", "u", "/").await.unwrap().text(),
            format!("api 0.1.0 call {n}")
        );
        assert_eq!(
            h.get("acme", "next-api", "u", "/").await.unwrap().text(),
            format!("api 0.2.0 call {n}")
        );
    }
    // The newest keeps working beside them, with the same capabilities.
    let v = ok_json(
        h.post("acme", "example", "u", "/counter/x/increment", b"")
            .await,
    );
    assert_eq!(v["value"], 1);
    // `describe` exists only from 0.2.0 on.
    let d = h
        .runtime()
        .describe("acme", "next-api")
        .await
        .unwrap()
        .unwrap();
    assert!(d.contains("\"next-api\""), "{d}");
    assert_eq!(
        h.runtime().describe("acme", "first-api").await.unwrap(),
        None
    );
    assert!(
        h.runtime()
            .describe("acme", "example")
            .await
            .unwrap()
            .is_some()
    );
    // A 0.1.0 component claiming to be 0.2.0 lacks `describe`: refused.
    let claims_newer = String::from_utf8(bump("first-api", "0.3.0"))
        .unwrap()
        .replace("api-version = \"0.1.0\"", "api-version = \"0.2.0\"");
    let e = h
        .install(claims_newer.as_bytes(), &component("first-api"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("describe"), "{e}");
    assert_eq!(e.code(), "wrong_world", "{e}");
    // A 0.3.0 component claiming to be 0.2.0 imports the telephony
    // package, which only 0.3.0 plugins may: refused.
    let older = String::from_utf8(bump("ledger", "0.3.0"))
        .unwrap()
        .replace("api-version = \"0.3.0\"", "api-version = \"0.2.0\"");
    let e = h
        .install(older.as_bytes(), &component("ledger"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "unsupported_api_version", "{e}");
    assert!(e.to_string().contains("switchboard:telephony"), "{e}");
}
