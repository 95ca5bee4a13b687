//! Meeting spaces (SPEC M1-M4, the first part of the meetings plugin)
//! through the real HTTPS API: spaces with invitees and an access code,
//! their chat owned in the chat plugin and usable before any live session,
//! listing by role, hiding, deletion by the organizer only, isolation.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use switchboard::harness::Harness;
use switchboard::tenant::Limits;
use switchboard_tests::accounts::people;
use switchboard_tests::http::{Reply, Server};
use switchboard_tests::stream::{Ws, next_of, ready};
use switchboard_tests::two_tenants;

struct World {
    h: Harness,
    s: Server,
    /// (id, token): acme's olga (organizer), ivan (invited), nina (neither);
    /// globex's gina.
    olga: (String, String),
    ivan: (String, String),
    nina: (String, String),
    gina: (String, String),
    /// acme's paul, invited during a session.
    paul: (String, String),
}

async fn world() -> World {
    // `owner` stands in for a telephony plugin calling meetings.
    let h = two_tenants(
        &["chat", "recording", "meetings", "owner"],
        Limits::default(),
    )
    .await;
    // acme names `owner` as its telephony plugin; globex names none.
    switchboard_tests::accounts::console(
        &h,
        switchboard::admin::Op::PluginConfigSet {
            tenant: "acme".into(),
            name: "meetings".into(),
            config: serde_json::from_value(json!({"telephony-plugins": "owner"})).unwrap(),
        },
    )
    .await;
    let s = Server::start(h.runtime().clone()).await;
    let mut u = people(
        &h,
        &s,
        &[
            ("acme", "olga", "user"),
            ("acme", "ivan", "user"),
            ("acme", "nina", "user"),
            ("globex", "gina", "user"),
            ("acme", "paul", "user"),
        ],
    )
    .await
    .into_iter();
    World {
        olga: u.next().unwrap(),
        ivan: u.next().unwrap(),
        nina: u.next().unwrap(),
        gina: u.next().unwrap(),
        paul: u.next().unwrap(),
        h,
        s,
    }
}

async fn call(w: &World, token: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    w.s.call(
        method,
        &format!("/api/v1/t/acme/p{path}"),
        Some(token),
        body.as_ref(),
    )
    .await
}

async fn space(w: &World, title: &str) -> Value {
    let r = call(
        w,
        &w.olga.1,
        "POST",
        "/meetings/spaces",
        Some(json!({"title": title, "invitees": ["ivan"], "starts_at": 1_900_000_000_000u64})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// The ids in a roster event's or a session's `participants`.
fn roster_ids(v: &Value) -> Vec<String> {
    v["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect()
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The next event of `kind` on `ws` (panics after 10 s).
async fn event(ws: &mut Ws, kind: &str) -> Value {
    next_of(ws, kind, WAIT)
        .await
        .unwrap_or_else(|| panic!("no {kind} event"))["data"]
        .clone()
}

/// Events of `kind` until one satisfies `ok`.
async fn event_until(ws: &mut Ws, kind: &str, ok: impl Fn(&Value) -> bool) -> Value {
    loop {
        let e = event(ws, kind).await;
        if ok(&e) {
            return e;
        }
    }
}

/// A space of olga's (ivan invited) with a live session she started:
/// (space, live id).
async fn running(w: &World, title: &str) -> (Value, String) {
    let s = space(w, title).await;
    let r = call(
        w,
        &w.olga.1,
        "POST",
        &format!("/meetings/spaces/{}/live", s["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let lid = r.json()["id"].as_str().unwrap().to_string();
    (s, lid)
}

/// A guest: the public join route, the event stream, the knock.
/// (token, guest id, stream).
async fn guest(w: &World, code: &str, name: &str) -> (String, String, Ws) {
    let r =
        w.s.call(
            "POST",
            "/api/v1/t/acme/p/meetings/guest/join",
            None,
            Some(&json!({"code": code, "name": name})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_string();
    let lid = r.json()["live"].as_str().unwrap().to_string();
    let ws = ready(&w.s, &token).await;
    let r = call(
        w,
        &token,
        "POST",
        &format!("/meetings/live/{lid}/knock"),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["state"], "waiting");
    (token, r.json()["id"].as_str().unwrap().to_string(), ws)
}

async fn join(w: &World, token: &str, code: &str) -> Reply {
    call(
        w,
        token,
        "POST",
        "/meetings/join",
        Some(json!({"code": code})),
    )
    .await
}

fn audited(w: &World) -> Vec<switchboard::audit::Entry> {
    w.h.runtime()
        .audit_log()
        .entries(&switchboard::audit::Scope::tenant("acme"), 0, 100_000)
        .unwrap()
}

#[tokio::test]
async fn m1_m3_a_space_has_a_code_invitees_and_a_chat_usable_before_any_session() {
    let w = world().await;
    let s = space(&w, "Design review").await;
    let sid = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["organizer"], w.olga.0.as_str());
    assert_eq!(s["invited"], json!([w.ivan.0]));
    assert_eq!(s["role"], "organizer");
    let code = s["code"].as_str().unwrap();
    assert!(
        code.len() >= 9 && code.bytes().all(|b| b.is_ascii_digit()),
        "{code}"
    );
    // Invitees chat (and share files) in the space before any live
    // session; others cannot.
    let cid = s["conversation"].as_str().unwrap();
    let msg = json!({"text": "agenda attached soon"});
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/chat/conversations/{cid}/messages"),
        Some(msg.clone()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/chat/conversations/{cid}/messages"),
        Some(msg),
    )
    .await;
    assert_eq!(r.status, 404);
    // Codes are random digits, unique within the tenant.
    let mut codes = BTreeSet::new();
    codes.insert(code.to_string());
    for i in 0..30 {
        let s = space(&w, &format!("space {i}")).await;
        assert!(
            codes.insert(s["code"].as_str().unwrap().to_string()),
            "codes repeat"
        );
    }
    let firsts: BTreeSet<char> = codes.iter().map(|c| c.chars().next().unwrap()).collect();
    assert!(firsts.len() > 3, "codes are not sequential: {codes:?}");
    // Bad input changes nothing.
    for (body, code) in [
        (json!({"title": "  "}), "invalid_title"),
        (
            json!({"title": "x", "invitees": ["nobody"]}),
            "unknown_user",
        ),
        (json!({"title": "x", "invitees": ["gina"]}), "unknown_user"),
        (json!({"title": "x", "colour": 1}), "invalid_json"),
    ] {
        let r = call(
            &w,
            &w.olga.1,
            "POST",
            "/meetings/spaces",
            Some(body.clone()),
        )
        .await;
        assert_eq!((r.status, r.code().as_str()), (400, code), "{body}");
    }
    let r = call(&w, &w.olga.1, "GET", "/meetings/spaces", None).await;
    assert_eq!(r.json()["spaces"].as_array().unwrap().len(), 31);
    let r = call(
        &w,
        &w.olga.1,
        "GET",
        &format!("/meetings/spaces/{sid}"),
        None,
    )
    .await;
    assert_eq!(r.json()["code"], code);
}

#[tokio::test]
async fn m4_spaces_are_listed_by_role_hidden_per_user_and_deleted_by_the_organizer() {
    let w = world().await;
    let s = space(&w, "Quarterly").await;
    let sid = s["id"].as_str().unwrap().to_string();
    let cid = s["conversation"].as_str().unwrap().to_string();
    let listed = |r: Reply| -> Vec<(String, String)> {
        r.json()["spaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["role"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let r = call(&w, &w.ivan.1, "GET", "/meetings/spaces", None).await;
    assert_eq!(listed(r), [(sid.clone(), "invited".to_string())]);
    let r = call(&w, &w.nina.1, "GET", "/meetings/spaces", None).await;
    assert!(listed(r).is_empty());
    for token in [&w.nina.1] {
        let r = call(&w, token, "GET", &format!("/meetings/spaces/{sid}"), None).await;
        assert_eq!((r.status, r.code().as_str()), (404, "space_not_found"));
    }
    let r = call(
        &w,
        &w.gina.1,
        "GET",
        &format!("/meetings/spaces/{sid}"),
        None,
    )
    .await;
    assert_eq!(r.code(), "wrong_tenant");
    let r =
        w.s.call(
            "GET",
            &format!("/api/v1/t/globex/p/meetings/spaces/{sid}"),
            Some(&w.gina.1),
            None,
        )
        .await;
    assert_eq!(r.code(), "space_not_found");
    let r = call(&w, &w.ivan.1, "GET", "/meetings/spaces/not-an-id", None).await;
    assert_eq!(r.code(), "invalid_id");
    // Hiding is per user and deletes nothing.
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/meetings/spaces/{sid}/hide"),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(listed(call(&w, &w.ivan.1, "GET", "/meetings/spaces", None).await).is_empty());
    assert_eq!(
        listed(call(&w, &w.ivan.1, "GET", "/meetings/spaces?hidden=true", None).await).len(),
        1
    );
    assert_eq!(
        listed(call(&w, &w.olga.1, "GET", "/meetings/spaces", None).await).len(),
        1
    );
    let r = call(
        &w,
        &w.ivan.1,
        "GET",
        &format!("/meetings/spaces/{sid}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "still there");
    call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/meetings/spaces/{sid}/unhide"),
        None,
    )
    .await;
    assert_eq!(
        listed(call(&w, &w.ivan.1, "GET", "/meetings/spaces", None).await).len(),
        1
    );
    // Only the organizer deletes; deleting removes the chat with it.
    let r = call(
        &w,
        &w.ivan.1,
        "DELETE",
        &format!("/meetings/spaces/{sid}"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "organizer_only"));
    let r = call(
        &w,
        &w.olga.1,
        "DELETE",
        &format!("/meetings/spaces/{sid}"),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(
        &w,
        &w.olga.1,
        "GET",
        &format!("/meetings/spaces/{sid}"),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    let r = call(
        &w,
        &w.ivan.1,
        "GET",
        &format!("/chat/conversations/{cid}/messages"),
        None,
    )
    .await;
    assert_eq!(r.code(), "conversation_not_found");
    let audited: Vec<String> =
        w.h.runtime()
            .audit_log()
            .entries(&switchboard::audit::Scope::tenant("acme"), 0, 10_000)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
    for a in [
        "meeting.space.create",
        "meeting.space.delete",
        "chat.conversation.delete",
    ] {
        assert!(audited.iter().any(|x| x == a), "{a}");
    }
}

#[tokio::test]
async fn m5_m7_live_sessions_start_join_by_code_leave_end_and_stop_at_24_hours() {
    let w = world().await;
    let s = space(&w, "Stand-up").await;
    let sid = s["id"].as_str().unwrap().to_string();
    let code = s["code"].as_str().unwrap().to_string();
    let mut olga = switchboard_tests::stream::ready(&w.s, &w.olga.1).await;
    // Organizer or invitee starts; one at a time; others cannot.
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/spaces/{sid}/live"),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/spaces/{sid}/live"),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let lid = r.json()["id"].as_str().unwrap().to_string();
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/meetings/spaces/{sid}/live"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "live_exists"));
    // A registered user of the tenant with the code enters directly and is
    // then listed as having attended; the roster reaches those present.
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        "/meetings/join",
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["space"]["role"], "attended");
    let mut present: Vec<String> = Vec::new();
    while !present.contains(&w.nina.0) {
        let e = switchboard_tests::stream::next_of(
            &mut olga,
            "meeting.roster",
            std::time::Duration::from_secs(10),
        )
        .await
        .expect("a roster with nina in it");
        present = roster_ids(&e["data"]);
    }
    assert!(present.contains(&w.olga.0), "{present:?}");
    let r = call(&w, &w.nina.1, "GET", "/meetings/spaces", None).await;
    assert_eq!(r.json()["spaces"][0]["role"], "attended");
    // Having attended does not make one an organizer or invitee.
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/spaces/{sid}/live"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "organizer_or_invitee"));
    // Another tenant's user with the code gets nowhere.
    let r =
        w.s.call(
            "POST",
            "/api/v1/t/globex/p/meetings/join",
            Some(&w.gina.1),
            Some(&json!({"code": code})),
        )
        .await;
    assert_eq!(r.code(), "code_not_found");
    // Leave, then leave again.
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/leave"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/leave"),
        None,
    )
    .await;
    assert_eq!(r.code(), "not_in_session");
    // Only the organizer (or the starter) ends it; the space stays.
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/end"),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/end"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["ended_at"].as_u64().is_some());
    let r = call(
        &w,
        &w.olga.1,
        "GET",
        &format!("/meetings/spaces/{sid}"),
        None,
    )
    .await;
    assert_eq!((r.status, r.json().get("live").is_none()), (200, true));
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        "/meetings/join",
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(r.code(), "no_live_session");
    // The server ends a session at 24 hours: a durable timer, still there
    // after a restart.
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/meetings/spaces/{sid}/live"),
        None,
    )
    .await;
    let lid2 = r.json()["id"].as_str().unwrap().to_string();
    // What is on disk now, opened by a new process (a restart).
    w.h.runtime().flush().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    switchboard_tests::tamper::copy_dir(w.h.data_dir(), &data);
    let rt = switchboard::Runtime::open(switchboard::RuntimeConfig::new(&data)).unwrap();
    let now = switchboard::support::clock::now_ms();
    let stored = |rt: &switchboard::Runtime| -> Value {
        let raw = rt
            .data_store()
            .get(format!("t/acme/k/meetings/l/{lid2}").as_bytes())
            .unwrap()
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    // (Other timers — the sweep of globex's guess counters — may fire.)
    rt.fire_timers_due_by(now + 23 * 3_600_000).await;
    assert_eq!(
        stored(&rt)["ended_at"],
        Value::Null,
        "still running at 23 h"
    );
    assert!(rt.fire_timers_due_by(now + 24 * 3_600_000 + 60_000).await >= 1);
    let live = stored(&rt);
    assert!(live["ended_at"].as_u64().is_some(), "{live}");
    assert_eq!(live["ended_by"], Value::Null);
    let space: Value = serde_json::from_slice(
        &rt.data_store()
            .get(format!("t/acme/k/meetings/s/{sid}").as_bytes())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(
        space.get("live").is_none(),
        "the space stays, without a session: {space}"
    );
}

#[tokio::test]
async fn m2_guessing_codes_is_throttled_and_audited() {
    let w = world().await;
    let s = space(&w, "Board").await;
    let sid = s["id"].as_str().unwrap().to_string();
    let code = s["code"].as_str().unwrap().to_string();
    call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/spaces/{sid}/live"),
        None,
    )
    .await;
    for bad in ["", "12", "abcdefghij", "0000000001"] {
        let r = call(
            &w,
            &w.nina.1,
            "POST",
            "/meetings/join",
            Some(json!({"code": bad})),
        )
        .await;
        assert_eq!(r.code(), "code_not_found", "{bad}");
    }
    let mut refused = None;
    for i in 0..20u64 {
        let guess = format!("{}", 1_000_000_000 + i * 7_919);
        let r = call(
            &w,
            &w.nina.1,
            "POST",
            "/meetings/join",
            Some(json!({"code": guess})),
        )
        .await;
        if r.status == 429 {
            assert_eq!(r.code(), "too_many_attempts");
            assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() > 0);
            refused = Some(i);
            break;
        }
    }
    assert_eq!(
        refused,
        Some(6),
        "10 failures per address and window (4 before the loop)"
    );
    // Even the right code waits now.
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        "/meetings/join",
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(r.status, 429);
    // The address is locked out of the guests' public route as well.
    let r =
        w.s.call(
            "POST",
            "/api/v1/t/acme/p/meetings/guest/join",
            None,
            Some(&json!({"code": code, "name": "Mallory"})),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (429, "too_many_attempts"));
    let guesses =
        w.h.runtime()
            .audit_log()
            .entries(&switchboard::audit::Scope::tenant("acme"), 0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "meeting.code.guess")
            .count();
    assert_eq!(guesses, 10);
    // No code is stored in a key name.
    let keys =
        w.h.runtime()
            .data_store()
            .scan_raw(b"t/acme/k/meetings/", None, 10_000)
            .unwrap();
    assert!(
        keys.iter()
            .all(|(k, _)| !String::from_utf8_lossy(k).contains(&code))
    );
}

#[tokio::test]
async fn m7_guests_wait_until_a_registered_participant_admits_them_and_cannot_get_around_it() {
    let w = world().await;
    let (s, lid) = running(&w, "Vendor call").await;
    let code = s["code"].as_str().unwrap().to_string();
    let cid = s["conversation"].as_str().unwrap().to_string();
    // olga steps out: nobody is present to admit anyone.
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/leave"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    // The public join route checks the code and the name.
    for (body, status, code_) in [
        (
            json!({"code": "123456789", "name": "Gus"}),
            404,
            "code_not_found",
        ),
        (json!({"code": code, "name": "  "}), 400, "invalid_name"),
        (
            json!({"code": code, "name": "Gus\u{202e}sug"}),
            400,
            "invalid_name",
        ),
        (
            json!({"code": code, "name": "G\u{7}us"}),
            400,
            "invalid_name",
        ),
        (
            json!({"code": code, "name": "x".repeat(65)}),
            400,
            "invalid_name",
        ),
        (json!({"code": code}), 400, "invalid_json"),
    ] {
        let r =
            w.s.call(
                "POST",
                "/api/v1/t/acme/p/meetings/guest/join",
                None,
                Some(&body),
            )
            .await;
        assert_eq!((r.status, r.code().as_str()), (status, code_), "{body}");
    }
    // Another tenant's public route does not know the code.
    let r =
        w.s.call(
            "POST",
            "/api/v1/t/globex/p/meetings/guest/join",
            None,
            Some(&json!({"code": code, "name": "Gus"})),
        )
        .await;
    assert_eq!(r.code(), "code_not_found");
    let (gus, gus_id, mut gus_ws) = guest(&w, &code, "Gus Guest").await;
    assert!(gus_id.starts_with('g'), "{gus_id}");
    // Knocking again changes nothing.
    let r = call(
        &w,
        &gus,
        "POST",
        &format!("/meetings/live/{lid}/knock"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (200, Some("waiting"))
    );
    // Waiting: no chat, no signalling, no recording, no roster, no admitting
    // oneself, no space, no direct route to chat.
    let tries: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        (
            "GET",
            format!("/meetings/live/{lid}/chat/messages"),
            None,
            403,
            "not_admitted",
        ),
        (
            "POST",
            format!("/meetings/live/{lid}/chat/messages"),
            Some(json!({"text": "let me in"})),
            403,
            "not_admitted",
        ),
        (
            "POST",
            format!("/meetings/live/{lid}/signal"),
            Some(json!({"to": w.olga.0, "type": "offer", "data": {"sdp": "v=0"}})),
            403,
            "not_admitted",
        ),
        (
            "POST",
            format!("/meetings/live/{lid}/recording"),
            None,
            403,
            "registered_only",
        ),
        (
            "POST",
            format!("/meetings/live/{lid}/lobby/{gus_id}/admit"),
            None,
            403,
            "registered_only",
        ),
        (
            "GET",
            "/meetings/spaces".to_string(),
            None,
            403,
            "registered_only",
        ),
        (
            "POST",
            "/meetings/join".to_string(),
            Some(json!({"code": code})),
            403,
            "registered_only",
        ),
        (
            "POST",
            format!("/meetings/live/{lid}/invite"),
            Some(json!({"users": ["nina"]})),
            403,
            "registered_only",
        ),
        (
            "GET",
            format!("/chat/conversations/{cid}/messages"),
            None,
            403,
            "guest_scope",
        ),
    ];
    for (method, path, body, status, code_) in tries {
        let r = call(&w, &gus, method, &path, body).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code_),
            "{method} {path}"
        );
    }
    let r = call(&w, &gus, "GET", &format!("/meetings/live/{lid}"), None).await;
    assert_eq!(r.json()["state"], "waiting");
    assert!(r.json().get("participants").is_none(), "{}", r.text());
    // The guest session is for this live session only: another meeting
    // (same tenant) and another tenant refuse it.
    let (_, other) = running(&w, "Other meeting").await;
    for path in [
        format!("/meetings/live/{other}/knock"),
        format!("/meetings/live/{other}/chat/messages"),
    ] {
        let r = call(&w, &gus, "POST", &path, None).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "guest_scope"),
            "{path}"
        );
    }
    let r =
        w.s.call(
            "POST",
            &format!("/api/v1/t/globex/p/meetings/live/{lid}/knock"),
            Some(&gus),
            None,
        )
        .await;
    assert_eq!(r.code(), "wrong_tenant");
    // A registered user arriving learns who waits, and admits.
    let mut nina_ws = ready(&w.s, &w.nina.1).await;
    let r = join(&w, &w.nina.1, &code).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lobby = event(&mut nina_ws, "meeting.lobby").await;
    assert_eq!(lobby["waiting"][0]["id"], gus_id.as_str());
    assert_eq!(lobby["waiting"][0]["name"], "Gus Guest");
    assert_eq!(lobby["waiting"][0]["kind"], "guest");
    // Deciding needs someone waiting and someone present.
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/meetings/live/{lid}/lobby/{gus_id}/admit"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "not_in_session"));
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/lobby/gnobody/admit"),
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "participant_not_found")
    );
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/lobby/{gus_id}/admit"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(roster_ids(&r.json()).contains(&gus_id));
    let admitted = event(&mut gus_ws, "meeting.admitted").await;
    assert_eq!(admitted["conversation"], cid.as_str());
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/lobby/{gus_id}/admit"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "not_waiting"));
    // Admitted: the guest chats (through meetings) and shares a file;
    // members see it in the space's chat.
    let r = call(
        &w,
        &gus,
        "POST",
        &format!("/meetings/live/{lid}/chat/messages"),
        Some(json!({"text": "hello from the guest"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = w
        .s
        .raw(
            &gus,
            "POST",
            &format!("/api/v1/t/acme/p/meetings/live/{lid}/chat/attachments?name=notes.txt&type=text/plain"),
            &[],
            b"minutes of the vendor call",
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let aid = r.json()["id"].as_str().unwrap().to_string();
    let r = call(
        &w,
        &gus,
        "POST",
        &format!("/meetings/live/{lid}/chat/messages"),
        Some(json!({"text": "notes", "attachments": [aid]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r =
        w.s.raw(
            &gus,
            "GET",
            &format!("/api/v1/t/acme/p/meetings/live/{lid}/chat/attachments/{aid}"),
            &[("range", "bytes=0-7")],
            b"",
        )
        .await;
    assert_eq!((r.status, r.body.as_slice()), (206, &b"minutes "[..]));
    let r = call(
        &w,
        &w.ivan.1,
        "GET",
        &format!("/chat/conversations/{cid}/messages"),
        None,
    )
    .await;
    let texts: Vec<String> = r.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert!(
        texts.contains(&"hello from the guest".to_string()),
        "{texts:?}"
    );
    // The proxy reaches only the space's conversation.
    for path in [
        "search?q=hello".to_string(),
        format!("../../conversations/{cid}/messages"),
        "messages/../members".to_string(),
        "members".to_string(),
    ] {
        let r = call(
            &w,
            &gus,
            "GET",
            &format!("/meetings/live/{lid}/chat/{path}"),
            None,
        )
        .await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    // A second guest is turned away, and stays away.
    let (vic, vic_id, mut vic_ws) = guest(&w, &code, "Vic").await;
    event_until(&mut nina_ws, "meeting.lobby", |l| {
        l["waiting"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == vic_id.as_str())
    })
    .await;
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/lobby/{vic_id}/reject"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    event(&mut vic_ws, "meeting.rejected").await;
    let r = call(
        &w,
        &vic,
        "POST",
        &format!("/meetings/live/{lid}/knock"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "turned_away"));
    let r = call(
        &w,
        &vic,
        "POST",
        &format!("/meetings/live/{lid}/chat/messages"),
        Some(json!({"text": "sneaking in"})),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "not_in_session"));
    // Removing the guest ends their chat at once.
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/participants/{gus_id}/remove"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    event(&mut gus_ws, "meeting.removed").await;
    let r = call(
        &w,
        &gus,
        "GET",
        &format!("/meetings/live/{lid}/chat/messages"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "not_in_session"));
    let r = call(
        &w,
        &w.olga.1,
        "GET",
        &format!("/chat/conversations/{cid}/members"),
        None,
    )
    .await;
    assert!(!r.text().contains(&gus_id), "{}", r.text());
    let r = call(
        &w,
        &gus,
        "POST",
        &format!("/meetings/live/{lid}/knock"),
        None,
    )
    .await;
    assert_eq!(r.code(), "turned_away");
    // Everything was audited, with addresses.
    let entries = audited(&w);
    for action in [
        "meeting.guest.session",
        "meeting.knock",
        "meeting.admit",
        "meeting.reject",
        "meeting.remove",
        "meeting.join",
        "meeting.leave",
        "chat.file.add",
        "guest.session",
    ] {
        assert!(entries.iter().any(|e| e.action == action), "{action}");
    }
    let admit = entries
        .iter()
        .find(|e| e.action == "meeting.admit")
        .unwrap();
    assert!(
        admit.details.contains(&gus_id) && admit.details.contains("127.0.0.1"),
        "{}",
        admit.details
    );
    let leave = entries
        .iter()
        .find(|e| e.action == "meeting.leave")
        .unwrap();
    assert!(leave.details.contains("127.0.0.1"), "{}", leave.details);
}

#[tokio::test]
async fn m6_m8_m10_participants_are_removed_invited_and_signal_only_to_each_other() {
    let w = world().await;
    let (s, lid) = running(&w, "Planning").await;
    let sid = s["id"].as_str().unwrap().to_string();
    let code = s["code"].as_str().unwrap().to_string();
    let mut olga_ws = ready(&w.s, &w.olga.1).await;
    let mut nina_ws = ready(&w.s, &w.nina.1).await;
    let mut paul_ws = ready(&w.s, &w.paul.1).await;
    assert_eq!(join(&w, &w.nina.1, &code).await.status, 200);
    let roster = event_until(&mut olga_ws, "meeting.roster", |r| {
        roster_ids(r).contains(&w.nina.0)
    })
    .await;
    let nina = roster["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == w.nina.0.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (nina["kind"].as_str(), nina["role"].as_str()),
        (Some("registered"), Some("attended"))
    );
    assert!(
        nina["name"].as_str().is_some_and(|n| !n.is_empty()),
        "{nina}"
    );
    // Invitations during the session: refused for bad input, by people not
    // present, then accepted; the invitee is told, with the code, and gets
    // the space's chat.
    for (body, status, code_) in [
        (json!({"users": []}), 400, "invalid_users"),
        (json!({"users": ["nobody"]}), 400, "unknown_user"),
        (json!({"users": ["gina"]}), 400, "unknown_user"),
        (json!({"people": ["paul"]}), 400, "invalid_json"),
    ] {
        let r = call(
            &w,
            &w.nina.1,
            "POST",
            &format!("/meetings/live/{lid}/invite"),
            Some(body.clone()),
        )
        .await;
        assert_eq!((r.status, r.code().as_str()), (status, code_), "{body}");
    }
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/meetings/live/{lid}/invite"),
        Some(json!({"users": ["paul"]})),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "not_in_session"));
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/invite"),
        Some(json!({"users": ["paul", "ivan"]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["invited"],
        json!([w.paul.0]),
        "ivan was invited already"
    );
    let invited = event(&mut paul_ws, "meeting.invited").await;
    assert_eq!(invited["code"], code.as_str());
    let r = call(
        &w,
        &w.paul.1,
        "GET",
        &format!("/meetings/spaces/{sid}"),
        None,
    )
    .await;
    assert_eq!(r.json()["role"], "invited");
    let r = call(
        &w,
        &w.paul.1,
        "POST",
        &format!(
            "/chat/conversations/{}/messages",
            s["conversation"].as_str().unwrap()
        ),
        Some(json!({"text": "thanks for the invite"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Signalling between participants present, and nowhere else.
    let offer = json!({"sdp": "v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\n", "type": "offer"});
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/signal"),
        Some(json!({"to": w.nina.0, "type": "offer", "data": offer})),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let got = event(&mut nina_ws, "meeting.signal").await;
    assert_eq!(
        (got["from"].as_str(), got["type"].as_str()),
        (Some(w.olga.0.as_str()), Some("offer"))
    );
    assert_eq!(got["data"], offer);
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/signal"),
        Some(json!({"to": w.olga.0, "type": "candidate", "data": {"candidate": "candidate:1 1 UDP 2122252543 127.0.0.1 50000 typ host"}})),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(
        event(&mut olga_ws, "meeting.signal").await["type"],
        "candidate"
    );
    for (body, status, code_) in [
        (
            json!({"to": w.ivan.0, "type": "offer", "data": {}}),
            404,
            "participant_not_found",
        ),
        (
            json!({"to": w.gina.0, "type": "offer", "data": {}}),
            404,
            "participant_not_found",
        ),
        (
            json!({"to": w.olga.0, "type": "exec", "data": {}}),
            400,
            "invalid_signal",
        ),
        (
            json!({"to": w.nina.0, "type": "offer", "data": {}}),
            400,
            "invalid_signal",
        ),
        (
            json!({"to": "../x", "type": "offer", "data": {}}),
            400,
            "invalid_user",
        ),
        (
            json!({"to": w.olga.0, "type": "offer", "data": "x".repeat(40_000)}),
            413,
            "signal_too_large",
        ),
    ] {
        let r = call(
            &w,
            &w.nina.1,
            "POST",
            &format!("/meetings/live/{lid}/signal"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code_),
            "{}",
            body["type"]
        );
    }
    for (token, status, code_) in [
        (&w.ivan.1, 409, "not_in_session"),
        (&w.gina.1, 403, "wrong_tenant"),
    ] {
        let r = call(
            &w,
            token,
            "POST",
            &format!("/meetings/live/{lid}/signal"),
            Some(json!({"to": w.olga.0, "type": "offer", "data": {}})),
        )
        .await;
        assert_eq!((r.status, r.code().as_str()), (status, code_));
    }
    // A PSTN caller, brought in by a telephony plugin (the owner fixture
    // stands in for it): users cannot call that route themselves.
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        "/meetings/pstn/join",
        Some(json!({"code": code, "caller": "+1 555 0100"})),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "plugins_only"));
    // globex has named no telephony plugin: the same fixture is refused.
    let r =
        w.s.call(
            "POST",
            "/api/v1/t/globex/p/owner/meetings/pstn/join",
            Some(&w.gina.1),
            Some(&json!({"code": code, "caller": "+1 555 0100"})),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (403, "not_telephony"));
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        "/owner/meetings/pstn/join",
        Some(json!({"code": code, "caller": "+1 555 •••• 0100"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let pstn = r.json()["participant"].as_str().unwrap().to_string();
    assert_eq!(r.json()["recording"], false);
    let roster = event_until(&mut olga_ws, "meeting.roster", |r| {
        roster_ids(r).contains(&pstn)
    })
    .await;
    let kinds: BTreeSet<String> = roster["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["pstn".to_string(), "registered".to_string()])
    );
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/signal"),
        Some(json!({"to": pstn, "type": "offer", "data": {}})),
    )
    .await;
    assert_eq!(
        r.code(),
        "participant_not_found",
        "PSTN media does not go over WebRTC signalling"
    );
    // Removals: not the organizer, not oneself; removed users leave the
    // roster and lose signalling, and may come back with the code.
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/participants/{}/remove", w.olga.0),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "organizer_protected"));
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/participants/{}/remove", w.nina.0),
        None,
    )
    .await;
    assert_eq!(r.code(), "use_leave");
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/participants/{}/remove", w.ivan.0),
        None,
    )
    .await;
    assert_eq!(r.code(), "participant_not_found");
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/participants/{}/remove", w.nina.0),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        event(&mut nina_ws, "meeting.removed").await["by"],
        w.olga.0.as_str()
    );
    event_until(&mut olga_ws, "meeting.roster", |r| {
        !roster_ids(r).contains(&w.nina.0)
    })
    .await;
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/signal"),
        Some(json!({"to": w.olga.0, "type": "offer", "data": {}})),
    )
    .await;
    assert_eq!(r.code(), "not_in_session");
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/owner/meetings/live/{lid}/pstn/{pstn}/leave"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/owner/meetings/live/{lid}/pstn/{pstn}/leave"),
        None,
    )
    .await;
    assert_eq!(r.code(), "participant_not_found");
    // Removed from this session means out of it, code or not.
    let r = join(&w, &w.nina.1, &code).await;
    assert_eq!((r.status, r.code().as_str()), (403, "removed"));
    let entries = audited(&w);
    let removal = entries
        .iter()
        .find(|e| e.action == "meeting.remove")
        .unwrap();
    assert!(
        removal.details.contains(&w.nina.0) && removal.details.contains(&w.olga.0),
        "{}",
        removal.details
    );
    assert!(
        entries
            .iter()
            .any(|e| e.action == "meeting.invite" && e.details.contains(&w.paul.0))
    );
    assert!(
        entries
            .iter()
            .any(|e| e.action == "meeting.join" && e.details.contains("pstn"))
    );
}

#[tokio::test]
async fn m9_any_registered_participant_records_only_the_initiator_stops_and_everyone_is_told() {
    let w = world().await;
    let (s, lid) = running(&w, "All hands").await;
    let sid = s["id"].as_str().unwrap().to_string();
    let code = s["code"].as_str().unwrap().to_string();
    let mut olga_ws = ready(&w.s, &w.olga.1).await;
    let mut ivan_ws = ready(&w.s, &w.ivan.1).await;
    assert_eq!(join(&w, &w.nina.1, &code).await.status, 200);
    let (gus, gus_id, mut gus_ws) = guest(&w, &code, "Gus").await;
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/lobby/{gus_id}/admit"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Guests and people not present do not record.
    let r = call(
        &w,
        &gus,
        "POST",
        &format!("/meetings/live/{lid}/recording"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "registered_only"));
    let r = call(
        &w,
        &w.ivan.1,
        "POST",
        &format!("/meetings/live/{lid}/recording"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "not_in_session"));
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/recording/stop"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "not_recording"));
    // nina (an attendee) starts it; everyone present is told.
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/recording"),
        Some(json!({"content_type": "audio/webm"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rid = r.json()["id"].as_str().unwrap().to_string();
    for ws in [&mut olga_ws, &mut gus_ws] {
        let e = event(ws, "meeting.recording").await;
        assert_eq!(
            (e["on"].as_bool(), e["by"].as_str()),
            (Some(true), Some(w.nina.0.as_str()))
        );
    }
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/recording"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "already_recording"));
    // Later joiners are told and become participants of the recording; a
    // PSTN caller's leg is told to announce it.
    assert_eq!(join(&w, &w.ivan.1, &code).await.status, 200);
    let e = event(&mut ivan_ws, "meeting.recording").await;
    assert_eq!(e["recording"], rid.as_str());
    let r = call(
        &w,
        &w.ivan.1,
        "GET",
        &format!("/recording/recordings/{rid}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "ivan may see the recording: {}", r.text());
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        "/owner/meetings/pstn/join",
        Some(json!({"code": code, "caller": "Dial-in 1"})),
    )
    .await;
    assert_eq!(
        (
            r.json()["recording"].as_bool(),
            r.json()["announce"].is_string()
        ),
        (Some(true), true)
    );
    // Only the initiator stops it.
    for (token, status, code_) in [
        (&w.olga.1, 403, "not_initiator"),
        (&gus, 403, "registered_only"),
        (&w.paul.1, 409, "not_in_session"),
    ] {
        let r = call(
            &w,
            token,
            "POST",
            &format!("/meetings/live/{lid}/recording/stop"),
            None,
        )
        .await;
        assert_eq!((r.status, r.code().as_str()), (status, code_));
    }
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/recording/recordings/{rid}/stop"),
        None,
    )
    .await;
    assert_eq!(
        r.code(),
        "not_initiator",
        "nor through the recording plugin"
    );
    let r = call(
        &w,
        &w.nina.1,
        "POST",
        &format!("/meetings/live/{lid}/recording/stop"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "stopped");
    let e = event_until(&mut olga_ws, "meeting.recording", |e| e["on"] == false).await;
    assert_eq!(e["recording"], rid.as_str());
    // olga records and stops it herself through the recording plugin:
    // meetings notices, and recording can start again.
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/recording"),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rid_direct = r.json()["id"].as_str().unwrap().to_string();
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/recording/recordings/{rid_direct}/stop"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/recording/stop"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "not_recording"));
    // olga records again; ending the session stops and seals it.
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/recording"),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rid2 = r.json()["id"].as_str().unwrap().to_string();
    let r = call(
        &w,
        &w.olga.1,
        "POST",
        &format!("/meetings/live/{lid}/end"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    event(&mut gus_ws, "meeting.ended").await;
    let r = call(
        &w,
        &w.olga.1,
        "GET",
        &format!("/recording/recordings/{rid2}"),
        None,
    )
    .await;
    assert_eq!(r.json()["state"], "stopped", "{}", r.text());
    let r = call(
        &w,
        &gus,
        "GET",
        &format!("/meetings/live/{lid}/chat/messages"),
        None,
    )
    .await;
    assert_eq!(r.code(), "live_ended");
    // Deleting the space deletes its recordings (media shredded).
    let r = call(
        &w,
        &w.olga.1,
        "DELETE",
        &format!("/meetings/spaces/{sid}"),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    for (token, rid) in [
        (&w.nina.1, &rid),
        (&w.olga.1, &rid_direct),
        (&w.olga.1, &rid2),
    ] {
        let r = call(
            &w,
            token,
            "GET",
            &format!("/recording/recordings/{rid}"),
            None,
        )
        .await;
        assert_eq!(r.json()["state"], "shredded", "{}", r.text());
    }
    let entries = audited(&w);
    for action in [
        "meeting.recording.start",
        "meeting.recording.stop",
        "recording.start",
        "recording.stop",
        "recording.delete",
        "meeting.live.end",
        "meeting.space.delete",
    ] {
        assert!(entries.iter().any(|e| e.action == action), "{action}");
    }
    assert!(
        entries
            .iter()
            .any(|e| e.action == "recording.stop" && e.details.contains("source_ended"))
    );
    // Nothing of the space is left in the store but tombstones elsewhere.
    let keys =
        w.h.runtime()
            .data_store()
            .scan_raw(b"t/acme/k/meetings/", None, 100_000)
            .unwrap();
    let left: Vec<String> = keys
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .filter(|k| k.contains(&sid) || k.contains(&lid))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
