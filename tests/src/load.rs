//! Load-generation helpers shared by the benchmarks: keep-alive HTTPS
//! clients, percentiles, one-line reports, signed-in users.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use switchboard::harness::Harness;

use crate::accounts::{activate, create_user};
use crate::http::{Server, tls_connect};

/// The `p` quantile (0-1) of `v`.
pub fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
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
