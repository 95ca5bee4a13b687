//! Scale of idle things (issue 18, item 6). Prints figures; asserts
//! nothing.
//!
//!     cargo bench -p switchboard-tests --bench scale
//!     SB_SCALE_TENANTS=1000 SB_SCALE_STREAMS=1000 cargo bench … --bench scale
//!
//! - 10,000 tenants with five plugins each enabled (chat, meetings,
//!   recording, example, relay): the data folder is prepared here, then a
//!   *fresh process* opens it, as a restarted server would, and reports
//!   the time from its start to the answer of its first request (to a
//!   tenant in the middle) with the compile cache warm, and its resident
//!   memory; the same is done for a folder with the same plugins and no
//!   tenants, and the difference per tenant is the idle cost of a tenant.
//! - 10,000 connected event streams on a server in a process of its own
//!   (the load and the clients in this one): the server's resident memory
//!   per idle stream, and one publish to a group of all 10,000 streams,
//!   publish → receipt p50/p99 at the clients.
//!
//! Both processes need more than 10,000 file descriptors: the bench
//! raises its soft limit with `ulimit -n` by re-running itself under `sh`.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::gateway::GatewayConfig;
use switchboard::harness::Harness;
use switchboard::runtime::{Method, Principal, Request, Runtime, RuntimeConfig};
use switchboard_tests::http::{Server, test_gateway, test_pki};
use switchboard_tests::load::{
    bench_tenant, guest_streams, pct, publish_latencies, relay_guests, rss_kib, sign_in,
};
use switchboard_tests::{component, manifest};

const PLUGINS: [&str; 5] = ["chat", "meetings", "recording", "example", "relay"];

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    match std::env::var("SB_SCALE_CHILD").as_deref() {
        Ok("open") => return child_open(),
        Ok("serve") => return child_serve(),
        _ => {}
    }
    if std::env::var_os("SB_SCALE_ULIMIT").is_none() {
        // Re-run under a raised descriptor limit (inherited by the child
        // processes).
        let me = std::env::current_exe().unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0""#)
            .arg(me)
            .env("SB_SCALE_ULIMIT", "1")
            .status()
            .unwrap();
        std::process::exit(status.code().unwrap_or(1));
    }
    let rt = switchboard::server::tokio_runtime().unwrap();
    rt.block_on(tenants());
    rt.block_on(streams());
}

/// The settings of every process on a folder (the compile cache is keyed
/// by the engine's settings: a different pool size would recompile).
fn configure(config: &mut RuntimeConfig) {
    config.max_concurrent_calls = 256;
    config.max_memory_bytes = 128 << 20;
}

/// A harness with the five plugins installed.
async fn installed() -> Harness {
    let h = Harness::with_config(configure).unwrap();
    for p in PLUGINS {
        h.install(&manifest(p), &component(p)).await.unwrap();
    }
    h
}

/// Runs this binary as a child in `mode` on `dir`; returns its stdout
/// lines once it exits.
fn child(mode: &str, dir: &std::path::Path, extra: &[(&str, String)]) -> Vec<String> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("SB_SCALE_CHILD", mode)
        .env("SB_SCALE_DIR", dir)
        .stdout(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn field(lines: &[String], name: &str) -> f64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn tenants() {
    let n = count("SB_SCALE_TENANTS", 10_000);
    let v = semver::Version::new(0, 1, 0);
    let empty = installed().await.into_dir();
    let h = installed().await;
    let t = Instant::now();
    for i in 0..n {
        let id = format!("t{i:05}");
        h.runtime().create_tenant(&id, None).await.unwrap();
        for p in PLUGINS {
            h.runtime()
                .enable_plugin(&id, p, &v, None, Default::default())
                .await
                .unwrap();
        }
    }
    let setup = t.elapsed();
    let full = h.into_dir();
    let target = format!("t{:05}", n / 2);
    // Each folder is opened twice: the first start may still compile
    // (the cache is keyed by the engine's settings); the second is the
    // warm start measured.
    child("open", empty.path(), &[("SB_SCALE_TARGET", String::new())]);
    let base = child("open", empty.path(), &[("SB_SCALE_TARGET", String::new())]);
    let open = child("open", full.path(), &[("SB_SCALE_TARGET", target.clone())]);
    let open2 = child("open", full.path(), &[("SB_SCALE_TARGET", target)]);
    println!("## {n} tenants, {} plugins each enabled", PLUGINS.len());
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| create + enable 5 plugins (init hooks run), per tenant | {:.2} ms |",
        setup.as_secs_f64() * 1e3 / n as f64
    );
    for (label, lines) in [("first", &open), ("second", &open2)] {
        println!(
            "| fresh process, {label} start: open the folder | {:.0} ms |",
            field(lines, "open_ms")
        );
        println!(
            "| fresh process, {label} start: process start → first request answered | {:.0} ms |",
            field(lines, "first_ms")
        );
    }
    let per = (field(&open2, "rss_kib") - field(&base, "rss_kib")) / n as f64;
    println!(
        "| resident memory: no tenants / {n} tenants (after the first request) | {:.1} / {:.1} MiB |",
        field(&base, "rss_kib") / 1024.0,
        field(&open2, "rss_kib") / 1024.0
    );
    println!("| idle memory per tenant | {per:.1} KiB |");
}

/// Child: open the folder, answer one request, report.
fn child_open() {
    let start = Instant::now();
    let dir = std::env::var("SB_SCALE_DIR").unwrap();
    let target = std::env::var("SB_SCALE_TARGET").unwrap_or_default();
    let rt = switchboard::server::tokio_runtime().unwrap();
    rt.block_on(async {
        let mut config = RuntimeConfig::new(&dir);
        configure(&mut config);
        let runtime = Runtime::open(config).unwrap();
        println!("open_ms {}", start.elapsed().as_secs_f64() * 1e3);
        if !target.is_empty() {
            let req = Request::new(Method::Get, "/hello", Principal::user(&target, "u"));
            let r = runtime.handle(&target, "relay", req).await.unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            println!("first_ms {}", start.elapsed().as_secs_f64() * 1e3);
        }
        println!("rss_kib {}", rss_kib(std::process::id()));
    });
}

/// Child: serve the folder until stdin closes; print the address.
fn child_serve() {
    let dir = std::env::var("SB_SCALE_DIR").unwrap();
    let cert = std::env::var("SB_SCALE_CERT").unwrap();
    let key = std::env::var("SB_SCALE_KEY").unwrap();
    let rt = switchboard::server::tokio_runtime().unwrap();
    rt.block_on(async {
        // The preparing process may still be letting go of the folder.
        let mut tries = 0;
        let runtime = loop {
            match Runtime::open(RuntimeConfig::new(&dir)) {
                Ok(r) => break r,
                Err(e) if tries < 100 => {
                    tries += 1;
                    if tries == 100 {
                        eprintln!("cannot open {dir}: {e:#}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot open {dir}: {e:#}"),
            }
        };
        // Room for the streams and the publisher (the default is 10,000).
        let config = GatewayConfig {
            max_connections: 20_000,
            ..test_gateway()
        };
        let s = Server::start_tls(runtime, config, cert.as_ref(), key.as_ref()).await;
        println!("addr {}", s.addr);
        // Serve until the parent closes stdin.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
                line.clear();
            }
        })
        .await
        .unwrap();
        drop(s);
    });
}

async fn streams() {
    let n = count("SB_SCALE_STREAMS", 10_000);
    // Prepare: a tenant with the relay plugin, a user, n guests in a group.
    let h = bench_tenant("relay").await;
    let s = Server::start(h.runtime().clone()).await;
    let alice = sign_in(&h, &s, "acme", "alice").await;
    let guests = relay_guests(&s, &alice, n).await;
    drop(s);
    // Let the server's connections wind down: they hold the runtime.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dir = h.into_dir();

    // The server in a process of its own.
    let pki = test_pki();
    let mut server = Command::new(std::env::current_exe().unwrap())
        .env("SB_SCALE_CHILD", "serve")
        .env("SB_SCALE_DIR", dir.path())
        .env("SB_SCALE_CERT", &pki.cert_file)
        .env("SB_SCALE_KEY", &pki.key_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = server.id();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line.trim().strip_prefix("addr ").unwrap().parse().unwrap();
    // Warm the server's paths with a few streams, then measure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let t = Instant::now();
    let streams = guest_streams(addr, &guests).await;
    let connect = t.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = rss_kib(pid);
    let lat = publish_latencies(addr, &alice, streams, 5).await;
    let during = rss_kib(pid);
    println!();
    println!("## {n} event streams, server in its own process");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| connect {n} streams (TLS + upgrade), total | {:.1} s |",
        connect.as_secs_f64()
    );
    println!(
        "| server resident memory before / with {n} idle streams | {:.1} / {:.1} MiB |",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    println!(
        "| server memory per idle stream | {:.1} KiB |",
        after.saturating_sub(before) as f64 / n as f64
    );
    println!(
        "| one publish to all {n} (a group), publish → receipt, 5 publishes | p50 {:.1} ms, p99 {:.1} ms |",
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );
    println!(
        "| server resident memory after the publishes | {:.1} MiB |",
        during as f64 / 1024.0
    );
    // Closing stdin stops the server.
    drop(server.stdin.take());
    if server.wait().is_err() {
        let _ = server.kill();
    }
}
