//! Gateway benchmarks (issue 6). Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench gateway
//!
//! - HTTPS keep-alive requests/s and p50/p99 latency, 16 connections:
//!   a trivial plugin route, a plugin route writing to `kv`, and a native
//!   hyper handler behind the same TLS listener settings (the ratio is the
//!   cost of the sandbox, the session check and the gateway);
//! - tenant isolation under load (SPEC K5): one tenant's latency and the
//!   host's `/healthz` alone, and while another tenant floods the server
//!   with CPU-bound calls, with calls that loop to their deadline, and
//!   with calls that hoard memory to their cap;
//! - WebSocket fan-out: one publish to 1,000 connected streams, latency
//!   to each receiver, p50/p99;
//! - memory per idle WebSocket (RSS growth over 1,000 streams; client and
//!   server run in this one process, so this is an upper bound).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use switchboard::harness::Harness;
use switchboard::tenant::Limits;
use switchboard_tests::http::{Server, serve_tls};
use switchboard_tests::load::{
    guest_streams, keep_alive, line, load, pct, publish_latencies, relay_guests, rss_kib, runtimes,
    sign_in,
};
use switchboard_tests::{component, manifest};

const CONNECTIONS: usize = 16;

/// A plain hyper handler behind a TLS listener configured like the
/// gateway's (same certificate, same ALPN, same rustls provider).
async fn native_server() -> SocketAddr {
    serve_tls(|_req| async {
        hyper::Response::new(Full::new(Bytes::from_static(
            br#"{"tenant":"acme","user":"u","role":"Role::User"}"#,
        )))
    })
    .await
}

fn get(addr: SocketAddr, path: &str, token: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::get(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn main() {
    let (server_rt, client_rt) = runtimes();
    let (h, s, native) = server_rt.block_on(async {
        let h = Harness::new().unwrap();
        for p in ["relay", "hostile"] {
            h.install(&manifest(p), &component(p)).await.unwrap();
        }
        let generous = Limits {
            requests_per_second: 1_000_000,
            ..Limits::default()
        };
        for t in ["acme", "globex"] {
            h.tenant_with_limits(t, generous.clone()).await.unwrap();
            h.enable(t, "relay").await.unwrap();
        }
        // The noisy tenant also runs the plugin that loops and hoards.
        h.enable("acme", "hostile").await.unwrap();
        let s = Server::start(h.runtime().clone()).await;
        let native = native_server().await;
        (h, s, native)
    });
    client_rt.block_on(bench(&h, &s, native));
    drop(s);
    server_rt.shutdown_background();
}

async fn bench(h: &Harness, s: &Server, native: SocketAddr) {
    let addr = s.addr;
    let alice = sign_in(h, s, "acme", "alice").await;
    let gina = sign_in(h, s, "globex", "gina").await;

    println!("HTTPS keep-alive, {CONNECTIONS} connections (TLS 1.3, HTTP/1.1)");
    // Warm up the instance pool and the session path.
    let token = alice.clone();
    load(
        addr,
        CONNECTIONS,
        50,
        Arc::new(move |_| get(addr, "/api/v1/t/acme/p/relay/hello", &token)),
    )
    .await;
    let token = alice.clone();
    let (rps, lat) = load(
        addr,
        CONNECTIONS,
        1000,
        Arc::new(move |_| get(addr, "/api/v1/t/acme/p/relay/hello", &token)),
    )
    .await;
    line("plugin route (trivial)", rps, lat);
    let plugin_rps = rps;
    let token = alice.clone();
    let (rps, lat) = load(
        addr,
        CONNECTIONS,
        500,
        Arc::new(move |i| {
            hyper::Request::post(format!("/api/v1/t/acme/p/relay/kv/key{i}"))
                .header("host", addr.to_string())
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::from(vec![b'v'; 256])))
                .unwrap()
        }),
    )
    .await;
    line("plugin route writing 256 B to kv", rps, lat);
    load(
        native,
        CONNECTIONS,
        50,
        Arc::new(move |_| get(native, "/hello", "")),
    )
    .await;
    let (rps, lat) = load(
        native,
        CONNECTIONS,
        1000,
        Arc::new(move |_| get(native, "/hello", "")),
    )
    .await;
    line("native hyper handler (same TLS)", rps, lat);
    println!(
        "  plugin route / native handler throughput: {:.2}",
        plugin_rps / rps
    );

    // Isolation: globex (and the host's own /healthz) alone, then while
    // acme floods in three ways (SPEC K5).
    println!("\nTenant isolation (globex, one connection, sequential; p50 / p99)");
    let quiet = probe(addr, "/api/v1/t/globex/p/relay/hello", &gina).await;
    let quiet_health = probe(addr, "/healthz", "").await;
    println!(
        "{:<44} globex {}   /healthz {}",
        "alone",
        p50_p99(&quiet),
        p50_p99(&quiet_health)
    );
    let floods = [
        (
            "CPU-bound 5 ms calls, 64 conns",
            "/api/v1/t/acme/p/relay/busy?ms=5",
            64,
        ),
        (
            "calls looping to their deadline, 16 conns",
            "/api/v1/t/acme/p/hostile/loop",
            16,
        ),
        (
            "calls hoarding to their memory cap, 32 conns",
            "/api/v1/t/acme/p/hostile/alloc",
            32,
        ),
    ];
    for (label, path, conns) in floods {
        let (loaded, health, served, refused) = under_flood(addr, &alice, &gina, path, conns).await;
        println!(
            "{:<44} globex {} ({:.1}x p99)   /healthz {}",
            format!("acme floods: {label}"),
            p50_p99(&loaded),
            pct(loaded.clone(), 0.99) / pct(quiet.clone(), 0.99),
            p50_p99(&health),
        );
        println!("  acme's flood: {served} answered 2xx, {refused} refused or failed");
    }

    // WebSocket fan-out to 1,000 guests.
    println!("\nWebSocket fan-out (1,000 streams over TLS)");
    let guests = relay_guests(s, &alice, 1000).await;
    let before = rss_kib(std::process::id());
    let streams = guest_streams(addr, &guests).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(std::process::id());
    println!(
        "memory per idle stream (client + server, upper bound): {:.1} KiB",
        (after.saturating_sub(before)) as f64 / 1000.0
    );
    // The receivers form a group, as a live meeting's participants do.
    let lat = publish_latencies(addr, &alice, streams, 20).await;
    println!(
        "{:<38} p50 {:>6.2} ms   p99 {:>6.2} ms   ({} deliveries)",
        "publish -> receipt, 1,000 receivers",
        pct(lat.clone(), 0.5),
        pct(lat.clone(), 0.99),
        lat.len()
    );
}

/// Latencies (ms) of 300 sequential requests to `path` on one keep-alive
/// connection.
async fn probe(addr: SocketAddr, path: &str, token: &str) -> Vec<f64> {
    let mut sender = keep_alive(addr).await;
    let mut lat = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        sender.ready().await.unwrap();
        let resp = sender.send_request(get(addr, path, token)).await.unwrap();
        let _ = resp.into_body().collect().await;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat
}

fn p50_p99(lat: &[f64]) -> String {
    format!(
        "{:>6.2} / {:>6.2} ms",
        pct(lat.to_vec(), 0.5),
        pct(lat.to_vec(), 0.99)
    )
}

/// Globex's and /healthz's latencies while acme's `conns` connections
/// send `path` back to back; and how many of acme's calls were answered
/// 2xx and otherwise.
async fn under_flood(
    addr: SocketAddr,
    alice: &str,
    gina: &str,
    path: &'static str,
    conns: usize,
) -> (Vec<f64>, Vec<f64>, u64, u64) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..conns {
        let token = alice.to_string();
        let stop = stop.clone();
        flood.push(tokio::spawn(async move {
            let mut sender = keep_alive(addr).await;
            let (mut ok, mut refused) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if sender.ready().await.is_err() {
                    sender = keep_alive(addr).await;
                    continue;
                }
                let Ok(resp) = sender.send_request(get(addr, path, &token)).await else {
                    refused += 1;
                    continue;
                };
                if resp.status().is_success() {
                    ok += 1;
                } else {
                    refused += 1;
                }
                let _ = resp.into_body().collect().await;
            }
            (ok, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = probe(addr, "/api/v1/t/globex/p/relay/hello", gina).await;
    let health = probe(addr, "/healthz", "").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut refused) = (0, 0);
    for f in flood {
        let (o, r) = f.await.unwrap();
        ok += o;
        refused += r;
    }
    (loaded, health, ok, refused)
}
