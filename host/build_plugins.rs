// Shared by `host/build.rs` and `tests/build.rs` (included with #[path]):
// builds crates of the plugins workspace for wasm32-wasip2, release, into
// `<target>/plugins`, and returns where the components land.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` (all when empty) of the plugins workspace under
/// `root`; returns the folder holding the `.wasm` files.
pub fn build_plugins(root: &Path, packages: &[&str]) -> PathBuf {
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("plugins"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // Settings meant for the host build (or for clippy) must not leak into
    // the plugin build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the plugins");
    if !status.success() {
        panic!(
            "building plugins/ for wasm32-wasip2 failed (see above). If the target is missing, run: rustup target add wasm32-wasip2"
        );
    }
    target_dir.join("wasm32-wasip2").join("release")
}
