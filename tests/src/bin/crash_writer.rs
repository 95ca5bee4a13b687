//! Test helper for the crash test (`tests/durability.rs`): opens the data
//! folder given as the first argument and writes keys `{prefix}-{n}`
//! through the `vault` plugin of tenant `acme` from several tasks, printing
//! `ack {key}` after each write the runtime acknowledged. The test kills it
//! with SIGKILL at a random moment and checks every acknowledged key.

use std::io::Write as _;

use switchboard::runtime::{Method, Principal, Request, Runtime, RuntimeConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(prefix)) = (args.next(), args.next()) else {
        eprintln!("usage: crash_writer DATA_DIR PREFIX");
        std::process::exit(2);
    };
    let mut config = RuntimeConfig::new(dir);
    config.max_concurrent_calls = 16;
    let rt = match Runtime::open(config) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot open: {e:#}");
            std::process::exit(1);
        }
    };
    println!("ready");
    let mut tasks = Vec::new();
    for t in 0..4 {
        let rt = rt.clone();
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..100_000u32 {
                let key = format!("{prefix}-{t}-{n}");
                let req = Request::new(
                    Method::Put,
                    &format!("/kv/{key}"),
                    Principal::user("acme", "w"),
                )
                .with_body(key.clone().into_bytes());
                match rt.handle("acme", "vault", req).await {
                    Ok(r) if r.status == 200 => {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "ack {key}");
                        let _ = out.flush();
                    }
                    other => {
                        eprintln!("write {key} failed: {other:?}");
                        std::process::exit(1);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
