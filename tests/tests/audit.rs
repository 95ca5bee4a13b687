//! The audit trail (SPEC I9): entries say who, what, when, from where and
//! with which outcome; the chain and the signed checkpoints expose any
//! edited, removed, reordered or truncated entry — including edits made by
//! someone holding the master key, who can re-seal values but cannot sign
//! checkpoints. Plugins append through the `audit` capability.

use std::path::{Path, PathBuf};

use clap::Parser as _;
use serde_json::json;
use switchboard::audit::{Entry, ProblemKind, Scope};
use switchboard::cli::Cli;
use switchboard::harness::Harness;
use switchboard::store::Store;
use switchboard::{Runtime, RuntimeConfig};
use switchboard_tests::tamper::{copy_dir, raw_store};
use switchboard_tests::{component, manifest};

/// A harness with tenant `acme` running the directory fixture, and `n`
/// audit entries appended through it.
async fn trail(n: usize) -> Harness {
    let h = Harness::new().unwrap();
    h.install(&manifest("directory"), &component("directory"))
        .await
        .unwrap();
    h.tenant("acme").await.unwrap();
    h.enable("acme", "directory").await.unwrap();
    for i in 0..n {
        let r = h
            .post(
                "acme",
                "directory",
                "u7",
                &format!("/audit?action=doc.read&target=doc-{i}"),
                b"",
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    h
}

fn entries(h: &Harness, scope: &Scope) -> Vec<Entry> {
    h.runtime().audit_log().entries(scope, 0, 10_000).unwrap()
}

#[tokio::test]
async fn i9_plugin_entries_are_attributed_and_written_only_when_the_call_commits() {
    let h = trail(2).await;
    let all = entries(&h, &Scope::tenant("acme"));
    let mine: Vec<&Entry> = all.iter().filter(|e| e.action == "doc.read").collect();
    assert_eq!(mine.len(), 2);
    let e = mine[0];
    assert_eq!(e.actor.id.as_deref(), Some("directory"));
    assert_eq!(e.actor.on_behalf_of.as_deref(), Some("u7"));
    assert_eq!(e.target, "doc-0");
    assert_eq!(e.outcome, "success");
    assert!(e.time_ms > 1_700_000_000_000);
    // A trapped call leaves no entry; malformed entries are refused.
    let before = entries(&h, &Scope::tenant("acme")).len();
    assert!(
        h.post(
            "acme",
            "directory",
            "u7",
            "/audit?action=doc.read&trap=1",
            b""
        )
        .await
        .is_err()
    );
    for bad in ["/audit?action=Bad%20Action", "/audit?action="] {
        let r = h.post("acme", "directory", "u7", bad, b"").await.unwrap();
        assert_ne!(r.status, 200, "{bad}");
    }
    let r = h
        .post(
            "acme",
            "directory",
            "u7",
            "/audit?action=x",
            &vec![b'd'; 5000],
        )
        .await
        .unwrap();
    assert_ne!(r.status, 200, "details over 4 KiB");
    assert_eq!(entries(&h, &Scope::tenant("acme")).len(), before);
    // Another tenant's trail does not see them.
    h.tenant("beta").await.unwrap();
    assert!(
        entries(&h, &Scope::tenant("beta"))
            .iter()
            .all(|e| e.action != "doc.read")
    );
    assert!(
        h.runtime()
            .audit_log()
            .verify(&Scope::tenant("acme"))
            .unwrap()
            .is_intact()
    );
}

fn key(seq: u64) -> Vec<u8> {
    format!("t/acme/au/e/{seq:016x}").into_bytes()
}

fn read(store: &Store, seq: u64) -> Entry {
    serde_json::from_slice(&store.get(&key(seq)).unwrap().unwrap()).unwrap()
}

fn put(store: &Store, seq: u64, e: &Entry) {
    store
        .apply(&[(key(seq), Some(serde_json::to_vec(e).unwrap()))])
        .unwrap();
    store.flush().unwrap();
}

async fn verify_copy(original: &Path, tamper: impl FnOnce(&Store)) -> switchboard::audit::Report {
    let scratch = tempfile::tempdir().unwrap();
    let copy: PathBuf = scratch.path().join("data");
    copy_dir(original, &copy);
    {
        let store = raw_store(&copy, "acme");
        tamper(&store);
    }
    let rt = Runtime::open(RuntimeConfig::new(&copy)).unwrap();
    rt.audit_log().verify(&Scope::tenant("acme")).unwrap()
}

#[tokio::test]
async fn i9_verify_names_edited_removed_reordered_and_truncated_entries() {
    let h = trail(8).await;
    let log = h.runtime().audit_log();
    log.checkpoint_all().unwrap();
    let last = entries(&h, &Scope::tenant("acme")).last().unwrap().seq;
    assert!(log.verify(&Scope::tenant("acme")).unwrap().is_intact());
    h.runtime().flush().unwrap();
    let data = h.data_dir().to_path_buf();
    let _keep = h.into_dir();

    // An untouched copy verifies.
    assert!(verify_copy(&data, |_| {}).await.is_intact());

    // Edited content.
    let r = verify_copy(&data, |s| {
        let mut e = read(s, 5);
        e.outcome = "failure".into();
        put(s, 5, &e);
    })
    .await;
    assert_eq!(
        (r.problems[0].seq, r.problems[0].kind),
        (5, ProblemKind::Edited),
        "{r:?}"
    );

    // Edited with its hash recomputed: the next link breaks.
    let r = verify_copy(&data, |s| {
        let mut e = read(s, 4);
        e.target = "someone-else".into();
        e.hash = e.compute_hash();
        put(s, 4, &e);
    })
    .await;
    assert_eq!(r.problems[0].seq, 5, "{r:?}");

    // Removed.
    let r = verify_copy(&data, |s| {
        s.apply(&[(key(3), None)]).unwrap();
        s.flush().unwrap();
    })
    .await;
    assert_eq!(
        (r.problems[0].seq, r.problems[0].kind),
        (3, ProblemKind::Removed),
        "{r:?}"
    );

    // Reordered: two entries swapped.
    let r = verify_copy(&data, |s| {
        let (a, b) = (read(s, 2), read(s, 3));
        put(s, 2, &b);
        put(s, 3, &a);
    })
    .await;
    assert!(
        r.problems.iter().any(|p| p.kind == ProblemKind::Reordered),
        "{r:?}"
    );

    // Truncated, with the head rewritten to match: the signed checkpoint
    // still names the lost entries.
    let r = verify_copy(&data, |s| {
        let new_last = read(s, last - 2);
        s.apply(&[(key(last), None), (key(last - 1), None)])
            .unwrap();
        let head = json!({"seq": new_last.seq, "hash": new_last.hash, "signed": new_last.seq});
        s.apply(&[(
            b"t/acme/au/head".to_vec(),
            Some(head.to_string().into_bytes()),
        )])
        .unwrap();
        s.flush().unwrap();
    })
    .await;
    assert!(
        r.problems.iter().any(|p| p.kind == ProblemKind::Truncated),
        "{r:?}"
    );

    // Entries, checkpoints and head deleted together: the anchor kept
    // beside the audit key still names the last signed entry.
    let r = verify_copy(&data, |s| {
        let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            (6..=last).map(|q| (key(q), None)).collect();
        for (k, _) in s.scan(b"t/acme/au/cp/", None, 1000).unwrap() {
            writes.push((k, None));
        }
        writes.push((b"t/acme/au/head".to_vec(), None));
        s.apply(&writes).unwrap();
        s.flush().unwrap();
    })
    .await;
    assert!(
        r.problems
            .iter()
            .filter(|p| p.kind == ProblemKind::Truncated)
            .count()
            >= 2,
        "{r:?}"
    );

    // A signed checkpoint replayed as the "pruned" base, with an edit
    // before it: the entries before the base are still checked, and the
    // system trail never recorded such a pruning.
    let r = verify_copy(&data, |s| {
        let (_, cp) = s.scan(b"t/acme/au/cp/", None, 1).unwrap().remove(0);
        s.apply(&[(b"t/acme/au/base".to_vec(), Some(cp))]).unwrap();
        let mut e = read(s, 2);
        e.outcome = "denied".into();
        put(s, 2, &e);
    })
    .await;
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::Edited && p.seq == 2),
        "{r:?}"
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.message.contains("records no pruning")),
        "{r:?}"
    );

    // A forged checkpoint (signed by another key) is refused.
    let r = verify_copy(&data, |s| {
        let prefix = b"t/acme/au/cp/".to_vec();
        let (k, v) = s.scan(&prefix, None, 1).unwrap().remove(0);
        let mut cp: serde_json::Value = serde_json::from_slice(&v).unwrap();
        cp["signature"] = json!("00".repeat(64));
        s.apply(&[(k, Some(cp.to_string().into_bytes()))]).unwrap();
        s.flush().unwrap();
    })
    .await;
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::BadCheckpoint),
        "{r:?}"
    );
}

async fn cli(args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["switchboard"];
    argv.extend_from_slice(args);
    switchboard::cli::run(Cli::try_parse_from(argv)?).await
}

#[tokio::test]
async fn i9_cli_verifies_exports_and_checks_exports_offline() {
    let h = trail(5).await;
    h.runtime().audit_log().checkpoint_all().unwrap();
    h.runtime().flush().unwrap();
    let data = h.data_dir().to_path_buf();
    let _keep = h.into_dir();
    let d = data.to_str().unwrap();
    cli(&["audit", "verify", "--data", d, "--tenant", "acme"])
        .await
        .unwrap();
    cli(&["audit", "verify", "--data", d, "--all"])
        .await
        .unwrap();
    let out = data.parent().unwrap().join("acme-audit.jsonl");
    cli(&[
        "audit",
        "export",
        "--data",
        d,
        "--tenant",
        "acme",
        "--out",
        out.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.lines().next().unwrap().contains("audit_export"));
    assert!(text.contains("\"action\":\"doc.read\"") && text.contains("\"checkpoint\""));
    cli(&["audit", "verify", "--file", out.to_str().unwrap()])
        .await
        .unwrap();

    // The export, edited: one changed character is found.
    let edited = text.replacen("doc-2", "doc-9", 1);
    let bad = data.parent().unwrap().join("edited.jsonl");
    std::fs::write(&bad, edited).unwrap();
    let err = cli(&["audit", "verify", "--file", bad.to_str().unwrap()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("audit_tampered"), "{err}");
    // Pinned to another key, the genuine export's checkpoints do not hold.
    let other = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .as_bytes(),
    );
    let err = cli(&[
        "audit",
        "verify",
        "--file",
        out.to_str().unwrap(),
        "--public-key",
        &other,
    ])
    .await
    .unwrap_err();
    assert!(err.to_string().contains("audit_tampered"), "{err}");
    // Hostile input: not an export at all.
    std::fs::write(&bad, "{not json").unwrap();
    assert!(
        cli(&["audit", "verify", "--file", bad.to_str().unwrap()])
            .await
            .is_err()
    );
    // An unknown tenant is a clear error.
    let err = cli(&["audit", "verify", "--data", d, "--tenant", "nope"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tenant_not_found"), "{err}");
}

#[tokio::test]
async fn i9_pruning_keeps_a_verifiable_trail_from_a_signed_base() {
    let h = trail(6).await;
    let log = h.runtime().audit_log();
    let scope = Scope::tenant("acme");
    log.checkpoint_all().unwrap();
    let signed = entries(&h, &scope).last().unwrap().seq;
    // Newer entries after the checkpoint stay.
    h.post("acme", "directory", "u7", "/audit?action=doc.write", b"")
        .await
        .unwrap();
    let removed = log.prune(&scope, u64::MAX).unwrap();
    assert_eq!(removed, signed);
    let left = entries(&h, &scope);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].action, "doc.write");
    let report = log.verify(&scope).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.first_seq, Some(signed + 1));
    // Nothing older than the cutoff: nothing pruned.
    assert_eq!(log.prune(&scope, 0).unwrap(), 0);
}

#[tokio::test]
async fn i9_admin_actions_land_in_the_system_and_tenant_trails() {
    let h = trail(0).await;
    h.runtime().delete_tenant("acme").await.unwrap();
    let sys = entries(&h, &Scope::System);
    let actions: Vec<&str> = sys.iter().map(|e| e.action.as_str()).collect();
    for a in ["plugin.install", "tenant.create", "tenant.delete"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    assert!(
        h.runtime()
            .audit_log()
            .verify(&Scope::System)
            .unwrap()
            .is_intact()
    );
    // The deleted tenant's trail went with its key; a new tenant of the
    // same id starts a fresh, intact trail.
    h.tenant("acme").await.unwrap();
    let fresh = entries(&h, &Scope::tenant("acme"));
    assert_eq!(fresh[0].seq, 1);
    assert_eq!(fresh[0].action, "tenant.create");
    assert!(
        h.runtime()
            .audit_log()
            .verify(&Scope::tenant("acme"))
            .unwrap()
            .is_intact()
    );
}
