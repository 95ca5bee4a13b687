//! Chat benchmarks (issue 7). Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench chat
//!
//! A group of 100 members, every member connected by a WebSocket event
//! stream, all over real HTTPS to a server in this process:
//! - post -> delivery latency to all 100 members, for posts sent one at a
//!   time, p50/p99 over every (post, member) delivery;
//! - posting throughput into that one group from 16 connections (each post
//!   takes the conversation's next sequence number, so posts contend) with
//!   the deliveries/s they cause and their latency under that load;
//! - posting throughput into 16 separate conversations (no contention).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde_json::json;
use switchboard::harness::Harness;
use switchboard_tests::http::Server;
use switchboard_tests::load::{
    MakeRequest, bench_tenant, keep_alive, line, load, pct, runtimes, sign_in,
};
use switchboard_tests::stream::{next, ready};

const MEMBERS: usize = 100;
const CONNECTIONS: usize = 16;

/// Send instants of posts by text, and what the streams measured.
#[derive(Default)]
struct Deliveries {
    sent: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<f64>>,
    count: AtomicUsize,
    last: Mutex<Option<Instant>>,
}

impl Deliveries {
    fn reset(&self) {
        self.sent.lock().unwrap().clear();
        self.latencies.lock().unwrap().clear();
        self.count.store(0, Ordering::SeqCst);
        *self.last.lock().unwrap() = None;
    }

    async fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.count.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn post_request(
    addr: std::net::SocketAddr,
    cid: &str,
    token: &str,
    text: &str,
) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!(
        "/api/v1/t/acme/p/chat/conversations/{cid}/messages"
    ))
    .header("host", addr.to_string())
    .header("authorization", format!("Bearer {token}"))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(json!({ "text": text }).to_string())))
    .unwrap()
}

/// `CONNECTIONS` posters, poster `c` as `tokens[c]` into `cids[c]` (both
/// cycled), each posting `per_conn` messages; records send instants;
/// returns (posts/s, request latencies in ms).
async fn post_load(
    s: &Server,
    tokens: &[String],
    cids: &[String],
    per_conn: usize,
    tag: &str,
    d: &Arc<Deliveries>,
) -> (f64, Vec<f64>) {
    let addr = s.addr;
    let (tokens, cids, d, tag) = (tokens.to_vec(), cids.to_vec(), d.clone(), tag.to_string());
    let make: MakeRequest = Arc::new(move |n| {
        let c = n / per_conn;
        let text = format!("{tag}-{n}");
        let req = post_request(
            addr,
            &cids[c % cids.len()],
            &tokens[c % tokens.len()],
            &text,
        );
        d.sent.lock().unwrap().insert(text, Instant::now());
        req
    });
    load(addr, CONNECTIONS, per_conn, make).await
}

fn main() {
    let (server_rt, client_rt) = runtimes();
    let (h, s, _scheduler) = server_rt.block_on(async {
        let h = bench_tenant("chat").await;
        let scheduler = switchboard::scheduler::Scheduler::start(h.runtime(), Default::default());
        let s = Server::start(h.runtime().clone()).await;
        (h, s, scheduler)
    });
    client_rt.block_on(bench(&h, &s));
    drop(s);
    server_rt.shutdown_background();
}

async fn bench(h: &Harness, s: &Server) {
    let mut tokens = Vec::new();
    for i in 0..MEMBERS {
        tokens.push(sign_in(h, s, "acme", &format!("member{i}")).await);
    }
    let names: Vec<String> = (1..MEMBERS).map(|i| format!("member{i}")).collect();
    let r = s
        .call(
            "POST",
            "/api/v1/t/acme/p/chat/conversations",
            Some(&tokens[0]),
            Some(&json!({"kind": "group", "title": "All hands", "members": names})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let group = r.json()["id"].as_str().unwrap().to_string();

    // Every member listens on a stream of their own.
    let d = Arc::new(Deliveries::default());
    for token in &tokens {
        let mut ws = ready(s, token).await;
        let d = d.clone();
        tokio::spawn(async move {
            while let Some(frame) = next(&mut ws, Duration::from_secs(600)).await {
                if frame["kind"] != "chat.message.created" {
                    continue;
                }
                let now = Instant::now();
                let text = frame["data"]["message"]["text"]
                    .as_str()
                    .unwrap_or_default();
                if let Some(t) = d.sent.lock().unwrap().get(text) {
                    d.latencies
                        .lock()
                        .unwrap()
                        .push(now.duration_since(*t).as_secs_f64() * 1e3);
                }
                *d.last.lock().unwrap() = Some(now);
                d.count.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    // Let presence settle (each new stream is a host event to the plugin).
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("Chat: a group of {MEMBERS} members, each with a WebSocket stream, over HTTPS");
    // One post at a time.
    let posts = 200;
    let mut sender = keep_alive(s.addr).await;
    let mut post_lat = Vec::new();
    for i in 0..posts {
        let text = format!("one-{i}");
        let req = post_request(s.addr, &group, &tokens[0], &text);
        let t = Instant::now();
        d.sent.lock().unwrap().insert(text, t);
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let _ = resp.into_body().collect().await.unwrap();
        post_lat.push(t.elapsed().as_secs_f64() * 1e3);
        // Wait for this post to reach everyone before the next.
        d.wait_for((i + 1) * MEMBERS).await;
    }
    let lat = d.latencies.lock().unwrap().clone();
    println!(
        "{:<38} {:>9} posts   post p50 {:>6.2} ms   p99 {:>6.2} ms",
        "posts one at a time",
        posts,
        pct(post_lat.clone(), 0.5),
        pct(post_lat, 0.99)
    );
    println!(
        "{:<38} {:>9} deliv.  p50 {:>6.2} ms   p99 {:>6.2} ms",
        "  post -> delivery to all 100",
        lat.len(),
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );

    // Throughput into the shared group.
    d.reset();
    let per_conn = 40;
    let started = Instant::now();
    let (rps, lat) = post_load(
        s,
        &tokens,
        std::slice::from_ref(&group),
        per_conn,
        "load",
        &d,
    )
    .await;
    line("posts into one 100-member group", rps, lat);
    let expected = CONNECTIONS * per_conn * MEMBERS;
    d.wait_for(expected).await;
    let delivered = d.count.load(Ordering::SeqCst);
    let until = d.last.lock().unwrap().unwrap_or_else(Instant::now);
    let lat = d.latencies.lock().unwrap().clone();
    println!(
        "{:<38} {:>9.0} deliv./s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({delivered}/{expected})",
        "  deliveries under that load",
        delivered as f64 / until.duration_since(started).as_secs_f64(),
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );

    // Separate conversations: member c talks to member c+16, whose
    // stream is open too.
    let mut cids = Vec::new();
    for (c, token) in tokens.iter().enumerate().take(CONNECTIONS) {
        let r = s
            .call(
                "POST",
                "/api/v1/t/acme/p/chat/conversations",
                Some(token),
                Some(&json!({"kind": "direct", "user": format!("member{}", c + CONNECTIONS)})),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text());
        cids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    d.reset();
    let (rps, lat) = post_load(s, &tokens[..CONNECTIONS], &cids, 100, "pair", &d).await;
    line("posts into 16 direct conversations", rps, lat);
}
