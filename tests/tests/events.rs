//! Event streams through real WebSockets over TLS: delivery to users,
//! guests and groups, commit-only publishing, isolation between users and
//! tenants, resuming after a reconnect, slow consumers, tickets, session
//! ends and hostile frames.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use switchboard::harness::Harness;
use switchboard_tests::accounts::{activate, create_user};
use switchboard_tests::http::Server;
use switchboard_tests::stream::{close_code, connect, next, ready};
use switchboard_tests::{component, manifest};
use tokio_tungstenite::tungstenite::Message;

struct World {
    h: Harness,
    s: Server,
    alice: (String, String),
    bob: (String, String),
    gina: (String, String),
}

/// `acme` (alice, bob) and `globex` (gina, also a user id of her own)
/// running `relay`; `adjust` tunes the runtime (event queues...).
async fn world(adjust: impl FnOnce(&mut switchboard::RuntimeConfig)) -> World {
    let h = Harness::with_config(adjust).unwrap();
    h.install(&manifest("relay"), &component("relay"))
        .await
        .unwrap();
    for t in ["acme", "globex"] {
        h.tenant(t).await.unwrap();
        h.enable(t, "relay").await.unwrap();
    }
    let s = Server::start(h.runtime().clone()).await;
    let mut users = Vec::new();
    for (t, name) in [("acme", "alice"), ("acme", "bob"), ("globex", "gina")] {
        let (id, w) = create_user(&h, t, name, "user").await;
        users.push((id, activate(&s, Some(t), name, &w).await));
    }
    let gina = users.pop().unwrap();
    let bob = users.pop().unwrap();
    let alice = users.pop().unwrap();
    World {
        h,
        s,
        alice,
        bob,
        gina,
    }
}

async fn publish(w: &World, token: &str, tenant: &str, query: &str, body: &str) -> u16 {
    let path = format!("/api/v1/t/{tenant}/p/relay/publish?{query}");
    let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
    switchboard_tests::http::request(w.s.addr, "POST", &path, &headers, body.as_bytes())
        .await
        .status
}

const QUIET: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn n2_events_reach_the_named_users_of_the_tenant_and_nobody_else() {
    let w = world(|_| {}).await;
    let mut alice = ready(&w.s, &w.alice.1).await;
    let mut bob = ready(&w.s, &w.bob.1).await;
    let mut gina = ready(&w.s, &w.gina.1).await;
    let q = format!("to={}&kind=chat.message.new", w.alice.0);
    assert_eq!(
        publish(&w, &w.bob.1, "acme", &q, r#"{"text":"hi"}"#).await,
        200
    );
    let e = next(&mut alice, WAIT).await.unwrap();
    assert_eq!(e["type"], "event");
    assert_eq!(e["plugin"], "relay");
    assert_eq!(e["kind"], "chat.message.new");
    assert_eq!(e["data"]["text"], "hi");
    assert!(e["id"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(next(&mut bob, QUIET).await.is_none(), "bob was not named");
    // Another tenant's plugin naming alice's id reaches nobody in acme.
    let q = format!("to={},{}", w.alice.0, w.gina.0);
    assert_eq!(publish(&w, &w.gina.1, "globex", &q, "x").await, 200);
    assert!(
        next(&mut alice, QUIET).await.is_none(),
        "no event crosses tenants"
    );
    assert_eq!(next(&mut gina, WAIT).await.unwrap()["data"], "x");
    // Published, then the call trapped: nothing goes out.
    let q = format!("to={}&trap=1", w.alice.0);
    assert_eq!(publish(&w, &w.bob.1, "acme", &q, "never").await, 502);
    assert!(
        next(&mut alice, QUIET).await.is_none(),
        "events of a failed call are dropped"
    );
    // Bad events are refused, with the plugin's error shape.
    assert_eq!(publish(&w, &w.bob.1, "acme", "to=a%20b", "x").await, 400);
    assert_eq!(
        publish(
            &w,
            &w.bob.1,
            "acme",
            &format!("to={}&kind=Bad!", w.alice.0),
            "x"
        )
        .await,
        400
    );
    let big = format!("to={}&size=70000", w.alice.0);
    assert_eq!(publish(&w, &w.bob.1, "acme", &big, "").await, 413);
}

#[tokio::test]
async fn n2_groups_are_the_plugins_own_and_survive_until_left() {
    let w = world(|_| {}).await;
    let mut alice = ready(&w.s, &w.alice.1).await;
    let mut bob = ready(&w.s, &w.bob.1).await;
    let join = format!(
        "/api/v1/t/acme/p/relay/groups/meeting:42/join?users={},{}",
        w.alice.0, w.bob.0
    );
    assert_eq!(
        w.s.call("POST", &join, Some(&w.alice.1), None).await.status,
        200
    );
    assert_eq!(
        publish(&w, &w.alice.1, "acme", "group=meeting:42&kind=roster", "{}").await,
        200
    );
    assert_eq!(next(&mut alice, WAIT).await.unwrap()["kind"], "roster");
    assert_eq!(next(&mut bob, WAIT).await.unwrap()["kind"], "roster");
    let leave = format!(
        "/api/v1/t/acme/p/relay/groups/meeting:42/leave?users={}",
        w.bob.0
    );
    assert_eq!(
        w.s.call("POST", &leave, Some(&w.alice.1), None)
            .await
            .status,
        200
    );
    assert_eq!(
        publish(&w, &w.alice.1, "acme", "group=meeting:42", "2").await,
        200
    );
    assert_eq!(next(&mut alice, WAIT).await.unwrap()["data"], 2);
    assert!(next(&mut bob, QUIET).await.is_none(), "bob left the group");
    // globex's relay has its own groups: the same name reaches nobody.
    assert_eq!(
        publish(&w, &w.gina.1, "globex", "group=meeting:42", "3").await,
        200
    );
    assert!(next(&mut alice, QUIET).await.is_none());
    // Malformed group names.
    let bad = "/api/v1/t/acme/p/relay/groups/a%2Fb/join?users=x";
    assert_eq!(
        w.s.call("POST", bad, Some(&w.alice.1), None).await.status,
        400
    );
}

#[tokio::test]
async fn n2_a_client_reconnecting_with_its_last_id_gets_what_it_missed() {
    let w = world(|_| {}).await;
    let to = format!("to={}", w.alice.0);
    let mut alice = ready(&w.s, &w.alice.1).await;
    assert_eq!(publish(&w, &w.bob.1, "acme", &to, "1").await, 200);
    let first = next(&mut alice, WAIT).await.unwrap();
    let last = first["id"].as_str().unwrap().to_string();
    drop(alice);
    for n in 2..=3 {
        assert_eq!(
            publish(&w, &w.bob.1, "acme", &to, &n.to_string()).await,
            200
        );
    }
    let mut again = connect(&w.s, Some(&w.alice.1), &format!("?last_event_id={last}"))
        .await
        .unwrap();
    assert_eq!(next(&mut again, WAIT).await.unwrap()["resumed"], true);
    assert_eq!(next(&mut again, WAIT).await.unwrap()["data"], 2);
    assert_eq!(next(&mut again, WAIT).await.unwrap()["data"], 3);
    // Live events follow.
    assert_eq!(publish(&w, &w.bob.1, "acme", &to, "4").await, 200);
    assert_eq!(next(&mut again, WAIT).await.unwrap()["data"], 4);
    // An id from before this server started: told to reload.
    let mut old = connect(&w.s, Some(&w.alice.1), "?last_event_id=1")
        .await
        .unwrap();
    assert_eq!(next(&mut old, WAIT).await.unwrap()["type"], "ready");
    assert_eq!(next(&mut old, WAIT).await.unwrap()["type"], "reset");
    // Malformed ids are refused.
    let err = connect(&w.s, Some(&w.alice.1), "?last_event_id=abc")
        .await
        .unwrap_err();
    assert!(err.starts_with("400"), "{err}");
}

#[tokio::test]
async fn n2_a_slow_consumer_is_cut_off_and_can_resume() {
    let w = world(|c| c.events.queue = 4).await;
    let mut alice = ready(&w.s, &w.alice.1).await;
    // 200 events of 60 KB while alice reads nothing: far more than the
    // socket buffers and her queue of 4 hold.
    let q = format!("to={}&count=200&size=60000", w.alice.0);
    assert_eq!(publish(&w, &w.bob.1, "acme", &q, "").await, 200);
    let mut last = None;
    let code = loop {
        match tokio::time::timeout(WAIT, alice.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                last = v["id"].as_str().map(str::to_string);
            }
            Ok(Some(Ok(Message::Close(Some(f))))) => break Some(u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            _ => break None,
        }
    };
    assert_eq!(code, Some(1013), "cut off with try-again-later");
    let metrics = w.s.call("GET", "/metrics", None, None).await.text();
    assert!(
        !metrics.contains("switchboard_events_slow_consumers_total 0"),
        "{metrics}"
    );
    // Resuming from the last event it got delivers the rest.
    let last = last.expect("some events arrived before the cut");
    let mut again = connect(&w.s, Some(&w.alice.1), &format!("?last_event_id={last}"))
        .await
        .unwrap();
    assert_eq!(next(&mut again, WAIT).await.unwrap()["type"], "ready");
    let replayed = next(&mut again, WAIT).await.unwrap();
    assert_eq!(replayed["type"], "event");
}

#[tokio::test]
async fn n2_tickets_guests_and_refusals() {
    let w = world(|c| c.events.recheck_s = 1).await;
    // Browsers: a single-use ticket instead of a header.
    let r =
        w.s.call("POST", "/api/v1/auth/stream-ticket", Some(&w.alice.1), None)
            .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ticket = r.json()["ticket"].as_str().unwrap().to_string();
    let mut ws = connect(&w.s, None, &format!("?ticket={ticket}"))
        .await
        .unwrap();
    assert_eq!(next(&mut ws, WAIT).await.unwrap()["type"], "ready");
    let err = connect(&w.s, None, &format!("?ticket={ticket}"))
        .await
        .unwrap_err();
    assert!(err.starts_with("401"), "a ticket opens one stream: {err}");
    drop(ws);
    // Unused tickets are capped per session.
    for _ in 0..8 {
        let r =
            w.s.call("POST", "/api/v1/auth/stream-ticket", Some(&w.bob.1), None)
                .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r =
        w.s.call("POST", "/api/v1/auth/stream-ticket", Some(&w.bob.1), None)
            .await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    // Refusals before any upgrade.
    for (token, query, want) in [
        (None, "", "401"),
        (Some("sb1.acme.nonsense"), "", "401"),
        (None, "?ticket=st1.forged", "401"),
    ] {
        let err = connect(&w.s, token, query).await.unwrap_err();
        assert!(err.starts_with(want), "{query}: {err}");
    }
    let r =
        w.s.call("GET", "/api/v1/events", Some(&w.alice.1), None)
            .await;
    assert_eq!((r.status, r.code().as_str()), (426, "upgrade_required"));
    // A guest's stream is keyed by the guest id.
    let r =
        w.s.call(
            "POST",
            "/api/v1/t/acme/p/relay/guests?name=Gus&resource=meeting:1",
            Some(&w.alice.1),
            None,
        )
        .await;
    let guest = r.json().as_str().unwrap().to_string();
    let guest_id =
        w.s.call("GET", "/api/v1/t/acme/p/relay/hello", Some(&guest), None)
            .await
            .json()["user"]
            .as_str()
            .unwrap()
            .to_string();
    let mut gus = ready(&w.s, &guest).await;
    assert_eq!(
        publish(&w, &w.alice.1, "acme", &format!("to={guest_id}"), "welcome").await,
        200
    );
    assert_eq!(next(&mut gus, WAIT).await.unwrap()["data"], "welcome");
    // Clients only send control frames: data frames close the stream.
    let mut alice = ready(&w.s, &w.alice.1).await;
    alice.send(Message::text("hello?")).await.unwrap();
    assert_eq!(close_code(&mut alice).await, Some(1003));
    // Oversized frames: 1009.
    let mut alice = ready(&w.s, &w.alice.1).await;
    let _ = alice.send(Message::Ping(vec![0u8; 100].into())).await;
    let _ = alice.send(Message::binary(vec![0u8; 100_000])).await;
    let code = close_code(&mut alice).await;
    assert!(matches!(code, Some(1009) | Some(1003)), "{code:?}");
    // Signing out ends open streams within the re-check interval.
    let mut bob = ready(&w.s, &w.bob.1).await;
    assert!(
        w.s.call("POST", "/api/v1/auth/logout", Some(&w.bob.1), None)
            .await
            .status
            < 300
    );
    assert_eq!(close_code(&mut bob).await, Some(4001));
    // The server keeps serving.
    let _ = &w.h;
    assert_eq!(w.s.call("GET", "/healthz", None, None).await.status, 200);
}

#[tokio::test]
async fn n3_shutdown_closes_streams_with_going_away() {
    let mut w = world(|_| {}).await;
    let mut alice = ready(&w.s, &w.alice.1).await;
    w.s.stop();
    assert_eq!(close_code(&mut alice).await, Some(1001));
}
