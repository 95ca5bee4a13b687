//! Storage and data protection through a real plugin (`vault`): encryption
//! at rest, blobs, quotas, the crypto capability, retention and legal hold,
//! tenant deletion, regions, master key rotation (SPEC D2-D4, K4, K5).

use switchboard::runtime::{Method, Runtime, RuntimeConfig};
use switchboard::tenant::Limits;
use switchboard_tests::*;

async fn vault(tenants: &[(&str, Limits)]) -> switchboard::harness::Harness {
    let h = harness(&["vault"]).await;
    for (t, limits) in tenants {
        tenant(&h, t, limits.clone(), &["vault"]).await;
    }
    h
}

fn marker(tag: &str) -> String {
    format!("MARKER-{tag}-{}", std::process::id())
}

/// Every file under `dir`, recursively.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_of_stored_content_appears_anywhere_in_the_data_folder() {
    let h = vault(&[("acme", Limits::default()), ("beta", Limits::default())]).await;
    let mut markers = Vec::new();
    for t in ["acme", "beta"] {
        let kv = marker(&format!("kv-{t}"));
        let r = h
            .call(t, "vault", "u1", Method::Put, "/kv/note", kv.as_bytes())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        // A blob spanning several chunks, the marker at both ends.
        let blob = marker(&format!("blob-{t}"));
        let mut body = blob.clone().into_bytes();
        body.extend(std::iter::repeat_n(b'.', 150_000));
        body.extend(blob.as_bytes());
        let id = ok_json(h.post(t, "vault", "u1", "/blobs?owner=u1", &body).await);
        let back = h
            .get(
                t,
                "vault",
                "u1",
                &format!("/blobs/{}", id.as_str().unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(back.body, body);
        markers.push(kv);
        markers.push(blob);
    }
    h.runtime().flush().unwrap();
    let backups = h.data_dir().join("backups");
    h.runtime().backup(&backups, None).await.unwrap();
    let dir = h.data_dir().to_path_buf();
    let all = files(&dir);
    assert!(all.len() > 5, "{all:?}");
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        for m in &markers {
            assert!(
                !bytes.windows(m.len()).any(|w| w == m.as_bytes()),
                "plaintext {m} found in {}",
                f.display()
            );
        }
    }
    // And it all reads back after a restart.
    let dir = h.into_dir();
    let rt = Runtime::open(RuntimeConfig::new(dir.path())).unwrap();
    let r = rt
        .handle(
            "acme",
            "vault",
            switchboard::runtime::Request::new(
                Method::Get,
                "/kv/note",
                switchboard::runtime::Principal::user("acme", "u1"),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.text(), markers[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_read_by_range_and_a_trapping_call_leaves_no_blob_behind() {
    let h = vault(&[("acme", Limits::default()), ("beta", Limits::default())]).await;
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let id = ok_json(h.post("acme", "vault", "u1", "/blobs", &body).await);
    let id = id.as_str().unwrap().to_string();
    for (offset, len) in [
        (0u64, 10u32),
        (65_530, 20),
        (131_071, 65_537),
        (199_990, 100),
    ] {
        let r = h
            .get(
                "acme",
                "vault",
                "u1",
                &format!("/blobs/{id}?offset={offset}&len={len}"),
            )
            .await
            .unwrap();
        let end = (offset as usize + len as usize).min(body.len());
        assert_eq!(r.body, body[offset as usize..end], "range {offset}+{len}");
    }
    let past = h
        .get(
            "acme",
            "vault",
            "u1",
            &format!("/blobs/{id}?offset=200001&len=1"),
        )
        .await
        .unwrap();
    assert_eq!(past.status, 400, "{}", past.text());
    // Appending continues the last partial chunk.
    let more = vec![7u8; 70_000];
    let size = ok_json(
        h.post("acme", "vault", "u1", &format!("/blobs/{id}/append"), &more)
            .await,
    );
    assert_eq!(size, 270_000);
    let tail = h
        .get(
            "acme",
            "vault",
            "u1",
            &format!("/blobs/{id}?offset=199998&len=4"),
        )
        .await
        .unwrap();
    assert_eq!(tail.body, [body[199_998], body[199_999], 7, 7]);

    // Another tenant cannot reach the blob by its id.
    let other = h
        .get("beta", "vault", "u1", &format!("/blobs/{id}/size"))
        .await
        .unwrap();
    assert_eq!(other.status, 404);

    // A call that writes a blob and then traps leaves nothing.
    let before = h.runtime().storage_usage("acme").unwrap();
    let e = err_code(
        h.post("acme", "vault", "u1", "/blobs-then-trap?owner=u1", &body)
            .await,
    );
    assert_eq!(e, "plugin_trap");
    assert_eq!(h.runtime().storage_usage("acme").unwrap(), before);
    assert_eq!(h.runtime().owner_usage("acme", "u1").unwrap(), 0);

    // Deleting destroys the key at once; the chunks are reclaimed after.
    let del = h
        .call(
            "acme",
            "vault",
            "u1",
            Method::Delete,
            &format!("/blobs/{id}"),
            b"",
        )
        .await
        .unwrap();
    assert_eq!(del.text(), "true");
    let gone = h
        .get("acme", "vault", "u1", &format!("/blobs/{id}"))
        .await
        .unwrap();
    assert_eq!(gone.status, 404);
    assert_eq!(h.runtime().reclaim_blobs().await.unwrap(), 5);
    let after = h.runtime().storage_usage("acme").unwrap();
    assert!(after.bytes < before.bytes, "{after:?} vs {before:?}");

    // Malformed classes, owners and oversized reads are refused clearly.
    for path in ["/blobs?class=Bad%20Class", "/blobs?owner=a%2Fb"] {
        let r = h.post("acme", "vault", "u1", path, b"x").await.unwrap();
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains("invalid_argument"), "{}", r.text());
    }
    let id2 = ok_json(h.post("acme", "vault", "u1", "/blobs", b"small").await);
    let r = h
        .get(
            "acme",
            "vault",
            "u1",
            &format!("/blobs/{}?offset=0&len=5000000", id2.as_str().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());

    // Malformed ids are refused clearly.
    let bad = h
        .get("acme", "vault", "u1", "/blobs/..%2F..%2Fx/size")
        .await
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_whole_writes_per_user_and_per_tenant() {
    let limits = Limits {
        owner_storage_bytes: 300_000,
        storage_bytes: 1_000_000,
        ..Limits::default()
    };
    let h = vault(&[("acme", limits)]).await;
    let big = vec![1u8; 200_000];
    ok_json(h.post("acme", "vault", "u1", "/blobs?owner=u1", &big).await);
    let r = h
        .post("acme", "vault", "u1", "/blobs?owner=u1", &big)
        .await
        .unwrap();
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("quota_exceeded"), "{}", r.text());
    assert_eq!(h.runtime().owner_usage("acme", "u1").unwrap(), 200_000);
    // Another user has their own allowance.
    ok_json(h.post("acme", "vault", "u2", "/blobs?owner=u2", &big).await);
    // The tenant's total: a kv write that would pass it fails whole.
    let used = h.runtime().storage_usage("acme").unwrap();
    assert!(used.bytes > 400_000 && used.bytes < 1_000_000, "{used:?}");
    let huge = vec![2u8; 700_000];
    let e = err_code(
        h.call("acme", "vault", "u1", Method::Put, "/kv/huge", &huge)
            .await,
    );
    assert_eq!(e, "quota_exceeded");
    let missing = h.get("acme", "vault", "u1", "/kv/huge").await.unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(h.runtime().storage_usage("acme").unwrap(), used);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crypto_keys_are_per_tenant_and_never_leave_the_host() {
    let h = vault(&[("acme", Limits::default()), ("beta", Limits::default())]).await;
    let post = |t: &'static str, path: String, body: Vec<u8>| {
        let h = &h;
        async move { h.post(t, "vault", "u", &path, &body).await.unwrap() }
    };
    let sig = post("acme", "/crypto/sign/invites".into(), b"hello".to_vec()).await;
    assert_eq!(sig.body.len(), 64);
    let mut body = sig.body.clone();
    body.extend(b"hello");
    assert_eq!(
        post("acme", "/crypto/verify/invites".into(), body.clone())
            .await
            .body,
        [1]
    );
    // Another tenant's key of the same name is another key.
    assert_eq!(
        post("beta", "/crypto/verify/invites".into(), body)
            .await
            .body,
        [0]
    );
    let pk_a = post("acme", "/crypto/public-key/invites".into(), vec![])
        .await
        .body;
    let pk_b = post("beta", "/crypto/public-key/invites".into(), vec![])
        .await
        .body;
    assert_eq!(pk_a.len(), 32);
    assert_ne!(pk_a, pk_b);
    // The signature verifies with the published public key.
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk_a.clone().try_into().unwrap()).unwrap();
    let s = ed25519_dalek::Signature::from_slice(&sig.body).unwrap();
    vk.verify_strict(b"hello", &s).unwrap();

    let sealed = post(
        "acme",
        "/crypto/seal/files?aad=ctx".into(),
        b"secret".to_vec(),
    )
    .await;
    assert_eq!(sealed.status, 200);
    assert!(!sealed.body.windows(6).any(|w| w == b"secret"));
    let opened = post(
        "acme",
        "/crypto/open/files?aad=ctx".into(),
        sealed.body.clone(),
    )
    .await;
    assert_eq!(opened.body, b"secret");
    for (tenant, path) in [
        ("acme", "/crypto/open/files?aad=other"),
        ("acme", "/crypto/open/other-key?aad=ctx"),
        ("beta", "/crypto/open/files?aad=ctx"),
    ] {
        let r = post(tenant, path.into(), sealed.body.clone()).await;
        assert_eq!(r.status, 400, "{tenant} {path}: {}", r.text());
        assert!(r.text().contains("authentication failed"), "{}", r.text());
    }
    let h1 = post("acme", "/crypto/hmac/k".into(), b"m".to_vec())
        .await
        .body;
    let h2 = post("beta", "/crypto/hmac/k".into(), b"m".to_vec())
        .await
        .body;
    assert_eq!(h1.len(), 32);
    assert_ne!(h1, h2);
    let bad = post("acme", "/crypto/hmac/Bad%20Name".into(), b"m".to_vec()).await;
    assert_eq!(bad.status, 400);
    let digest = post("acme", "/crypto/sha256/x".into(), b"abc".to_vec())
        .await
        .body;
    assert_eq!(
        hex(&digest),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let r1 = h
        .get("acme", "vault", "u", "/crypto/random/32")
        .await
        .unwrap()
        .body;
    let r2 = h
        .get("acme", "vault", "u", "/crypto/random/32")
        .await
        .unwrap()
        .body;
    assert_eq!(r1.len(), 32);
    assert_ne!(r1, r2);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_what_expired_except_under_legal_hold() {
    let h = vault(&[("acme", Limits::default())]).await;
    let rt = h.runtime();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = ok_json(
            h.post(
                "acme",
                "vault",
                "u1",
                "/blobs?owner=u1&class=recording",
                b"audio",
            )
            .await,
        );
        ids.push(id.as_str().unwrap().to_string());
    }
    let kept = ok_json(
        h.post(
            "acme",
            "vault",
            "u1",
            "/blobs?owner=u1&class=meeting",
            b"notes",
        )
        .await,
    );
    let now = switchboard::support::clock::now_ms();
    let day = 86_400_000u64;
    // Nothing has expired yet.
    assert_eq!(
        rt.sweep_retention(now + 300 * day).await.unwrap().deleted,
        0
    );

    // A held object survives; a plugin cannot delete it either.
    rt.set_blob_hold("acme", "vault", &ids[0], true)
        .await
        .unwrap();
    let denied = h
        .call(
            "acme",
            "vault",
            "u1",
            Method::Delete,
            &format!("/blobs/{}", ids[0]),
            b"",
        )
        .await
        .unwrap();
    assert_eq!(denied.status, 403, "{}", denied.text());

    // A tenant hold suspends everything.
    rt.set_legal_hold("acme", true).await.unwrap();
    let r = rt.sweep_retention(now + 400 * day).await.unwrap();
    assert_eq!((r.deleted, r.held_tenants), (0, 1));
    assert_eq!(
        rt.delete_tenant("acme").await.unwrap_err().code(),
        "legal_hold"
    );
    rt.set_legal_hold("acme", false).await.unwrap();

    let r = rt.sweep_retention(now + 400 * day).await.unwrap();
    assert_eq!((r.deleted, r.held_objects), (2, 1));
    for (i, id) in ids.iter().enumerate() {
        let s = h
            .get("acme", "vault", "u1", &format!("/blobs/{id}/size"))
            .await
            .unwrap();
        assert_eq!(s.status, if i == 0 { 200 } else { 404 }, "blob {i}");
    }
    assert_eq!(rt.owner_usage("acme", "u1").unwrap(), 10);
    // Meeting content has no default retention.
    let s = h
        .get(
            "acme",
            "vault",
            "u1",
            &format!("/blobs/{}/size", kept.as_str().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(s.status, 200);

    // A tenant policy: meetings for 30 days.
    rt.set_retention("acme", "meeting", Some(30)).await.unwrap();
    assert_eq!(rt.sweep_retention(now + 31 * day).await.unwrap().deleted, 1);
    for (class, days) in [("Bad Class", Some(3)), ("recording", Some(0))] {
        assert_eq!(
            rt.set_retention("acme", class, days)
                .await
                .unwrap_err()
                .code(),
            "invalid_retention"
        );
    }
    let (policy, _) = rt.retention_policy("acme").unwrap();
    assert_eq!(policy["recording"], Some(365));
    assert_eq!(policy["audit"], Some(2557));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_destroys_its_key_and_leaves_others_alone() {
    let h = vault(&[("acme", Limits::default()), ("beta", Limits::default())]).await;
    for t in ["acme", "beta"] {
        h.call(t, "vault", "u", Method::Put, "/kv/x", t.as_bytes())
            .await
            .unwrap();
    }
    h.runtime().delete_tenant("acme").await.unwrap();
    assert_eq!(
        err_code(h.get("acme", "vault", "u", "/kv/x").await),
        "tenant_not_found"
    );
    assert_eq!(
        h.get("beta", "vault", "u", "/kv/x").await.unwrap().text(),
        "beta"
    );
    // The id can be used again, starting empty with a new key.
    h.tenant("acme").await.unwrap();
    h.enable("acme", "vault").await.unwrap();
    assert_eq!(
        h.get("acme", "vault", "u", "/kv/x").await.unwrap().status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_for_a_deleted_tenant_never_commits_into_its_successor() {
    let h = vault(&[("acme", Limits::default())]).await;
    let rt = h.runtime().clone();
    let slow = tokio::spawn(async move {
        let req = switchboard::runtime::Request::new(
            Method::Put,
            "/kv/ghost/slowly?ms=600",
            switchboard::runtime::Principal::user("acme", "u"),
        )
        .with_body(b"from the old tenant".to_vec());
        rt.handle("acme", "vault", req).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    h.runtime().delete_tenant("acme").await.unwrap();
    h.tenant("acme").await.unwrap();
    h.enable("acme", "vault").await.unwrap();
    let e = slow.await.unwrap().unwrap_err();
    assert_eq!(e.code(), "tenant_not_found", "{e}");
    let r = h.get("acme", "vault", "u", "/kv/ghost").await.unwrap();
    assert_eq!(r.status, 404, "the old tenant's write reached the new one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_live_in_their_region_and_unknown_regions_are_refused() {
    let h = switchboard::harness::Harness::with_config(|c| {
        c.regions = vec!["eu".into(), "us".into()];
    })
    .unwrap();
    h.install(&manifest("vault"), &component("vault"))
        .await
        .unwrap();
    let rt = h.runtime();
    rt.create_tenant_in("acme", Some("us"), None).await.unwrap();
    h.enable("acme", "vault").await.unwrap();
    let e = rt
        .create_tenant_in("beta", Some("mars"), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_region");
    assert!(e.to_string().contains("eu, us"), "{e}");
    h.call(
        "acme",
        "vault",
        "u",
        Method::Put,
        "/kv/x",
        &vec![9u8; 100_000],
    )
    .await
    .unwrap();
    rt.flush().unwrap();
    let size = |region: &str| -> u64 {
        files(&h.data_dir().join("store").join("regions").join(region))
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum()
    };
    assert!(size("us") > 100_000, "us holds {}", size("us"));
    assert!(size("eu") < 100_000, "eu holds {}", size("eu"));

    // Started without its region, the tenant is not served — and its id
    // cannot be taken over (that would overwrite its key).
    let dir = h.into_dir();
    let mut only_eu = RuntimeConfig::new(dir.path());
    only_eu.regions = vec!["eu".into()];
    let rt = Runtime::open(only_eu).unwrap();
    assert!(rt.tenants().is_empty());
    let e = rt.create_tenant("acme", None).await.unwrap_err();
    assert_eq!(e.code(), "tenant_exists", "{e}");
    drop(rt);
    let mut both = RuntimeConfig::new(dir.path());
    both.regions = vec!["eu".into(), "us".into()];
    let rt = Runtime::open(both).unwrap();
    let req = switchboard::runtime::Request::new(
        Method::Get,
        "/kv/x",
        switchboard::runtime::Principal::user("acme", "u"),
    );
    assert_eq!(
        rt.handle("acme", "vault", req).await.unwrap().body.len(),
        100_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_rotates_online_and_the_old_key_no_longer_opens_the_folder() {
    let h = vault(&[("acme", Limits::default())]).await;
    let old = std::fs::read_to_string(h.data_dir().join("keys/master.key")).unwrap();
    let writer = {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let rt = h.runtime().clone();
            tasks.push(tokio::spawn(async move {
                let req = switchboard::runtime::Request::new(
                    Method::Put,
                    &format!("/kv/k{i}"),
                    switchboard::runtime::Principal::user("acme", "u"),
                )
                .with_body(vec![i as u8; 10]);
                rt.handle("acme", "vault", req).await.map(|r| r.status)
            }));
        }
        tasks
    };
    let id = h.runtime().rotate_master_key(None).await.unwrap();
    for t in writer {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    let new = std::fs::read_to_string(h.data_dir().join("keys/master.key")).unwrap();
    assert_ne!(old, new);
    let dir = h.into_dir();
    let rt = Runtime::open(RuntimeConfig::new(dir.path())).unwrap();
    let req = switchboard::runtime::Request::new(
        Method::Get,
        "/kv/k7",
        switchboard::runtime::Principal::user("acme", "u"),
    );
    assert_eq!(
        rt.handle("acme", "vault", req).await.unwrap().body,
        vec![7u8; 10]
    );
    drop(rt);
    // With the old key the folder does not open.
    let old_file = dir.path().join("old.key");
    std::fs::write(&old_file, &old).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&old_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut config = RuntimeConfig::new(dir.path());
    config.master_key = switchboard::store::crypt::MasterKeySource::File(old_file);
    let err = format!("{:#}", Runtime::open(config).err().unwrap());
    assert!(
        err.contains("wrapped by master key") && err.contains(&id),
        "{err}"
    );
}
