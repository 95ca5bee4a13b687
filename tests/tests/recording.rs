//! The recording plugin (SPEC R1-R5, M9, D4) through the real HTTPS API:
//! chunked capture with resumable uploads, pause/resume, sealing, access
//! and its audit, retention, legal hold, quotas, the API the meetings
//! plugin will use, and tamper evidence proven by changing a copy of the
//! store directly (as an insider holding the master key could).

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde_json::{Value, json};
use switchboard::runtime::{Method, Principal, Request};
use switchboard::store::{Store, crypt};
use switchboard::tenant::Limits;
use switchboard::{Runtime, RuntimeConfig};
use switchboard_tests::http::Reply;
use switchboard_tests::stream::{next_of, ready};
use switchboard_tests::tamper::{copy_dir, raw_store};
use switchboard_tests::two_tenants;
use switchboard_tests::world::World;

/// acme's alice is the usual initiator, bob a participant, carol
/// neither, boss the tenant admin; globex's gina is elsewhere.
async fn world_with(limits: Limits) -> World {
    World::start(two_tenants(&["recording", "owner"], limits).await).await
}

async fn world() -> World {
    world_with(Limits::default()).await
}

async fn rec(w: &World, token: &str, method: &str, path: &str, body: Option<Value>) -> Reply {
    w.s.plugin_call("acme", "recording", token, method, path, body.as_ref())
        .await
}

async fn raw(
    w: &World,
    token: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let path = format!("/api/v1/t/acme/p/recording{path}");
    w.s.raw(token, method, &path, extra, body).await
}

/// Starts a recording of `call:{source}` by alice with bob taking part.
async fn start(w: &World, source: &str) -> String {
    let r = rec(
        w,
        &w.alice.1,
        "POST",
        "/recordings",
        Some(json!({"source": {"kind": "call", "id": source}, "participants": ["bob"], "content_type": "audio/webm"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

/// Chunk `n`'s deterministic content.
fn chunk(n: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 31 + n * 7) % 251) as u8)
        .collect()
}

async fn put_chunk(w: &World, token: &str, rid: &str, seq: u64, data: &[u8]) -> Reply {
    raw(
        w,
        token,
        "PUT",
        &format!("/recordings/{rid}/chunks/{seq}"),
        &[],
        data,
    )
    .await
}

async fn upload(w: &World, rid: &str, seqs: std::ops::RangeInclusive<u64>, len: usize) {
    for n in seqs {
        let r = put_chunk(w, &w.alice.1, rid, n, &chunk(n, len)).await;
        assert_eq!(r.status, 201, "chunk {n}: {}", r.text());
    }
}

async fn stop(w: &World, rid: &str) -> Value {
    let r = rec(
        w,
        &w.alice.1,
        "POST",
        &format!("/recordings/{rid}/stop"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

fn actions(w: &World) -> Vec<(String, String, String)> {
    w.h.runtime()
        .audit_log()
        .entries(&switchboard::audit::Scope::tenant("acme"), 0, 100_000)
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.target, e.details))
        .collect()
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn r1_r3_chunks_arrive_in_order_resume_pause_and_seal() {
    let w = world().await;
    let mut bob_stream = ready(&w.s, &w.bob.1).await;
    let rid = start(&w, "c1").await;
    let e = next_of(&mut bob_stream, "recording.started", WAIT)
        .await
        .unwrap();
    assert_eq!(e["data"]["recording"], rid.as_str());
    // One recording per source at a time.
    let r = rec(
        &w,
        &w.alice.1,
        "POST",
        "/recordings",
        Some(json!({"source": {"kind": "call", "id": "c1"}})),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "already_recording"));
    // Meeting recordings start through the meetings plugin only, so no
    // user can squat a meeting's recording slot.
    let body = json!({"source": {"kind": "meeting", "id": "m1"}});
    let r = rec(&w, &w.carol.1, "POST", "/recordings", Some(body)).await;
    assert_eq!((r.status, r.code().as_str()), (403, "meeting_via_plugin"));
    for (body, code) in [
        (
            json!({"source": {"kind": "fax", "id": "x"}}),
            "invalid_json",
        ),
        (
            json!({"source": {"kind": "call", "id": "a/b"}}),
            "invalid_source",
        ),
        (
            json!({"source": {"kind": "call", "id": "c9"}, "participants": ["nobody"]}),
            "unknown_user",
        ),
        (
            json!({"source": {"kind": "call", "id": "c9"}, "participants": ["gina"]}),
            "unknown_user",
        ),
        (
            json!({"source": {"kind": "call", "id": "c9"}, "content_type": "audio"}),
            "invalid_type",
        ),
    ] {
        let r = rec(&w, &w.alice.1, "POST", "/recordings", Some(body.clone())).await;
        assert_eq!(r.code(), code, "{body}");
    }
    // The initiator uploads; a participant may not, others see nothing.
    upload(&w, &rid, 1..=3, 50_000).await;
    let r = put_chunk(&w, &w.bob.1, &rid, 4, &chunk(4, 10)).await;
    assert_eq!((r.status, r.code().as_str()), (403, "not_initiator"));
    let r = put_chunk(&w, &w.carol.1, &rid, 4, &chunk(4, 10)).await;
    assert_eq!((r.status, r.code().as_str()), (404, "recording_not_found"));
    let r = put_chunk(&w, &w.gina.1, &rid, 4, &chunk(4, 10)).await;
    assert_eq!(r.status, 403, "other tenants' sessions stop at the gateway");
    // Bad chunks: clear errors, nothing stored.
    let big = vec![0u8; (4 << 20) + 1];
    for (seq, body, status, code) in [
        ("5", chunk(5, 10), 409, "out_of_order"),
        ("0", chunk(0, 10), 400, "invalid_seq"),
        ("04", chunk(4, 10), 400, "invalid_seq"),
        ("x", chunk(4, 10), 400, "invalid_seq"),
        ("4", Vec::new(), 400, "empty_chunk"),
        ("4", big, 413, "chunk_too_large"),
        ("2", chunk(9, 50_000), 409, "chunk_conflict"),
    ] {
        let r = raw(
            &w,
            &w.alice.1,
            "PUT",
            &format!("/recordings/{rid}/chunks/{seq}"),
            &[],
            &body,
        )
        .await;
        assert_eq!((r.status, r.code().as_str()), (status, code), "chunk {seq}");
    }
    let r = raw(
        &w,
        &w.alice.1,
        "PUT",
        &format!("/recordings/{rid}/chunks/4"),
        &[("x-chunk-sha256", &sha256_hex(b"something else"))],
        &chunk(4, 100),
    )
    .await;
    assert_eq!(r.code(), "checksum_mismatch");
    let r = rec(&w, &w.alice.1, "GET", &format!("/recordings/{rid}"), None)
        .await
        .json();
    assert_eq!(
        (
            r["chunks"].as_u64(),
            r["bytes"].as_u64(),
            r["next_chunk"].as_u64()
        ),
        (Some(3), Some(150_000), Some(4))
    );
    // A retried chunk (its answer was lost) is acknowledged, not doubled.
    let r = put_chunk(&w, &w.alice.1, &rid, 3, &chunk(3, 50_000)).await;
    assert_eq!(
        (r.status, r.json()["duplicate"].as_bool()),
        (200, Some(true))
    );
    let r = raw(
        &w,
        &w.alice.1,
        "PUT",
        &format!("/recordings/{rid}/chunks/4"),
        &[("x-chunk-sha256", &sha256_hex(&chunk(4, 50_000)))],
        &chunk(4, 50_000),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Pause for card data: nothing is accepted until resumed; only the
    // initiator pauses, resumes and stops (SPEC M9).
    let r = rec(
        &w,
        &w.bob.1,
        "POST",
        &format!("/recordings/{rid}/pause"),
        None,
    )
    .await;
    assert_eq!(r.code(), "not_initiator");
    let r = rec(
        &w,
        &w.alice.1,
        "POST",
        &format!("/recordings/{rid}/pause"),
        None,
    )
    .await;
    assert_eq!(r.json()["state"], "paused");
    next_of(&mut bob_stream, "recording.paused", WAIT)
        .await
        .unwrap();
    let r = put_chunk(&w, &w.alice.1, &rid, 5, &chunk(5, 10)).await;
    assert_eq!((r.status, r.code().as_str()), (409, "recording_paused"));
    let r = rec(
        &w,
        &w.alice.1,
        "POST",
        &format!("/recordings/{rid}/resume"),
        None,
    )
    .await;
    assert_eq!(r.json()["state"], "recording");
    upload(&w, &rid, 5..=5, 50_000).await;
    let r = rec(
        &w,
        &w.bob.1,
        "POST",
        &format!("/recordings/{rid}/stop"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "not_initiator"));
    let sealed = stop(&w, &rid).await;
    next_of(&mut bob_stream, "recording.stopped", WAIT)
        .await
        .unwrap();
    // After the stop: nothing more, but a retry of the last chunk is fine.
    let r = put_chunk(&w, &w.alice.1, &rid, 6, &chunk(6, 10)).await;
    assert_eq!((r.status, r.code().as_str()), (409, "recording_stopped"));
    let r = put_chunk(&w, &w.alice.1, &rid, 5, &chunk(5, 50_000)).await;
    assert_eq!(r.status, 200);
    let r = rec(
        &w,
        &w.alice.1,
        "POST",
        &format!("/recordings/{rid}/stop"),
        None,
    )
    .await;
    assert_eq!(r.code(), "recording_stopped");
    // The seal states chunks, bytes, head, times, initiator and the pause,
    // and its Ed25519 signature checks out with the published key.
    let seal = &sealed["seal"];
    let payload: Value = serde_json::from_str(seal["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["chunks"], 5);
    assert_eq!(payload["bytes"], 250_000);
    assert_eq!(payload["initiator"], w.alice.0.as_str());
    assert_eq!(payload["tenant"], "acme");
    assert_eq!(payload["pauses"].as_array().unwrap().len(), 1);
    assert_eq!(payload["head"], sealed["head"]);
    let key = rec(&w, &w.bob.1, "GET", "/seal-key", None).await.json();
    assert_eq!(key["public_key"], seal["public_key"]);
    let vk = VerifyingKey::from_bytes(
        &hex::decode(key["public_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    )
    .unwrap();
    let sig =
        Signature::from_slice(&hex::decode(seal["signature"].as_str().unwrap()).unwrap()).unwrap();
    vk.verify(seal["payload"].as_str().unwrap().as_bytes(), &sig)
        .unwrap();
    // Verified intact through the API; the media plays back byte for byte.
    let v = rec(
        &w,
        &w.bob.1,
        "GET",
        &format!("/recordings/{rid}/verify"),
        None,
    )
    .await;
    assert_eq!(v.status, 200, "{}", v.text());
    assert_eq!(v.json()["intact"], true);
    let m = raw(
        &w,
        &w.bob.1,
        "GET",
        &format!("/recordings/{rid}/media"),
        &[],
        b"",
    )
    .await;
    let expected: Vec<u8> = (1..=5).flat_map(|n| chunk(n, 50_000)).collect();
    assert_eq!(m.body, expected);
}

/// The recording `rid` in a copy of `data` changed by `tamper`, verified
/// through the plugin as the host would (role system).
async fn verify_copy(data: &Path, rid: &str, tamper: impl FnOnce(&Store)) -> (u16, Value) {
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("data");
    copy_dir(data, &copy);
    {
        let store = raw_store(&copy, "acme");
        tamper(&store);
        store.flush().unwrap();
    }
    let rt = Runtime::open(RuntimeConfig::new(&copy)).unwrap();
    let mut path = format!("/recordings/{rid}/verify");
    loop {
        let req = Request::new(Method::Get, &path, Principal::system("acme"));
        let r = rt.handle("acme", "recording", req).await.unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        match v["cursor"].as_str() {
            Some(c) if v["done"] == false => {
                path = format!("/recordings/{rid}/verify?cursor={c}");
            }
            _ => return (r.status, v),
        }
    }
}

fn chunk_key(rid: &str, seq: u64) -> Vec<u8> {
    format!("t/acme/k/recording/c/{rid}/{seq:016x}").into_bytes()
}

fn problems(v: &Value) -> String {
    v["problems"].to_string()
}

#[tokio::test]
async fn r2_verify_finds_changed_missing_reordered_added_and_truncated_chunks() {
    let w = world().await;
    let rid = start(&w, "tamper").await;
    upload(&w, &rid, 1..=6, 30_000).await;
    let sealed = stop(&w, &rid).await;
    let blob = {
        let r = rec(&w, &w.admin.1, "GET", &format!("/recordings/{rid}"), None).await;
        r.json()["blob"].as_str().unwrap().to_string()
    };
    assert!(
        rec(&w, &w.bob.1, "GET", &format!("/recordings/{rid}"), None)
            .await
            .json()
            .get("blob")
            .is_none(),
        "only admins see the media's blob id"
    );
    w.h.runtime().flush().unwrap();
    let data = w.h.data_dir().to_path_buf();

    // An untouched copy verifies.
    let (status, v) = verify_copy(&data, &rid, |_| {}).await;
    assert_eq!((status, v["intact"].as_bool()), (200, Some(true)), "{v}");

    // Changed media, re-encrypted under the blob's own key (an insider
    // with the keys): byte 65,636 lies in chunk 3 (bytes 60,000-89,999).
    let (status, v) = verify_copy(&data, &rid, |s| {
        let meta_key = format!("t/acme/bm/recording/{blob}").into_bytes();
        let meta: Value = serde_json::from_slice(&s.get(&meta_key).unwrap().unwrap()).unwrap();
        let key: [u8; 32] = hex::decode(meta["key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let prefix = format!("t/acme/bc/recording/{blob}/").into_bytes();
        let (k, sealed) = s.scan(&prefix, None, 2).unwrap().remove(1);
        let mut plain = crypt::open_chunk(&key, &k, &sealed).unwrap();
        plain[100] ^= 0xff;
        let resealed = crypt::seal_chunk(&key, &k, &plain).unwrap();
        s.apply(&[(k, Some(resealed))]).unwrap();
    })
    .await;
    assert_eq!((status, v["code"].as_str()), (409, Some("tampered")));
    assert!(
        problems(&v).contains("chunk 3: its media was changed"),
        "{v}"
    );
    // Changed without the keys: the media no longer opens.
    let (_, v) = verify_copy(&data, &rid, |s| {
        let prefix = format!("t/acme/bc/recording/{blob}/").into_bytes();
        let (k, mut sealed) = s.scan(&prefix, None, 1).unwrap().remove(0);
        let at = sealed.len() / 2;
        sealed[at] ^= 0xff;
        s.apply(&[(k, Some(sealed))]).unwrap();
    })
    .await;
    assert!(
        problems(&v).contains("chunk 1: its media cannot be read"),
        "{v}"
    );

    // A chunk record removed.
    let (_, v) = verify_copy(&data, &rid, |s| {
        s.apply(&[(chunk_key(&rid, 3), None)]).unwrap();
    })
    .await;
    assert!(problems(&v).contains("chunks 3..3 are missing"), "{v}");

    // Two chunk records swapped.
    let (_, v) = verify_copy(&data, &rid, |s| {
        let a = s.get(&chunk_key(&rid, 2)).unwrap().unwrap();
        let b = s.get(&chunk_key(&rid, 4)).unwrap().unwrap();
        s.apply(&[(chunk_key(&rid, 2), Some(b)), (chunk_key(&rid, 4), Some(a))])
            .unwrap();
    })
    .await;
    assert!(problems(&v).contains("reordered"), "{v}");

    // A chunk record appended after the seal.
    let (_, v) = verify_copy(&data, &rid, |s| {
        let last = s.get(&chunk_key(&rid, 6)).unwrap().unwrap();
        let mut c: Value = serde_json::from_slice(&last).unwrap();
        c["seq"] = json!(7);
        c["offset"] = json!(180_000);
        s.apply(&[(chunk_key(&rid, 7), Some(serde_json::to_vec(&c).unwrap()))])
            .unwrap();
    })
    .await;
    assert!(problems(&v).contains("added after"), "{v}");

    // Truncated consistently (last chunk and its record removed, the
    // recording's own record rewritten to match): the seal catches it.
    let (_, v) = verify_copy(&data, &rid, |s| {
        let key = format!("t/acme/k/recording/r/{rid}").into_bytes();
        let mut r: Value = serde_json::from_slice(&s.get(&key).unwrap().unwrap()).unwrap();
        let c5: Value =
            serde_json::from_slice(&s.get(&chunk_key(&rid, 5)).unwrap().unwrap()).unwrap();
        r["chunks"] = json!(5);
        r["bytes"] = json!(150_000);
        r["head"] = c5["chain"].clone();
        s.apply(&[
            (key, Some(serde_json::to_vec(&r).unwrap())),
            (chunk_key(&rid, 6), None),
        ])
        .unwrap();
    })
    .await;
    assert!(problems(&v).contains("sealed 6 chunks"), "{v}");

    // A forged seal statement: the signature no longer holds.
    let (_, v) = verify_copy(&data, &rid, |s| {
        let key = format!("t/acme/k/recording/r/{rid}").into_bytes();
        let mut r: Value = serde_json::from_slice(&s.get(&key).unwrap().unwrap()).unwrap();
        let forged = r["seal"]["payload"].as_str().unwrap().replace(
            &format!("\"initiator\":\"{}\"", w.alice.0),
            "\"initiator\":\"someone\"",
        );
        r["seal"]["payload"] = json!(forged);
        s.apply(&[(key, Some(serde_json::to_vec(&r).unwrap()))])
            .unwrap();
    })
    .await;
    assert_eq!(v["signature_valid"], false, "{v}");
    assert_eq!(
        sealed["seal"]["public_key"].as_str().map(str::len),
        Some(64)
    );
}

#[tokio::test]
async fn r4_access_is_checked_and_every_play_and_download_audited() {
    let w = world().await;
    let rid = start(&w, "c-access").await;
    upload(&w, &rid, 1..=2, 20_000).await;
    stop(&w, &rid).await;
    // The initiator, participants and admins list it; others do not.
    for (token, n) in [(&w.alice.1, 1), (&w.bob.1, 1), (&w.carol.1, 0)] {
        let r = rec(&w, token, "GET", "/recordings", None).await;
        assert_eq!(r.json()["recordings"].as_array().unwrap().len(), n);
    }
    let r = rec(&w, &w.admin.1, "GET", "/recordings?all=true", None).await;
    assert_eq!(r.json()["recordings"].as_array().unwrap().len(), 1);
    let r = rec(&w, &w.bob.1, "GET", "/recordings?all=true", None).await;
    assert_eq!(r.status, 403);
    let r = rec(
        &w,
        &w.bob.1,
        "GET",
        "/recordings?source=call:c-access",
        None,
    )
    .await;
    assert_eq!(r.json()["recordings"][0]["id"], rid.as_str());
    for path in ["", "/media", "/verify"] {
        let r = rec(
            &w,
            &w.carol.1,
            "GET",
            &format!("/recordings/{rid}{path}"),
            None,
        )
        .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (404, "recording_not_found"),
            "{path}"
        );
    }
    let r = rec(&w, &w.gina.1, "GET", &format!("/recordings/{rid}"), None).await;
    assert_eq!(r.code(), "wrong_tenant");
    let r =
        w.s.call(
            "GET",
            &format!("/api/v1/t/globex/p/recording/recordings/{rid}"),
            Some(&w.gina.1),
            None,
        )
        .await;
    assert_eq!(r.code(), "recording_not_found");
    for bad in ["x", &"A".repeat(32), &"0".repeat(31)] {
        let r = rec(&w, &w.alice.1, "GET", &format!("/recordings/{bad}"), None).await;
        assert_eq!(r.code(), "invalid_id", "{bad}");
    }
    // Play: inline for audio; download: an attachment; both audited with
    // who, when and from where.
    let play = raw(
        &w,
        &w.bob.1,
        "GET",
        &format!("/recordings/{rid}/media"),
        &[("range", "bytes=0-99")],
        b"",
    )
    .await;
    assert_eq!(play.status, 206);
    assert_eq!(play.body, chunk(1, 20_000)[..100].to_vec());
    assert_eq!(play.header("content-type"), Some("audio/webm"));
    assert_eq!(play.header("content-disposition"), Some("inline"));
    assert_eq!(play.header("x-content-type-options"), Some("nosniff"));
    let dl = raw(
        &w,
        &w.admin.1,
        "GET",
        &format!("/recordings/{rid}/media?download=true"),
        &[],
        b"",
    )
    .await;
    assert_eq!(dl.status, 200);
    assert_eq!(dl.body.len(), 40_000);
    assert_eq!(dl.header("content-type"), Some("application/octet-stream"));
    assert!(
        dl.header("content-disposition")
            .unwrap()
            .starts_with("attachment; filename=\"recording-")
    );
    let audited = actions(&w);
    let plays: Vec<&(String, String, String)> = audited
        .iter()
        .filter(|(a, t, _)| a == "recording.play" && *t == format!("recording/{rid}"))
        .collect();
    assert_eq!(plays.len(), 1);
    assert!(
        plays[0].2.contains("127.0.0.1"),
        "from where: {}",
        plays[0].2
    );
    assert!(plays[0].2.contains("0-99"));
    assert!(audited.iter().any(|(a, _, _)| a == "recording.download"));
    let entries =
        w.h.runtime()
            .audit_log()
            .entries(&switchboard::audit::Scope::tenant("acme"), 0, 100_000)
            .unwrap();
    let play_entry = entries
        .iter()
        .find(|e| e.action == "recording.play")
        .unwrap();
    assert!(
        format!("{:?}", play_entry.actor).contains(&w.bob.0),
        "who: {:?}",
        play_entry.actor
    );
    // The tenant's policy: participants, then admins, lose access.
    let mut cfg = serde_json::Map::new();
    cfg.insert("participants-may-access".into(), false.into());
    w.h.runtime()
        .set_config("acme", "recording", cfg)
        .await
        .unwrap();
    let r = rec(
        &w,
        &w.bob.1,
        "GET",
        &format!("/recordings/{rid}/media"),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    let r = rec(&w, &w.admin.1, "GET", &format!("/recordings/{rid}"), None).await;
    assert_eq!(r.status, 200);
    let mut cfg = serde_json::Map::new();
    cfg.insert("admins-may-access".into(), false.into());
    w.h.runtime()
        .set_config("acme", "recording", cfg)
        .await
        .unwrap();
    let r = rec(&w, &w.admin.1, "GET", &format!("/recordings/{rid}"), None).await;
    assert_eq!(r.status, 404);
    let r = rec(&w, &w.alice.1, "GET", &format!("/recordings/{rid}"), None).await;
    assert_eq!(r.status, 200, "the initiator always sees their recording");
}

async fn admin(w: &World, method: &str, path: &str, body: Value) -> Reply {
    w.s.call(
        method,
        &format!("/api/v1/admin/tenants/acme{path}"),
        Some(&w.admin.1),
        Some(&body),
    )
    .await
}

#[tokio::test]
async fn r5_legal_hold_suspends_deletion_and_retention_shreds_on_time() {
    let w = world().await;
    let rid = start(&w, "c-keep").await;
    upload(&w, &rid, 1..=2, 10_000).await;
    let r = rec(
        &w,
        &w.alice.1,
        "DELETE",
        &format!("/recordings/{rid}"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "recording_active"));
    stop(&w, &rid).await;
    let blob = rec(&w, &w.admin.1, "GET", &format!("/recordings/{rid}"), None)
        .await
        .json()["blob"]
        .as_str()
        .unwrap()
        .to_string();
    // A legal hold on this recording's media (tenant admin, admin API).
    let r = admin(
        &w,
        "PUT",
        "/hold",
        json!({"on": true, "plugin": "recording", "blob": blob}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = rec(&w, &w.bob.1, "DELETE", &format!("/recordings/{rid}"), None).await;
    assert_eq!(r.status, 403, "participants do not delete");
    let r = rec(
        &w,
        &w.alice.1,
        "DELETE",
        &format!("/recordings/{rid}"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (409, "legal_hold"));
    // Users cannot place or lift holds, nor change retention.
    let r =
        w.s.call(
            "PUT",
            "/api/v1/admin/tenants/acme/hold",
            Some(&w.alice.1),
            Some(&json!({"on": false, "plugin": "recording", "blob": blob})),
        )
        .await;
    assert_eq!(r.status, 403);
    let r =
        w.s.call(
            "PUT",
            "/api/v1/admin/tenants/acme/retention",
            Some(&w.gina.1),
            Some(&json!({"class": "recording", "days": 1})),
        )
        .await;
    assert_eq!(r.status, 403);
    // The audit trail's retention and lifting a tenant-wide hold are the
    // operator's, not the tenant admin's.
    let r = admin(
        &w,
        "PUT",
        "/retention",
        json!({"class": "audit", "days": 1}),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        admin(&w, "PUT", "/hold", json!({"on": true})).await.status,
        200
    );
    let r = admin(&w, "PUT", "/hold", json!({"on": false})).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let release = switchboard::admin::Op::HoldSet {
        tenant: "acme".into(),
        on: false,
        plugin: None,
        blob: None,
    };
    switchboard_tests::accounts::console(&w.h, release).await;
    let r = admin(
        &w,
        "PUT",
        "/hold",
        json!({"on": false, "plugin": "recording", "blob": blob}),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = rec(
        &w,
        &w.alice.1,
        "DELETE",
        &format!("/recordings/{rid}"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "shredded");
    let r = rec(
        &w,
        &w.bob.1,
        "GET",
        &format!("/recordings/{rid}/media"),
        None,
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (410, "recording_shredded"));
    let v = rec(
        &w,
        &w.alice.1,
        "GET",
        &format!("/recordings/{rid}/verify"),
        None,
    )
    .await
    .json();
    assert_eq!(v["media_shredded"], true);

    // Retention: 12 months by default (the host's class `recording`);
    // the tenant sets 30 days. Held media survives the sweep; the rest is
    // shredded and the plugin told.
    let r = admin(&w, "GET", "/retention", json!(null)).await;
    assert_eq!(r.json()["days"]["recording"], 365, "{}", r.text());
    let r = admin(
        &w,
        "PUT",
        "/retention",
        json!({"class": "recording", "days": 30}),
    )
    .await;
    assert_eq!(r.json()["days"]["recording"], 30);
    for bad in [
        json!({"class": "Recording!", "days": 1}),
        json!({"class": "recording", "days": 0}),
        json!({"class": "recording"}),
    ] {
        let r = admin(&w, "PUT", "/retention", bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let old = start(&w, "c-old").await;
    upload(&w, &old, 1..=1, 1000).await;
    stop(&w, &old).await;
    let held = start(&w, "c-held").await;
    upload(&w, &held, 1..=1, 1000).await;
    stop(&w, &held).await;
    let held_blob = rec(&w, &w.admin.1, "GET", &format!("/recordings/{held}"), None)
        .await
        .json()["blob"]
        .as_str()
        .unwrap()
        .to_string();
    admin(
        &w,
        "PUT",
        "/hold",
        json!({"on": true, "plugin": "recording", "blob": held_blob}),
    )
    .await;
    let now = switchboard::support::clock::now_ms();
    let report =
        w.h.runtime()
            .sweep_retention(now + 29 * 86_400_000)
            .await
            .unwrap();
    assert_eq!(report.deleted, 0, "nothing expired before 30 days");
    let report =
        w.h.runtime()
            .sweep_retention(now + 31 * 86_400_000)
            .await
            .unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(report.held_objects, 1);
    let r = rec(&w, &w.alice.1, "GET", &format!("/recordings/{old}"), None)
        .await
        .json();
    assert_eq!(r["state"], "shredded");
    assert_eq!(r["shredded"]["reason"], "retention");
    let r = rec(&w, &w.alice.1, "GET", &format!("/recordings/{held}"), None)
        .await
        .json();
    assert_eq!(r["state"], "stopped");
    let audited = actions(&w);
    for a in [
        "recording.delete",
        "recording.expire",
        "retention.delete",
        "retention.policy",
    ] {
        assert!(audited.iter().any(|(x, _, _)| x == a), "{a} audited");
    }
}

#[tokio::test]
async fn r5_the_owners_quota_ends_a_recording_cleanly_and_sealed() {
    let w = world_with(Limits {
        owner_storage_bytes: 250_000,
        ..Limits::default()
    })
    .await;
    let rid = start(&w, "c-quota").await;
    upload(&w, &rid, 1..=2, 100_000).await;
    let r = put_chunk(&w, &w.alice.1, &rid, 3, &chunk(3, 100_000)).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "quota_exceeded"),
        "{}",
        r.text()
    );
    let body = r.json();
    assert_eq!(body["recording"]["state"], "stopped");
    assert_eq!(body["recording"]["chunks"], 2);
    let payload: Value =
        serde_json::from_str(body["recording"]["seal"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        (payload["chunks"].as_u64(), payload["bytes"].as_u64()),
        (Some(2), Some(200_000))
    );
    let v = rec(
        &w,
        &w.alice.1,
        "GET",
        &format!("/recordings/{rid}/verify"),
        None,
    )
    .await;
    assert_eq!(v.json()["intact"], true, "{}", v.text());
    let r = put_chunk(&w, &w.alice.1, &rid, 3, &chunk(3, 10)).await;
    assert_eq!(r.code(), "recording_stopped");
    // The quota is alice's: bob records on.
    let r = rec(
        &w,
        &w.bob.1,
        "POST",
        "/recordings",
        Some(json!({"source": {"kind": "screen", "id": "s1"}})),
    )
    .await;
    let bobs = r.json()["id"].as_str().unwrap().to_string();
    let r = put_chunk(&w, &w.bob.1, &bobs, 1, &chunk(1, 100_000)).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

#[tokio::test]
async fn m9_the_meetings_api_starts_and_only_the_initiator_stops() {
    let w = world().await;
    let via = |token: &str, method: &str, path: &str, body: Option<Value>| {
        let (token, method, path) = (token.to_string(), method.to_string(), path.to_string());
        let w = &w;
        async move {
            w.s.call(
                &method,
                &format!("/api/v1/t/acme/p/owner/recording{path}"),
                Some(&token),
                body.as_ref(),
            )
            .await
        }
    };
    // Started through the owning plugin for bob, with a guest taking part.
    let r = via(
        &w.bob.1,
        "POST",
        "/recordings",
        Some(json!({"source": {"kind": "meeting", "id": "space-42:live-1"}, "participants": [w.alice.0, "guest-77"]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let rid = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["owner_plugin"], "owner");
    assert_eq!(r.json()["initiator"], w.bob.0.as_str());
    // Through the plugin a user still needs access of their own.
    let r = via(&w.carol.1, "GET", &format!("/recordings/{rid}"), None).await;
    assert_eq!(r.status, 404);
    // Status through the plugin; later joiners are added and told.
    let r = via(&w.alice.1, "GET", &format!("/recordings/{rid}"), None).await;
    assert_eq!(r.json()["state"], "recording");
    let mut carol = ready(&w.s, &w.carol.1).await;
    let r = via(
        &w.alice.1,
        "POST",
        &format!("/recordings/{rid}/participants"),
        Some(json!({"users": [w.carol.0]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = next_of(&mut carol, "recording.started", WAIT)
        .await
        .unwrap();
    assert_eq!(e["data"]["recording"], rid.as_str());
    // A user cannot add participants directly (not the initiator).
    let r = rec(
        &w,
        &w.alice.1,
        "POST",
        &format!("/recordings/{rid}/participants"),
        Some(json!({"users": ["guest-9"]})),
    )
    .await;
    assert_eq!(r.code(), "not_initiator");
    // Through the plugin, users still pass the recording's own checks: a
    // non-participant sees nothing, only the initiator uploads, and plays
    // are audited with the client's address.
    let chunk_path = format!("/api/v1/t/acme/p/owner/recording/recordings/{rid}/chunks/1");
    let r = w.s.call("PUT", &chunk_path, Some(&w.alice.1), None).await;
    assert_eq!(r.code(), "not_initiator");
    let r = w.s.call("PUT", &chunk_path, Some(&w.bob.1), None).await;
    assert_eq!(
        r.code(),
        "empty_chunk",
        "the initiator gets past the checks"
    );
    let r = via(&w.alice.1, "GET", &format!("/recordings/{rid}/media"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let play = actions(&w)
        .into_iter()
        .find(|(a, _, _)| a == "recording.play")
        .unwrap();
    assert!(play.2.contains("127.0.0.1"), "{}", play.2);
    // Only the initiator stops, through the plugin or directly.
    let r = via(&w.alice.1, "POST", &format!("/recordings/{rid}/stop"), None).await;
    assert_eq!((r.status, r.code().as_str()), (403, "not_initiator"));
    let r = via(&w.bob.1, "POST", &format!("/recordings/{rid}/stop"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = rec(
        &w,
        &w.alice.1,
        "GET",
        "/recordings?source=meeting:space-42:live-1",
        None,
    )
    .await;
    assert_eq!(r.json()["recordings"].as_array().unwrap().len(), 1);
    let r = rec(&w, &w.alice.1, "GET", "/recordings?source=fax:1", None).await;
    assert_eq!(r.code(), "invalid_source");
}

#[tokio::test]
async fn r2_the_cli_verifies_a_recording() {
    use clap::Parser as _;
    let w = world().await;
    let rid = start(&w, "c-cli").await;
    upload(&w, &rid, 1..=3, 10_000).await;
    stop(&w, &rid).await;
    w.h.runtime().flush().unwrap();
    let data = w.h.data_dir().to_path_buf();
    let World { h, s, .. } = w;
    drop(s);
    let rt = h.runtime().clone();
    let _keep = h.into_dir();
    drop(rt);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cli = |data: &Path, rid: &str| {
        switchboard::cli::Cli::try_parse_from([
            "switchboard",
            "call",
            "--data",
            data.to_str().unwrap(),
            "--tenant",
            "acme",
            "--plugin",
            "recording",
            "--system",
            "--follow",
            "GET",
            &format!("/recordings/{rid}/verify"),
        ])
        .unwrap()
    };
    let scratch = tempfile::tempdir().unwrap();
    let good = scratch.path().join("good");
    copy_dir(&data, &good);
    switchboard::cli::run(cli(&good, &rid)).await.unwrap();
    let bad = scratch.path().join("bad");
    copy_dir(&data, &bad);
    {
        let store = raw_store(&bad, "acme");
        store.apply(&[(chunk_key(&rid, 2), None)]).unwrap();
        store.flush().unwrap();
    }
    let e = switchboard::cli::run(cli(&bad, &rid)).await.unwrap_err();
    assert!(e.to_string().contains("409"), "{e}");
}

#[tokio::test]
async fn r2_a_long_recording_verifies_over_several_calls() {
    // Unoptimised test builds of the host hash and decrypt far slower than
    // a release build (docs/benchmarks.md: ~400 MiB/s); a longer deadline
    // keeps this test about cursors, not about the machine's speed.
    let w = world_with(Limits {
        deadline_ms: 10_000,
        ..Limits::default()
    })
    .await;
    let rid = start(&w, "c-long").await;
    upload(&w, &rid, 1..=5, 4 << 20).await;
    stop(&w, &rid).await;
    let mut path = format!("/recordings/{rid}/verify");
    let mut calls = 0;
    let last = loop {
        calls += 1;
        let v = rec(&w, &w.alice.1, "GET", &path, None).await.json();
        match v["cursor"].as_str() {
            Some(c) if v["done"] == false => path = format!("/recordings/{rid}/verify?cursor={c}"),
            _ => break v,
        }
    };
    assert!(calls >= 2, "20 MiB takes more than one call: {last}");
    assert_eq!(last["intact"], true, "{last}");
    assert_eq!(last["bytes"], 20 << 20);
    // A cursor is checked, and cannot vouch for more than was checked:
    // one pointing past the media (with the right head) is refused.
    let path = format!("/recordings/{rid}/verify");
    let first = rec(&w, &w.alice.1, "GET", &path, None).await.json();
    let cursor = first["cursor"].as_str().unwrap().to_string();
    let mut parts: Vec<String> = cursor.split('.').map(str::to_string).collect();
    parts[0] = "6".into();
    let forged = parts.join(".");
    let r = rec(
        &w,
        &w.alice.1,
        "GET",
        &format!("{path}?cursor={forged}"),
        None,
    )
    .await;
    assert_eq!(r.code(), "invalid_cursor", "{}", r.text());
    for bad in ["x", "1.zz.0.5b5d", "0.00.0.5b5d"] {
        let r = rec(
            &w,
            &w.alice.1,
            "GET",
            &format!("/recordings/{rid}/verify?cursor={bad}"),
            None,
        )
        .await;
        assert_eq!(r.code(), "invalid_cursor", "{bad}");
    }
}
