//! The plugin executor's fairness (SPEC K5), in process (no TLS, no HTTP):
//! prints figures, asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench fairness
//!
//! - a quiet tenant's `Runtime::handle` latency alone, then while a noisy
//!   tenant floods the executor with CPU-bound 5 ms calls, with calls
//!   looping to their deadline, and with calls hoarding memory to their
//!   cap (p50 / p99 / max of 1,000 sequential calls);
//! - two tenants flooding at once with CPU shares 300 and 100: the CPU
//!   each got over two seconds (from the executor's own accounting);
//! - all of it at the default time slice (1 ms) and at 250 µs, in the same
//!   run, with how many of the noisy tenant's calls were answered per
//!   second meanwhile (what a shorter slice costs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard::harness::Harness;
use switchboard::metrics::TENANT_CPU;
use switchboard::tenant::Limits;
use switchboard_tests::load::{flood, pct};
use switchboard_tests::{component, manifest};

const SAMPLES: usize = 1000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    println!("# Plugin executor fairness (in process, {SAMPLES} sequential calls each)");
    // The same scenarios at two time slices, one after the other.
    for tick_us in [1000u64, 250] {
        let h = Arc::new(
            Harness::with_config(|c| c.epoch_tick = Duration::from_micros(tick_us)).unwrap(),
        );
        scenarios(&h, tick_us).await;
    }
}

async fn scenarios(h: &Arc<Harness>, tick_us: u64) {
    for p in ["relay", "hostile", "example"] {
        h.install(&manifest(p), &component(p)).await.unwrap();
    }
    let noisy = Limits {
        concurrency: 64,
        requests_per_second: 1_000_000,
        ..Limits::default()
    };
    let tag = |t: &str| format!("{t}-{tick_us}");
    for t in ["quiet", "noisy", "heavy", "light"] {
        h.tenant_with_limits(&tag(t), noisy.clone()).await.unwrap();
        h.enable(&tag(t), "relay").await.unwrap();
        h.enable(&tag(t), "hostile").await.unwrap();
        h.enable(&tag(t), "example").await.unwrap();
    }
    h.runtime()
        .update_limits(
            &tag("heavy"),
            serde_json::from_str(r#"{"cpu_share": 300}"#).unwrap(),
        )
        .await
        .unwrap();
    println!("\n## Time slice {tick_us} µs\n");
    // What slicing costs a long call: a fixed amount of guest work (200,000
    // `kv.get` calls in one plugin call), alone on the host.
    let quiet = tag("quiet");
    let mut work = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        let r = h.get(&quiet, "example", "q", "/kv-loop?n=200000").await;
        assert!(r.is_ok());
        work.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "fixed work (200,000 host calls in one call), alone: p50 {:.2} ms, min {:.2} ms\n",
        pct(work.clone(), 0.5),
        work.iter().cloned().fold(f64::MAX, f64::min)
    );
    println!(
        "| quiet tenant's `/hello` | p50 | p99 | max | noisy calls answered/s |\n|---|---|---|---|---|"
    );
    let alone = probe(h, &quiet).await;
    row("alone", &alone, None, None);
    let floods = [
        (
            "noisy floods: CPU-bound 5 ms calls, 64 at once",
            "/busy?ms=5",
            "relay",
            64,
        ),
        (
            "noisy floods: calls looping to their deadline, 16 at once",
            "/loop",
            "hostile",
            16,
        ),
        (
            "noisy floods: calls hoarding to their memory cap, 32 at once",
            "/alloc",
            "hostile",
            32,
        ),
    ];
    let noisy = Box::leak(tag("noisy").into_boxed_str());
    for (label, path, plugin, n) in floods {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let tasks = flood(h, noisy, plugin, path, n, &stop, &answered);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (before, t0) = (answered.load(Ordering::Relaxed), Instant::now());
        let loaded = probe(h, &quiet).await;
        let rate = (answered.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        row(label, &loaded, Some(&alone), Some(rate));
    }

    // Weights: both flood the same way; the executor splits by share.
    let (heavy, light) = (
        Box::leak(tag("heavy").into_boxed_str()) as &'static str,
        Box::leak(tag("light").into_boxed_str()) as &'static str,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = flood(h, heavy, "relay", "/busy?ms=5", 32, &stop, &answered);
    tasks.extend(flood(h, light, "relay", "/busy?ms=5", 32, &stop, &answered));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = (TENANT_CPU.value(&[heavy]), TENANT_CPU.value(&[light]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = (TENANT_CPU.value(&[heavy]), TENANT_CPU.value(&[light]));
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let (hv, lt) = (after.0 - before.0, after.1 - before.1);
    println!(
        "\nCPU shares 300 : 100, both flooding for 2 s: heavy {:.0} ms, light {:.0} ms of executor time ({:.2} : 1)",
        hv as f64 / 1e3,
        lt as f64 / 1e3,
        hv as f64 / lt.max(1) as f64
    );
}

/// Latencies (ms) of sequential `/hello` calls of the quiet tenant.
async fn probe(h: &Harness, tenant: &str) -> Vec<f64> {
    let mut lat = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let r = h.get(tenant, "relay", "q", "/hello").await;
        assert!(r.is_ok());
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat
}

fn row(label: &str, lat: &[f64], alone: Option<&[f64]>, rate: Option<f64>) {
    let p99 = pct(lat.to_vec(), 0.99);
    let ratio = alone.map_or(String::new(), |a| {
        format!(" ({:.1}x alone)", p99 / pct(a.to_vec(), 0.99))
    });
    println!(
        "| {label} | {:.3} ms | {:.3} ms{ratio} | {:.2} ms | {} |",
        pct(lat.to_vec(), 0.5),
        p99,
        lat.iter().cloned().fold(0.0, f64::max),
        rate.map_or("—".to_string(), |r| format!("{r:.0}"))
    );
}
