//! SPEC K3, K4, K6: tenants and plugins cannot see each other's data, and
//! no state survives between calls.

use switchboard::tenant::Limits;
use switchboard_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_the_same_key_in_two_tenants_is_independent() {
    let h = harness(&["ledger", "example"]).await;
    for t in ["alpha", "beta"] {
        tenant(&h, t, Limits::default(), &["ledger", "example"]).await;
    }
    for _ in 0..3 {
        ok_json(
            h.post("alpha", "example", "ann", "/counter/hits/increment", b"")
                .await,
        );
    }
    let beta = ok_json(
        h.post("beta", "example", "bob", "/counter/hits/increment", b"")
            .await,
    );
    assert_eq!(beta["value"], 1);
    assert_eq!(
        ok_json(h.get("alpha", "example", "ann", "/counter/hits").await)["value"],
        3
    );

    ok_json(
        h.call(
            "alpha",
            "example",
            "ann",
            switchboard::runtime::Method::Put,
            "/notes/1",
            br#"{"text":"alpha only"}"#,
        )
        .await,
    );
    let r = h.get("beta", "example", "bob", "/notes/1").await.unwrap();
    assert_eq!(r.status, 404);
    // The same plugin's other tenant and another plugin of the same tenant
    // both start empty.
    assert_eq!(ok_json(h.get("alpha", "ledger", "ann", "/count").await), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_crafted_keys_cannot_reach_another_tenant_or_plugin() {
    let h = harness(&["hostile", "ledger", "example"]).await;
    tenant(
        &h,
        "victim",
        Limits::default(),
        &["hostile", "ledger", "example"],
    )
    .await;
    tenant(&h, "attacker", Limits::default(), &["hostile"]).await;
    let planted = h
        .post("victim", "hostile", "v", "/plant", b"VICTIM-SECRET")
        .await
        .unwrap();
    assert_eq!(planted.status, 204);
    ok_json(
        h.call(
            "victim",
            "example",
            "v",
            switchboard::runtime::Method::Put,
            "/notes/x",
            br#"{"text":"VICTIM-NOTE"}"#,
        )
        .await,
    );

    // Sanity: the probe does find data that is in its own namespace, so the
    // checks below can fail.
    let own = h
        .get("victim", "hostile", "v", "/probe")
        .await
        .unwrap()
        .text();
    assert!(own.contains("VICTIM-SECRET"), "{own}");

    let report = ok_json(h.get("attacker", "hostile", "eve", "/probe").await);
    let text = report.to_string();
    assert!(!text.contains("VICTIM"), "attacker saw victim data: {text}");
    for probe in [
        "dotdot",
        "dotdot-tenant",
        "absolute",
        "sys",
        "nul",
        "non-utf8",
        "plain",
    ] {
        assert_eq!(report[probe]["ok"], "None", "{probe}: {}", report[probe]);
    }
    assert!(
        report["empty"]["err"]
            .as_str()
            .unwrap()
            .contains("InvalidArgument")
    );
    assert!(report["long"]["err"].as_str().unwrap().contains("TooLarge"));
    assert!(
        report["set-long"]["err"]
            .as_str()
            .unwrap()
            .contains("TooLarge")
    );
    // Non-UTF-8 keys are legal and stay in the plugin's own namespace.
    assert!(
        report["get-non-utf8"]["ok"]
            .as_str()
            .unwrap()
            .contains("mine")
    );
    assert_eq!(report["scan-dotdot"]["ok"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_no_state_survives_between_calls() {
    let h = harness(&["hostile"]).await;
    tenant(&h, "acme", Limits::default(), &["hostile"]).await;
    for _ in 0..5 {
        // The plugin increments a global on every call; a fresh instance
        // per call means it always sees its first call.
        assert_eq!(ok_json(h.get("acme", "hostile", "u", "/global").await), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3_calling_a_plugin_not_declared_in_the_manifest_is_denied() {
    let h = harness(&["hostile", "ledger", "example"]).await;
    tenant(
        &h,
        "acme",
        Limits::default(),
        &["hostile", "ledger", "example"],
    )
    .await;
    let r = h.get("acme", "hostile", "u", "/undeclared").await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    let body = r.json().unwrap();
    assert_eq!(body["code"], "denied");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not declare")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_a_callee_sees_the_real_principal_not_what_the_caller_wrote() {
    let h = harness(&["ledger", "example"]).await;
    tenant(&h, "acme", Limits::default(), &["ledger", "example"]).await;
    let who = ok_json(h.get("acme", "example", "alice", "/ledger-whoami").await);
    // The SDK sends an anonymous placeholder; the host substitutes the
    // caller's principal and names the calling plugin.
    assert_eq!(who["user"], "alice");
    assert_eq!(who["tenant"], "acme");
    assert_eq!(who["caller_plugin"], "example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_a_principal_of_another_tenant_is_refused() {
    let h = harness(&["ledger", "example"]).await;
    tenant(&h, "acme", Limits::default(), &["ledger", "example"]).await;
    tenant(&h, "other", Limits::default(), &["ledger", "example"]).await;
    let req = switchboard::runtime::Request::new(
        switchboard::runtime::Method::Get,
        "/counter/x",
        switchboard::runtime::Principal::user("other", "mallory"),
    );
    let err = h
        .runtime()
        .handle("acme", "example", req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "internal");
    assert_eq!(
        err_code(h.get("nope", "example", "u", "/counter/x").await),
        "tenant_not_found"
    );
    assert_eq!(
        err_code(h.get("acme", "hostile", "u", "/global").await),
        "plugin_not_enabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k2_wasi_gives_clocks_and_random_but_no_files_sockets_or_environment() {
    let h = harness(&["hostile"]).await;
    tenant(&h, "acme", Limits::default(), &["hostile"]).await;
    let r = ok_json(h.get("acme", "hostile", "u", "/escape").await);
    for denied in [
        "read-file",
        "list-dir",
        "write-file",
        "tcp-connect",
        "udp-bind",
        "dns",
    ] {
        let outcome = r[denied].as_str().unwrap();
        assert!(
            outcome.starts_with("Err("),
            "{denied} escaped the sandbox: {outcome}"
        );
    }
    assert_eq!(r["env"], 0);
    assert_eq!(r["args"], 0);
    assert!(
        r["clock"].as_u64().unwrap() > 1_700_000_000,
        "wall clock works: {r}"
    );
    assert_eq!(r["random"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_where_a_string_is_expected_traps_the_call_and_stores_nothing() {
    let h = harness(&["hostile"]).await;
    tenant(&h, "acme", Limits::default(), &["hostile"]).await;
    assert_eq!(
        err_code(h.get("acme", "hostile", "u", "/bad-utf8").await),
        "plugin_trap"
    );
    let report = ok_json(h.get("acme", "hostile", "u", "/probe").await);
    assert!(
        !report["scan-all"]["ok"]
            .as_str()
            .unwrap()
            .contains("before-bad-utf8")
    );
    let huge = report["set-huge-value"]["err"].as_str().unwrap_or_default();
    assert!(huge.contains("TooLarge"), "{report}");
}
