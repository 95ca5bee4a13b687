//! Builds the plugins workspace (`plugins/`) for `wasm32-wasip2` from
//! source, so every test runs against real components compiled from the
//! tree under test — never committed binaries. Cargo's own freshness checks
//! make this a no-op when nothing under `plugins/`, `sdk/` or `wit/`
//! changed.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let here =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = here
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf();
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root.join("plugins"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        // Settings meant for the host build (or for clippy) must not leak
        // into the plugin build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_PRIMARY_PACKAGE")
        .status()
        .expect("cannot run cargo to build the plugins");
    if !status.success() {
        panic!(
            "building plugins/ for wasm32-wasip2 failed (see above). If the target is missing, run: rustup target add wasm32-wasip2"
        );
    }
    println!(
        "cargo:rustc-env=SB_PLUGIN_WASM_DIR={}",
        target_dir.join("wasm32-wasip2").join("release").display()
    );
    println!(
        "cargo:rustc-env=SB_PLUGIN_SRC_DIR={}",
        root.join("plugins").display()
    );
}
