//! Bundles the first-party plugins (SPEC K1, issue 3 item 7): builds each
//! crate listed in `plugins/bundle.txt` for `wasm32-wasip2`, signs it with a
//! key generated for this build — whose public half the binary trusts and
//! whose private half is dropped here — and writes `bundle.rs` into
//! `OUT_DIR` for `host/src/bundle.rs` to include.

#[path = "build_plugins.rs"]
mod build_plugins;

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

use switchboard_signing::{Manifest, Package};

fn main() {
    let here =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = here
        .parent()
        .expect("host/ sits in the workspace root")
        .to_path_buf();
    let plugins = root.join("plugins");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let list = std::fs::read_to_string(plugins.join("bundle.txt")).expect("plugins/bundle.txt");
    let names: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let wasm_dir = build_plugins::build_plugins(&root, &names);
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
        let wasm = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
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

    let bundle: Vec<String> = names
        .iter()
        .map(|n| {
            let text =
                std::fs::read_to_string(plugins.join(n).join("plugin.toml")).unwrap_or_default();
            let version = Manifest::parse(text.as_bytes())
                .map(|m| m.version.to_string())
                .unwrap_or_default();
            format!("{n} {version}")
        })
        .collect();
    let key_id = switchboard_signing::KeyId::of(&key.verifying_key());
    std::fs::write(
        out.join("build_info.txt"),
        build_info(
            &root,
            &format!(
                "{} (signed by this build's key {key_id})",
                bundle.join(", ")
            ),
        ),
    )
    .expect("write build_info.txt");
}

/// What `switchboard --version` prints below the version line: the commit
/// (when the builder records it), profile, target, compiler, the wasmtime
/// version from the lock file, and the bundled plugins.
fn build_info(root: &std::path::Path, bundle: &str) -> String {
    println!("cargo:rerun-if-env-changed=SWITCHBOARD_GIT_COMMIT");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    let commit = env::var("SWITCHBOARD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| "not recorded (set SWITCHBOARD_GIT_COMMIT when building)".into());
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown rustc".into());
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let wasmtime = lock
        .split("[[package]]")
        .find(|p| p.contains("\nname = \"wasmtime\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "commit: {commit}\nbuild: {} profile for {}, {rustc}\nwasmtime {wasmtime}\nfirst-party bundle: {bundle}",
        env::var("PROFILE").unwrap_or_default(),
        env::var("TARGET").unwrap_or_default(),
    )
}
