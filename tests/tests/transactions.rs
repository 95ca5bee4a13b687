//! SPEC K6: a call's writes commit atomically when it returns and vanish
//! when it fails — across plugin calls too — and concurrent calls never
//! lose updates.

use std::sync::Arc;

use switchboard::tenant::Limits;
use switchboard_tests::*;

fn scan_keys(report: &serde_json::Value) -> String {
    report["scan-all"]["ok"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_writes_of_a_trapped_or_timed_out_call_are_invisible() {
    let h = harness(&["hostile"]).await;
    let l = Limits {
        deadline_ms: 300,
        ..Limits::default()
    };
    tenant(&h, "acme", l, &["hostile"]).await;
    assert_eq!(
        err_code(
            h.post("acme", "hostile", "u", "/write-then-panic", b"")
                .await
        ),
        "plugin_trap"
    );
    assert_eq!(
        err_code(
            h.post("acme", "hostile", "u", "/write-then-loop", b"")
                .await
        ),
        "plugin_timeout"
    );
    let report = ok_json(h.get("acme", "hostile", "u", "/probe").await);
    assert!(!scan_keys(&report).contains("partial"), "{report}");
    // Sanity: a write that commits is visible to the same scan.
    assert_eq!(
        h.post("acme", "hostile", "u", "/plant", b"kept")
            .await
            .unwrap()
            .status,
        204
    );
    let report = ok_json(h.get("acme", "hostile", "u", "/probe").await);
    assert!(scan_keys(&report).contains("kept"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_a_hundred_concurrent_increments_give_exactly_a_hundred() {
    let h = Arc::new(harness(&["ledger", "example"]).await);
    let l = Limits {
        concurrency: 100,
        queue_timeout_ms: 30_000,
        ..Limits::default()
    };
    tenant(&h, "acme", l, &["ledger", "example"]).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            h.post(
                "acme",
                "example",
                &format!("u{i}"),
                "/counter/shared/increment",
                b"",
            )
            .await
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        let v = ok_json(t.await.unwrap());
        seen.push(v["value"].as_u64().unwrap());
    }
    seen.sort_unstable();
    // Every call saw a distinct value: no two read the same count.
    assert_eq!(seen, (1..=100).collect::<Vec<u64>>());
    assert_eq!(
        ok_json(h.get("acme", "example", "u", "/counter/shared").await)["value"],
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_a_change_spanning_two_plugins_commits_or_vanishes_as_one() {
    let h = harness(&["ledger", "example"]).await;
    tenant(&h, "acme", Limits::default(), &["ledger", "example"]).await;
    let v = ok_json(h.post("acme", "example", "alice", "/transfer", b"").await);
    assert_eq!(v["transfers"], 1);
    assert_eq!(ok_json(h.get("acme", "ledger", "alice", "/count").await), 1);

    // The caller traps after the callee wrote: both writes vanish.
    assert_eq!(
        err_code(
            h.post("acme", "example", "alice", "/transfer?fail=after", b"")
                .await
        ),
        "plugin_trap"
    );
    assert_eq!(ok_json(h.get("acme", "ledger", "alice", "/count").await), 1);

    // The callee traps: the caller gets an error it turns into a 500, which
    // rolls back the caller's own write too.
    let r = h
        .post("acme", "example", "alice", "/transfer?fail=callee", b"")
        .await
        .unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("plugin_trap"), "{}", r.text());
    assert_eq!(ok_json(h.get("acme", "ledger", "alice", "/count").await), 1);

    let v = ok_json(h.post("acme", "example", "alice", "/transfer", b"").await);
    assert_eq!(v["transfers"], 2);
    assert_eq!(ok_json(h.get("acme", "ledger", "alice", "/count").await), 2);
}
