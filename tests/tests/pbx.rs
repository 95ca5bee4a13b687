//! The bundled `pbx` plugin over the real kernel, call control and media
//! engine, with the harness's synthetic signalling standing in for SIP
//! (issue 20): blind transfer (a phone's REFER), outside calls with
//! account codes, forwarding to an extension. The same flows with real
//! phones are in `phones.rs`. SPEC T1, T2, V5.

use std::time::Duration;

use switchboard::admin::Op;
use switchboard::call::legs::{Cause, LegSnapshot};
use switchboard::harness::Harness;
use switchboard::harness::calls::{CallRig, Phone, Signal};
use switchboard::runtime::Method;
use switchboard::tenant::{Dialing, Limits, Restriction, Route};
use switchboard_tests::accounts::{console, create_user};
use switchboard_tests::{harness, tenant};

const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    h: Harness,
    rig: CallRig,
    alice: String,
    bob: String,
    carol: String,
}

async fn rig(dialing: Dialing) -> Rig {
    let h = harness(&["pbx", "callflow"]).await;
    tenant(&h, "acme", Limits::default(), &["pbx", "callflow"]).await;
    let mut ids = Vec::new();
    for u in ["alice", "bob", "carol"] {
        ids.push(create_user(&h, "acme", u, "user").await.0);
    }
    let route = |number: &str, args: &str| Route {
        number: number.into(),
        plugin: "pbx".into(),
        args: args.into(),
    };
    console(
        &h,
        Op::RoutesSet {
            tenant: "acme".into(),
            routes: vec![
                route("201", "bob"),
                route("202", "carol"),
                route("_9.", "outside"),
                // Another plugin's number (a stand-in for voicemail).
                Route {
                    number: "800".into(),
                    plugin: "callflow".into(),
                    args: "answer".into(),
                },
            ],
        },
    )
    .await;
    h.runtime().set_dialing("acme", dialing).await.unwrap();
    let rig = CallRig::start(h.runtime());
    Rig {
        h,
        rig,
        alice: ids[0].clone(),
        bob: ids[1].clone(),
        carol: ids[2].clone(),
    }
}

impl Rig {
    fn leg(&self, id: &str) -> Option<LegSnapshot> {
        self.h.runtime().telephony().lookup("acme", "pbx", id)
    }

    /// The leg the plugin dialled to `to`, once it did.
    async fn dialled(&self, to: &str) -> String {
        let signals = self
            .rig
            .wait_for(WAIT, |s| {
                s.iter()
                    .any(|x| matches!(x, Signal::Dialled(_, n) if n == to))
            })
            .await
            .unwrap();
        signals
            .iter()
            .rev()
            .find_map(|x| match x {
                Signal::Dialled(l, n) if n == to => Some(l.clone()),
                _ => None,
            })
            .unwrap()
    }

    /// Waits until legs `a` and `b` are bridged with each other.
    async fn bridged(&self, a: &str, b: &str) {
        let end = std::time::Instant::now() + WAIT;
        loop {
            let ab = self.leg(a).and_then(|l| l.bridged_with);
            let ba = self.leg(b).and_then(|l| l.bridged_with);
            if ab.as_deref() == Some(b) && ba.as_deref() == Some(a) {
                return;
            }
            assert!(std::time::Instant::now() < end, "{a} and {b} not bridged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ended(&self, leg: &str) -> Cause {
        let signals = self
            .rig
            .wait_for(WAIT, |s| {
                s.iter()
                    .any(|x| matches!(x, Signal::Ended(l, _) if l == leg))
            })
            .await
            .unwrap();
        signals
            .iter()
            .find_map(|x| match x {
                Signal::Ended(l, c) if l == leg => Some(*c),
                _ => None,
            })
            .unwrap()
    }

    /// Alice's phone calls `number`, routed to pbx with `args`.
    async fn alice_calls(&self, number: &str, args: &str, phone: &mut Phone) -> String {
        let leg = self
            .rig
            .ring_from(
                Some(&self.alice),
                "acme",
                "pbx",
                "alice-desk",
                number,
                args.as_bytes(),
                phone,
            )
            .await
            .unwrap();
        self.rig
            .wait_for(WAIT, |s| s.contains(&Signal::Answered(leg.clone())))
            .await
            .unwrap();
        leg
    }
}

/// A desk restriction: national calls, forwards out, no transfers out.
fn desk() -> Dialing {
    Dialing {
        region: Some("GB".into()),
        outside_line: Some("9".into()),
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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_a_blind_transfer_rings_the_target_and_bridges_the_caller_with_it() {
    let r = rig(desk()).await;
    let (mut alice, bob, carol) = (
        Phone::new().unwrap(),
        Phone::new().unwrap(),
        Phone::new().unwrap(),
    );
    r.rig.directory(&format!("user:{}", r.bob), &bob).unwrap();
    r.rig
        .directory(&format!("user:{}", r.carol), &carol)
        .unwrap();
    let a = r.alice_calls("201", "bob", &mut alice).await;
    let b = r.dialled(&format!("user:{}", r.bob)).await;
    r.bridged(&a, &b).await;
    // The callee's phone shows Alice, not a user id.
    assert_eq!(r.leg(&b).unwrap().caller, "alice-desk");
    // Bob transfers Alice out of the tenant: his restriction has no
    // transfer_external, so the plugin declines and the call goes on.
    r.rig.transfer(&b, "902079460018").await.unwrap();
    r.rig
        .wait_for(WAIT, |s| {
            s.contains(&Signal::TransferFailed(b.clone(), Cause::Restricted))
        })
        .await
        .unwrap();
    assert_eq!(r.leg(&b).and_then(|l| l.bridged_with), Some(a.clone()));
    // An extension nobody has is declined too (a mistyped target must
    // not drop Alice).
    r.rig.transfer(&b, "299").await.unwrap();
    r.rig
        .wait_for(WAIT, |s| {
            s.contains(&Signal::TransferFailed(b.clone(), Cause::Unavailable))
        })
        .await
        .unwrap();
    assert_eq!(r.leg(&b).and_then(|l| l.bridged_with), Some(a.clone()));
    // To Carol's extension: Bob's leg ends (his phone hears it went
    // through), Carol is rung as a user showing Alice, and bridged with
    // Alice when she answers.
    r.rig.transfer(&b, "202").await.unwrap();
    assert_eq!(r.ended(&b).await, Cause::Normal);
    // It went through: no failure after the two declines above.
    let failures = r
        .rig
        .signals()
        .iter()
        .filter(|x| matches!(x, Signal::TransferFailed(l, _) if *l == b))
        .count();
    assert_eq!(failures, 2);
    let c = r.dialled(&format!("user:{}", r.carol)).await;
    r.bridged(&a, &c).await;
    assert_eq!(r.leg(&c).unwrap().caller, "alice-desk");
    // Media flows Alice → Carol through the new bridge.
    for _ in 0..10 {
        alice.send_audio(&[0x42; 160]).unwrap();
    }
    assert_eq!(
        carol.next_audio(Duration::from_secs(2), 0),
        Some(vec![0x42; 160])
    );
    // Carol hangs up: Alice's call ends with hers.
    r.rig.hang_up(&c);
    assert_eq!(r.ended(&a).await, Cause::Normal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_an_outside_call_asks_for_an_account_code_when_the_policy_wants_one() {
    let r = rig(Dialing {
        account_codes: vec!["4711".into()],
        account_code_classes: vec!["mobile".into()],
        ..desk()
    })
    .await;
    let mobile = Phone::new().unwrap();
    let london = Phone::new().unwrap();
    r.rig.directory("+447400123456", &mobile).unwrap();
    r.rig.directory("+442079460018", &london).unwrap();
    // A national number goes straight out, for Alice, showing her.
    let mut alice = Phone::new().unwrap();
    let a = r.alice_calls("902079460018", "outside", &mut alice).await;
    let out = r.dialled("+442079460018").await;
    r.bridged(&a, &out).await;
    r.rig.hang_up(&a);
    assert_eq!(r.ended(&out).await, Cause::Normal);
    // A mobile number needs a code: the caller keys it in, then it goes.
    let mut alice = Phone::new().unwrap();
    let a = r.alice_calls("907400123456", "outside", &mut alice).await;
    // The prompt plays ("please enter your account code").
    assert!(alice.next_audio(Duration::from_secs(2), 0).is_some());
    alice.dial_keys("4711#").unwrap();
    let out = r.dialled("+447400123456").await;
    r.bridged(&a, &out).await;
    r.rig.hang_up(&out);
    assert_eq!(r.ended(&a).await, Cause::Normal);
    let mut record = None;
    for _ in 0..200 {
        let page =
            r.h.runtime()
                .call_records("acme", 0, u64::MAX, None, 100)
                .unwrap();
        record = page.records.into_iter().find(|c| c.leg == out);
        if record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let record = record.expect("the call out's record");
    assert_eq!(record.account_code.as_deref(), Some("4711"), "{record:?}");
    // A wrong code: refused, told so, hung up; nothing dialled.
    let mut alice = Phone::new().unwrap();
    let a = r.alice_calls("907400123456", "outside", &mut alice).await;
    assert!(alice.next_audio(Duration::from_secs(2), 0).is_some());
    alice.dial_keys("1111#").unwrap();
    assert_eq!(r.ended(&a).await, Cause::Restricted);
    let dialled = r
        .rig
        .signals()
        .iter()
        .filter(|s| matches!(s, Signal::Dialled(_, n) if n == "+447400123456"))
        .count();
    assert_eq!(dialled, 1, "only the call with the right code went out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_forward_to_an_extension_rings_that_user() {
    let r = rig(desk()).await;
    let carol = Phone::new().unwrap();
    r.rig
        .directory(&format!("user:{}", r.carol), &carol)
        .unwrap();
    // Bob forwards everything to Carol's extension.
    let set =
        r.h.call(
            "acme",
            "pbx",
            &r.bob,
            Method::Put,
            "/forward",
            br#"{"always": "202"}"#,
        )
        .await
        .unwrap();
    assert_eq!(set.status, 200);
    let mut alice = Phone::new().unwrap();
    let a = r.alice_calls("201", "bob", &mut alice).await;
    let c = r.dialled(&format!("user:{}", r.carol)).await;
    r.bridged(&a, &c).await;
    r.rig.hang_up(&a);
    assert_eq!(r.ended(&c).await, Cause::Normal);
}

/// The events callflow logged for `leg`, once `want` is among them.
async fn callflow_events(h: &Harness, leg: &str, want: &str) -> Vec<String> {
    let end = std::time::Instant::now() + WAIT;
    loop {
        let r = h
            .get("acme", "callflow", "u", &format!("/events/{leg}"))
            .await
            .unwrap();
        let got: Vec<String> = serde_json::from_value(r.json().unwrap()).unwrap();
        if got.iter().any(|e| e == want) {
            return got;
        }
        assert!(std::time::Instant::now() < end, "no {want} in {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_a_forward_or_transfer_to_another_plugins_number_hands_the_caller_over() {
    let r = rig(desk()).await;
    let bob = Phone::new().unwrap();
    r.rig.directory(&format!("user:{}", r.bob), &bob).unwrap();
    // Carol forwards everything to 800 (callflow, standing in for
    // voicemail): Alice's call is handed to it, answered as it was.
    let set =
        r.h.call(
            "acme",
            "pbx",
            &r.carol,
            Method::Put,
            "/forward",
            br#"{"always": "800"}"#,
        )
        .await
        .unwrap();
    assert_eq!(set.status, 200);
    let mut alice = Phone::new().unwrap();
    let a = r.alice_calls("202", "carol", &mut alice).await;
    let got = callflow_events(&r.h, &a, "offered:answer").await;
    assert_eq!(
        got,
        ["offered:answer"],
        "callflow hears the leg from its offer"
    );
    let snap =
        r.h.runtime()
            .telephony()
            .lookup("acme", "callflow", &a)
            .unwrap();
    assert_eq!(snap.caller, "alice-desk");
    // pbx no longer finds it, exactly as an unknown leg.
    assert!(r.leg(&a).is_none());
    // callflow's leg hangs up like any other.
    r.rig.hang_up(&a);
    callflow_events(&r.h, &a, "ended:normal").await;
    // Bob, in a call with Alice, transfers her to 800: his leg ends (the
    // transfer went through), hers goes to callflow.
    let mut alice = Phone::new().unwrap();
    let a = r.alice_calls("201", "bob", &mut alice).await;
    let b = r.dialled(&format!("user:{}", r.bob)).await;
    r.bridged(&a, &b).await;
    r.rig.transfer(&b, "800").await.unwrap();
    assert_eq!(r.ended(&b).await, Cause::Normal);
    let got = callflow_events(&r.h, &a, "offered:answer").await;
    assert_eq!(got, ["offered:answer"]);
    assert!(
        !r.rig
            .signals()
            .iter()
            .any(|x| matches!(x, Signal::TransferFailed(l, _) if *l == b)),
        "the transfer went through"
    );
    r.rig.hang_up(&a);
    callflow_events(&r.h, &a, "ended:normal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_an_attended_transfer_connects_the_phones_two_other_parties() {
    let r = rig(desk()).await;
    let (bob, carol) = (Phone::new().unwrap(), Phone::new().unwrap());
    r.rig.directory(&format!("user:{}", r.bob), &bob).unwrap();
    r.rig
        .directory(&format!("user:{}", r.carol), &carol)
        .unwrap();
    // Alice calls Bob; Bob (on his phone, the same user) calls Carol.
    let mut alice = Phone::new().unwrap();
    let a = r.alice_calls("201", "bob", &mut alice).await;
    let b = r.dialled(&format!("user:{}", r.bob)).await;
    r.bridged(&a, &b).await;
    let mut bob2 = Phone::new().unwrap();
    let b2 = r
        .rig
        .ring_from(
            Some(&r.bob),
            "acme",
            "pbx",
            "bob-desk",
            "202",
            b"carol",
            &mut bob2,
        )
        .await
        .unwrap();
    let c = r.dialled(&format!("user:{}", r.carol)).await;
    r.bridged(&b2, &c).await;
    // Bob joins Alice and Carol and leaves both calls.
    r.rig.transfer_attended(&b, &b2).await.unwrap();
    assert_eq!(r.ended(&b).await, Cause::Normal);
    assert_eq!(r.ended(&b2).await, Cause::Normal);
    r.bridged(&a, &c).await;
    for _ in 0..10 {
        alice.send_audio(&[0x37; 160]).unwrap();
    }
    assert_eq!(
        carol.next_audio(Duration::from_secs(2), 0),
        Some(vec![0x37; 160])
    );
    assert!(
        !r.rig
            .signals()
            .iter()
            .any(|x| matches!(x, Signal::TransferFailed(..))),
        "{:?}",
        r.rig.signals()
    );
    // Either hanging up ends the other.
    r.rig.hang_up(&c);
    assert_eq!(r.ended(&a).await, Cause::Normal);
    // Two legs of different plugins (or the same leg twice) are no pair.
    assert!(r.rig.transfer_attended(&a, &a).await.is_err());
}
