//! The plugin test harness (SPEC P3): runs plugins in the real runtime —
//! same engine, limits, transactions and capabilities as `serve` — over a
//! temporary data folder, without starting a server. Partners reach it as
//! `switchboard_sdk::harness` (feature `harness`).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use switchboard::harness::Harness;
//! let h = Harness::new()?;
//! let wasm = Harness::build_plugin("plugins/example".as_ref())?;
//! h.install_files("plugins/example/plugin.toml".as_ref(), &wasm).await?;
//! h.tenant("acme").await?;
//! h.enable("acme", "example").await?;
//! let resp = h.post("acme", "example", "alice", "/counter/hits/increment", b"").await?;
//! assert_eq!(resp.status, 200);
//! # Ok(()) }
//! ```

pub mod calls;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use switchboard_signing::{Manifest, Package};

use crate::runtime::{
    AdminError, CallError, Method, PluginInfo, Principal, Request, Response, Runtime, RuntimeConfig,
};
use crate::tenant::Limits;

/// A runtime over a temporary data folder, removed on drop. It signs what
/// it installs with a key of its own that its runtime trusts, so plugins go
/// through the same verification as in production.
pub struct Harness {
    runtime: Runtime,
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Harness {
    /// A harness with the embedded defaults (a smaller instance pool, so
    /// many harnesses fit in one test process).
    pub fn new() -> anyhow::Result<Harness> {
        Harness::with_config(|_| {})
    }

    /// A harness whose runtime configuration `adjust` may change.
    pub fn with_config(adjust: impl FnOnce(&mut RuntimeConfig)) -> anyhow::Result<Harness> {
        let dir = tempfile::tempdir().context("cannot create a temporary data folder")?;
        let mut config = RuntimeConfig::new(dir.path());
        config.max_concurrent_calls = 128;
        config.max_memory_bytes = 128 << 20;
        adjust(&mut config);
        let runtime = Runtime::open(config)?;
        let key = switchboard_signing::keys::generate()?;
        Ok(Harness { runtime, dir, key })
    }

    /// The runtime under test.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The temporary data folder.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Closes the runtime (flushing and releasing the folder) and hands
    /// over the data folder, e.g. to reopen it as a restarted server would.
    pub fn into_dir(self) -> tempfile::TempDir {
        let Harness { runtime, dir, .. } = self;
        drop(runtime);
        dir
    }

    /// Builds the plugin crate in `dir` for `wasm32-wasip2` (release) and
    /// returns the component's path.
    pub fn build_plugin(dir: &Path) -> anyhow::Result<PathBuf> {
        Harness::build_plugin_into(dir, None)
    }

    /// `build_plugin` with an explicit cargo target folder (to share one
    /// with other builds).
    pub fn build_plugin_into(dir: &Path, target_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = std::process::Command::new(cargo);
        if let Some(t) = target_dir {
            command
                .arg("--config")
                .arg(format!("build.target-dir={:?}", t.display().to_string()));
        }
        let out = command
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--message-format=json-render-diagnostics",
            ])
            .arg("--manifest-path")
            .arg(dir.join("Cargo.toml"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run cargo for {}", dir.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "building the plugin in {} failed",
            dir.display()
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            if let Some(files) = msg["filenames"].as_array() {
                for f in files.iter().filter_map(|f| f.as_str()) {
                    if f.ends_with(".wasm") {
                        return Ok(PathBuf::from(f));
                    }
                }
            }
        }
        anyhow::bail!(
            "cargo built no .wasm in {}; is the crate a cdylib?",
            dir.display()
        )
    }

    /// The harness's publisher key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// A package of `component` with `manifest` (plugin.toml text), signed
    /// with the harness key.
    pub fn package(&self, manifest: &[u8], component: &[u8]) -> Result<Vec<u8>, AdminError> {
        sign(&self.key, manifest, component)
    }

    /// Signs and installs a plugin (trusting the harness key first).
    pub async fn install(
        &self,
        manifest: &[u8],
        component: &[u8],
    ) -> Result<PluginInfo, AdminError> {
        self.runtime
            .trust_add(&self.key.verifying_key(), "test harness")
            .await?;
        let package = self.package(manifest, component)?;
        self.runtime.install_package(&package).await
    }

    /// Installs a plugin from its manifest and component files.
    pub async fn install_files(
        &self,
        manifest: &Path,
        component: &Path,
    ) -> anyhow::Result<PluginInfo> {
        let m = std::fs::read(manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        let c = std::fs::read(component)
            .with_context(|| format!("cannot read {}", component.display()))?;
        let info = self
            .install(&m, &c)
            .await
            .map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))?;
        Ok(info)
    }

    /// Creates a tenant with default limits.
    pub async fn tenant(&self, id: &str) -> anyhow::Result<()> {
        self.tenant_with_limits(id, Limits::default()).await
    }

    /// Creates a tenant with `limits`.
    pub async fn tenant_with_limits(&self, id: &str, limits: Limits) -> anyhow::Result<()> {
        self.runtime
            .create_tenant(id, Some(limits))
            .await
            .map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))
    }

    /// Enables the newest installed version of `plugin` for `tenant` with
    /// every capability its manifest requests and default settings.
    pub async fn enable(&self, tenant: &str, plugin: &str) -> anyhow::Result<()> {
        let version = self
            .runtime
            .plugins()
            .into_iter()
            .filter(|p| p.name == plugin)
            .map(|p| p.version)
            .max()
            .with_context(|| format!("plugin {plugin} is not installed"))?;
        self.runtime
            .enable_plugin(tenant, plugin, &version, None, Default::default())
            .await
            .map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))
    }

    /// Calls `plugin` as registered user `user` of `tenant`.
    pub async fn call(
        &self,
        tenant: &str,
        plugin: &str,
        user: &str,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Result<Response, CallError> {
        let request = Request::new(method, path, Principal::user(tenant, user)).with_body(body);
        self.runtime.handle(tenant, plugin, request).await
    }

    /// `GET path` as `user`.
    pub async fn get(
        &self,
        tenant: &str,
        plugin: &str,
        user: &str,
        path: &str,
    ) -> Result<Response, CallError> {
        self.call(tenant, plugin, user, Method::Get, path, b"")
            .await
    }

    /// `POST path` with `body` as `user`.
    pub async fn post(
        &self,
        tenant: &str,
        plugin: &str,
        user: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Response, CallError> {
        self.call(tenant, plugin, user, Method::Post, path, body)
            .await
    }
}

/// A signed package of `component` described by `manifest` (plugin.toml
/// text), published and signed by `key`.
pub fn sign(key: &SigningKey, manifest: &[u8], component: &[u8]) -> Result<Vec<u8>, AdminError> {
    let manifest = Manifest::parse(manifest)?;
    let mut package = Package::new(manifest, component.to_vec(), &key.verifying_key())?;
    package.sign(key);
    Ok(package.to_bytes())
}
