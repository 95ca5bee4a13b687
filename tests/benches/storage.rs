//! Storage benchmarks (issue 4, item 9). Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench storage
//!
//! Through the real `vault` plugin, on an encrypted store with group
//! commit (every acknowledged write is on disk):
//! - durable kv writes/s with 1, 32 and 64 concurrent callers, reads/s;
//!   beside them, in the same run, the raw store's rate for the same
//!   writes (seal, apply, wait for the group commit; no plugin call): the
//!   limit the plugin path can approach;
//! - blob write and read throughput (MB/s) in 1 MiB appends/reads;
//! - online backup (full, then incremental after 1% churn) and restore
//!   time for the resulting data size;
//! - bytes on disk vs live data after overwrite churn.

use std::time::Instant;

use switchboard::backup;
use switchboard::runtime::{Method, Principal, Request, Runtime};
use switchboard::tenant::Limits;
use switchboard_tests::{harness, tenant};

fn req(method: Method, path: String, body: Vec<u8>) -> Request {
    Request::new(method, &path, Principal::user("acme", "bench")).with_body(body)
}

async fn put(rt: &Runtime, key: String, value: Vec<u8>) {
    let r = rt
        .handle(
            "acme",
            "vault",
            req(Method::Put, format!("/kv/{key}"), value),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        total += if p.is_dir() {
            dir_bytes(&p)
        } else {
            // Allocated blocks, not length: sled's files are sparse.
            std::fs::metadata(&p)
                .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                .unwrap_or(0)
        };
    }
    total
}

/// `callers` tasks each making `per` writes with `write(rt, key)`, one
/// after another; writes per second over all.
async fn writes_per_second<F, Fut>(
    rt: &Runtime,
    callers: usize,
    per: usize,
    tag: &str,
    write: F,
) -> f64
where
    F: Fn(Runtime, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let rt = rt.clone();
        let tag = tag.to_string();
        let write = write.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                write(rt.clone(), format!("{tag}-{c}-{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (callers * per) as f64 / start.elapsed().as_secs_f64()
}

/// Durable 100-byte writes through `vault` plugin calls.
async fn concurrent_writes(rt: &Runtime, callers: usize, per: usize, tag: &str) -> f64 {
    writes_per_second(rt, callers, per, tag, |rt, key| async move {
        put(&rt, key, vec![b'v'; 100]).await;
    })
    .await
}

/// The same writes straight into the encrypted store: seal, apply, wait
/// until a group commit covers them.
async fn raw_writes(rt: &Runtime, callers: usize, per: usize, tag: &str) -> f64 {
    writes_per_second(rt, callers, per, tag, |rt, key| async move {
        let store = rt.data_store();
        let key = switchboard::store::keys::kv("acme", "vault", key.as_bytes());
        let seq = store.apply(&[(key, Some(vec![b'v'; 100]))]).unwrap();
        store.durable(seq).await.unwrap();
    })
    .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let h = harness(&["vault"]).await;
    let limits = Limits {
        storage_bytes: 1 << 40,
        owner_storage_bytes: 1 << 40,
        concurrency: 64,
        requests_per_second: 1_000_000,
        ..Limits::default()
    };
    tenant(&h, "acme", limits, &["vault"]).await;
    let rt = h.runtime().clone();

    println!("durable kv writes (100-byte values, each acknowledged on disk):");
    let w1 = concurrent_writes(&rt, 1, 500, "s").await;
    println!("  1 caller:   {w1:>9.0} writes/s");
    let w32 = concurrent_writes(&rt, 32, 100, "c").await;
    println!("  32 callers: {w32:>9.0} writes/s (group commit)");
    // Plugin path and raw store in alternating rounds (the machine drifts).
    let (mut plugin, mut raw) = (Vec::new(), Vec::new());
    for round in 0..3 {
        plugin.push(concurrent_writes(&rt, 64, 100, &format!("p{round}")).await);
        raw.push(raw_writes(&rt, 64, 100, &format!("r{round}")).await);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (w64, r64) = (median(plugin.clone()), median(raw.clone()));
    println!(
        "  64 callers: {w64:>9.0} writes/s through plugin calls (median of 3 rounds: {plugin:.0?})"
    );
    println!("  64 callers: {r64:>9.0} writes/s raw store, same writes (median of 3: {raw:.0?})");
    println!("  plugin path / raw store: {:.2}", w64 / r64);

    let n = 5_000;
    let start = Instant::now();
    for i in 0..n {
        let r = rt
            .handle(
                "acme",
                "vault",
                req(Method::Get, format!("/kv/s-0-{}", i % 500), vec![]),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    println!(
        "kv reads through a plugin call: {:>9.0} reads/s",
        n as f64 / start.elapsed().as_secs_f64()
    );

    let mib = 1usize << 20;
    let total_mib = 64;
    let chunk = vec![0x5au8; mib];
    let start = Instant::now();
    let r = rt
        .handle(
            "acme",
            "vault",
            req(Method::Post, "/blobs?owner=bench".into(), chunk.clone()),
        )
        .await
        .unwrap();
    let id: String = serde_json::from_slice(&r.body).unwrap();
    for _ in 1..total_mib {
        let r = rt
            .handle(
                "acme",
                "vault",
                req(Method::Post, format!("/blobs/{id}/append"), chunk.clone()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "blob write: {:>7.1} MB/s ({total_mib} MiB in 1 MiB appends)",
        total_mib as f64 / secs
    );
    let start = Instant::now();
    for i in 0..total_mib {
        let r = rt
            .handle(
                "acme",
                "vault",
                req(
                    Method::Get,
                    format!("/blobs/{id}?offset={}&len={mib}", i * mib),
                    vec![],
                ),
            )
            .await
            .unwrap();
        assert_eq!(r.body.len(), mib);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "blob read:  {:>7.1} MB/s (1 MiB range reads)",
        total_mib as f64 / secs
    );

    // Backups of what is there now (~64 MiB of blob, ~3,700 keys).
    rt.flush().unwrap();
    let live = dir_bytes(&h.data_dir().join("store"));
    let dir = h.data_dir().join("backups");
    let start = Instant::now();
    let full = rt.backup(&dir, Some(backup::Kind::Full)).await.unwrap();
    println!(
        "full backup:        {:>6.2} s, {:.1} MiB written (store on disk {:.1} MiB)",
        start.elapsed().as_secs_f64(),
        full.bytes as f64 / mib as f64,
        live as f64 / mib as f64
    );
    for i in 0..37 {
        put(&rt, format!("s-0-{i}"), vec![b'w'; 100]).await;
    }
    let start = Instant::now();
    let incr = rt.backup(&dir, None).await.unwrap();
    println!(
        "incremental backup: {:>6.2} s, {:.3} MiB written after 1% key churn ({} entries)",
        start.elapsed().as_secs_f64(),
        incr.bytes as f64 / mib as f64,
        incr.trailer.puts
    );
    let key = backup::backup_key(h.data_dir(), false).unwrap();
    let target = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let restored = backup::restore(&incr.file, &key, target.path()).unwrap();
    println!(
        "restore + verify:   {:>6.2} s ({} entries, full + 1 incremental)",
        start.elapsed().as_secs_f64(),
        restored.live
    );

    // Churn: overwrite the same 1,000 keys of 1 KiB twenty times, then
    // compare the allocated size with the live bytes (usage counter).
    let before = dir_bytes(&h.data_dir().join("store"));
    for round in 0..20 {
        for i in 0..1000 {
            put(&rt, format!("churn-{i}"), vec![round as u8; 1024]).await;
        }
    }
    rt.flush().unwrap();
    let after = dir_bytes(&h.data_dir().join("store"));
    let live = rt.storage_usage("acme").unwrap().bytes;
    println!(
        "churn: 20 x 1,000 overwrites of 1 KiB (20 MiB written, 1.1 MiB live): allocated {:.1} -> {:.1} MiB; live data {:.1} MiB ({:.2}x on disk)",
        before as f64 / mib as f64,
        after as f64 / mib as f64,
        live as f64 / mib as f64,
        after as f64 / live as f64
    );
}
