//! Durability (issue 4 item 8): a write acknowledged to a caller survives
//! SIGKILL at any moment. A writer process is killed at random points over
//! many cycles; after each restart the store must open and hold every
//! acknowledged write.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::runtime::{Method, Principal, Request, Runtime, RuntimeConfig};
use switchboard::tenant::Limits;
use switchboard_tests::*;

const CYCLES: u32 = 30;

/// Reads every key back through the plugin; each must hold its own name.
async fn assert_all_present(rt: &Runtime, keys: &[impl AsRef<str>], when: &str) {
    for key in keys {
        let key = key.as_ref();
        let req = Request::new(
            Method::Get,
            &format!("/kv/{key}"),
            Principal::user("acme", "r"),
        );
        let r = rt.handle("acme", "vault", req).await.unwrap();
        assert_eq!(r.status, 200, "{when}: acknowledged {key} was lost");
        assert_eq!(r.body, key.as_bytes(), "{when}: {key} holds other data");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_at_random_points() {
    let h = harness(&["vault"]).await;
    tenant(&h, "acme", Limits::default(), &["vault"]).await;
    let dir = h.into_dir();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut total_acked = 0usize;
    for cycle in 0..CYCLES {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
            .arg(dir.path())
            .arg(format!("c{cycle}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until it is writing, then kill it after a random delay.
        let start = Instant::now();
        let mut acked = Vec::new();
        let mut writing = false;
        while start.elapsed() < Duration::from_secs(120) && !writing {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                writing = line.starts_with("ack ");
                if let Some(k) = line.strip_prefix("ack ") {
                    acked.push(k.to_string());
                }
            }
        }
        assert!(
            writing,
            "cycle {cycle}: the writer never acknowledged a write"
        );
        std::thread::sleep(Duration::from_millis(20 + seed % 400));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(
            rx.try_iter()
                .filter_map(|l| l.strip_prefix("ack ").map(str::to_string)),
        );
        // Restart and check every acknowledged key.
        let rt = Runtime::open(RuntimeConfig::new(dir.path()))
            .unwrap_or_else(|e| panic!("cycle {cycle}: the store does not open: {e:#}"));
        assert_all_present(&rt, &acked, &format!("cycle {cycle}")).await;
        total_acked += acked.len();
        drop(rt);
    }
    println!(
        "{CYCLES} SIGKILL cycles, {total_acked} acknowledged writes, all present after restart"
    );
    assert!(total_acked > CYCLES as usize);
}

/// Every file under `dir`, recursively, with its size.
fn largest_file(dir: &std::path::Path) -> u64 {
    let mut max = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let n = if p.is_dir() {
            largest_file(&p)
        } else {
            std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
        };
        max = max.max(n);
    }
    max
}

/// A full disk (simulated with RLIMIT_FSIZE: writes past the limit fail
/// with EFBIG) fails writes cleanly: the writer gets errors, and after a
/// restart without the limit the store opens with every acknowledged
/// write intact.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_without_losing_acknowledged_ones() {
    let h = harness(&["vault"]).await;
    tenant(&h, "acme", Limits::default(), &["vault"]).await;
    let dir = h.into_dir();
    let limit_kib = largest_file(dir.path()) / 1024 + 2048;
    let script = format!("trap '' XFSZ; ulimit -f {limit_kib}; exec \"$0\" \"$1\" full",);
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_crash_writer"))
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let acked: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ack "))
        .collect();
    assert!(!out.status.success(), "the writer never hit the limit");
    assert!(stderr.contains("failed"), "{stderr}");
    assert!(
        acked.len() > 10,
        "only {} writes before the limit: {stderr}",
        acked.len()
    );
    let rt = Runtime::open(RuntimeConfig::new(dir.path())).unwrap();
    assert_all_present(&rt, &acked, "full disk").await;
    // And the store takes writes again once there is room.
    let r = rt
        .handle(
            "acme",
            "vault",
            Request::new(Method::Put, "/kv/after", Principal::user("acme", "w"))
                .with_body(b"1".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    println!(
        "full disk: {} writes acknowledged before the limit, all present",
        acked.len()
    );
}
