//! Meetings benchmarks (issue 9). Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench meetings
//!
//! Real HTTPS to a server in this process, every participant with a
//! WebSocket event stream:
//! - 100 registered users joining one live session one after another:
//!   join latency (each join tells everyone present the new roster, so a
//!   join costs more as the room fills) and roster delivery to the room;
//! - the same 100 joining a second session at once from 16 connections;
//! - WebRTC signalling relayed between two participants: request latency
//!   and offer -> delivery latency one at a time, then throughput from 16
//!   connections between 16 pairs;
//! - guests through the waiting room: public join + knock -> the lobby
//!   event at a registered participant, admit -> the guest's
//!   `meeting.admitted`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};
use switchboard::harness::Harness;
use switchboard::tenant::Limits;
use switchboard_tests::http::Server;
use switchboard_tests::load::{MakeRequest, line, load, pct, runtimes, sign_in};
use switchboard_tests::stream::{Ws, next, next_of, ready};
use switchboard_tests::{component, manifest};

const PEOPLE: usize = 100;
const CONNECTIONS: usize = 16;
const WAIT: Duration = Duration::from_secs(60);

fn main() {
    let (server_rt, client_rt) = runtimes();
    let (h, s, _scheduler) = server_rt.block_on(async {
        let h = Harness::new().unwrap();
        for p in ["chat", "recording", "meetings"] {
            h.install(&manifest(p), &component(p)).await.unwrap();
        }
        let generous = Limits {
            requests_per_second: 1_000_000,
            ..Limits::default()
        };
        h.tenant_with_limits("acme", generous).await.unwrap();
        for p in ["chat", "recording", "meetings"] {
            h.enable("acme", p).await.unwrap();
        }
        let scheduler = switchboard::scheduler::Scheduler::start(h.runtime(), Default::default());
        let s = Server::start(h.runtime().clone()).await;
        (h, s, scheduler)
    });
    client_rt.block_on(bench(&h, &s));
    drop(s);
    server_rt.shutdown_background();
}

fn summary(name: &str, v: &[f64]) {
    println!(
        "{name:<44} {:>6}   p50 {:>7.2} ms   p99 {:>7.2} ms",
        v.len(),
        pct(v.to_vec(), 0.5),
        pct(v.to_vec(), 0.99)
    );
}

async fn post(s: &Server, token: &str, path: &str, body: Value) -> Value {
    let r = s
        .call(
            "POST",
            &format!("/api/v1/t/acme/p/meetings{path}"),
            Some(token),
            Some(&body),
        )
        .await;
    assert!(r.status < 300, "{path}: {} {}", r.status, r.text());
    r.json()
}

/// A space of `organizer`'s with a session they started: (code, live id).
async fn session(s: &Server, organizer: &str, title: &str) -> (String, String) {
    let space = post(s, organizer, "/spaces", json!({"title": title})).await;
    let sid = space["id"].as_str().unwrap();
    let live = post(s, organizer, &format!("/spaces/{sid}/live"), json!({})).await;
    (
        space["code"].as_str().unwrap().to_string(),
        live["id"].as_str().unwrap().to_string(),
    )
}

fn request(
    addr: std::net::SocketAddr,
    token: &str,
    path: &str,
    body: &Value,
) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!("/api/v1/t/acme/p/meetings{path}"))
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn bench(h: &Harness, s: &Server) {
    let mut tokens = Vec::new();
    for i in 0..PEOPLE {
        tokens.push(sign_in(h, s, "acme", &format!("person{i}")).await);
    }
    let mut streams: Vec<Ws> = Vec::new();
    for t in &tokens {
        streams.push(ready(s, t).await);
    }
    // Let presence settle (each new stream is a host event to chat).
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("Meetings: {PEOPLE} registered users with WebSocket streams, over HTTPS");

    // Everyone's user id.
    let mut ids = Vec::new();
    for t in &tokens {
        let me = s.call("GET", "/api/v1/auth/me", Some(t), None).await.json();
        ids.push(me["user"]["id"].as_str().unwrap().to_string());
    }

    // Joins one after another.
    let (code, lid) = session(s, &tokens[0], "Town hall").await;
    let mut first = Vec::new();
    let mut last = Vec::new();
    let mut roster_lat = Vec::new();
    for (i, token) in tokens.iter().enumerate().skip(1) {
        let t = Instant::now();
        post(s, token, "/join", json!({"code": code})).await;
        let took = t.elapsed().as_secs_f64() * 1e3;
        if i <= 10 {
            first.push(took);
        } else if i >= PEOPLE - 10 {
            last.push(took);
        }
        // The organizer's stream: the roster with i + 1 people.
        loop {
            let e = next_of(&mut streams[0], "meeting.roster", WAIT)
                .await
                .expect("roster");
            if e["data"]["participants"].as_array().unwrap().len() == i + 1 {
                roster_lat.push(t.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
    }
    summary("join, people 2-11 (room of 2-11)", &first);
    summary("join, people 91-100 (room of 91-100)", &last);
    summary("  join -> roster at the organizer", &roster_lat);
    // Drain the streams' backlog of rosters.
    for ws in streams.iter_mut() {
        while next(ws, Duration::from_millis(5)).await.is_some() {}
    }

    // Joins all at once (a second session).
    let (code2, _lid2) = session(s, &tokens[0], "Stand-up").await;
    let addr = s.addr;
    // 96 people, 6 per connection.
    let per_conn = (PEOPLE - 1) / CONNECTIONS;
    let joiners: Arc<Vec<String>> = Arc::new(tokens[1..=CONNECTIONS * per_conn].to_vec());
    let total = joiners.len();
    let make: MakeRequest = {
        let joiners = joiners.clone();
        let code2 = code2.clone();
        Arc::new(move |n| request(addr, &joiners[n % total], "/join", &json!({"code": code2})))
    };
    let (rps, lat) = load(addr, CONNECTIONS, per_conn, make).await;
    line(
        &format!("{} joins at once, 16 connections", CONNECTIONS * per_conn),
        rps,
        lat,
    );
    for ws in streams.iter_mut() {
        while next(ws, Duration::from_millis(5)).await.is_some() {}
    }

    // Signalling one at a time: person0 -> person1.
    let to = ids[1].clone();
    let mut req_lat = Vec::new();
    let mut deliv_lat = Vec::new();
    let offer = json!({"sdp": "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n".repeat(8), "type": "offer"});
    for i in 0..300 {
        let t = Instant::now();
        post_signal(s, &tokens[0], &lid, &to, i, &offer).await;
        req_lat.push(t.elapsed().as_secs_f64() * 1e3);
        loop {
            let e = next_of(&mut streams[1], "meeting.signal", WAIT)
                .await
                .expect("signal");
            if e["data"]["data"]["n"] == i {
                deliv_lat.push(t.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
    }
    summary("signal (2 KB offer), one at a time", &req_lat);
    summary("  signal -> delivery on the peer's stream", &deliv_lat);

    // Signalling throughput: 16 senders, each to its own peer.
    let ids_arc = Arc::new(ids.clone());
    let toks = Arc::new(tokens.clone());
    let lid_c = lid.clone();
    let per_conn = 200;
    let make: MakeRequest = Arc::new(move |n| {
        let c = n / per_conn;
        let body = json!({"to": ids_arc[(c + CONNECTIONS) % ids_arc.len()], "type": "candidate",
                          "data": {"candidate": "candidate:1 1 UDP 2122252543 192.0.2.1 50000 typ host", "n": n}});
        request(addr, &toks[c], &format!("/live/{lid_c}/signal"), &body)
    });
    let (rps, lat) = load(addr, CONNECTIONS, per_conn, make).await;
    line("signals (ICE candidates), 16 connections", rps, lat);

    // Guests through the waiting room.
    let mut knock_lat = Vec::new();
    let mut admit_lat = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let r = s
            .call(
                "POST",
                "/api/v1/t/acme/p/meetings/guest/join",
                None,
                Some(&json!({"code": code, "name": format!("Guest {i}")})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let token = r.json()["token"].as_str().unwrap().to_string();
        let mut gws = ready(s, &token).await;
        let g = post(s, &token, &format!("/live/{lid}/knock"), json!({})).await;
        let gid = g["id"].as_str().unwrap().to_string();
        loop {
            let e = next_of(&mut streams[0], "meeting.lobby", WAIT)
                .await
                .expect("lobby");
            if e["data"]["waiting"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["id"] == gid.as_str())
            {
                knock_lat.push(t.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        let t = Instant::now();
        post(
            s,
            &tokens[0],
            &format!("/live/{lid}/lobby/{gid}/admit"),
            json!({}),
        )
        .await;
        next_of(&mut gws, "meeting.admitted", WAIT)
            .await
            .expect("admitted");
        admit_lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    summary("guest join + stream + knock -> lobby event", &knock_lat);
    summary("  admit -> meeting.admitted at the guest", &admit_lat);
}

async fn post_signal(s: &Server, token: &str, lid: &str, to: &str, n: usize, offer: &Value) {
    let mut data = offer.clone();
    data["n"] = json!(n);
    let r = s
        .call(
            "POST",
            &format!("/api/v1/t/acme/p/meetings/live/{lid}/signal"),
            Some(token),
            Some(&json!({"to": to, "type": "offer", "data": data})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
}
