//! The bundled `voicemail` plugin over the real kernel, call control and
//! media engine, with the harness's synthetic signalling standing in for
//! SIP and the `pbx` plugin diverting calls to it (issue 21). What a
//! caller hears is checked frame for frame against the prompt library.
//! SPEC V1 (mailbox, PIN), V2 (greetings), V3 (deposit, listening, web),
//! V5 (divert), K4 (isolation).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::admin::Op;
use switchboard::audit::Scope;
use switchboard::call::types::{Kind, Principal, Request, Response, Role};
use switchboard::harness::Harness;
use switchboard::harness::calls::{CallRig, Phone, Signal};
use switchboard::media::g711;
use switchboard::runtime::Method;
use switchboard::tenant::{Limits, Route};
use switchboard_tests::accounts::{console, create_user, plugin_config};
use switchboard_tests::{harness, ivr, tenant};

const WAIT: Duration = Duration::from_secs(15);

const PIN: &str = "480276";

struct Vm {
    h: Harness,
    rig: CallRig,
    alice: String,
    bob: String,
    carol: String,
    /// globex's user.
    gina: String,
}

async fn config(h: &Harness, name: &str, set: Value) {
    plugin_config(h, "acme", name, set).await;
}

/// acme with pbx (calls nobody answers go to 800), voicemail on 800 and
/// callflow; Bob's mailbox is 201 (phone +15551234567), Carol's 202.
/// globex has the same plugins and a user of its own.
async fn vm(vm_config: Value) -> Vm {
    let plugins = ["pbx", "voicemail", "callflow"];
    let h = harness(&plugins).await;
    tenant(&h, "acme", Limits::default(), &plugins).await;
    tenant(&h, "globex", Limits::default(), &plugins).await;
    let gina = create_user(&h, "globex", "gina", "user").await.0;
    config(&h, "pbx", json!({ "voicemail": "800", "ring-seconds": 5 })).await;
    config(&h, "voicemail", vm_config).await;
    let mut ids = Vec::new();
    for u in ["alice", "bob", "carol"] {
        ids.push(create_user(&h, "acme", u, "user").await.0);
    }
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
                route("201", "pbx", "bob"),
                route("202", "pbx", "carol"),
                route("800", "voicemail", ""),
            ],
        },
    )
    .await;
    let v = Vm {
        rig: CallRig::start(h.runtime()),
        h,
        alice: ids[0].clone(),
        bob: ids[1].clone(),
        carol: ids[2].clone(),
        gina,
    };
    let set = v
        .admin(
            Method::Put,
            "/admin/mailboxes/bob",
            json!({ "number": "201", "phone": "+15551234567" }),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    let set = v
        .admin(
            Method::Put,
            "/admin/mailboxes/carol",
            json!({ "number": "202" }),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.text());
    v
}

impl Vm {
    /// A request to acme's voicemail as `principal`.
    async fn as_principal(
        &self,
        principal: Principal,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Response {
        let request = Request::new(method, path, principal).with_body(body);
        self.h
            .runtime()
            .handle("acme", "voicemail", request)
            .await
            .unwrap()
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Response {
        let admin = Principal {
            role: Role::TenantAdmin,
            ..Principal::user("acme", "the-admin")
        };
        self.as_principal(admin, method, path, body.to_string().into_bytes())
            .await
    }

    async fn user(&self, user: &str, method: Method, path: &str, body: &[u8]) -> Response {
        self.as_principal(Principal::user("acme", user), method, path, body.to_vec())
            .await
    }

    async fn messages(&self, user: &str) -> Vec<Value> {
        let r = self.user(user, Method::Get, "/messages", b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().unwrap()["messages"].as_array().unwrap().clone()
    }

    /// `phone` (Alice's desk, or a caller from outside with `user` none)
    /// calls `number` routed to `plugin` with `args`; the leg.
    async fn call(
        &self,
        user: Option<&str>,
        plugin: &str,
        number: &str,
        args: &str,
        phone: &mut Phone,
    ) -> String {
        let caller = if user.is_some() {
            "alice-desk"
        } else {
            "+442079460123"
        };
        self.rig
            .ring_from(user, "acme", plugin, caller, number, args.as_bytes(), phone)
            .await
            .unwrap()
    }

    /// Bob uploads a temporary greeting (1.2 s at level 2000) that
    /// expires `ms` from now.
    async fn temporary_greeting(&self, ms: u64) -> (Response, u64) {
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + ms;
        let path = format!("/greetings/temporary?until_ms={until}");
        let wav = ivr::wav(8000, 1, 1200, 2000);
        let r = self.user(&self.bob, Method::Put, &path, &wav).await;
        (r, until)
    }

    /// A caller from outside diverted to Bob's mailbox (as busy, through
    /// the callflow fixture); the leg.
    async fn diverted_to_bob(&self, phone: &mut Phone) -> String {
        let args = format!("divert:800:{}", self.bob);
        self.call(None, "callflow", "100", &args, phone).await
    }

    /// Bob's own registered phone calls voicemail (800); the leg.
    async fn bob_calls_in(&self, phone: &mut Phone) -> String {
        self.rig
            .ring_from(
                Some(&self.bob),
                "acme",
                "voicemail",
                "bob-desk",
                "800",
                b"",
                phone,
            )
            .await
            .unwrap()
    }

    /// Waits until the leg ended (hung up by the plugin or the phone).
    async fn ended(&self, leg: &str) {
        self.rig
            .wait_for(WAIT, |s| {
                s.iter()
                    .any(|x| matches!(x, Signal::Ended(l, _) if l == leg))
            })
            .await
            .unwrap();
    }

    /// Alice calls Bob (201), nobody answers, and she reaches his
    /// voicemail: she skips the greeting with `*`, talks for `frames`
    /// 20 ms frames and presses `#`, then `urgent` (or nothing) at the
    /// urgency question.
    async fn leave_message(&self, frames: usize, urgent: Option<char>) -> String {
        let mut alice = Phone::new().unwrap();
        let leg = self
            .call(Some(&self.alice), "pbx", "201", "bob", &mut alice)
            .await;
        assert!(
            ivr::hears(&alice, "is-unavailable").await,
            "the system greeting"
        );
        alice.press('*').unwrap();
        assert!(
            ivr::hears(&alice, "beep").await,
            "the beep, never a PIN prompt"
        );
        talk(&mut alice, g711::linear_to_ulaw(6000), frames).await;
        alice.press('#').unwrap();
        assert!(ivr::hears(&alice, "urgent-option").await);
        if let Some(k) = urgent {
            alice.press(k).unwrap();
        }
        assert!(ivr::hears(&alice, "message-saved").await);
        self.ended(&leg).await;
        leg
    }
}

/// Sends `frames` 20 ms frames of one µ-law code, paced in real time.
async fn talk(phone: &mut Phone, code: u8, frames: usize) {
    for _ in 0..frames {
        phone.send_audio(&[code; 160]).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn audits(h: &Harness, action: &str) -> Vec<switchboard::audit::Entry> {
    h.runtime()
        .audit_log()
        .entries(&Scope::tenant("acme"), 0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.action.ends_with(action))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_a_call_nobody_answers_leaves_a_message_the_owner_alone_can_reach() {
    let v = vm(json!({})).await;
    let mut stream =
        v.h.runtime()
            .events()
            .subscribe("acme", &v.bob, None)
            .unwrap();
    v.leave_message(100, Some('1')).await;
    // One message: from Alice's desk (the host vouches for her), urgent,
    // about 2 s, new and unheard; Bob's phones show one new message.
    let list = v.messages(&v.bob).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let m = &list[0];
    assert_eq!(m["from"], "alice-desk");
    assert_eq!(m["from_user"], v.alice.as_str());
    assert_eq!(m["urgent"], true);
    assert_eq!(m["folder"], "new");
    assert_eq!(m["heard"], false);
    assert!(m.get("blob").is_none(), "the blob id stays inside: {m}");
    let ms = m["ms"].as_u64().unwrap();
    assert!((1500..=2600).contains(&ms), "{ms} ms");
    assert_eq!(v.h.runtime().mwi_counts("acme", &v.bob), (1, 0));
    let mut kinds = Vec::new();
    while let Ok(d) = stream.rx.try_recv() {
        let f: Value = serde_json::from_str(&d.frame).unwrap();
        kinds.push(f["kind"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        kinds.contains(&"voicemail.message".to_string()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"voicemail.changed".to_string()),
        "{kinds:?}"
    );
    // The audio, as an attachment that is never sniffed or rendered.
    let id = m["id"].as_str().unwrap().to_string();
    let audio = v
        .user(&v.bob, Method::Get, &format!("/messages/{id}/audio"), b"")
        .await;
    assert_eq!(audio.status, 200);
    assert_eq!(header(&audio, "content-type"), Some("audio/wav"));
    assert!(
        header(&audio, "content-disposition")
            .unwrap()
            .starts_with("attachment;")
    );
    assert_eq!(header(&audio, "x-content-type-options"), Some("nosniff"));
    assert!(
        header(&audio, "content-security-policy")
            .unwrap()
            .contains("sandbox")
    );
    let pcm: Vec<i16> = audio.body[44..]
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let loud = pcm
        .iter()
        .filter(|s| (5000..7000).contains(&s.abs()))
        .count();
    assert!(
        loud > pcm.len() / 2,
        "what Alice said: {loud} of {}",
        pcm.len()
    );
    // Nobody else reaches it: Alice, another tenant's same id, a guest.
    for path in [format!("/messages/{id}"), format!("/messages/{id}/audio")] {
        let r = v.user(&v.alice, Method::Get, &path, b"").await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    let theirs =
        v.h.runtime()
            .handle(
                "globex",
                "voicemail",
                Request::new(Method::Get, "/messages", Principal::user("globex", &v.bob)),
            )
            .await
            .unwrap();
    assert_eq!(theirs.json().unwrap()["messages"], json!([]));
    let guest = Principal {
        kind: Kind::Guest,
        role: Role::Guest,
        ..Principal::user("acme", &v.bob)
    };
    let r = v
        .as_principal(guest, Method::Get, "/messages", Vec::new())
        .await;
    assert_eq!(r.status, 403);
    // Heard, moved, and the hostile cases, each leaving it as it was.
    let r = v
        .user(&v.bob, Method::Post, &format!("/messages/{id}/heard"), b"")
        .await;
    assert_eq!(r.json().unwrap()["heard"], true);
    assert_eq!(v.h.runtime().mwi_counts("acme", &v.bob), (0, 1));
    for (path, body, status, code) in [
        (
            format!("/messages/{id}/move"),
            &br#"{"folder":"trash"}"#[..],
            400,
            "invalid_folder",
        ),
        (format!("/messages/{id}/move"), b"{", 400, "invalid_json"),
        (
            format!("/messages/{id}/move"),
            br#"{"folder":"saved","x":1}"#,
            400,
            "invalid_json",
        ),
        (
            "/messages/..%2f..%2fbox/move".to_string(),
            br#"{"folder":"saved"}"#,
            400,
            "invalid_id",
        ),
        (
            format!("/messages/{id}/forward"),
            br#"{"to":"999"}"#,
            404,
            "not_found",
        ),
        (
            format!("/messages/{id}/forward"),
            br#"{"to":"201"}"#,
            400,
            "same_mailbox",
        ),
    ] {
        let r = v.user(&v.bob, Method::Post, &path, body).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.json().unwrap()["code"], code, "{path}");
    }
    let r = v
        .user(
            &v.bob,
            Method::Post,
            &format!("/messages/{id}/move"),
            br#"{"folder":"saved"}"#,
        )
        .await;
    assert_eq!(r.json().unwrap()["folder"], "saved");
    // Forwarded to Carol: a copy of her own, new and unheard.
    let r = v
        .user(
            &v.bob,
            Method::Post,
            &format!("/messages/{id}/forward"),
            br#"{"to":"202"}"#,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let hers = v.messages(&v.carol).await;
    assert_eq!(hers.len(), 1);
    assert_eq!(hers[0]["forwarded_by"], v.bob.as_str());
    assert_eq!(hers[0]["heard"], false);
    assert_ne!(hers[0]["id"], id.as_str());
    assert_eq!(v.h.runtime().mwi_counts("acme", &v.carol), (1, 0));
    // Deleted: gone, its audio with it; Carol's copy stays.
    let r = v
        .user(&v.bob, Method::Delete, &format!("/messages/{id}"), b"")
        .await;
    assert_eq!(r.status, 204);
    assert!(v.messages(&v.bob).await.is_empty());
    let r = v
        .user(&v.bob, Method::Get, &format!("/messages/{id}/audio"), b"")
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(v.h.runtime().mwi_counts("acme", &v.bob), (0, 0));
    let carols = hers[0]["id"].as_str().unwrap();
    let r = v
        .user(
            &v.carol,
            Method::Get,
            &format!("/messages/{carols}/audio"),
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_a_message_under_a_second_is_not_kept_and_keys_never_reach_a_mailbox() {
    let v = vm(json!({})).await;
    // Bob's own unavailable greeting: uploaded at 16 kHz stereo, kept as
    // 8 kHz mono. A caller hears it (not the system's) and no key
    // pressed while leaving a message leads to a PIN prompt.
    let r = v
        .user(
            &v.bob,
            Method::Put,
            "/greetings/unavailable",
            &ivr::wav(16_000, 2, 1500, 4000),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!((1450..=1550).contains(&r.json().unwrap()["ms"].as_u64().unwrap()));
    let mut alice = Phone::new().unwrap();
    let leg = v
        .call(Some(&v.alice), "pbx", "201", "bob", &mut alice)
        .await;
    assert!(
        ivr::hears_level(&alice, 4000, WAIT).await,
        "Bob's own greeting never played"
    );
    alice.dial_keys("*9*").unwrap();
    assert!(ivr::hears(&alice, "beep").await);
    tokio::task::block_in_place(|| alice.dial_keys("*0")).unwrap();
    alice.press('#').unwrap();
    // Everything the caller hears from here to the end of the call: the
    // keys were part of the message, and nothing but "too short" and
    // goodbye answers them.
    let heard = tokio::task::block_in_place(|| alice.listen(Duration::from_secs(5), 0));
    let first = |name: &str| ivr::first_frame(name);
    assert!(heard.contains(&first("message-too-short")));
    for p in ["enter-mailbox", "enter-pin", "pin-wrong", "voicemail-menu"] {
        assert!(!heard.contains(&first(p)), "{p} was played");
    }
    v.ended(&leg).await;
    assert!(v.messages(&v.bob).await.is_empty(), "nothing kept");
    assert_eq!(v.h.runtime().mwi_counts("acme", &v.bob), (0, 0));
    // A caller who says nothing: silence (2 s from now on) ends the
    // recording, and a recording of silence is no message.
    config(&v.h, "voicemail", json!({ "silence-seconds": 2 })).await;
    let mut alice = Phone::new().unwrap();
    let leg = v
        .call(Some(&v.alice), "pbx", "201", "bob", &mut alice)
        .await;
    alice.press('1').unwrap();
    assert!(ivr::hears(&alice, "beep").await);
    talk(&mut alice, 0xff, 150).await;
    assert!(ivr::hears(&alice, "message-too-short").await);
    v.ended(&leg).await;
    assert!(v.messages(&v.bob).await.is_empty(), "silence kept nothing");
    // A caller who talks and hangs up: what was said is kept.
    let mut alice = Phone::new().unwrap();
    let leg = v
        .call(Some(&v.alice), "pbx", "201", "bob", &mut alice)
        .await;
    alice.press('1').unwrap();
    assert!(ivr::hears(&alice, "beep").await);
    talk(&mut alice, g711::linear_to_ulaw(6000), 75).await;
    v.rig.hang_up(&leg);
    let end = Instant::now() + WAIT;
    let list = loop {
        let list = v.messages(&v.bob).await;
        if !list.is_empty() || Instant::now() > end {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list.len(), 1, "kept on hang-up");
    assert!(list[0]["ms"].as_u64().unwrap() >= 1000, "{list:?}");
    assert_eq!(list[0]["urgent"], false);
    // Bob's storage is full: a caller hears so and nothing is kept.
    console(
        &v.h,
        Op::TenantLimitsSet {
            id: "acme".into(),
            set: json!({ "owner_storage_bytes": 1024 })
                .as_object()
                .cloned()
                .unwrap(),
        },
    )
    .await;
    let mut alice = Phone::new().unwrap();
    let leg = v
        .call(Some(&v.alice), "pbx", "201", "bob", &mut alice)
        .await;
    alice.press('1').unwrap();
    assert!(ivr::hears(&alice, "beep").await);
    talk(&mut alice, g711::linear_to_ulaw(6000), 75).await;
    alice.press('#').unwrap();
    assert!(ivr::hears(&alice, "mailbox-full").await);
    v.ended(&leg).await;
    assert_eq!(v.messages(&v.bob).await.len(), 1, "no second message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_pins_are_refused_when_trivial_and_wrong_ones_lock_the_mailbox_audited() {
    let v = vm(json!({ "lock-after": 3 })).await;
    for (pin, code) in [
        ("111111", "pin_trivial"),
        ("121212", "pin_trivial"),
        ("123456", "pin_trivial"),
        ("654321", "pin_trivial"),
        ("890123", "pin_trivial"),
        ("720155", "pin_trivial"), // has the mailbox number, 201
        ("551234", "pin_trivial"), // part of +15551234567
        ("48027", "pin_format"),
        ("48o276", "pin_format"),
        ("48027648027648027", "pin_format"),
    ] {
        let body = json!({ "pin": pin }).to_string();
        let r = v.user(&v.bob, Method::Put, "/pin", body.as_bytes()).await;
        assert_eq!(r.status, 400, "{pin}: {}", r.text());
        assert_eq!(r.json().unwrap()["code"], code, "{pin}");
    }
    let mailbox = v.user(&v.bob, Method::Get, "/mailbox", b"").await;
    assert_eq!(mailbox.json().unwrap()["has_pin"], false);
    let body = json!({ "pin": PIN }).to_string();
    let r = v.user(&v.bob, Method::Put, "/pin", body.as_bytes()).await;
    assert_eq!(r.status, 204, "{}", r.text());
    // A caller from outside: mailbox 201, three wrong PINs: locked, and
    // it sounds like one more wrong PIN (the caller learns nothing).
    let mut caller = Phone::new().unwrap();
    let leg = v.call(None, "voicemail", "800", "", &mut caller).await;
    for pin in ["000001#", "000002#", "000003#"] {
        ivr::answer(&mut caller, "enter-mailbox", "201#").await;
        ivr::answer(&mut caller, "enter-pin", pin).await;
        assert!(ivr::hears(&caller, "pin-wrong").await);
    }
    assert!(ivr::hears(&caller, "goodbye").await);
    v.ended(&leg).await;
    let locks = audits(&v.h, "voicemail.lockout");
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(locks[0].target, v.bob);
    assert!(locks[0].details.contains("+442079460123"), "{:?}", locks[0]);
    // Locked: even the right PIN is turned away (and audited).
    let mut caller = Phone::new().unwrap();
    let leg = v.call(None, "voicemail", "800", "", &mut caller).await;
    ivr::answer(&mut caller, "enter-mailbox", "201#").await;
    ivr::answer(&mut caller, "enter-pin", &format!("{PIN}#")).await;
    assert!(ivr::hears(&caller, "pin-wrong").await);
    v.rig.hang_up(&leg);
    let refused = audits(&v.h, "voicemail.pin");
    assert!(
        refused
            .iter()
            .any(|e| e.outcome == "denied" && e.details.contains("locked")),
        "{refused:?}"
    );
    // A non-admin cannot unlock; the admin can, and it is audited.
    let r = v
        .user(&v.bob, Method::Post, "/admin/mailboxes/bob/unlock", b"")
        .await;
    assert_eq!(r.status, 403);
    let r = v
        .admin(Method::Post, "/admin/mailboxes/bob/unlock", json!({}))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(audits(&v.h, "voicemail.unlock").len(), 1);
    // An unknown mailbox sounds exactly like a wrong PIN; then the right
    // one opens the mailbox.
    let mut caller = Phone::new().unwrap();
    let leg = v.call(None, "voicemail", "800", "", &mut caller).await;
    ivr::answer(&mut caller, "enter-mailbox", "299#").await;
    ivr::answer(&mut caller, "enter-pin", &format!("{PIN}#")).await;
    assert!(ivr::hears(&caller, "pin-wrong").await);
    ivr::answer(&mut caller, "enter-mailbox", "201#").await;
    ivr::answer(&mut caller, "enter-pin", &format!("{PIN}#")).await;
    assert!(ivr::hears(&caller, "no-messages").await);
    ivr::answer(&mut caller, "voicemail-menu", "*").await;
    assert!(ivr::hears(&caller, "goodbye").await);
    v.ended(&leg).await;
    // Hanging up right after a wrong PIN does not escape the count: three
    // such calls lock the mailbox again.
    for pin in ["000004#", "000005#", "000006#"] {
        let mut caller = Phone::new().unwrap();
        let leg = v.call(None, "voicemail", "800", "", &mut caller).await;
        ivr::answer(&mut caller, "enter-mailbox", "201#").await;
        ivr::answer(&mut caller, "enter-pin", pin).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        v.rig.hang_up(&leg);
    }
    let end = Instant::now() + WAIT;
    while audits(&v.h, "voicemail.lockout").len() < 2 {
        assert!(Instant::now() < end, "the hang-ups escaped the lockout");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The admin's mailbox settings refuse what is wrong.
    for (path, body, status, code) in [
        (
            "/admin/mailboxes/carol",
            json!({ "number": "201" }),
            409,
            "number_taken",
        ),
        (
            "/admin/mailboxes/carol",
            json!({ "number": "20a" }),
            400,
            "invalid_number",
        ),
        (
            "/admin/mailboxes/carol",
            json!({ "phone": "555-1234" }),
            400,
            "invalid_phone",
        ),
        (
            "/admin/mailboxes/nobody",
            json!({ "number": "209" }),
            404,
            "not_found",
        ),
        (
            "/admin/mailboxes/carol",
            json!({ "number": "209", "pin": "1" }),
            400,
            "invalid_json",
        ),
    ] {
        let r = v.admin(Method::Put, path, body).await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.json().unwrap()["code"], code);
    }
    let r = v.admin(Method::Get, "/admin/mailboxes", json!({})).await;
    let boxes = r.json().unwrap()["mailboxes"].clone();
    let text = boxes.to_string();
    assert!(!text.contains(PIN), "no PIN in the listing: {text}");
    assert!(text.contains("\"has_pin\":true"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_the_owner_listens_from_their_own_phone_saves_forwards_and_deletes() {
    let v = vm(json!({})).await;
    v.leave_message(100, None).await;
    // Bob calls 800 from his own registered phone: no PIN asked.
    let mut bob = Phone::new().unwrap();
    let leg = v.bob_calls_in(&mut bob).await;
    assert!(
        ivr::hears(&bob, "new-message").await,
        "you have one new message"
    );
    ivr::answer(&mut bob, "voicemail-menu", "1").await;
    // The message plays, then the menu: save it (2).
    ivr::answer(&mut bob, "message-menu", "2").await;
    assert!(ivr::hears(&bob, "message-kept").await);
    ivr::answer(&mut bob, "voicemail-menu", "2").await;
    // In saved now: forward it to Carol (9, 202#), then delete it (7).
    ivr::answer(&mut bob, "message-menu", "9").await;
    ivr::answer(&mut bob, "enter-destination", "202#").await;
    assert!(ivr::hears(&bob, "message-forwarded").await);
    ivr::answer(&mut bob, "message-menu", "7").await;
    assert!(ivr::hears(&bob, "message-deleted").await);
    assert!(ivr::hears(&bob, "no-more-messages").await);
    ivr::answer(&mut bob, "voicemail-menu", "*").await;
    v.ended(&leg).await;
    assert!(v.messages(&v.bob).await.is_empty());
    assert_eq!(v.h.runtime().mwi_counts("acme", &v.bob), (0, 0));
    let hers = v.messages(&v.carol).await;
    assert_eq!(hers.len(), 1, "{hers:?}");
    assert_eq!(hers[0]["forwarded_by"], v.bob.as_str());
    assert_eq!(v.h.runtime().mwi_counts("acme", &v.carol), (1, 0));
    // Someone else's phone gets the sign-in, not Bob's mailbox.
    let mut alice = Phone::new().unwrap();
    let leg = v
        .call(Some(&v.alice), "voicemail", "800", "", &mut alice)
        .await;
    assert!(
        ivr::hears(&alice, "no-messages").await,
        "Alice's own mailbox"
    );
    v.rig.hang_up(&leg);
    // A tenant that wants the PIN from every phone: Bob's own phone is
    // asked for the mailbox number like any other.
    config(
        &v.h,
        "voicemail",
        json!({ "own-device-without-pin": false }),
    )
    .await;
    let mut bob = Phone::new().unwrap();
    let leg = v.bob_calls_in(&mut bob).await;
    assert!(ivr::hears(&bob, "enter-mailbox").await, "the PIN is asked");
    v.rig.hang_up(&leg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_greetings_upload_checked_converted_and_a_diversion_names_the_tenants_users_only() {
    let v = vm(json!({ "max-greeting-seconds": 5 })).await;
    let put = |kind: &'static str, body: Vec<u8>| {
        let v = &v;
        async move {
            v.user(&v.bob, Method::Put, &format!("/greetings/{kind}"), &body)
                .await
        }
    };
    let mut odd = ivr::wav(8000, 1, 1500, 100);
    odd[20] = 3; // IEEE float
    let mut deep = ivr::wav(8000, 1, 1500, 100);
    deep[34] = 24;
    let mut many = ivr::wav(8000, 1, 1500, 100);
    many[22] = 5;
    let mut fast = ivr::wav(8000, 1, 1500, 100);
    fast[24..28].copy_from_slice(&96_000u32.to_le_bytes());
    for (kind, body, status, code) in [
        (
            "unavailable",
            b"not a wav at all".to_vec(),
            400,
            "invalid_audio",
        ),
        (
            "unavailable",
            ivr::wav(8000, 1, 1500, 100)[..30].to_vec(),
            400,
            "invalid_audio",
        ),
        ("unavailable", odd, 400, "invalid_audio"),
        ("unavailable", deep, 400, "invalid_audio"),
        ("unavailable", many, 400, "invalid_audio"),
        ("unavailable", fast, 400, "invalid_audio"),
        (
            "unavailable",
            ivr::wav(8000, 1, 6000, 100),
            400,
            "invalid_audio",
        ),
        (
            "unavailable",
            ivr::wav(8000, 1, 500, 100),
            400,
            "invalid_audio",
        ),
        ("name", ivr::wav(8000, 1, 11_000, 100), 400, "invalid_audio"),
        (
            "temporary",
            ivr::wav(8000, 1, 1500, 100),
            400,
            "invalid_until",
        ),
        (
            "holiday",
            ivr::wav(8000, 1, 1500, 100),
            400,
            "invalid_greeting",
        ),
        ("unavailable", vec![0; 6 << 20], 413, "greeting_too_large"),
    ] {
        let r = put(kind, body).await;
        assert_eq!(r.status, status, "{kind}: {}", r.text());
        assert_eq!(r.json().unwrap()["code"], code, "{kind}");
    }
    let mailbox = v
        .user(&v.bob, Method::Get, "/mailbox", b"")
        .await
        .json()
        .unwrap();
    assert_eq!(
        mailbox["greetings"]["unavailable"],
        Value::Null,
        "nothing kept"
    );
    // 44.1 kHz stereo 8-bit would be refused; 48 kHz mono 16-bit is taken.
    let r = put("busy", ivr::wav(48_000, 1, 2000, -3000)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (r, until) = v.temporary_greeting(3_600_000).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let g = v
        .user(&v.bob, Method::Get, "/greetings/busy/audio", b"")
        .await;
    assert_eq!(g.status, 200);
    assert!(
        header(&g, "content-disposition")
            .unwrap()
            .starts_with("attachment;")
    );
    assert_eq!(g.body.len(), 44 + 2 * 16_000, "2 s at 8 kHz, 16-bit");
    let samples: Vec<i16> = g.body[44..]
        .chunks(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    assert!(samples.iter().all(|&s| s == -3000));
    let mailbox = v
        .user(&v.bob, Method::Get, "/mailbox", b"")
        .await
        .json()
        .unwrap();
    assert_eq!(mailbox["greetings"]["temporary_playing"], true);
    assert_eq!(mailbox["greetings"]["temporary"]["until_ms"], until);
    let r = v.user(&v.bob, Method::Delete, "/greetings/busy", b"").await;
    assert_eq!(r.status, 204);
    let g = v
        .user(&v.bob, Method::Get, "/greetings/busy/audio", b"")
        .await;
    assert_eq!(g.status, 404);
    // A plugin hands a call over as a user's: only an active user of its
    // own tenant, by id (globex's Gina, or Bob by login name, is refused).
    for who in [v.gina.clone(), "bob".to_string(), "nobody".to_string()] {
        let mut caller = Phone::new().unwrap();
        let leg = v
            .call(
                None,
                "callflow",
                "100",
                &format!("divert:800:{who}"),
                &mut caller,
            )
            .await;
        let refused = refused(&v.h, &leg).await;
        assert!(refused.starts_with("invalid-argument"), "{who}: {refused}");
        v.rig.hang_up(&leg);
    }
    let mut caller = Phone::new().unwrap();
    let leg = v.diverted_to_bob(&mut caller).await;
    // The temporary greeting plays while it lasts (2000 as µ-law).
    assert!(
        ivr::hears_level(&caller, 2000, WAIT).await,
        "the temporary greeting never played"
    );
    v.rig.hang_up(&leg);
    // Once it has expired, the system's greeting is back (Bob has no
    // busy one any more, nor an unavailable one).
    let (r, _) = v.temporary_greeting(1_500).await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let mut caller = Phone::new().unwrap();
    let leg = v.diverted_to_bob(&mut caller).await;
    assert!(
        ivr::hears(&caller, "is-busy").await,
        "the system's busy greeting"
    );
    v.rig.hang_up(&leg);
}

/// What callflow's `refused/{leg}` holds once written.
async fn refused(h: &Harness, leg: &str) -> String {
    let end = Instant::now() + WAIT;
    loop {
        let r = h
            .get("acme", "callflow", "u", &format!("/refused/{leg}"))
            .await
            .unwrap();
        let why: String = r
            .json()
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        if !why.is_empty() {
            return why;
        }
        assert!(Instant::now() < end, "nothing refused on {leg}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
