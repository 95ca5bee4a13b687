//! SIP set-up benchmark (calls issue, part 3): calls from devices over
//! TLS through the SIP door to a plugin that answers, beside the same
//! set-up through the harness's synthetic signalling (no SIP, no TLS, no
//! digest) in the same run. Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench sip
//!
//! - **synthetic**: a leg offered to `callflow` (flow `answer`) until its
//!   `answer` reaches the signalling side (the calls bench's set-up).
//! - **SIP INVITE → 200**: an authenticated INVITE (SRTP offer) until the
//!   door's 200 with its SDP answer: parse, digest (SHA-256), route, SDP,
//!   media opened, the `offered` event through the plugin executor, the
//!   plugin's commit, our answer written.
//! - **SIP call**: the whole exchange a phone makes: INVITE, 407,
//!   INVITE with credentials, 100, 200, ACK, BYE, 200.
//! - **SIP calls/s**: 16 phones (devices, each its own connection) each
//!   placing 25 calls one after another, all at once: complete calls per
//!   second.
//! - **trunk calls/s (SIPp)**: SIPp's `uac` over UDP from a trunk's
//!   allow-listed address to a DID routed to the same plugin, 3,000 calls
//!   (INVITE, 100, 200, ACK, BYE, 200) with at most 100 at once; beside
//!   the same SIPp load against SIPp's own `uas` (no Switchboard: the
//!   load generator's ceiling on this machine) in the same run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard::admin::Op;
use switchboard::harness::Harness;
use switchboard::harness::calls::{CallRig, Phone, Signal};
use switchboard::tenant::{Limits, Route};
use switchboard_tests::accounts::{console, create_user};
use switchboard_tests::load::pct;
use switchboard_tests::sip::{Ua, ack, in_dialog, invite_timed, offer};
use switchboard_tests::{component, manifest};

const N: usize = 200;

fn wide() -> Limits {
    Limits {
        concurrency: 64,
        requests_per_second: 1_000_000,
        ..Limits::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("call set-up: SIP over TLS through the door vs synthetic signalling (same run)");
    println!(
        "{:<24} {:>9} {:>9} {:>9} {:>12}",
        "measure", "p50 ms", "p99 ms", "max ms", "rate"
    );
    synthetic().await;
    sip().await;
    trunks().await;
}

fn row(name: &str, lat: Vec<f64>, rate: &str) {
    let max = lat.iter().copied().fold(0.0, f64::max);
    println!(
        "{name:<24} {:>9.2} {:>9.2} {max:>9.2} {rate:>12}",
        pct(lat.clone(), 0.5),
        pct(lat, 0.99),
    );
}

async fn synthetic() {
    let h = Harness::new().unwrap();
    h.install(&manifest("callflow"), &component("callflow"))
        .await
        .unwrap();
    h.tenant_with_limits("acme", wide()).await.unwrap();
    h.enable("acme", "callflow").await.unwrap();
    let rig = CallRig::start(h.runtime());
    let mut lat = Vec::new();
    for _ in 0..N {
        let mut phone = Phone::new().unwrap();
        let t0 = Instant::now();
        let leg = rig
            .ring("acme", "callflow", "a", "100", b"answer", &mut phone)
            .await
            .unwrap();
        rig.wait_for(Duration::from_secs(10), |s| {
            s.contains(&Signal::Answered(leg.clone()))
        })
        .await
        .unwrap();
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        rig.hang_up(&leg);
    }
    row("synthetic set-up", lat, "");
}

async fn sip() {
    let h = Harness::new().unwrap();
    h.install(&manifest("callflow"), &component("callflow"))
        .await
        .unwrap();
    h.tenant_with_limits("acme", wide()).await.unwrap();
    h.enable("acme", "callflow").await.unwrap();
    create_user(&h, "acme", "alice", "user").await;
    console(
        &h,
        Op::RoutesSet {
            tenant: "acme".into(),
            routes: vec![Route {
                number: "100".into(),
                plugin: "callflow".into(),
                args: "answer".into(),
            }],
        },
    )
    .await;
    let added = console(
        &h,
        Op::DeviceAdd {
            tenant: "acme".into(),
            name: "alice-desk".into(),
            user: "alice".into(),
            udp: false,
        },
    )
    .await;
    let password = added["password"].as_str().unwrap().to_string();
    let (addr, _stop) = switchboard_tests::sip::start_door(h.runtime()).await;
    let _scheduler = switchboard::scheduler::Scheduler::start(h.runtime(), Default::default());

    // One at a time.
    let mut ua = Ua::connect(addr, "alice-desk", "acme.localhost", &password).await;
    let (mut invite_ok, mut whole) = (Vec::new(), Vec::new());
    for _ in 0..N {
        let (lat, total) = call(&mut ua).await;
        invite_ok.push(lat);
        whole.push(total);
    }
    row("SIP INVITE -> 200", invite_ok, "");
    row("SIP call (8 messages)", whole, "");

    // All at once: one device per phone (a device has at most 8 calls).
    let phones = 16;
    let each = 25;
    let mut devices = Vec::new();
    for i in 0..phones {
        let name = format!("desk-{i}");
        let added = console(
            &h,
            Op::DeviceAdd {
                tenant: "acme".into(),
                name: name.clone(),
                user: "alice".into(),
                udp: false,
            },
        )
        .await;
        devices.push((name, added["password"].as_str().unwrap().to_string()));
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (name, password) in devices {
        tasks.push(tokio::spawn(async move {
            let mut ua = Ua::connect(addr, &name, "acme.localhost", &password).await;
            let mut lat = Vec::new();
            for _ in 0..each {
                lat.push(call(&mut ua).await.1);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let rate = (phones * each) as f64 / t0.elapsed().as_secs_f64();
    row(
        &format!("SIP calls, {phones} at once"),
        lat,
        &format!("{rate:.0} calls/s"),
    );
}

/// One whole call; (authenticated INVITE → 200, whole exchange) in ms.
async fn call(ua: &mut Ua) -> (f64, f64) {
    let t0 = Instant::now();
    let (inv, ok, answered) = invite_timed(ua, "100", &offer(40_000, true)).await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    ua.send(&ack(&inv, &ok)).await;
    let bye = in_dialog(ua, "BYE", &inv, &ok);
    ua.send(&bye).await;
    let done = ua.final_response().await.expect("the BYE's answer");
    assert_eq!(done.status(), Some(200));
    (
        answered.as_secs_f64() * 1000.0,
        t0.elapsed().as_secs_f64() * 1000.0,
    )
}

/// SIPp `uac` against the door's UDP socket (a DID routed to `callflow
/// answer`), and against SIPp's own `uas`, in the same run.
async fn trunks() {
    use switchboard_tests::sipp;
    let h = Harness::new().unwrap();
    h.install(&manifest("callflow"), &component("callflow"))
        .await
        .unwrap();
    h.tenant_with_limits("acme", wide()).await.unwrap();
    h.enable("acme", "callflow").await.unwrap();
    console(
        &h,
        Op::RoutesSet {
            tenant: "acme".into(),
            routes: vec![Route {
                number: "+442079460018".into(),
                plugin: "callflow".into(),
                args: "answer".into(),
            }],
        },
    )
    .await;
    console(
        &h,
        Op::TrunkSet {
            tenant: "acme".into(),
            trunk: switchboard::tenant::Trunk {
                name: "itsp".into(),
                addresses: vec!["127.0.0.1".into()],
                proxy: None,
                username: None,
                caller_id: None,
                caller_ids: Vec::new(),
                max_calls: 10_000,
                ..Default::default()
            },
            password: None,
        },
    )
    .await;
    let ports = switchboard_tests::sip::start_door_with_trunks(h.runtime()).await;
    let (udp, _stop) = (ports.trunks.unwrap(), ports.stop);
    let _scheduler = switchboard::scheduler::Scheduler::start(h.runtime(), Default::default());
    let calls = 3000;
    let load = |target: SocketAddr| {
        let calls = calls.to_string();
        async move {
            let t0 = Instant::now();
            let run = sipp::run(
                "127.0.0.1",
                Some(target),
                &[
                    "-sn",
                    "uac",
                    "-s",
                    "442079460018",
                    "-m",
                    &calls,
                    "-r",
                    "5000",
                    "-l",
                    "100",
                    "-d",
                    "0",
                ],
                Duration::from_secs(120),
            )
            .await;
            let secs = t0.elapsed().as_secs_f64();
            (run, secs)
        }
    };
    // The peer: SIPp's uas answering SIPp's uac directly.
    let port = sipp::free_udp_port("127.0.0.1");
    let uas = tokio::spawn(sipp::run(
        "127.0.0.1",
        None,
        &["-sn", "uas", "-p", &port.to_string()],
        Duration::from_secs(60),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (peer, peer_secs) = load(format!("127.0.0.1:{port}").parse().unwrap()).await;
    uas.abort();
    let (ours, secs) = load(udp).await;
    for (name, run, secs) in [
        ("SIPp -> SIPp uas (peer)", &peer, peer_secs),
        ("SIPp -> trunk -> plugin", &ours, secs),
    ] {
        let done = successful(&run.stdout);
        println!(
            "{name:<24} {:>9} {:>9} {:>9} {:>12}",
            "",
            "",
            "",
            format!("{:.0} calls/s", done as f64 / secs)
        );
        if !run.ok() {
            println!(
                "  ({done} of {calls} calls succeeded; sipp exit {:?})",
                run.code
            );
        }
    }
}

/// The "Successful call" total of SIPp's final statistics.
fn successful(stdout: &str) -> u64 {
    stdout
        .lines()
        .filter(|l| l.contains("Successful call"))
        .filter_map(|l| l.split('|').nth(2))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}
