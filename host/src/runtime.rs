//! The host facade: what the doors (gateway, control socket, CLI), the
//! admin vocabulary and the scheduler hold. `Runtime::open` wires the
//! layers below — the store and its master key, the services (audit trail,
//! identity, event hub), the capabilities' state, the kernel
//! (`kernel::Kernel`: engine, linking, call path) and the registry
//! (`registry::Registry`: packages, trust, tenants) — and the facade hands
//! their operations out under one cheap, cloneable handle. It owns what
//! spans them: the master key (`rotate_master_key`), data protection and
//! backups (`data`), and delivering timers and host events (`deliver`).
//!
//! Wiring: `main` and the test harness call `Runtime::open`, then the admin
//! methods (install, tenants, enable) and `handle`. `scheduler::Scheduler::start`
//! runs the background loops over a `WeakRuntime`; the epoch ticker thread
//! starts with `open` and stops when the last handle goes.

pub mod data;
pub mod deliver;
pub mod telephony;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use switchboard_signing::{Capability, KeyId};
use wasmtime::Engine;

use crate::audit::{AuditLog, Scope, outcome};
use crate::call::txn::CommitLocks;
pub use crate::call::types::{
    Event, Invocation, Kind, Method, Outcome, Principal, Request, Response, Role, RouteInfo,
};
pub use crate::call::{EnabledPlugin, LoadedPlugin, TenantState};
use crate::call::{Services, Tenants};
use crate::capability;
pub use crate::identity::DEFAULT_PUBLIC_URL;
use crate::identity::{Identity, IdentityConfig};
pub use crate::kernel::cache::CacheOutcome;
use crate::kernel::engine::{self, EngineConfig};
use crate::kernel::executor::ExecutorConfig;
pub use crate::kernel::link::{HOST_API_VERSION, HOST_PACKAGES, SUPPORTED_API_VERSIONS};
pub use crate::kernel::{AdminError, CallError};
use crate::kernel::{Kernel, KernelConfig};
pub use crate::registry::PluginInfo;
use crate::registry::{Registry, RegistryConfig};
use crate::store::crypt::{MasterKey, MasterKeySource};
use crate::store::{Store as DataStore, StoreConfig, StoreError};
use crate::tenant::{Limits, TenantRecord};
use crate::trust::TrustedKey;

/// How the runtime is set up. `Default` gives the embedded defaults.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where the store, compile cache and host keys live.
    pub data_dir: PathBuf,
    /// Calls running at once across all tenants (nested calls included
    /// in the pool below, not here).
    pub max_concurrent_calls: u32,
    /// Threads running plugin code, apart from the network's (SPEC K5);
    /// 0: one per core.
    pub plugin_workers: usize,
    /// Their nice value (0-19): the network threads go first.
    pub plugin_nice: i32,
    /// The CPUs they run on (Linux; empty: any).
    pub plugin_cpus: Vec<usize>,
    /// The time slice of plugin calls (100 µs to 10 ms).
    pub epoch_tick: std::time::Duration,
    /// Linear memory one instance may ever use (the pool's slot size); a
    /// tenant's `memory_bytes` must not exceed it.
    pub max_memory_bytes: u64,
    /// Largest component accepted at install.
    pub max_component_bytes: usize,
    /// Limits of tenants created without their own.
    pub default_limits: Limits,
    /// Plugins enabled for every new tenant, in this order: `name` (its
    /// newest installed release; never a pre-release or dev build) or
    /// `name@version`, with every capability its manifest requests and
    /// default settings; a tenant admin may disable them. `serve` defaults to the
    /// first-party bundle (`server::DEFAULT_PLUGINS`); empty here.
    pub default_plugins: Vec<String>,
    /// Regions, each its own database (SPEC D3); the first is the default.
    pub regions: Vec<String>,
    /// Where the master key comes from (SPEC D2).
    pub master_key: MasterKeySource,
    /// Record changed keys so backups can be incremental (SPEC D5).
    pub track_changes: bool,
    /// Sign-in throttling and locking (SPEC I3).
    pub identity: IdentityConfig,
    /// The event hub's queues and resume window.
    pub events: crate::events::EventsConfig,
    /// What plugins may reach through `http-client`.
    pub http_client: crate::capability::http_client::HttpClientConfig,
    /// Call control and its media engine.
    pub telephony: crate::telephony::TelephonyConfig,
}

impl RuntimeConfig {
    /// The defaults, rooted at `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> RuntimeConfig {
        RuntimeConfig {
            data_dir: data_dir.into(),
            max_concurrent_calls: 256,
            plugin_workers: 0,
            plugin_nice: ExecutorConfig::default().nice,
            plugin_cpus: Vec::new(),
            epoch_tick: crate::kernel::engine::EPOCH_TICK,
            max_memory_bytes: 256 << 20,
            max_component_bytes: 32 << 20,
            default_limits: Limits::default(),
            default_plugins: Vec::new(),
            regions: vec!["local".into()],
            master_key: MasterKeySource::File(PathBuf::new()),
            track_changes: true,
            identity: IdentityConfig::default(),
            events: Default::default(),
            http_client: Default::default(),
            telephony: Default::default(),
        }
    }

    /// The master key file of the default source.
    pub fn master_key_file(&self) -> PathBuf {
        match &self.master_key {
            MasterKeySource::File(p) if !p.as_os_str().is_empty() => p.clone(),
            _ => self.data_dir.join("keys").join("master.key"),
        }
    }

    /// The master key source with the default file resolved.
    fn master_source(&self) -> MasterKeySource {
        match &self.master_key {
            MasterKeySource::File(_) => MasterKeySource::File(self.master_key_file()),
            other => other.clone(),
        }
    }
}

/// The runtime. Cheap to clone; all clones share one kernel and store.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

/// A handle that does not keep the host open (the scheduler's loops hold
/// one and stop when the host goes).
#[derive(Clone)]
pub struct WeakRuntime(Weak<Inner>);

impl WeakRuntime {
    /// The host, while it is open.
    pub fn upgrade(&self) -> Option<Runtime> {
        self.0.upgrade().map(|inner| Runtime { inner })
    }
}

struct Inner {
    kernel: Arc<Kernel>,
    registry: Registry,
    tenants: Arc<Tenants>,
    trail: Arc<AuditLog>,
    identity: Arc<Identity>,
    events: Arc<crate::events::EventHub>,
    config: RuntimeConfig,
    backup_lock: tokio::sync::Mutex<()>,
    timer_wake: Arc<tokio::sync::Notify>,
    telephony: Arc<crate::telephony::Telephony>,
}

impl Inner {
    fn services(&self) -> &Services {
        self.kernel.services()
    }

    fn store(&self) -> &Arc<DataStore> {
        &self.services().store
    }
}

/// Builds the one engine of a host (public so benchmarks can compare a
/// bare wasmtime setup with identical settings).
pub fn build_engine(config: &RuntimeConfig) -> wasmtime::Result<Engine> {
    engine::build(&EngineConfig {
        max_concurrent_calls: config.max_concurrent_calls,
        max_memory_bytes: config.max_memory_bytes,
        reset: engine::SlotReset::SCAN,
    })
}

impl Runtime {
    /// Opens the data folder (creating it), loads installed plugins (from
    /// the compile cache when it verifies) and tenants, and starts the
    /// epoch ticker.
    pub fn open(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data folder {}",
                config.data_dir.display()
            )
        })?;
        let engine = build_engine(&config)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("cannot configure the WebAssembly engine")?;
        let store = Arc::new(open_store(&config)?);
        let keys = config.data_dir.join("keys");
        let trail = Arc::new(
            AuditLog::open(store.clone(), &keys.join("audit.key"))
                .context("cannot open the audit trail")?,
        );
        let identity = Identity::new(store.clone(), trail.clone(), config.identity.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot set up the identity service ([identity] idp_ca_file)")?;
        let identity = Arc::new(identity);
        let events = Arc::new(crate::events::EventHub::new(config.events.clone()));
        let http_client = capability::http_client::State::new(config.http_client.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot set up the plugins' HTTP client ([http_client] ca_file)")?;
        let timer_wake = Arc::new(tokio::sync::Notify::new());
        let telephony = crate::telephony::Telephony::new(config.telephony.clone(), trail.clone());
        let caps = Arc::new(capability::States {
            telephony: telephony.clone(),
            audit: capability::audit::State::new(trail.clone()),
            events: capability::events::State::new(events.clone()),
            http_client,
            timers: capability::timers::State::new(timer_wake.clone()),
        });
        let services = Arc::new(Services {
            store,
            identity: identity.clone(),
            commits: Arc::new(CommitLocks::default()),
        });
        telephony.set_services(services.clone());
        let tenants = Arc::new(Tenants::default());
        telephony.set_tenants(tenants.clone());
        let kernel = Kernel::new(
            engine,
            KernelConfig {
                max_concurrent_calls: config.max_concurrent_calls,
                max_component_bytes: config.max_component_bytes,
                cache_dir: config.data_dir.join("cache"),
                cache_key_file: keys.join("cache.key"),
                executor: ExecutorConfig {
                    workers: config.plugin_workers,
                    nice: config.plugin_nice,
                    cpus: config.plugin_cpus.clone(),
                },
                epoch_tick: config.epoch_tick,
            },
            services,
            caps,
            tenants.clone(),
        )
        .context("cannot open the compile cache or start the plugin executor")?;
        let kernel = Arc::new(kernel);
        let registry = Registry::open(
            RegistryConfig {
                max_memory_bytes: config.max_memory_bytes,
                default_limits: config.default_limits.clone(),
            },
            kernel.clone(),
            trail.clone(),
            tenants.clone(),
        )?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                kernel,
                registry,
                tenants,
                trail,
                identity,
                events,
                config,
                backup_lock: tokio::sync::Mutex::new(()),
                timer_wake,
                telephony,
            }),
        })
    }

    /// The event hub behind the `events` capability and the streams.
    pub fn events(&self) -> &Arc<crate::events::EventHub> {
        &self.inner.events
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    /// The compile-cache file of a digest (for operators and tests).
    pub fn cache_file(&self, digest: &str) -> PathBuf {
        self.inner.kernel.cache_file(digest)
    }

    /// A handle that does not keep the host open.
    pub fn downgrade(&self) -> WeakRuntime {
        WeakRuntime(Arc::downgrade(&self.inner))
    }

    /// The identity service (accounts, sign-in, sessions).
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The audit trails.
    pub fn audit_log(&self) -> &AuditLog {
        &self.inner.trail
    }

    /// The encrypted store (for host services such as the OIDC provider).
    pub fn data_store(&self) -> &DataStore {
        self.inner.store()
    }

    /// The URL clients reach this server at (issuers, redirects).
    pub fn public_url(&self) -> String {
        self.inner.identity.public_url()
    }

    /// Sets the public URL (the server sets it from its listener unless
    /// configured).
    pub fn set_public_url(&self, url: &str) {
        self.inner.identity.set_public_url(url)
    }

    /// Makes everything committed so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.store().flush()
    }

    // ---- the registry (`registry`) --------------------------------------

    /// Installs a signed plugin package (`Registry::install_package`).
    pub async fn install_package(&self, package: &[u8]) -> Result<PluginInfo, AdminError> {
        if package.len() > self.max_package_bytes() {
            return Err(AdminError::Package(
                switchboard_signing::PackageError::TooLarge(format!(
                    "{} bytes; this server takes packages of at most {}",
                    package.len(),
                    self.max_package_bytes()
                )),
            ));
        }
        self.inner.registry.install_package(package).await
    }

    /// The largest package accepted for install: the component limit
    /// plus room for the manifest and signatures.
    pub fn max_package_bytes(&self) -> usize {
        self.inner
            .config
            .max_component_bytes
            .saturating_add(1 << 20)
            .min(switchboard_signing::package::MAX_PACKAGE_BYTES)
    }

    /// Installed plugins, sorted by name and version.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.inner.registry.plugins()
    }

    /// Creates a tenant in the default region with the given limits (or
    /// the defaults).
    pub async fn create_tenant(&self, id: &str, limits: Option<Limits>) -> Result<(), AdminError> {
        self.create_tenant_in(id, None, limits).await
    }

    /// Creates a tenant in `region` (`Registry::create_tenant_in`) and
    /// enables the default plugins for it. A default that cannot be enabled
    /// (not installed, its publisher revoked, a hook failing) is logged and
    /// skipped: the tenant exists either way, and its admin sees what is
    /// enabled.
    pub async fn create_tenant_in(
        &self,
        id: &str,
        region: Option<&str>,
        limits: Option<Limits>,
    ) -> Result<(), AdminError> {
        self.inner
            .registry
            .create_tenant_in(id, region, limits)
            .await?;
        for entry in &self.inner.config.default_plugins {
            // `name` (its newest released version) or `name@version`.
            let (name, pinned) = match entry.split_once('@') {
                Some((n, v)) => (n, v.parse::<semver::Version>().ok()),
                None => (entry.as_str(), None),
            };
            let newest = self
                .plugins()
                .into_iter()
                .filter(|p| p.name == name && !p.revoked)
                .map(|p| p.version)
                .filter(|v| match &pinned {
                    Some(want) => v == want,
                    // Dev builds and pre-releases are never a default.
                    None => v.pre.is_empty(),
                })
                .max();
            let result = match newest {
                Some(v) => {
                    self.enable_plugin(id, name, &v, None, Default::default())
                        .await
                }
                None => Err(AdminError::PluginNotFound {
                    name: name.to_string(),
                    version: pinned.map_or("any release".into(), |v| v.to_string()),
                }),
            };
            if let Err(e) = result {
                tracing::warn!(tenant = id, plugin = %entry, code = e.code(), error = %e, "default plugin not enabled for the new tenant");
            }
        }
        Ok(())
    }

    /// Deletes a tenant by destroying its key (`Registry::delete_tenant`).
    pub async fn delete_tenant(&self, id: &str) -> Result<(), AdminError> {
        self.inner.registry.delete_tenant(id).await
    }

    /// Rotates the master key online (SPEC D2): every scope key is rewrapped
    /// under a new key in one batch; no data is rewritten and calls go on.
    /// With the file source the new key replaces the file (crash-safe: the
    /// new key is written first as `master.key.next`). With an env or
    /// command source, `next` must be supplied and the operator updates the
    /// source afterwards. Returns the new key's id.
    pub async fn rotate_master_key(&self, next: Option<MasterKey>) -> Result<String, AdminError> {
        let _admin = self.inner.registry.lock().await;
        // A backup carries the master key of its snapshot: never rotate
        // while one runs.
        let _no_backup = self.inner.backup_lock.lock().await;
        let config = &self.inner.config;
        let file_source = matches!(config.master_key, MasterKeySource::File(_));
        let next = match (next, file_source) {
            (Some(k), _) => k,
            (None, true) => MasterKey::generate().map_err(|e| AdminError::Key(e.to_string()))?,
            (None, false) => {
                return Err(AdminError::Key(
                    "the master key comes from an environment variable or command; supply the new key".into(),
                ));
            }
        };
        let next_file = next_key_file(config);
        if file_source {
            let _ = std::fs::remove_file(&next_file);
            crate::store::crypt::write_key_file(&next_file, &next)
                .map_err(|e| AdminError::Key(e.to_string()))?;
        }
        let old = self.inner.store().master_key_id();
        let n = self.inner.store().rotate_master(next.clone())?;
        if file_source {
            std::fs::rename(&next_file, config.master_key_file()).map_err(|e| {
                AdminError::Key(format!(
                    "the keys were rewrapped but {} could not replace the key file: {e}; the next start finishes the rotation",
                    next_file.display()
                ))
            })?;
        }
        self.inner.trail.note(
            &Scope::System,
            "key.rotate-master",
            next.id(),
            outcome::SUCCESS,
            &format!("{old} -> {} ({n} scope keys rewrapped)", next.id()),
        );
        Ok(next.id().to_string())
    }

    /// Changes a tenant's limits; running calls finish under the old ones.
    pub async fn set_limits(&self, tenant: &str, limits: Limits) -> Result<(), AdminError> {
        self.inner.registry.set_limits(tenant, limits).await
    }

    /// A tenant's limits.
    pub fn limits(&self, tenant: &str) -> Result<Limits, AdminError> {
        self.inner.registry.limits(tenant)
    }

    /// Changes the limits named in `set`, online
    /// (`Registry::update_limits`).
    pub async fn update_limits(
        &self,
        tenant: &str,
        set: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Limits, AdminError> {
        self.inner.registry.update_limits(tenant, set).await
    }

    /// Adds a publisher key to the trust store (`Registry::trust_add`).
    pub async fn trust_add(
        &self,
        key: &ed25519_dalek::VerifyingKey,
        label: &str,
    ) -> Result<KeyId, AdminError> {
        self.inner.registry.trust_add(key, label).await
    }

    /// The trust store, sorted by key id.
    pub fn trusted_keys(&self) -> Vec<TrustedKey> {
        self.inner.registry.trusted_keys()
    }

    /// Revokes a publisher key (`Registry::trust_revoke`).
    pub async fn trust_revoke(
        &self,
        id: &KeyId,
    ) -> Result<Vec<(String, semver::Version)>, AdminError> {
        self.inner.registry.trust_revoke(id).await
    }

    /// Narrows the publishers a tenant accepts
    /// (`Registry::set_publishers`).
    pub async fn set_publishers(
        &self,
        tenant: &str,
        publishers: Option<BTreeSet<KeyId>>,
    ) -> Result<(), AdminError> {
        self.inner.registry.set_publishers(tenant, publishers).await
    }

    /// Disables a plugin for a tenant; its data stays.
    pub async fn disable_plugin(&self, tenant: &str, name: &str) -> Result<(), AdminError> {
        self.inner.registry.disable_plugin(tenant, name).await
    }

    /// Tenant records, sorted by id.
    pub fn tenants(&self) -> Vec<TenantRecord> {
        self.inner.registry.tenants()
    }

    /// Enables (or moves to) `version` of plugin `name` for `tenant`
    /// (`Registry::enable`), refusing a rollback.
    pub async fn enable_plugin(
        &self,
        tenant: &str,
        name: &str,
        version: &semver::Version,
        grants: Option<BTreeSet<Capability>>,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), AdminError> {
        self.inner
            .registry
            .enable(tenant, name, version, grants, config, false)
            .await
    }

    /// `enable_plugin` for a version lower than the tenant has run: the
    /// operator's explicit, audited override of rollback protection
    /// (SPEC S3).
    pub async fn enable_plugin_overriding_rollback(
        &self,
        tenant: &str,
        name: &str,
        version: &semver::Version,
        grants: Option<BTreeSet<Capability>>,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), AdminError> {
        self.inner
            .registry
            .enable(tenant, name, version, grants, config, true)
            .await
    }

    /// The settings of an enabled plugin as its calls see them (defaults
    /// filled in).
    pub fn plugin_config(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AdminError> {
        self.inner.registry.plugin_config(tenant, name)
    }

    /// Replaces the admin's settings of an enabled plugin. Takes effect on
    /// the next call.
    pub async fn set_config(
        &self,
        tenant: &str,
        name: &str,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), AdminError> {
        self.inner.registry.set_config(tenant, name, config).await
    }

    // ---- calls (`kernel`) -----------------------------------------------

    /// The live tenant `id`, or `tenant_not_found` for a call.
    fn live(&self, tenant: &str) -> Result<Arc<TenantState>, CallError> {
        self.inner
            .tenants
            .get(tenant)
            .ok_or_else(|| CallError::TenantNotFound(tenant.into()))
    }

    /// Calls plugin `plugin` of `tenant` with `request`. The request's
    /// principal must belong to `tenant`.
    pub async fn handle(
        &self,
        tenant: &str,
        plugin: &str,
        mut request: Request,
    ) -> Result<Response, CallError> {
        if request.principal.tenant != tenant {
            return Err(CallError::Internal(format!(
                "a principal of tenant {:?} cannot call tenant {tenant:?}",
                request.principal.tenant
            )));
        }
        if request.request_id.is_empty() {
            request.request_id = crate::support::encoding::request_id();
        }
        let t = self.live(tenant)?;
        let principal = request.principal.clone();
        match self
            .inner
            .kernel
            .call(t, plugin, principal, || Invocation::Handle(request.clone()))
            .await?
        {
            Outcome::Response(r) => Ok(r),
            _ => Err(CallError::Internal("handle returned no response".into())),
        }
    }

    /// What the gateway needs before calling `plugin` of `tenant` at
    /// `method path`: whether it is a public route of the enabled
    /// version's manifest, and the tenant's request rate.
    pub fn plugin_route(
        &self,
        tenant: &str,
        plugin: &str,
        method: &str,
        path: &str,
    ) -> Result<RouteInfo, CallError> {
        let t = self.live(tenant)?;
        let enabled = t.enabled_plugin(plugin)?;
        Ok(RouteInfo {
            public: enabled.plugin.manifest.is_public_route(method, path),
            requests_per_second: t.record.limits.requests_per_second,
        })
    }

    /// The plugin's self-description (plugin API ≥ 0.2.0); `None` for
    /// plugins built against 0.1.0.
    pub async fn describe(&self, tenant: &str, plugin: &str) -> Result<Option<String>, CallError> {
        let t = self.live(tenant)?;
        match self
            .inner
            .kernel
            .call(t, plugin, Principal::system(tenant), || {
                Invocation::Describe
            })
            .await?
        {
            Outcome::Description(d) => Ok(d),
            _ => Ok(None),
        }
    }

    /// Delivers an event to a plugin's `on-event`.
    pub async fn deliver_event(
        &self,
        tenant: &str,
        plugin: &str,
        event: Event,
    ) -> Result<(), CallError> {
        let t = self.live(tenant)?;
        self.inner
            .kernel
            .call(t, plugin, Principal::system(tenant), || {
                Invocation::Event(event.clone())
            })
            .await
            .map(|_| ())
    }
}

/// Opens the store with the configured master key, finishing a master key
/// rotation that stopped half-way.
fn open_store(config: &RuntimeConfig) -> anyhow::Result<DataStore> {
    use anyhow::Context as _;
    let source = config.master_source();
    let master = source.load(true).context("cannot load the master key")?;
    // A rotation that stopped half-way left its new key next to the old.
    let next_file = next_key_file(config);
    let next_master = match &source {
        MasterKeySource::File(_) if next_file.exists() => Some(
            crate::store::crypt::load_key_file(&next_file, false)
                .context("cannot load the master key of an interrupted rotation")?,
        ),
        _ => None,
    };
    let finishing = next_master.is_some();
    let store = DataStore::open(StoreConfig {
        dir: config.data_dir.join("store"),
        regions: config.regions.clone(),
        master,
        next_master,
        track_changes: config.track_changes,
    })?;
    if finishing {
        std::fs::rename(&next_file, config.master_key_file())
            .context("cannot finish the interrupted master key rotation")?;
        tracing::warn!("finished an interrupted master key rotation");
    }
    Ok(store)
}

/// Where a master key rotation writes the new key first.
fn next_key_file(config: &RuntimeConfig) -> PathBuf {
    let mut name = config.master_key_file().into_os_string();
    name.push(".next");
    PathBuf::from(name)
}
