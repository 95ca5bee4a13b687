//! SPEC K5, K6: deadlines, memory caps, response and host-bytes limits,
//! concurrency; each failure is distinct and reaches only its caller.

use std::time::{Duration, Instant};

use switchboard::tenant::Limits;
use switchboard_tests::*;

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_an_infinite_loop_times_out_while_another_tenant_keeps_being_served() {
    let h = std::sync::Arc::new(harness(&["hostile", "ledger", "example"]).await);
    tenant(&h, "looper", limits(|l| l.deadline_ms = 400), &["hostile"]).await;
    tenant(&h, "calm", Limits::default(), &["ledger", "example"]).await;

    let mut loops = Vec::new();
    for _ in 0..4 {
        let h = h.clone();
        loops.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = h.get("looper", "hostile", "x", "/loop").await;
            (err_code(r), started.elapsed())
        }));
    }
    // While four loops hold the (two) worker threads' attention, the other
    // tenant's calls must still complete.
    for i in 1..=20u64 {
        let v = ok_json(
            h.post("calm", "example", "c", "/counter/n/increment", b"")
                .await,
        );
        assert_eq!(v["value"], i);
    }
    for l in loops {
        let (code, elapsed) = l.await.unwrap();
        assert_eq!(code, "plugin_timeout");
        assert!(
            elapsed >= Duration::from_millis(400),
            "timed out early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(10),
            "deadline not enforced: {elapsed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_a_memory_bomb_traps_with_plugin_memory() {
    let h = harness(&["hostile"]).await;
    tenant(
        &h,
        "acme",
        limits(|l| l.memory_bytes = 16 << 20),
        &["hostile"],
    )
    .await;
    let err = h.get("acme", "hostile", "u", "/alloc").await.unwrap_err();
    assert_eq!(err.code(), "plugin_memory");
    assert_eq!(err.http_status(), 502);
    assert!(err.to_string().contains("16777216"));
    // The tenant is served normally afterwards.
    assert_eq!(ok_json(h.get("acme", "hostile", "u", "/global").await), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_panics_and_stack_overflows_are_plugin_traps() {
    let h = harness(&["hostile"]).await;
    tenant(&h, "acme", Limits::default(), &["hostile"]).await;
    assert_eq!(
        err_code(h.get("acme", "hostile", "u", "/panic").await),
        "plugin_trap"
    );
    assert_eq!(
        err_code(h.get("acme", "hostile", "u", "/recurse").await),
        "plugin_trap"
    );
    assert_eq!(ok_json(h.get("acme", "hostile", "u", "/global").await), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_oversized_responses_and_bad_statuses_are_refused() {
    let h = harness(&["hostile"]).await;
    tenant(
        &h,
        "acme",
        limits(|l| l.response_bytes = 1 << 20),
        &["hostile"],
    )
    .await;
    let err = h
        .get("acme", "hostile", "u", "/big-response?mb=4")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "plugin_response_too_large");
    assert_eq!(
        err_code(h.get("acme", "hostile", "u", "/bad-status").await),
        "plugin_bad_response"
    );
    let small = h
        .get("acme", "hostile", "u", "/big-response?mb=0")
        .await
        .unwrap();
    assert_eq!(small.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_bytes_passed_to_the_host_are_capped_per_call() {
    let h = harness(&["hostile"]).await;
    tenant(
        &h,
        "acme",
        limits(|l| l.host_bytes_per_call = 8 << 20),
        &["hostile"],
    )
    .await;
    let v = ok_json(h.get("acme", "hostile", "u", "/host-bytes").await);
    let after = v["refused_after"]
        .as_u64()
        .expect("the host refused at some point");
    assert!((6..=8).contains(&after), "refused after {after} MiB");
    assert!(v["error"].as_str().unwrap().contains("TooLarge"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_stderr_and_log_floods_are_bounded_not_fatal() {
    let h = harness(&["hostile"]).await;
    tenant(&h, "acme", Limits::default(), &["hostile"]).await;
    assert_eq!(
        h.get("acme", "hostile", "u", "/stderr-spam")
            .await
            .unwrap()
            .status,
        204
    );
    assert_eq!(
        h.get("acme", "hostile", "u", "/log-spam")
            .await
            .unwrap()
            .status,
        204
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_a_tenant_over_its_concurrency_gets_tenant_busy() {
    let h = std::sync::Arc::new(harness(&["hostile", "ledger", "example"]).await);
    tenant(
        &h,
        "narrow",
        limits(|l| {
            l.concurrency = 1;
            l.queue_timeout_ms = 50;
            l.deadline_ms = 1500;
        }),
        &["hostile"],
    )
    .await;
    tenant(&h, "other", Limits::default(), &["ledger", "example"]).await;
    let busy = {
        let h = h.clone();
        tokio::spawn(async move { h.get("narrow", "hostile", "u", "/loop").await })
    };
    // Give the loop time to take the only slot (bounded wait).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = h
        .get("narrow", "hostile", "u", "/global")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "tenant_busy");
    assert_eq!(err.http_status(), 429);
    // Another tenant is not affected by the first one's full slots.
    ok_json(
        h.post("other", "example", "u", "/counter/a/increment", b"")
            .await,
    );
    assert_eq!(err_code(busy.await.unwrap()), "plugin_timeout");
}
