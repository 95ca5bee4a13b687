//! Backups (SPEC D5): online and consistent while calls write, full and
//! incremental, encrypted, refused when corrupt, and a restore into a fresh
//! folder gives back exactly the same data.

use switchboard::backup::{self, Kind};
use switchboard::runtime::{Method, Principal, Request, Runtime, RuntimeConfig};
use switchboard::tenant::Limits;
use switchboard_tests::*;

async fn get(rt: &Runtime, tenant: &str, path: &str) -> (u16, Vec<u8>) {
    let r = rt
        .handle(
            tenant,
            "vault",
            Request::new(Method::Get, path, Principal::user(tenant, "u")),
        )
        .await
        .unwrap();
    (r.status, r.body)
}

async fn put(rt: &Runtime, tenant: &str, key: &str, value: &[u8]) {
    let req = Request::new(
        Method::Put,
        &format!("/kv/{key}"),
        Principal::user(tenant, "u"),
    )
    .with_body(value.to_vec());
    assert_eq!(rt.handle(tenant, "vault", req).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_backups_restore_exactly_while_writes_go_on() {
    let h = harness(&["vault"]).await;
    tenant(&h, "acme", Limits::default(), &["vault"]).await;
    tenant(&h, "beta", Limits::default(), &["vault"]).await;
    let rt = h.runtime().clone();
    for i in 0..200 {
        put(&rt, "acme", &format!("k{i}"), format!("v{i}").as_bytes()).await;
    }
    let blob = ok_json(
        h.post("beta", "vault", "u", "/blobs?owner=u", &vec![5u8; 300_000])
            .await,
    );
    let blob = blob.as_str().unwrap().to_string();
    let dir = h.data_dir().join("backups");

    // A full backup while a writer keeps committing.
    let writer = {
        let rt = rt.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                put(&rt, "acme", &format!("live{i}"), b"x").await;
            }
        })
    };
    let full = rt.backup(&dir, None).await.unwrap();
    writer.await.unwrap();
    assert_eq!(full.header.kind, Kind::Full);
    assert!(full.trailer.puts >= 200, "{:?}", full.trailer);

    // Changes, then an incremental: only what changed is written.
    for i in 0..10 {
        put(&rt, "acme", &format!("k{i}"), b"changed").await;
    }
    let del = h
        .call(
            "beta",
            "vault",
            "u",
            Method::Delete,
            &format!("/blobs/{blob}"),
            b"",
        )
        .await
        .unwrap();
    assert_eq!(del.status, 200);
    rt.reclaim_blobs().await.unwrap();
    put(&rt, "beta", "after", b"incremental").await;
    let incr = rt.backup(&dir, None).await.unwrap();
    assert_eq!(incr.header.kind, Kind::Incremental);
    assert_eq!(incr.header.parent.as_deref(), Some(full.header.id.as_str()));
    // Only changes since the full backup's snapshot (the writes that raced
    // it among them), never the untouched keys.
    // (At most 150 raced writes, 11 changes and a few counters: far fewer
    // than the 200 keys left untouched.)
    assert!(incr.trailer.puts < 180, "{:?}", incr.trailer);
    assert!(incr.trailer.deletes >= 5, "{:?}", incr.trailer);
    assert!(
        incr.bytes < full.bytes / 3,
        "{} vs {}",
        incr.bytes,
        full.bytes
    );

    // Verify replays the chain and compares digests.
    let key = backup::backup_key(h.data_dir(), false).unwrap();
    let v = backup::verify(&incr.file, &key).unwrap();
    assert_eq!(v.chain.len(), 2);
    assert_eq!(v.digest, incr.trailer.digest);

    // Restore into a fresh folder and read it all back.
    let target = tempfile::tempdir().unwrap();
    let restored = backup::restore(&incr.file, &key, target.path()).unwrap();
    assert_eq!(restored.live, incr.trailer.live);
    let copy = Runtime::open(RuntimeConfig::new(target.path())).unwrap();
    for i in 0..200 {
        let want = if i < 10 {
            "changed".to_string()
        } else {
            format!("v{i}")
        };
        assert_eq!(
            get(&copy, "acme", &format!("/kv/k{i}")).await.1,
            want.as_bytes()
        );
    }
    for i in 0..150 {
        assert_eq!(get(&copy, "acme", &format!("/kv/live{i}")).await.1, b"x");
    }
    assert_eq!(get(&copy, "beta", "/kv/after").await.1, b"incremental");
    assert_eq!(
        get(&copy, "beta", &format!("/blobs/{blob}/size")).await.0,
        404
    );
    drop(copy);

    // Restoring over existing data is refused.
    let e = backup::restore(&incr.file, &key, target.path()).unwrap_err();
    assert_eq!(e.code(), "restore_target_not_empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_or_foreign_backups_are_refused() {
    let h = harness(&["vault"]).await;
    tenant(&h, "acme", Limits::default(), &["vault"]).await;
    let rt = h.runtime().clone();
    for i in 0..50 {
        put(&rt, "acme", &format!("k{i}"), &vec![i as u8; 1000]).await;
    }
    let dir = h.data_dir().join("backups");
    let full = rt.backup(&dir, Some(Kind::Full)).await.unwrap();
    let key = backup::backup_key(h.data_dir(), false).unwrap();
    backup::verify(&full.file, &key).unwrap();
    let good = std::fs::read(&full.file).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let check = |bytes: Vec<u8>, want: &str| {
        let f = scratch.path().join("x.sbbak");
        std::fs::write(&f, bytes).unwrap();
        let e = backup::verify(&f, &key).unwrap_err();
        assert_eq!(e.code(), want, "{e}");
        let fresh = tempfile::tempdir().unwrap();
        let e = backup::restore(&f, &key, fresh.path()).unwrap_err();
        assert_eq!(e.code(), want, "{e}");
        // A refused restore leaves no master key behind.
        assert!(!fresh.path().join("keys/master.key").exists());
    };
    for pos in [good.len() / 2, good.len() - 3, 200] {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        check(bad, "backup_corrupt");
    }
    check(good[..good.len() - 40].to_vec(), "backup_corrupt");
    check(good[..5].to_vec(), "backup_corrupt");
    let mut extra = good.clone();
    extra.extend(b"junk");
    check(extra, "backup_corrupt");
    // Another server's backup key.
    let other = switchboard::store::crypt::MasterKey::generate().unwrap();
    let e = backup::verify(&full.file, &other).unwrap_err();
    assert_eq!(e.code(), "backup_corrupt");
    assert!(e.to_string().contains("backup key"), "{e}");
    // An incremental whose full backup is missing.
    put(&rt, "acme", "more", b"1").await;
    let incr = rt.backup(&dir, Some(Kind::Incremental)).await.unwrap();
    std::fs::remove_file(&full.file).unwrap();
    let e = backup::verify(&incr.file, &key).unwrap_err();
    assert_eq!(e.code(), "backup_chain_broken", "{e}");
    // And asking for an incremental with no base is refused.
    let empty = h.data_dir().join("elsewhere");
    let e = rt
        .backup(&empty, Some(Kind::Incremental))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "backup_chain_broken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_change_tracking_every_backup_is_full_until_a_full_one_resumes_the_chain() {
    let h = switchboard::harness::Harness::with_config(|c| c.track_changes = false).unwrap();
    h.install(&manifest("vault"), &component("vault"))
        .await
        .unwrap();
    tenant(&h, "acme", Limits::default(), &["vault"]).await;
    let rt = h.runtime().clone();
    put(&rt, "acme", "a", b"1").await;
    let dir = h.data_dir().join("backups");
    assert_eq!(rt.backup(&dir, None).await.unwrap().header.kind, Kind::Full);
    put(&rt, "acme", "b", b"2").await;
    // An incremental would miss the untracked change to `b`.
    let e = rt.backup(&dir, Some(Kind::Incremental)).await.unwrap_err();
    assert_eq!(e.code(), "backup_chain_broken", "{e}");
    assert_eq!(rt.backup(&dir, None).await.unwrap().header.kind, Kind::Full);
    drop(rt);
    // Reopened with tracking: the first backup is still full (changes made
    // while untracked are unknown), then incrementals resume.
    let data = h.into_dir();
    let rt = Runtime::open(RuntimeConfig::new(data.path())).unwrap();
    put(&rt, "acme", "c", b"3").await;
    let dir = data.path().join("backups");
    assert_eq!(rt.backup(&dir, None).await.unwrap().header.kind, Kind::Full);
    put(&rt, "acme", "d", b"4").await;
    let incr = rt.backup(&dir, None).await.unwrap();
    assert_eq!(incr.header.kind, Kind::Incremental);
    let key = backup::backup_key(data.path(), false).unwrap();
    backup::verify(&incr.file, &key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_keeps_the_newest_full_backups_with_their_incrementals() {
    let h = harness(&["vault"]).await;
    tenant(&h, "acme", Limits::default(), &["vault"]).await;
    let rt = h.runtime().clone();
    let dir = h.data_dir().join("backups");
    let mut made = Vec::new();
    for round in 0..3 {
        put(&rt, "acme", &format!("r{round}"), b"x").await;
        made.push(rt.backup(&dir, Some(Kind::Full)).await.unwrap());
        put(&rt, "acme", &format!("i{round}"), b"y").await;
        made.push(rt.backup(&dir, None).await.unwrap());
        // Distinct creation times.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(backup::prune(&dir, 2).unwrap(), 2);
    for (i, b) in made.iter().enumerate() {
        assert_eq!(b.file.exists(), i >= 2, "backup {i}");
    }
    // What is kept still verifies.
    let key = backup::backup_key(h.data_dir(), false).unwrap();
    backup::verify(&made[5].file, &key).unwrap();
    assert_eq!(backup::prune(&dir, 2).unwrap(), 0);
}
