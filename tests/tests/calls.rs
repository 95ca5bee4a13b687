//! The calls capability end to end, without SIP (issue 20, part 2): a
//! plugin (`callflow`) works legs over the real kernel and call control,
//! with media through the real engine on loopback and the harness's
//! synthetic signalling standing in for SIP. SPEC T1 (dialing policy), T2
//! (legs, bridges, digits), K4 (isolation), K6 (a failing plugin).

use std::time::Duration;

use switchboard::audit::Scope;
use switchboard::call::legs::Cause;
use switchboard::harness::Harness;
use switchboard::harness::calls::{CallRig, Phone, Signal};
use switchboard::tenant::{Dialing, Limits, Restriction};
use switchboard_tests::{harness, ok_json, tenant};

const WAIT: Duration = Duration::from_secs(10);

async fn events(h: &Harness, t: &str, leg: &str) -> Vec<String> {
    let v = ok_json(h.get(t, "callflow", "u", &format!("/events/{leg}")).await);
    serde_json::from_value(v).unwrap()
}

/// Waits until the plugin has logged `want` as the last event of `leg`.
async fn wait_event(h: &Harness, t: &str, leg: &str, want: &str) -> Vec<String> {
    let end = std::time::Instant::now() + WAIT;
    loop {
        let got = events(h, t, leg).await;
        if got.iter().any(|e| e == want) {
            return got;
        }
        assert!(
            std::time::Instant::now() < end,
            "no {want:?} on {leg}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Live legs once call control has had up to 2 s to let them go.
async fn settled(rig: &CallRig) -> usize {
    for _ in 0..200 {
        if rig.live_legs() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.live_legs()
}

fn ended(signals: &[Signal], leg: &str) -> Option<Cause> {
    signals.iter().find_map(|s| match s {
        Signal::Ended(l, c) if l == leg => Some(*c),
        _ => None,
    })
}

/// Rings `tenant`'s callflow (number 100) from `phone` with route
/// arguments `args`, and waits until the plugin answered; the leg.
async fn answered_call(
    rig: &CallRig,
    tenant: &str,
    caller: &str,
    args: &[u8],
    phone: &mut Phone,
) -> String {
    let leg = rig
        .ring(tenant, "callflow", caller, "100", args, phone)
        .await
        .unwrap();
    rig.wait_for(WAIT, |s| s.contains(&Signal::Answered(leg.clone())))
        .await
        .unwrap();
    leg
}

async fn rig(tenants: &[&str]) -> (Harness, CallRig) {
    let h = harness(&["callflow"]).await;
    for t in tenants {
        tenant(&h, t, Limits::default(), &["callflow"]).await;
    }
    let rig = CallRig::start(h.runtime());
    (h, rig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_plugin_answers_collects_dials_and_bridges_in_order() {
    let (h, rig) = rig(&["acme"]).await;
    let mut alice = Phone::new().unwrap();
    let mut bob = Phone::new().unwrap();
    rig.directory("1001", &bob).unwrap();
    let a = answered_call(&rig, "acme", "alice", b"ivr", &mut alice).await;
    // The key tone `1`, µ-law: 100 ms of tone and the gap after it.
    let heard = alice.listen(Duration::from_millis(600), 0);
    assert!(heard.len() >= 5, "{} packets of the key tone", heard.len());
    assert!(
        heard
            .iter()
            .any(|p| p.iter().any(|&b| b != 0xFF && b != 0x7F)),
        "the tone is not silence"
    );
    wait_event(&h, "acme", &a, "played:done").await;
    // Alice keys Bob's extension; the plugin dials it and bridges.
    alice.dial_keys("1001").unwrap();
    let signals = rig
        .wait_for(WAIT, |s| {
            s.iter()
                .any(|x| matches!(x, Signal::Dialled(_, n) if n == "1001"))
        })
        .await
        .unwrap();
    let b = signals
        .iter()
        .find_map(|x| match x {
            Signal::Dialled(l, _) => Some(l.clone()),
            _ => None,
        })
        .unwrap();
    wait_event(&h, "acme", &a, "bridged").await;
    wait_event(&h, "acme", &b, "bridged").await;
    bob.connect(rig.host_media_of(&b).expect("bob's leg has media"));
    // Audio crosses the bridge unchanged, both ways.
    let frames: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i.wrapping_mul(7); 160]).collect();
    for f in &frames {
        alice.send_audio(f).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_bob = bob.listen(Duration::from_millis(300), 0);
    assert_eq!(at_bob, frames, "alice → bob");
    for f in &frames {
        bob.send_audio(f).unwrap();
    }
    let at_alice = alice.listen(Duration::from_millis(300), 0);
    assert_eq!(at_alice, frames, "bob → alice");
    // Bob hangs up; the plugin ends Alice's leg.
    rig.hang_up(&b);
    let signals = rig
        .wait_for(WAIT, |s| ended(s, &a).is_some())
        .await
        .unwrap();
    assert_eq!(ended(&signals, &a), Some(Cause::Normal));
    assert_eq!(
        wait_event(&h, "acme", &a, "ended:normal").await,
        [
            "offered:ivr",
            "played:done",
            "collected:1001:done",
            "bridged",
            "unbridged",
            "ended:normal"
        ]
    );
    assert_eq!(
        wait_event(&h, "acme", &b, "ended:normal").await,
        ["ringing", "answered", "bridged", "ended:normal"]
    );
    // Every leg has left call control; their records name each other.
    assert_eq!(settled(&rig).await, 0, "every leg has left call control");
    let (ra, rb) = (record_of(&h, &a).await, record_of(&h, &b).await);
    assert_eq!(ra.bridged_with.as_deref(), Some(b.as_str()), "{ra:?}");
    assert_eq!(rb.bridged_with.as_deref(), Some(a.as_str()), "{rb:?}");
    assert!(
        ra.csv_row().ends_with(&format!(",{b},")),
        "{}",
        ra.csv_row()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_collect_that_hears_nothing_times_out() {
    let (h, rig) = rig(&["acme"]).await;
    let mut alice = Phone::new().unwrap();
    let a = rig
        .ring("acme", "callflow", "alice", "100", b"ivr", &mut alice)
        .await
        .unwrap();
    // The collect waits 3 s for a first key, then the plugin hangs up.
    let signals = rig
        .wait_for(WAIT, |s| ended(s, &a).is_some())
        .await
        .unwrap();
    assert_eq!(ended(&signals, &a), Some(Cause::Normal));
    assert_eq!(
        wait_event(&h, "acme", &a, "ended:normal").await,
        [
            "offered:ivr",
            "played:done",
            "collected::timeout",
            "ended:normal"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_keys_pressed_during_a_play_barge_in_and_count_as_type_ahead() {
    let (h, rig) = rig(&["acme"]).await;
    let mut alice = Phone::new().unwrap();
    let a = answered_call(&rig, "acme", "alice", b"ivr", &mut alice).await;
    // Once the key tone is heard, `0#`: the key cuts the tone short, and
    // both keys reach the collect, which `#` ends.
    tokio::task::block_in_place(|| alice.next_audio(WAIT, 0)).expect("the key tone");
    alice.dial_keys("0#").unwrap();
    let log = wait_event(&h, "acme", &a, "ended:normal").await;
    assert_eq!(
        log,
        [
            "offered:ivr",
            "played:barged",
            "collected:0:done",
            "ended:normal"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_the_dialing_policy_refuses_toll_numbers_counts_and_audits() {
    let (h, rig) = rig(&["acme"]).await;
    let dial = |n: &'static str| dial_from(&h, "acme", n);
    // Premium rate and international: refused before anything is placed.
    for n in ["%2B19005550100", "011442079460018", "%2B442079460018"] {
        let (status, body) = dial(n).await;
        assert_eq!(status, 403, "{n}: {body}");
        let e = body["error"].as_str().unwrap();
        assert!(e.starts_with("denied: restricted: "), "{n}: {e}");
    }
    assert_eq!(
        h.runtime()
            .telephony()
            .counters
            .restricted
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    let audited = dial_audits(&h, "restricted");
    assert_eq!(audited.len(), 3, "{audited:?}");
    let metrics = switchboard::metrics::render();
    for class in ["premium", "international"] {
        let line =
            format!("switchboard_calls_restricted_total{{tenant=\"acme\",class=\"{class}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
    assert!(audited[0].details.contains("premium"), "{audited:?}");
    // Emergency is always allowed, and a national number by default; with
    // nothing to carry them here, they end `unavailable`.
    for n in ["911", "%2B12025550123"] {
        let (status, body) = dial(n).await;
        assert_eq!(status, 200, "{n}: {body}");
        let leg = body["leg"].as_str().unwrap().to_string();
        let signals = rig.wait_for(WAIT, |s| dialled(s, &leg)).await.unwrap();
        assert!(
            signals
                .iter()
                .any(|s| matches!(s, Signal::Dialled(l, _) if *l == leg)),
            "{signals:?}"
        );
        wait_event(&h, "acme", &leg, "ended:unavailable").await;
    }
    // Look-alikes of emergency numbers are not emergency calls.
    for n in ["9111", "1120"] {
        let (status, body) = dial(n).await;
        // Read as extensions: allowed as internal calls, never as 911/112.
        assert_eq!(status, 200, "{n}: {body}");
        let leg = body["leg"].as_str().unwrap().to_string();
        let signals = rig
            .wait_for(WAIT, |s| {
                s.iter()
                    .any(|x| matches!(x, Signal::Dialled(l, _) if *l == leg))
            })
            .await
            .unwrap();
        let number = signals
            .iter()
            .find_map(|x| match x {
                Signal::Dialled(l, num) if *l == leg => Some(num.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(number, n, "dialled as typed, as an extension");
    }
}

/// acme's audit entries of dials with `outcome`.
fn dial_audits(h: &Harness, outcome: &str) -> Vec<switchboard::audit::Entry> {
    h.runtime()
        .audit_log()
        .entries(&Scope::tenant("acme"), 0, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "call.dial" && e.outcome == outcome)
        .collect()
}

/// The callflow plugin of `tenant` dials `number` (URL-encoded) from an
/// HTTP request: (status, body).
async fn dial_from(h: &Harness, tenant: &str, number: &str) -> (u16, serde_json::Value) {
    let r = h
        .post(tenant, "callflow", "u", &format!("/dial/{number}"), b"")
        .await
        .unwrap();
    (r.status, r.json().unwrap())
}

fn dialled(s: &[Signal], leg: &str) -> bool {
    s.iter()
        .any(|x| matches!(x, Signal::Dialled(l, _) if l == leg))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_a_leg_is_invisible_to_other_tenants_exactly_as_an_unknown_one() {
    let (h, rig) = rig(&["acme", "globex"]).await;
    let mut alice = Phone::new().unwrap();
    let a = answered_call(&rig, "acme", "alice", b"answer", &mut alice).await;
    let poke = |t: &'static str, leg: String| {
        let h = &h;
        async move {
            ok_json(
                h.post(t, "callflow", "u", &format!("/poke/{leg}"), b"")
                    .await,
            )
        }
    };
    // Another tenant's plugin of the same name: not-found for everything,
    // the same answers as for an id that never existed.
    let stolen = poke("globex", a.clone()).await;
    let unknown_id = "0123456789abcdef0123456789abcdef".to_string();
    let unknown = poke("globex", unknown_id.clone()).await;
    for op in ["get", "answer", "hangup", "state", "play"] {
        let s = stolen[op].as_str().unwrap().replace(&a, "ID");
        let u = unknown[op].as_str().unwrap().replace(&unknown_id, "ID");
        assert!(s.starts_with("not-found"), "{op}: {s}");
        assert_eq!(s, u, "{op}");
    }
    // Malformed ids are not-found too, never a parse error that differs.
    let odd = poke("globex", "..%2F..%2Fx".into()).await;
    assert!(
        odd["get"].as_str().unwrap().starts_with("not-found"),
        "{odd}"
    );
    // Nothing happened to the leg.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ended(&rig.signals(), &a), None);
    assert_eq!(events(&h, "acme", &a).await, ["offered:answer"]);
    // The owner reaches it: `answer` is a no-op (it is answered already:
    // a leg handed over answered takes it so), the rest are accepted,
    // and its hangup ends the leg.
    let own = poke("acme", a.clone()).await;
    assert_eq!(own["get"], "ok", "{own}");
    assert_eq!(own["answer"], "ok", "{own}");
    assert_eq!(own["hangup"], "ok", "{own}");
    let signals = rig
        .wait_for(WAIT, |s| ended(s, &a).is_some())
        .await
        .unwrap();
    assert_eq!(ended(&signals, &a), Some(Cause::Normal));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_a_plugin_that_traps_on_its_calls_gets_the_fallback() {
    let (h, rig) = rig(&["acme"]).await;
    let mut alice = Phone::new().unwrap();
    let a = rig
        .ring("acme", "callflow", "alice", "100", b"trap", &mut alice)
        .await
        .unwrap();
    let signals = rig
        .wait_for(WAIT, |s| ended(s, &a).is_some())
        .await
        .unwrap();
    assert_eq!(ended(&signals, &a), Some(Cause::Failed));
    assert!(!signals.contains(&Signal::Answered(a.clone())));
    // The trapping calls kept nothing.
    assert!(events(&h, "acme", &a).await.is_empty());
    assert_eq!(
        h.runtime()
            .telephony()
            .counters
            .legs_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let metrics = switchboard::metrics::render();
    assert!(
        metrics
            .contains("switchboard_call_legs_failed_total{tenant=\"acme\",plugin=\"callflow\"} 1"),
        "{metrics}"
    );
    assert_eq!(settled(&rig).await, 0, "every leg has left call control");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_a_tenants_own_plan_and_rules_apply_to_its_dials() {
    let (h, rig) = rig(&["acme"]).await;
    let gb = Dialing {
        region: Some("GB".into()),
        outside_line: Some("9".into()),
        extension_digits: [3, 4],
        classes: None,
        allow: Vec::new(),
        deny: vec!["+447911*".into()],
        ..Dialing::default()
    };
    h.runtime().set_dialing("acme", gb.clone()).await.unwrap();
    // A policy that does not read is refused and changes nothing.
    let bad = Dialing {
        region: Some("XX".into()),
        ..gb.clone()
    };
    let e = h.runtime().set_dialing("acme", bad).await.unwrap_err();
    assert_eq!(e.code(), "invalid_dialing", "{e}");
    let shown = h.runtime().dialing("acme").unwrap();
    assert_eq!(shown["effective"]["region"], "GB", "{shown}");
    let dial = |n: &'static str| dial_from(&h, "acme", n);
    // A London number behind the outside line: dialled as E.164.
    let (status, body) = dial("902079460018").await;
    assert_eq!(status, 200, "{body}");
    let leg = body["leg"].as_str().unwrap().to_string();
    let signals = rig.wait_for(WAIT, |s| dialled(s, &leg)).await.unwrap();
    assert!(
        signals.contains(&Signal::Dialled(leg.clone(), "+442079460018".into())),
        "{signals:?}"
    );
    // The tenant's deny list wins over the mobile class it allows.
    let (status, body) = dial("907911123456").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("deny list"),
        "{body}"
    );
    // 999 behind the outside line is the emergency number, dialled as
    // such; 9111 is not an emergency call whatever it becomes.
    for (n, emergency) in [("9999", true), ("9111", false)] {
        let (status, body) = dial(n).await;
        if !emergency && status != 200 {
            continue;
        }
        assert_eq!(status, 200, "{n}: {body}");
        let leg = body["leg"].as_str().unwrap().to_string();
        let signals = rig.wait_for(WAIT, |s| dialled(s, &leg)).await.unwrap();
        let number = signals
            .iter()
            .find_map(|x| match x {
                Signal::Dialled(l, num) if *l == leg => Some(num.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(number == "999", emergency, "{n} became {number}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_room_mixes_its_members_and_rooms_are_the_tenants_own() {
    let (h, rig) = rig(&["acme", "globex"]).await;
    let mut phones = Vec::new();
    let mut legs = Vec::new();
    for (tenant, caller) in [("acme", "a"), ("acme", "b"), ("acme", "c"), ("globex", "g")] {
        let mut phone = Phone::new().unwrap();
        let leg = rig
            .ring(tenant, "callflow", caller, "800", b"room:r1", &mut phone)
            .await
            .unwrap();
        wait_event(&h, tenant, &leg, "joined:r1").await;
        phones.push(phone);
        legs.push(leg);
    }
    // a says 1000 and b says 3000, in µ-law, for half a second.
    let loud = |v: i16| vec![switchboard::media::g711::linear_to_ulaw(v); 160];
    for _ in 0..25 {
        phones[0].send_audio(&loud(1000)).unwrap();
        phones[1].send_audio(&loud(3000)).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let level = |p: &Phone| {
        let mut peaks: Vec<i16> = p
            .listen(Duration::from_millis(200), 0)
            .iter()
            .map(|f| {
                f.iter()
                    .map(|c| switchboard::media::g711::ulaw_to_linear(*c))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        peaks.sort_unstable();
        peaks.last().copied().unwrap_or(0)
    };
    let (c, g) = (level(&phones[2]), level(&phones[3]));
    assert!((c - 4000).abs() <= 250, "c hears a and b: {c}");
    assert!(g.abs() <= 16, "globex's room r1 is another room: {g}");
    // A member who hangs up leaves; the others stay.
    rig.hang_up(&legs[2]);
    wait_event(&h, "acme", &legs[2], "ended:normal").await;
    let log = events(&h, "acme", &legs[0]).await;
    assert_eq!(log, ["offered:room:r1", "joined:r1"]);
    assert_eq!(
        h.runtime()
            .telephony()
            .room_members("acme", "callflow", "r1"),
        2
    );
    // The records of one meeting of the room name it alike; the room met
    // again once it emptied, and another tenant's room of the same name,
    // are other meetings.
    rig.hang_up(&legs[0]);
    rig.hang_up(&legs[1]);
    let mut met = Vec::new();
    for leg in &legs[..3] {
        met.push(record_of(&h, leg).await.room.expect("a room in the record"));
    }
    assert!(met[0].starts_with("r1~") && met[0].len() > 3, "{met:?}");
    assert!(met.iter().all(|m| *m == met[0]), "{met:?}");
    let mut phone = Phone::new().unwrap();
    let again = rig
        .ring("acme", "callflow", "d", "800", b"room:r1", &mut phone)
        .await
        .unwrap();
    wait_event(&h, "acme", &again, "joined:r1").await;
    rig.hang_up(&again);
    let later = record_of(&h, &again).await.room.unwrap();
    assert!(
        later.starts_with("r1~") && later != met[0],
        "{later} {met:?}"
    );
    rig.hang_up(&legs[3]);
    let theirs = loop {
        let page = h
            .runtime()
            .call_records("globex", 0, u64::MAX, None, 100)
            .unwrap();
        if let Some(r) = page.records.into_iter().find(|r| r.leg == legs[3]) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let theirs = theirs.room.unwrap();
    assert!(theirs.starts_with("r1~") && theirs != met[0], "{theirs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_a_user_without_the_conference_class_of_service_stays_out_of_rooms() {
    let (h, rig) = rig(&["acme"]).await;
    let dialing = Dialing {
        restrictions: [(
            "solo".to_string(),
            Restriction {
                classes: vec!["internal".into()],
                forward_external: false,
                transfer_external: false,
                callback_external: false,
                conference: false,
            },
        )]
        .into(),
        users: [("u-solo".to_string(), "solo".to_string())].into(),
        ..Dialing::default()
    };
    h.runtime().set_dialing("acme", dialing).await.unwrap();
    // Another user's phone joins; u-solo's is denied (the invocation
    // fails, so the leg gets its fallback and ends).
    let mut other = Phone::new().unwrap();
    let a = rig
        .ring_from(
            Some("u-ann"),
            "acme",
            "callflow",
            "ann-desk",
            "800",
            b"room:r1",
            &mut other,
        )
        .await
        .unwrap();
    wait_event(&h, "acme", &a, "joined:r1").await;
    let mut solo = Phone::new().unwrap();
    let s = rig
        .ring_from(
            Some("u-solo"),
            "acme",
            "callflow",
            "solo-desk",
            "800",
            b"room:r1",
            &mut solo,
        )
        .await
        .unwrap();
    rig.wait_for(WAIT, |sig| {
        sig.iter()
            .any(|x| matches!(x, Signal::Ended(l, _) if *l == s))
    })
    .await
    .unwrap();
    assert!(
        !events(&h, "acme", &s)
            .await
            .iter()
            .any(|e| e == "joined:r1")
    );
    assert_eq!(
        h.runtime()
            .telephony()
            .room_members("acme", "callflow", "r1"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_library_prompt_arrives_byte_for_byte() {
    let (h, rig) = rig(&["acme"]).await;
    let mut alice = Phone::new().unwrap();
    let a = rig
        .ring(
            "acme",
            "callflow",
            "alice",
            "100",
            b"prompt:goodbye",
            &mut alice,
        )
        .await
        .unwrap();
    let clip = switchboard::media::prompts::get("goodbye").unwrap();
    let frames = clip.len() / 160;
    let mut heard = Vec::new();
    for _ in 0..frames {
        let f = tokio::task::block_in_place(|| alice.next_audio(WAIT, 0)).expect("a frame");
        heard.extend(f);
    }
    assert_eq!(heard, clip, "the µ-law clip, frame by frame");
    wait_event(&h, "acme", &a, "played:done").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_every_leg_leaves_a_call_record_for_its_tenant_only() {
    let (h, rig) = rig(&["acme", "globex"]).await;
    let mut alice = Phone::new().unwrap();
    let a = answered_call(&rig, "acme", "alice", b"answer", &mut alice).await;
    for _ in 0..10 {
        alice.send_audio(&[0x55; 160]).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    rig.hang_up(&a);
    wait_event(&h, "acme", &a, "ended:normal").await;
    let rt = h.runtime();
    let mut page = rt.call_records("acme", 0, u64::MAX, None, 10).unwrap();
    for _ in 0..200 {
        if !page.records.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        page = rt.call_records("acme", 0, u64::MAX, None, 10).unwrap();
    }
    assert_eq!(page.records.len(), 1, "{page:?}");
    let r = &page.records[0];
    assert_eq!(
        (r.leg.as_str(), r.direction.as_str(), r.cause.as_str()),
        (a.as_str(), "inbound", "normal")
    );
    assert_eq!((r.caller.as_str(), r.callee.as_str()), ("alice", "100"));
    assert_eq!((r.codec.as_str(), r.secure), ("pcmu", false));
    assert!(r.answered_ms.is_some() && r.talk_ms >= 100, "{r:?}");
    let m = r.media.as_ref().expect("media figures");
    assert_eq!(m.received_packets, 10, "{m:?}");
    // Bytes too: 10 packets of 20 ms of G.711 in; what the host sent.
    assert_eq!(m.received_bytes, 10 * 160, "{m:?}");
    assert_eq!(m.sent_bytes, u64::from(m.sent_packets) * 160, "{m:?}");
    assert!(
        r.csv_row()
            .starts_with(&format!("{a},callflow,inbound,alice,100,"))
    );
    // Another tenant has none, and time bounds hold.
    assert!(
        rt.call_records("globex", 0, u64::MAX, None, 10)
            .unwrap()
            .records
            .is_empty()
    );
    assert!(
        rt.call_records("acme", r.ended_ms + 1, u64::MAX, None, 10)
            .unwrap()
            .records
            .is_empty()
    );
    // What an operator may see: counts, no numbers.
    let counts = rt.call_counts("acme", 0, u64::MAX).unwrap();
    assert_eq!(counts["days"][0]["legs"], 1, "{counts}");
    assert_eq!(counts["days"][0]["answered"], 1, "{counts}");
    assert!(!counts.to_string().contains("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_a_cap_on_concurrent_outbound_calls_spares_emergency_calls() {
    let (h, rig) = rig(&["acme"]).await;
    let capped = Dialing {
        max_outbound_calls: Some(1),
        ..Dialing::default()
    };
    h.runtime().set_dialing("acme", capped).await.unwrap();
    let bob = Phone::new().unwrap();
    rig.directory("+12025550123", &bob).unwrap();
    let dial = |n: &'static str| dial_from(&h, "acme", n);
    let (status, body) = dial("%2B12025550123").await;
    assert_eq!(status, 200, "{body}");
    let first = body["leg"].as_str().unwrap().to_string();
    wait_event(&h, "acme", &first, "answered").await;
    // The second at once is refused, audited and counted.
    let (status, body) = dial("%2B12025550124").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("concurrent outbound"),
        "{body}"
    );
    assert_eq!(dial_audits(&h, "over_cap").len(), 1);
    // An emergency call is never refused for the cap.
    let (status, body) = dial("911").await;
    assert_eq!(status, 200, "{body}");
    // Once the first call ends, the next one may go.
    rig.hang_up(&first);
    wait_event(&h, "acme", &first, "ended:normal").await;
    let (status, body) = dial("%2B12025550124").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_classes_of_restriction_and_service_per_user_and_a_daily_minutes_cap() {
    let (h, _rig) = rig(&["acme"]).await;
    let restriction = |classes: &[&str], forward_external: bool| Restriction {
        classes: classes.iter().map(|c| c.to_string()).collect(),
        forward_external,
        transfer_external: forward_external,
        callback_external: false,
        conference: true,
    };
    let outside = ["internal", "national", "mobile", "toll-free"];
    let mut dialing = Dialing {
        region: Some("GB".into()),
        restrictions: [
            ("lobby".to_string(), restriction(&["internal"], false)),
            ("staff".to_string(), restriction(&outside, false)),
            ("exec".to_string(), restriction(&outside, true)),
        ]
        .into(),
        users: [
            ("u-staff".to_string(), "staff".to_string()),
            ("u-exec".to_string(), "exec".to_string()),
        ]
        .into(),
        default_restriction: Some("lobby".into()),
        ..Dialing::default()
    };
    // A user holding a restriction that does not exist, or a restriction
    // with an unknown class: refused, nothing changes.
    for bad in [
        Dialing {
            users: [("u-x".to_string(), "vip".to_string())].into(),
            ..dialing.clone()
        },
        Dialing {
            restrictions: [("odd".to_string(), restriction(&["lunar"], true))].into(),
            ..Dialing::default()
        },
        Dialing {
            max_outbound_minutes_per_day: Some(0),
            ..Dialing::default()
        },
    ] {
        let e = h.runtime().set_dialing("acme", bad).await.unwrap_err();
        assert_eq!(e.code(), "invalid_dialing", "{e}");
    }
    h.runtime()
        .set_dialing("acme", dialing.clone())
        .await
        .unwrap();
    let shown = h.runtime().dialing("acme").unwrap();
    assert_eq!(shown["effective"]["users"]["u-staff"], "staff", "{shown}");
    let dial_as = |user: &'static str, purpose: &'static str, number: &'static str| {
        let h = &h;
        async move {
            let r = h
                .post(
                    "acme",
                    "callflow",
                    "u",
                    &format!("/dial-as/{user}/{purpose}/{number}"),
                    b"",
                )
                .await
                .unwrap();
            (r.status, r.json().unwrap())
        }
    };
    let london = "02079460018";
    // The default restriction (lobby: internal only) for a user without
    // one and for a call placed for no user; staff may call out.
    for (user, status) in [("u-nobody", 403), ("u-staff", 200), ("u-exec", 200)] {
        let (got, body) = dial_as(user, "call", london).await;
        assert_eq!(got, status, "{user}: {body}");
    }
    let (status, body) = dial_from(&h, "acme", london).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not allowed for this caller"),
        "{body}"
    );
    // Class of service: staff may call out but not forward out; exec may.
    let (status, body) = dial_as("u-staff", "forward", london).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("forwarding"),
        "{body}"
    );
    let (status, body) = dial_as("u-exec", "forward", london).await;
    assert_eq!(status, 200, "{body}");
    // Emergency numbers whatever the restriction.
    let (status, body) = dial_as("u-nobody", "call", "999").await;
    assert_eq!(status, 200, "{body}");
    // A restriction only narrows: exec holds no international class, and
    // the tenant's classes do not open it either.
    let (status, _) = dial_as("u-exec", "call", "%2B12025550123").await;
    assert_eq!(status, 403);

    // Minutes a day: a record of today's 61 minutes out (as a restart
    // finds them in the store) uses up a 60-minute cap.
    let now = switchboard::support::clock::now_ms();
    let record = serde_json::json!({
        "leg": "earlier", "plugin": "callflow", "direction": "outbound",
        "caller": "", "callee": "+442079460011", "started_ms": now - 3_700_000,
        "answered_ms": now - 3_660_000, "ended_ms": now - 1000, "talk_ms": 3_659_000,
        "cause": "normal", "codec": "pcmu", "secure": false, "media": null,
    });
    let key = switchboard::store::keys::call_record("acme", now - 1000, "earlier");
    let seq = h
        .runtime()
        .data_store()
        .apply(&[(key, Some(serde_json::to_vec(&record).unwrap()))])
        .unwrap();
    h.runtime().data_store().durable(seq).await.unwrap();
    dialing.max_outbound_minutes_per_day = Some(60);
    h.runtime().set_dialing("acme", dialing).await.unwrap();
    let (status, body) = dial_as("u-staff", "call", london).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("minutes"),
        "{body}"
    );
    assert_eq!(dial_audits(&h, "over_minutes").len(), 1);
    // Calls inside the tenant and emergency calls still go.
    let (status, body) = dial_as("u-staff", "call", "999").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_a_phones_own_restriction_narrows_its_users_for_dials_and_rooms() {
    let (h, rig) = rig(&["acme", "globex"]).await;
    let london = Phone::new().unwrap();
    rig.directory("+442079460018", &london).unwrap();
    let restriction = |classes: &[&str], external: bool, conference: bool| Restriction {
        classes: classes.iter().map(|c| c.to_string()).collect(),
        forward_external: external,
        transfer_external: external,
        callback_external: external,
        conference,
    };
    let outside = ["internal", "national", "mobile", "toll-free"];
    let dialing = Dialing {
        region: Some("GB".into()),
        restrictions: [
            ("staff".to_string(), restriction(&outside, true, true)),
            (
                "lobby".to_string(),
                restriction(&["internal", "mobile"], false, true),
            ),
            ("hall".to_string(), restriction(&outside, true, false)),
            ("guest".to_string(), restriction(&outside, false, false)),
        ]
        .into(),
        users: [("u-staff".to_string(), "staff".to_string())].into(),
        default_restriction: Some("guest".into()),
        devices: [
            ("lobby-phone".to_string(), "lobby".to_string()),
            ("hall-phone".to_string(), "hall".to_string()),
        ]
        .into(),
        ..Dialing::default()
    };
    // A device holding an unknown restriction, or a name no device can
    // have: refused, nothing changes.
    for (device, name) in [("desk-9", "vip"), ("Desk 9", "lobby")] {
        let mut bad = dialing.clone();
        bad.devices.insert(device.into(), name.into());
        let e = h.runtime().set_dialing("acme", bad).await.unwrap_err();
        assert_eq!(e.code(), "invalid_dialing", "{e}");
    }
    h.runtime().set_dialing("acme", dialing).await.unwrap();
    let shown = h.runtime().dialing("acme").unwrap();
    assert_eq!(
        shown["effective"]["devices"]["lobby-phone"], "lobby",
        "{shown}"
    );
    // The same user calls from three phones.
    let mut phones = [
        Phone::new().unwrap(),
        Phone::new().unwrap(),
        Phone::new().unwrap(),
    ];
    let mut legs = Vec::new();
    for (device, phone) in ["staff-desk", "lobby-phone", "hall-phone"]
        .into_iter()
        .zip(phones.iter_mut())
    {
        let leg = rig
            .ring_from(
                Some("u-staff"),
                "acme",
                "callflow",
                device,
                "800",
                b"answer",
                phone,
            )
            .await
            .unwrap();
        // Answered by call control, not only asked for by the plugin: a
        // join issued before the answer applies finds the leg offered.
        rig.wait_for(WAIT, |s| s.contains(&Signal::Answered(leg.clone())))
            .await
            .unwrap();
        legs.push(leg);
    }
    let [desk, lobby, hall] = [&legs[0], &legs[1], &legs[2]];
    let post = |path: String| {
        let h = &h;
        async move {
            let r = h.post("acme", "callflow", "u", &path, b"").await.unwrap();
            (r.status, r.json().unwrap())
        }
    };
    // A refusal's error says why (`needle`); an allowed dial names its leg.
    let refused = |path: String, needle: &'static str| {
        let post = &post;
        async move {
            let (status, body) = post(path).await;
            assert_eq!(status, 403, "{body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(needle), "{needle}: {body}");
        }
    };
    let allowed = |path: String| {
        let post = &post;
        async move {
            let (status, body) = post(path).await;
            assert_eq!(status, 200, "{body}");
            body["leg"].as_str().unwrap_or_default().to_string()
        }
    };
    // From the desk the user's restriction allows London; from the
    // lobby phone the device's narrows it to internal and mobile numbers.
    allowed(format!("/dial-for/{desk}/call/02079460018")).await;
    refused(
        format!("/dial-for/{lobby}/call/02079460018"),
        "not allowed for this caller",
    )
    .await;
    // The refusal is audited like any other.
    assert!(!dial_audits(&h, "restricted").is_empty());
    // Services narrow too: forwarding out from the lobby phone is refused.
    refused(
        format!("/dial-for/{lobby}/forward/07400123456"),
        "forwarding",
    )
    .await;
    // Emergency numbers from any phone.
    allowed(format!("/dial-for/{lobby}/call/999")).await;
    // The leg names its user: a plugin cannot claim another one for it.
    refused(
        format!("/dial-for/{lobby}/call/02079460018?as=u-exec"),
        "invalid-argument",
    )
    .await;
    // A leg that is not the plugin's tenant's is not found, exactly as an
    // unknown one.
    let mut other = Phone::new().unwrap();
    let theirs = rig
        .ring_from(
            Some("u-g"),
            "globex",
            "callflow",
            "g-desk",
            "800",
            b"answer",
            &mut other,
        )
        .await
        .unwrap();
    wait_event(&h, "globex", &theirs, "offered:answer").await;
    for leg in [theirs.as_str(), "0123456789abcdef0123456789abcdef"] {
        refused(format!("/dial-for/{leg}/call/02079460018"), "not-found").await;
        // An emergency call is never stopped by the plugin's mistake.
        allowed(format!("/dial-for/{leg}/call/999")).await;
    }
    // Rooms: the hall phone's class of service has no conference, for
    // its own leg and for a call placed for it; the desk's does.
    refused(format!("/join/{hall}/r1"), "no conference").await;
    allowed(format!("/join/{desk}/r1")).await;
    let placed = allowed(format!("/dial-for/{hall}/call/02079460018")).await;
    wait_event(&h, "acme", &placed, "answered").await;
    refused(format!("/join/{placed}/r1"), "no conference").await;
    // The default restriction (no conference) holds for a leg placed for
    // no one, never for a user holding their own (the desk, above) nor
    // for a caller from outside (no phone of the tenant).
    let for_no_one = allowed("/dial/02079460018".to_string()).await;
    wait_event(&h, "acme", &for_no_one, "answered").await;
    refused(format!("/join/{for_no_one}/r1"), "no conference").await;
    let for_desk = allowed(format!("/dial-for/{desk}/call/02079460018")).await;
    wait_event(&h, "acme", &for_desk, "answered").await;
    allowed(format!("/join/{for_desk}/r1")).await;
    wait_event(&h, "acme", &for_desk, "joined:r1").await;
    let mut outside = Phone::new().unwrap();
    let caller = rig
        .ring(
            "acme",
            "callflow",
            "+447400123456",
            "800",
            b"answer",
            &mut outside,
        )
        .await
        .unwrap();
    wait_event(&h, "acme", &caller, "offered:answer").await;
    allowed(format!("/join/{caller}/r1")).await;
    wait_event(&h, "acme", &caller, "joined:r1").await;
    assert_eq!(
        h.runtime()
            .telephony()
            .room_members("acme", "callflow", "r1"),
        3
    );
    // The call records name the user the calls were placed for.
    rig.hang_up(&placed);
    let record = record_of(&h, &placed).await;
    assert_eq!(record.user.as_deref(), Some("u-staff"));
}

/// Waits for the call record of `leg` (written as it ends).
async fn record_of(h: &Harness, leg: &str) -> switchboard::telephony::records::CallRecord {
    for _ in 0..500 {
        let page = h
            .runtime()
            .call_records("acme", 0, u64::MAX, None, 100)
            .unwrap();
        if let Some(r) = page.records.into_iter().find(|r| r.leg == leg) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no record of {leg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_account_codes_are_checked_required_for_their_classes_and_recorded() {
    let (h, rig) = rig(&["acme"]).await;
    let mobile_phone = Phone::new().unwrap();
    rig.directory("+447400123456", &mobile_phone).unwrap();
    let dialing = Dialing {
        region: Some("GB".into()),
        account_codes: vec!["4711".into(), "20261207".into()],
        account_code_classes: vec!["mobile".into()],
        restrictions: [(
            "desk".to_string(),
            Restriction {
                classes: vec!["internal".into(), "national".into(), "mobile".into()],
                forward_external: true,
                transfer_external: false,
                callback_external: false,
                conference: true,
            },
        )]
        .into(),
        default_restriction: Some("desk".into()),
        ..Dialing::default()
    };
    // Malformed codes, duplicates, classes without codes: refused whole.
    for bad in [
        Dialing {
            account_codes: vec!["1".into()],
            ..dialing.clone()
        },
        Dialing {
            account_codes: vec!["12ab".into()],
            ..dialing.clone()
        },
        Dialing {
            account_codes: vec!["4711".into(), "4711".into()],
            ..dialing.clone()
        },
        Dialing {
            account_codes: Vec::new(),
            ..dialing.clone()
        },
        Dialing {
            account_code_classes: vec!["emergency".into()],
            ..dialing.clone()
        },
    ] {
        let e = h.runtime().set_dialing("acme", bad).await.unwrap_err();
        assert_eq!(e.code(), "invalid_dialing", "{e}");
    }
    h.runtime().set_dialing("acme", dialing).await.unwrap();
    let post = |path: String| {
        let h = &h;
        async move {
            let r = h.post("acme", "callflow", "u", &path, b"").await.unwrap();
            (r.status, r.json().unwrap())
        }
    };
    let error = |body: &serde_json::Value| body["error"].as_str().unwrap_or_default().to_string();
    // A mobile number needs a code; one not on the list is refused.
    let (status, body) = post("/dial/07400123456".into()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        error(&body).contains("restricted: account code required for mobile numbers"),
        "{body}"
    );
    let (status, body) = post("/dial-code/4712/07400123456".into()).await;
    assert_eq!(status, 403, "{body}");
    assert!(error(&body).contains("account code unknown"), "{body}");
    // A code that is not 2-16 digits never reaches the policy.
    let (status, body) = post("/dial-code/12ab/07400123456".into()).await;
    assert_eq!(status, 403, "{body}");
    assert!(error(&body).contains("invalid-argument"), "{body}");
    // Both refusals audited, with the reason.
    let refused = dial_audits(&h, "restricted");
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused.iter().all(|e| e.details.contains("account code")),
        "{refused:?}"
    );
    // Not needed for a national number, and a listed code goes anywhere.
    let (status, body) = post("/dial/02079460018".into()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post("/dial-code/4711/07400123456".into()).await;
    assert_eq!(status, 200, "{body}");
    let leg = body["leg"].as_str().unwrap().to_string();
    rig.wait_for(WAIT, |s| dialled(s, &leg)).await.unwrap();
    for _ in 0..200 {
        if rig.host_media_of(&leg).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rig.hang_up(&leg);
    let r = record_of(&h, &leg).await;
    assert_eq!(r.account_code.as_deref(), Some("4711"), "{r:?}");
    assert_eq!(r.callee, "+447400123456");
    // The code is the 18th of the 25 columns (after it: user, bytes sent
    // and received, the peer's RTCP loss and jitter, the partner and the
    // room).
    let row = r.csv_row();
    let cells: Vec<&str> = row.split(',').collect();
    assert_eq!(cells.len(), 25, "{row}");
    assert_eq!(cells[17], "4711", "{row}");
    // Emergency calls need no code, and a malformed one does not stop
    // them.
    let (status, body) = post("/dial/999".into()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post("/dial-code/x/999".into()).await;
    assert_eq!(status, 200, "{body}");
    // A transfer out needs transfer_external (desk has forward, not it).
    let (status, body) = post("/dial-as/u-desk/transfer/02079460018".into()).await;
    assert_eq!(status, 403, "{body}");
    assert!(error(&body).contains("transferring"), "{body}");
    let (status, body) = post("/dial-as/u-desk/forward/02079460018".into()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_transfer_request_reaches_the_plugin_once_and_is_settled_or_declined() {
    let (h, rig) = rig(&["acme"]).await;
    let mut alice = Phone::new().unwrap();
    let a = rig
        .ring_from(
            Some("u-alice"),
            "acme",
            "callflow",
            "alice-desk",
            "100",
            b"answer",
            &mut alice,
        )
        .await
        .unwrap();
    rig.wait_for(WAIT, |s| s.contains(&Signal::Answered(a.clone())))
        .await
        .unwrap();
    // Hold and resume reach the plugin as events; a repeat is no news.
    rig.hold(&a, true);
    rig.hold(&a, true);
    wait_event(&h, "acme", &a, "held").await;
    rig.hold(&a, false);
    let got = wait_event(&h, "acme", &a, "resumed").await;
    assert_eq!(got.iter().filter(|e| *e == "held").count(), 1, "{got:?}");
    // A transfer the plugin declines (callflow declines 9…): the phone
    // hears `restricted`, the call goes on; a second request is taken.
    rig.transfer(&a, "902079460018").await.unwrap();
    rig.wait_for(WAIT, |s| {
        s.contains(&Signal::TransferFailed(a.clone(), Cause::Restricted))
    })
    .await
    .unwrap();
    wait_event(&h, "acme", &a, "transfer:902079460018").await;
    rig.transfer(&a, "201").await.unwrap();
    // The plugin takes this one: it ends the leg (SIP tells the phone
    // 200 OK, then BYE).
    let got = wait_event(&h, "acme", &a, "ended:normal").await;
    assert!(got.contains(&"transfer:201".to_string()), "{got:?}");
    assert_eq!(ended(&rig.signals(), &a), Some(Cause::Normal));
    // On an ended (or unknown) leg there is nothing to transfer.
    assert!(rig.transfer(&a, "201").await.is_err());
    assert!(
        rig.transfer("0123456789abcdef0123456789abcdef", "201")
            .await
            .is_err()
    );
    assert_eq!(settled(&rig).await, 0);
}

/// The recording `recorded:{end}:{blob}:{ms}` event of leg `leg`, once
/// the plugin logged it: (end, blob, ms).
async fn recorded(h: &Harness, tenant: &str, leg: &str) -> (String, String, u64) {
    let end = std::time::Instant::now() + WAIT;
    loop {
        let got = events(h, tenant, leg).await;
        if let Some(r) = got.iter().find_map(|e| e.strip_prefix("recorded:")) {
            let mut parts = r.split(':');
            let (e, b, ms) = (parts.next(), parts.next(), parts.next());
            return (
                e.unwrap_or_default().to_string(),
                b.unwrap_or_default().to_string(),
                ms.and_then(|m| m.parse().ok()).unwrap_or(0),
            );
        }
        assert!(
            std::time::Instant::now() < end,
            "no recorded on {leg}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WAV blob's PCM samples (after the 44-byte header, which must say
/// 8 kHz 16-bit mono and the right length).
fn wav_samples(bytes: &[u8]) -> Vec<i16> {
    assert!(bytes.len() >= 44, "{} bytes", bytes.len());
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..16], b"WAVEfmt ");
    assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 8000);
    assert_eq!(u16::from_le_bytes(bytes[34..36].try_into().unwrap()), 16);
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
    assert_eq!(
        data,
        bytes.len() - 44,
        "the header names the data that follows"
    );
    bytes[44..]
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// Sends `frames` 20 ms frames of one µ-law code, paced in real time.
async fn talk(phone: &mut Phone, code: u8, frames: usize) {
    for _ in 0..frames {
        phone.send_audio(&[code; 160]).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_a_recording_lands_in_a_blob_and_keeps_nothing_said_while_paused() {
    use switchboard::media::g711;
    let (h, rig) = rig(&["acme", "globex"]).await;
    let mut alice = Phone::new().unwrap();
    let a = answered_call(&rig, "acme", "alice", b"record", &mut alice).await;
    let post = |path: String| {
        let h = &h;
        async move {
            let r = h.post("acme", "callflow", "u", &path, b"").await.unwrap();
            (r.status, r.json().unwrap_or_default())
        }
    };
    // Said before the pause, during it (a card number), after it.
    let (before, secret, after) = (
        g711::linear_to_ulaw(3000),
        g711::linear_to_ulaw(-7000),
        g711::linear_to_ulaw(5000),
    );
    talk(&mut alice, before, 40).await;
    let (status, body) = post(format!("/pause/{a}")).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    talk(&mut alice, secret, 40).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = post(format!("/resume/{a}")).await;
    assert_eq!(status, 200, "{body}");
    talk(&mut alice, after, 40).await;
    // `#` ends it (done); the call goes on.
    alice.press('#').unwrap();
    let (end, blob, ms) = recorded(&h, "acme", &a).await;
    assert_eq!(end, "done");
    assert_eq!(blob.len(), 32, "{blob}");
    // About 1.6 s kept of ~2.4 s of talk (the paused stretch is not in
    // it); the pauses' edges and pacing make it approximate.
    assert!((1000..=2400).contains(&ms), "{ms} ms kept");
    let r = h
        .get("acme", "callflow", "u", &format!("/blob/{blob}"))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let pcm = wav_samples(&r.body);
    assert_eq!(pcm.len() as u64, ms * 8, "the blob holds what was kept");
    let count = |code: u8| {
        let v = g711::ulaw_to_linear(code);
        pcm.iter().filter(|s| **s == v).count()
    };
    assert!(
        count(before) >= 160 * 20,
        "before the pause: {}",
        count(before)
    );
    assert!(count(after) >= 160 * 20, "after it: {}", count(after));
    assert_eq!(count(secret), 0, "nothing said while paused is kept");
    // The leg is still up; pausing a finished recording finds nothing.
    assert!(rig.live_legs() >= 1);
    let (status, body) = post(format!("/pause/{a}")).await;
    assert_eq!(status, 409, "{body}");
    // The blob is acme's callflow's: globex's callflow cannot read it.
    let other = h
        .get("globex", "callflow", "u", &format!("/blob/{blob}"))
        .await
        .unwrap();
    assert_eq!(
        other.status,
        404,
        "{:?}",
        String::from_utf8_lossy(&other.body)
    );
    rig.hang_up(&a);
    wait_event(&h, "acme", &a, "ended:normal").await;
    // The recording plays back into another call, as recorded.
    let mut carol = Phone::new().unwrap();
    let c = rig
        .ring(
            "acme",
            "callflow",
            "carol",
            "100",
            format!("playblob:{blob}").as_bytes(),
            &mut carol,
        )
        .await
        .unwrap();
    let heard = carol.listen(Duration::from_millis(2500), 0);
    let frames_of = |code: u8| {
        heard
            .iter()
            .filter(|f| f.iter().all(|c| *c == code))
            .count()
    };
    assert!(
        frames_of(before) >= 10,
        "{} frames of the first level",
        frames_of(before)
    );
    assert!(
        frames_of(after) >= 10,
        "{} frames of the last",
        frames_of(after)
    );
    assert_eq!(frames_of(secret), 0);
    wait_event(&h, "acme", &c, "played:done").await;
    // An unknown blob, or another tenant's, is `not-found` to the play.
    for (tenant, id) in [("acme", "0".repeat(32)), ("globex", blob.clone())] {
        let mut phone = Phone::new().unwrap();
        let leg = rig
            .ring(
                tenant,
                "callflow",
                "eve",
                "100",
                format!("playblob:{id}").as_bytes(),
                &mut phone,
            )
            .await
            .unwrap();
        let why = loop {
            let v = ok_json(
                h.get(tenant, "callflow", "u", &format!("/refused/{leg}"))
                    .await,
            );
            if v.as_str().is_some_and(|s| !s.is_empty()) {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            why.as_str().unwrap().starts_with("not-found"),
            "{tenant}: {why}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_a_recording_cut_by_hangup_is_written_before_the_leg_ends_and_a_quota_stops_one() {
    let h = harness(&["callflow"]).await;
    let limits = Limits {
        owner_storage_bytes: 100_000,
        ..Limits::default()
    };
    tenant(&h, "acme", limits, &["callflow"]).await;
    let rig = CallRig::start(h.runtime());
    // Hung up mid-recording: `recorded` (hangup) comes before `ended`.
    let mut alice = Phone::new().unwrap();
    let a = answered_call(&rig, "acme", "alice", b"record", &mut alice).await;
    talk(&mut alice, 0x30, 25).await;
    rig.hang_up(&a);
    let got = wait_event(&h, "acme", &a, "ended:normal").await;
    let at = |p: &str| got.iter().position(|e| e.starts_with(p)).unwrap();
    assert!(at("recorded:hangup:") < at("ended:"), "{got:?}");
    let (_, blob, ms) = recorded(&h, "acme", &a).await;
    assert!(ms >= 200, "{ms}");
    let r = h
        .get("acme", "callflow", "u", &format!("/blob/{blob}"))
        .await
        .unwrap();
    assert_eq!(wav_samples(&r.body).len() as u64, ms * 8);
    // For a user whose quota holds ~3 s (100 kB): the recording stops
    // when it is full, and the blob keeps what fit, with a header naming
    // it.
    let mut bob = Phone::new().unwrap();
    let b = answered_call(&rig, "acme", "bob", b"record:u-bob", &mut bob).await;
    talk(&mut bob, 0x30, 300).await;
    let (end, blob, ms) = recorded(&h, "acme", &b).await;
    assert_eq!(end, "stopped");
    let r = h
        .get("acme", "callflow", "u", &format!("/blob/{blob}"))
        .await
        .unwrap();
    let pcm = wav_samples(&r.body);
    assert!(
        pcm.len() * 2 + 44 <= 100_000,
        "{} bytes",
        pcm.len() * 2 + 44
    );
    assert!(ms >= 2000, "the first 64 KiB at least: {ms}");
    rig.hang_up(&b);
}
