//! Bundles the first-party plugins (SPEC K1, issue 3 item 7): builds each
//! crate listed in `plugins/bundle.txt` for `wasm32-wasip2`, signs it with a
//! key generated for this build — whose public half the binary trusts and
//! whose private half is dropped here — and writes `bundle.rs` into
//! `OUT_DIR` for `host/src/bundle.rs` to include.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use switchboard_signing::{Manifest, Package};

fn main() {
    let here =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = here
        .parent()
        .expect("host/ sits in the workspace root")
        .to_path_buf();
    let plugins = root.join("plugins");
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let list = std::fs::read_to_string(plugins.join("bundle.txt")).expect("plugins/bundle.txt");
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");
    if !names.is_empty() {
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&plugins)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "wasm32-wasip2",
                "--target-dir",
            ])
            .arg(&target_dir);
        for n in &names {
            cmd.args(["-p", n]);
        }
        let status = cmd
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_PRIMARY_PACKAGE")
            .status()
            .expect("cannot run cargo to build the bundled plugins");
        if !status.success() {
            panic!(
                "building the bundled plugins failed (see above). If the target is missing, run: rustup target add wasm32-wasip2"
            );
        }
    }
    // A key for this build only: the private half never leaves this process.
    let key = switchboard_signing::keys::generate().expect("OS random source");
    let mut rs = String::new();
    writeln!(rs, "/// Public key of this build's bundle signer.").ok();
    writeln!(
        rs,
        "pub const BUNDLE_KEY: [u8; 32] = {:?};",
        key.verifying_key().to_bytes()
    )
    .ok();
    writeln!(rs, "/// (name, signed package) of each bundled plugin.").ok();
    writeln!(rs, "pub const PACKAGES: &[(&str, &[u8])] = &[").ok();
    for name in &names {
        let dir = plugins.join(name);
        let manifest = std::fs::read(dir.join("plugin.toml"))
            .unwrap_or_else(|e| panic!("{name}/plugin.toml: {e}"));
        let wasm = target_dir
            .join("wasm32-wasip2")
            .join("release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let component = std::fs::read(&wasm).unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
        let manifest =
            Manifest::parse(&manifest).unwrap_or_else(|e| panic!("{name}/plugin.toml: {e}"));
        let mut package = Package::new(manifest, component, &key.verifying_key())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        package.sign(&key);
        let file = out.join(format!("{name}.swpkg"));
        std::fs::write(&file, package.to_bytes()).expect("write bundled package");
        writeln!(
            rs,
            "    ({name:?}, include_bytes!({:?})),",
            file.display().to_string()
        )
        .ok();
    }
    writeln!(rs, "];").ok();
    std::fs::write(out.join("bundle.rs"), rs).expect("write bundle.rs");
}
