//! Installed packages and their publishers (SPEC S1, S2): installing a
//! signed package, listing what is installed, loading it all again at
//! start, and the operator's trust store (add, list, revoke).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use switchboard_signing::package::Trust;
use switchboard_signing::{Capability, KeyId, Package};

use super::Registry;
use crate::audit::{Scope, outcome};
use crate::call::LoadedPlugin;
use crate::kernel::AdminError;
use crate::kernel::cache::CacheOutcome;
use crate::store::keys;
use crate::support::sync::Recover as _;
use crate::trust::TrustedKey;

/// Installed plugins by (name, version), with how each was loaded.
pub(super) type PluginTable = HashMap<(String, semver::Version), (Arc<LoadedPlugin>, CacheOutcome)>;

/// A plugin as listed by `Runtime::plugins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: semver::Version,
    pub digest: String,
    /// Key id of the publisher that signed it.
    pub publisher: String,
    /// Whether its publisher key has been revoked.
    pub revoked: bool,
    pub capabilities: Vec<Capability>,
    /// How the component was obtained when this host loaded it.
    pub cache: CacheOutcome,
}

fn plugin_info(p: &LoadedPlugin, cache: CacheOutcome) -> PluginInfo {
    PluginInfo {
        name: p.manifest.name.clone(),
        version: p.manifest.version.clone(),
        digest: p.digest.clone(),
        publisher: p.publisher.to_string(),
        revoked: p.revoked.load(Ordering::Relaxed),
        capabilities: p.manifest.capabilities.clone(),
        cache,
    }
}

impl Registry {
    /// Installs a signed plugin package (SPEC S1). Checks format, sizes,
    /// digest, the publisher's trust and revocation, and its signature
    /// before compiling anything; then the component's validity, world and
    /// imports. Nothing is stored unless every check passes. Installing the
    /// same package again is a no-op (deduplicated by digest).
    pub async fn install_package(&self, package: &[u8]) -> Result<PluginInfo, AdminError> {
        let result = self.install(package).await;
        match &result {
            Ok(info) => self.audit(
                &Scope::System,
                "plugin.install",
                &format!("{}@{}", info.name, info.version),
                outcome::SUCCESS,
                &format!("sha256:{} publisher {}", info.digest, info.publisher),
            ),
            Err(e) => self.audit(
                &Scope::System,
                "plugin.install",
                "package",
                outcome::FAILURE,
                &format!("{}: {e}", e.code()),
            ),
        }
        result
    }

    /// Verifies, compiles without the admin lock (a compile takes seconds,
    /// and revocations, enables and tenant changes must not wait for it;
    /// compiles run one at a time, `Kernel::compile_apart`), then under the
    /// lock verifies again — the publisher may have been revoked, or the
    /// same name and version installed, meanwhile — and stores.
    async fn install(&self, bytes: &[u8]) -> Result<PluginInfo, AdminError> {
        let package = Package::parse(bytes)?;
        let publisher = package.verify(|id| self.trust.of(id))?;
        if let Some(done) = self.installed_as(&package)? {
            return Ok(done);
        }
        let manifest = package.manifest().clone();
        let key = (manifest.name.clone(), manifest.version.clone());
        let (plugin, outcome) = self
            .kernel
            .compile_apart(manifest, package.component().to_vec(), publisher)
            .await?;
        let _admin = self.lock().await;
        package.verify(|id| self.trust.of(id))?;
        if let Some(done) = self.installed_as(&package)? {
            return Ok(done);
        }
        let version = plugin.manifest.version.to_string();
        self.services().store.apply(&[(
            keys::plugin_package(&plugin.manifest.name, &version),
            Some(bytes.to_vec()),
        )])?;
        let info = plugin_info(&plugin, outcome);
        self.plugins
            .write()
            .recover()
            .insert(key, (Arc::new(plugin), outcome));
        Ok(info)
    }

    /// `package`'s name and version if installed: the same component (a
    /// no-op install), or `AlreadyInstalled` for another; `None` if not.
    fn installed_as(&self, package: &Package) -> Result<Option<PluginInfo>, AdminError> {
        let m = package.manifest();
        match self
            .read_plugins()
            .get(&(m.name.clone(), m.version.clone()))
        {
            Some((existing, outcome)) if existing.digest == package.digest() => {
                Ok(Some(plugin_info(existing, *outcome)))
            }
            Some(_) => Err(AdminError::AlreadyInstalled {
                name: m.name.clone(),
                version: m.version.to_string(),
            }),
            None => Ok(None),
        }
    }

    /// Installed plugins, sorted by name and version.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        let mut out: Vec<PluginInfo> = self
            .read_plugins()
            .values()
            .map(|(p, o)| plugin_info(p, *o))
            .collect();
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    /// The installed plugin `name` at `version`.
    pub(super) fn plugin(
        &self,
        name: &str,
        version: &semver::Version,
    ) -> Option<Arc<LoadedPlugin>> {
        self.read_plugins()
            .get(&(name.to_string(), version.clone()))
            .map(|(p, _)| p.clone())
    }

    /// Loads every installed package, verifying it again: a package whose
    /// publisher was revoked still loads (so its tenants' other plugins keep
    /// running) but is marked revoked and refuses calls.
    pub(super) fn load_plugins(&self) -> anyhow::Result<()> {
        for (key, bytes) in self.scan_all(keys::PLUGINS)? {
            if !key.ends_with(b"/package") {
                continue;
            }
            let revoked = std::cell::Cell::new(false);
            let loaded = Package::parse(&bytes)
                .map_err(AdminError::from)
                .and_then(|package| {
                    let publisher = package.verify(|id| match self.trust.of(id) {
                        Trust::Revoked => {
                            revoked.set(true);
                            self.trust.ignoring_revocation(id)
                        }
                        other => other,
                    })?;
                    self.kernel
                        .compile(package.manifest().clone(), package.component(), publisher)
                });
            match loaded {
                Ok((p, outcome)) => {
                    p.revoked.store(revoked.get(), Ordering::Relaxed);
                    let k = (p.manifest.name.clone(), p.manifest.version.clone());
                    self.plugins
                        .write()
                        .recover()
                        .insert(k, (Arc::new(p), outcome));
                }
                Err(e) => {
                    tracing::error!(key = %String::from_utf8_lossy(&key), code = e.code(), error = %e, "installed package cannot be loaded; skipping it")
                }
            }
        }
        Ok(())
    }

    /// Adds a publisher key to the operator's trust store (SPEC S2). Adding
    /// a key again updates its label; a revoked key cannot come back.
    pub async fn trust_add(
        &self,
        key: &ed25519_dalek::VerifyingKey,
        label: &str,
    ) -> Result<KeyId, AdminError> {
        let _admin = self.lock().await;
        let id = KeyId::of(key);
        let existing = self.trust.get(&id);
        if existing.as_ref().is_some_and(|k| k.revoked_ms.is_some()) {
            return Err(AdminError::KeyRevoked(id.to_string()));
        }
        let record = TrustedKey {
            key_id: id.to_string(),
            public_key: hex::encode(key.as_bytes()),
            label: label.to_string(),
            added_ms: existing.map_or_else(crate::support::clock::now_ms, |k| k.added_ms),
            revoked_ms: None,
        };
        self.put_trust(&id, record)?;
        self.audit(
            &Scope::System,
            "trust.add",
            &id.to_string(),
            outcome::SUCCESS,
            label,
        );
        Ok(id)
    }

    /// The trust store, sorted by key id.
    pub fn trusted_keys(&self) -> Vec<TrustedKey> {
        self.trust.all()
    }

    /// Revokes a publisher key: new packages it signed are refused, and
    /// every installed package it signed stops running at once (calls fail
    /// with `publisher_revoked`). Returns those packages.
    pub async fn trust_revoke(
        &self,
        id: &KeyId,
    ) -> Result<Vec<(String, semver::Version)>, AdminError> {
        let _admin = self.lock().await;
        let Some(mut record) = self.trust.get(id) else {
            return Err(AdminError::UnknownKey(id.to_string()));
        };
        if record.revoked_ms.is_none() {
            record.revoked_ms = Some(crate::support::clock::now_ms());
            self.put_trust(id, record)?;
        }
        let mut disabled = Vec::new();
        for (p, _) in self.read_plugins().values() {
            if p.publisher == *id {
                p.revoked.store(true, Ordering::Relaxed);
                disabled.push((p.manifest.name.clone(), p.manifest.version.clone()));
            }
        }
        disabled.sort();
        let names: Vec<String> = disabled.iter().map(|(n, v)| format!("{n} {v}")).collect();
        self.audit(
            &Scope::System,
            "trust.revoke",
            &id.to_string(),
            outcome::SUCCESS,
            &format!("disabled packages: [{}]", names.join(", ")),
        );
        Ok(disabled)
    }
}
