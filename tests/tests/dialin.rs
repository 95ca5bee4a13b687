//! Phone callers dialling into meetings (issue 21): the bundled `meetings`
//! plugin's own telephony side over the real kernel, call control and
//! media engine, with the harness's synthetic signalling standing in for
//! SIP. What a caller hears is checked frame for frame against the prompt
//! library. SPEC M2 (the code, throttled), M6 (PSTN participants), M9
//! (the recording announced).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::admin::Op;
use switchboard::audit::Scope;
use switchboard::call::types::{Principal, Request};
use switchboard::harness::Harness;
use switchboard::harness::calls::{CallRig, Phone, Signal};
use switchboard::media::g711;
use switchboard::runtime::Method;
use switchboard::tenant::{Limits, Route};
use switchboard_tests::accounts::{console, create_user};
use switchboard_tests::{harness, ivr, tenant};

const WAIT: Duration = Duration::from_secs(15);

/// The tenant's dial-in number.
const DIAL_IN: &str = "+442079461000";

struct World {
    h: Harness,
    rig: CallRig,
    olga: String,
}

async fn world() -> World {
    let plugins = ["chat", "recording", "meetings"];
    let h = harness(&plugins).await;
    tenant(&h, "acme", Limits::default(), &plugins).await;
    let olga = create_user(&h, "acme", "olga", "user").await.0;
    create_user(&h, "acme", "ivan", "user").await;
    console(
        &h,
        Op::RoutesSet {
            tenant: "acme".into(),
            routes: vec![Route {
                number: DIAL_IN.into(),
                plugin: "meetings".into(),
                args: "dial-in".into(),
            }],
        },
    )
    .await;
    World {
        rig: CallRig::start(h.runtime()),
        h,
        olga,
    }
}

impl World {
    /// Olga's request to the meetings plugin: (status, body).
    async fn olga(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let request = Request::new(method, path, Principal::user("acme", &self.olga)).with_body(
            if body.is_null() {
                Vec::new()
            } else {
                body.to_string().into_bytes()
            },
        );
        let r = self
            .h
            .runtime()
            .handle("acme", "meetings", request)
            .await
            .unwrap();
        (r.status, r.json().unwrap_or(Value::Null))
    }

    /// A space of Olga's: (space id, code).
    async fn space(&self) -> (String, String) {
        let (status, s) = self
            .olga(
                Method::Post,
                "/spaces",
                json!({ "title": "Weekly", "invitees": ["ivan"] }),
            )
            .await;
        assert_eq!(status, 201, "{s}");
        (
            s["id"].as_str().unwrap().into(),
            s["code"].as_str().unwrap().into(),
        )
    }

    /// A phone from `number` dials in.
    async fn dial_in(&self, number: &str, phone: &mut Phone) -> String {
        self.rig
            .ring("acme", "meetings", number, DIAL_IN, b"dial-in", phone)
            .await
            .unwrap()
    }

    /// The session's present participants of kind `pstn`: (id, name).
    async fn phones(&self, lid: &str) -> Vec<(String, String)> {
        let (status, live) = self
            .olga(Method::Get, &format!("/live/{lid}"), Value::Null)
            .await;
        assert_eq!(status, 200, "{live}");
        live["participants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "pstn")
            .map(|p| {
                (
                    p["id"].as_str().unwrap().into(),
                    p["name"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    async fn ended(&self, leg: &str) {
        self.rig
            .wait_for(WAIT, |s| {
                s.iter()
                    .any(|x| matches!(x, Signal::Ended(l, _) if l == leg))
            })
            .await
            .unwrap();
    }

    /// Waits until the session's phone bridge holds `n` callers.
    async fn bridged(&self, lid: &str, n: usize) {
        let end = Instant::now() + WAIT;
        let room = format!("live-{lid}");
        while self
            .h
            .runtime()
            .telephony()
            .room_members("acme", "meetings", &room)
            != n
        {
            assert!(Instant::now() < end, "the bridge never held {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m6_m9_phone_callers_dial_in_with_the_code_share_a_bridge_and_hear_the_recording() {
    let w = world().await;
    let (sid, code) = w.space().await;
    // No session yet: the caller is told so.
    let mut early = Phone::new().unwrap();
    let leg = w.dial_in("+447400999000", &mut early).await;
    ivr::answer(&mut early, "enter-access-code", &format!("{code}#")).await;
    assert!(ivr::hears(&early, "meeting-not-started").await);
    w.ended(&leg).await;
    let (status, live) = w
        .olga(Method::Post, &format!("/spaces/{sid}/live"), Value::Null)
        .await;
    assert_eq!(status, 201, "{live}");
    let lid = live["id"].as_str().unwrap().to_string();
    // A: a wrong code first (counted and audited like the web's), then
    // the right one; in the roster as "Phone …1222", never the number.
    let mut a = Phone::new().unwrap();
    let a_leg = w.dial_in("+447400111222", &mut a).await;
    ivr::answer(&mut a, "enter-access-code", "123456789#").await;
    ivr::answer(&mut a, "invalid", "").await;
    ivr::answer(&mut a, "enter-access-code", &format!("{code}#")).await;
    assert!(ivr::hears(&a, "joining-meeting").await);
    w.bridged(&lid, 1).await;
    let phones = w.phones(&lid).await;
    assert_eq!(phones.len(), 1, "{phones:?}");
    assert_eq!(phones[0].1, "Phone …1222");
    let guesses: Vec<_> =
        w.h.runtime()
            .audit_log()
            .entries(&Scope::tenant("acme"), 0, 1000)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "meeting.code.guess")
            .collect();
    assert_eq!(guesses.len(), 1, "{guesses:?}");
    assert!(
        guesses[0].details.contains("phone +447400111222"),
        "{guesses:?}"
    );
    // B joins: the two hear each other in the phone bridge.
    let mut b = Phone::new().unwrap();
    let b_leg = w.dial_in("+447400333444", &mut b).await;
    ivr::answer(&mut b, "enter-access-code", &format!("{code}#")).await;
    w.bridged(&lid, 2).await;
    let loud = g711::linear_to_ulaw(8000);
    let end = Instant::now() + WAIT;
    loop {
        a.send_audio(&[loud; 160]).unwrap();
        let heard = tokio::task::block_in_place(|| b.listen(Duration::from_millis(40), 0));
        if heard
            .iter()
            .any(|f| f.iter().filter(|&&c| c == loud).count() > 100)
        {
            break;
        }
        assert!(Instant::now() < end, "B never heard A");
    }
    // Olga starts recording: both callers hear it, then are back in.
    let (status, rec) = w
        .olga(Method::Post, &format!("/live/{lid}/recording"), Value::Null)
        .await;
    assert_eq!(status, 201, "{rec}");
    assert!(ivr::hears(&a, "recording-started").await);
    assert!(ivr::hears(&b, "recording-started").await);
    w.bridged(&lid, 2).await;
    // C, dialling in while it records, is told on joining.
    let mut c = Phone::new().unwrap();
    let c_leg = w.dial_in("+447400555666", &mut c).await;
    ivr::answer(&mut c, "enter-access-code", &format!("{code}#")).await;
    assert!(ivr::hears(&c, "joining-meeting").await);
    assert!(ivr::hears(&c, "recording-on").await);
    w.bridged(&lid, 3).await;
    // Olga removes B: B's call ends. A hangs up: A leaves the roster.
    let phones = w.phones(&lid).await;
    let b_id = &phones.iter().find(|p| p.1 == "Phone …3444").unwrap().0;
    let (status, body) = w
        .olga(
            Method::Post,
            &format!("/live/{lid}/participants/{b_id}/remove"),
            Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    w.ended(&b_leg).await;
    w.rig.hang_up(&a_leg);
    let end = Instant::now() + WAIT;
    while w.phones(&lid).await.len() != 1 {
        assert!(Instant::now() < end, "A never left the roster");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ending the session hangs up whoever is still on the phone.
    let (status, body) = w
        .olga(Method::Post, &format!("/live/{lid}/end"), Value::Null)
        .await;
    assert_eq!(status, 200, "{body}");
    w.ended(&c_leg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m2_a_calling_number_that_keeps_guessing_is_turned_away() {
    let w = world().await;
    let (sid, code) = w.space().await;
    let (status, live) = w
        .olga(Method::Post, &format!("/spaces/{sid}/live"), Value::Null)
        .await;
    assert_eq!(status, 201);
    let lid = live["id"].as_str().unwrap().to_string();
    // Ten wrong codes from one number (three calls of three, one more):
    // the eleventh attempt, even with the right code, is turned away.
    let mut wrong = 0;
    while wrong < 10 {
        let mut phone = Phone::new().unwrap();
        let leg = w.dial_in("+447400777888", &mut phone).await;
        for _ in 0..3 {
            if wrong == 10 {
                break;
            }
            ivr::answer(&mut phone, "enter-access-code", "111111111#").await;
            wrong += 1;
        }
        w.rig.hang_up(&leg);
    }
    let mut phone = Phone::new().unwrap();
    let leg = w.dial_in("+447400777888", &mut phone).await;
    ivr::answer(&mut phone, "enter-access-code", &format!("{code}#")).await;
    assert!(ivr::hears(&phone, "too-many-attempts").await);
    w.ended(&leg).await;
    // Another number with the right code is let in.
    let mut phone = Phone::new().unwrap();
    let leg = w.dial_in("+447400777999", &mut phone).await;
    ivr::answer(&mut phone, "enter-access-code", &format!("{code}#")).await;
    assert!(ivr::hears(&phone, "joining-meeting").await);
    w.rig.hang_up(&leg);
    // A caller who hangs up the moment the code is keyed leaves no ghost
    // in the roster (nor a place in the bridge).
    let mut phone = Phone::new().unwrap();
    let leg = w.dial_in("+447400777000", &mut phone).await;
    ivr::answer(&mut phone, "enter-access-code", &format!("{code}#")).await;
    w.rig.hang_up(&leg);
    let end = Instant::now() + WAIT;
    while !w.phones(&lid).await.is_empty() {
        assert!(Instant::now() < end, "a caller who hung up is still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
