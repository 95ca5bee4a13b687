//! The chat plugin (SPEC C1-C7) through the real HTTPS API and WebSocket
//! event streams: conversations, messages and paging, the edit/delete
//! policy, replies, attachments, real-time delivery, read state, presence,
//! search, and conversations owned by another plugin — each with its
//! hostile cases (non-members, other tenants, forged ids, bad input).

use std::time::Duration;

use serde_json::{Value, json};
use switchboard::harness::Harness;
use switchboard::tenant::Limits;
use switchboard_tests::http::Reply;
use switchboard_tests::stream::{next, next_of, ready};
use switchboard_tests::world::World;
use switchboard_tests::{component, manifest, two_tenants};

async fn world_with(limits: Limits) -> World {
    let h = two_tenants(&["chat", "owner"], limits).await;
    // A second owning plugin: the same code under another name.
    let rival = String::from_utf8(manifest("owner"))
        .unwrap()
        .replace("name = \"owner\"", "name = \"rival\"");
    h.install(rival.as_bytes(), &component("owner"))
        .await
        .unwrap();
    h.enable("acme", "rival").await.unwrap();
    World::start(h).await
}

async fn world() -> World {
    world_with(Limits::default()).await
}

/// A JSON call to acme's chat as `token`.
async fn chat(w: &World, token: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    call_in(w, "acme", "chat", token, method, path, body).await
}

async fn call_in(
    w: &World,
    tenant: &str,
    plugin: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    w.s.plugin_call(tenant, plugin, token, method, path, body.as_ref())
        .await
}

/// A raw-body call (uploads, malformed JSON, ranges).
async fn raw(
    w: &World,
    token: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let path = format!("/api/v1/t/acme/p/chat{path}");
    w.s.raw(token, method, &path, extra, body).await
}

async fn group(w: &World, title: &str, members: &[&str]) -> String {
    let r = chat(
        w,
        &w.alice.1,
        "POST",
        "/conversations",
        Some(json!({"kind": "group", "title": title, "members": members})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

async fn post(w: &World, token: &str, cid: &str, body: Value) -> Reply {
    chat(
        w,
        token,
        "POST",
        &format!("/conversations/{cid}/messages"),
        Some(body),
    )
    .await
}

async fn last_seq(w: &World, cid: &str) -> u64 {
    let r = chat(w, &w.alice.1, "GET", &format!("/conversations/{cid}"), None).await;
    r.json()["last_seq"].as_u64().unwrap()
}

fn audit_actions(w: &World) -> Vec<(String, String)> {
    w.h.runtime()
        .audit_log()
        .entries(&switchboard::audit::Scope::tenant("acme"), 0, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| (e.action.clone(), e.target.clone()))
        .collect()
}

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(400);

#[tokio::test]
async fn c1_direct_and_group_conversations_with_their_members_only() {
    let w = world().await;
    // Direct: one per pair, whoever starts it, by id or login name.
    let r = chat(
        &w,
        &w.alice.1,
        "POST",
        "/conversations",
        Some(json!({"kind": "direct", "user": "bob"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let direct = r.json()["id"].as_str().unwrap().to_string();
    let r = chat(
        &w,
        &w.bob.1,
        "POST",
        "/conversations",
        Some(json!({"kind": "direct", "user": w.alice.0})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], direct.as_str());
    for (body, code) in [
        (json!({"kind": "direct", "user": "alice"}), "invalid_member"),
        (json!({"kind": "direct", "user": "nobody"}), "unknown_user"),
        (json!({"kind": "direct", "user": "gina"}), "unknown_user"),
        (json!({"kind": "direct", "user": w.gina.0}), "unknown_user"),
        (json!({"kind": "direct"}), "invalid_member"),
        (json!({"kind": "owned", "title": "x"}), "invalid_kind"),
        (json!({"kind": "group", "title": "   "}), "invalid_title"),
        (
            json!({"kind": "group", "title": "\u{200b}"}),
            "invalid_title",
        ),
        (json!({"kind": "channel"}), "invalid_json"),
        (
            json!({"kind": "group", "title": "t", "extra": 1}),
            "invalid_json",
        ),
    ] {
        let r = chat(&w, &w.alice.1, "POST", "/conversations", Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.code(), code, "{body}");
    }
    // Group: named, created with members.
    let g = group(&w, "Launch", &["bob"]).await;
    let r = chat(&w, &w.alice.1, "GET", "/conversations", None).await;
    let ids: Vec<String> = r.json()["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&direct) && ids.contains(&g), "{ids:?}");
    let listed = chat(&w, &w.carol.1, "GET", "/conversations", None).await;
    assert_eq!(listed.json()["conversations"], json!([]));
    // A non-member gets the same 404 as for a conversation that does not
    // exist; a malformed id is a 400.
    for path in [
        format!("/conversations/{g}"),
        format!("/conversations/{g}/messages"),
        format!("/conversations/{g}/members"),
        format!("/conversations/{}", "0".repeat(32)),
    ] {
        let r = chat(&w, &w.carol.1, "GET", &path, None).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.code(), "conversation_not_found");
    }
    for bad in ["xyz", "%2e%2e", &"A".repeat(32), &"0".repeat(33)] {
        let r = chat(
            &w,
            &w.alice.1,
            "GET",
            &format!("/conversations/{bad}"),
            None,
        )
        .await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.code(), "invalid_id");
    }
    // Another tenant: gina's session is refused by the gateway, and
    // globex's chat knows nothing of acme's conversation.
    let r = chat(&w, &w.gina.1, "GET", &format!("/conversations/{g}"), None).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "wrong_tenant");
    let r = call_in(
        &w,
        "globex",
        "chat",
        &w.gina.1,
        "GET",
        &format!("/conversations/{g}"),
        None,
    )
    .await;
    assert_eq!(r.code(), "conversation_not_found");
    // Members add members; a direct conversation keeps its two.
    let r = chat(
        &w,
        &w.bob.1,
        "POST",
        &format!("/conversations/{g}/members"),
        Some(json!({"users": ["carol"]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["members"], 3);
    let r = chat(
        &w,
        &w.alice.1,
        "POST",
        &format!("/conversations/{direct}/members"),
        Some(json!({"users": ["carol"]})),
    )
    .await;
    assert_eq!(r.code(), "not_a_group");
    // A removed member loses access at once.
    assert_eq!(
        post(&w, &w.carol.1, &g, json!({"text": "hi all"}))
            .await
            .status,
        201
    );
    let r = chat(
        &w,
        &w.alice.1,
        "DELETE",
        &format!("/conversations/{g}/members/{}", w.carol.0),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&w, &w.carol.1, &g, json!({"text": "still here?"})).await;
    assert_eq!(r.code(), "conversation_not_found");
    let r = chat(
        &w,
        &w.carol.1,
        "GET",
        &format!("/conversations/{g}/messages"),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    let r = chat(
        &w,
        &w.alice.1,
        "DELETE",
        &format!("/conversations/{g}/members/{}", w.carol.0),
        None,
    )
    .await;
    assert_eq!(r.code(), "member_not_found");
    // Past the member cap a change is refused whole.
    let mut cfg = serde_json::Map::new();
    cfg.insert("max-group-members".into(), 3.into());
    w.h.runtime().set_config("acme", "chat", cfg).await.unwrap();
    let r = chat(
        &w,
        &w.alice.1,
        "POST",
        &format!("/conversations/{g}/members"),
        Some(json!({"users": ["carol", "boss"]})),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (413, "too_many_members"));
    let r = chat(&w, &w.carol.1, "GET", &format!("/conversations/{g}"), None).await;
    assert_eq!(r.status, 404, "nothing of the refused change was kept");
    // A tenant admin who is not a member manages members but cannot read
    // the group by adding themselves.
    let r = chat(
        &w,
        &w.admin.1,
        "POST",
        &format!("/conversations/{g}/members"),
        Some(json!({"users": ["boss"]})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = chat(
        &w,
        &w.admin.1,
        "POST",
        &format!("/conversations/{g}/members"),
        Some(json!({"users": ["carol"]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        chat(
            &w,
            &w.admin.1,
            "GET",
            &format!("/conversations/{g}/messages"),
            None
        )
        .await
        .status,
        404
    );
    // Lowering the cap below a group's size still lets members leave.
    let mut cfg = serde_json::Map::new();
    cfg.insert("max-group-members".into(), 2.into());
    w.h.runtime().set_config("acme", "chat", cfg).await.unwrap();
    let r = chat(
        &w,
        &w.carol.1,
        "DELETE",
        &format!("/conversations/{g}/members/{}", w.carol.0),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The membership changes are in the tenant's audit trail.
    let actions = audit_actions(&w);
    assert!(actions.iter().any(|(a, _)| a == "chat.member.add"));
    assert!(actions.iter().any(|(a, _)| a == "chat.member.remove"));
}

#[tokio::test]
async fn c2_messages_page_and_bad_input_stores_nothing() {
    let w = world().await;
    let g = group(&w, "Paging", &["bob"]).await;
    for i in 1..=120 {
        let r = post(&w, &w.alice.1, &g, json!({"text": format!("message {i}")})).await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.json()["seq"], i);
    }
    // Newest first, then from the cursor.
    let r = chat(
        &w,
        &w.bob.1,
        "GET",
        &format!("/conversations/{g}/messages?limit=50"),
        None,
    )
    .await;
    let page = r.json();
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (71..=120).rev().collect::<Vec<_>>());
    assert_eq!(page["next_before"], 71);
    let r = chat(
        &w,
        &w.bob.1,
        "GET",
        &format!("/conversations/{g}/messages?limit=50&before=71"),
        None,
    )
    .await;
    assert_eq!(r.json()["messages"][0]["seq"], 70);
    let r = chat(
        &w,
        &w.bob.1,
        "GET",
        &format!("/conversations/{g}/messages?limit=200&before=21"),
        None,
    )
    .await;
    assert_eq!(r.json()["messages"].as_array().unwrap().len(), 20);
    assert_eq!(r.json()["next_before"], Value::Null);
    // Oldest first after a cursor (catching up).
    let r = chat(
        &w,
        &w.bob.1,
        "GET",
        &format!("/conversations/{g}/messages?after=100&limit=10"),
        None,
    )
    .await;
    let page = r.json();
    assert_eq!(page["messages"][0]["seq"], 101);
    assert_eq!(page["messages"][9]["seq"], 110);
    assert_eq!(page["next_after"], 110);
    let r = chat(
        &w,
        &w.bob.1,
        "GET",
        &format!("/conversations/{g}/messages/7"),
        None,
    )
    .await;
    assert_eq!(r.json()["text"], "message 7");
    assert_eq!(r.json()["sender"], w.alice.0.as_str());
    // Forged and malformed message ids and cursors.
    for (path, status, code) in [
        ("/messages/0", 400, "invalid_id"),
        ("/messages/007", 400, "invalid_id"),
        ("/messages/-1", 400, "invalid_id"),
        ("/messages/1e3", 400, "invalid_id"),
        ("/messages/99999999999999999999999", 400, "invalid_id"),
        ("/messages/121", 404, "message_not_found"),
        ("/messages?before=x", 400, "invalid_id"),
        ("/messages?before=5&after=1", 400, "invalid_cursor"),
        ("/messages?limit=0", 400, "invalid_limit"),
        ("/messages?limit=100000", 400, "invalid_limit"),
    ] {
        let r = chat(
            &w,
            &w.bob.1,
            "GET",
            &format!("/conversations/{g}{path}"),
            None,
        )
        .await;
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert_eq!(r.code(), code, "{path}");
    }
    // Bad input: clear codes, nothing stored.
    let long = "x".repeat(4001);
    for (body, status, code) in [
        (json!({"text": ""}), 400, "empty_message"),
        (json!({"text": " \n\t "}), 400, "empty_message"),
        (
            json!({"text": "\u{200b}\u{feff}\u{2060}"}),
            400,
            "empty_message",
        ),
        (json!({}), 400, "empty_message"),
        (json!({"text": long}), 413, "message_too_long"),
        (json!({"text": "bell\u{7}"}), 400, "invalid_text"),
        (json!({"text": "nul\u{0}"}), 400, "invalid_text"),
        (json!({"text": 5}), 400, "invalid_json"),
        (json!({"text": "hi", "colour": "red"}), 400, "invalid_json"),
        (
            json!({"text": "hi", "reply_to": 999}),
            404,
            "message_not_found",
        ),
        (
            json!({"text": "hi", "attachments": ["nope"]}),
            400,
            "invalid_id",
        ),
        (
            json!({"text": "hi", "attachments": ["0123456789abcdef0123456789abcdef"]}),
            400,
            "invalid_attachment",
        ),
        (
            json!({"text": "hi", "client_id": "a b"}),
            400,
            "invalid_client_id",
        ),
    ] {
        let r = post(&w, &w.alice.1, &g, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert_eq!(r.code(), code, "{body}");
    }
    for bad in [&b"{\"text\": "[..], b"not json", &[0xff, 0xfe][..], b""] {
        let r = raw(
            &w,
            &w.alice.1,
            "POST",
            &format!("/conversations/{g}/messages"),
            &[("content-type", "application/json")],
            bad,
        )
        .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.code(), "invalid_json");
    }
    assert_eq!(last_seq(&w, &g).await, 120, "refused posts stored nothing");
    // Unicode arrives exactly as sent: emoji sequences, combining marks,
    // right-to-left text and overrides, astral characters, and exactly the
    // limit in characters (not bytes).
    for text in [
        "👩‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽",
        "e\u{301}\u{301}\u{301} zalgo a\u{0338}",
        "שלום עולם مرحبا",
        "evil\u{202e}txt.exe",
        "𝕳𝖊𝖑𝖑𝖔 𠜎𠜱",
        &"🎉".repeat(4000),
    ] {
        let r = post(&w, &w.alice.1, &g, json!({"text": text})).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let seq = r.json()["seq"].as_u64().unwrap();
        let back = chat(
            &w,
            &w.bob.1,
            "GET",
            &format!("/conversations/{g}/messages/{seq}"),
            None,
        )
        .await;
        assert_eq!(back.json()["text"].as_str().unwrap(), text);
    }
    // A retried post with the same client id is stored once.
    let first = post(
        &w,
        &w.alice.1,
        &g,
        json!({"text": "once", "client_id": "c-1"}),
    )
    .await;
    let again = post(
        &w,
        &w.alice.1,
        &g,
        json!({"text": "once", "client_id": "c-1"}),
    )
    .await;
    assert_eq!(first.status, 201);
    assert_eq!(again.status, 200);
    assert_eq!(first.json()["seq"], again.json()["seq"]);
    assert_eq!(last_seq(&w, &g).await, 127);
    // Also when the first post took an attachment with it.
    let up = raw(
        &w,
        &w.alice.1,
        "POST",
        &format!("/conversations/{g}/attachments?name=a.txt"),
        &[],
        b"data",
    )
    .await;
    let aid = up.json()["id"].as_str().unwrap().to_string();
    let body = json!({"text": "with file", "attachments": [aid], "client_id": "c-2"});
    let first = post(&w, &w.alice.1, &g, body.clone()).await;
    let again = post(&w, &w.alice.1, &g, body).await;
    assert_eq!((first.status, again.status), (201, 200), "{}", again.text());
    assert_eq!(first.json()["seq"], again.json()["seq"]);
}

async fn set_policy(w: &World, edit: bool, delete: bool) {
    let r =
        w.s.call(
            "PUT",
            "/api/v1/admin/tenants/acme/plugins/chat/config",
            Some(&w.admin.1),
            Some(&json!({"allow-edit": edit, "allow-delete": delete})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config"]["allow-edit"], edit);
}

#[tokio::test]
async fn c3_senders_edit_and_delete_under_the_tenant_policy_with_history_and_audit() {
    let w = world().await;
    let g = group(&w, "Edits", &["bob"]).await;
    let seq = post(&w, &w.alice.1, &g, json!({"text": "first draft"}))
        .await
        .json()["seq"]
        .as_u64()
        .unwrap();
    let path = format!("/conversations/{g}/messages/{seq}");
    let r = chat(
        &w,
        &w.alice.1,
        "PATCH",
        &path,
        Some(json!({"text": "second draft"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["edits"], 1);
    assert!(r.json()["edited_at"].as_u64().is_some());
    chat(
        &w,
        &w.alice.1,
        "PATCH",
        &path,
        Some(json!({"text": "final"})),
    )
    .await;
    // Members see the history.
    let h = chat(&w, &w.bob.1, "GET", &format!("{path}/history"), None)
        .await
        .json();
    assert_eq!(h["message"]["text"], "final");
    let texts: Vec<&str> = h["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first draft", "second draft"]);
    // Nobody changes someone else's message; bad edits change nothing.
    let r = chat(
        &w,
        &w.bob.1,
        "PATCH",
        &path,
        Some(json!({"text": "hijack"})),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "not_sender"));
    let r = chat(&w, &w.bob.1, "DELETE", &path, None).await;
    assert_eq!((r.status, r.code().as_str()), (403, "not_sender"));
    let r = chat(&w, &w.carol.1, "PATCH", &path, Some(json!({"text": "x"}))).await;
    assert_eq!(r.code(), "conversation_not_found");
    let r = chat(&w, &w.alice.1, "PATCH", &path, Some(json!({"text": ""}))).await;
    assert_eq!(r.code(), "empty_message");
    let r = chat(
        &w,
        &w.alice.1,
        "PATCH",
        &format!("/conversations/{g}/messages/77"),
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(r.code(), "message_not_found");
    let m = chat(&w, &w.bob.1, "GET", &path, None).await.json();
    assert_eq!(
        (m["text"].as_str(), m["edits"].as_u64()),
        (Some("final"), Some(2))
    );
    // The admin turns editing and deleting off: in force from the next
    // request, no restart.
    set_policy(&w, false, false).await;
    let r = chat(
        &w,
        &w.alice.1,
        "PATCH",
        &path,
        Some(json!({"text": "too late"})),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "policy_disabled"));
    let r = chat(&w, &w.alice.1, "DELETE", &path, None).await;
    assert_eq!((r.status, r.code().as_str()), (403, "policy_disabled"));
    // Only admins of acme set it.
    for token in [&w.alice.1, &w.gina.1] {
        let r =
            w.s.call(
                "PUT",
                "/api/v1/admin/tenants/acme/plugins/chat/config",
                Some(token),
                Some(&json!({"allow-edit": true})),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let r =
        w.s.call(
            "PUT",
            "/api/v1/admin/tenants/acme/plugins/chat/config",
            Some(&w.admin.1),
            Some(&json!({"allow-edit": "yes"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    set_policy(&w, true, true).await;
    // Delete leaves a tombstone and removes the text and its history.
    let r = chat(&w, &w.alice.1, "DELETE", &path, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = chat(&w, &w.bob.1, "GET", &path, None).await.json();
    assert_eq!(m["text"], "");
    assert_eq!(m["deleted"]["by"], w.alice.0.as_str());
    let h = chat(&w, &w.bob.1, "GET", &format!("{path}/history"), None)
        .await
        .json();
    assert_eq!(h["revisions"], json!([]));
    let r = chat(
        &w,
        &w.alice.1,
        "PATCH",
        &path,
        Some(json!({"text": "revive"})),
    )
    .await;
    assert_eq!(r.code(), "message_deleted");
    // Every edit and the delete are audited, without the text.
    let target = format!("conversation/{g}/message/{seq}");
    let actions = audit_actions(&w);
    let edits = actions
        .iter()
        .filter(|(a, t)| a == "chat.message.edit" && *t == target)
        .count();
    assert_eq!(edits, 2);
    assert!(
        actions
            .iter()
            .any(|(a, t)| a == "chat.message.delete" && *t == target)
    );
    let entries = format!(
        "{:?}",
        w.h.runtime()
            .audit_log()
            .entries(&switchboard::audit::Scope::tenant("acme"), 0, 10_000)
            .unwrap()
    );
    assert!(
        !entries.contains("second draft"),
        "message text in the audit trail"
    );
    assert!(
        actions
            .iter()
            .any(|(a, t)| a == "plugin.config.set" && t == "chat"),
        "settings changes are audited"
    );
}

#[tokio::test]
async fn c4_a_reply_keeps_its_quote_when_the_original_goes() {
    let w = world().await;
    let g = group(&w, "Replies", &["bob"]).await;
    let original = post(&w, &w.alice.1, &g, json!({"text": "the plan is X"}))
        .await
        .json();
    let seq = original["seq"].as_u64().unwrap();
    let reply = post(&w, &w.bob.1, &g, json!({"text": "agreed", "reply_to": seq})).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let rseq = reply.json()["seq"].as_u64().unwrap();
    chat(
        &w,
        &w.alice.1,
        "PATCH",
        &format!("/conversations/{g}/messages/{seq}"),
        Some(json!({"text": "the plan is Y"})),
    )
    .await;
    chat(
        &w,
        &w.alice.1,
        "DELETE",
        &format!("/conversations/{g}/messages/{seq}"),
        None,
    )
    .await;
    let r = chat(
        &w,
        &w.carol.1,
        "GET",
        &format!("/conversations/{g}/messages/{rseq}"),
        None,
    )
    .await;
    assert_eq!(r.status, 404, "carol is not a member");
    let r = chat(
        &w,
        &w.alice.1,
        "GET",
        &format!("/conversations/{g}/messages/{rseq}"),
        None,
    )
    .await;
    let quote = &r.json()["reply_to"];
    assert_eq!(quote["seq"], seq);
    assert_eq!(quote["text"], "the plan is X");
    assert_eq!(quote["sender"], w.alice.0.as_str());
    // Nothing to quote in a tombstone; replies cannot cross conversations.
    let r = post(&w, &w.bob.1, &g, json!({"text": "re", "reply_to": seq})).await;
    assert_eq!((r.status, r.code().as_str()), (409, "message_deleted"));
    let other = group(&w, "Other", &["bob"]).await;
    let r = post(
        &w,
        &w.bob.1,
        &other,
        json!({"text": "re", "reply_to": rseq}),
    )
    .await;
    assert_eq!(r.code(), "message_not_found");
}

#[tokio::test]
async fn c5_attachments_are_downloads_for_members_within_size_and_quota() {
    let w = world_with(Limits {
        owner_storage_bytes: 3 << 20,
        ..Limits::default()
    })
    .await;
    let g = group(&w, "Files", &["bob"]).await;
    let html = b"<html><script>alert(document.cookie)</script></html>";
    let up = |name: &str| format!("/conversations/{g}/attachments?name={name}&type=text/html");
    let r = raw(
        &w,
        &w.alice.1,
        "POST",
        &up("x%22%3B%20evil.html"),
        &[],
        html,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let aid = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["size"], html.len());
    let file = format!("/conversations/{g}/attachments/{aid}");
    // Unposted: only the uploader sees it, and nobody else can post it.
    assert_eq!(raw(&w, &w.bob.1, "GET", &file, &[], b"").await.status, 404);
    let r = post(&w, &w.bob.1, &g, json!({"attachments": [aid]})).await;
    assert_eq!(r.code(), "invalid_attachment");
    let r = post(
        &w,
        &w.alice.1,
        &g,
        json!({"text": "", "attachments": [aid]}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let mseq = r.json()["seq"].as_u64().unwrap();
    assert_eq!(r.json()["attachments"][0]["name"], "x\"; evil.html");
    // Served as a download, never as HTML.
    let d = raw(&w, &w.bob.1, "GET", &file, &[], b"").await;
    assert_eq!(d.status, 200);
    assert_eq!(d.body, html);
    assert_eq!(d.header("content-type"), Some("application/octet-stream"));
    let disposition = d.header("content-disposition").unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"x_; evil.html\""),
        "{disposition}"
    );
    assert!(disposition.contains("filename*=UTF-8''x%22%3B%20evil.html"));
    assert_eq!(d.header("x-content-type-options"), Some("nosniff"));
    let csp: Vec<&str> = d
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-security-policy"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(csp.iter().all(|v| v.starts_with("sandbox")) && !csp.is_empty());
    let part = raw(&w, &w.bob.1, "GET", &file, &[("range", "bytes=6-13")], b"").await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, b"<script>");
    let range = format!("bytes 6-13/{}", html.len());
    assert_eq!(part.header("content-range"), Some(range.as_str()));
    let r = raw(&w, &w.bob.1, "GET", &file, &[("range", "bytes=900-")], b"").await;
    assert_eq!(r.status, 416);
    let r = raw(&w, &w.bob.1, "GET", &file, &[("range", "bytes=-0")], b"").await;
    assert_eq!(r.status, 416);
    // Malformed or multiple ranges are ignored: the whole file.
    for range in ["bytes=9-2", "bytes=a-b", "bytes=0-1,4-5", "items=0-1"] {
        let r = raw(&w, &w.bob.1, "GET", &file, &[("range", range)], b"").await;
        assert_eq!((r.status, r.body.len()), (200, html.len()), "{range}");
    }
    // Empty files are refused; so is a flood of uploads never posted.
    let r = raw(&w, &w.alice.1, "POST", &up("empty.txt"), &[], b"").await;
    assert_eq!(r.code(), "empty_part");

    // Not for non-members, nor other tenants, nor forged ids.
    assert_eq!(
        raw(&w, &w.carol.1, "GET", &file, &[], b"").await.status,
        404
    );
    assert_eq!(raw(&w, &w.gina.1, "GET", &file, &[], b"").await.status, 403);
    let forged = format!("/conversations/{g}/attachments/{}", "ab".repeat(16));
    assert_eq!(
        raw(&w, &w.bob.1, "GET", &forged, &[], b"").await.code(),
        "attachment_not_found"
    );
    // Chunked upload with resumable offsets.
    let r = raw(&w, &w.alice.1, "POST", &up("big.bin"), &[], &[1u8; 1000]).await;
    let big = r.json()["id"].as_str().unwrap().to_string();
    let more = format!("/conversations/{g}/attachments/{big}/content");
    let r = raw(
        &w,
        &w.alice.1,
        "POST",
        &format!("{more}?offset=1000"),
        &[],
        &[2u8; 500],
    )
    .await;
    assert_eq!(r.json()["size"], 1500);
    let r = raw(
        &w,
        &w.alice.1,
        "POST",
        &format!("{more}?offset=1000"),
        &[],
        &[2u8; 500],
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "offset_mismatch"));
    let r = raw(
        &w,
        &w.bob.1,
        "POST",
        &format!("{more}?offset=1500"),
        &[],
        &[3u8; 5],
    )
    .await;
    assert_eq!(r.code(), "attachment_not_found");
    // Bad names and types.
    for (name, code) in [
        ("", "invalid_name"),
        ("a%2Fb", "invalid_name"),
        ("..", "invalid_name"),
        ("a%0Ab", "invalid_name"),
        ("invoice%E2%80%AEfdp.exe", "invalid_name"),
    ] {
        let r = raw(
            &w,
            &w.alice.1,
            "POST",
            &format!("/conversations/{g}/attachments?name={name}"),
            &[],
            b"x",
        )
        .await;
        assert_eq!(r.code(), code, "{name}");
    }
    let r = raw(
        &w,
        &w.alice.1,
        "POST",
        &format!("/conversations/{g}/attachments?name=a&type=text"),
        &[],
        b"x",
    )
    .await;
    assert_eq!(r.code(), "invalid_type");
    // Over the size setting, then over alice's quota (3 MiB): refused
    // whole, nothing kept.
    let mut cfg = serde_json::Map::new();
    cfg.insert("max-attachment-mib".into(), 1.into());
    w.h.runtime().set_config("acme", "chat", cfg).await.unwrap();
    let r = raw(
        &w,
        &w.alice.1,
        "POST",
        &up("huge.bin"),
        &[],
        &vec![0u8; (1 << 20) + 1],
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (413, "attachment_too_large"));
    w.h.runtime()
        .set_config("acme", "chat", serde_json::Map::new())
        .await
        .unwrap();
    let r = raw(
        &w,
        &w.alice.1,
        "POST",
        &up("a.bin"),
        &[],
        &vec![0u8; 2 << 20],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let blobs_before = blob_count(&w);
    let r = raw(
        &w,
        &w.alice.1,
        "POST",
        &up("b.bin"),
        &[],
        &vec![0u8; 2 << 20],
    )
    .await;
    assert_eq!(
        blob_count(&w),
        blobs_before,
        "the refused upload kept nothing"
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (507, "quota_exceeded"),
        "{}",
        r.text()
    );
    // Bob's quota is his own.
    let r = raw(&w, &w.bob.1, "POST", &up("b.bin"), &[], &vec![0u8; 2 << 20]).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Deleting the message destroys the attachment.
    chat(
        &w,
        &w.alice.1,
        "DELETE",
        &format!("/conversations/{g}/messages/{mseq}"),
        None,
    )
    .await;
    assert_eq!(
        raw(&w, &w.alice.1, "GET", &file, &[], b"").await.status,
        404
    );
    // Bob has one upload waiting (b.bin); 49 more, then no more.
    let mut refused_at = None;
    for i in 0..60 {
        let path = format!("/conversations/{g}/attachments?name=f{i}");
        let r = raw(&w, &w.bob.1, "POST", &path, &[], b"x").await;
        if r.status != 201 {
            assert_eq!((r.status, r.code().as_str()), (429, "too_many_uploads"));
            refused_at = Some(i);
            break;
        }
    }
    assert_eq!(refused_at, Some(49));
}

/// Blobs the chat plugin of acme holds (their metadata records).
fn blob_count(w: &World) -> usize {
    w.h.runtime()
        .data_store()
        .scan_raw(b"t/acme/bm/chat/", None, 100_000)
        .unwrap()
        .len()
}

/// The next presence event about `user`.
async fn presence_event(ws: &mut switchboard_tests::stream::Ws, user: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = next_of(ws, "chat.presence", left)
            .await
            .unwrap_or_else(|| panic!("no presence event about {user}"));
        if e["data"]["user"] == user {
            return e["data"].clone();
        }
    }
}

async fn watch(w: &World, token: &str, users: &[&str]) -> Value {
    let r = chat(
        w,
        token,
        "POST",
        "/presence/watch",
        Some(json!({"users": users})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test]
async fn c6_members_get_messages_edits_deletes_reads_and_presence_in_real_time() {
    let w = world().await;
    let g = group(&w, "Live", &["bob"]).await;
    let mut alice = ready(&w.s, &w.alice.1).await;
    let mut carol = ready(&w.s, &w.carol.1).await;
    // Presence: alice watches bob, who is offline until his stream opens.
    let p = watch(&w, &w.alice.1, &[&w.bob.0]).await;
    assert_eq!(p["presence"][0]["status"], "offline");
    let mut bob = ready(&w.s, &w.bob.1).await;
    let e = presence_event(&mut alice, &w.bob.0).await;
    assert_eq!(e, json!({"user": w.bob.0, "status": "available"}));
    let r = chat(
        &w,
        &w.bob.1,
        "PUT",
        "/presence",
        Some(json!({"status": "busy"})),
    )
    .await;
    assert_eq!(r.json()["status"], "busy");
    assert_eq!(presence_event(&mut alice, &w.bob.0).await["status"], "busy");
    let r = chat(
        &w,
        &w.alice.1,
        "GET",
        &format!("/presence?users={}", w.bob.0),
        None,
    )
    .await;
    assert_eq!(r.json()["presence"][0]["status"], "busy");
    for bad in [json!({"status": "offline"}), json!({"status": "asleep"})] {
        let r = chat(&w, &w.bob.1, "PUT", "/presence", Some(bad)).await;
        assert_eq!(r.status, 400);
    }
    let r = chat(&w, &w.alice.1, "GET", "/presence?users=a/b", None).await;
    assert_eq!(r.code(), "invalid_user");
    // Messages, edits and deletes reach members, not carol.
    let m = post(&w, &w.bob.1, &g, json!({"text": "hello live"}))
        .await
        .json();
    let seq = m["seq"].as_u64().unwrap();
    for ws in [&mut alice, &mut bob] {
        let e = next_of(ws, "chat.message.created", WAIT).await.unwrap();
        assert_eq!(e["plugin"], "chat");
        assert_eq!(e["data"]["message"]["text"], "hello live");
        assert_eq!(e["data"]["message"]["conversation"], g.as_str());
    }
    let path = format!("/conversations/{g}/messages/{seq}");
    chat(
        &w,
        &w.bob.1,
        "PATCH",
        &path,
        Some(json!({"text": "hello, live"})),
    )
    .await;
    let e = next_of(&mut alice, "chat.message.edited", WAIT)
        .await
        .unwrap();
    assert_eq!(e["data"]["message"]["text"], "hello, live");
    chat(&w, &w.bob.1, "DELETE", &path, None).await;
    let e = next_of(&mut alice, "chat.message.deleted", WAIT)
        .await
        .unwrap();
    assert_eq!(e["data"]["seq"], seq);
    // Carol (not a member) hears only about her own presence — and does
    // hear that, so her stream works.
    let mut own = 0;
    while let Some(e) = next(&mut carol, QUIET).await {
        assert_eq!(e["kind"], "chat.presence", "carol is not a member: {e}");
        assert_eq!(e["data"]["user"], w.carol.0.as_str());
        own += 1;
    }
    assert!(own >= 1, "carol's own presence reached her");
    // A message too big for one event is announced by id for clients to
    // fetch.
    let mut cfg = serde_json::Map::new();
    cfg.insert("max-message-chars".into(), 16000.into());
    w.h.runtime().set_config("acme", "chat", cfg).await.unwrap();
    let big = "𝄞".repeat(16000);
    let r = post(&w, &w.bob.1, &g, json!({"text": big})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let e = next_of(&mut alice, "chat.message.created", WAIT)
        .await
        .unwrap();
    assert_eq!(e["data"]["truncated"], true);
    assert_eq!(e["data"]["message"]["seq"], r.json()["seq"]);
    w.h.runtime()
        .set_config("acme", "chat", serde_json::Map::new())
        .await
        .unwrap();
    // Read state: unread counts and read events.
    for i in 0..3 {
        post(&w, &w.bob.1, &g, json!({"text": format!("unread {i}")})).await;
    }
    let conv = chat(&w, &w.alice.1, "GET", &format!("/conversations/{g}"), None)
        .await
        .json();
    assert_eq!(conv["unread"], 5, "{conv}");
    let list = chat(&w, &w.alice.1, "GET", "/conversations", None)
        .await
        .json();
    assert_eq!(list["unread"], 5);
    let last = conv["last_seq"].as_u64().unwrap();
    let r = chat(
        &w,
        &w.alice.1,
        "POST",
        &format!("/conversations/{g}/read"),
        Some(json!({"seq": last})),
    )
    .await;
    assert_eq!(r.json(), json!({"last_read": last, "unread": 0}));
    let e = next_of(&mut bob, "chat.read", WAIT).await.unwrap();
    assert_eq!(
        e["data"],
        json!({"conversation": g, "user": w.alice.0, "seq": last})
    );
    let r = chat(
        &w,
        &w.alice.1,
        "POST",
        &format!("/conversations/{g}/read"),
        Some(json!({"seq": last + 1})),
    )
    .await;
    assert_eq!(r.code(), "invalid_seq");
    let members = chat(
        &w,
        &w.bob.1,
        "GET",
        &format!("/conversations/{g}/members"),
        None,
    )
    .await
    .json();
    let alice_read = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == w.alice.0.as_str())
        .unwrap()["last_read"]
        .clone();
    assert_eq!(alice_read, last);
    // A removed member is told, then hears nothing more.
    chat(
        &w,
        &w.alice.1,
        "DELETE",
        &format!("/conversations/{g}/members/{}", w.bob.0),
        None,
    )
    .await;
    let e = next_of(&mut bob, "chat.member.removed", WAIT)
        .await
        .unwrap();
    assert_eq!(e["data"]["users"], json!([w.bob.0]));
    post(&w, &w.alice.1, &g, json!({"text": "after bob left"})).await;
    next_of(&mut alice, "chat.message.created", WAIT)
        .await
        .unwrap();
    assert!(
        next_of(&mut bob, "chat.message.created", QUIET)
            .await
            .is_none()
    );
    // Bob's last stream closes: he is offline for his watchers.
    drop(bob);
    let e = presence_event(&mut alice, &w.bob.0).await;
    assert_eq!(e, json!({"user": w.bob.0, "status": "offline"}));
    let r = chat(
        &w,
        &w.alice.1,
        "GET",
        &format!("/presence?users={}", w.bob.0),
        None,
    )
    .await;
    assert_eq!(r.json()["presence"][0]["status"], "offline");
}

#[tokio::test]
async fn c8_search_finds_words_in_my_conversations_only() {
    let w = world().await;
    let g = group(&w, "Search", &["bob"]).await;
    let secret = group(&w, "Secret", &[]).await;
    post(
        &w,
        &w.alice.1,
        &g,
        json!({"text": "Quarterly budget review on Friday"}),
    )
    .await;
    post(
        &w,
        &w.bob.1,
        &g,
        json!({"text": "Das Budget für Übermorgen"}),
    )
    .await;
    let gone = post(&w, &w.bob.1, &g, json!({"text": "budget leak"}))
        .await
        .json()["seq"]
        .as_u64()
        .unwrap();
    post(
        &w,
        &w.alice.1,
        &secret,
        json!({"text": "secret budget numbers"}),
    )
    .await;
    chat(
        &w,
        &w.bob.1,
        "DELETE",
        &format!("/conversations/{g}/messages/{gone}"),
        None,
    )
    .await;
    let texts = |r: Reply| -> Vec<String> {
        r.json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect()
    };
    let bob_sees = texts(chat(&w, &w.bob.1, "GET", "/search?q=BUDGET", None).await);
    assert_eq!(bob_sees.len(), 2, "{bob_sees:?}");
    assert!(
        bob_sees
            .iter()
            .all(|t| !t.contains("secret") && !t.contains("leak"))
    );
    let alice_sees = texts(chat(&w, &w.alice.1, "GET", "/search?q=budg", None).await);
    assert_eq!(alice_sees.len(), 3, "prefix match: {alice_sees:?}");
    let r = texts(chat(&w, &w.alice.1, "GET", "/search?q=%C3%BCbermorgen", None).await);
    assert_eq!(r, ["Das Budget für Übermorgen"]);
    let r = texts(chat(&w, &w.alice.1, "GET", "/search?q=budget%20friday", None).await);
    assert_eq!(r, ["Quarterly budget review on Friday"]);
    assert!(texts(chat(&w, &w.carol.1, "GET", "/search?q=budget", None).await).is_empty());
    // Edits re-index.
    let seq = post(&w, &w.alice.1, &g, json!({"text": "lunch at noon"}))
        .await
        .json()["seq"]
        .as_u64()
        .unwrap();
    chat(
        &w,
        &w.alice.1,
        "PATCH",
        &format!("/conversations/{g}/messages/{seq}"),
        Some(json!({"text": "dinner at eight"})),
    )
    .await;
    assert!(texts(chat(&w, &w.bob.1, "GET", "/search?q=lunch", None).await).is_empty());
    assert_eq!(
        texts(chat(&w, &w.bob.1, "GET", "/search?q=dinner", None).await).len(),
        1
    );
    // Scoped to one conversation: only a member's.
    let r = chat(
        &w,
        &w.bob.1,
        "GET",
        &format!("/search?q=budget&conversation={secret}"),
        None,
    )
    .await;
    assert_eq!(r.code(), "conversation_not_found");
    // Key names are not encrypted at rest: no word of a message is in one.
    let keys =
        w.h.runtime()
            .data_store()
            .scan_raw(b"t/acme/k/chat/", None, 100_000)
            .unwrap();
    assert!(keys.len() > 20);
    for (k, _) in &keys {
        let k = String::from_utf8_lossy(k).to_lowercase();
        for word in ["budget", "bud", "quarterly", "dinner", "secret", "search"] {
            assert!(!k.contains(word), "{word} in key {k}");
        }
    }
    for q in ["", "a", "%21%21", &"x".repeat(201)] {
        let r = chat(&w, &w.alice.1, "GET", &format!("/search?q={q}"), None).await;
        assert_eq!(r.code(), "invalid_query", "{q}");
    }
}

#[tokio::test]
async fn c1_a_plugin_owns_its_conversations_and_their_deletion() {
    let w = world().await;
    let owner = |token: &str, method: &str, path: &str, body: Option<Value>| {
        let token = token.to_string();
        let method = method.to_string();
        let path = path.to_string();
        let w = &w;
        async move {
            call_in(
                w,
                "acme",
                "owner",
                &token,
                &method,
                &format!("/chat{path}"),
                body,
            )
            .await
        }
    };
    let guest_id = "guest-1234";
    let r = owner(
        &w.alice.1,
        "POST",
        "/owned",
        Some(json!({"resource": "space:42", "title": "Design review", "members": [w.alice.0, w.bob.0, guest_id]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let conv = r.json();
    let cid = conv["id"].as_str().unwrap().to_string();
    assert_eq!(conv["kind"], "owned");
    assert_eq!(conv["owner"], "owner");
    assert_eq!(conv["members"], 3);
    // Idempotent per resource.
    let r = owner(
        &w.bob.1,
        "POST",
        "/owned",
        Some(json!({"resource": "space:42", "title": "again"})),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["id"].as_str()),
        (200, Some(cid.as_str()))
    );
    // Another plugin cannot see, change or delete it: its resources are
    // its own.
    for (method, path, body) in [
        ("GET", "/owned/space:42", None),
        ("DELETE", "/owned/space:42", None),
        (
            "POST",
            "/owned/space:42/members",
            Some(json!({"users": [w.carol.0]})),
        ),
    ] {
        let r = call_in(
            &w,
            "acme",
            "rival",
            &w.alice.1,
            method,
            &format!("/chat{path}"),
            body,
        )
        .await;
        assert_eq!(r.code(), "conversation_not_found", "{method} {path}");
    }
    let r = call_in(
        &w,
        "acme",
        "rival",
        &w.alice.1,
        "POST",
        "/chat/owned",
        Some(json!({"resource": "space:42", "title": "Mine"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_ne!(r.json()["id"], cid.as_str());
    assert_eq!(r.json()["owner"], "rival");
    // Users cannot reach the owner's routes directly, nor manage members.
    let r = chat(
        &w,
        &w.alice.1,
        "POST",
        "/owned",
        Some(json!({"resource": "mine", "title": "x"})),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "plugins_only"));
    let r = chat(&w, &w.alice.1, "DELETE", "/owned/space:42", None).await;
    assert_eq!(r.code(), "plugins_only");
    let r = chat(
        &w,
        &w.alice.1,
        "POST",
        &format!("/conversations/{cid}/members"),
        Some(json!({"users": ["carol"]})),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "owned_by_plugin"));
    // Members chat in it like any conversation, with attachments.
    assert_eq!(
        post(&w, &w.bob.1, &cid, json!({"text": "agenda?"}))
            .await
            .status,
        201
    );
    let r = raw(
        &w,
        &w.bob.1,
        "POST",
        &format!("/conversations/{cid}/attachments?name=agenda.pdf"),
        &[],
        b"%PDF",
    )
    .await;
    let aid = r.json()["id"].as_str().unwrap().to_string();
    post(&w, &w.bob.1, &cid, json!({"attachments": [aid]})).await;
    assert_eq!(
        post(&w, &w.carol.1, &cid, json!({"text": "me too"}))
            .await
            .status,
        404
    );
    // The owner adds and removes members.
    let r = owner(
        &w.alice.1,
        "POST",
        "/owned/space:42/members",
        Some(json!({"users": [w.carol.0]})),
    )
    .await;
    assert_eq!(r.json()["members"], 4);
    assert_eq!(
        post(&w, &w.carol.1, &cid, json!({"text": "me too"}))
            .await
            .status,
        201
    );
    let r = owner(
        &w.alice.1,
        "DELETE",
        &format!("/owned/space:42/members/{}", w.carol.0),
        None,
    )
    .await;
    assert_eq!(r.json()["members"], 3);
    assert_eq!(
        post(&w, &w.carol.1, &cid, json!({"text": "again"}))
            .await
            .status,
        404
    );
    for (path, code) in [
        ("/owned/bad%20id", "invalid_resource"),
        ("/owned/space:43", "conversation_not_found"),
    ] {
        let r = owner(&w.alice.1, "GET", path, None).await;
        assert_eq!(r.code(), code, "{path}");
    }
    // Another tenant's owner plugin has its own namespace.
    let r = call_in(
        &w,
        "globex",
        "owner",
        &w.gina.1,
        "GET",
        "/chat/owned/space:42",
        None,
    )
    .await;
    assert_eq!(r.code(), "conversation_not_found");
    let r = owner(
        &w.alice.1,
        "POST",
        "/owned",
        Some(json!({"resource": "space:44", "title": "Other", "members": [w.bob.0]})),
    )
    .await;
    let other = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        post(&w, &w.bob.1, &other, json!({"text": "still here"}))
            .await
            .status,
        201
    );
    // Deleting ends access at once; the purge removes every key and blob.
    let blobs_before = blob_count(&w);
    let r = owner(&w.alice.1, "DELETE", "/owned/space:42", None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = chat(
        &w,
        &w.bob.1,
        "GET",
        &format!("/conversations/{cid}/messages"),
        None,
    )
    .await;
    assert_eq!(r.code(), "conversation_not_found");
    let listed = chat(&w, &w.bob.1, "GET", "/conversations", None)
        .await
        .json();
    assert!(!listed.to_string().contains(&cid));
    let mut purged = false;
    for _ in 0..100 {
        w.h.runtime().fire_due_timers().await;
        let keys =
            w.h.runtime()
                .data_store()
                .scan_raw(b"t/acme/k/chat/", None, 100_000)
                .unwrap();
        assert!(!keys.is_empty(), "other conversations' keys stay");
        if !keys
            .iter()
            .any(|(k, _)| k.windows(cid.len()).any(|s| s == cid.as_bytes()))
        {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(purged, "the deleted conversation's keys are gone");
    assert_eq!(
        blob_count(&w),
        blobs_before - 1,
        "its attachment's blob is gone"
    );
    let keys =
        w.h.runtime()
            .data_store()
            .scan_raw(b"t/acme/k/chat/", None, 100_000)
            .unwrap();
    assert!(
        keys.iter()
            .any(|(k, _)| k.windows(other.len()).any(|s| s == other.as_bytes())),
        "another conversation's keys stay"
    );
    let r = chat(
        &w,
        &w.bob.1,
        "GET",
        &format!("/conversations/{other}/messages"),
        None,
    )
    .await;
    assert_eq!(r.json()["messages"][0]["text"], "still here");
    assert!(
        audit_actions(&w)
            .iter()
            .any(|(a, t)| a == "chat.conversation.delete" && *t == format!("conversation/{cid}"))
    );
}

#[tokio::test]
async fn c3_the_cli_shows_and_changes_a_tenant_setting() {
    use clap::Parser as _;
    let h = Harness::new().unwrap();
    h.install(&manifest("chat"), &component("chat"))
        .await
        .unwrap();
    h.tenant("acme").await.unwrap();
    h.enable("acme", "chat").await.unwrap();
    h.runtime().flush().unwrap();
    let data = h.data_dir().to_path_buf();
    let _keep = h.into_dir();
    let d = data.to_str().unwrap();
    let cli = |args: &[&str]| {
        let mut argv = vec!["switchboard", "plugin", "config", "--data", d];
        argv.extend_from_slice(args);
        switchboard::cli::Cli::try_parse_from(argv).unwrap()
    };
    let base = ["--tenant", "acme", "--name", "chat"];
    switchboard::cli::run(cli(&base)).await.unwrap();
    let mut set = base.to_vec();
    set.extend([
        "--set",
        "allow-edit=false",
        "--set",
        "max-message-chars=500",
    ]);
    switchboard::cli::run(cli(&set)).await.unwrap();
    for bad in [
        "allow-edit=maybe",
        "max-message-chars=0",
        "colour=red",
        "no-equals",
    ] {
        let mut args = base.to_vec();
        args.extend(["--set", bad]);
        let e = switchboard::cli::run(cli(&args)).await.unwrap_err();
        assert!(!e.to_string().is_empty(), "{bad}");
    }
    let e = switchboard::cli::run(cli(&["--tenant", "nope", "--name", "chat"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let rt = switchboard::Runtime::open(switchboard::RuntimeConfig::new(&data)).unwrap();
    let cfg = rt.plugin_config("acme", "chat").unwrap();
    assert_eq!(cfg["allow-edit"], false);
    assert_eq!(cfg["max-message-chars"], 500);
    assert_eq!(cfg["allow-delete"], true, "unchanged settings stay");
}
