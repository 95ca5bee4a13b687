//! Load-generation helpers shared by the benchmarks: keep-alive HTTPS
//! clients, percentiles, one-line reports, signed-in users.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use switchboard::harness::Harness;
use switchboard::tenant::Limits;

use crate::accounts::{activate, create_user};
use crate::http::{Server, tls_connect};
use crate::stream::{Ws, ready_at};
use crate::{component, manifest};

/// The resident memory of process `pid`, KiB (0 if unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The `p` quantile (0-1) of `v`.
pub fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// One latency row: `name`, p50, p99 and max (ms), and a note, in a
/// column `width` wide.
pub fn row(name: &str, width: usize, lat: Vec<f64>, note: &str) {
    let max = lat.iter().copied().fold(0.0, f64::max);
    println!(
        "{:<width$} {:>9.2} {:>9.2} {:>9.2} {:>14}",
        name,
        pct(lat.clone(), 0.5),
        pct(lat, 0.99),
        max,
        note
    );
}

/// One report line: rate and p50/p99 latency.
pub fn line(name: &str, rps: f64, lat: Vec<f64>) {
    println!(
        "{name:<38} {rps:>9.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );
}

/// An HTTP/1.1 sender over one keep-alive TLS connection.
pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A keep-alive TLS connection to `addr`.
pub async fn keep_alive(addr: SocketAddr) -> Sender {
    let tls = tls_connect(addr).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Creates `name` in `tenant` and returns a session token.
pub async fn sign_in(h: &Harness, s: &Server, tenant: &str, name: &str) -> String {
    let (_, welcome) = create_user(h, tenant, name, "user").await;
    activate(s, Some(tenant), name, &welcome).await
}

/// Builds request number `n` (connection `n / per_conn`, its `n % per_conn`th).
pub type MakeRequest = Arc<dyn Fn(usize) -> hyper::Request<Full<Bytes>> + Send + Sync>;

/// `connections` keep-alive connections each sending `per_conn` requests
/// built by `make`, one after another; every answer must be a success.
/// Returns (requests/s, latencies in ms).
pub async fn load(
    addr: SocketAddr,
    connections: usize,
    per_conn: usize,
    make: MakeRequest,
) -> (f64, Vec<f64>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = keep_alive(addr).await;
            let mut lat = Vec::with_capacity(per_conn);
            for i in 0..per_conn {
                let req = make(c * per_conn + i);
                let t = Instant::now();
                sender.ready().await.unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(status.is_success(), "{status} {body:?}");
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all.len() as f64 / started.elapsed().as_secs_f64(), all)
}

/// The two runtimes of a bench: the server on the runtime `switchboard
/// serve` uses; the load generator on one of its own (its own threads), as
/// a remote client would, so client-side scheduling does not count as
/// server latency. Both share the machine's cores.
pub fn runtimes() -> (tokio::runtime::Runtime, tokio::runtime::Runtime) {
    let server = switchboard::server::tokio_runtime().unwrap();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    (server, client)
}

/// A harness with `plugin` installed and enabled for tenant `acme`, whose
/// request rate is out of the way of a load test.
pub async fn bench_tenant(plugin: &str) -> Harness {
    let h = Harness::new().unwrap();
    h.install(&manifest(plugin), &component(plugin))
        .await
        .unwrap();
    let generous = Limits {
        requests_per_second: 1_000_000,
        ..Limits::default()
    };
    h.tenant_with_limits("acme", generous).await.unwrap();
    h.enable("acme", plugin).await.unwrap();
    h
}

/// `n` guests of the `relay` fixture in `acme`, made by `token`'s user,
/// all in the group `bench`: (session token, user id) each.
pub async fn relay_guests(s: &Server, token: &str, n: usize) -> Vec<(String, String)> {
    let mut guests = Vec::with_capacity(n);
    for i in 0..n {
        let r = s
            .call(
                "POST",
                &format!("/api/v1/t/acme/p/relay/guests?name=g{i}&resource=bench"),
                Some(token),
                None,
            )
            .await;
        let guest = r.json().as_str().unwrap().to_string();
        let id = s
            .call("GET", "/api/v1/t/acme/p/relay/hello", Some(&guest), None)
            .await
            .json()["user"]
            .as_str()
            .unwrap()
            .to_string();
        guests.push((guest, id));
    }
    for batch in guests.chunks(100) {
        let ids: Vec<&str> = batch.iter().map(|(_, id)| id.as_str()).collect();
        let r = s
            .call(
                "POST",
                &format!(
                    "/api/v1/t/acme/p/relay/groups/bench/join?users={}",
                    ids.join(",")
                ),
                Some(token),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    guests
}

/// One ready event stream per guest, opened one after another.
pub async fn guest_streams(addr: SocketAddr, guests: &[(String, String)]) -> Vec<Ws> {
    let mut streams = Vec::with_capacity(guests.len());
    for (token, _) in guests {
        streams.push(ready_at(addr, token).await);
    }
    streams
}

/// Publishes to the `relay` group `bench` `rounds` times as `token`'s user
/// and returns each delivery's publish → receipt time (ms) at `streams`.
pub async fn publish_latencies(
    addr: SocketAddr,
    token: &str,
    streams: Vec<Ws>,
    rounds: usize,
) -> Vec<f64> {
    let n = streams.len();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    for mut ws in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() {
                    let _ = tx.send(Instant::now());
                }
            }
        });
    }
    let mut lat = Vec::with_capacity(n * rounds);
    let mut sender = keep_alive(addr).await;
    for _ in 0..rounds {
        let req = hyper::Request::post("/api/v1/t/acme/p/relay/publish?group=bench&kind=bench")
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
            .unwrap();
        let t = Instant::now();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let _ = resp.into_body().collect().await;
        for _ in 0..n {
            let at = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .unwrap()
                .unwrap();
            lat.push(at.duration_since(t).as_secs_f64() * 1e3);
        }
    }
    lat
}

/// `n` tasks calling `path` of `tenant`'s `plugin` back to back until
/// `stop`, counting answers in `answered`.
pub fn flood(
    h: &Arc<Harness>,
    tenant: &'static str,
    plugin: &'static str,
    path: &'static str,
    n: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    answered: &Arc<std::sync::atomic::AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use std::sync::atomic::Ordering;
    (0..n)
        .map(|i| {
            let (h, stop, answered) = (h.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = h.get(tenant, plugin, &format!("u{i}"), path).await;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}
