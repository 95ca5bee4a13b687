//! The fast path measured from outside (issue 18, items 3 and 4). Prints
//! figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench external
//!
//! The server (the gateway on the runtime `switchboard serve` uses, with
//! the plugin executor) runs in this process; the load comes from Debian's
//! `h2load` (package `nghttp2-client`) in a process of its own: 16
//! keep-alive HTTP/1.1 connections over TLS 1.3. Three targets take turns
//! in three rounds, so the machine's drift hits them alike:
//! - a trivial plugin route (`relay` fixture, `GET …/hello`: the principal
//!   as JSON) for a signed-in user: session check, routing, a fresh
//!   sandboxed instance, commit;
//! - `/healthz` on the same server (TLS and HTTP, no plugin, no session);
//! - a native hyper handler behind the same TLS settings, answering the
//!   same JSON.
//!
//! For each: requests/s, p50/p99 latency from h2load's per-request log,
//! and the server's CPU per request (this process's user + system time
//! over the run, divided by the requests; h2load's CPU is not in it).
//!
//! With `SB_PERF=<file>` set, `perf record -g` samples this process during
//! one extra run of the plugin route and writes `<file>`; `tests/tools/
//! stages.py <file>` then splits the CPU into the request's stages.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use switchboard_tests::http::{Server, serve_tls};
use switchboard_tests::load::{bench_tenant, pct, runtimes, sign_in};

const CONNECTIONS: usize = 16;
const REQUESTS: usize = 40_000;
const ROUNDS: usize = 3;

/// User + system CPU of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line (11 and 12 here).
    let hz = 100.0; // USER_HZ on Linux
    (ticks(11) + ticks(12)) / hz
}

struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
}

/// One h2load run against `url`; `None` if h2load is missing or failed.
fn h2load(url: &str, token: Option<&str>, requests: usize) -> Option<Run> {
    let log = tempfile::NamedTempFile::new().ok()?;
    let mut cmd = Command::new("h2load");
    cmd.args([
        "--h1",
        "-c",
        &CONNECTIONS.to_string(),
        "-n",
        &requests.to_string(),
    ])
    .arg(format!("--log-file={}", log.path().display()));
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    cmd.arg(url);
    let before = cpu_seconds();
    let out = cmd.output().ok()?;
    let cpu = cpu_seconds() - before;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        eprintln!("h2load failed: {text}");
        return None;
    }
    // "finished in 1.23s, 32500.00 req/s, 9.9MB/s"
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse::<f64>().ok())?;
    // "requests: 40000 total, 40000 started, 40000 done, 40000 succeeded, ..."
    let ok = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .is_some_and(|l| l.contains(&format!("{requests} succeeded")));
    let status = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or("");
    if !ok {
        eprintln!("not every request succeeded: {status}");
        return None;
    }
    // The log: start time (µs since the epoch), status, duration (µs).
    let lat: Vec<f64> = std::fs::read_to_string(log.path())
        .ok()?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse::<f64>().ok())
        .map(|us| us / 1e3)
        .collect();
    if lat.is_empty() {
        return None;
    }
    Some(Run {
        rps,
        p50_ms: pct(lat.clone(), 0.5),
        p99_ms: pct(lat, 0.99),
        cpu_us: cpu * 1e6 / requests as f64,
    })
}

/// A plain hyper handler behind a TLS listener configured like the
/// gateway's, answering what the plugin route answers.
async fn native_server() -> SocketAddr {
    serve_tls(|_req| async {
        hyper::Response::new(Full::new(Bytes::from_static(
            br#"{"tenant":"acme","user":"alice","role":"user"}"#,
        )))
    })
    .await
}

fn main() {
    if Command::new("h2load").arg("--version").output().is_err() {
        println!(
            "h2load is not installed (Debian: apt-get install nghttp2-client); nothing measured"
        );
        return;
    }
    let (server_rt, client_rt) = runtimes();
    let (h, s, native) = server_rt.block_on(async {
        let h = bench_tenant("relay").await;
        let s = Server::start(h.runtime().clone()).await;
        let native = native_server().await;
        (h, s, native)
    });
    let token = client_rt.block_on(sign_in(&h, &s, "acme", "alice"));
    drop(client_rt);

    let plugin = format!("https://{}/api/v1/t/acme/p/relay/hello", s.addr);
    let healthz = format!("https://{}/healthz", s.addr);
    let native = format!("https://{native}/hello");
    let targets: [(&str, &str, Option<&str>); 3] = [
        ("trivial plugin route (relay /hello)", &plugin, Some(&token)),
        ("/healthz, same server", &healthz, None),
        ("native hyper handler, same TLS", &native, None),
    ];
    // Warm up: the instance pool, the session cache, TLS.
    for (_, url, token) in &targets {
        h2load(url, *token, 4_000);
    }
    let mut runs: Vec<Vec<Run>> = (0..targets.len()).map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, (name, url, token)) in targets.iter().enumerate() {
            match h2load(url, *token, REQUESTS) {
                Some(r) => runs[i].push(r),
                None => println!("{name}: no figure (see above)"),
            }
        }
    }
    println!(
        "h2load --h1 -c {CONNECTIONS} -n {REQUESTS}, TLS 1.3, {ROUNDS} rounds (targets take turns)"
    );
    println!("| target | req/s (median of rounds) | p50 | p99 | server CPU per request |");
    println!("|---|---|---|---|---|");
    let mut medians = Vec::new();
    for ((name, _, _), rs) in targets.iter().zip(&runs) {
        if rs.is_empty() {
            medians.push(f64::NAN);
            continue;
        }
        let rps = pct(rs.iter().map(|r| r.rps).collect(), 0.5);
        medians.push(rps);
        println!(
            "| {name} | {rps:.0} | {:.2} ms | {:.2} ms | {:.1} µs |",
            pct(rs.iter().map(|r| r.p50_ms).collect(), 0.5),
            pct(rs.iter().map(|r| r.p99_ms).collect(), 0.5),
            pct(rs.iter().map(|r| r.cpu_us).collect(), 0.5),
        );
    }
    println!(
        "plugin route / native handler, requests/s: {:.2} (rounds: {})",
        medians[0] / medians[2],
        runs[0]
            .iter()
            .zip(&runs[2])
            .map(|(p, n)| format!("{:.2}", p.rps / n.rps))
            .collect::<Vec<_>>()
            .join(", ")
    );

    if let Ok(file) = std::env::var("SB_PERF") {
        let pid = std::process::id().to_string();
        match Command::new("perf")
            .args(["record", "-F", "999", "--call-graph", "dwarf,16384"])
            .args(["-o", &file, "-p", &pid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(mut perf) => {
                std::thread::sleep(Duration::from_millis(500));
                let run = h2load(&plugin, Some(&token), REQUESTS);
                // SIGINT makes perf write its file and stop.
                let _ = Command::new("kill")
                    .args(["-INT", &perf.id().to_string()])
                    .status();
                let _ = perf.wait();
                if let Some(r) = run {
                    println!(
                        "profiled run: {:.0} req/s, {:.1} µs CPU per request; samples in {file}",
                        r.rps, r.cpu_us
                    );
                }
            }
            Err(e) => println!("perf did not start: {e}"),
        }
    }
    drop(s);
    drop(h);
    server_rt.shutdown_background();
}
