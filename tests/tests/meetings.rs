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
