//! Shared helpers of the integration tests: where the fixture components
//! built by `build.rs` are, a harness with fixtures installed, and the
//! usual two-tenant world of the plugin tests ([`world`]).

pub mod accounts;
pub mod baresip;
pub mod http;
pub mod ivr;
pub mod load;
pub mod schema;
pub mod sip;
pub mod sipp;
pub mod stream;
pub mod tamper;
pub mod world;

use std::path::PathBuf;

use switchboard::harness::Harness;
use switchboard::runtime::{CallError, Response};
use switchboard::tenant::Limits;

/// The folder of plugin `name`'s sources: a first-party plugin at the top
/// of `plugins/`, else a fixture.
pub fn plugin_dir(name: &str) -> PathBuf {
    let src = PathBuf::from(env!("SB_PLUGIN_SRC_DIR"));
    if src.join(name).join("plugin.toml").exists() {
        src.join(name)
    } else {
        src.join("fixtures").join(name)
    }
}

/// The manifest of plugin `name`.
pub fn manifest(name: &str) -> Vec<u8> {
    std::fs::read(plugin_dir(name).join("plugin.toml")).expect("fixture manifest")
}

/// The component of plugin `name`, built from source by `build.rs`.
pub fn component(name: &str) -> Vec<u8> {
    let file = format!("{}.wasm", name.replace('-', "_"));
    let path = PathBuf::from(env!("SB_PLUGIN_WASM_DIR")).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()))
}

/// A harness with `plugins` installed.
pub async fn harness(plugins: &[&str]) -> Harness {
    let h = Harness::new().expect("harness");
    for p in plugins {
        h.install(&manifest(p), &component(p))
            .await
            .unwrap_or_else(|e| panic!("install {p}: {e}"));
    }
    h
}

/// Creates `tenant` with `limits` and enables `plugins` for it.
pub async fn tenant(h: &Harness, tenant: &str, limits: Limits, plugins: &[&str]) {
    h.tenant_with_limits(tenant, limits).await.expect("tenant");
    for p in plugins {
        h.enable(tenant, p)
            .await
            .unwrap_or_else(|e| panic!("enable {p}: {e}"));
    }
}

/// A harness with `plugins` installed and enabled for two tenants: `acme`
/// (with `acme_limits`) and `globex`.
pub async fn two_tenants(plugins: &[&str], acme_limits: Limits) -> Harness {
    let h = harness(plugins).await;
    tenant(&h, "acme", acme_limits, plugins).await;
    tenant(&h, "globex", Limits::default(), plugins).await;
    h
}

/// The JSON body of a successful response; panics with the error code
/// otherwise.
pub fn ok_json(result: Result<Response, CallError>) -> serde_json::Value {
    match result {
        Ok(r) => r
            .json()
            .unwrap_or_else(|_| serde_json::Value::String(r.text())),
        Err(e) => panic!("call failed: {e} ({})", e.code()),
    }
}

/// The error code of a failed call; panics if it succeeded.
pub fn err_code(result: Result<Response, CallError>) -> &'static str {
    match result {
        Ok(r) => panic!("expected an error, got {} {}", r.status, r.text()),
        Err(e) => e.code(),
    }
}
