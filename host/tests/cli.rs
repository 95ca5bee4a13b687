//! The `switchboard` binary as an operator uses it: offline tenant and
//! plugin administration, one-off calls, and `serve` answering health.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    c.env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str], data: &Path) -> Output {
    bin()
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run switchboard")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The ledger fixture, built from source (a no-op when the test build
/// already did it).
fn ledger_wasm(name: &str) -> PathBuf {
    let target = root().join("target").join("plugins");
    switchboard::harness::Harness::build_plugin_into(
        &root().join("plugins").join("fixtures").join(name),
        Some(&target),
    )
    .expect("build fixture")
}

/// Kills the server when the test ends, even if an assertion failed first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn k1_s4_keys_packages_trust_and_offline_admin() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let o = run(&["tenant", "create", "acme"], d);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = run(&["tenant", "create", "ACME/../x"], d);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("invalid_tenant_id"), "{:?}", text(&o));
    let o = run(&["tenant", "create", "beta", "--region", "mars"], d);
    assert!(text(&o).1.contains("invalid_region"), "{:?}", text(&o));
    let o = run(&["tenant", "create", "gone"], d);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = run(&["tenant", "delete", "gone"], d);
    assert!(text(&o).1.contains("--yes"), "{:?}", text(&o));
    let o = run(
        &[
            "tenant",
            "retention",
            "gone",
            "--class",
            "recording",
            "--days",
            "90",
        ],
        d,
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("\"recording\": 90"), "{:?}", text(&o));
    let o = run(
        &[
            "tenant",
            "dialing",
            "gone",
            "--set",
            r#"{"region": "GB", "outside_line": "9"}"#,
        ],
        d,
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("\"GB\""), "{:?}", text(&o));
    let o = run(
        &[
            "tenant",
            "dialing",
            "gone",
            "--set",
            r#"{"region": "GB", "oops": 1}"#,
        ],
        d,
    );
    assert!(!o.status.success());
    assert!(text(&o).1.contains("oops"), "{:?}", text(&o));
    let o = run(
        &[
            "tenant",
            "dialing",
            "gone",
            "--set",
            r#"{"classes": ["lunar"]}"#,
        ],
        d,
    );
    assert!(text(&o).1.contains("invalid_dialing"), "{:?}", text(&o));
    // Trunks: the password comes on standard input, never back out.
    let itsp = r#"{"name": "itsp", "addresses": ["203.0.113.0/28"], "proxy": "203.0.113.5:5060", "username": "acct-1"}"#;
    let mut child = bin()
        .args([
            "tenant",
            "trunk",
            "set",
            "gone",
            itsp,
            "--password-stdin",
            "--data",
        ])
        .arg(d)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run switchboard");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"pr0vider-secret\n").unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(
        text(&o).0.contains("\"has_password\": true"),
        "{:?}",
        text(&o)
    );
    let o = run(&["tenant", "trunk", "list", "gone"], d);
    assert!(text(&o).0.contains("acct-1"), "{:?}", text(&o));
    assert!(!text(&o).0.contains("pr0vider-secret"), "{:?}", text(&o));
    let o = run(
        &[
            "tenant",
            "trunk",
            "set",
            "gone",
            r#"{"name": "x", "addresses": ["0.0.0.0"]}"#,
        ],
        d,
    );
    assert!(text(&o).1.contains("invalid_trunk"), "{:?}", text(&o));
    let o = run(&["tenant", "trunk", "remove", "gone", "itsp"], d);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = run(&["tenant", "trunk", "remove", "gone", "itsp"], d);
    assert!(text(&o).1.contains("not_found"), "{:?}", text(&o));
    let o = run(&["tenant", "hold", "gone"], d);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = run(&["tenant", "delete", "gone", "--yes"], d);
    assert!(text(&o).1.contains("legal_hold"), "{:?}", text(&o));
    let o = run(&["tenant", "hold", "gone", "--release"], d);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = run(&["tenant", "delete", "gone", "--yes"], d);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = run(&["tenant", "usage", "gone"], d);
    assert!(text(&o).1.contains("tenant_not_found"), "{:?}", text(&o));

    let manifest = root().join("plugins/fixtures/ledger/plugin.toml");
    let wasm = ledger_wasm("ledger");
    let key = d.join("partner.key");
    let public = d.join("partner.key.pub");
    let pkg = d.join("ledger.swpkg");
    let o = bin()
        .args(["plugin", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let o = bin()
        .args(["plugin", "sign", "--key"])
        .arg(&key)
        .arg("--manifest")
        .arg(&manifest)
        .arg("--component")
        .arg(&wasm)
        .arg("--out")
        .arg(&pkg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let o = bin()
        .args(["plugin", "verify"])
        .arg(&pkg)
        .arg("--trust")
        .arg(&public)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.starts_with("ok: ledger 0.1.0 signed by"));
    let o = bin()
        .args(["plugin", "inspect"])
        .arg(&pkg)
        .output()
        .unwrap();
    let inspected: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(inspected["manifest"]["name"], "ledger");
    let key_id = inspected["signers"][0].as_str().unwrap().to_string();

    // Not trusted yet: refused, nothing installed.
    let o = bin()
        .args(["plugin", "install"])
        .arg(&pkg)
        .arg("--data")
        .arg(d)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).1.contains("publisher_unknown"), "{:?}", text(&o));
    let o = bin()
        .args(["trust", "add"])
        .arg(&public)
        .args(["--label", "partner", "--data"])
        .arg(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let o = bin()
        .args(["plugin", "install"])
        .arg(&pkg)
        .arg("--data")
        .arg(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("installed ledger 0.1.0"));

    // A bit-flipped package fails verification; junk is malformed.
    let mut bytes = std::fs::read(&pkg).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    let bad = d.join("bad.swpkg");
    std::fs::write(&bad, &bytes).unwrap();
    let o = bin()
        .args(["plugin", "verify"])
        .arg(&bad)
        .arg("--trust")
        .arg(&public)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).1.contains("signature_invalid"), "{:?}", text(&o));
    let junk = d.join("junk.swpkg");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0garbage").unwrap();
    let o = bin()
        .args(["plugin", "install"])
        .arg(&junk)
        .arg("--data")
        .arg(d)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).1.contains("package_malformed"), "{:?}", text(&o));

    let o = run(
        &[
            "plugin",
            "enable",
            "--tenant",
            "acme",
            "--name",
            "ledger",
            "--version",
            "0.1.0",
        ],
        d,
    );
    assert!(o.status.success(), "{:?}", text(&o));
    let o = run(
        &[
            "call", "--tenant", "acme", "--plugin", "ledger", "POST", "/record",
        ],
        d,
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(text(&o).0, "200\n1\n");
    let o = run(
        &[
            "call", "--tenant", "acme", "--plugin", "ledger", "GET", "/count",
        ],
        d,
    );
    assert_eq!(text(&o).0, "200\n1\n", "state persists across processes");
    let o = run(
        &[
            "call", "--tenant", "acme", "--plugin", "nope", "GET", "/count",
        ],
        d,
    );
    assert!(text(&o).1.contains("plugin_not_enabled"), "{:?}", text(&o));
    let o = run(
        &[
            "call", "--tenant", "acme", "--plugin", "ledger", "FETCH", "/count",
        ],
        d,
    );
    assert!(
        text(&o).1.contains("unsupported HTTP method"),
        "{:?}",
        text(&o)
    );
    let o = run(&["plugin", "list"], d);
    assert!(
        text(&o).0.starts_with("ledger 0.1.0 sha256:"),
        "{:?}",
        text(&o)
    );

    // Revoking the publisher stops its package at once, across restarts.
    let o = run(&["trust", "revoke", &key_id], d);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("ledger 0.1.0"), "{:?}", text(&o));
    let o = run(
        &[
            "call", "--tenant", "acme", "--plugin", "ledger", "GET", "/count",
        ],
        d,
    );
    assert!(text(&o).1.contains("publisher_revoked"), "{:?}", text(&o));
    let o = bin()
        .args(["trust", "add"])
        .arg(&public)
        .arg("--data")
        .arg(d)
        .output()
        .unwrap();
    assert!(text(&o).1.contains("key_revoked"), "{:?}", text(&o));
}

#[test]
fn k1_serve_starts_on_an_empty_folder_and_answers_health() {
    let data = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        bin()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--sip-listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data.path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("switchboard: serving on https://") {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(addr);
            }
            if let Some((_, fp)) = line.split_once(" SHA-256 ") {
                let _ = tx.send(fp.trim().to_string());
            }
        }
    });
    let mut banner = Vec::new();
    while banner.len() < 2 {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => banner.push(line),
            Err(_) => {
                child.0.kill().ok();
                let mut err = String::new();
                child.0.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("serve did not start: {err}");
            }
        }
    }
    // HTTPS only, with the self-signed certificate whose fingerprint the
    // banner printed.
    let (addr, fingerprint) = (&banner[0], &banner[1]);
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tls = rustls::ClientConnection::new(
        std::sync::Arc::new(switchboard::gateway::tls::pinned_client(fingerprint).unwrap()),
        "localhost".try_into().unwrap(),
    )
    .unwrap();
    let mut s = rustls::StreamOwned::new(tls, tcp);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let resp = String::from_utf8_lossy(&raw);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""status":"ok""#), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{resp}"
    );

    // Online verbs reach the running server through its control socket.
    let o = run(&["backup", "create", "--kind", "full"], data.path());
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("Full backup"), "{:?}", text(&o));
    let o = run(&["backup", "create"], data.path());
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("Incremental backup"), "{:?}", text(&o));
    let o = run(&["backup", "create", "--kind", "weekly"], data.path());
    assert!(!o.status.success());
    assert!(text(&o).1.contains("full or incremental"), "{:?}", text(&o));
    let o = run(&["keys", "rotate-master"], data.path());
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("new key id"), "{:?}", text(&o));

    // A second server on the same folder is refused with a clear message.
    let o = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sip-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use"),
        "{:?}",
        text(&o)
    );
    child.0.kill().ok();
    let _ = child.0.wait();
    // The first-party bundle was verified and installed on first run.
    let mut logs = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .ok();
    assert!(logs.contains("bundled plugin available"), "{logs}");
    drop(child);

    // Verify and restore the newest backup chain offline.
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.path().join("backups"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sbbak"))
        .collect();
    files.sort();
    let newest = files.last().unwrap().clone();
    let o = bin()
        .args(["backup", "verify"])
        .arg(&newest)
        .arg("--data")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("restored");
    let restore = |target: &Path| {
        bin()
            .args(["backup", "restore"])
            .arg(&newest)
            .arg("--backup-key")
            .arg(data.path().join("keys/backup.key"))
            .arg("--data")
            .arg(target)
            .output()
            .unwrap()
    };
    let o = restore(&target);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("verified"), "{:?}", text(&o));
    let o = restore(&target);
    assert!(
        text(&o).1.contains("restore_target_not_empty"),
        "{:?}",
        text(&o)
    );
    // The restored folder opens with the rotated master key it was given.
    let o = run(&["plugin", "list"], &target);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("example"), "{:?}", text(&o));

    // The first run created the host keys with owner-only permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.path().join("keys/cache.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn s4_a_passphrase_sealed_key_signs_only_with_its_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sealed.key");
    let o = bin()
        .args([
            "plugin",
            "keygen",
            "--passphrase-env",
            "SB_TEST_PASS",
            "--out",
        ])
        .arg(&key)
        .env("SB_TEST_PASS", "a long passphrase")
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let component = dir.path().join("c.wasm");
    std::fs::write(&component, b"\0asm\x0d\0\x01\0").unwrap();
    let sign = |pass: Option<&str>| {
        let mut c = bin();
        c.args(["plugin", "sign", "--key"])
            .arg(&key)
            .arg("--manifest")
            .arg(root().join("plugins/fixtures/noop/plugin.toml"))
            .arg("--component")
            .arg(&component)
            .arg("--out")
            .arg(dir.path().join("p.swpkg"));
        if let Some(p) = pass {
            c.args(["--passphrase-env", "SB_TEST_PASS"])
                .env("SB_TEST_PASS", p);
        }
        c.output().unwrap()
    };
    assert!(text(&sign(None)).1.contains("key_passphrase_required"));
    assert!(
        text(&sign(Some("the wrong one")))
            .1
            .contains("key_bad_passphrase")
    );
    let o = sign(Some("a long passphrase"));
    assert!(o.status.success(), "{:?}", text(&o));
    let o = bin()
        .args(["plugin", "verify"])
        .arg(dir.path().join("p.swpkg"))
        .arg("--trust")
        .arg(dir.path().join("sealed.key.pub"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
}
