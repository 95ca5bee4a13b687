//! SPEC K1-K3, K8 and the compile cache: what install and enable refuse,
//! with which code, and that nothing refused is stored; cached components
//! load only when their MAC verifies; state survives a restart.

use std::collections::BTreeSet;

use switchboard::harness::Harness;
use switchboard::runtime::{CacheOutcome, Runtime, RuntimeConfig};
use switchboard::tenant::Limits;
use switchboard_signing::Capability;
use switchboard_tests::*;

async fn install_err(h: &Harness, manifest: &[u8], component: &[u8]) -> (String, String) {
    let e = h.install(manifest, component).await.unwrap_err();
    (e.code().to_string(), e.to_string())
}

#[tokio::test]
async fn malformed_components_are_refused_and_nothing_is_stored() {
    let h = Harness::new().unwrap();
    let m = manifest("example");
    let real = component("example");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "random bytes",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("empty", Vec::new()),
        ("core module", b"\0asm\x01\0\0\0".to_vec()),
        ("truncated component", real[..real.len() / 2].to_vec()),
    ];
    for (what, bytes) in cases {
        let (code, msg) = install_err(&h, &m, &bytes).await;
        assert_eq!(code, "malformed_component", "{what}: {msg}");
    }
    // The bare 8-byte header is a valid, empty component: it is refused
    // for what it lacks.
    let (code, msg) = install_err(&h, &m, &real[..8]).await;
    assert_eq!(code, "wrong_world", "{msg}");
    assert!(msg.contains("no export"), "{msg}");
    assert!(h.runtime().plugins().is_empty());
    assert_eq!(
        std::fs::read_dir(h.data_dir().join("cache"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn k2_every_capability_of_the_api_is_available_once_declared() {
    // Every `switchboard:host` interface is implemented now, so a declared
    // import always links (the `capability_unavailable` refusal remains for
    // hosts that lag behind the WIT).
    assert_eq!(
        switchboard::capability::IMPLEMENTED.len(),
        switchboard_signing::Capability::ALL.len()
    );
    let h = Harness::new().unwrap();
    h.install(&manifest("greedy"), &component("greedy"))
        .await
        .unwrap();
    assert_eq!(h.runtime().plugins().len(), 1);
}

#[tokio::test]
async fn k3_an_import_the_manifest_does_not_declare_is_refused() {
    let h = Harness::new().unwrap();
    let m = String::from_utf8(manifest("greedy"))
        .unwrap()
        .replace(r#"["kv", "events"]"#, r#"["kv"]"#);
    let (code, msg) = install_err(&h, m.as_bytes(), &component("greedy")).await;
    assert_eq!(code, "import_not_declared", "{msg}");
    assert!(msg.contains("switchboard:host/events@0.1.0"), "{msg}");
}

#[tokio::test]
async fn k8_a_component_built_for_another_api_version_is_refused() {
    let h = Harness::new().unwrap();
    let (code, msg) = install_err(&h, &manifest("old-api"), &component("old-api")).await;
    assert_eq!(code, "unsupported_api_version", "{msg}");
    assert!(msg.contains("switchboard:host/log@0.0.9"), "{msg}");
    let (code, msg) = install_err(&h, &manifest("wrong-world"), &component("wrong-world")).await;
    assert_eq!(code, "wrong_world", "{msg}");
    let future = String::from_utf8(manifest("example"))
        .unwrap()
        .replace("api-version = \"0.3.0\"", "api-version = \"0.9.0\"");
    let (code, msg) = install_err(&h, future.as_bytes(), &component("example")).await;
    assert_eq!(code, "unsupported_api_version", "{msg}");
    assert!(h.runtime().plugins().is_empty());
}

#[tokio::test]
async fn bad_manifests_sizes_and_duplicates_are_refused() {
    let h = Harness::with_config(|c| c.max_component_bytes = 64 * 1024).unwrap();
    let (code, _) = install_err(&h, b"name = \"x\"\nsurprise = true", &component("ledger")).await;
    assert_eq!(code, "manifest_malformed");
    let (code, msg) = install_err(&h, &manifest("example"), &component("example")).await;
    assert_eq!(code, "component_too_large", "{msg}");

    let h = Harness::new().unwrap();
    let first = h
        .install(&manifest("ledger"), &component("ledger"))
        .await
        .unwrap();
    // The same package again is deduplicated by digest.
    let again = h
        .install(&manifest("ledger"), &component("ledger"))
        .await
        .unwrap();
    assert_eq!(first.digest, again.digest);
    // Another component under the same name and version is refused.
    let (code, _) = install_err(&h, &manifest("ledger"), &component("noop")).await;
    assert_eq!(code, "already_installed");
    assert_eq!(h.runtime().plugins().len(), 1);
}

#[tokio::test]
async fn k3_enable_links_only_granted_capabilities() {
    let h = harness(&["ledger", "example"]).await;
    h.tenant("acme").await.unwrap();
    let v = semver::Version::new(0, 1, 0);
    let partial: BTreeSet<Capability> = [Capability::Log, Capability::Config].into();
    let e = h
        .runtime()
        .enable_plugin("acme", "example", &v, Some(partial), Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "capability_not_granted", "{e}");
    assert!(e.to_string().contains("switchboard:host/kv@0.1.0"), "{e}");
    let too_much: BTreeSet<Capability> = [Capability::Kv, Capability::Blobs].into();
    let e = h
        .runtime()
        .enable_plugin("acme", "ledger", &v, Some(too_much), Default::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "grant_not_requested", "{e}");
    assert!(h.runtime().tenants()[0].plugins.is_empty());
    let e = h
        .runtime()
        .enable_plugin(
            "acme",
            "ledger",
            &semver::Version::new(9, 9, 9),
            None,
            Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "plugin_not_found");
}

#[tokio::test]
async fn tenant_admin_input_is_validated() {
    let h = Harness::new().unwrap();
    for bad in ["", "UPPER", "a/b", "../x", &"x".repeat(64)] {
        let e = h.runtime().create_tenant(bad, None).await.unwrap_err();
        assert_eq!(e.code(), "invalid_tenant_id", "{bad:?}");
    }
    h.tenant("acme").await.unwrap();
    let e = h.runtime().create_tenant("acme", None).await.unwrap_err();
    assert_eq!(e.code(), "tenant_exists");
    let l = Limits {
        memory_bytes: 1 << 40,
        ..Limits::default()
    };
    let e = h
        .runtime()
        .create_tenant("huge", Some(l))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "invalid_limits");
    assert_eq!(h.runtime().tenants().len(), 1);
}

fn open(dir: &std::path::Path) -> Runtime {
    let mut c = RuntimeConfig::new(dir);
    c.max_concurrent_calls = 16;
    // sled releases its lock asynchronously after the last handle drops;
    // retry briefly (bounded) rather than fail a restart test on timing.
    for _ in 0..50 {
        match Runtime::open(c.clone()) {
            Ok(rt) => return rt,
            Err(e) if e.to_string().contains("in use") => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => panic!("{e:#}"),
        }
    }
    panic!("the data folder stayed locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_compile_once_and_a_tampered_cache_is_recompiled_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let digest;
    {
        let rt = open(dir.path());
        let key = switchboard_signing::keys::generate().unwrap();
        rt.trust_add(&key.verifying_key(), "test").await.unwrap();
        let package =
            switchboard::harness::sign(&key, &manifest("ledger"), &component("ledger")).unwrap();
        let info = rt.install_package(&package).await.unwrap();
        assert_eq!(info.cache, CacheOutcome::Compiled);
        digest = info.digest;
        rt.create_tenant("acme", None).await.unwrap();
        rt.enable_plugin("acme", "ledger", &info.version, None, Default::default())
            .await
            .unwrap();
        let req = switchboard::runtime::Request::new(
            switchboard::runtime::Method::Post,
            "/record",
            switchboard::runtime::Principal::user("acme", "a"),
        );
        rt.handle("acme", "ledger", req).await.unwrap();
    }
    {
        let rt = open(dir.path());
        assert_eq!(rt.plugins()[0].cache, CacheOutcome::Hit);
        let file = rt.cache_file(&digest);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 100;
        bytes[last] ^= 0x01;
        std::fs::write(&file, bytes).unwrap();
    }
    let rt = open(dir.path());
    assert_eq!(rt.plugins()[0].cache, CacheOutcome::Rejected);
    // Tenants, grants and data survived both restarts.
    let req = switchboard::runtime::Request::new(
        switchboard::runtime::Method::Get,
        "/count",
        switchboard::runtime::Principal::user("acme", "a"),
    );
    let count = rt.handle("acme", "ledger", req).await.unwrap();
    assert_eq!(count.text(), "1");
}

#[tokio::test]
async fn k3_a_plugin_that_asks_for_nothing_runs_with_nothing_granted() {
    let h = harness(&["noop"]).await;
    h.tenant("acme").await.unwrap();
    h.runtime()
        .enable_plugin(
            "acme",
            "noop",
            &semver::Version::new(0, 1, 0),
            Some(BTreeSet::new()),
            Default::default(),
        )
        .await
        .unwrap();
    let r = h.get("acme", "noop", "u", "/anything").await.unwrap();
    assert_eq!(r.status, 204);
}
