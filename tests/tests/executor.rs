//! SPEC K5: the plugin executor. Plugin calls run on threads of their own
//! with fair turns across tenants; the operator sets one tenant's limits
//! (its CPU share among them) online, through the admin API and the CLI,
//! audited; hostile limit changes are refused and change nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::admin::Op;
use switchboard::harness::Harness;
use switchboard::tenant::Limits;
use switchboard_tests::accounts::{console, enrol_mfa, person};
use switchboard_tests::http::Server;
use switchboard_tests::*;

async fn operator(h: &Harness, s: &Server) -> String {
    let (_, token) = person(h, s, "system", "olga", "operator").await;
    enrol_mfa(s, &token).await;
    token
}

fn limits_of(v: &Value) -> &Value {
    &v["limits"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_an_operator_sets_one_tenants_limits_online_and_it_is_audited() {
    let h = harness(&["hostile", "relay"]).await;
    tenant(&h, "acme", Limits::default(), &["hostile", "relay"]).await;
    tenant(&h, "globex", Limits::default(), &["relay"]).await;
    let s = Server::start(h.runtime().clone()).await;
    let op = operator(&h, &s).await;
    let (_, acme_admin) = person(&h, &s, "acme", "boss", "tenant-admin").await;
    let url = "/api/v1/admin/tenants/acme/limits";

    // The operator raises acme's CPU share and shortens its deadline.
    let r = s
        .call(
            "PATCH",
            url,
            Some(&op),
            Some(&json!({"cpu_share": 300, "deadline_ms": 300})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(limits_of(&r.json())["cpu_share"], 300);
    assert_eq!(limits_of(&r.json())["concurrency"], 32, "others stay");
    let set = h.runtime().limits("acme").unwrap();
    assert_eq!((set.cpu_share, set.deadline_ms), (300, 300));
    assert_eq!(h.runtime().limits("globex").unwrap(), Limits::default());

    // Online: the next call runs under the new deadline.
    let started = std::time::Instant::now();
    assert_eq!(
        err_code(h.get("acme", "hostile", "x", "/loop").await),
        "plugin_timeout"
    );
    assert!(started.elapsed() < Duration::from_millis(1900));

    // Audited in both trails, with what changed.
    for realm in ["system", "acme"] {
        let trail = console(
            &h,
            Op::AuditExport {
                realm: realm.into(),
                after: 0,
                limit: 1000,
            },
        )
        .await
        .to_string();
        assert!(
            trail.contains("tenant.limits") && trail.contains("cpu_share 100 -> 300"),
            "{realm}: {trail}"
        );
    }

    // The tenant's admin sees its own limits, never another's, and cannot
    // raise its own.
    let r = s.call("GET", url, Some(&acme_admin), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(limits_of(&r.json())["cpu_share"], 300);
    let r = s
        .call(
            "GET",
            "/api/v1/admin/tenants/globex/limits",
            Some(&acme_admin),
            None,
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    let r = s
        .call(
            "PATCH",
            url,
            Some(&acme_admin),
            Some(&json!({"cpu_share": 10000})),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));

    // Hostile changes: each refused with its code; nothing changes.
    let hostile = [
        json!({"cpu_share": 0}),
        json!({"cpu_share": 10001}),
        json!({"cpu_share": "lots"}),
        json!({"cpu_share": -5}),
        json!({"memory_bytes": 1u64 << 40}),
        json!({"no_such_limit": 1}),
        json!({"deadline_ms": 0, "cpu_share": 200}),
    ];
    for body in hostile {
        let r = s.call("PATCH", url, Some(&op), Some(&body)).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_limits"),
            "{body}: {}",
            r.text()
        );
    }
    let r = s.call("PATCH", url, Some(&op), Some(&json!([1, 2]))).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = s
        .call(
            "PATCH",
            "/api/v1/admin/tenants/nobody/limits",
            Some(&op),
            Some(&json!({"cpu_share": 200})),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "tenant_not_found"));
    assert_eq!(h.runtime().limits("acme").unwrap(), set);
    let r = s
        .call("PATCH", url, Some(&op), Some(&json!({"no_such_limit": 1})))
        .await;
    assert!(r.text().contains("cpu_share"), "names the known limits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_the_cli_shows_and_changes_limits() {
    use clap::Parser as _;
    let h = harness(&["relay"]).await;
    tenant(&h, "acme", Limits::default(), &["relay"]).await;
    let data = h.data_dir().to_str().unwrap().to_string();
    let rt = h.runtime().clone();
    let _dir = h.into_dir();
    drop(rt);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let run = |args: &[&str]| {
        let mut all = vec!["switchboard", "tenant", "limits", "--data", &data, "acme"];
        all.extend_from_slice(args);
        switchboard::cli::Cli::try_parse_from(all).unwrap()
    };
    switchboard::cli::run(run(&["--set", "cpu_share=250", "--set", "concurrency=8"]))
        .await
        .unwrap();
    let bad = switchboard::cli::run(run(&["--set", "cpu_share=0"])).await;
    assert!(
        bad.unwrap_err().to_string().contains("invalid_limits"),
        "a bad value is refused with its code"
    );
    let bad = switchboard::cli::run(run(&["--set", "cpu_share"])).await;
    assert!(bad.unwrap_err().to_string().contains("name=value"));
    let rt = switchboard::Runtime::open(switchboard::RuntimeConfig::new(&data)).unwrap();
    let l = rt.limits("acme").unwrap();
    assert_eq!((l.cpu_share, l.concurrency), (250, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_a_flooding_tenant_waits_in_its_own_queue() {
    let h = Arc::new(harness(&["hostile", "example"]).await);
    let flood_limits = Limits {
        deadline_ms: 1500,
        concurrency: 64,
        ..Limits::default()
    };
    tenant(&h, "looper", flood_limits, &["hostile"]).await;
    tenant(&h, "calm", Limits::default(), &["example"]).await;

    // 24 calls that each loop until their deadline: more than the
    // executor has threads, many times over.
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..24 {
        let (h, done) = (h.clone(), done.clone());
        loops.push(tokio::spawn(async move {
            let r = h.get("looper", "hostile", "x", "/loop").await;
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            err_code(r)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The other tenant's calls are served one after another while every
    // looping call is still running: they do not queue behind the flood.
    for i in 1..=20u64 {
        let v = ok_json(
            h.post("calm", "example", "c", "/counter/n/increment", b"")
                .await,
        );
        assert_eq!(v["value"], i);
    }
    assert_eq!(
        done.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the calm tenant finished before any looping call"
    );
    for l in loops {
        assert_eq!(l.await.unwrap(), "plugin_timeout");
    }
    // The executor counts each tenant's time.
    let cpu = |t: &str| switchboard::metrics::TENANT_CPU.value(&[t]);
    let wait = |t: &str| switchboard::metrics::TENANT_CPU_WAIT.value(&[t]);
    assert!(
        cpu("looper") > 10 * cpu("calm"),
        "{} {}",
        cpu("looper"),
        cpu("calm")
    );
    assert!(wait("looper") > 0);
    let text = switchboard::metrics::render();
    assert!(text.contains("switchboard_tenant_cpu_microseconds_total{tenant=\"looper\"}"));
}

/// Cranelift's compile threads run at the plugin threads' priority (nice
/// 10 by default), so a package compiled while the server runs competes
/// with plugin code, not with the network threads.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_compiles_run_on_low_priority_threads() {
    // A fresh data folder has an empty compile cache: this compiles.
    let _h = harness(&["example"]).await;
    let mut found = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with("sb-cranelift-") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the command's closing parenthesis start at field 3
        // (state); nice is field 19.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let nice = after.split_whitespace().nth(16).unwrap();
        assert_eq!(nice, "10", "{}: {stat}", comm.trim());
        found += 1;
    }
    assert!(
        found > 0,
        "no sb-cranelift-* threads: the compile pool was not built by the kernel"
    );
}
