//! Voice services benchmark (issue 21): what callers of the voicemail and
//! attendant plugins wait for, through the real kernel, call control and
//! media engine (the harness's synthetic signalling and loopback phones
//! stand in for SIP). Prints figures; asserts nothing.
//!
//!     cargo bench -p switchboard-tests --bench voice
//!
//! - **Menu key → next prompt**: in an attendant whose menus `a` and `b`
//!   lead to each other on `1`, a key pressed while a menu speaks until the
//!   first frame of the other menu's prompt reaches the phone: barge-in,
//!   the collect through type-ahead, the `collected` event through the
//!   executor, the plugin reading its configuration, `play`, the media
//!   thread. p50/p99 over 60 presses. Beside it, the calls bench's
//!   bare key → tone path (a fixture that plays the key back) in the same
//!   run, as the baseline.
//! - **Deposit `#` → stored**: a caller who left a message presses `#`
//!   until the owner's event stream gets `voicemail.message`: the
//!   recording's end on the media thread, the blob's last write and WAV
//!   header, `recorded` through the executor, the message stored, counted
//!   and told. One at a time (p50/p99 of 20), then 40 callers leaving
//!   2-second messages at once (all their messages present and intact,
//!   and the slowest `#` → stored).
//! - **Recorded call hang-up → sealed**: a call between two users that
//!   the `pbx` plugin records under the tenant's policy (silent here, so
//!   the parties talk at once) ends; until the recording's owner's
//!   stream gets `recording.stopped`: the host's recording ended and
//!   written, `recorded` through the executor, the audio read back from
//!   the staging blob and handed to the `recording` plugin as a chunk
//!   (hashed, chained, encrypted), the seal signed, the staging copy
//!   destroyed. One at a time (1 s calls, p50/p99 of 20), then 20 calls
//!   ending at once; the deposit above is the baseline (the same
//!   recording path, a smaller write).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::admin::{self, Actor, Op};
use switchboard::harness::Harness;
use switchboard::harness::calls::{CallRig, Phone, Signal};
use switchboard::media::g711;
use switchboard::runtime::{Method, Principal, Request};
use switchboard::tenant::{Limits, Route};
use switchboard_tests::accounts::plugin_config;
use switchboard_tests::ivr::{first_frame, wait_frame};
use switchboard_tests::load::row;
use switchboard_tests::{component, manifest};

const LIMIT: Duration = Duration::from_secs(15);

async fn console(h: &Harness, op: Op) -> serde_json::Value {
    admin::execute(h.runtime(), &Actor::Console, op)
        .await
        .unwrap_or_else(|e| panic!("{} ({})", e.message, e.code))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let h = Arc::new(Harness::new().unwrap());
    let plugins = ["callflow", "voicemail", "attendant", "pbx", "recording"];
    for p in plugins {
        h.install(&manifest(p), &component(p)).await.unwrap();
    }
    let wide = Limits {
        concurrency: 64,
        requests_per_second: 1_000_000,
        ..Limits::default()
    };
    h.tenant_with_limits("acme", wide).await.unwrap();
    for p in plugins {
        h.enable("acme", p).await.unwrap();
    }
    let bob = console(
        &h,
        Op::UserCreate {
            realm: "acme".into(),
            account: serde_json::from_value(json!({"username": "bob", "role": "user"})).unwrap(),
        },
    )
    .await["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    plugin_config(&h, "acme", "voicemail", json!({ "max-messages": 1000 })).await;
    let route = |number: &str, plugin: &str, args: &str| Route {
        number: number.into(),
        plugin: plugin.into(),
        args: args.into(),
    };
    console(
        &h,
        Op::RoutesSet {
            tenant: "acme".into(),
            routes: vec![
                route("800", "voicemail", ""),
                route("100", "attendant", "loop"),
                route("201", "pbx", "bob"),
            ],
        },
    )
    .await;
    let admin = Principal {
        role: switchboard::runtime::Role::TenantAdmin,
        ..Principal::user("acme", "admin")
    };
    let menu = |say: &str, next: &str| json!({ "say": [{ "library": say }], "choices": { "1": { "to": "menu", "menu": next } } });
    let loop_att = json!({
        "time_zone": "UTC", "open": "a", "closed": "a",
        "menus": { "a": menu("enter-extension", "b"), "b": menu("main-menu", "a") }
    });
    let r = h
        .runtime()
        .handle(
            "acme",
            "attendant",
            Request::new(Method::Put, "/admin/attendants/loop", admin.clone())
                .with_body(loop_att.to_string()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let rig = CallRig::start(h.runtime());
    println!("voice services (synthetic signalling, loopback phones)");
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>14}",
        "measure", "p50 ms", "p99 ms", "max ms", "note"
    );
    key_to_tone(&rig).await;
    menu_keys(&rig).await;
    deposits(&h, &rig, &bob).await;
    let r = h
        .runtime()
        .handle(
            "acme",
            "pbx",
            Request::new(Method::Put, "/admin/recording", admin)
                .with_body(json!({ "always": { "users": [bob] }, "silent": true }).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    recorded_calls(&h, &rig, &bob).await;
}

/// `calls` recorded calls to Bob that talk for `frames` and end at once:
/// the time from the hang-ups to each `recording.stopped` on Bob's
/// stream.
async fn end_recorded(
    h: &Harness,
    rig: &CallRig,
    bob: &str,
    calls: usize,
    frames: usize,
) -> Vec<f64> {
    let mut stream = h.runtime().events().subscribe("acme", bob, None).unwrap();
    let desk = Phone::new().unwrap();
    rig.directory(&format!("user:{bob}"), &desk).unwrap();
    let mut phones: Vec<Phone> = (0..calls).map(|_| Phone::new().unwrap()).collect();
    let mut legs = Vec::new();
    for p in &mut phones {
        legs.push(
            rig.ring("acme", "pbx", "+447400222000", "201", b"bob", p)
                .await
                .unwrap(),
        );
    }
    // Until every call is bridged (the recording runs from the answer).
    let end = Instant::now() + LIMIT;
    while legs.iter().any(|l| {
        h.runtime()
            .telephony()
            .lookup("acme", "pbx", l)
            .and_then(|s| s.bridged_with)
            .is_none()
    }) && Instant::now() < end
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let level = [g711::linear_to_ulaw(6000); 160];
    for _ in 0..frames {
        for p in &mut phones {
            let _ = p.send_audio(&level);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    for l in &legs {
        rig.hang_up(l);
    }
    let mut lat = Vec::new();
    let end = Instant::now() + LIMIT;
    while lat.len() < calls && Instant::now() < end {
        match tokio::time::timeout(end - Instant::now(), stream.rx.recv()).await {
            Ok(Some(d)) if d.frame.contains("recording.stopped") => {
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    lat
}

async fn recorded_calls(h: &Harness, rig: &CallRig, bob: &str) {
    let mut one = Vec::new();
    for _ in 0..20 {
        one.extend(end_recorded(h, rig, bob, 1, 50).await);
    }
    let n = one.len();
    row(
        "recorded hang-up -> sealed, one",
        34,
        one,
        &format!("{n}/20 sealed"),
    );
    let lat = end_recorded(h, rig, bob, 20, 50).await;
    let n = lat.len();
    row(
        "recorded hang-up -> sealed, 20",
        34,
        lat,
        &format!("{n}/20 sealed"),
    );
}

/// The baseline: a fixture plays each key back.
async fn key_to_tone(rig: &CallRig) {
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
    for i in 0..60 {
        let t0 = Instant::now();
        phone.press(char::from(b'0' + (i % 10) as u8)).unwrap();
        if tokio::task::block_in_place(|| phone.next_audio(LIMIT, 0)).is_some() {
            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        tokio::task::block_in_place(|| phone.listen(Duration::from_millis(40), 0));
    }
    let n = lat.len();
    row(
        "key -> tone (fixture, baseline)",
        34,
        lat,
        &format!("{n}/60 heard"),
    );
    rig.hang_up(&leg);
}

/// Key → the next menu's first frame, 6 calls of 10 presses (the
/// attendant ends a call after 20 menus).
async fn menu_keys(rig: &CallRig) {
    let frames = [first_frame("enter-extension"), first_frame("main-menu")];
    let mut lat = Vec::new();
    for _ in 0..6 {
        let mut phone = Phone::new().unwrap();
        let leg = rig
            .ring(
                "acme",
                "attendant",
                "+447400111000",
                "100",
                b"loop",
                &mut phone,
            )
            .await
            .unwrap();
        // Menu a speaks first.
        let mut at = 0;
        if !tokio::task::block_in_place(|| wait_frame(&phone, &frames[at], LIMIT)) {
            println!("(menu a never spoke)");
            return;
        }
        for _ in 0..10 {
            let t0 = Instant::now();
            phone.press('1').unwrap();
            at = 1 - at;
            if tokio::task::block_in_place(|| wait_frame(&phone, &frames[at], LIMIT)) {
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        rig.hang_up(&leg);
    }
    let n = lat.len();
    row("menu key -> next prompt", 34, lat, &format!("{n}/60 heard"));
}

/// Calls that leave `frames` of speech for Bob and press `#`, all at once;
/// (the time from each `#` to its `voicemail.message`, messages stored).
async fn leave(
    h: &Harness,
    rig: &CallRig,
    bob: &str,
    callers: usize,
    frames: usize,
) -> (Vec<f64>, usize) {
    let mut stream = h.runtime().events().subscribe("acme", bob, None).unwrap();
    let beep = first_frame("beep");
    let mut phones: Vec<Phone> = (0..callers).map(|_| Phone::new().unwrap()).collect();
    let args = format!("divert:800:{bob}");
    let mut legs = Vec::new();
    for p in &mut phones {
        legs.push(
            rig.ring(
                "acme",
                "callflow",
                "+447400222000",
                "100",
                args.as_bytes(),
                p,
            )
            .await
            .unwrap(),
        );
    }
    // Each skips the greeting, waits for the beep and talks.
    for p in &mut phones {
        let _ = tokio::task::block_in_place(|| p.next_audio(LIMIT, 0));
        p.press('1').unwrap();
    }
    for p in &phones {
        tokio::task::block_in_place(|| wait_frame(p, &beep, LIMIT));
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    let level = [g711::linear_to_ulaw(6000); 160];
    for _ in 0..frames {
        for p in &mut phones {
            let _ = p.send_audio(&level);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut pressed = Vec::new();
    for p in &mut phones {
        p.press('#').unwrap();
        pressed.push(Instant::now());
    }
    let t0 = pressed[0];
    let mut lat = Vec::new();
    let end = Instant::now() + LIMIT;
    while lat.len() < callers && Instant::now() < end {
        match tokio::time::timeout(end - Instant::now(), stream.rx.recv()).await {
            Ok(Some(d)) if d.frame.contains("voicemail.message") => {
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    for l in &legs {
        rig.hang_up(l);
    }
    let n = lat.len();
    (lat, n)
}

async fn deposits(h: &Harness, rig: &CallRig, bob: &str) {
    let mut one = Vec::new();
    for _ in 0..20 {
        let (lat, _) = leave(h, rig, bob, 1, 75).await;
        one.extend(lat);
    }
    let n = one.len();
    row(
        "deposit # -> stored, one",
        34,
        one,
        &format!("{n}/20 stored"),
    );
    let (lat, n) = leave(h, rig, bob, 40, 100).await;
    let slowest = lat.iter().copied().fold(0.0, f64::max);
    row(
        "deposit # -> stored, 40 at once",
        34,
        lat,
        &format!("{n}/40 stored"),
    );
    // Every message the 40 left: about 2 s of the level they sent.
    let r = h
        .runtime()
        .handle(
            "acme",
            "voicemail",
            Request::new(Method::Get, "/messages", Principal::user("acme", bob)),
        )
        .await
        .unwrap();
    let all = r.json().unwrap()["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let long = all
        .iter()
        .filter(|m| {
            m["ms"]
                .as_u64()
                .is_some_and(|ms| (1800..=2400).contains(&ms))
        })
        .count();
    println!(
        "(messages stored in all: {}; of about 2 s: {long}; slowest of the 40: {slowest:.0} ms after the first #)",
        all.len()
    );
}
