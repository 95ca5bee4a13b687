//! Issue 3 item 7: the first-party bundle is signed by a key of its build,
//! installed through normal verification, and distrusted like any other.

use switchboard::runtime::{Runtime, RuntimeConfig};
use switchboard_signing::KeyId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_installs_only_while_its_key_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig::new(dir.path());
    config.max_concurrent_calls = 8;
    let rt = Runtime::open(config).unwrap();

    // Operator opted out of trusting the bundle: nothing installs.
    for (_, result) in switchboard::bundle::install(&rt, false).await {
        assert_eq!(result.unwrap_err().code(), "publisher_unknown");
    }
    assert!(rt.plugins().is_empty());

    for (name, result) in switchboard::bundle::install(&rt, true).await {
        assert_eq!(result.unwrap().name, name);
    }
    assert_eq!(rt.plugins().len(), switchboard::bundle::PACKAGES.len());

    // Distrusting the bundle key disables the bundled packages and keeps
    // them out on the next start.
    let id = KeyId::of(&switchboard::bundle::key().unwrap());
    let disabled = rt.trust_revoke(&id).await.unwrap();
    assert_eq!(disabled.len(), switchboard::bundle::PACKAGES.len());
    for (_, result) in switchboard::bundle::install(&rt, true).await {
        assert_eq!(result.unwrap_err().code(), "publisher_revoked");
    }
    assert!(rt.plugins().iter().all(|p| p.revoked));
}
