//! Runtime benchmarks (issue 2, item 11). Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench runtime
//!
//! Measures, on the real example plugin built from source:
//! - a bare wasmtime baseline: `InstancePre` instantiate + `handle` call,
//!   same engine settings, empty WASI context, nothing else;
//! - the same call through `Runtime::handle` (principal, slots,
//!   transaction, limits, fresh store), and its ratio to the baseline;
//! - one host call (`kv.get`) inside a guest loop;
//! - compile time vs authenticated cached load;
//! - resident memory per idle tenant with 1,000 tenants configured.

use std::time::{Duration, Instant};

use switchboard::kernel::cache::CompileCache;
use switchboard::kernel::engine::{EngineConfig, SlotReset};
use switchboard::runtime::{Method, Principal, Request, Runtime, RuntimeConfig, build_engine};
use switchboard::tenant::Limits;
use switchboard_tests::{component, manifest};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bare {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "switchboard:plugin/feature",
        exports: { default: async },
    });
}

const WARMUP: usize = 2_000;
const SAMPLES: usize = 20_000;

struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort_unstable();
    let n = samples.len();
    let total: Duration = samples.iter().sum();
    Stats {
        p50: samples[n / 2],
        p99: samples[n * 99 / 100],
        mean: total / n as u32,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn bare_request() -> bare::switchboard::host::types::Request {
    use bare::switchboard::host::types as t;
    t::Request {
        method: t::Method::Get,
        path: "/noop".into(), // the example's trivial route; noop ignores it
        query: String::new(),
        headers: Vec::new(),
        body: Vec::new(),
        principal: t::Principal {
            tenant: "bench".into(),
            user: Some("u".into()),
            role: t::Role::User,
            kind: t::PrincipalKind::Registered,
        },
        caller_plugin: None,
        request_id: "r".into(),
    }
}

/// A bare wasmtime setup of one component: same engine settings, empty
/// WASI, no runtime around it.
struct Bare {
    engine: Engine,
    pre: bare::FeaturePre<BareState>,
    request: bare::switchboard::host::types::Request,
}

impl Bare {
    fn new(engine: &Engine, wasm: &[u8]) -> Bare {
        let component = Component::new(engine, wasm).unwrap();
        let mut linker: Linker<BareState> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        // The switchboard imports exist but are never called on /noop.
        linker.define_unknown_imports_as_traps(&component).unwrap();
        let pre = bare::FeaturePre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Bare {
            engine: engine.clone(),
            pre,
            request: bare_request(),
        }
    }

    fn store(&self) -> Store<BareState> {
        let mut store = Store::new(
            &self.engine,
            BareState {
                wasi: WasiCtxBuilder::new().build(),
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(u64::MAX / 2);
        store
    }

    /// `n` fresh-instance calls; totals and the split into new store,
    /// instantiate, call, drop.
    async fn round(&self, n: usize, totals: &mut Vec<Duration>, parts: &mut [Vec<Duration>; 4]) {
        for _ in 0..n {
            let start = Instant::now();
            let mut store = self.store();
            let t1 = Instant::now();
            let feature = self.pre.instantiate_async(&mut store).await.unwrap();
            let t2 = Instant::now();
            let resp = feature
                .call_handle(&mut store, &self.request)
                .await
                .unwrap();
            let t3 = Instant::now();
            drop(store);
            let t4 = Instant::now();
            assert_eq!(resp.status, 204);
            totals.push(t4 - start);
            parts[0].push(t1 - start);
            parts[1].push(t2 - t1);
            parts[2].push(t3 - t2);
            parts[3].push(t4 - t3);
        }
    }

    /// Diagnostic: repeat calls into one instance, i.e. the call once the
    /// guest's first-call start-up and page faults are paid. (Switchboard
    /// never reuses instances across calls.)
    async fn warm_repeat(&self, n: usize) -> Stats {
        let mut store = self.store();
        let feature = self.pre.instantiate_async(&mut store).await.unwrap();
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let resp = feature
                .call_handle(&mut store, &self.request)
                .await
                .unwrap();
            samples.push(t.elapsed());
            assert_eq!(resp.status, 204);
        }
        stats(samples)
    }
}

async fn ours_round(rt: &Runtime, plugin: &str, path: &str, n: usize, samples: &mut Vec<Duration>) {
    for _ in 0..n {
        let req = Request::new(Method::Get, path, Principal::user("bench", "u"));
        let start = Instant::now();
        let resp = rt.handle("bench", plugin, req).await.unwrap();
        let elapsed = start.elapsed();
        assert!(resp.status < 300, "{}", resp.text());
        samples.push(elapsed);
    }
}

async fn ours(rt: &Runtime, plugin: &str, path: &str, n: usize) -> Stats {
    ours_round(rt, plugin, path, WARMUP, &mut Vec::new()).await;
    let mut samples = Vec::with_capacity(n);
    ours_round(rt, plugin, path, n, &mut samples).await;
    stats(samples)
}

/// Bare and ours measured in alternating rounds, so drift in the machine's
/// load affects both alike.
async fn compare(
    bare: &Bare,
    rt: &Runtime,
    plugin: &str,
    path: &str,
) -> (Stats, [Stats; 5], Stats) {
    const ROUNDS: usize = 10;
    let mut scratch: [Vec<Duration>; 4] = Default::default();
    bare.round(WARMUP, &mut Vec::new(), &mut scratch).await;
    ours_round(rt, plugin, path, WARMUP, &mut Vec::new()).await;
    let mut totals = Vec::new();
    let mut parts: [Vec<Duration>; 4] = Default::default();
    let mut ours = Vec::new();
    for _ in 0..ROUNDS {
        bare.round(SAMPLES / ROUNDS, &mut totals, &mut parts).await;
        ours_round(rt, plugin, path, SAMPLES / ROUNDS, &mut ours).await;
    }
    let [a, b, c, d] = parts;
    let warm = bare.warm_repeat(SAMPLES).await;
    (
        stats(totals),
        [stats(a), stats(b), stats(c), stats(d), warm],
        stats(ours),
    )
}

/// The host's default concurrency, which sizes its engine's pool.
fn config_calls() -> u32 {
    RuntimeConfig::new("unused").max_concurrent_calls
}

fn main() {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(run());
}

async fn run() {
    let wasm = component("example");
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig::new(dir.path());
    println!("# Switchboard runtime benchmarks");
    println!(
        "example.wasm: {} bytes; {SAMPLES} samples after {WARMUP} warm-up calls; one current-thread tokio runtime",
        wasm.len()
    );

    // --- compile vs cached load -------------------------------------------
    let engine = build_engine(&config).unwrap();
    let t = Instant::now();
    let compiled = Component::new(&engine, &wasm).unwrap();
    let compile = t.elapsed();
    let cache = CompileCache::open(
        &engine,
        &dir.path().join("bench-cache"),
        &dir.path().join("bench.key"),
    )
    .unwrap();
    let digest = switchboard_signing::component_digest(&wasm);
    cache.store(&digest, &compiled).unwrap();
    let mut loads = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let (c, outcome) = cache.lookup(&engine, &digest);
        loads.push(t.elapsed());
        assert!(c.is_some(), "{outcome:?}");
    }
    let load = stats(loads);
    println!();
    println!("## Compile vs cached load (example.wasm)");
    println!("| step | time |");
    println!("|---|---|");
    println!(
        "| Cranelift compile (`Component::new`) | {:.1} ms |",
        compile.as_secs_f64() * 1e3
    );
    println!(
        "| authenticated cache load (read + HMAC + deserialize), p50 | {:.1} µs |",
        us(load.p50)
    );
    println!(
        "| speed-up | {:.0}x |",
        compile.as_secs_f64() / load.p50.as_secs_f64()
    );

    // --- per-call latency ----------------------------------------------------
    let bare_noop = Bare::new(&engine, &component("noop"));
    let bare_example = Bare::new(&engine, &wasm);
    let rt = Runtime::open(config).unwrap();
    let key = switchboard_signing::keys::generate().unwrap();
    rt.trust_add(&key.verifying_key(), "bench").await.unwrap();
    for p in ["ledger", "example", "noop"] {
        let package = switchboard::harness::sign(&key, &manifest(p), &component(p)).unwrap();
        rt.install_package(&package).await.unwrap();
    }
    rt.create_tenant("bench", Some(Limits::default()))
        .await
        .unwrap();
    let v = semver::Version::new(0, 1, 0);
    for p in ["ledger", "example", "noop"] {
        rt.enable_plugin("bench", p, &v, None, Default::default())
            .await
            .unwrap();
    }
    let (bare_n, parts_n, ours_noop) = compare(&bare_noop, &rt, "noop", "/").await;
    let (bare_e, parts_e, ours_example) = compare(&bare_example, &rt, "example", "/noop").await;
    let bare_noop_pre = bare_noop;
    let bare_noop = (bare_n, parts_n);
    let bare_example = (bare_e, parts_e);
    println!();
    println!("## Fresh instance + trivial call");
    println!("| plugin | path | p50 | p99 | mean | ratio p50 / p99 |");
    println!("|---|---|---|---|---|---|");
    for (plugin, (bare, parts), ours) in [
        ("noop (52 KB, returns 204)", &bare_noop, &ours_noop),
        (
            "example (184 KB, router + serde)",
            &bare_example,
            &ours_example,
        ),
    ] {
        println!(
            "| {plugin} | bare wasmtime: InstancePre + `handle`, empty WASI | {:.2} µs | {:.2} µs | {:.2} µs | |",
            us(bare.p50),
            us(bare.p99),
            us(bare.mean)
        );
        println!(
            "| {plugin} | Switchboard `Runtime::handle` | {:.2} µs | {:.2} µs | {:.2} µs | {:.2}x / {:.2}x |",
            us(ours.p50),
            us(ours.p99),
            us(ours.mean),
            us(ours.p50) / us(bare.p50),
            us(ours.p99) / us(bare.p99)
        );
        let names = [
            "new Store + WASI ctx",
            "instantiate",
            "first `handle` call",
            "drop Store",
            "a warm repeat call in the same instance, for comparison only",
        ];
        let split: Vec<String> = names
            .iter()
            .zip(parts)
            .map(|(n, s)| format!("{n} {:.2} µs", us(s.p50)))
            .collect();
        println!(
            "| {plugin} | bare split, p50 | {} | | | |",
            split.join(", ")
        );
    }

    // --- slot reset: madvise vs written pages reset in place -----------------
    let madvise = switchboard::kernel::engine::build(&EngineConfig {
        max_concurrent_calls: config_calls(),
        max_memory_bytes: 256 << 20,
        reset: SlotReset::MADVISE,
    })
    .unwrap();
    println!();
    println!("## Slot reset (bare wasmtime, same run, alternating rounds)");
    println!("| plugin | reset | p50 | p99 | mean |");
    println!("|---|---|---|---|---|");
    for (name, plugin) in [("noop", "noop"), ("example", "example")] {
        let old = Bare::new(&madvise, &component(plugin));
        let new = Bare::new(&engine, &component(plugin));
        let mut scratch: [Vec<Duration>; 4] = Default::default();
        old.round(WARMUP, &mut Vec::new(), &mut scratch).await;
        new.round(WARMUP, &mut Vec::new(), &mut scratch).await;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            old.round(SAMPLES / 10, &mut a, &mut scratch).await;
            new.round(SAMPLES / 10, &mut b, &mut scratch).await;
        }
        for (label, s) in [
            ("first 64 KiB memset, rest madvise (before)", stats(a)),
            (
                "written pages found by PAGEMAP_SCAN, reset in place (host)",
                stats(b),
            ),
        ] {
            println!(
                "| {name} | {label} | {:.2} µs | {:.2} µs | {:.2} µs |",
                us(s.p50),
                us(s.p99),
                us(s.mean)
            );
        }
    }

    // --- host call overhead --------------------------------------------------
    const N: usize = 1000;
    let zero = ours(&rt, "example", "/kv-loop?n=0", 2_000).await;
    let many = ours(&rt, "example", &format!("/kv-loop?n={N}"), 2_000).await;
    let per = (us(many.p50) - us(zero.p50)) / N as f64;
    println!();
    println!("## Host call (`kv.get` in a guest loop of {N})");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| call with n=0, p50 | {:.2} µs |", us(zero.p50));
    println!("| call with n={N}, p50 | {:.2} µs |", us(many.p50));
    println!("| per `kv.get` (difference / {N}) | {:.3} µs |", per);

    // --- memory per idle tenant ----------------------------------------------
    const TENANTS: usize = 1000;
    let before = rss_bytes();
    let t = Instant::now();
    for i in 0..TENANTS {
        let id = format!("t{i:04}");
        rt.create_tenant(&id, None).await.unwrap();
        for p in ["ledger", "example"] {
            rt.enable_plugin(&id, p, &v, None, Default::default())
                .await
                .unwrap();
        }
    }
    let setup = t.elapsed();
    let after = rss_bytes();
    println!();
    println!("## Idle tenants ({TENANTS} configured, each with example + ledger enabled)");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| RSS before | {:.1} MiB |", before as f64 / 1048576.0);
    println!("| RSS after | {:.1} MiB |", after as f64 / 1048576.0);
    println!(
        "| per idle tenant | {:.1} KiB |",
        after.saturating_sub(before) as f64 / 1024.0 / TENANTS as f64
    );
    println!(
        "| create + enable (2 plugins, init hooks run) per tenant | {:.2} ms |",
        setup.as_secs_f64() * 1e3 / TENANTS as f64
    );
    let (bare_after, _, ours_after) = compare(&bare_noop_pre, &rt, "noop", "/").await;
    println!(
        "| noop call p50 with {TENANTS} tenants configured (bare alongside) | {:.2} µs ({:.2} µs bare, {:.2}x) |",
        us(ours_after.p50),
        us(bare_after.p50),
        us(ours_after.p50) / us(bare_after.p50)
    );
}
