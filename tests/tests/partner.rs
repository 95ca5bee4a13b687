//! SPEC P2 (issue 19): a partner's loop in three commands against a
//! running server — `plugin new`, `plugin dev`, a call over HTTPS — and the
//! scaffold's own harness test. Builds real crates with cargo in the
//! workspace's target folder (the scaffold shares the SDK's lock file and
//! test profile, so most of what it needs is already built there).

use std::path::{Path, PathBuf};

use clap::Parser as _;
use switchboard::harness::Harness;
use switchboard_tests::accounts::person;
use switchboard_tests::http::{Server, request};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

async fn cli(args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["switchboard"];
    all.extend_from_slice(args);
    switchboard::cli::run(switchboard::cli::Cli::try_parse_from(all)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2_plugin_new_then_dev_then_a_call_and_the_scaffolds_own_test() {
    let h = Harness::new().unwrap();
    h.tenant("acme").await.unwrap();
    let s = Server::start(h.runtime().clone()).await;
    h.runtime().set_public_url(&s.url(""));
    switchboard::control::start(h.runtime()).unwrap();
    let data = h.data_dir().to_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_str().unwrap().to_string();
    let sdk = workspace().join("sdk");
    let sdk = sdk.to_str().unwrap();
    let target = workspace().join("target");
    let target = target.to_str().unwrap().to_string();
    let key = work.path().join("dev.key");
    let key = key.to_str().unwrap().to_string();

    // 1. new
    cli(&["plugin", "new", "greeter", "--dir", &dir, "--sdk", sdk])
        .await
        .unwrap();
    let crate_dir = work.path().join("greeter");
    for f in [
        "Cargo.toml",
        "plugin.toml",
        "src/lib.rs",
        "tests/harness.rs",
        "README.md",
    ] {
        assert!(crate_dir.join(f).exists(), "{f}");
    }
    let readme = std::fs::read_to_string(crate_dir.join("README.md")).unwrap();
    assert!(
        readme.contains("switchboard plugin dev --tenant"),
        "names the next command"
    );
    let e = cli(&["plugin", "new", "greeter", "--dir", &dir, "--sdk", sdk])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("never overwrites"), "{e}");
    let e = cli(&["plugin", "new", "Bad_Name", "--dir", &dir])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a plugin name"), "{e}");

    // 2. dev finds the running server: the nearest switchboard-data with a
    // control socket at or above the crate (here a link to the harness's
    // folder, beside the crate as `plugin new` leaves it); with none
    // running it refuses rather than open a folder on the side.
    std::os::unix::fs::symlink(&data, work.path().join("switchboard-data")).unwrap();
    let path = crate_dir.to_str().unwrap().to_string();
    let empty = tempfile::tempdir().unwrap();
    let e = cli(&[
        "plugin",
        "dev",
        "--tenant",
        "acme",
        "--path",
        &path,
        "--key",
        &key,
        "--data",
        empty.path().to_str().unwrap(),
    ])
    .await
    .unwrap_err();
    assert!(e.to_string().contains("no server runs on"), "{e}");
    assert!(
        !empty.path().join("store").exists(),
        "nothing opened on the side"
    );
    // The development key is trusted only when told to.
    let dev = |trust: bool| {
        let mut args = vec![
            "plugin",
            "dev",
            "--tenant",
            "acme",
            "--path",
            &path,
            "--key",
            &key,
            "--target-dir",
            &target,
        ];
        if trust {
            args.push("--trust-dev-key");
        }
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args).await
    };
    let e = run(dev(false)).await.unwrap_err();
    assert!(e.to_string().contains("--trust-dev-key"), "{e}");
    assert!(h.runtime().plugins().iter().all(|p| p.name != "greeter"));
    run(dev(true)).await.unwrap();
    let enabled = |rt: &switchboard::Runtime| {
        rt.tenants()
            .into_iter()
            .find(|t| t.id == "acme")
            .and_then(|t| t.plugins.get("greeter").map(|e| e.version.to_string()))
    };
    assert_eq!(enabled(h.runtime()).as_deref(), Some("0.1.0-dev.1"));

    // 3. a call over HTTPS: the public route, and a signed-in one.
    let r = request(s.addr, "GET", "/api/v1/t/acme/p/greeter/hello", &[], b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello from greeter"));
    let (_, ann) = person(&h, &s, "acme", "ann", "user").await;
    let increment = || {
        s.plugin_call(
            "acme",
            "greeter",
            &ann,
            "POST",
            "/counter/visits/increment",
            None,
        )
    };
    let r = increment().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"], 1);

    // Again: an upgrade in place to the next dev build; data kept.
    edit(
        &crate_dir.join("src/lib.rs"),
        "hello from greeter",
        "hello again from greeter",
    );
    run(dev(false)).await.unwrap();
    assert_eq!(enabled(h.runtime()).as_deref(), Some("0.1.0-dev.2"));
    let r = request(s.addr, "GET", "/api/v1/t/acme/p/greeter/hello", &[], b"").await;
    assert_eq!(r.text(), "hello again from greeter");
    let r = increment().await;
    assert_eq!(r.json()["value"], 2);

    // A released version ran: a dev build of it would roll back, and is
    // refused with the way out.
    h.runtime()
        .trust_add(&h.signing_key().verifying_key(), "harness")
        .await
        .unwrap();
    let manifest = std::fs::read(crate_dir.join("plugin.toml")).unwrap();
    let wasm = target_wasm(&target, "greeter");
    let released = h.package(&manifest, &std::fs::read(wasm).unwrap()).unwrap();
    h.runtime().install_package(&released).await.unwrap();
    h.enable("acme", "greeter").await.unwrap();
    assert_eq!(enabled(h.runtime()).as_deref(), Some("0.1.0"));
    let e = run(dev(false)).await.unwrap_err();
    assert!(
        e.to_string().contains("rollback_refused") && e.to_string().contains("raise"),
        "{e}"
    );
    assert_eq!(enabled(h.runtime()).as_deref(), Some("0.1.0"));

    // The scaffold's own harness test passes (on the scaffold as made).
    edit(
        &crate_dir.join("src/lib.rs"),
        "hello again from greeter",
        "hello from greeter",
    );
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["test", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "the scaffold's harness test failed");
}

/// Replaces `from` with `to` in the file at `path`.
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, text.replace(from, to)).unwrap();
}

fn target_wasm(target: &str, name: &str) -> PathBuf {
    Path::new(target)
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{name}.wasm"))
}
