//! The SIP door end to end over real TLS (issue 20, part 3): devices
//! register with digest, call a number their tenant routed to a plugin,
//! and the B2BUA carries the dialog (SDP re-originated, SRTP required).
//! A hand-written user agent (`switchboard_tests::sip`) reaches the
//! corners: digest negatives, replays, lockout, races, garbage, other
//! tenants. SPEC T2, I3, K4.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use switchboard::admin::Op;
use switchboard::audit::Scope;
use switchboard::harness::Harness;
use switchboard::sip::message::Message;
use switchboard::tenant::{Limits, Route};
use switchboard_tests::accounts::{console, create_user};
use switchboard_tests::sip::{
    Ua, ack, assert_keys_in_clear_refused, in_dialog, invite, offer, sdp_headers,
};
use switchboard_tests::{harness, ok_json, tenant};

const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    h: Harness,
    sip: SocketAddr,
    /// The trunks' UDP and TCP port, where devices allowed UDP/TCP go.
    udp: SocketAddr,
    /// acme's device `alice-desk` and its password.
    password: String,
    /// acme's `bob-desk` (user bob) and its password.
    bob_password: String,
    bob_id: String,
    /// acme's alice (owner of `alice-desk`).
    alice_id: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    /// Delivers call events to plugins, as in a running server.
    _scheduler: switchboard::scheduler::Scheduler,
}

fn route(number: &str, args: &str) -> Route {
    Route {
        number: number.into(),
        plugin: "callflow".into(),
        args: args.into(),
    }
}

async fn rig() -> Rig {
    let h = harness(&["callflow", "pbx"]).await;
    let mut alice_id = String::new();
    for t in ["acme", "globex"] {
        tenant(&h, t, Limits::default(), &["callflow", "pbx"]).await;
        let (id, _) = create_user(&h, t, "alice", "user").await;
        if t == "acme" {
            alice_id = id;
        }
        console(
            &h,
            Op::RoutesSet {
                tenant: t.into(),
                routes: vec![
                    route("100", "answer"),
                    route("101", "ring"),
                    route("102", "trap"),
                    Route {
                        number: "201".into(),
                        plugin: "pbx".into(),
                        args: "bob".into(),
                    },
                ],
            },
        )
        .await;
    }
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
    let (bob_id, _) = create_user(&h, "acme", "bob", "user").await;
    let bob = console(
        &h,
        Op::DeviceAdd {
            tenant: "acme".into(),
            name: "bob-desk".into(),
            user: "bob".into(),
            udp: false,
        },
    )
    .await;
    let bob_password = bob["password"].as_str().unwrap().to_string();
    assert_eq!(added["register"]["realm"], "acme.localhost");
    let ports = switchboard_tests::sip::start_door_with_device_udp(h.runtime()).await;
    let (sip, udp, stop) = (ports.tls, ports.trunks.unwrap(), ports.stop);
    let scheduler = switchboard::scheduler::Scheduler::start(h.runtime(), Default::default());
    Rig {
        h,
        sip,
        udp,
        password,
        bob_password,
        bob_id,
        alice_id,
        _stop: stop,
        _scheduler: scheduler,
    }
}

impl Rig {
    async fn alice(&self) -> Ua {
        Ua::connect(self.sip, "alice-desk", "acme.localhost", &self.password).await
    }

    async fn bob(&self) -> Ua {
        Ua::connect(self.sip, "bob-desk", "acme.localhost", &self.bob_password).await
    }

    async fn legs(&self, t: &str) -> Vec<String> {
        let v = ok_json(self.h.get(t, "callflow", "u", "/legs").await);
        serde_json::from_value(v.clone()).unwrap_or_else(|_| panic!("/legs: {v}"))
    }

    async fn events(&self, t: &str, leg: &str) -> Vec<String> {
        serde_json::from_value(ok_json(
            self.h
                .get(t, "callflow", "u", &format!("/events/{leg}"))
                .await,
        ))
        .unwrap()
    }

    /// Waits for the plugin to log `want` on `leg`.
    async fn wait_event(&self, t: &str, leg: &str, want: &str) -> Vec<String> {
        let end = std::time::Instant::now() + WAIT;
        loop {
            let got = self.events(t, leg).await;
            if got.iter().any(|e| e == want) {
                return got;
            }
            assert!(
                std::time::Instant::now() < end,
                "no {want} on {leg}: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The only leg the plugin has heard of, once it has.
    async fn only_leg(&self, t: &str) -> String {
        let end = std::time::Instant::now() + WAIT;
        loop {
            let legs = self.legs(t).await;
            if let [leg] = legs.as_slice() {
                return leg.clone();
            }
            assert!(std::time::Instant::now() < end, "legs: {legs:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn audits(&self, action: &str) -> Vec<switchboard::audit::Entry> {
        switchboard_tests::accounts::audits(&self.h, "acme", action)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_devices_register_with_digest_sha256_or_md5() {
    let r = rig().await;
    let mut ua = r.alice().await;
    // The challenge offers SHA-256 first, then MD5, one nonce.
    let uri = "sip:acme.localhost";
    let req = ua.request("REGISTER", uri, &[("Expires", "600".into())]);
    ua.send(&req).await;
    let challenged = ua.final_response().await.unwrap();
    assert_eq!(challenged.status(), Some(401));
    let algorithms: Vec<String> = challenged
        .all("WWW-Authenticate")
        .map(|c| switchboard_tests::sip::challenge_param(c, "algorithm").unwrap())
        .collect();
    assert_eq!(algorithms, ["SHA-256", "MD5"]);
    let ok = ua.register("SHA-256", 600).await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let contact = ok.header("Contact").unwrap();
    assert!(contact.ends_with(";expires=600"), "{contact}");
    // MD5 (old phones) on another connection; long registrations are
    // shortened, too short ones refused with the minimum.
    let mut old = r.alice().await;
    let ok = old.register("MD5", 999_999).await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.all("Contact").count(), 2, "both bindings: {ok:?}");
    assert!(ok.all("Contact").any(|c| c.ends_with(";expires=3600")));
    let brief = old.register("MD5", 10).await;
    assert_eq!(brief.status(), Some(423));
    assert_eq!(brief.header("Min-Expires"), Some("60"));
    // Unregistering one binding leaves the other.
    let gone = old.register("MD5", 0).await;
    assert_eq!(gone.status(), Some(200));
    assert_eq!(gone.all("Contact").count(), 1, "{gone:?}");
    // `Contact: *` must stand alone (RFC 3261 §10.2.2).
    let uri = "sip:acme.localhost";
    let first = old.request("REGISTER", uri, &[]);
    old.send(&first).await;
    let challenged = old.final_response().await.unwrap();
    let (h, v) = old.answer(&challenged, "MD5", "REGISTER", uri);
    let mut mixed = old.request("REGISTER", uri, &[("Expires", "0".into()), (&h, v)]);
    mixed.headers.retain(|(n, _)| n != "Contact");
    mixed.push("Contact", "*, <sip:alice-desk@10.0.0.9>");
    old.send(&mixed).await;
    assert_eq!(old.final_response().await.unwrap().status(), Some(400));
}

/// What a refusal looks like, without what differs per request.
fn shape(m: &Message) -> (Option<u16>, Vec<String>) {
    let mut names: Vec<String> = m.headers.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    (m.status(), names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i3_unknown_devices_wrong_passwords_and_unknown_domains_look_alike() {
    let r = rig().await;
    let mut wrong = Ua::connect(r.sip, "alice-desk", "acme.localhost", "not-the-password").await;
    let mut unknown = Ua::connect(r.sip, "bob-desk", "acme.localhost", "whatever").await;
    let mut nowhere = Ua::connect(r.sip, "alice-desk", "initech.localhost", "x").await;
    let a = wrong.register("SHA-256", 600).await;
    let b = unknown.register("SHA-256", 600).await;
    let c = nowhere.register("SHA-256", 600).await;
    assert_eq!(a.status(), Some(403));
    assert_eq!(shape(&a), shape(&b));
    assert_eq!(shape(&a), shape(&c));
    assert_eq!(a.start, b.start, "same reason phrase");
    // The right password for another tenant's domain: refused too.
    let mut astray = Ua::connect(r.sip, "alice-desk", "globex.localhost", &r.password).await;
    assert_eq!(astray.register("SHA-256", 600).await.status(), Some(403));
    // Each failure is audited in the tenant it aimed at.
    let audited = r.audits("sip.auth");
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert!(audited.iter().all(|e| e.outcome == "failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i3_replayed_answers_are_refused_and_failures_lock_the_name() {
    let r = rig().await;
    let mut ua = r.alice().await;
    let uri = "sip:acme.localhost";
    let first = ua.request("REGISTER", uri, &[]);
    ua.send(&first).await;
    let challenged = ua.final_response().await.unwrap();
    let (h, v) = ua.answer(&challenged, "SHA-256", "REGISTER", uri);
    let signed = ua.request("REGISTER", uri, &[(&h, v.clone())]);
    ua.send(&signed).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(200));
    // The same nonce count again: a replay, answered with a fresh
    // challenge (stale), never accepted.
    let replay = ua.request("REGISTER", uri, &[(&h, v)]);
    ua.send(&replay).await;
    let again = ua.final_response().await.unwrap();
    assert_eq!(again.status(), Some(401));
    assert!(
        again
            .header("WWW-Authenticate")
            .unwrap()
            .contains("stale=true")
    );
    // Wrong passwords from one place: delays after the free failures,
    // with Retry-After (then a lock, audited).
    let mut bad = Ua::connect(r.sip, "alice-desk", "acme.localhost", "guess").await;
    let mut retry_after = None;
    for _ in 0..12 {
        let m = bad.register("SHA-256", 600).await;
        assert_eq!(m.status(), Some(403));
        if let Some(s) = m.header("Retry-After") {
            retry_after = Some(s.to_string());
            break;
        }
    }
    assert!(retry_after.is_some(), "throttled within 12 attempts");
    // While throttled even the right password waits, from that place...
    let throttled = r.alice().await.register("SHA-256", 600).await;
    assert_eq!(throttled.status(), Some(403));
    assert!(throttled.header("Retry-After").is_some());
    // ...but the guesser cannot lock the real phone out from elsewhere.
    let mut elsewhere = Ua::connect_from(
        r.sip,
        "127.0.0.2".parse().unwrap(),
        "alice-desk",
        "acme.localhost",
        &r.password,
    )
    .await;
    assert_eq!(elsewhere.register("SHA-256", 600).await.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i3_failures_lock_the_name_from_that_source_and_are_audited() {
    let r = rig().await;
    // No delays, a lock after 5 failures: the lock itself, quickly.
    let (door, _stop) = switchboard_tests::sip::start_door_with(
        r.h.runtime(),
        switchboard::sip::SipConfig {
            allow_loopback_media: true,
            ..Default::default()
        },
        switchboard::identity::throttle::ThrottleConfig {
            free_failures: 100,
            address_free_failures: 100,
            lock_after: 5,
            lock_minutes: 15,
            ..Default::default()
        },
    )
    .await;
    let from = |ip: &str, password: &str| {
        let (ip, password) = (ip.parse().unwrap(), password.to_string());
        async move { Ua::connect_from(door, ip, "alice-desk", "acme.localhost", &password).await }
    };
    for _ in 0..5 {
        let m = from("127.0.0.3", "guess")
            .await
            .register("SHA-256", 600)
            .await;
        assert_eq!(m.status(), Some(403));
    }
    // Locked from there, right password or not, for the lock's length.
    let m = from("127.0.0.3", &r.password)
        .await
        .register("SHA-256", 600)
        .await;
    assert_eq!(m.status(), Some(403));
    assert_eq!(m.header("Retry-After"), Some("900"));
    // The phone itself, elsewhere, is not locked out.
    let m = from("127.0.0.4", &r.password)
        .await
        .register("SHA-256", 600)
        .await;
    assert_eq!(m.status(), Some(200));
    assert_eq!(r.audits("sip.auth").len(), 5);
    let lock = r.audits("sip.lockout");
    assert_eq!(lock.len(), 1, "{lock:?}");
    assert!(lock[0].details.contains("127.0.0.3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_device_calls_a_plugin_over_srtp_and_hangs_up() {
    let r = rig().await;
    let mut ua = r.alice().await;
    assert_eq!(ua.register("SHA-256", 600).await.status(), Some(200));
    let (inv, ok) = invite(&mut ua, "100", &offer(40_000, true)).await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert_eq!(ok.header("Content-Type"), Some("application/sdp"));
    let answer = String::from_utf8(ok.body.clone()).unwrap();
    assert!(answer.contains("m=audio "), "{answer}");
    assert!(answer.contains("RTP/SAVP 0"), "{answer}");
    assert!(
        answer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{answer}"
    );
    assert!(
        !answer.contains("WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"),
        "our key is fresh: {answer}"
    );
    assert!(ok.header("Contact").is_some());
    ua.send(&ack(&inv, &ok)).await;
    let leg = r.only_leg("acme").await;
    let events = r.wait_event("acme", &leg, "offered:answer").await;
    assert_eq!(events, ["offered:answer"]);
    assert_eq!(r.h.runtime().telephony().legs_of("acme"), 1);
    // Another connection that learnt the ids cannot end the call, and a
    // second INVITE cannot reuse them.
    let mut other = r.bob().await;
    assert_eq!(other.register("SHA-256", 600).await.status(), Some(200));
    let forged = in_dialog(&mut ua, "BYE", &inv, &ok);
    other.send(&forged).await;
    assert_eq!(other.final_response().await.unwrap().status(), Some(481));
    let mut reuse = inv.clone();
    reuse
        .headers
        .retain(|(n, _)| n != "Via" && n != "Proxy-Authorization");
    reuse.push(
        "Via",
        format!("SIP/2.0/TLS {};branch=z9hG4bKreuse", ua.local),
    );
    ua.send(&reuse).await;
    let challenged = ua.final_response().await.unwrap();
    let uri = inv.uri().unwrap().to_string();
    let (h, v) = ua.answer(&challenged, "SHA-256", "INVITE", &uri);
    reuse.push(&h, v);
    ua.send(&reuse).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(400));
    // The device hangs up.
    let bye = in_dialog(&mut ua, "BYE", &inv, &ok);
    ua.send(&bye).await;
    let done = ua.final_response().await.unwrap();
    assert_eq!(done.status(), Some(200));
    r.wait_event("acme", &leg, "ended:normal").await;
    // A second BYE finds no dialog.
    let again = in_dialog(&mut ua, "BYE", &inv, &ok);
    ua.send(&again).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(481));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_plugin_hanging_up_sends_bye_and_a_cancel_ends_a_ringing_call() {
    let r = rig().await;
    let mut ua = r.alice().await;
    // `ring` leaves the call offered: the device cancels it.
    let uri = format!("sip:101@{}", ua.domain);
    let sdp = offer(40_002, true);
    let (inv, _) = {
        let body = vec![
            ("Content-Type", "application/sdp".to_string()),
            ("body", sdp.clone()),
        ];
        let first = ua.request("INVITE", &uri, &body);
        ua.send(&first).await;
        let challenged = ua.final_response().await.unwrap();
        let (h, v) = ua.answer(&challenged, "SHA-256", "INVITE", &uri);
        let mut extra = body.clone();
        extra.insert(0, (h.as_str(), v));
        let second = ua.request("INVITE", &uri, &extra);
        ua.send(&second).await;
        let trying = ua.recv().await.unwrap();
        assert_eq!(trying.status(), Some(100));
        (second, trying)
    };
    let leg = r.only_leg("acme").await;
    r.wait_event("acme", &leg, "offered:ring").await;
    let mut cancel = inv.clone();
    cancel.start = switchboard::sip::message::Start::Request {
        method: "CANCEL".into(),
        uri: uri.clone(),
    };
    cancel
        .headers
        .retain(|(n, _)| !matches!(n.as_str(), "CSeq" | "Content-Type" | "Proxy-Authorization"));
    cancel.push("CSeq", format!("{} CANCEL", inv.cseq().unwrap().0));
    cancel.body.clear();
    ua.send(&cancel).await;
    let mut statuses = vec![
        ua.recv().await.unwrap().status().unwrap(),
        ua.recv().await.unwrap().status().unwrap(),
    ];
    statuses.sort();
    assert_eq!(statuses, [200, 487]);
    r.wait_event("acme", &leg, "ended:normal").await;
    // The plugin ends an answered call: the device gets a BYE.
    let leg_count = r.legs("acme").await.len();
    let (inv, ok) = invite(&mut ua, "100", &offer(40_004, true)).await;
    assert_eq!(ok.status(), Some(200));
    ua.send(&ack(&inv, &ok)).await;
    let end = std::time::Instant::now() + WAIT;
    let leg = loop {
        let legs = r.legs("acme").await;
        if legs.len() > leg_count {
            break legs.into_iter().find(|l| *l != leg).unwrap();
        }
        assert!(std::time::Instant::now() < end);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    r.wait_event("acme", &leg, "offered:answer").await;
    let poked = ok_json(
        r.h.post("acme", "callflow", "u", &format!("/poke/{leg}"), b"")
            .await,
    );
    assert_eq!(poked["hangup"], "ok", "{poked}");
    let bye = ua.recv().await.expect("a BYE");
    assert_eq!(bye.method(), Some("BYE"), "{bye:?}");
    assert_eq!(bye.call_id(), inv.call_id());
    assert_eq!(bye.to().unwrap().tag(), inv.from().unwrap().tag());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_calls_without_srtp_a_route_or_a_dialog_are_refused() {
    let r = rig().await;
    let mut ua = r.alice().await;
    let (_, plain) = invite(&mut ua, "100", &offer(40_010, false)).await;
    assert_eq!(plain.status(), Some(488), "SRTP is required: {plain:?}");
    assert!(
        plain
            .header("Warning")
            .unwrap()
            .contains("sdp_srtp_required")
    );
    let (_, nowhere) = invite(&mut ua, "555", &offer(40_012, true)).await;
    assert_eq!(nowhere.status(), Some(404));
    // Media aimed at the host's own media ports (a loop, or another
    // call's leg): refused.
    let (_, looped) = invite(&mut ua, "100", &offer(20_002, true)).await;
    assert_eq!(looped.status(), Some(488), "{looped:?}");
    assert!(
        looped
            .header("Warning")
            .unwrap()
            .contains("sdp_not_acceptable")
    );
    let (_, trap) = invite(&mut ua, "102", &offer(40_014, true)).await;
    assert_eq!(trap.status(), Some(500), "the plugin trapped: {trap:?}");
    // Methods the door does not take, and a stray re-INVITE.
    let info = ua.request("INFO", "sip:100@acme.localhost", &[]);
    ua.send(&info).await;
    let refused = ua.final_response().await.unwrap();
    assert_eq!(refused.status(), Some(405));
    assert!(refused.header("Allow").unwrap().contains("INVITE"));
    let mut reinvite = ua.request("INVITE", "sip:100@acme.localhost", &[]);
    reinvite.headers.retain(|(n, _)| n != "To");
    reinvite.push("To", "<sip:100@acme.localhost>;tag=nosuch");
    ua.send(&reinvite).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(481));
    // Nothing leaked.
    assert_eq!(r.h.runtime().telephony().legs_of("acme"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k4_a_device_cannot_call_into_another_tenant() {
    let r = rig().await;
    let mut ua = Ua::connect(r.sip, "alice-desk", "globex.localhost", &r.password).await;
    let uri = "sip:100@globex.localhost";
    let body = vec![
        ("Content-Type", "application/sdp".to_string()),
        ("body", offer(40_020, true)),
    ];
    let first = ua.request("INVITE", uri, &body);
    ua.send(&first).await;
    let challenged = ua.final_response().await.unwrap();
    assert_eq!(challenged.status(), Some(407));
    let (h, v) = ua.answer(&challenged, "SHA-256", "INVITE", uri);
    let mut extra = body.clone();
    extra.insert(0, (h.as_str(), v));
    let second = ua.request("INVITE", uri, &extra);
    ua.send(&second).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(403));
    assert!(r.legs("globex").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_garbage_closes_its_connection_and_the_door_keeps_serving() {
    let r = rig().await;
    let cases: Vec<Vec<u8>> = vec![
        // No Content-Length on a stream.
        b"REGISTER sip:acme.localhost SIP/2.0\r\nVia: x\r\n\r\n".to_vec(),
        // A header section that never ends.
        vec![b'A'; 20_000],
        // A length past the limit, and an absurd one.
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n".to_vec(),
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 18446744073709551615\r\n\r\n".to_vec(),
    ];
    for bytes in cases {
        let mut ua = r.alice().await;
        ua.send_raw(&bytes).await;
        assert!(ua.recv().await.is_none(), "closed without an answer");
    }
    // A message that frames but does not parse is dropped; the flow stays
    // (a URI cut inside a character, a control character in a value).
    let mut ua = r.alice().await;
    ua.send_raw(b"HELLO\r\nContent-Length: 0\r\n\r\n").await;
    ua.send_raw("OPTIONS sip\u{20ac} SIP/2.0\r\nContent-Length: 0\r\n\r\n".as_bytes())
        .await;
    ua.send_raw(b"OPTIONS sip:x SIP/2.0\r\nSubject: a\x07b\r\nContent-Length: 0\r\n\r\n")
        .await;
    let mut ping = ua.request("OPTIONS", "sip:acme.localhost", &[]);
    ping.headers.retain(|(n, _)| n != "Contact");
    ua.send(&ping).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(200));
    assert_eq!(ua.register("SHA-256", 600).await.status(), Some(200));
    let dropped: Value = serde_json::json!(
        switchboard::metrics::render()
            .contains("switchboard_sip_dropped_total{reason=\"sip_malformed\"}")
    );
    assert_eq!(dropped, true);
}

/// Our answer to an INVITE from the door, receiving at `port`.
fn answer_to(invite: &Message, code: u16, port: u16) -> Message {
    let mut r = invite.response(code, "OK", Some("dev1"));
    r.push("Contact", "<sip:bob-desk@127.0.0.1:5999;transport=tls>");
    if code == 200 {
        r.push("Content-Type", "application/sdp");
        r.body = format!(
            "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
        )
        .into_bytes();
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_plugin_rings_all_of_a_users_devices_and_the_first_answer_wins() {
    let r = rig().await;
    // Bob's phone on two connections (two bindings), Alice's not dialled.
    let mut desk = r.bob().await;
    let mut soft = r.bob().await;
    assert_eq!(desk.register("SHA-256", 600).await.status(), Some(200));
    assert_eq!(soft.register("MD5", 600).await.status(), Some(200));
    let dialled = ok_json(
        r.h.post("acme", "callflow", "u", "/dial/user%3Abob", b"")
            .await,
    );
    let leg = dialled["leg"].as_str().expect("a leg").to_string();
    let a = desk.recv().await.expect("an INVITE on the desk phone");
    let b = soft.recv().await.expect("an INVITE on the soft phone");
    assert_eq!((a.method(), b.method()), (Some("INVITE"), Some("INVITE")));
    let (sa, sb) = (
        String::from_utf8(a.body.clone()).unwrap(),
        String::from_utf8(b.body.clone()).unwrap(),
    );
    let key = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("a=crypto:1 "))
            .map(str::to_string)
    };
    assert!(key(&sa).is_some() && key(&sb).is_some(), "{sa}");
    assert_ne!(key(&sa), key(&sb), "each device its own key");
    assert!(sa.contains("RTP/SAVP 0 8 101"), "{sa}");
    assert!(a.header("From").unwrap().contains("@acme.localhost"));
    // The desk phone rings, then answers; the soft phone is cancelled.
    desk.send(&{
        let mut ringing = a.response(180, "Ringing", Some("dev1"));
        ringing.push("Contact", "<sip:bob-desk@127.0.0.1:5999;transport=tls>");
        ringing
    })
    .await;
    r.wait_event("acme", &leg, "ringing").await;
    desk.send(&answer_to(&a, 200, 40_100)).await;
    let ack = desk.recv().await.expect("an ACK");
    assert_eq!(ack.method(), Some("ACK"));
    assert_eq!(ack.uri(), Some("sip:bob-desk@127.0.0.1:5999;transport=tls"));
    r.wait_event("acme", &leg, "answered").await;
    let cancel = soft.recv().await.expect("a CANCEL");
    assert_eq!(cancel.method(), Some("CANCEL"));
    assert_eq!(cancel.branch(), b.branch());
    soft.send(&cancel.response(200, "OK", Some("dev2"))).await;
    soft.send(&b.response(487, "Request Terminated", Some("dev2")))
        .await;
    let ack = soft.recv().await.expect("an ACK of the 487");
    assert_eq!((ack.method(), ack.branch()), (Some("ACK"), b.branch()));
    // The plugin hangs up: the desk phone gets the BYE of its dialog.
    let poked = ok_json(
        r.h.post("acme", "callflow", "u", &format!("/poke/{leg}"), b"")
            .await,
    );
    assert_eq!(poked["hangup"], "ok", "{poked}");
    let bye = desk.recv().await.expect("a BYE");
    assert_eq!(bye.method(), Some("BYE"));
    assert_eq!(bye.call_id(), a.call_id());
    assert_eq!(bye.to().unwrap().tag().as_deref(), Some("dev1"));
    assert_eq!(bye.from().unwrap().tag(), a.from().unwrap().tag());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_user_whose_devices_are_busy_or_absent_is_not_reached() {
    let r = rig().await;
    // Nobody registered: the dial ends unavailable.
    let dialled = ok_json(
        r.h.post("acme", "callflow", "u", "/dial/user%3Abob", b"")
            .await,
    );
    let leg = dialled["leg"].as_str().unwrap().to_string();
    r.wait_event("acme", &leg, "ended:unavailable").await;
    // Registered and busy.
    let mut desk = r.bob().await;
    assert_eq!(desk.register("SHA-256", 600).await.status(), Some(200));
    let dialled = ok_json(
        r.h.post("acme", "callflow", "u", "/dial/user%3Abob", b"")
            .await,
    );
    let leg = dialled["leg"].as_str().unwrap().to_string();
    let invite = desk.recv().await.unwrap();
    desk.send(&invite.response(486, "Busy Here", Some("dev1")))
        .await;
    assert_eq!(desk.recv().await.unwrap().method(), Some("ACK"));
    r.wait_event("acme", &leg, "ended:busy").await;
    // Unanswered: the ring time (2 s) ends it and the phone is cancelled.
    let dialled = ok_json(
        r.h.post("acme", "callflow", "u", "/dial/user%3Abob", b"")
            .await,
    );
    let leg = dialled["leg"].as_str().unwrap().to_string();
    let invite = desk.recv().await.unwrap();
    let cancel = desk.recv().await.expect("a CANCEL after the ring time");
    assert_eq!(cancel.method(), Some("CANCEL"));
    assert_eq!(cancel.branch(), invite.branch());
    r.wait_event("acme", &leg, "ended:no-answer").await;
    // A new password for the device ends its registration at once: the
    // phone is not rung again until it registers with the new one.
    console(
        &r.h,
        Op::DevicePassword {
            tenant: "acme".into(),
            name: "bob-desk".into(),
        },
    )
    .await;
    let dialled = ok_json(
        r.h.post("acme", "callflow", "u", "/dial/user%3Abob", b"")
            .await,
    );
    let leg = dialled["leg"].as_str().unwrap().to_string();
    r.wait_event("acme", &leg, "ended:unavailable").await;
    // A user or device of another tenant is not found in this one.
    let dialled = ok_json(
        r.h.post("globex", "callflow", "u", "/dial/device%3Abob-desk", b"")
            .await,
    );
    let leg = dialled["leg"].as_str().unwrap().to_string();
    r.wait_event("globex", &leg, "ended:unavailable").await;
    assert!(
        desk.recv_within(Duration::from_millis(300)).await.is_none(),
        "no INVITE across tenants"
    );
}

/// The device's side of a call from the door: rings, answers with SDP,
/// takes the ACK; returns the INVITE and our 200.
async fn pick_up(ua: &mut Ua, port: u16) -> (Message, Message) {
    let invite = ua.recv().await.expect("an INVITE");
    assert_eq!(invite.method(), Some("INVITE"), "{invite:?}");
    let ok = answer_to(&invite, 200, port);
    ua.send(&ok).await;
    let ack = ua.recv().await.expect("an ACK");
    assert_eq!(ack.method(), Some("ACK"));
    (invite, ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_alice_calls_bobs_extension_through_the_pbx_and_either_hangs_up() {
    let r = rig().await;
    let mut alice = r.alice().await;
    let mut bob = r.bob().await;
    assert_eq!(alice.register("SHA-256", 600).await.status(), Some(200));
    assert_eq!(bob.register("SHA-256", 600).await.status(), Some(200));
    // Alice dials 201 (Bob's extension): the pbx answers her (ringback)
    // and rings Bob, showing Alice's name.
    let (a_inv, a_ok) = invite(&mut alice, "201", &offer(40_200, true)).await;
    assert_eq!(a_ok.status(), Some(200), "{a_ok:?}");
    alice.send(&ack(&a_inv, &a_ok)).await;
    let (b_inv, b_ok) = pick_up(&mut bob, 40_202).await;
    assert!(
        b_inv.header("From").unwrap().contains("\"alice-desk\""),
        "{b_inv:?}"
    );
    // Two dialogs, re-originated: different Call-IDs and keys.
    assert_ne!(a_inv.call_id(), b_inv.call_id());
    // Bob hangs up: Alice's call ends with a BYE from the host.
    let bye = in_dialog_uac(&mut bob, &b_inv, &b_ok);
    bob.send(&bye).await;
    assert_eq!(bob.final_response().await.unwrap().status(), Some(200));
    let to_alice = alice.recv().await.expect("a BYE to Alice");
    assert_eq!(to_alice.method(), Some("BYE"));
    assert_eq!(to_alice.call_id(), a_inv.call_id());
    alice.send(&to_alice.response(200, "OK", None)).await;
    // Again, and this time Alice hangs up: Bob gets the BYE.
    let (a_inv, a_ok) = invite(&mut alice, "201", &offer(40_204, true)).await;
    alice.send(&ack(&a_inv, &a_ok)).await;
    let (b_inv, _) = pick_up(&mut bob, 40_206).await;
    let bye = in_dialog(&mut alice, "BYE", &a_inv, &a_ok);
    alice.send(&bye).await;
    assert_eq!(alice.final_response().await.unwrap().status(), Some(200));
    let to_bob = bob.recv().await.expect("a BYE to Bob");
    assert_eq!(
        (to_bob.method(), to_bob.call_id()),
        (Some("BYE"), b_inv.call_id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_busy_user_forwards_and_the_dialing_policy_decides_the_forward() {
    let r = rig().await;
    let mut alice = r.alice().await;
    let mut bob = r.bob().await;
    assert_eq!(alice.register("SHA-256", 600).await.status(), Some(200));
    assert_eq!(bob.register("SHA-256", 600).await.status(), Some(200));
    // Bob forwards busy calls to Alice's desk phone, unanswered ones to a
    // premium-rate number (the policy refuses that forward).
    let fwd = serde_json::json!({"busy": "device:alice-desk", "no_answer": "+19005550100"});
    let set =
        r.h.call(
            "acme",
            "pbx",
            &r.bob_id,
            switchboard::call::types::Method::Put,
            "/forward",
            fwd.to_string().as_bytes(),
        )
        .await;
    assert_eq!(ok_json(set), fwd);
    let bad =
        r.h.call(
            "acme",
            "pbx",
            &r.bob_id,
            switchboard::call::types::Method::Put,
            "/forward",
            br#"{"busy": "sip:evil@example.com;x"}"#,
        )
        .await;
    let bad = bad.unwrap();
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("invalid_forward"));
    // Alice calls Bob from another line; Bob is busy: her desk phone rings.
    let mut line2 = r.alice().await;
    let (a_inv, a_ok) = invite(&mut line2, "201", &offer(40_210, true)).await;
    line2.send(&ack(&a_inv, &a_ok)).await;
    let b_inv = bob.recv().await.expect("an INVITE to Bob");
    bob.send(&b_inv.response(486, "Busy Here", Some("b1")))
        .await;
    assert_eq!(bob.recv().await.unwrap().method(), Some("ACK"));
    let forwarded = alice.recv().await.expect("the forward rings Alice's desk");
    assert_eq!(forwarded.method(), Some("INVITE"));
    alice
        .send(&forwarded.response(486, "Busy Here", Some("a1")))
        .await;
    assert_eq!(alice.recv().await.unwrap().method(), Some("ACK"));
    // A forward is not forwarded again: the caller hears busy and is
    // hung up.
    let bye = line2.recv().await.expect("a BYE after the busy tone");
    assert_eq!(bye.method(), Some("BYE"));
    // Unanswered: the forward to a premium number is refused by policy
    // (audited as restricted), the caller hung up.
    let (a_inv, a_ok) = invite(&mut line2, "201", &offer(40_212, true)).await;
    line2.send(&ack(&a_inv, &a_ok)).await;
    let b_inv = bob.recv().await.expect("an INVITE to Bob");
    bob.send(&b_inv.response(480, "Temporarily Unavailable", Some("b2")))
        .await;
    assert_eq!(bob.recv().await.unwrap().method(), Some("ACK"));
    let bye = line2.recv().await.expect("a BYE after the refused forward");
    assert_eq!(bye.method(), Some("BYE"));
    let refused: Vec<_> =
        r.h.runtime()
            .audit_log()
            .entries(&Scope::tenant("acme"), 0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "call.dial" && e.target == "+19005550100")
            .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
}

/// An in-dialog request from the device that answered our INVITE (it is
/// the dialog's UAS: its From is the INVITE's To with its tag).
fn in_dialog_uac(ua: &mut Ua, invite: &Message, ok: &Message) -> Message {
    let mut m = ua.request(
        "BYE",
        invite
            .header("Contact")
            .map(|c| c.trim_matches(['<', '>']))
            .unwrap(),
        &[],
    );
    m.headers
        .retain(|(n, _)| !matches!(n.as_str(), "From" | "To" | "Call-ID"));
    m.push("From", ok.header("To").unwrap());
    m.push("To", invite.header("From").unwrap());
    m.push("Call-ID", invite.call_id());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_door_offering_md5_only_takes_no_sha256_answer() {
    let r = rig().await;
    let (door, _stop) = switchboard_tests::sip::start_door_with(
        r.h.runtime(),
        switchboard::sip::SipConfig {
            allow_loopback_media: true,
            digest_algorithms: vec![switchboard::identity::digest::Algorithm::Md5],
            ..Default::default()
        },
        Default::default(),
    )
    .await;
    let mut ua = Ua::connect(door, "alice-desk", "acme.localhost", &r.password).await;
    let uri = "sip:acme.localhost";
    let first = ua.request("REGISTER", uri, &[]);
    ua.send(&first).await;
    let challenged = ua.final_response().await.unwrap();
    assert_eq!(challenged.all("WWW-Authenticate").count(), 1);
    // An answer under SHA-256 (not offered) counts as none: challenged again.
    let nonce = switchboard_tests::sip::challenge_param(
        challenged.header("WWW-Authenticate").unwrap(),
        "nonce",
    )
    .unwrap();
    let forged = format!(
        "Digest realm=\"acme.localhost\", qop=\"auth\", algorithm=SHA-256, nonce=\"{nonce}\""
    );
    let v = switchboard_tests::sip::digest_answer(
        &forged,
        "alice-desk",
        &r.password,
        "REGISTER",
        uri,
        1,
    );
    let second = ua.request("REGISTER", uri, &[("Authorization", v)]);
    ua.send(&second).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(401));
    assert_eq!(ua.register("MD5", 600).await.status(), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_message_waiting_reaches_a_subscribed_device_of_its_owner_only() {
    let r = rig().await;
    let mut ua = r.alice().await;
    // Another event package is refused; message-summary is challenged.
    let uri = "sip:alice-desk@acme.localhost";
    let presence = ua.request("SUBSCRIBE", uri, &[("Event", "presence".into())]);
    ua.send(&presence).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(489));
    let first = ua.request(
        "SUBSCRIBE",
        uri,
        &[
            ("Event", "message-summary".into()),
            ("Expires", "600".into()),
        ],
    );
    ua.send(&first).await;
    let challenged = ua.final_response().await.unwrap();
    assert_eq!(challenged.status(), Some(401));
    let (h, v) = ua.answer(&challenged, "SHA-256", "SUBSCRIBE", uri);
    let second = ua.request(
        "SUBSCRIBE",
        uri,
        &[
            ("Event", "message-summary".into()),
            ("Expires", "600".into()),
            (&h, v),
        ],
    );
    ua.send(&second).await;
    let ok = ua.final_response().await.unwrap();
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert_eq!(ok.header("Expires"), Some("600"));
    // At once: the counts as they are (none).
    let notify = ua.recv().await.expect("a NOTIFY");
    assert_eq!(notify.method(), Some("NOTIFY"));
    assert_eq!(notify.header("Event"), Some("message-summary"));
    let body = String::from_utf8(notify.body.clone()).unwrap();
    assert!(
        body.contains("Messages-Waiting: no") && body.contains("Voice-Message: 0/0"),
        "{body}"
    );
    ua.send(&notify.response(200, "OK", None)).await;
    // A plugin sets Alice's counts: her device hears them.
    let set =
        r.h.post(
            "acme",
            "callflow",
            "u",
            &format!("/mwi/{}/2/1", r.alice_id),
            b"",
        )
        .await;
    assert_eq!(ok_json(set)["set"], true);
    let notify = ua.recv().await.expect("a NOTIFY after set-mwi");
    let body = String::from_utf8(notify.body.clone()).unwrap();
    assert!(
        body.contains("Messages-Waiting: yes") && body.contains("Voice-Message: 2/1"),
        "{body}"
    );
    assert!(
        notify
            .header("Subscription-State")
            .unwrap()
            .starts_with("active;expires=")
    );
    ua.send(&notify.response(200, "OK", None)).await;
    // Another tenant's plugin setting counts for the same user id, or
    // another user's counts: nothing reaches Alice's device.
    let set =
        r.h.post(
            "globex",
            "callflow",
            "u",
            &format!("/mwi/{}/9/9", r.alice_id),
            b"",
        )
        .await;
    assert_eq!(ok_json(set)["set"], true);
    let set =
        r.h.post(
            "acme",
            "callflow",
            "u",
            &format!("/mwi/{}/5/5", r.bob_id),
            b"",
        )
        .await;
    assert_eq!(ok_json(set)["set"], true);
    assert!(ua.recv_within(Duration::from_millis(500)).await.is_none());
    // Registering again brings the counts once more.
    assert_eq!(ua.register("SHA-256", 600).await.status(), Some(200));
    let notify = ua.recv().await.expect("a NOTIFY after REGISTER");
    assert!(String::from_utf8_lossy(&notify.body).contains("Voice-Message: 2/1"));
}

/// The SDP attribute line starting with `prefix`, if any.
fn sdp_line<'a>(sdp: &'a str, prefix: &str) -> Option<&'a str> {
    sdp.lines().find(|l| l.starts_with(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_reinvite_holds_and_rekeys_and_a_bad_one_changes_nothing() {
    let r = rig().await;
    let mut ua = r.alice().await;
    assert_eq!(ua.register("SHA-256", 600).await.status(), Some(200));
    let (inv, ok) = invite(&mut ua, "100", &offer(40_030, true)).await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    ua.send(&ack(&inv, &ok)).await;
    let leg = r.only_leg("acme").await;
    r.wait_event("acme", &leg, "offered:answer").await;
    let first = String::from_utf8(ok.body.clone()).unwrap();
    // Hold: the phone re-offers sendonly (a new port, a new key).
    let held = offer(40_032, true).replace(
        "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIz",
    ) + "a=sendonly\r\n";
    let mut re = in_dialog(&mut ua, "INVITE", &inv, &ok);
    re.push("Content-Type", "application/sdp");
    re.body = held.into_bytes();
    let fixed = re;
    ua.send(&fixed).await;
    let ok2 = ua.final_response().await.unwrap();
    assert_eq!(ok2.status(), Some(200), "{ok2:?}");
    let second = String::from_utf8(ok2.body.clone()).unwrap();
    assert!(
        second.contains("a=recvonly"),
        "the answer mirrors hold: {second}"
    );
    assert_eq!(
        sdp_line(&first, "m=audio"),
        sdp_line(&second, "m=audio"),
        "same port and codec"
    );
    assert_ne!(
        sdp_line(&first, "a=crypto"),
        sdp_line(&second, "a=crypto"),
        "a fresh key of ours"
    );
    let version = |sdp: &str| {
        sdp_line(sdp, "o=")
            .and_then(|o| o.split(' ').nth(2))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    assert_eq!(version(&second), version(&first) + 1);
    ua.send(&ack(&fixed, &ok2)).await;
    // An offer with nothing acceptable (no G.711) and one without SRTP:
    // 488, the call goes on as it was.
    for body in [
        offer(40_034, true).replace("0 101", "18 101"),
        offer(40_034, false),
    ] {
        let mut bad = in_dialog(&mut ua, "INVITE", &inv, &ok);
        bad.push("Content-Type", "application/sdp");
        bad.body = body.into_bytes();
        ua.send(&bad).await;
        let refused = ua.final_response().await.unwrap();
        assert_eq!(refused.status(), Some(488), "{refused:?}");
    }
    // An old CSeq is not taken; another device's connection finds no call.
    let mut stale = in_dialog(&mut ua, "INVITE", &inv, &ok);
    stale.headers.retain(|(n, _)| n != "CSeq");
    stale.push("CSeq", "1 INVITE");
    stale.push("Content-Type", "application/sdp");
    stale.body = offer(40_036, true).into_bytes();
    ua.send(&stale).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(491));
    let mut bob = r.bob().await;
    assert_eq!(bob.register("SHA-256", 600).await.status(), Some(200));
    let mut forged = in_dialog(&mut ua, "INVITE", &inv, &ok);
    forged.push("Content-Type", "application/sdp");
    forged.body = offer(40_038, true).into_bytes();
    bob.send(&forged).await;
    assert_eq!(bob.final_response().await.unwrap().status(), Some(481));
    // Held once (sendonly), and nothing else: still up. (Events reach the
    // plugin on their own: wait for the one expected, then compare all.)
    r.wait_event("acme", &leg, "held").await;
    assert_eq!(
        r.events("acme", &leg).await,
        ["offered:answer", "held"],
        "still up"
    );
    let bye = in_dialog(&mut ua, "BYE", &inv, &ok);
    ua.send(&bye).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(200));
    r.wait_event("acme", &leg, "ended:normal").await;
}

/// The next request of `method` the door sends the phone (answered 200,
/// as a phone would), skipping anything else; `None` after 5 s.
async fn next_request(ua: &mut Ua, method: &str) -> Option<Message> {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < end {
        let m = ua.recv_within(Duration::from_millis(500)).await?;
        if m.method() == Some(method) {
            let ok = m.response(200, "OK", None);
            ua.send(&ok).await;
            return Some(m);
        }
    }
    None
}

fn sipfrag(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_refer_is_accepted_reported_and_settled_by_the_plugin() {
    let r = rig().await;
    let mut ua = r.alice().await;
    assert_eq!(ua.register("SHA-256", 600).await.status(), Some(200));
    let (inv, ok) = invite(&mut ua, "100", &offer(40_050, true)).await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let refer = |ua: &mut Ua, to: &[&str]| {
        let mut m = in_dialog(ua, "REFER", &inv, &ok);
        for t in to {
            m.push("Refer-To", *t);
        }
        m
    };
    // Before the ACK the call is not up: 491.
    let early = refer(&mut ua, &["<sip:201@acme.localhost>"]);
    ua.send(&early).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(491));
    ua.send(&ack(&inv, &ok)).await;
    let leg = r.only_leg("acme").await;
    r.wait_event("acme", &leg, "offered:answer").await;
    // Malformed or unsupported requests: the right answer, nothing else.
    for (to, status) in [
        (vec![], 400),
        (
            vec!["<sip:201@acme.localhost>", "<sip:202@acme.localhost>"],
            400,
        ),
        (
            vec!["<sip:201@acme.localhost?Replaces=abc%3Bto-tag%3D1%3Bfrom-tag%3D2>"],
            403,
        ),
        (vec!["<sip:bob@evil.example>"], 404),
        (vec!["<mailto:x@y>"], 400),
    ] {
        let m = refer(&mut ua, &to);
        ua.send(&m).await;
        let got = ua.final_response().await.unwrap();
        assert_eq!(got.status(), Some(status), "{to:?}: {got:?}");
    }
    // Another device's connection finds no call.
    let mut bob = r.bob().await;
    assert_eq!(bob.register("SHA-256", 600).await.status(), Some(200));
    let forged = refer(&mut ua, &["<sip:201@acme.localhost>"]);
    bob.send(&forged).await;
    assert_eq!(bob.final_response().await.unwrap().status(), Some(481));
    // Declined by the plugin (callflow declines 9…): 202, "100 Trying",
    // then the failure; the call stays up.
    let m = refer(&mut ua, &["<sip:9-0207-946-0018@acme.localhost>"]);
    ua.send(&m).await;
    let accepted = ua.final_response().await.unwrap();
    assert_eq!(accepted.status(), Some(202), "{accepted:?}");
    let refer_cseq = m.cseq().unwrap().0;
    let trying = next_request(&mut ua, "NOTIFY").await.expect("a NOTIFY");
    assert_eq!(sipfrag(&trying), "SIP/2.0 100 Trying");
    assert_eq!(
        trying.header("Event"),
        Some(format!("refer;id={refer_cseq}").as_str())
    );
    assert!(
        trying
            .header("Subscription-State")
            .unwrap()
            .starts_with("active")
    );
    assert!(
        trying
            .header("Content-Type")
            .unwrap()
            .starts_with("message/sipfrag")
    );
    let failed = next_request(&mut ua, "NOTIFY")
        .await
        .expect("a final NOTIFY");
    assert_eq!(sipfrag(&failed), "SIP/2.0 403 Forbidden");
    assert!(
        failed
            .header("Subscription-State")
            .unwrap()
            .starts_with("terminated")
    );
    r.wait_event("acme", &leg, "transfer:902079460018").await;
    // Taken: the plugin ends the leg; the phone hears 200 OK, then BYE.
    let m = refer(&mut ua, &["sip:201@acme.localhost"]);
    ua.send(&m).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(202));
    let trying = next_request(&mut ua, "NOTIFY").await.expect("a NOTIFY");
    assert_eq!(sipfrag(&trying), "SIP/2.0 100 Trying");
    let done = next_request(&mut ua, "NOTIFY")
        .await
        .expect("a final NOTIFY");
    assert_eq!(sipfrag(&done), "SIP/2.0 200 OK");
    assert!(
        done.header("Subscription-State")
            .unwrap()
            .starts_with("terminated")
    );
    let bye = next_request(&mut ua, "BYE").await.expect("the BYE");
    assert_eq!(bye.call_id(), inv.call_id());
    let events = r.wait_event("acme", &leg, "ended:normal").await;
    assert!(events.contains(&"transfer:201".to_string()), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_an_attended_transfer_names_the_phones_other_call_and_settles_both() {
    let r = rig().await;
    let mut ua = r.alice().await;
    assert_eq!(ua.register("SHA-256", 600).await.status(), Some(200));
    let (inv1, ok1) = invite(&mut ua, "100", &offer(40_060, true)).await;
    ua.send(&ack(&inv1, &ok1)).await;
    // A second call: its own Call-ID and tag; then back to the first's
    // for the REFERs sent in it.
    let first = (ua.call_id.clone(), ua.tag.clone());
    ua.call_id = format!("{}@test", switchboard::support::encoding::random_hex(8));
    ua.tag = switchboard::support::encoding::random_hex(4);
    let (inv2, ok2) = invite(&mut ua, "100", &offer(40_062, true)).await;
    assert_eq!(ok2.status(), Some(200), "{ok2:?}");
    ua.send(&ack(&inv2, &ok2)).await;
    (ua.call_id, ua.tag) = first;
    let tag = |h: Option<&str>| {
        h.and_then(|v| v.split(";tag=").nth(1))
            .map(|t| t.split(';').next().unwrap().to_string())
            .unwrap()
    };
    let (mine, theirs) = (tag(inv2.header("From")), tag(ok2.header("To")));
    let replaces = |call_id: &str| {
        format!(
            "<sip:100@acme.localhost?Replaces={}%3Bto-tag%3D{theirs}%3Bfrom-tag%3D{mine}>",
            call_id.replace('@', "%40")
        )
    };
    // Unknown calls, and a Replaces without its tags, are refused.
    for (to, status) in [
        (replaces("nosuchcall"), 403),
        (
            format!("<sip:100@acme.localhost?Replaces={}>", inv2.call_id()),
            400,
        ),
        ("<sip:100@acme.localhost?Subject=hi>".to_string(), 400),
    ] {
        let mut m = in_dialog(&mut ua, "REFER", &inv1, &ok1);
        m.push("Refer-To", to.clone());
        ua.send(&m).await;
        let got = ua.final_response().await.unwrap();
        assert_eq!(got.status(), Some(status), "{to}: {got:?}");
    }
    // Naming the other call: accepted, and the plugin (callflow ends
    // both) settles it: the first call hears 200 OK, then both get BYE.
    let mut m = in_dialog(&mut ua, "REFER", &inv1, &ok1);
    m.push("Refer-To", replaces(inv2.call_id()));
    ua.send(&m).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(202));
    let trying = next_request(&mut ua, "NOTIFY").await.expect("a NOTIFY");
    assert_eq!(sipfrag(&trying), "SIP/2.0 100 Trying");
    assert_eq!(trying.call_id(), inv1.call_id());
    let mut byes = Vec::new();
    let mut done = None;
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while (done.is_none() || byes.len() < 2) && std::time::Instant::now() < end {
        let Some(req) = ua.recv_within(Duration::from_millis(500)).await else {
            continue;
        };
        match req.method() {
            Some("NOTIFY") => done = Some(sipfrag(&req)),
            Some("BYE") => byes.push(req.call_id().to_string()),
            _ => continue,
        }
        let ok = req.response(200, "OK", None);
        ua.send(&ok).await;
    }
    assert_eq!(done.as_deref(), Some("SIP/2.0 200 OK"));
    byes.sort();
    let mut want = vec![inv1.call_id().to_string(), inv2.call_id().to_string()];
    want.sort();
    assert_eq!(byes, want, "both calls end");
}

/// The final response to the request with CSeq `cseq` (over UDP the door
/// sends its answers to earlier requests again until they are ACKed).
async fn final_for(ua: &mut Ua, cseq: u32) -> Message {
    loop {
        let m = ua.final_response().await.expect("an answer");
        if m.cseq().map(|(n, _)| n) == Ok(cseq) {
            return m;
        }
    }
}

/// An INVITE for `number` with `sdp` over UDP or TCP: challenged (the 407
/// ACKed), sent again with the answer; the INVITE and its final answer.
async fn plain_invite(ua: &mut Ua, number: &str, sdp: &str) -> (Message, Message) {
    let uri = format!("sip:{number}@{}", ua.domain);
    let body = sdp_headers(sdp);
    let first = ua.request("INVITE", &uri, &body);
    ua.send(&first).await;
    let challenged = final_for(ua, first.cseq().unwrap().0).await;
    assert_eq!(challenged.status(), Some(407), "{challenged:?}");
    ua.send(&ack(&first, &challenged)).await;
    let (h, v) = ua.answer(&challenged, "SHA-256", "INVITE", &uri);
    let mut extra = body.clone();
    extra.insert(0, (h.as_str(), v));
    let second = ua.request("INVITE", &uri, &extra);
    ua.send(&second).await;
    let answer = final_for(ua, second.cseq().unwrap().0).await;
    ua.send(&ack(&second, &answer)).await;
    (second, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_device_allowed_udp_and_tcp_registers_and_calls_there_with_plain_rtp_only() {
    let r = rig().await;
    let added = console(
        &r.h,
        Op::DeviceAdd {
            tenant: "acme".into(),
            name: "old-phone".into(),
            user: "bob".into(),
            udp: true,
        },
    )
    .await;
    let password = added["password"].as_str().unwrap().to_string();
    for tcp in [false, true] {
        let mut ua = Ua::connect_plain(r.udp, tcp, "old-phone", "acme.localhost", &password).await;
        let ok = ua.register("MD5", 600).await;
        assert_eq!(ok.status(), Some(200), "tcp {tcp}: {ok:?}");
        // SDES keys in clear are refused; plain RTP is taken and
        // answered with plain RTP (no key of ours in clear either).
        let (_, refused) = plain_invite(&mut ua, "100", &offer(40_100, true)).await;
        assert_keys_in_clear_refused(&refused);
        let (invite, answered) = plain_invite(&mut ua, "100", &offer(40_102, false)).await;
        assert_eq!(answered.status(), Some(200), "tcp {tcp}: {answered:?}");
        let body = String::from_utf8_lossy(&answered.body).to_string();
        assert!(
            body.contains("RTP/AVP") && !body.contains("a=crypto"),
            "{body}"
        );
        let bye = in_dialog(&mut ua, "BYE", &invite, &answered);
        ua.send(&bye).await;
        assert_eq!(
            final_for(&mut ua, bye.cseq().unwrap().0).await.status(),
            Some(200)
        );
        // A call the host places to it goes there, offering no key.
        let dialled = ok_json(
            r.h.post("acme", "callflow", "u", "/dial/device%3Aold-phone", b"")
                .await,
        );
        assert!(dialled["leg"].is_string(), "{dialled}");
        let rung = incoming(&mut ua, "INVITE", "an INVITE to the phone").await;
        let offered = String::from_utf8_lossy(&rung.body).to_string();
        assert!(
            offered.contains("RTP/AVP") && !offered.contains("a=crypto"),
            "tcp {tcp}: {offered}"
        );
        ua.send(&rung.response(486, "Busy Here", Some("busy")))
            .await;
    }
    // Registered over UDP, subscribed to message waiting there, and
    // ringing there when its admins turn UDP/TCP off.
    let mut ua = Ua::connect_plain(r.udp, false, "old-phone", "acme.localhost", &password).await;
    assert_eq!(ua.register("MD5", 600).await.status(), Some(200));
    let uri = "sip:old-phone@acme.localhost";
    let mwi = [
        ("Event", "message-summary".to_string()),
        ("Expires", "600".to_string()),
    ];
    let first = ua.request("SUBSCRIBE", uri, &mwi);
    ua.send(&first).await;
    let challenged = ua.final_response().await.unwrap();
    let (h, v) = ua.answer(&challenged, "MD5", "SUBSCRIBE", uri);
    let signed = ua.request("SUBSCRIBE", uri, &[mwi[0].clone(), mwi[1].clone(), (&h, v)]);
    ua.send(&signed).await;
    assert_eq!(ua.final_response().await.unwrap().status(), Some(200));
    let notify = ua.recv().await.expect("the first NOTIFY");
    assert_eq!(notify.method(), Some("NOTIFY"));
    ua.send(&notify.response(200, "OK", None)).await;
    // The phone is registered over TLS too: a call to it rings it on
    // both (it would ring for 30 s).
    let mut over_tls = Ua::connect(r.sip, "old-phone", "acme.localhost", &password).await;
    assert_eq!(over_tls.register("SHA-256", 600).await.status(), Some(200));
    let ringing = ring_old_phone(&r).await;
    let rung = incoming(&mut ua, "INVITE", "an INVITE to the phone").await;
    let rung_tls = incoming(&mut over_tls, "INVITE", "an INVITE over TLS").await;
    ua.send(&rung.response(180, "Ringing", Some("ring"))).await;
    r.wait_event("acme", &ringing, "ringing").await;
    let set_udp = |udp: bool| Op::DeviceUdp {
        tenant: "acme".into(),
        name: "old-phone".into(),
        udp,
    };
    assert_eq!(console(&r.h, set_udp(false)).await["device"]["udp"], false);
    // The call ringing it over UDP is cancelled there...
    let cancelled = incoming(&mut ua, "CANCEL", "a CANCEL").await;
    assert_eq!(cancelled.call_id(), rung.call_id());
    ua.send(&cancelled.response(200, "OK", None)).await;
    // ...and an answer it sends anyway is acknowledged and hung up: it
    // cannot take the call any more.
    answer_too_late(&mut ua, &rung, "ring", 40_300).await;
    // Over TLS it rings on; declined there, the call ends, never answered.
    over_tls
        .send(&rung_tls.response(486, "Busy Here", Some("tls")))
        .await;
    let log = r.wait_event("acme", &ringing, "ended:busy").await;
    assert!(!log.iter().any(|e| e == "answered"), "{log:?}");
    let acked = over_tls.recv().await.expect("the ACK of the 486");
    assert_eq!(acked.method(), Some("ACK"));
    assert_eq!(over_tls.register("SHA-256", 0).await.status(), Some(200));
    // ...and message waiting no longer reaches it there.
    ok_json(
        r.h.post(
            "acme",
            "callflow",
            "u",
            &format!("/mwi/{}/2/0", r.bob_id),
            b"",
        )
        .await,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Some(m) = ua
        .recv_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        // (A NOTIFY sent before, when the phone registered over TLS,
        // may still be resent: the new counts never come.)
        let body = String::from_utf8_lossy(&m.body).to_string();
        assert!(!body.contains("Voice-Message: 2/0"), "{m:?}");
    }
    // What it held over UDP/TCP is gone at once: a call to it finds no
    // registration.
    let dialled = ok_json(
        r.h.post("acme", "callflow", "u", "/dial/device%3Aold-phone", b"")
            .await,
    );
    let leg = dialled["leg"].as_str().expect("a leg").to_string();
    r.wait_event("acme", &leg, "ended:unavailable").await;
    let mut ua = Ua::connect_plain(r.udp, false, "old-phone", "acme.localhost", &password).await;
    assert_eq!(ua.register("MD5", 600).await.status(), Some(403));
    console(&r.h, set_udp(true)).await;
    let mut ua = Ua::connect_plain(r.udp, false, "old-phone", "acme.localhost", &password).await;
    assert_eq!(ua.register("MD5", 600).await.status(), Some(200));
    // A call it makes over TLS stays SRTP: a re-INVITE of that call sent
    // over its UDP registration, offering plain RTP, is refused.
    let mut tls = Ua::connect(r.sip, "old-phone", "acme.localhost", &password).await;
    let (inv, ok) = invite(&mut tls, "100", &offer(40_110, true)).await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    tls.send(&ack(&inv, &ok)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut moved = in_dialog(&mut tls, "INVITE", &inv, &ok);
    moved.push("Content-Type", "application/sdp");
    moved.body = offer(40_112, false).into_bytes();
    ua.send(&moved).await;
    let refused = final_for(&mut ua, moved.cseq().unwrap().0).await;
    assert_eq!(refused.status(), Some(488), "{refused:?}");
    // A device its admins did not allow UDP/TCP, with its right password
    // there: refused exactly like a wrong one, and audited.
    let mut alice =
        Ua::connect_plain(r.udp, false, "alice-desk", "acme.localhost", &r.password).await;
    let refused = alice.register("MD5", 600).await;
    let mut wrong = Ua::connect_plain(
        r.udp,
        false,
        "alice-desk",
        "acme.localhost",
        "not-the-password",
    )
    .await;
    let wrong = wrong.register("MD5", 600).await;
    assert_eq!(refused.status(), Some(403), "{refused:?}");
    assert_eq!(shape(&refused), shape(&wrong));
    assert!(
        r.audits("sip.auth")
            .iter()
            .any(|e| e.details.contains("UDP/TCP is off")),
        "audited"
    );
    // Rung over UDP only when its UDP goes off: the call ends at once, and
    // an answer crossing the CANCEL is still acknowledged and hung up.
    let mut only = Ua::connect_plain(r.udp, false, "old-phone", "acme.localhost", &password).await;
    assert_eq!(only.register("MD5", 600).await.status(), Some(200));
    let leg = ring_old_phone(&r).await;
    let rung = incoming(&mut only, "INVITE", "an INVITE to the phone").await;
    only.send(&rung.response(180, "Ringing", Some("one"))).await;
    r.wait_event("acme", &leg, "ringing").await;
    console(&r.h, set_udp(false)).await;
    r.wait_event("acme", &leg, "ended:no-answer").await;
    answer_too_late(&mut only, &rung, "one", 40_310).await;
}

/// The next request `method` that reaches `ua` (others skipped).
async fn incoming(ua: &mut Ua, method: &str, what: &str) -> Message {
    loop {
        let m = ua.recv().await.expect(what);
        if m.method() == Some(method) {
            return m;
        }
    }
}

/// A call the plugin places to the device `old-phone`, ringing up to
/// 30 s; its leg.
async fn ring_old_phone(r: &Rig) -> String {
    let dialled = ok_json(
        r.h.post(
            "acme",
            "callflow",
            "u",
            "/dial/device%3Aold-phone?ring=30000",
            b"",
        )
        .await,
    );
    dialled["leg"].as_str().expect("a leg").to_string()
}

/// Answers `rung` (plain RTP at `port`) after the door gave it up: the
/// door must acknowledge the answer and hang up at once.
async fn answer_too_late(ua: &mut Ua, rung: &Message, tag: &str, port: u16) {
    let mut late = rung.response(200, "OK", Some(tag));
    late.push("Contact", format!("<sip:old-phone@{}>", ua.local));
    late.push("Content-Type", "application/sdp");
    late.body = offer(port, false).into_bytes();
    ua.send(&late).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|m| m == "BYE") {
        let m = ua.recv().await.expect("the door's ACK and BYE");
        if let Some(method) = m.method() {
            if method == "BYE" {
                ua.send(&m.response(200, "OK", None)).await;
            }
            seen.push(method.to_string());
        }
    }
    assert!(seen.iter().any(|m| m == "ACK"), "{seen:?}");
}

/// Sends `count` INVITEs from `source` (a loopback address) to the door's
/// UDP port as fast as it can, each a new call from an unknown caller;
/// returns the statuses of what came back until a second of quiet, and
/// how long it all took.
async fn flood_invites(door: SocketAddr, source: &str, count: usize) -> (Vec<u16>, Duration) {
    let ip: std::net::IpAddr = source.parse().unwrap();
    let socket = tokio::net::UdpSocket::bind((ip, 0)).await.unwrap();
    let local = socket.local_addr().unwrap();
    let started = std::time::Instant::now();
    let sdp = offer(41_000, false);
    for i in 0..count {
        let m = format!(
            "INVITE sip:100@acme.localhost SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKflood{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:intruder{i}@acme.localhost>;tag=f{i}\r\n\
             To: <sip:100@acme.localhost>\r\nCall-ID: flood-{i}@{local}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:intruder@{local}>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        socket.send_to(m.as_bytes(), door).await.unwrap();
    }
    let mut statuses = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await
    {
        if let Ok(m) = Message::parse(&buf[..n]) {
            statuses.push(m.status().unwrap_or(0));
        }
    }
    (statuses, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_invite_and_register_floods_get_bounded_answers_and_the_door_keeps_serving() {
    let r = rig().await;
    // INVITE floods from unknown addresses over UDP, and a REGISTER flood
    // over one TLS connection, while Alice's phone registers and calls.
    let floods: Vec<_> = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
        .into_iter()
        .map(|source| tokio::spawn(flood_invites(r.udp, source, 400)))
        .collect();
    let sip = r.sip;
    let registers = tokio::spawn(async move {
        let mut ua = Ua::connect_from(
            sip,
            "127.0.0.31".parse().unwrap(),
            "mallory",
            "acme.localhost",
            "guess",
        )
        .await;
        for _ in 0..500 {
            let m = ua.request("REGISTER", "sip:acme.localhost", &[]);
            ua.send(&m).await;
        }
        let mut statuses = Vec::new();
        while let Some(m) = ua.recv_within(Duration::from_secs(1)).await {
            statuses.push(m.status().unwrap_or(0));
        }
        statuses
    });
    let mut ua = r.alice().await;
    assert_eq!(ua.register("SHA-256", 600).await.status(), Some(200));
    let (inv, ok) = invite(&mut ua, "100", &offer(40_200, true)).await;
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    ua.send(&ack(&inv, &ok)).await;
    let leg = r.only_leg("acme").await;
    r.wait_event("acme", &leg, "offered:answer").await;
    let bye = in_dialog(&mut ua, "BYE", &inv, &ok);
    ua.send(&bye).await;
    assert_eq!(
        final_for(&mut ua, bye.cseq().unwrap().0).await.status(),
        Some(200)
    );
    r.wait_event("acme", &leg, "ended:normal").await;
    // Each flooding address drew at most its rate of answers (a burst of
    // 40, then 20 a second: the door reflects no more at a forged
    // address), each a challenge sent once (stateless), never a call.
    for flood in floods {
        let (statuses, took) = flood.await.unwrap();
        let bound = 40 + 20 * (took.as_secs() as usize + 1);
        let finals = statuses.iter().filter(|s| **s >= 200).count();
        assert!(finals > 0, "the first were challenged");
        assert!(finals <= bound, "{finals} answers in {took:?}");
        assert!(
            statuses.iter().all(|s| matches!(s, 100 | 401 | 407)),
            "{statuses:?}"
        );
    }
    // The REGISTER flood drew challenges only, and registered nothing.
    let statuses = registers.await.unwrap();
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 401),
        "{:?}",
        &statuses[..5.min(statuses.len())]
    );
    // Nothing of the floods reached the plugin: Alice's call was its one
    // leg; the rate drops are counted.
    assert_eq!(r.legs("acme").await, [leg]);
    assert!(
        switchboard::metrics::render()
            .contains("switchboard_sip_dropped_total{reason=\"device_rate\"}")
    );
    // And the door still answers Alice.
    assert_eq!(ua.register("SHA-256", 600).await.status(), Some(200));
}
