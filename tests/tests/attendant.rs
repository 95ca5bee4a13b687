//! The bundled `attendant` plugin over the real kernel, call control and
//! media engine, with the harness's synthetic signalling standing in for
//! SIP, handing callers to the `pbx` and `voicemail` plugins (issue 21).
//! What a caller hears is checked frame for frame against the prompt
//! library. SPEC V4, T1 (outside numbers through the dialing policy).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::admin::Op;
use switchboard::call::types::{Principal, Request, Response, Role};
use switchboard::harness::Harness;
use switchboard::harness::calls::{CallRig, Phone, Signal};
use switchboard::runtime::Method;
use switchboard::tenant::{Dialing, Limits, Restriction, Route};
use switchboard_tests::accounts::{console, create_user};
use switchboard_tests::{harness, ivr, tenant};

const WAIT: Duration = Duration::from_secs(15);

/// The attendant's number (a DID).
const DID: &str = "+442079460000";

struct At {
    h: Harness,
    rig: CallRig,
    bob: String,
    carol: String,
}

async fn at() -> At {
    let plugins = ["pbx", "voicemail", "attendant"];
    let h = harness(&plugins).await;
    tenant(&h, "acme", Limits::default(), &plugins).await;
    let mut ids = Vec::new();
    for u in ["bob", "carol"] {
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
                route("_9.", "pbx", "outside"),
                route(DID, "attendant", "front"),
            ],
        },
    )
    .await;
    // National and mobile numbers out for calls placed for no user.
    let dialing = Dialing {
        region: Some("GB".into()),
        restrictions: [(
            "lobby".to_string(),
            Restriction {
                classes: vec!["internal".into(), "national".into(), "mobile".into()],
                forward_external: false,
                transfer_external: false,
                callback_external: false,
                conference: false,
            },
        )]
        .into(),
        default_restriction: Some("lobby".into()),
        ..Dialing::default()
    };
    h.runtime().set_dialing("acme", dialing).await.unwrap();
    let a = At {
        rig: CallRig::start(h.runtime()),
        h,
        bob: ids[0].clone(),
        carol: ids[1].clone(),
    };
    let r = a
        .call_plugin(
            "voicemail",
            Method::Put,
            "/admin/mailboxes/bob",
            br#"{"number": "201"}"#.to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    a
}

impl At {
    async fn call_plugin(
        &self,
        plugin: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Response {
        let admin = Principal {
            role: Role::TenantAdmin,
            ..Principal::user("acme", "the-admin")
        };
        let request = Request::new(method, path, admin).with_body(body);
        self.h
            .runtime()
            .handle("acme", plugin, request)
            .await
            .unwrap()
    }

    async fn admin(&self, method: Method, path: &str, body: &Value) -> Response {
        self.call_plugin("attendant", method, path, body.to_string().into_bytes())
            .await
    }

    /// A caller from outside rings the attendant's number.
    async fn ring(&self, phone: &mut Phone) -> String {
        self.rig
            .ring("acme", "attendant", "+447400999888", DID, b"front", phone)
            .await
            .unwrap()
    }

    /// Waits until the host was asked to place a call to `to`.
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
            .find_map(|x| match x {
                Signal::Dialled(l, n) if n == to => Some(l.clone()),
                _ => None,
            })
            .unwrap()
    }
}

/// Office hours in London on weekdays, Christmas closed; four menus.
fn front(hours: Value) -> Value {
    json!({
        "time_zone": "Europe/London",
        "hours": hours,
        "holidays": ["2026-12-25"],
        "open": "main",
        "closed": "night",
        "holiday": "holiday",
        "voicemail": "800",
        "menus": {
            "main": {
                "say": [{ "prompt": "hello" }, { "library": "welcome" }],
                "choices": {
                    "1": { "to": "extension", "number": "201" },
                    "2": { "to": "menu", "menu": "support" },
                    "0": { "to": "mailbox", "user": "bob" },
                    "5": { "to": "external", "number": "+447400123456" },
                    "8": { "to": "external", "number": "+19005550100" },
                    "9": { "to": "hangup" }
                },
                "wait_ms": 3000,
                "tries": 2,
                "default": { "to": "mailbox", "user": "bob" }
            },
            "support": {
                "say": [{ "library": "enter-extension" }],
                "dial_by_extension": true,
                "wait_ms": 3000
            },
            "night": {
                "say": [{ "library": "after-hours" }],
                "choices": { "0": { "to": "mailbox", "user": "bob" } }
            },
            "holiday": { "say": [{ "library": "holiday" }] }
        }
    })
}

fn weekdays() -> Value {
    let day = json!([["09:00", "17:30"]]);
    json!({ "mon": day, "tue": day, "wed": day, "thu": day, "fri": [["09:00", "17:00"]] })
}

fn always() -> Value {
    let day = json!([["00:00", "24:00"]]);
    json!({ "mon": day, "tue": day, "wed": day, "thu": day, "fri": day, "sat": day, "sun": day })
}

async fn upload_hello(a: &At) {
    let r = a
        .call_plugin(
            "attendant",
            Method::Put,
            "/admin/prompts/hello",
            ivr::wav(8000, 1, 1000, 3000),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["ms"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_an_attendant_is_checked_whole_and_its_hours_follow_the_time_zone() {
    let a = at().await;
    let good = front(weekdays());
    // A menu may not say a prompt that was never uploaded.
    let r = a.admin(Method::Put, "/admin/attendants/front", &good).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["code"], "unknown_prompt", "{}", r.text());
    for (body, code) in [
        (b"RIFF....WAVEnope".to_vec(), "invalid_audio"),
        (ivr::wav(8000, 1, 130_000, 1), "invalid_audio"),
    ] {
        let r = a
            .call_plugin("attendant", Method::Put, "/admin/prompts/hello", body)
            .await;
        assert_eq!(r.json().unwrap()["code"], code, "{}", r.text());
    }
    upload_hello(&a).await;
    let with = |path: &[&str], value: Value| {
        let mut v = good.clone();
        let mut at = &mut v;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = value;
        v
    };
    let mut looped = with(
        &["menus", "support", "default"],
        json!({ "to": "menu", "menu": "main" }),
    );
    looped["menus"]["main"]["default"] = json!({ "to": "menu", "menu": "support" });
    let bad = [
        (
            with(&["time_zone"], json!("Mars/Olympus_Mons")),
            "invalid_time_zone",
        ),
        (
            with(&["hours"], json!({ "mon": [["17:00", "09:00"]] })),
            "invalid_hours",
        ),
        (
            with(&["hours"], json!({ "mon": [["09:00", "25:00"]] })),
            "invalid_hours",
        ),
        (
            with(&["hours"], json!({ "funday": [["09:00", "17:00"]] })),
            "invalid_hours",
        ),
        (
            with(&["holidays"], json!(["2026-02-30"])),
            "invalid_holidays",
        ),
        (with(&["open"], json!("nope")), "unknown_menu"),
        (
            with(
                &["menus", "main", "choices", "3"],
                json!({ "to": "menu", "menu": "nope" }),
            ),
            "unknown_menu",
        ),
        (
            with(
                &["menus", "main", "choices", "3"],
                json!({ "to": "extension", "number": "299" }),
            ),
            "unknown_target",
        ),
        (
            with(
                &["menus", "main", "choices", "3"],
                json!({ "to": "queue", "number": DID }),
            ),
            "unknown_target",
        ),
        (
            with(
                &["menus", "main", "choices", "3"],
                json!({ "to": "mailbox", "user": "nobody" }),
            ),
            "unknown_target",
        ),
        (with(&["voicemail"], json!("899")), "unknown_target"),
        (
            with(
                &["menus", "main", "choices", "3"],
                json!({ "to": "external", "number": "call me" }),
            ),
            "unknown_target",
        ),
        (
            with(&["menus", "main", "say"], json!([{ "prompt": "nope" }])),
            "unknown_prompt",
        ),
        (
            with(
                &["menus", "main", "choices", "12"],
                json!({ "to": "hangup" }),
            ),
            "invalid_attendant",
        ),
        (
            with(
                &["menus", "main", "choices", "3"],
                json!({ "to": "dial", "number": "9" }),
            ),
            "invalid_json",
        ),
        (
            with(&["menus", "main", "wait_ms"], json!(100)),
            "invalid_attendant",
        ),
        // `#` ends an extension in a dial-by-extension menu.
        (
            with(
                &["menus", "support", "choices", "#"],
                json!({ "to": "hangup" }),
            ),
            "invalid_attendant",
        ),
        // A default that is its own menu.
        (
            with(
                &["menus", "support", "default"],
                json!({ "to": "menu", "menu": "support" }),
            ),
            "menu_loop",
        ),
        (with(&["owner"], json!("me")), "invalid_json"),
        // Silent callers would go round main -> support -> main for ever.
        (looped, "menu_loop"),
    ];
    for (body, code) in bad {
        let r = a.admin(Method::Put, "/admin/attendants/front", &body).await;
        assert_eq!(r.status, 400, "{code}: {}", r.text());
        assert_eq!(r.json().unwrap()["code"], code, "{}", r.text());
    }
    let r = a
        .admin(Method::Get, "/admin/attendants/front", &json!({}))
        .await;
    assert_eq!(r.status, 404, "nothing was kept");
    // Only tenant admins.
    let user = Request::new(
        Method::Put,
        "/admin/attendants/front",
        Principal::user("acme", &a.bob),
    )
    .with_body(good.to_string());
    let r =
        a.h.runtime()
            .handle("acme", "attendant", user)
            .await
            .unwrap();
    assert_eq!(r.status, 403);
    let r = a.admin(Method::Put, "/admin/attendants/front", &good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Mailboxes are kept as user ids.
    assert_eq!(
        r.json().unwrap()["menus"]["main"]["default"]["user"],
        a.bob.as_str()
    );
    // Which menu answers when, in London (winter GMT, summer BST).
    for (ms, menu, why) in [
        (1_796_637_600_000u64, "main", "open"), // Mon 7 Dec 10:00 GMT
        (1_796_666_400_000, "night", "closed"), // Mon 7 Dec 18:00 GMT
        (1_797_069_600_000, "night", "closed"), // Sat 12 Dec 10:00
        (1_798_192_800_000, "holiday", "holiday"), // Fri 25 Dec 10:00
        (1_783_326_600_000, "main", "open"),    // Mon 6 Jul 08:30 UTC = 09:30 BST
        (1_767_601_800_000, "night", "closed"), // Mon 5 Jan 08:30 UTC = 08:30 GMT
    ] {
        let r = a
            .admin(
                Method::Get,
                &format!("/admin/attendants/front/now?at_ms={ms}"),
                &json!({}),
            )
            .await;
        let v = r.json().unwrap();
        assert_eq!(
            (v["menu"].as_str(), v["why"].as_str()),
            (Some(menu), Some(why)),
            "{v}"
        );
    }
    for bad in ["soon", "99999999999999999999", "253402300800000"] {
        let r = a
            .admin(
                Method::Get,
                &format!("/admin/attendants/front/now?at_ms={bad}"),
                &json!({}),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json().unwrap()["code"], "invalid_time");
    }
    // Holidays are local days: in New York, 22:00 on 24 December is not
    // Christmas, and 22:00 on the 25th (03:00 UTC on the 26th) is.
    let ny = with(&["time_zone"], json!("America/New_York"));
    let r = a.admin(Method::Put, "/admin/attendants/ny", &ny).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (ms, why) in [
        (1_798_167_600_000u64, "closed"),
        (1_798_254_000_000, "holiday"),
    ] {
        let r = a
            .admin(
                Method::Get,
                &format!("/admin/attendants/ny/now?at_ms={ms}"),
                &json!({}),
            )
            .await;
        assert_eq!(r.json().unwrap()["why"], why, "{}", r.text());
    }
    // A prompt an attendant says cannot be deleted.
    let r = a
        .call_plugin(
            "attendant",
            Method::Delete,
            "/admin/prompts/hello",
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json().unwrap()["code"], "prompt_in_use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_a_caller_is_put_through_by_key_by_extension_to_a_mailbox_or_told_why_not() {
    let a = at().await;
    upload_hello(&a).await;
    let r = a
        .admin(Method::Put, "/admin/attendants/front", &front(always()))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The uploaded prompt, then the library's welcome; 1: Bob's extension
    // (the pbx plugin rings his phones).
    let mut caller = Phone::new().unwrap();
    let leg = a.ring(&mut caller).await;
    assert!(
        ivr::hears_level(&caller, 3000, WAIT).await,
        "the uploaded prompt never played"
    );
    ivr::answer(&mut caller, "welcome", "1").await;
    a.dialled(&format!("user:{}", a.bob)).await;
    a.rig.hang_up(&leg);
    // 2: the support menu, where a caller keys an extension.
    let mut caller = Phone::new().unwrap();
    let leg = a.ring(&mut caller).await;
    ivr::answer(&mut caller, "welcome", "2").await;
    // An outside line (a pattern route) and the voicemail number are no
    // extensions: what a caller keys reaches users' phones only.
    ivr::answer(&mut caller, "enter-extension", "9020794#").await;
    assert!(ivr::hears(&caller, "invalid").await);
    ivr::answer(&mut caller, "enter-extension", "800#").await;
    assert!(ivr::hears(&caller, "invalid").await);
    ivr::answer(&mut caller, "enter-extension", "202#").await;
    a.dialled(&format!("user:{}", a.carol)).await;
    assert!(
        !a.rig
            .signals()
            .iter()
            .any(|s| matches!(s, Signal::Dialled(_, n) if n.contains("207946"))),
        "nothing placed to the outside line"
    );
    a.rig.hang_up(&leg);
    // A wrong key says so and asks again; the second runs out the tries:
    // the default, Bob's mailbox (his system greeting).
    let mut caller = Phone::new().unwrap();
    let leg = a.ring(&mut caller).await;
    ivr::answer(&mut caller, "welcome", "7").await;
    assert!(ivr::hears(&caller, "invalid").await);
    ivr::answer(&mut caller, "welcome", "7").await;
    assert!(
        ivr::hears(&caller, "is-unavailable").await,
        "Bob's voicemail"
    );
    a.rig.hang_up(&leg);
    // 8: a premium number the tenant's policy refuses: the caller hears
    // so and is back at the menu; nothing was placed.
    let mut caller = Phone::new().unwrap();
    let leg = a.ring(&mut caller).await;
    ivr::answer(&mut caller, "welcome", "8").await;
    assert!(ivr::hears(&caller, "restricted").await);
    assert!(ivr::hears(&caller, "welcome").await);
    assert!(
        !a.rig
            .signals()
            .iter()
            .any(|s| matches!(s, Signal::Dialled(_, n) if n.contains("900")))
    );
    // 5: a mobile number it allows: placed and, once answered, bridged
    // with the caller.
    let mobile = Phone::new().unwrap();
    a.rig.directory("+447400123456", &mobile).unwrap();
    caller.press('5').unwrap();
    let out = a.dialled("+447400123456").await;
    let end = Instant::now() + WAIT;
    loop {
        let l = a.h.runtime().telephony().lookup("acme", "attendant", &leg);
        if l.and_then(|l| l.bridged_with).as_deref() == Some(out.as_str()) {
            break;
        }
        assert!(Instant::now() < end, "never bridged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The outside party hangs up: so does the caller's leg, normally.
    a.rig.hang_up(&out);
    let signals = a
        .rig
        .wait_for(WAIT, |s| {
            s.iter()
                .any(|x| matches!(x, Signal::Ended(l, _) if *l == leg))
        })
        .await
        .unwrap();
    let cause = signals.iter().find_map(|x| match x {
        Signal::Ended(l, c) if *l == leg => Some(*c),
        _ => None,
    });
    assert_eq!(cause, Some(switchboard::call::legs::Cause::Normal));
}
