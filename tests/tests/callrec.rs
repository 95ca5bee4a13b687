//! Call recording under the tenant's policy (issue 21, item 4): the
//! bundled `pbx` plugin records calls into the bundled `recording`
//! plugin, over the real kernel, call control and media engine, with
//! the harness's synthetic signalling standing in for SIP. What the
//! parties hear is checked frame for frame; what was recorded is read
//! back, verified against its seal, and searched for the paused audio.
//! SPEC R1-R5 for calls, K4 (isolation), I6 (audit).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::admin::Op;
use switchboard::call::types::{Principal, Request, Response, Role};
use switchboard::harness::Harness;
use switchboard::harness::calls::{CallRig, Phone, Signal};
use switchboard::media::g711;
use switchboard::runtime::Method;
use switchboard::tenant::{Limits, Route};
use switchboard_tests::accounts::{audits, console, create_user, plugin_config};
use switchboard_tests::{harness, ivr, tenant};

const WAIT: Duration = Duration::from_secs(15);
/// Levels the phones send: talking, a card number read out while
/// paused, talking again.
const TALK: i16 = 6000;
const CARD: i16 = 20000;
const AFTER: i16 = 3000;

struct Rig {
    h: Harness,
    rig: CallRig,
    alice: String,
    bob: String,
    carol: String,
}

const PLUGINS: [&str; 3] = ["pbx", "recording", "callflow"];

async fn rig() -> Rig {
    let h = harness(&PLUGINS).await;
    tenant(&h, "acme", Limits::default(), &PLUGINS).await;
    tenant(&h, "globex", Limits::default(), &PLUGINS).await;
    create_user(&h, "globex", "gina", "user").await;
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
    Rig {
        rig: CallRig::start(h.runtime()),
        h,
        alice: ids[0].clone(),
        bob: ids[1].clone(),
        carol: ids[2].clone(),
    }
}

fn admin_of(tenant: &str) -> Principal {
    Principal {
        role: Role::TenantAdmin,
        ..Principal::user(tenant, "the-admin")
    }
}

impl Rig {
    async fn ask(
        &self,
        principal: Principal,
        plugin: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Response {
        let tenant = principal.tenant.clone();
        let request = Request::new(method, path, principal).with_body(body);
        self.h
            .runtime()
            .handle(&tenant, plugin, request)
            .await
            .unwrap()
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Response {
        self.ask(
            admin_of("acme"),
            "pbx",
            method,
            path,
            body.to_string().into_bytes(),
        )
        .await
    }

    async fn user(
        &self,
        user: &str,
        plugin: &str,
        method: Method,
        path: &str,
        body: Value,
    ) -> Response {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.ask(Principal::user("acme", user), plugin, method, path, body)
            .await
    }

    async fn policy(&self, policy: Value) {
        let r = self.admin(Method::Put, "/admin/recording", policy).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// Alice's desk calls `number` (routed to pbx for `args`); the rung
    /// user's phone `callee` answers. Alice's leg and the leg rung.
    async fn call(
        &self,
        number: &str,
        args: &str,
        alice: &mut Phone,
        callee: &mut Phone,
    ) -> (String, String) {
        let user = if args == "bob" {
            &self.bob
        } else {
            &self.carol
        };
        let rung = self.ringing(user, callee);
        let a = self
            .rig
            .ring_from(
                Some(&self.alice),
                "acme",
                "pbx",
                "alice-desk",
                number,
                args.as_bytes(),
                alice,
            )
            .await
            .unwrap();
        (a, self.rung(user, callee, rung).await)
    }

    /// Has `phone` answer when `user` is rung next; how many times they
    /// were rung so far.
    fn ringing(&self, user: &str, phone: &Phone) -> usize {
        self.rig.directory(&format!("user:{user}"), phone).unwrap();
        let to = format!("user:{user}");
        self.rig
            .signals()
            .iter()
            .filter(|x| matches!(x, Signal::Dialled(_, n) if *n == to))
            .count()
    }

    /// The leg of `user`'s next ring (after `before`), answered by
    /// `phone`, which then sends to where the host takes its media.
    async fn rung(&self, user: &str, phone: &mut Phone, before: usize) -> String {
        let to = format!("user:{user}");
        let dialled = |s: &[Signal]| {
            s.iter()
                .filter(|x| matches!(x, Signal::Dialled(_, n) if *n == to))
                .count()
        };
        let signals = self
            .rig
            .wait_for(WAIT, |s| dialled(s) > before)
            .await
            .unwrap();
        let b = signals
            .iter()
            .rev()
            .find_map(|x| match x {
                Signal::Dialled(l, n) if *n == to => Some(l.clone()),
                _ => None,
            })
            .unwrap();
        let end = Instant::now() + WAIT;
        let host = loop {
            if let Some(addr) = self.rig.host_media_of(&b) {
                break addr;
            }
            assert!(Instant::now() < end, "{b} never answered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        phone.connect(host);
        b
    }

    async fn bridged(&self, a: &str, b: &str) {
        let end = Instant::now() + WAIT;
        let leg = |id: &str| self.h.runtime().telephony().lookup("acme", "pbx", id);
        loop {
            if leg(a).and_then(|l| l.bridged_with).as_deref() == Some(b) {
                return;
            }
            assert!(Instant::now() < end, "{a} and {b} not bridged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The recording of call `call` (Alice's leg) as `user` sees it, once
    /// its state is `state`.
    async fn recording(&self, user: &str, call: &str, state: &str) -> Value {
        let end = Instant::now() + WAIT;
        loop {
            let list = self.recordings_of(user, call).await;
            if let Some(rec) = list.as_array().and_then(|l| l.first())
                && rec["state"] == state
            {
                let rid = rec["id"].as_str().unwrap();
                let full = self
                    .user(
                        user,
                        "recording",
                        Method::Get,
                        &format!("/recordings/{rid}"),
                        Value::Null,
                    )
                    .await;
                return full.json().unwrap();
            }
            assert!(
                Instant::now() < end,
                "no {state} recording of {call}: {list}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The recordings of call `call` that `user` sees (a JSON array).
    async fn recordings_of(&self, user: &str, call: &str) -> Value {
        let path = format!("/recordings?source=call:{call}");
        let r = self
            .user(user, "recording", Method::Get, &path, Value::Null)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().unwrap()["recordings"].clone()
    }

    /// How many recordings of call `call` that `user` sees are in `state`.
    async fn recording_count(&self, user: &str, call: &str, state: &str) -> usize {
        self.recordings_of(user, call)
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["state"] == state)
            .count()
    }

    /// `user` asks for `action` on the recording of call `call`.
    async fn act(&self, user: &str, call: &str, action: &str) -> Response {
        let path = format!("/calls/{call}/recording");
        self.user(
            user,
            "pbx",
            Method::Post,
            &path,
            json!({ "action": action }),
        )
        .await
    }

    /// Asserts that recording `rid` verifies intact, as `user` asks.
    async fn verified(&self, user: &str, rid: &str) {
        let path = format!("/recordings/{rid}/verify");
        let v = self
            .user(user, "recording", Method::Get, &path, Value::Null)
            .await;
        assert_eq!(v.json().unwrap()["intact"], true, "{}", v.text());
    }

    /// Recording `rid`'s media, as `user` asks.
    async fn media(&self, user: &str, rid: &str) -> Response {
        let path = format!("/recordings/{rid}/media");
        self.user(user, "recording", Method::Get, &path, Value::Null)
            .await
    }

    fn audits(&self, action: &str) -> Vec<switchboard::audit::Entry> {
        audits(&self.h, "acme", action)
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Sends `frames` 20 ms frames of one level, paced in real time.
async fn talk(phone: &mut Phone, linear: i16, frames: usize) {
    let code = g711::linear_to_ulaw(linear);
    for _ in 0..frames {
        phone.send_audio(&[code; 160]).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn keys(phone: &mut Phone, keys: &str) {
    tokio::task::block_in_place(|| phone.dial_keys(keys)).unwrap();
}

/// A refusal's status and code.
fn refusal(r: &Response) -> (u16, String) {
    let code = r
        .json()
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string));
    (r.status, code.unwrap_or_default())
}

/// Whole 20 ms frames of the recording (8 kHz 16-bit WAV) whose samples
/// all lie within 3 % of `level`: audio a phone sent at that level.
fn frames_at(wav: &[u8], level: i16) -> usize {
    let samples: Vec<i16> = wav[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let near = |s: i16| (i32::from(s) - i32::from(level)).abs() <= i32::from(level) / 33;
    samples
        .chunks_exact(160)
        .filter(|f| f.iter().all(|&s| near(s)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_a_call_recorded_always_is_announced_paused_without_a_trace_and_sealed() {
    let r = rig().await;
    // Bob's calls are recorded always (named by login: stored as his id).
    r.policy(json!({ "always": { "users": ["bob"] } })).await;
    plugin_config(&r.h, "acme", "pbx", json!({ "recording-chunk-seconds": 1 })).await;
    let shown = r.admin(Method::Get, "/admin/recording", Value::Null).await;
    assert_eq!(shown.json().unwrap()["always"]["users"], json!([r.bob]));
    let (mut alice, mut bob) = (Phone::new().unwrap(), Phone::new().unwrap());
    let (a, b) = r.call("201", "bob", &mut alice, &mut bob).await;
    // Both parties hear the announcement before they hear each other.
    assert!(ivr::hears(&alice, "recording-on").await, "Alice is told");
    assert!(ivr::hears(&bob, "recording-on").await, "Bob is told");
    r.bridged(&a, &b).await;
    let rec = r.recording(&r.bob, &a, "recording").await;
    let rid = rec["id"].as_str().unwrap().to_string();
    assert_eq!(rec["initiator"], json!(r.bob));
    assert_eq!(rec["participants"], json!([r.alice]));
    assert_eq!(rec["policy"], "always");
    // Alice talks; Bob pauses (*2) while she reads out her card number;
    // he resumes (*2) and she talks on.
    talk(&mut alice, TALK, 50).await;
    keys(&mut bob, "*2").await;
    r.recording(&r.bob, &a, "paused").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    talk(&mut alice, CARD, 50).await;
    keys(&mut bob, "*2").await;
    r.recording(&r.bob, &a, "recording").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    talk(&mut alice, AFTER, 150).await;
    // Handed on as the call goes (a chunk a second here, by the timer
    // the scheduler fires): the recording holds chunks (the header and
    // audio) while the call is still on.
    let end = Instant::now() + WAIT;
    loop {
        r.h.runtime().fire_due_timers().await;
        let live = r.recording(&r.bob, &a, "recording").await;
        if live["chunks"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(
            Instant::now() < end,
            "nothing handed on during the call: {live}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The watch over the call finds it going on (as if five minutes had
    // passed) and keeps the recording running.
    assert!(r.h.runtime().fire_timers_due_by(now_ms() + 301_000).await >= 1);
    r.recording(&r.bob, &a, "recording").await;
    // Neither party stops it: the policy records to the end.
    keys(&mut alice, "*1").await;
    keys(&mut bob, "*1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.recording(&r.bob, &a, "recording").await;
    let stop = r.act(&r.bob, &a, "stop").await;
    assert_eq!(refusal(&stop), (409, "recording_required".into()));
    // Nor does the recording plugin take orders for a call's recording
    // from anyone but the plugin recording the call.
    let direct = r
        .user(
            &r.bob,
            "recording",
            Method::Post,
            &format!("/recordings/{rid}/stop"),
            Value::Null,
        )
        .await;
    assert_eq!(refusal(&direct), (403, "via_calls_plugin".into()));
    // Alice hangs up: the recording is handed over and sealed.
    r.rig.hang_up(&a);
    let sealed = r.recording(&r.bob, &a, "stopped").await;
    let payload: Value = serde_json::from_str(sealed["seal"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["source"], json!({ "kind": "call", "id": a }));
    assert_eq!(payload["pauses"].as_array().unwrap().len(), 1, "{payload}");
    assert_eq!(payload["content_type"], "audio/wav");
    r.verified(&r.bob, &rid).await;
    // What was said is there; what was said while paused is not.
    let media = r.media(&r.alice, &rid).await;
    assert_eq!(media.status, 200, "the participant may listen");
    assert_eq!(&media.body[..4], b"RIFF");
    assert!(
        frames_at(&media.body, TALK) >= 30,
        "the talk before the pause"
    );
    assert!(frames_at(&media.body, AFTER) >= 30, "the talk after it");
    assert_eq!(
        frames_at(&media.body, CARD),
        0,
        "nothing of the paused stretch"
    );
    // The staging copy is gone; Bob cannot delete what the policy keeps;
    // an admin can.
    let del = r
        .user(
            &r.bob,
            "recording",
            Method::Delete,
            &format!("/recordings/{rid}"),
            Value::Null,
        )
        .await;
    assert_eq!(refusal(&del), (403, "kept_by_policy".into()));
    // Audited: the start (announced), the pause and resume by Bob, the seal.
    let start = r.audits("pbx.recording.start");
    assert_eq!(start.len(), 1);
    assert!(
        start[0].details.contains("\"announced\":true"),
        "{}",
        start[0].details
    );
    for action in ["pbx.recording.pause", "pbx.recording.resume"] {
        let got = r.audits(action);
        assert_eq!(got.len(), 1, "{action}");
        assert!(got[0].details.contains(&r.bob), "{}", got[0].details);
    }
    assert_eq!(r.audits("pbx.recording.sealed").len(), 1);
    // Another tenant sees none of it.
    let theirs = r
        .ask(
            admin_of("globex"),
            "recording",
            Method::Get,
            &format!("/recordings/{rid}"),
            Vec::new(),
        )
        .await;
    assert_eq!(theirs.status, 404);
    // A call between users the policy does not name is not recorded.
    let (mut alice2, mut carol) = (Phone::new().unwrap(), Phone::new().unwrap());
    let (a2, c2) = r.call("202", "carol", &mut alice2, &mut carol).await;
    r.bridged(&a2, &c2).await;
    let none = r
        .user(&r.alice, "pbx", Method::Get, "/calls", Value::Null)
        .await;
    assert_eq!(
        none.json().unwrap()["calls"][0]["recording"],
        "off",
        "{}",
        none.text()
    );
    r.rig.hang_up(&a2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_on_demand_recording_by_code_and_api_as_the_policy_allows_silently_only_when_said() {
    let r = rig().await;
    // The policy is checked: unknown users, bad codes, an announcement
    // not uploaded, a non-admin.
    for (body, code) in [
        (
            json!({ "on_demand": { "users": ["nobody"] } }),
            "unknown_user",
        ),
        (json!({ "start_code": "**" }), "invalid_policy"),
        (json!({ "start_code": "*2" }), "invalid_policy"),
        (
            json!({ "always": { "numbers": ["12ab"] } }),
            "invalid_policy",
        ),
        (json!({ "sneaky": true }), "invalid_policy"),
        (json!({ "announcement": "custom" }), "no_announcement"),
    ] {
        let got = r.admin(Method::Put, "/admin/recording", body.clone()).await;
        assert_eq!(got.json().unwrap()["code"], code, "{body}");
    }
    let not_admin = r
        .user(
            &r.alice,
            "pbx",
            Method::Put,
            "/admin/recording",
            json!({ "silent": true }),
        )
        .await;
    assert_eq!(not_admin.status, 403);
    // A custom announcement: a bad file is refused, a WAV is taken.
    let bad = r
        .ask(
            admin_of("acme"),
            "pbx",
            Method::Put,
            "/admin/recording/announcement",
            b"RIFF junk".to_vec(),
        )
        .await;
    assert_eq!(bad.json().unwrap()["code"], "invalid_audio");
    let up = r
        .ask(
            admin_of("acme"),
            "pbx",
            Method::Put,
            "/admin/recording/announcement",
            ivr::wav(16_000, 1, 1500, 7000),
        )
        .await;
    assert_eq!(up.status, 200, "{}", up.text());
    // Alice may record her calls on demand; the announcement is the
    // tenant's own.
    r.policy(json!({ "on_demand": { "users": ["alice"] }, "announcement": "custom" }))
        .await;
    let gone = r
        .admin(Method::Delete, "/admin/recording/announcement", Value::Null)
        .await;
    assert_eq!(gone.json().unwrap()["code"], "announcement_in_use");
    let (mut alice, mut bob) = (Phone::new().unwrap(), Phone::new().unwrap());
    let (a, b) = r.call("201", "bob", &mut alice, &mut bob).await;
    r.bridged(&a, &b).await;
    let calls = r
        .user(&r.alice, "pbx", Method::Get, "/calls", Value::Null)
        .await;
    assert_eq!(
        calls.json().unwrap()["calls"],
        json!([{ "call": a, "recording": "off", "mode": null, "recording_id": null }])
    );
    // Bob may not record it (by code: nothing happens; by the API: 403);
    // Carol is not on it; nonsense is refused.
    keys(&mut bob, "*1").await;
    let bobs = r.act(&r.bob, &a, "start").await;
    assert_eq!(refusal(&bobs), (403, "not_permitted".into()));
    let carols = r.act(&r.carol, &a, "start").await;
    assert_eq!(carols.status, 404);
    let junk = r.act(&r.alice, &a, "explode").await;
    assert_eq!(junk.json().unwrap()["code"], "invalid_action");
    let paused = r.act(&r.alice, &a, "pause").await;
    assert_eq!(paused.json().unwrap()["code"], "not_recording");
    // Alice keys *1: both hear the tenant's announcement out of the
    // bridge, then each other again.
    keys(&mut alice, "*1").await;
    assert!(
        ivr::hears_level(&alice, 7000, WAIT).await,
        "Alice hears the announcement"
    );
    assert!(ivr::hears_level(&bob, 7000, WAIT).await, "Bob hears it");
    r.bridged(&a, &b).await;
    let rec = r.recording(&r.alice, &a, "recording").await;
    assert_eq!(
        (rec["initiator"].clone(), rec["policy"].clone()),
        (json!(r.alice), json!("on_demand"))
    );
    assert_eq!(rec["participants"], json!([r.bob]));
    talk(&mut bob, TALK, 40).await;
    // She stops it through the API; the call goes on.
    let stop = r.act(&r.alice, &a, "stop").await;
    assert_eq!(stop.status, 200, "{}", stop.text());
    let sealed = r.recording(&r.alice, &a, "stopped").await;
    assert!(sealed["chunks"].as_u64().unwrap() >= 1);
    let rid = sealed["id"].as_str().unwrap();
    r.verified(&r.alice, rid).await;
    assert!(
        r.h.runtime()
            .telephony()
            .lookup("acme", "pbx", &a)
            .is_some(),
        "the call goes on"
    );
    // On demand, hers: she may delete it.
    let del = r
        .user(
            &r.alice,
            "recording",
            Method::Delete,
            &format!("/recordings/{rid}"),
            Value::Null,
        )
        .await;
    assert_eq!(del.status, 200, "{}", del.text());
    // Started and stopped again at once, during the announcement: the
    // parties are bridged again all the same.
    let on = r.act(&r.alice, &a, "start").await;
    assert_eq!(on.status, 200, "{}", on.text());
    let off = r.act(&r.alice, &a, "stop").await;
    assert_eq!(off.status, 200, "{}", off.text());
    let end = Instant::now() + WAIT;
    // (The first was deleted: shredded.)
    while r.recording_count(&r.alice, &a, "stopped").await < 1 {
        assert!(Instant::now() < end, "the second recording was not sealed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.bridged(&a, &b).await;
    r.rig.hang_up(&a);
    // A silent policy records without a word, and says so in the audit.
    r.policy(json!({ "on_demand": { "users": ["alice"] }, "silent": true }))
        .await;
    assert!(
        r.audits("pbx.recording.policy")
            .last()
            .unwrap()
            .details
            .contains("\"silent\":true")
    );
    let (mut alice2, mut bob2) = (Phone::new().unwrap(), Phone::new().unwrap());
    let (a2, b2) = r.call("201", "bob", &mut alice2, &mut bob2).await;
    r.bridged(&a2, &b2).await;
    let path2 = format!("/calls/{a2}/recording");
    let on = r.act(&r.alice, &a2, "start").await;
    assert_eq!(
        on.json().unwrap()["recording"],
        "recording",
        "{}",
        on.text()
    );
    r.recording(&r.alice, &a2, "recording").await;
    assert_eq!(
        r.h.runtime()
            .telephony()
            .lookup("acme", "pbx", &a2)
            .unwrap()
            .bridged_with
            .as_deref(),
        Some(b2.as_str())
    );
    let starts = r.audits("pbx.recording.start");
    assert!(
        starts
            .last()
            .unwrap()
            .details
            .contains("\"announced\":false"),
        "{}",
        starts.last().unwrap().details
    );
    // A user may not open a call recording in someone's name, nor can
    // another tenant's user touch this call.
    let forged = r
        .user(
            &r.alice,
            "recording",
            Method::Post,
            "/recordings",
            json!({ "source": { "kind": "call", "id": "x" }, "owner": r.bob, "policy": "always" }),
        )
        .await;
    assert_eq!(forged.json().unwrap()["code"], "owner_via_plugin");
    let theirs = r
        .ask(
            Principal::user("globex", "gina"),
            "pbx",
            Method::Post,
            &path2,
            json!({ "action": "stop" }).to_string().into_bytes(),
        )
        .await;
    assert_eq!(theirs.status, 404);
    r.rig.hang_up(&a2);
    r.recording(&r.alice, &a2, "stopped").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_a_transfer_ends_the_recording_and_the_new_pair_is_weighed_afresh() {
    let r = rig().await;
    r.policy(json!({ "always": { "users": ["bob", "carol"] }, "max_pause_seconds": 10 }))
        .await;
    let (mut alice, mut bob, mut carol) = (
        Phone::new().unwrap(),
        Phone::new().unwrap(),
        Phone::new().unwrap(),
    );
    let (a, b) = r.call("201", "bob", &mut alice, &mut bob).await;
    assert!(ivr::hears(&bob, "recording-on").await);
    r.bridged(&a, &b).await;
    let first = r.recording(&r.bob, &a, "recording").await;
    let first_id = first["id"].as_str().unwrap().to_string();
    // A pause ends by itself at the policy's longest (10 s here; the
    // timer is fired as if they had passed), audited as the policy's.
    keys(&mut bob, "*2").await;
    r.recording(&r.bob, &a, "paused").await;
    r.h.runtime().fire_timers_due_by(now_ms() + 11_000).await;
    r.recording(&r.bob, &a, "recording").await;
    let resumed = r.audits("pbx.recording.resume");
    assert!(
        resumed[0].details.contains("longest pause"),
        "{}",
        resumed[0].details
    );
    // Bob transfers Alice to Carol: his recording ends with his part,
    // sealed and intact.
    let rung = r.ringing(&r.carol, &carol);
    r.rig.transfer(&b, "202").await.unwrap();
    let c = r.rung(&r.carol, &mut carol, rung).await;
    let end = Instant::now() + WAIT;
    loop {
        let got = r
            .user(
                &r.bob,
                "recording",
                Method::Get,
                &format!("/recordings/{first_id}"),
                Value::Null,
            )
            .await;
        if got.json().unwrap()["state"] == "stopped" {
            break;
        }
        assert!(Instant::now() < end, "the first recording was not sealed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.verified(&r.bob, &first_id).await;
    // Alice and Carol: Carol's calls are recorded always too, so a new
    // recording, hers, announced to both before they talk.
    assert!(ivr::hears(&carol, "recording-on").await, "Carol is told");
    assert!(
        ivr::hears(&alice, "recording-on").await,
        "Alice is told again"
    );
    r.bridged(&a, &c).await;
    let end = Instant::now() + WAIT;
    let second = loop {
        let got = r
            .user(
                &r.carol,
                "recording",
                Method::Get,
                &format!("/recordings?source=call:{a}"),
                Value::Null,
            )
            .await;
        let list = got.json().unwrap()["recordings"].clone();
        if let Some(x) = list
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["state"] == "recording")
        {
            break x.clone();
        }
        assert!(Instant::now() < end, "no second recording: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let second_id = second["id"].as_str().unwrap().to_string();
    assert_eq!(second["initiator"], json!(r.carol));
    // Bob, gone from the call, reaches none of it: not the new
    // recording, not the call's controls, not his list of calls.
    let his = r
        .user(
            &r.bob,
            "recording",
            Method::Get,
            &format!("/recordings/{second_id}"),
            Value::Null,
        )
        .await;
    assert_eq!(his.status, 404);
    let ctl = r.act(&r.bob, &a, "pause").await;
    assert_eq!(ctl.status, 404, "{}", ctl.text());
    let calls = r
        .user(&r.bob, "pbx", Method::Get, "/calls", Value::Null)
        .await;
    assert_eq!(calls.json().unwrap()["calls"], json!([]));
    // Carol's keys work on her call; Bob's old keys do nothing.
    keys(&mut carol, "*2").await;
    r.recording(&r.carol, &a, "paused").await;
    r.rig.hang_up(&a);
    let sealed = r.recording(&r.carol, &a, "stopped").await;
    assert_eq!(sealed["id"], json!(second_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_hand_offs_attended_transfers_pause_limits_and_a_failing_hand_over_lose_nothing() {
    let r = rig().await;
    r.policy(json!({ "always": { "users": ["bob"] }, "max_pause_seconds": 10 }))
        .await;
    // Bob transfers a recorded Alice to another plugin's number: she goes
    // there once the recording has ended, and it is sealed.
    let (mut alice, mut bob) = (Phone::new().unwrap(), Phone::new().unwrap());
    let (a, b) = r.call("201", "bob", &mut alice, &mut bob).await;
    r.bridged(&a, &b).await;
    r.rig.transfer(&b, "800").await.unwrap();
    let end = Instant::now() + WAIT;
    while r
        .h
        .runtime()
        .telephony()
        .lookup("acme", "callflow", &a)
        .is_none()
    {
        assert!(Instant::now() < end, "Alice never reached 800");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.recording(&r.bob, &a, "stopped").await;
    r.rig.hang_up(&a);
    // A new call: Bob pauses for his 10 s (fired as if they had passed);
    // the recording resumes and a second pause is refused, audited.
    let (mut alice, mut bob) = (Phone::new().unwrap(), Phone::new().unwrap());
    let (a, b) = r.call("201", "bob", &mut alice, &mut bob).await;
    r.bridged(&a, &b).await;
    talk(&mut alice, TALK, 40).await;
    keys(&mut bob, "*2").await;
    r.recording(&r.bob, &a, "paused").await;
    r.h.runtime().fire_timers_due_by(now_ms() + 11_000).await;
    r.recording(&r.bob, &a, "recording").await;
    keys(&mut bob, "*2").await;
    let end = Instant::now() + WAIT;
    while !r
        .audits("pbx.recording.refused")
        .iter()
        .any(|e| e.details.contains("pause_limit"))
    {
        assert!(Instant::now() < end, "the second pause was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.recording(&r.bob, &a, "recording").await;
    // Bob's phone has a second call (to Carol) and tries to join Alice
    // with Carol: a recorded call is not joined, and both calls go on.
    let (mut bob2, mut carol) = (Phone::new().unwrap(), Phone::new().unwrap());
    let rung = r.ringing(&r.carol, &carol);
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
    let c = r.rung(&r.carol, &mut carol, rung).await;
    r.bridged(&b2, &c).await;
    r.rig.transfer_attended(&b, &b2).await.unwrap();
    r.rig
        .wait_for(WAIT, |s| {
            s.iter()
                .any(|x| matches!(x, Signal::TransferFailed(l, _) if *l == b))
        })
        .await
        .unwrap();
    r.bridged(&a, &b).await;
    r.bridged(&b2, &c).await;
    // (Bob's call to Carol was recorded too: his calls are.)
    r.rig.hang_up(&b2);
    r.recording(&r.bob, &b2, "stopped").await;
    // The recording plugin is off when the call ends: the hand-over
    // fails, is retried, backing off, and then waits for an admin, the
    // audio kept.
    console(
        &r.h,
        Op::PluginDisable {
            tenant: "acme".into(),
            name: "recording".into(),
        },
    )
    .await;
    let hung_up = now_ms();
    r.rig.hang_up(&a);
    let mut stuck = Value::Null;
    for i in 1..=12u64 {
        r.h.runtime()
            .fire_timers_due_by(now_ms() + i * 600_000)
            .await;
        let got = r
            .admin(Method::Get, "/admin/recording/stuck", Value::Null)
            .await;
        stuck = got.json().unwrap()["stuck"].clone();
        if stuck.as_array().is_some_and(|s| !s.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rid = stuck[0]["recording"]
        .as_str()
        .unwrap_or_else(|| panic!("nothing stuck: {stuck}"))
        .to_string();
    let alarms = r.audits("pbx.recording.stuck");
    assert_eq!(
        alarms.len(),
        1,
        "{:?}",
        alarms.iter().map(|e| &e.details).collect::<Vec<_>>()
    );
    let path = format!("/admin/recording/stuck/{rid}");
    let junk = r
        .admin(Method::Post, &path, json!({ "action": "explode" }))
        .await;
    assert_eq!(junk.json().unwrap()["code"], "invalid_action");
    let theirs = r
        .user(
            &r.bob,
            "pbx",
            Method::Post,
            &path,
            json!({ "action": "abandon" }),
        )
        .await;
    assert_eq!(theirs.status, 403);
    // Back on, an admin retries: sealed, intact, with what Alice said.
    r.h.enable("acme", "recording").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let retried = now_ms();
    let retry = r
        .admin(Method::Post, &path, json!({ "action": "retry" }))
        .await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    r.h.runtime().fire_due_timers().await;
    let sealed = r.recording(&r.bob, &a, "stopped").await;
    assert_eq!(sealed["id"], json!(rid));
    // The seal says when the call's recording ended, not when it was
    // handed over.
    let stopped = sealed["stopped_at"].as_u64().unwrap();
    assert!(
        stopped >= hung_up.saturating_sub(1000) && stopped < retried,
        "stopped at {stopped}, hung up {hung_up}, retried {retried}"
    );
    r.verified(&r.bob, &rid).await;
    let media = r.media(&r.bob, &rid).await;
    assert!(
        frames_at(&media.body, TALK) >= 20,
        "what Alice said is there"
    );
    let again = r
        .admin(Method::Post, &path, json!({ "action": "retry" }))
        .await;
    assert_eq!(again.status, 404);
}
