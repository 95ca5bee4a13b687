//! Meeting spaces (SPEC M1-M4, the first part of the meetings plugin)
//! through the real HTTPS API: spaces with invitees and an access code,
//! their chat owned in the chat plugin and usable before any live session,
//! listing by role, hiding, deletion by the organizer only, isolation.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use switchboard::harness::Harness;
use switchboard_tests::accounts::people;
use switchboard_tests::http::{Reply, Server};
use switchboard_tests::{component, manifest};

struct World {
    h: Harness,
    s: Server,
    /// (id, token): acme's olga (organizer), ivan (invited), nina (neither);
    /// globex's gina.
    olga: (String, String),
    ivan: (String, String),
    nina: (String, String),
    gina: (String, String),
}

async fn world() -> World {
    let h = Harness::new().unwrap();
    for p in ["chat", "recording", "meetings"] {
        h.install(&manifest(p), &component(p)).await.unwrap();
    }
    for t in ["acme", "globex"] {
        h.tenant(t).await.unwrap();
        for p in ["chat", "recording", "meetings"] {
            h.enable(t, p).await.unwrap();
        }
    }
    let s = Server::start(h.runtime().clone()).await;
    let mut u = people(
        &h,
        &s,
        &[
            ("acme", "olga", "user"),
            ("acme", "ivan", "user"),
            ("acme", "nina", "user"),
            ("globex", "gina", "user"),
        ],
    )
    .await
    .into_iter();
    World {
        olga: u.next().unwrap(),
        ivan: u.next().unwrap(),
        nina: u.next().unwrap(),
        gina: u.next().unwrap(),
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
    let _ = sid;
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
        present = serde_json::from_value(e["data"]["participants"].clone()).unwrap();
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
    let now = switchboard::capability::timers::now_ms();
    assert_eq!(rt.fire_timers_due_by(now + 23 * 3_600_000).await, 0);
    assert_eq!(
        rt.fire_timers_due_by(now + 24 * 3_600_000 + 60_000).await,
        1
    );
    let keys = rt
        .data_store()
        .get(format!("t/acme/k/meetings/l/{lid2}").as_bytes())
        .unwrap()
        .unwrap();
    let live: Value = serde_json::from_slice(&keys).unwrap();
    assert!(live["ended_at"].as_u64().is_some(), "{live}");
    assert_eq!(live["ended_by"], Value::Null);
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
