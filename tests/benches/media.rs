//! Media benchmark (calls issue, item 10, first part). Prints figures;
//! asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench media
//!
//! N bridged G.711 calls through the media engine on loopback: each call
//! is two phones in this process, each sending 50 packets/s (20 ms of
//! µ-law) to its leg at its own offset in the 20 ms period, which the
//! engine relays to the other phone. Every
//! packet carries its send time; a receiver computes the transit time and
//! reports, over all packets of a step, the loss and the p50/p99/max of
//! the delay variation (transit minus the stream's smallest transit: the
//! jitter the host and the machine add). Steps of N calls, plain RTP and
//! SRTP (AES_CM_128_HMAC_SHA1_80, SRTP on every leg both ways). The load
//! generator shares the machine's cores with the engine, so the figures
//! are a lower bound of what the engine alone sustains.
//!
//! Then the 500-call SRTP step again while another tenant floods its
//! plugins (64 CPU-bound 5 ms calls at once through the plugin executor):
//! media runs on its own thread at normal priority, the executor's at
//! nice 10, so the flood should not show in the media figures (SPEC K5).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicU64;

use switchboard::harness::Harness;
use switchboard::media::engine::{Engine, LegSetup, MediaConfig};
use switchboard::media::rtp;
use switchboard::media::srtp::{MasterKey, Srtp, Suite};
use switchboard::tenant::Limits;
use switchboard_tests::load::flood;
use switchboard_tests::{component, manifest};
use tokio::net::UdpSocket;

const SUITE: Suite = Suite::AesCm128HmacSha1_80;
/// Seconds per step.
const STEP_SECS: u64 = 5;

struct Phone {
    socket: Arc<UdpSocket>,
    leg_addr: SocketAddr,
    tx: Option<Srtp>,
    rx: Option<Srtp>,
}

struct Stats {
    sent: u64,
    received: u64,
    /// Delay variation per packet, µs.
    variation: Vec<u32>,
}

async fn phones_for(
    engine: &Engine,
    calls: usize,
    srtp: bool,
    group_base: u64,
) -> (Vec<Phone>, Vec<u64>) {
    let mut phones = Vec::with_capacity(calls * 2);
    let mut legs = Vec::with_capacity(calls * 2);
    for call in 0..calls {
        let mut pair = Vec::new();
        for _ in 0..2 {
            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let (send_key, recv_key) = (
                MasterKey::generate().unwrap(),
                MasterKey::generate().unwrap(),
            );
            let setup = LegSetup {
                group: group_base + call as u64,
                remote: socket.local_addr().unwrap(),
                payload_type: 0,
                dtmf: None,
                srtp: srtp.then(|| (SUITE, send_key.clone(), recv_key.clone())),
            };
            let (leg, leg_addr) = engine.open(setup).await.unwrap();
            pair.push(leg);
            phones.push(Phone {
                socket,
                leg_addr,
                tx: srtp.then(|| Srtp::new(SUITE, &send_key)),
                rx: srtp.then(|| Srtp::new(SUITE, &recv_key)),
            });
        }
        engine.bridge(pair[0], pair[1]).await.unwrap();
        legs.extend(pair);
    }
    (phones, legs)
}

/// Runs one step: every phone sends for `STEP_SECS`; returns the stats.
async fn step(phones: Vec<Phone>) -> Stats {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(Stats {
        sent: 0,
        received: 0,
        variation: Vec::new(),
    }));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (n, p) in phones.into_iter().enumerate() {
        let Phone {
            socket,
            leg_addr,
            tx,
            rx,
        } = p;
        receivers.push(tokio::spawn(receive(
            socket.clone(),
            rx,
            start,
            stop.clone(),
            stats.clone(),
        )));
        senders.push((socket, leg_addr, tx, n as u32));
    }
    // One sender task paces every phone on the 20 ms grid, each phone at
    // its own offset in the period (real phones are not synchronised):
    // a 1 ms tick sends the twentieth of the phones whose slot it is.
    let sent = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut packet = Vec::with_capacity(200);
        let mut payload = [0xffu8; 160];
        let mut sent = 0u64;
        for ms in 0..STEP_SECS * 1000 {
            tick.tick().await;
            let (slot, seq) = ((ms % 20) as usize, (ms / 20) as u16);
            for (socket, to, tx, id) in senders.iter_mut().skip(slot).step_by(20) {
                let now = start.elapsed().as_micros() as u64;
                payload[..8].copy_from_slice(&now.to_be_bytes());
                rtp::write(
                    &mut packet,
                    false,
                    0,
                    seq,
                    u32::from(seq) * 160,
                    *id,
                    &payload,
                );
                if let Some(tx) = tx.as_mut() {
                    tx.protect_rtp(&mut packet).unwrap();
                }
                if socket.try_send_to(&packet, *to).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    });
    let sent = sent.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for r in receivers {
        r.await.unwrap();
    }
    let mut s = std::mem::replace(
        &mut *stats.lock().unwrap(),
        Stats {
            sent: 0,
            received: 0,
            variation: Vec::new(),
        },
    );
    s.sent = sent;
    s
}

async fn receive(
    socket: Arc<UdpSocket>,
    mut rx: Option<Srtp>,
    start: Instant,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
) {
    let mut buf = vec![0u8; 2048];
    let mut transits = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
        else {
            continue;
        };
        let now = start.elapsed().as_micros() as u64;
        // RTCP reports for a neighbouring phone (its RTP port + 1 may be
        // this socket) are not audio.
        if rtp::is_rtcp(&buf[..n]) {
            continue;
        }
        let mut p = buf[..n].to_vec();
        if let Some(rx) = rx.as_mut()
            && rx.unprotect_rtp(&mut p).is_err()
        {
            continue;
        }
        let Ok(parsed) = rtp::parse(&p) else { continue };
        let sent = u64::from_be_bytes(parsed.payload[..8].try_into().unwrap());
        transits.push(now.saturating_sub(sent));
    }
    let min = transits.iter().copied().min().unwrap_or(0);
    let mut s = stats.lock().unwrap();
    s.received += transits.len() as u64;
    s.variation
        .extend(transits.iter().map(|t| (t - min) as u32));
}

fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (engine, _events) = Engine::start(MediaConfig {
        workers: 1,
        bind: "127.0.0.1".parse().unwrap(),
        ports: 20_000..=29_999,
        report_interval: Duration::from_secs(5),
    })
    .unwrap();
    println!(
        "bridged G.711 calls through the media engine (1 media thread, loopback, {STEP_SECS} s per step)"
    );
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "calls", "srtp", "pkts/s", "sent", "loss %", "p50 ms", "p99 ms", "max ms"
    );
    let mut group = 0u64;
    for calls in [100usize, 250, 500, 750, 1000] {
        for srtp in [false, true] {
            let label = if srtp { "yes" } else { "no" };
            run_step(&engine, calls, srtp, &mut group, label).await;
        }
    }

    // The same 500 SRTP calls while another tenant floods its plugins.
    let h = Arc::new(Harness::new().unwrap());
    h.install(&manifest("relay"), &component("relay"))
        .await
        .unwrap();
    let limits = Limits {
        concurrency: 64,
        requests_per_second: 1_000_000,
        ..Limits::default()
    };
    h.tenant_with_limits("noisy", limits).await.unwrap();
    h.enable("noisy", "relay").await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let tasks = flood(&h, "noisy", "relay", "/busy?ms=5", 64, &stop, &answered);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = answered.load(Ordering::Relaxed);
    let t0 = Instant::now();
    run_step(&engine, 500, true, &mut group, "yes+flood").await;
    let rate = (answered.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!("(the flooding tenant's calls answered meanwhile, any status: {rate:.0}/s)");
}

async fn run_step(engine: &Engine, calls: usize, srtp: bool, group: &mut u64, label: &str) {
    let (phones, legs) = phones_for(engine, calls, srtp, *group).await;
    *group += calls as u64;
    let mut s = step(phones).await;
    s.variation.sort_unstable();
    let loss = 100.0 * (1.0 - s.received as f64 / s.sent.max(1) as f64);
    println!(
        "{calls:>6} {label:>9} {:>9.0} {:>9} {:>8.3} {:>9.2} {:>9.2} {:>9.2}",
        s.sent as f64 / STEP_SECS as f64,
        s.sent,
        loss,
        pct(&s.variation, 0.5),
        pct(&s.variation, 0.99),
        pct(&s.variation, 1.0),
    );
    for leg in legs {
        engine.close(leg).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}
