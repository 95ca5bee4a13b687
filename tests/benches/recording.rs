//! Recording benchmarks (issue 8). Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench recording
//!
//! - upload throughput of media chunks over HTTPS (4 MiB chunks, one
//!   recorder, then four recorders at once), each chunk durable and
//!   hash-chained before it is acknowledged;
//! - verification time per GiB: re-reading and re-hashing everything and
//!   checking the seal, following the verify cursor.

use std::net::SocketAddr;
use std::time::Instant;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use switchboard::harness::Harness;
use switchboard_tests::http::Server;
use switchboard_tests::load::{bench_tenant, keep_alive, runtimes, sign_in};

const CHUNK: usize = 4 << 20;

async fn start(s: &Server, token: &str, source: &str) -> String {
    let r = s
        .call(
            "POST",
            "/api/v1/t/acme/p/recording/recordings",
            Some(token),
            Some(&json!({"source": {"kind": "call", "id": source}, "content_type": "video/webm"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// Uploads `chunks` chunks to `rid` over one keep-alive connection.
async fn upload(addr: SocketAddr, token: &str, rid: &str, chunks: u64) {
    let mut sender = keep_alive(addr).await;
    let data = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    for n in 1..=chunks {
        let req = hyper::Request::put(format!(
            "/api/v1/t/acme/p/recording/recordings/{rid}/chunks/{n}"
        ))
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(data.clone()))
        .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, 201, "{body:?}");
    }
}

async fn stop(s: &Server, token: &str, rid: &str) {
    let r = s
        .call(
            "POST",
            &format!("/api/v1/t/acme/p/recording/recordings/{rid}/stop"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Verifies `rid` to the end; returns the final report.
async fn verify(s: &Server, token: &str, rid: &str) -> Value {
    let mut path = format!("/api/v1/t/acme/p/recording/recordings/{rid}/verify");
    loop {
        let r = s.call("GET", &path, Some(token), None).await;
        let v = r.json();
        match v["cursor"].as_str() {
            Some(c) if v["done"] == false => {
                path = format!("/api/v1/t/acme/p/recording/recordings/{rid}/verify?cursor={c}");
            }
            _ => return v,
        }
    }
}

fn main() {
    let (server_rt, client_rt) = runtimes();
    let (h, s) = server_rt.block_on(async {
        let h = bench_tenant("recording").await;
        let s = Server::start(h.runtime().clone()).await;
        (h, s)
    });
    client_rt.block_on(bench(&h, &s));
    drop(s);
    server_rt.shutdown_background();
}

async fn bench(h: &Harness, s: &Server) {
    println!("Recording: 4 MiB chunks over HTTPS, each durable and chained before its 201");
    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(sign_in(h, s, "acme", &format!("recorder{i}")).await);
    }
    // One recorder: 256 MiB.
    let chunks = 64u64;
    let rid = start(s, &tokens[0], "one").await;
    let t = Instant::now();
    upload(s.addr, &tokens[0], &rid, chunks).await;
    let secs = t.elapsed().as_secs_f64();
    let mib = (chunks * 4) as f64;
    println!(
        "{:<44} {:>8.1} MiB/s  ({mib:.0} MiB in {secs:.2} s)",
        "one recorder",
        mib / secs
    );
    stop(s, &tokens[0], &rid).await;

    // Four recorders at once: 4 x 64 MiB.
    let t = Instant::now();
    let mut joins = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let rid = start(s, token, &format!("four-{i}")).await;
        let (token, addr) = (token.clone(), s.addr);
        joins.push(tokio::spawn(async move {
            upload(addr, &token, &rid, 16).await;
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>8.1} MiB/s  (256 MiB in {secs:.2} s)",
        "four recorders at once",
        256.0 / secs
    );

    // Verification of the 256 MiB recording.
    let t = Instant::now();
    let v = verify(s, &tokens[0], &rid).await;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(v["intact"], true, "{v}");
    println!(
        "{:<44} {:>8.2} s/GiB  ({mib:.0} MiB in {secs:.2} s, {:.0} MiB/s)",
        "verify (re-read, re-hash, chain, seal)",
        secs * 1024.0 / mib,
        mib / secs
    );
}
