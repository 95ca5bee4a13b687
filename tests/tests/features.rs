//! The kernel-side capabilities a plugin builds on: config, timers,
//! events, lifecycle hooks (init, migrate) — each through a real plugin.

use switchboard::runtime::{Event, Method};
use switchboard::tenant::Limits;
use switchboard_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_take_effect_on_the_next_call_and_bad_values_are_refused() {
    let h = harness(&["ledger", "example"]).await;
    tenant(&h, "acme", Limits::default(), &["ledger", "example"]).await;
    assert_eq!(
        h.get("acme", "example", "u", "/public/hello")
            .await
            .unwrap()
            .text(),
        "hello"
    );

    let mut cfg = serde_json::Map::new();
    cfg.insert("greeting".into(), "bonjour".into());
    h.runtime()
        .set_config("acme", "example", cfg)
        .await
        .unwrap();
    assert_eq!(
        h.get("acme", "example", "u", "/public/hello")
            .await
            .unwrap()
            .text(),
        "bonjour"
    );

    let mut bad = serde_json::Map::new();
    bad.insert("greeting".into(), "x".repeat(65).into());
    let e = h
        .runtime()
        .set_config("acme", "example", bad)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_setting", "{e}");
    let mut unknown = serde_json::Map::new();
    unknown.insert("colour".into(), "red".into());
    assert_eq!(
        h.runtime()
            .set_config("acme", "example", unknown)
            .await
            .unwrap_err()
            .code(),
        "invalid_setting"
    );
    // The refused changes left the previous settings in force.
    assert_eq!(
        h.get("acme", "example", "u", "/public/hello")
            .await
            .unwrap()
            .text(),
        "bonjour"
    );

    let mut off = serde_json::Map::new();
    off.insert("notes-enabled".into(), false.into());
    h.runtime()
        .set_config("acme", "example", off)
        .await
        .unwrap();
    let r = h
        .call(
            "acme",
            "example",
            "u",
            Method::Put,
            "/notes/1",
            br#"{"text":"hi"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_once_can_be_cancelled_and_are_not_set_by_failed_calls() {
    let h = harness(&["ledger", "example"]).await;
    tenant(&h, "acme", Limits::default(), &["ledger", "example"]).await;
    let schedule = |name: &str, delay: u64, fail: bool| {
        serde_json::json!({"delay_ms": delay, "name": name, "payload": format!("payload-{name}"), "then_fail": fail}).to_string()
    };
    ok_json(
        h.post(
            "acme",
            "example",
            "u",
            "/timers",
            schedule("t1", 0, false).as_bytes(),
        )
        .await,
    );
    let t2 = ok_json(
        h.post(
            "acme",
            "example",
            "u",
            "/timers",
            schedule("t2", 0, false).as_bytes(),
        )
        .await,
    );
    let cancel = ok_json(
        h.call(
            "acme",
            "example",
            "u",
            Method::Delete,
            &format!("/timers/{}", t2["id"].as_str().unwrap()),
            b"",
        )
        .await,
    );
    assert_eq!(cancel["cancelled"], true);
    assert_eq!(
        err_code(
            h.post(
                "acme",
                "example",
                "u",
                "/timers",
                schedule("t3", 0, true).as_bytes()
            )
            .await
        ),
        "plugin_trap"
    );
    ok_json(
        h.post(
            "acme",
            "example",
            "u",
            "/timers",
            schedule("later", 3_600_000, false).as_bytes(),
        )
        .await,
    );

    assert_eq!(h.runtime().fire_due_timers().await, 1);
    assert_eq!(
        h.get("acme", "example", "u", "/fired/t1")
            .await
            .unwrap()
            .text(),
        "payload-t1"
    );
    for never in ["t2", "t3", "later"] {
        assert_eq!(
            h.get("acme", "example", "u", &format!("/fired/{never}"))
                .await
                .unwrap()
                .status,
            404,
            "{never}"
        );
    }
    // Fired timers are gone; a second pass delivers nothing.
    assert_eq!(h.runtime().fire_due_timers().await, 0);
    let bad = h
        .call(
            "acme",
            "example",
            "u",
            Method::Delete,
            "/timers/not-an-id",
            b"",
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scheduler_delivers_due_timers() {
    let h = harness(&["ledger", "example"]).await;
    tenant(&h, "acme", Limits::default(), &["ledger", "example"]).await;
    let _scheduler = switchboard::scheduler::Scheduler::start(h.runtime(), Default::default());
    let body = serde_json::json!({"delay_ms": 50, "name": "bg", "payload": "x"}).to_string();
    ok_json(
        h.post("acme", "example", "u", "/timers", body.as_bytes())
            .await,
    );
    // Bounded wait: the scheduler polls every 250 ms and is woken by commits.
    for _ in 0..50 {
        if h.get("acme", "example", "u", "/fired/bg")
            .await
            .unwrap()
            .status
            == 200
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the timer did not fire within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_on_event() {
    let h = harness(&["ledger", "example"]).await;
    tenant(&h, "acme", Limits::default(), &["ledger", "example"]).await;
    let event = Event {
        source: "host".into(),
        kind: "presence".into(),
        data: b"away".to_vec(),
    };
    h.runtime()
        .deliver_event("acme", "example", event)
        .await
        .unwrap();
    assert_eq!(
        h.get("acme", "example", "u", "/events/presence")
            .await
            .unwrap()
            .text(),
        "away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k7_init_runs_on_enable_migrate_on_upgrade_and_a_failed_migration_changes_nothing() {
    let h = harness(&["ledger", "example", "hostile"]).await;
    tenant(
        &h,
        "acme",
        Limits::default(),
        &["ledger", "example", "hostile"],
    )
    .await;
    assert_eq!(
        h.get("acme", "example", "u", "/raw/initialized")
            .await
            .unwrap()
            .text(),
        "yes"
    );

    // Version 0.2.0 of example: same component, newer manifest.
    let v2 = String::from_utf8(manifest("example"))
        .unwrap()
        .replace("version = \"0.1.0\"\napi", "version = \"0.2.0\"\napi");
    h.install(v2.as_bytes(), &component("example"))
        .await
        .unwrap();
    h.runtime()
        .enable_plugin(
            "acme",
            "example",
            &semver::Version::new(0, 2, 0),
            None,
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        h.get("acme", "example", "u", "/raw/migrated-from")
            .await
            .unwrap()
            .text(),
        "0.1.0"
    );

    // hostile refuses every migration: the tenant stays on 0.1.0 and the
    // write made during the failed migration is not kept.
    assert_eq!(
        h.post("acme", "hostile", "u", "/plant", b"before")
            .await
            .unwrap()
            .status,
        204
    );
    let hv2 = String::from_utf8(manifest("hostile"))
        .unwrap()
        .replace("version = \"0.1.0\"\napi", "version = \"0.2.0\"\napi");
    h.install(hv2.as_bytes(), &component("hostile"))
        .await
        .unwrap();
    let e = h
        .runtime()
        .enable_plugin(
            "acme",
            "hostile",
            &semver::Version::new(0, 2, 0),
            None,
            Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "plugin_hook_failed", "{e}");
    assert!(
        e.to_string().contains("refusing to migrate from 0.1.0"),
        "{e}"
    );
    let record = h
        .runtime()
        .tenants()
        .into_iter()
        .find(|t| t.id == "acme")
        .unwrap();
    assert_eq!(
        record.plugins["hostile"].version,
        semver::Version::new(0, 1, 0)
    );
    let report = ok_json(h.get("acme", "hostile", "u", "/probe").await);
    assert!(
        report["scan-all"]["ok"]
            .as_str()
            .unwrap()
            .contains("before")
    );
    assert!(
        !report["scan-all"]["ok"]
            .as_str()
            .unwrap()
            .contains("migration-attempted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_page_through_kv_scans() {
    let h = harness(&["ledger", "example"]).await;
    tenant(&h, "acme", Limits::default(), &["ledger", "example"]).await;
    for i in 0..7 {
        let body = format!(r#"{{"text":"note {i}"}}"#);
        ok_json(
            h.call(
                "acme",
                "example",
                "u",
                Method::Put,
                &format!("/notes/{i:02}"),
                body.as_bytes(),
            )
            .await,
        );
    }
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let path = match &after {
            Some(a) => format!("/notes?limit=3&after={a}"),
            None => "/notes?limit=3".into(),
        };
        let page = ok_json(h.get("acme", "example", "u", &path).await);
        ids.extend(
            page["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(ids, (0..7).map(|i| format!("{i:02}")).collect::<Vec<_>>());
    let bad = h
        .call("acme", "example", "u", Method::Put, "/notes/x", b"not json")
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json().unwrap()["code"], "invalid_json");
}
