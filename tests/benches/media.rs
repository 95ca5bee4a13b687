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
//!
//! Then the peer: the same plain RTP streams relayed by rtpengine
//! (Debian's `rtpengine-daemon`, userspace forwarding, one thread like the
//! engine), set up over its ng control protocol (an offer and an answer
//! per call), in the same run. Installed by `tests/tools/install-peers.sh`
//! (the README's test command); skipped, with a note, when missing.

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

/// rtpengine, run for the bench: a child process with its ng control
/// socket.
struct RtpEngine {
    child: std::process::Child,
    ng: std::net::UdpSocket,
    next: u64,
}

/// Bencode, as the ng protocol speaks it.
#[derive(Clone)]
enum Ben {
    Str(Vec<u8>),
    Int(i64),
    List(Vec<Ben>),
    Dict(Vec<(Vec<u8>, Ben)>),
}

impl Ben {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Ben::Str(s) => {
                out.extend_from_slice(format!("{}:", s.len()).as_bytes());
                out.extend_from_slice(s);
            }
            Ben::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Ben::List(l) => {
                out.push(b'l');
                l.iter().for_each(|b| b.write(out));
                out.push(b'e');
            }
            Ben::Dict(d) => {
                let mut d: Vec<&(Vec<u8>, Ben)> = d.iter().collect();
                d.sort_by(|a, b| a.0.cmp(&b.0));
                out.push(b'd');
                for (k, v) in d {
                    Ben::Str(k.clone()).write(out);
                    v.write(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Reads one value at `at`; returns it and where it ends.
    fn read(b: &[u8], at: usize) -> Option<(Ben, usize)> {
        match *b.get(at)? {
            b'i' => {
                let end = at + b[at..].iter().position(|c| *c == b'e')?;
                let n = std::str::from_utf8(&b[at + 1..end]).ok()?.parse().ok()?;
                Some((Ben::Int(n), end + 1))
            }
            b'l' | b'd' => {
                let dict = b[at] == b'd';
                let (mut items, mut keys, mut at) = (Vec::new(), Vec::new(), at + 1);
                while *b.get(at)? != b'e' {
                    if dict {
                        let (Ben::Str(k), next) = Ben::read(b, at)? else {
                            return None;
                        };
                        keys.push(k);
                        at = next;
                    }
                    let (v, next) = Ben::read(b, at)?;
                    items.push(v);
                    at = next;
                }
                let v = if dict {
                    Ben::Dict(keys.into_iter().zip(items).collect())
                } else {
                    Ben::List(items)
                };
                Some((v, at + 1))
            }
            _ => {
                let colon = at + b[at..].iter().position(|c| *c == b':')?;
                let n: usize = std::str::from_utf8(&b[at..colon]).ok()?.parse().ok()?;
                let s = b.get(colon + 1..colon + 1 + n)?.to_vec();
                Some((Ben::Str(s), colon + 1 + n))
            }
        }
    }

    fn get(&self, key: &str) -> Option<&Ben> {
        match self {
            Ben::Dict(d) => d.iter().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v),
            _ => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Ben::Str(s) => String::from_utf8_lossy(s).into_owned(),
            Ben::Int(i) => i.to_string(),
            _ => String::new(),
        }
    }
}

fn dict(items: &[(&str, Ben)]) -> Ben {
    Ben::Dict(
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect(),
    )
}

fn text(s: &str) -> Ben {
    Ben::Str(s.as_bytes().to_vec())
}

impl RtpEngine {
    /// Starts rtpengine on loopback (userspace, one thread); `None` if it
    /// is not installed or does not answer.
    fn start() -> Option<RtpEngine> {
        let binary = ["/usr/bin/rtpengine", "/usr/sbin/rtpengine"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let ng_port = {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            probe.local_addr().ok()?.port()
        };
        let child = std::process::Command::new(binary)
            .args([
                "--foreground",
                "--log-stderr",
                "--log-level=3",
                "--interface=127.0.0.1",
                &format!("--listen-ng=127.0.0.1:{ng_port}"),
                "--table=-1",
                "--port-min=40000",
                "--port-max=49999",
                "--num-threads=1",
                "--delete-delay=0",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let ng = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
        ng.connect(("127.0.0.1", ng_port)).ok()?;
        ng.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        let mut me = RtpEngine { child, ng, next: 0 };
        for _ in 0..50 {
            if me
                .command(dict(&[("command", text("ping"))]))
                .is_some_and(|r| r.get("result").map(Ben::text).as_deref() == Some("pong"))
            {
                return Some(me);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn command(&mut self, message: Ben) -> Option<Ben> {
        self.next += 1;
        let cookie = format!("c{} ", self.next);
        let mut out = cookie.clone().into_bytes();
        message.write(&mut out);
        self.ng.send(&out).ok()?;
        let mut buf = vec![0u8; 65_536];
        loop {
            let n = self.ng.recv(&mut buf).ok()?;
            if let Some(rest) = buf[..n].strip_prefix(cookie.as_bytes()) {
                return Ben::read(rest, 0).map(|(b, _)| b);
            }
        }
    }

    /// Sets up a call between phones at `a` and `b`; returns where each
    /// sends (a's target, b's target).
    fn call(&mut self, id: &str, a: SocketAddr, b: SocketAddr) -> Option<(SocketAddr, SocketAddr)> {
        let sdp = |port: u16| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
            )
        };
        let port_of = |r: &Ben| -> Option<u16> {
            let sdp = r.get("sdp")?.text();
            let m = sdp.lines().find(|l| l.starts_with("m=audio "))?;
            m.split(' ').nth(1)?.parse().ok()
        };
        let offer = self.command(dict(&[
            ("command", text("offer")),
            ("call-id", text(id)),
            ("from-tag", text("a")),
            ("sdp", text(&sdp(a.port()))),
        ]))?;
        let towards_b = port_of(&offer)?;
        let answer = self.command(dict(&[
            ("command", text("answer")),
            ("call-id", text(id)),
            ("from-tag", text("a")),
            ("to-tag", text("b")),
            ("sdp", text(&sdp(b.port()))),
        ]))?;
        let towards_a = port_of(&answer)?;
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        // a sends to the port rtpengine gave in its answer to a; b to the
        // port in the offer it passed on to b.
        Some((at(towards_a), at(towards_b)))
    }

    fn delete(&mut self, id: &str) {
        let _ = self.command(dict(&[("command", text("delete")), ("call-id", text(id))]));
    }
}

impl Drop for RtpEngine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `calls` calls of two phones each relayed by rtpengine (plain RTP).
async fn phones_via_rtpengine(
    rtp: &mut RtpEngine,
    calls: usize,
    round: usize,
) -> (Vec<Phone>, Vec<String>) {
    let mut phones = Vec::with_capacity(calls * 2);
    let mut ids = Vec::with_capacity(calls);
    for call in 0..calls {
        let a = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let id = format!("bench-{round}-{call}");
        let (to_a, to_b) = rtp
            .call(&id, a.local_addr().unwrap(), b.local_addr().unwrap())
            .expect("rtpengine sets up the call");
        ids.push(id);
        phones.push(Phone {
            socket: a,
            leg_addr: to_a,
            tx: None,
            rx: None,
        });
        phones.push(Phone {
            socket: b,
            leg_addr: to_b,
            tx: None,
            rx: None,
        });
    }
    (phones, ids)
}

fn print_row(calls: usize, label: &str, mut s: Stats) {
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
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // The media thread's nice value: MEDIA_NICE (default 0; -10 needs
    // CAP_SYS_NICE, as `[sip] media_nice` does in the server).
    let nice = std::env::var("MEDIA_NICE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (engine, _events) = start_engine(nice, Vec::new());
    let rt = realtime().map_or(String::new(), |p| format!(", real-time FIFO {p}"));
    println!(
        "bridged G.711 calls through the media engine (1 media thread at nice {nice}{rt}, loopback, {STEP_SECS} s per step)"
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
    let h = noisy(|_| {}).await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let tasks = flood(&h, "noisy", "relay", "/busy?ms=5", 64, &stop, &answered);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = answered.load(Ordering::Relaxed);
    let t0 = Instant::now();
    run_step(&engine, 500, true, &mut group, "yes+flood").await;
    // Again with the phones on a runtime (and thread) of their own, apart
    // from the flood's drivers: what is left is the engine's.
    let mut g = group;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // At the media thread's priority: a phone is another
                // machine, which the flood does not slow.
                let _ = switchboard::support::thread::set_nice(nice);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run_step(&engine, 500, true, &mut g, "yes+flood*"));
            })
            .join()
            .unwrap();
    });
    let rate = (answered.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "(the flooding tenant's calls answered meanwhile, any status: {rate:.0}/s; *: the phones on a thread of their own, at the media thread's nice)"
    );
    pinned_rows(nice).await;

    // The peer: rtpengine relaying the same plain RTP streams.
    match RtpEngine::start() {
        None => println!(
            "rtpengine: not installed or not answering; skipped (run tests/tools/install-peers.sh)"
        ),
        Some(mut rtp) => {
            println!("the same plain RTP calls relayed by rtpengine (userspace, 1 thread):");
            for (round, calls) in [100usize, 250, 500, 750, 1000].into_iter().enumerate() {
                let (phones, ids) = phones_via_rtpengine(&mut rtp, calls, round).await;
                let s = step(phones).await;
                print_row(calls, "rtpengine", s);
                for id in ids {
                    rtp.delete(&id);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One media thread at `nice` on `cpus` (empty: any), on loopback.
/// MEDIA_RT: a real-time FIFO priority for the media thread, as `[sip]
/// media_realtime` sets it in the server; needs CAP_SYS_NICE.
fn realtime() -> Option<u8> {
    std::env::var("MEDIA_RT").ok().and_then(|p| p.parse().ok())
}

/// PHONES_RT: the same for the phones of the pinned rows (they stand in
/// for the network, which has CPUs of its own); default: MEDIA_RT's, `0`
/// none.
fn phones_realtime() -> Option<u8> {
    match std::env::var("PHONES_RT") {
        Ok(p) => p.parse().ok().filter(|p| *p > 0),
        Err(_) => realtime(),
    }
}

fn start_engine(
    nice: i32,
    cpus: Vec<usize>,
) -> (
    Engine,
    tokio::sync::mpsc::Receiver<switchboard::media::engine::MediaEvent>,
) {
    Engine::start(MediaConfig {
        nice,
        workers: 1,
        bind: "127.0.0.1".parse().unwrap(),
        ports: 20_000..=29_999,
        report_interval: Duration::from_secs(5),
        cpus,
        realtime: realtime(),
    })
    .unwrap()
}

/// A harness (its runtime configured by `adjust`) with tenant `noisy`
/// running the `relay` fixture, free to flood it.
async fn noisy(adjust: impl FnOnce(&mut switchboard::runtime::RuntimeConfig)) -> Arc<Harness> {
    let h = Arc::new(Harness::with_config(adjust).unwrap());
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
    h
}

/// Media on a core of its own, as `[sip] media_cpus` and `plugin_cpus`
/// set it up: the engine's thread alone on CPU 0; the plugin executor,
/// the flood's drivers and the phones on CPU 1, the phones at nice -10
/// (they stand in for the network, which a plugin flood on the host does
/// not slow; without CAP_SYS_NICE they stay at 0 and the row says so).
/// The same 500 SRTP calls without, with, and again without the flood:
/// what the flood adds to the media is the difference of the rows.
async fn pinned_rows(nice: i32) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 {
        println!("(one CPU: no pinned rows)");
        return;
    }
    let (engine, _events) = start_engine(nice, vec![0]);
    let h = noisy(|c| c.plugin_cpus = vec![1]).await;
    // One call first (the instance pool warm), then a pause: compiling
    // and loading are not what is measured.
    let _ = h.get("noisy", "relay", "u0", "/busy?ms=5").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut group = 1_000_000u64;
    let phones_nice = match run_pinned(1, -10, || Ok(())) {
        Ok(()) => -10,
        Err(_) => 0,
    };
    let mut phones_on_cpu1 = |label: &str| {
        let step = run_pinned(1, phones_nice, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run_step(&engine, 500, true, &mut group, label));
            Ok(())
        });
        step.unwrap();
    };
    phones_on_cpu1("pinned");
    let drivers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| {
            let _ = switchboard::support::thread::set_affinity(&[1]);
        })
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let tasks = {
        let _inside = drivers.enter();
        flood(&h, "noisy", "relay", "/busy?ms=5", 64, &stop, &answered)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, t0) = (answered.load(Ordering::Relaxed), Instant::now());
    phones_on_cpu1("pinned+flood");
    let rate = (answered.load(Ordering::Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    drivers.shutdown_background();
    tokio::time::sleep(Duration::from_millis(500)).await;
    phones_on_cpu1("pinned");
    let rt = match (realtime(), phones_realtime()) {
        (None, None) => String::new(),
        (media, phones) => format!(
            "; real-time FIFO: the media thread {}, the phones {}",
            media.map_or("no".into(), |p| p.to_string()),
            phones.map_or("no".into(), |p| p.to_string())
        ),
    };
    println!(
        "(pinned: the media thread alone on CPU 0; the plugin executor, the flood's drivers and the phones on CPU 1, the phones at nice {phones_nice}{rt}; flood calls answered meanwhile: {rate:.0}/s)"
    );
}

/// Runs `f` on a thread of its own kept on `cpu` at `nice`; the error of
/// either setting, else `f`'s.
fn run_pinned(
    cpu: usize,
    nice: i32,
    f: impl FnOnce() -> std::io::Result<()> + Send,
) -> std::io::Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                switchboard::support::thread::set_affinity(&[cpu])?;
                switchboard::support::thread::set_nice(nice)?;
                if let Some(priority) = phones_realtime() {
                    switchboard::support::thread::set_realtime(priority)?;
                }
                f()
            })
            .join()
            .unwrap()
    })
}

async fn run_step(engine: &Engine, calls: usize, srtp: bool, group: &mut u64, label: &str) {
    let (phones, legs) = phones_for(engine, calls, srtp, *group).await;
    *group += calls as u64;
    let s = step(phones).await;
    print_row(calls, label, s);
    for leg in legs {
        engine.close(leg).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}
