//! Compiling and linking (SPEC K3, K8): a component is checked and
//! compiled once per digest (through the compile cache), its imports are
//! checked against the host packages and the manifest, and it is linked
//! for each grant set through the adapter of the plugin API version it was
//! built against. Linkers and linked components are cached: few distinct
//! grant sets exist.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use switchboard_signing::{Capability, KeyId, Manifest, component_digest};
use wasmtime::component::{Component, InstancePre, Linker};

use super::cache::CacheOutcome;
use super::error::AdminError;
use super::state::HostState;
use super::{Kernel, v0_1, v0_2, v0_3};
use crate::call::{LoadedPlugin, PreHandle};
use crate::capability;
use crate::support::sync::Recover as _;

/// Plugin API versions this host links.
pub const SUPPORTED_API_VERSIONS: &[&str] =
    &[v0_1::API_VERSION, v0_2::API_VERSION, v0_3::API_VERSION];
/// The `switchboard:host` version every supported API version imports.
pub const HOST_API_VERSION: &str = "0.1.0";
/// The host-side WIT packages a component may import, each with the
/// versions this host serves and the oldest plugin API that may import it.
pub const HOST_PACKAGES: &[(&str, &[&str], semver::Version)] = &[
    (
        "switchboard:host",
        crate::world::HOST_PACKAGE_VERSIONS,
        semver::Version::new(0, 1, 0),
    ),
    (
        "switchboard:telephony",
        crate::world::TELEPHONY_PACKAGE_VERSIONS,
        semver::Version::new(0, 3, 0),
    ),
];

/// A component linked for one grant set, through the adapter of the plugin
/// API version it was built against (SPEC K8).
#[derive(Clone)]
pub enum Linked {
    V0_1(v0_1::Pre),
    V0_2(v0_2::Pre),
    V0_3(v0_3::Pre),
}

impl Linked {
    /// Checks the exports against the world of `api` and wraps them.
    fn new(api: &semver::Version, pre: InstancePre<HostState>) -> wasmtime::Result<Linked> {
        match (api.major, api.minor) {
            (0, 1) => v0_1::pre(pre).map(Linked::V0_1),
            (0, 2) => v0_2::pre(pre).map(Linked::V0_2),
            (0, 3) => v0_3::pre(pre).map(Linked::V0_3),
            _ => Err(wasmtime::format_err!(
                "plugin API {api} is not supported by this host"
            )),
        }
    }
}

/// The import a capability stands for, at the newest version served.
fn import_name(cap: Capability) -> String {
    let version = HOST_PACKAGES
        .iter()
        .find(|(p, _, _)| *p == cap.package())
        .and_then(|(_, v, _)| v.last())
        .unwrap_or(&"");
    format!("{}/{}@{version}", cap.package(), cap.interface())
}

impl Kernel {
    /// Validates and compiles a component for `manifest`: its size, its
    /// header, its imports and its exports against the world of its API
    /// version. Only a component that passed every check is cached.
    pub(crate) fn compile(
        &self,
        manifest: Manifest,
        component: &[u8],
        publisher: KeyId,
    ) -> Result<(LoadedPlugin, CacheOutcome), AdminError> {
        if component.len() > self.config.max_component_bytes {
            return Err(AdminError::ComponentTooLarge {
                size: component.len(),
                limit: self.config.max_component_bytes,
            });
        }
        if !is_component(component) {
            return Err(AdminError::MalformedComponent(
                "the bytes do not start with a WebAssembly component header".into(),
            ));
        }
        let digest = component_digest(component);
        let (cached, outcome) = self.cache.lookup(&self.engine, &digest);
        let compiled = match cached {
            Some(c) => c,
            None => Component::new(&self.engine, component)
                .map_err(|e| AdminError::MalformedComponent(format!("{e:#}")))?,
        };
        let imports = self.check_imports(&manifest, &compiled)?;
        // Link against everything implemented to check the exports.
        let all: BTreeSet<Capability> = capability::IMPLEMENTED.iter().copied().collect();
        let linker = self
            .linker(&all)
            .map_err(|e| AdminError::Internal(format!("{e:#}")))?;
        let wrong_world = |e: wasmtime::Error| AdminError::WrongWorld {
            api: manifest.api_version.to_string(),
            reason: format!("{e:#}"),
        };
        let pre = linker.instantiate_pre(&compiled).map_err(wrong_world)?;
        Linked::new(&manifest.api_version, pre).map_err(wrong_world)?;
        if outcome != CacheOutcome::Hit
            && let Err(e) = self.cache.store(&digest, &compiled)
        {
            tracing::warn!(digest, error = %format!("{e:#}"), "could not write the compile cache");
        }
        Ok((
            LoadedPlugin {
                manifest,
                digest,
                publisher,
                revoked: AtomicBool::new(false),
                component: compiled,
                imports,
            },
            outcome,
        ))
    }

    /// `compile` on a thread of its own, at the plugin threads' priority
    /// (a Cranelift compile takes from a fraction of a second to seconds),
    /// one at a time: an install while the server runs holds no network
    /// or plugin thread.
    pub(crate) async fn compile_apart(
        self: &Arc<Self>,
        manifest: Manifest,
        component: Vec<u8>,
        publisher: KeyId,
    ) -> Result<(LoadedPlugin, CacheOutcome), AdminError> {
        // One compile at a time; the thread holds the permit, so a caller
        // that goes away (a client hanging up) cannot start another before
        // this one ends.
        let permit = self
            .compiles
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AdminError::Internal("the kernel is stopping".into()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let kernel = self.clone();
        let nice = self.config.executor.nice;
        std::thread::Builder::new()
            .name("sb-compile".into())
            .spawn(move || {
                super::executor::lower_priority(nice);
                let _ = tx.send(kernel.compile(manifest, &component, publisher));
                drop(permit);
            })
            .map_err(|e| AdminError::Internal(format!("cannot start a compile thread: {e}")))?;
        rx.await.map_err(|_| {
            AdminError::Internal("the compile thread ended without an answer".into())
        })?
    }

    /// SPEC K3: every import must be WASI (linked with an empty context) or
    /// a `switchboard:host` capability the manifest declares and this host
    /// implements.
    fn check_imports(
        &self,
        manifest: &Manifest,
        component: &Component,
    ) -> Result<BTreeSet<Capability>, AdminError> {
        let mut caps = BTreeSet::new();
        for (name, _) in component.component_type().imports(&self.engine) {
            if name.starts_with("wasi:") {
                continue;
            }
            let Some((package, versions, since, rest)) =
                HOST_PACKAGES.iter().find_map(|(p, v, since)| {
                    name.strip_prefix(p)
                        .and_then(|r| r.strip_prefix('/'))
                        .map(|r| (p, v, since, r))
                })
            else {
                return Err(AdminError::ForeignImport(name.to_string()));
            };
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            let api = manifest.api_version.to_string();
            if !versions.contains(&version)
                || !SUPPORTED_API_VERSIONS.contains(&api.as_str())
                || manifest.api_version < *since
            {
                return Err(AdminError::UnsupportedApiVersion(format!(
                    "the component imports {name}, built against {package}@{version}; this host links {package}@{} for plugin API {}",
                    versions.join(" and "),
                    SUPPORTED_API_VERSIONS.join(" and ")
                )));
            }
            if iface == "types" {
                continue;
            }
            let Some(cap) = Capability::from_package_interface(package, iface) else {
                return Err(AdminError::ForeignImport(name.to_string()));
            };
            if !manifest.capabilities.contains(&cap) {
                return Err(AdminError::ImportNotDeclared {
                    import: name.to_string(),
                    capability: cap.to_string(),
                });
            }
            if !capability::is_implemented(cap) {
                return Err(AdminError::CapabilityUnavailable {
                    import: name.to_string(),
                    capability: cap.to_string(),
                });
            }
            caps.insert(cap);
        }
        Ok(caps)
    }

    /// The linker for one grant set (cached: few distinct sets exist).
    fn linker(&self, grants: &BTreeSet<Capability>) -> wasmtime::Result<Arc<Linker<HostState>>> {
        let mut linkers = self.linkers.lock().recover();
        if let Some(l) = linkers.get(grants) {
            return Ok(l.clone());
        }
        let mut linker = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        v0_1::add_to_linker(&mut linker, grants)?;
        let linker = Arc::new(linker);
        linkers.insert(grants.clone(), linker.clone());
        Ok(linker)
    }

    /// The instantiable form of `plugin` under `grants`, shared by every
    /// tenant with the same plugin version and grants. Refused when the
    /// component imports a capability not granted.
    pub(crate) fn link(
        &self,
        plugin: &LoadedPlugin,
        grants: &BTreeSet<Capability>,
    ) -> Result<PreHandle, AdminError> {
        for cap in &plugin.imports {
            if !grants.contains(cap) {
                return Err(AdminError::ImportNotGranted {
                    import: import_name(*cap),
                    capability: cap.to_string(),
                });
            }
        }
        let key = (plugin.digest.clone(), grants.clone());
        if let Some(pre) = self.pres.lock().recover().get(&key) {
            return Ok(PreHandle::new(pre.clone()));
        }
        let linker = self
            .linker(grants)
            .map_err(|e| AdminError::Internal(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&plugin.component)
            .and_then(|pre| Linked::new(&plugin.manifest.api_version, pre))
            .map_err(|e| AdminError::Internal(format!("{e:#}")))?;
        self.pres.lock().recover().insert(key, pre.clone());
        Ok(PreHandle::new(pre))
    }
}

/// Cheap header check before handing bytes to the compiler: a component's
/// preamble is `\0asm` with layer 1.
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}
