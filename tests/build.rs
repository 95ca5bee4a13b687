//! Builds the plugins workspace (`plugins/`) for `wasm32-wasip2` from
//! source, so every test runs against real components compiled from the
//! tree under test — never committed binaries. Cargo's own freshness checks
//! make this a no-op when nothing under `plugins/`, `sdk/` or `wit/`
//! changed.

#[path = "../host/build_plugins.rs"]
mod build_plugins;

use std::env;
use std::path::PathBuf;

fn main() {
    let here =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = here
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf();
    let wasm_dir = build_plugins::build_plugins(&root, &[]);
    println!("cargo:rustc-env=SB_PLUGIN_WASM_DIR={}", wasm_dir.display());
    println!(
        "cargo:rustc-env=SB_PLUGIN_SRC_DIR={}",
        root.join("plugins").display()
    );
}
