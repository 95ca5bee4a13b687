//! Identity and audit benchmarks (issue 5). Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench identity
//!
//! - session check per request (`Identity::authenticate`: token parse,
//!   session read, account read), p50/p99;
//! - password sign-in latency (argon2id m=19 MiB, t=2, p=1), p50/max;
//! - audit appends/s (one chain, group commit) and verification speed.

use std::time::Instant;

use serde_json::json;
use switchboard::admin::{self, Actor, Op};
use switchboard::audit::{Record, Scope};
use switchboard::harness::Harness;
use switchboard::identity::Login;

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::main]
async fn main() {
    let h = Harness::new().unwrap();
    let rt = h.runtime().clone();
    rt.create_tenant("acme", None).await.unwrap();
    let created = admin::execute(
        &rt,
        &Actor::Console,
        Op::UserCreate {
            realm: "acme".into(),
            account: serde_json::from_value(
                json!({"username": "bench", "role": "user", "password": "Tr4il-Blazer#2026"}),
            )
            .unwrap(),
        },
    )
    .await
    .unwrap();
    let _ = created;
    let realm = Scope::tenant("acme");
    let ids = rt.identity();

    let mut login_ms = Vec::new();
    let mut token = String::new();
    for _ in 0..20 {
        let t = Instant::now();
        let issued = ids
            .login(
                &realm,
                Login {
                    username: "bench",
                    password: "Tr4il-Blazer#2026",
                    ..Login::default()
                },
            )
            .await
            .unwrap();
        login_ms.push(t.elapsed().as_secs_f64() * 1e3);
        token = issued.token;
    }
    println!(
        "password sign-in (argon2id verify + session write): p50 {:.1} ms, max {:.1} ms (n=20)",
        pct(login_ms.clone(), 0.5),
        pct(login_ms, 1.0)
    );

    let mut auth_us = Vec::new();
    for _ in 0..20_000 {
        let t = Instant::now();
        ids.authenticate(&token).unwrap();
        auth_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "session check per request: p50 {:.1} µs, p99 {:.1} µs (n=20000)",
        pct(auth_us.clone(), 0.5),
        pct(auth_us, 0.99)
    );
    let mut bad_us = Vec::new();
    let forged = format!("sb1.acme.{}", "A".repeat(43));
    for _ in 0..20_000 {
        let t = Instant::now();
        let _ = ids.authenticate(&forged);
        bad_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "unknown token rejected: p50 {:.1} µs (n=20000)",
        pct(bad_us, 0.5)
    );

    let log = rt.audit_log();
    let n = 20_000;
    let t = Instant::now();
    let mut last = 0;
    for i in 0..n {
        last = log
            .append(
                &realm,
                Record {
                    action: "bench.append",
                    target: &format!("t{i}"),
                    outcome: "success",
                    details: "",
                },
            )
            .unwrap();
    }
    rt.data_store().durable(last).await.unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "audit appends: {:.0}/s ({n} entries, durable at the end)",
        n as f64 / secs
    );
    log.checkpoint_all().unwrap();
    let t = Instant::now();
    let report = log.verify(&realm).unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(report.is_intact());
    println!(
        "audit verify: {:.0} entries/s ({} entries, {} checkpoints)",
        report.entries as f64 / secs,
        report.entries,
        report.checkpoints
    );
}
