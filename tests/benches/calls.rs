//! Calls benchmark (calls issue, item 10): the call-control path through
//! a plugin, without SIP (the harness's synthetic signalling and loopback
//! phones stand in for it). Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench calls
//!
//! - **Set-up**: a leg offered to a plugin (`callflow`, flow `answer`)
//!   until the plugin's `answer` reaches the signalling side: the offer
//!   (media opened), the `offered` event delivered as a plugin call on the
//!   executor, its commit, the command on call control's thread. One at a
//!   time (p50/p99), then 200 at once (set-ups/s).
//! - **Key → tone**: a key pressed (RFC 4733) on an answered leg (flow
//!   `echo`) until the first packet of the key tone the plugin plays back
//!   arrives at the phone: detection, the `digit` event through the
//!   executor, `play`, the media thread. p50/p99 over 100 presses.
//!
//! Both alone, then while another tenant floods its plugins with 64
//! CPU-bound 5 ms calls at once (the fairness bench's flood): call events
//! are ordinary plugin calls, so this is where a noisy tenant could show.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard::harness::Harness;
use switchboard::harness::calls::{CallRig, Phone, Signal};
use switchboard::tenant::Limits;
use switchboard_tests::load::{flood, row};
use switchboard_tests::{component, manifest};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let h = Arc::new(Harness::new().unwrap());
    for p in ["callflow", "relay"] {
        h.install(&manifest(p), &component(p)).await.unwrap();
    }
    let wide = Limits {
        concurrency: 64,
        requests_per_second: 1_000_000,
        ..Limits::default()
    };
    h.tenant_with_limits("acme", wide.clone()).await.unwrap();
    h.enable("acme", "callflow").await.unwrap();
    h.tenant_with_limits("noisy", wide).await.unwrap();
    h.enable("noisy", "relay").await.unwrap();
    let rig = CallRig::start(h.runtime());
    println!("call control through a plugin (synthetic signalling, loopback phones)");
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>12}",
        "measure", "p50 ms", "p99 ms", "max ms", "rate"
    );
    run(&rig, "alone").await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let tasks = flood(&h, "noisy", "relay", "/busy?ms=5", 64, &stop, &answered);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, t0) = (answered.load(Ordering::Relaxed), Instant::now());
    run(&rig, "flood").await;
    let rate = (answered.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!("(the flooding tenant's calls answered meanwhile: {rate:.0}/s)");
}

async fn run(rig: &CallRig, label: &str) {
    // Set-up, one at a time.
    let mut lat = Vec::new();
    for _ in 0..100 {
        let mut phone = Phone::new().unwrap();
        let t0 = Instant::now();
        let leg = rig
            .ring("acme", "callflow", "a", "100", b"answer", &mut phone)
            .await
            .unwrap();
        rig.wait_for(LIMIT, |s| s.contains(&Signal::Answered(leg.clone())))
            .await
            .unwrap();
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        rig.hang_up(&leg);
    }
    row(&format!("set-up, one ({label})"), 26, lat, "");
    settle(rig).await;

    // Set-ups, 200 at once.
    let t0 = Instant::now();
    let mut phones: Vec<Phone> = (0..200).map(|_| Phone::new().unwrap()).collect();
    let mut legs = Vec::new();
    for p in &mut phones {
        legs.push(
            rig.ring("acme", "callflow", "a", "100", b"answer", p)
                .await
                .unwrap(),
        );
    }
    let all = legs.clone();
    rig.wait_for(Duration::from_secs(60), |s| {
        all.iter().all(|l| s.contains(&Signal::Answered(l.clone())))
    })
    .await
    .unwrap();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>10.0}/s",
        format!("set-ups, 200 ({label})"),
        "",
        "",
        format!("{:.0}", secs * 1000.0),
        200.0 / secs
    );
    for l in &legs {
        rig.hang_up(l);
    }
    drop(phones);
    settle(rig).await;

    // Key → plugin → tone.
    let mut phone = Phone::new().unwrap();
    let leg = rig
        .ring("acme", "callflow", "a", "100", b"echo", &mut phone)
        .await
        .unwrap();
    rig.wait_for(LIMIT, |s| s.contains(&Signal::Answered(leg.clone())))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut lat = Vec::new();
    for i in 0..100 {
        let key = char::from(b'0' + (i % 10) as u8);
        let t0 = Instant::now();
        phone.press(key).unwrap();
        let got = tokio::task::block_in_place(|| phone.next_audio(LIMIT, 0));
        if got.is_some() {
            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        // Let the tone (100 ms) and its gap end, then drop what is left.
        tokio::time::sleep(Duration::from_millis(250)).await;
        tokio::task::block_in_place(|| phone.listen(Duration::from_millis(40), 0));
    }
    let heard = lat.len();
    row(
        &format!("key -> tone ({label})"),
        26,
        lat,
        &format!("{heard}/100 heard"),
    );
    rig.hang_up(&leg);
    settle(rig).await;
}

/// Waits until every leg has left call control.
async fn settle(rig: &CallRig) {
    for _ in 0..500 {
        if rig.live_legs() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("({} legs still live)", rig.live_legs());
}
