//! The plugin runtime: one wasmtime `Engine` (pooling allocator, epoch
//! interruption, Cranelift), the installed plugins compiled once per digest
//! (`cache`), the tenant registry with each tenant's enabled plugins linked
//! for its grant set, and the call path.
//!
//! Every call gets a fresh `Store` instantiated from a cached `InstancePre`
//! (no state survives a call), an epoch deadline, a memory cap and a
//! transaction (`txn`) that commits only when the call returns. A trap
//! fails only that call (SPEC K6). Calls of one tenant are bounded by its
//! concurrency slots; all calls by the host's pool.
//!
//! Wiring: `main` and the test harness call `Runtime::open`, then the admin
//! methods (install, tenants, enable) and `handle`. `scheduler::start`
//! runs the background loops over a `WeakRuntime`; the epoch ticker thread
//! starts with `open`.

pub mod cache;
pub mod data;
pub mod engine;
pub mod error;
pub mod state;
pub mod v0_1;
pub mod v0_2;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use switchboard_signing::package::Trust;
use switchboard_signing::{Capability, KeyId, Manifest, Package, component_digest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

pub use self::cache::CacheOutcome;
use self::engine::EngineConfig;
pub use self::error::{AdminError, CallError};
use self::state::HostState;
use crate::audit::{AuditLog, Scope, outcome};
use crate::call::txn::{CommitError, CommitLocks, Quota, Txn};
use crate::call::types::is_host_header;
pub use crate::call::types::{
    Event, Invocation, Kind, Method, Outcome, Principal, Request, Response, Role, RouteInfo,
};
use crate::call::{CallSpec, CpuTurn, PreHandle, Services};
pub use crate::call::{EnabledPlugin, LoadedPlugin, TenantState};
use crate::capability::{self, timers};
use crate::identity::{Identity, IdentityConfig};
use crate::store::crypt::{MasterKey, MasterKeySource};
use crate::store::{Store as DataStore, StoreConfig, StoreError, keys};
use crate::tenant::{Enablement, Limits, TenantRecord, is_valid_tenant_id};
use crate::trust::{TrustStore, TrustedKey};

/// Attempts of a call whose transaction keeps conflicting.
const MAX_COMMIT_ATTEMPTS: u32 = 32;

pub use crate::identity::DEFAULT_PUBLIC_URL;
use crate::support::sync::Recover as _;

/// How the runtime is set up. `Default` gives the embedded defaults.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where the store, compile cache and host keys live.
    pub data_dir: PathBuf,
    /// Calls running at once across all tenants (nested calls included
    /// in the pool below, not here).
    pub max_concurrent_calls: u32,
    /// Linear memory one instance may ever use (the pool's slot size); a
    /// tenant's `memory_bytes` must not exceed it.
    pub max_memory_bytes: u64,
    /// Largest component accepted at install.
    pub max_component_bytes: usize,
    /// Limits of tenants created without their own.
    pub default_limits: Limits,
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
}

impl RuntimeConfig {
    /// The defaults, rooted at `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> RuntimeConfig {
        RuntimeConfig {
            data_dir: data_dir.into(),
            max_concurrent_calls: 256,
            max_memory_bytes: 256 << 20,
            max_component_bytes: 32 << 20,
            default_limits: Limits::default(),
            regions: vec!["local".into()],
            master_key: MasterKeySource::File(PathBuf::new()),
            track_changes: true,
            identity: IdentityConfig::default(),
            events: Default::default(),
            http_client: Default::default(),
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

/// A component linked for one grant set, through the adapter of the plugin
/// API version it was built against (SPEC K8).
#[derive(Clone)]
pub enum Linked {
    V0_1(v0_1::Pre),
    V0_2(v0_2::Pre),
}

impl Linked {
    /// Checks the exports against the world of `api` and wraps them.
    fn new(
        api: &semver::Version,
        pre: wasmtime::component::InstancePre<HostState>,
    ) -> wasmtime::Result<Linked> {
        match (api.major, api.minor) {
            (0, 1) => v0_1::pre(pre).map(Linked::V0_1),
            (0, 2) => v0_2::pre(pre).map(Linked::V0_2),
            _ => Err(wasmtime::format_err!(
                "plugin API {api} is not supported by this host"
            )),
        }
    }
}

/// Plugin API versions this host links.
pub const SUPPORTED_API_VERSIONS: &[&str] = &[v0_1::API_VERSION, v0_2::API_VERSION];
/// The capability package version every supported API version imports.
pub const HOST_API_VERSION: &str = "0.1.0";
/// The host-side WIT packages a component may import, each with the
/// versions this host serves (the next calls issue adds
/// `switchboard:telephony`).
pub const HOST_PACKAGES: &[(&str, &[&str])] =
    &[("switchboard:host", crate::world::HOST_PACKAGE_VERSIONS)];

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

/// The raised epoch deadline: the call ran past its wall-clock deadline.
#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Installed plugins by (name, version), with how each was loaded.
type PluginTable = HashMap<(String, semver::Version), (Arc<LoadedPlugin>, CacheOutcome)>;

/// The runtime. Cheap to clone; all clones share one engine and store.
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

pub(crate) struct Inner {
    engine: Engine,
    pub(crate) store: Arc<DataStore>,
    cache: cache::CompileCache,
    config: RuntimeConfig,
    plugins: RwLock<PluginTable>,
    tenants: RwLock<HashMap<String, Arc<TenantState>>>,
    trust: TrustStore,
    linkers: Mutex<HashMap<BTreeSet<Capability>, Arc<Linker<HostState>>>>,
    pres: Mutex<HashMap<(String, BTreeSet<Capability>), Linked>>,
    pub(crate) commits: Arc<CommitLocks>,
    pub(crate) trail: Arc<AuditLog>,
    pub(crate) identity: Arc<Identity>,
    pub(crate) events: Arc<crate::events::EventHub>,
    /// The handles calls get (the same store, identity and commit locks).
    services: Arc<Services>,
    /// The capabilities' host-wide state.
    caps: Arc<capability::States>,
    global_slots: Arc<Semaphore>,
    admin: tokio::sync::Mutex<()>,
    backup_lock: tokio::sync::Mutex<()>,
    timer_wake: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Builds the one engine of a host (public so benchmarks can compare a
/// bare wasmtime setup with identical settings).
pub fn build_engine(config: &RuntimeConfig) -> wasmtime::Result<Engine> {
    engine::build(&EngineConfig {
        max_concurrent_calls: config.max_concurrent_calls,
        max_memory_bytes: config.max_memory_bytes,
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
        let source = config.master_source();
        let master = source.load(true).context("cannot load the master key")?;
        // A rotation that stopped half-way left its new key next to the old.
        let next_file = next_key_file(&config);
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
        let cache = cache::CompileCache::open(
            &engine,
            &config.data_dir.join("cache"),
            &config.data_dir.join("keys").join("cache.key"),
        )
        .context("cannot open the compile cache")?;
        let store = Arc::new(store);
        let trail = Arc::new(
            AuditLog::open(
                store.clone(),
                &config.data_dir.join("keys").join("audit.key"),
            )
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
        let caps = Arc::new(capability::States {
            audit: capability::audit::State::new(trail.clone()),
            events: capability::events::State::new(events.clone()),
            http_client,
            timers: capability::timers::State::new(timer_wake.clone()),
        });
        let commits = Arc::new(CommitLocks::default());
        let services = Arc::new(Services {
            store: store.clone(),
            identity: identity.clone(),
            commits: commits.clone(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        engine::spawn_epoch_ticker(engine.clone(), stop.clone());
        let inner = Arc::new(Inner {
            global_slots: Arc::new(Semaphore::new(config.max_concurrent_calls as usize)),
            engine,
            store,
            trail,
            identity,
            events,
            services,
            caps,
            cache,
            config,
            plugins: RwLock::default(),
            tenants: RwLock::default(),
            trust: TrustStore::default(),
            linkers: Mutex::default(),
            pres: Mutex::default(),
            commits,
            admin: tokio::sync::Mutex::new(()),
            backup_lock: tokio::sync::Mutex::new(()),
            timer_wake,
            stop,
        });
        inner.load_trust()?;
        inner.load_plugins()?;
        inner.load_tenants()?;
        inner.resume_reclaims()?;
        Ok(Runtime { inner })
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
        self.inner.cache.file_for(digest)
    }

    /// A handle that does not keep the host open.
    pub fn downgrade(&self) -> WeakRuntime {
        WeakRuntime(Arc::downgrade(&self.inner))
    }

    /// What commits that change the timer queue notify (the scheduler
    /// waits on it).
    pub(crate) fn timer_wake(&self) -> Arc<tokio::sync::Notify> {
        self.inner.timer_wake.clone()
    }

    /// Delivers a host event to every enabled plugin of `tenant` granted
    /// `events`; returns whether every one took it (failures are logged; a
    /// tenant that is gone has nothing to take).
    pub async fn host_event(&self, tenant: &str, kind: &str, data: &[u8]) -> bool {
        match self.inner.tenant(tenant) {
            Some(t) => self.inner.host_event(&t, kind, data).await,
            None => true,
        }
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
        &self.inner.store
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
        self.inner.store.flush()
    }

    // ---- admin ----------------------------------------------------------

    /// Installs a signed plugin package (SPEC S1). Checks format, sizes,
    /// digest, the publisher's trust and revocation, and its signature
    /// before compiling anything; then the component's validity, world and
    /// imports. Nothing is stored unless every check passes. Installing the
    /// same package again is a no-op (deduplicated by digest).
    pub async fn install_package(&self, package: &[u8]) -> Result<PluginInfo, AdminError> {
        let _admin = self.inner.admin.lock().await;
        let result = self.inner.install_package(package);
        match &result {
            Ok(info) => self.inner.audit(
                &Scope::System,
                "plugin.install",
                &format!("{}@{}", info.name, info.version),
                outcome::SUCCESS,
                &format!("sha256:{} publisher {}", info.digest, info.publisher),
            ),
            Err(e) => self.inner.audit(
                &Scope::System,
                "plugin.install",
                "package",
                outcome::FAILURE,
                &format!("{}: {e}", e.code()),
            ),
        }
        result
    }

    /// Installed plugins, sorted by name and version.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        let mut out: Vec<PluginInfo> = self
            .inner
            .read_plugins()
            .values()
            .map(|(p, o)| plugin_info(p, *o))
            .collect();
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    /// Creates a tenant in the default region with the given limits (or
    /// the defaults).
    pub async fn create_tenant(&self, id: &str, limits: Option<Limits>) -> Result<(), AdminError> {
        self.create_tenant_in(id, None, limits).await
    }

    /// Creates a tenant in `region` (SPEC D3; the default region when
    /// `None`) with its own key (SPEC D2).
    pub async fn create_tenant_in(
        &self,
        id: &str,
        region: Option<&str>,
        limits: Option<Limits>,
    ) -> Result<(), AdminError> {
        let _admin = self.inner.admin.lock().await;
        // `system` names the host's own realm (accounts, audit trail).
        if !is_valid_tenant_id(id) || id == "system" {
            return Err(AdminError::InvalidTenantId(id.to_string()));
        }
        if self.inner.tenant(id).is_some() || self.inner.store.tenant_traces(id)? {
            // Also when it exists only on disk (its region is not
            // configured, or its deletion is not finished): creating it
            // again would overwrite its key.
            return Err(AdminError::TenantExists(id.to_string()));
        }
        let limits = limits.unwrap_or_else(|| self.inner.config.default_limits.clone());
        limits
            .validate(self.inner.config.max_memory_bytes)
            .map_err(AdminError::InvalidLimits)?;
        let store = &self.inner.store;
        let region = match region {
            Some(r) => r.to_string(),
            None => store.regions().first().cloned().unwrap_or_default(),
        };
        store
            .place(id, &region)
            .map_err(|e| AdminError::InvalidRegion(e.to_string()))?;
        // Leftovers of a creation that crashed before its key was saved are
        // unreadable; clear them so the new tenant starts empty.
        self.inner.reclaim_data(id)?;
        self.inner.commits.forget(id);
        let key = store.new_tenant_key(id)?;
        let record = TenantRecord {
            id: id.to_string(),
            region: region.clone(),
            limits,
            plugins: Default::default(),
            publishers: None,
            highest: Default::default(),
            retention: Default::default(),
            legal_hold: false,
            incarnation: crate::support::encoding::random_hex(8),
        };
        let state = self.inner.tenant_state(record.clone(), None)?;
        // The record first (region database), then the directory entry and
        // key (system database): a crash in between leaves only an orphan
        // record no key can open, overwritten if the id is created again.
        self.inner.write_record(&record)?;
        let entry = serde_json::to_vec(&TenantDirectory {
            region: region.clone(),
        })
        .map_err(|e| AdminError::Internal(e.to_string()))?;
        store.apply(&[(keys::tenant(id), Some(entry)), key])?;
        store.flush()?;
        self.inner.publish_tenant(state);
        self.inner.audit(
            &Scope::System,
            "tenant.create",
            id,
            outcome::SUCCESS,
            &format!("region {region}"),
        );
        self.inner.audit(
            &Scope::tenant(id),
            "tenant.create",
            id,
            outcome::SUCCESS,
            &format!("region {region}"),
        );
        Ok(())
    }

    /// Deletes a tenant: its key is destroyed first (crypto-shredding,
    /// SPEC D2), so every byte of it left on disk or in backups is
    /// unreadable; then its bytes are deleted from its region.
    /// Refused while the tenant is under legal hold.
    pub async fn delete_tenant(&self, id: &str) -> Result<(), AdminError> {
        let _admin = self.inner.admin.lock().await;
        let current = self.inner.tenant_or_admin_err(id)?;
        if current.record.legal_hold {
            return Err(AdminError::LegalHold(format!("tenant {id}")));
        }
        let store = &self.inner.store;
        let shred = store.shred_tenant_key(id);
        let marker = serde_json::to_vec(&TenantDirectory {
            region: current.record.region.clone(),
        })
        .map_err(|e| AdminError::Internal(e.to_string()))?;
        // Under the tenant's commit lock: a call still running for it can
        // no longer commit once this returns.
        self.inner
            .commits
            .exclusive(id, || -> Result<(), StoreError> {
                store.apply(&[
                    (keys::tenant(id), None),
                    shred,
                    (keys::deleted_tenant(id), Some(marker)),
                ])?;
                store.flush()?;
                store.forget_tenant_key(id);
                self.inner.tenants.write().recover().remove(id);
                Ok(())
            })?;
        self.inner.commits.forget(id);
        self.inner.trail.forget(id);
        self.inner.audit(
            &Scope::System,
            "tenant.delete",
            id,
            outcome::SUCCESS,
            "tenant key destroyed; its data and audit trail are unreadable",
        );
        // Reclaim the (already unreadable) bytes before the id can be
        // reused; a crash midway resumes at the next start.
        let inner = self.inner.clone();
        let tenant = id.to_string();
        tokio::task::spawn_blocking(move || inner.reclaim_tenant(&tenant))
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))??;
        Ok(())
    }

    /// Rotates the master key online (SPEC D2): every scope key is rewrapped
    /// under a new key in one batch; no data is rewritten and calls go on.
    /// With the file source the new key replaces the file (crash-safe: the
    /// new key is written first as `master.key.next`). With an env or
    /// command source, `next` must be supplied and the operator updates the
    /// source afterwards. Returns the new key's id.
    pub async fn rotate_master_key(&self, next: Option<MasterKey>) -> Result<String, AdminError> {
        let _admin = self.inner.admin.lock().await;
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
        let old = self.inner.store.master_key_id();
        let n = self.inner.store.rotate_master(next.clone())?;
        if file_source {
            std::fs::rename(&next_file, config.master_key_file()).map_err(|e| {
                AdminError::Key(format!(
                    "the keys were rewrapped but {} could not replace the key file: {e}; the next start finishes the rotation",
                    next_file.display()
                ))
            })?;
        }
        self.inner.audit(
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
        let max_memory_bytes = self.inner.config.max_memory_bytes;
        self.update_tenant(
            tenant,
            |record| {
                limits
                    .validate(max_memory_bytes)
                    .map_err(AdminError::InvalidLimits)?;
                record.limits = limits;
                Ok(())
            },
            |_| {},
        )
        .await
    }

    /// Under the admin lock: lets `change` edit a copy of `tenant`'s record,
    /// then validates, relinks and stores it, makes it the live state and
    /// runs `after` with what `change` returned (the audit entry, still
    /// under the lock, so entries follow the order of the changes).
    /// Nothing is saved if `change` fails.
    async fn update_tenant<R>(
        &self,
        tenant: &str,
        change: impl FnOnce(&mut TenantRecord) -> Result<R, AdminError>,
        after: impl FnOnce(&R),
    ) -> Result<R, AdminError> {
        let _admin = self.inner.admin.lock().await;
        let current = self.inner.tenant_or_admin_err(tenant)?;
        let mut record = current.record.clone();
        let out = change(&mut record)?;
        self.inner.save_tenant(record, Some(&current))?;
        after(&out);
        Ok(out)
    }

    /// Adds a publisher key to the operator's trust store (SPEC S2). Adding
    /// a key again updates its label; a revoked key cannot come back.
    pub async fn trust_add(
        &self,
        key: &ed25519_dalek::VerifyingKey,
        label: &str,
    ) -> Result<KeyId, AdminError> {
        let _admin = self.inner.admin.lock().await;
        let id = KeyId::of(key);
        let existing = self.inner.trust.get(&id);
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
        self.inner.put_trust(&id, record)?;
        self.inner.audit(
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
        self.inner.trust.all()
    }

    /// Revokes a publisher key: new packages it signed are refused, and
    /// every installed package it signed stops running at once (calls fail
    /// with `publisher_revoked`). Returns those packages.
    pub async fn trust_revoke(
        &self,
        id: &KeyId,
    ) -> Result<Vec<(String, semver::Version)>, AdminError> {
        let _admin = self.inner.admin.lock().await;
        let Some(mut record) = self.inner.trust.get(id) else {
            return Err(AdminError::UnknownKey(id.to_string()));
        };
        if record.revoked_ms.is_none() {
            record.revoked_ms = Some(crate::support::clock::now_ms());
            self.inner.put_trust(id, record)?;
        }
        let mut disabled = Vec::new();
        for (p, _) in self.inner.read_plugins().values() {
            if p.publisher == *id {
                p.revoked.store(true, Ordering::Relaxed);
                disabled.push((p.manifest.name.clone(), p.manifest.version.clone()));
            }
        }
        disabled.sort();
        let names: Vec<String> = disabled.iter().map(|(n, v)| format!("{n} {v}")).collect();
        self.inner.audit(
            &Scope::System,
            "trust.revoke",
            &id.to_string(),
            outcome::SUCCESS,
            &format!("disabled packages: [{}]", names.join(", ")),
        );
        Ok(disabled)
    }

    /// Narrows the publishers a tenant accepts (`None`: all the operator
    /// trusts). Refused while an enabled plugin's publisher would fall
    /// outside the new set.
    pub async fn set_publishers(
        &self,
        tenant: &str,
        publishers: Option<BTreeSet<KeyId>>,
    ) -> Result<(), AdminError> {
        let publishers: Option<BTreeSet<String>> =
            publishers.map(|set| set.iter().map(ToString::to_string).collect());
        self.update_tenant(
            tenant,
            |record| {
                record.publishers = publishers.clone();
                Ok(())
            },
            |_| {
                self.inner.audit(
                    &Scope::tenant(tenant),
                    "tenant.publishers",
                    tenant,
                    outcome::SUCCESS,
                    &format!("{publishers:?}"),
                )
            },
        )
        .await
    }

    /// Disables a plugin for a tenant. Its data stays; enabling it again
    /// brings it back.
    pub async fn disable_plugin(&self, tenant: &str, name: &str) -> Result<(), AdminError> {
        self.update_tenant(
            tenant,
            |record| match record.plugins.remove(name) {
                Some(_) => Ok(()),
                None => Err(AdminError::PluginNotEnabled {
                    tenant: tenant.to_string(),
                    plugin: name.to_string(),
                }),
            },
            |_| {
                self.inner.audit(
                    &Scope::tenant(tenant),
                    "plugin.disable",
                    name,
                    outcome::SUCCESS,
                    "",
                )
            },
        )
        .await
    }

    /// Tenant records, sorted by id.
    pub fn tenants(&self) -> Vec<TenantRecord> {
        let mut out: Vec<TenantRecord> = self
            .inner
            .tenants
            .read()
            .recover()
            .values()
            .map(|t| t.record.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Enables (or moves to) `version` of plugin `name` for `tenant`.
    /// `grants`: `None` grants everything the manifest requests on a first
    /// enable, and keeps the tenant's grants on an upgrade — refusing with
    /// `grants_required` (and the diff) if the new version asks for more.
    /// An empty `config` keeps the current settings. Runs the plugin's
    /// `init` (first enable) or `migrate` (version change) in the same
    /// transaction as the switch: if the hook fails, the tenant keeps what
    /// it had (SPEC K7). Refuses revoked or unaccepted publishers and
    /// rollbacks (SPEC S2, S3).
    pub async fn enable_plugin(
        &self,
        tenant: &str,
        name: &str,
        version: &semver::Version,
        grants: Option<BTreeSet<Capability>>,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), AdminError> {
        self.enable(tenant, name, version, grants, config, false)
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
        self.enable(tenant, name, version, grants, config, true)
            .await
    }

    async fn enable(
        &self,
        tenant: &str,
        name: &str,
        version: &semver::Version,
        grants: Option<BTreeSet<Capability>>,
        config: serde_json::Map<String, serde_json::Value>,
        allow_rollback: bool,
    ) -> Result<(), AdminError> {
        let _admin = self.inner.admin.lock().await;
        let current = self.inner.tenant_or_admin_err(tenant)?;
        let plugin =
            self.inner
                .plugin(name, version)
                .ok_or_else(|| AdminError::PluginNotFound {
                    name: name.to_string(),
                    version: version.to_string(),
                })?;
        if plugin.revoked.load(Ordering::Relaxed) {
            return Err(AdminError::PublisherRevoked {
                name: name.to_string(),
                version: version.to_string(),
                key: plugin.publisher.to_string(),
            });
        }
        let previous_enablement = current.record.plugins.get(name).cloned();
        let previous = previous_enablement.as_ref().map(|e| e.version.clone());
        if let Some(highest) = current.record.highest.get(name)
            && version < highest
        {
            if !allow_rollback {
                return Err(AdminError::RollbackRefused {
                    tenant: tenant.to_string(),
                    plugin: name.to_string(),
                    version: version.to_string(),
                    highest: highest.to_string(),
                });
            }
            self.inner.audit(
                &Scope::tenant(tenant),
                "plugin.rollback-override",
                name,
                outcome::SUCCESS,
                &format!("{highest} -> {version}"),
            );
        }
        let requested: BTreeSet<Capability> =
            plugin.manifest.capabilities.iter().copied().collect();
        let grants = match (grants, &previous_enablement) {
            (Some(g), _) => g,
            (None, None) => requested,
            // An upgrade keeps the grants the admin gave; anything the new
            // version asks for beyond them must be granted explicitly.
            (None, Some(prev)) => {
                let added: Vec<String> = requested
                    .difference(&prev.grants)
                    .map(ToString::to_string)
                    .collect();
                if !added.is_empty() {
                    return Err(AdminError::GrantsRequired {
                        plugin: name.to_string(),
                        version: version.to_string(),
                        added: added.join(", "),
                    });
                }
                prev.grants.intersection(&requested).copied().collect()
            }
        };
        let config = if config.is_empty() {
            previous_enablement.map(|e| e.config).unwrap_or_default()
        } else {
            config
        };
        let mut record = current.record.clone();
        let highest = record
            .highest
            .entry(name.to_string())
            .or_insert_with(|| version.clone());
        if version > highest {
            *highest = version.clone();
        }
        record.plugins.insert(
            name.to_string(),
            Enablement {
                version: version.clone(),
                grants,
                config,
            },
        );
        // Links and validates grants and config before anything runs.
        let state = self.inner.tenant_state(record.clone(), Some(&current))?;
        let hook = match &previous {
            None => Some(Invocation::Init),
            Some(v) if v != version => Some(Invocation::Migrate(v.to_string())),
            Some(_) => None,
        };
        let encoded = encode(&record)?;
        let state = Arc::new(state);
        match hook {
            Some(invocation) => {
                let hook_name = match invocation {
                    Invocation::Init => "init",
                    _ => "migrate",
                };
                // The hook and the switch to the new record commit as one:
                // if the hook fails, neither happens.
                let principal = Principal::system(tenant);
                self.inner
                    .call_top_with(
                        state.clone(),
                        name,
                        principal,
                        || invocation.clone(),
                        |txn| txn.set(keys::tenant_record(tenant), encoded.clone()),
                    )
                    .await
                    .map_err(|source| AdminError::Hook {
                        hook: hook_name,
                        source,
                    })?;
            }
            None => {
                self.inner
                    .apply_locked(tenant, vec![(keys::tenant_record(tenant), Some(encoded))])?;
            }
        }
        self.inner.publish_tenant_arc(state);
        tracing::info!(tenant, plugin = name, %version, "plugin enabled");
        Ok(())
    }

    /// The settings of an enabled plugin as its calls see them (defaults
    /// filled in).
    pub fn plugin_config(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, AdminError> {
        let t = self.inner.tenant_or_admin_err(tenant)?;
        let enabled = t
            .enabled
            .get(name)
            .ok_or_else(|| AdminError::PluginNotEnabled {
                tenant: tenant.to_string(),
                plugin: name.to_string(),
            })?;
        Ok((*enabled.config).clone())
    }

    /// Replaces the admin's settings of an enabled plugin. Takes effect on
    /// the next call.
    pub async fn set_config(
        &self,
        tenant: &str,
        name: &str,
        config: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), AdminError> {
        self.update_tenant(
            tenant,
            |record| {
                let Some(enabled) = record.plugins.get_mut(name) else {
                    return Err(AdminError::PluginNotEnabled {
                        tenant: tenant.to_string(),
                        plugin: name.to_string(),
                    });
                };
                // What changed, by key (values may be sensitive; names are not).
                let mut changed: Vec<&String> = config
                    .iter()
                    .filter(|(k, v)| enabled.config.get(*k) != Some(*v))
                    .map(|(k, _)| k)
                    .chain(enabled.config.keys().filter(|k| !config.contains_key(*k)))
                    .collect();
                changed.sort();
                changed.dedup();
                let details = serde_json::json!({ "changed": changed }).to_string();
                enabled.config = config.clone();
                Ok(details)
            },
            |details| {
                self.inner.audit(
                    &Scope::tenant(tenant),
                    "plugin.config.set",
                    name,
                    outcome::SUCCESS,
                    details,
                )
            },
        )
        .await
        .map(|_| ())
    }

    // ---- calls ----------------------------------------------------------

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
        let t = self
            .inner
            .tenant(tenant)
            .ok_or_else(|| CallError::TenantNotFound(tenant.into()))?;
        let principal = request.principal.clone();
        match self
            .inner
            .call_top(t, plugin, principal, || Invocation::Handle(request.clone()))
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
        let t = self
            .inner
            .tenant(tenant)
            .ok_or_else(|| CallError::TenantNotFound(tenant.into()))?;
        let enabled = t.enabled_plugin(plugin)?;
        Ok(RouteInfo {
            public: enabled.plugin.manifest.is_public_route(method, path),
            requests_per_second: t.record.limits.requests_per_second,
        })
    }

    /// The plugin's self-description (plugin API ≥ 0.2.0); `None` for
    /// plugins built against 0.1.0.
    pub async fn describe(&self, tenant: &str, plugin: &str) -> Result<Option<String>, CallError> {
        let t = self
            .inner
            .tenant(tenant)
            .ok_or_else(|| CallError::TenantNotFound(tenant.into()))?;
        match self
            .inner
            .call_top(t, plugin, Principal::system(tenant), || {
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
        let t = self
            .inner
            .tenant(tenant)
            .ok_or_else(|| CallError::TenantNotFound(tenant.into()))?;
        self.inner
            .call_top(t, plugin, Principal::system(tenant), || {
                Invocation::Event(event.clone())
            })
            .await
            .map(|_| ())
    }

    /// Delivers every timer due now; returns how many were attempted. The
    /// background scheduler calls this; tests may call it directly.
    pub async fn fire_due_timers(&self) -> usize {
        self.inner
            .fire_due_timers(crate::support::clock::now_ms())
            .await
    }

    /// Delivers every timer due by `now_ms` (a time in the future lets
    /// tests see what a long timer does without waiting for it).
    pub async fn fire_timers_due_by(&self, now_ms: u64) -> usize {
        self.inner.fire_due_timers(now_ms).await
    }
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

/// An operator-level audit event. Until the hash-chained audit trail lands
/// (identity issue) these go to the log under target `audit`.
/// A tenant's entry in the system database's directory.
#[derive(serde::Serialize, serde::Deserialize)]
struct TenantDirectory {
    region: String,
}

/// The storage quotas of a tenant.
fn quota_of(record: &TenantRecord) -> Quota {
    Quota {
        tenant_bytes: record.limits.storage_bytes,
        owner_bytes: record.limits.owner_storage_bytes,
    }
}

/// Where a master key rotation writes the new key first.
fn next_key_file(config: &RuntimeConfig) -> PathBuf {
    let mut name = config.master_key_file().into_os_string();
    name.push(".next");
    PathBuf::from(name)
}

impl Inner {
    /// Records an action in a trail, attributed to the acting context
    /// (SPEC I9). A trail that cannot be written is logged loudly; the
    /// action itself has already happened.
    pub(crate) fn audit(
        &self,
        scope: &Scope,
        action: &str,
        target: &str,
        outcome: &str,
        details: &str,
    ) {
        let record = crate::audit::Record {
            action,
            target,
            outcome,
            details,
        };
        if let Err(e) = self.trail.append(scope, record) {
            tracing::error!(target: "audit", action, error = %e, "audit entry lost");
        }
    }
}

fn encode(record: &TenantRecord) -> Result<Vec<u8>, AdminError> {
    serde_json::to_vec(record).map_err(|e| AdminError::Internal(e.to_string()))
}

impl Inner {
    /// Delivers a host event to every enabled plugin of `tenant` granted
    /// `events`; returns whether every one took it (failures are logged).
    async fn host_event(
        self: &Arc<Self>,
        tenant: &Arc<TenantState>,
        kind: &str,
        data: &[u8],
    ) -> bool {
        let mut all = true;
        let mut names: Vec<&String> = tenant
            .enabled
            .iter()
            .filter(|(_, e)| e.grants.contains(&Capability::Events))
            .map(|(name, _)| name)
            .collect();
        names.sort();
        for name in names {
            all &= self.host_event_to(tenant, name, kind, data).await;
        }
        all
    }

    /// Delivers a host event to one enabled plugin of `tenant`; returns
    /// whether it took it (a plugin not enabled has nothing to take).
    pub(crate) async fn host_event_to(
        self: &Arc<Self>,
        tenant: &Arc<TenantState>,
        plugin: &str,
        kind: &str,
        data: &[u8],
    ) -> bool {
        if !tenant.enabled.contains_key(plugin) {
            return true;
        }
        let event = Event {
            source: "host".into(),
            kind: kind.into(),
            data: data.to_vec(),
        };
        let principal = Principal::system(&tenant.record.id);
        match self
            .call_top(tenant.clone(), plugin, principal, || {
                Invocation::Event(event.clone())
            })
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(tenant = %tenant.record.id, plugin, kind, error = %e, "host event not taken");
                false
            }
        }
    }

    fn read_plugins(&self) -> std::sync::RwLockReadGuard<'_, PluginTable> {
        self.plugins.read().recover()
    }

    fn plugin(&self, name: &str, version: &semver::Version) -> Option<Arc<LoadedPlugin>> {
        self.read_plugins()
            .get(&(name.to_string(), version.clone()))
            .map(|(p, _)| p.clone())
    }

    fn put_trust(&self, id: &KeyId, record: TrustedKey) -> Result<(), AdminError> {
        let encoded =
            serde_json::to_vec(&record).map_err(|e| AdminError::Internal(e.to_string()))?;
        self.store
            .apply(&[(keys::trusted_key(&record.key_id), Some(encoded))])?;
        self.trust.insert(*id, record);
        Ok(())
    }

    fn install_package(&self, bytes: &[u8]) -> Result<PluginInfo, AdminError> {
        let package = Package::parse(bytes)?;
        let publisher = package.verify(|id| self.trust.of(id))?;
        let manifest = package.manifest().clone();
        let key = (manifest.name.clone(), manifest.version.clone());
        if let Some((existing, outcome)) = self.read_plugins().get(&key) {
            if existing.digest == package.digest() {
                return Ok(plugin_info(existing, *outcome));
            }
            return Err(AdminError::AlreadyInstalled {
                name: key.0,
                version: key.1.to_string(),
            });
        }
        let (plugin, outcome) = self.load_plugin(manifest, package.component(), publisher)?;
        let version = plugin.manifest.version.to_string();
        self.store.apply(&[(
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

    fn tenant(&self, id: &str) -> Option<Arc<TenantState>> {
        self.tenants.read().recover().get(id).cloned()
    }

    fn tenant_or_admin_err(&self, id: &str) -> Result<Arc<TenantState>, AdminError> {
        self.tenant(id)
            .ok_or_else(|| AdminError::TenantNotFound(id.to_string()))
    }

    /// Validates and links `record`, stores it, and makes it the tenant's
    /// live state.
    fn save_tenant(
        &self,
        record: TenantRecord,
        previous: Option<&TenantState>,
    ) -> Result<(), AdminError> {
        let state = self.tenant_state(record.clone(), previous)?;
        self.write_record(&record)?;
        self.publish_tenant(state);
        Ok(())
    }

    /// Writes a tenant's record (in its region) durably.
    fn write_record(&self, record: &TenantRecord) -> Result<(), AdminError> {
        self.apply_locked(
            &record.id,
            vec![(keys::tenant_record(&record.id), Some(encode(record)?))],
        )?;
        self.store.flush()?;
        Ok(())
    }

    fn publish_tenant(&self, state: TenantState) {
        self.publish_tenant_arc(Arc::new(state));
    }

    fn publish_tenant_arc(&self, state: Arc<TenantState>) {
        self.tenants
            .write()
            .recover()
            .insert(state.record.id.clone(), state);
    }

    /// Validates and compiles a component for `manifest`.
    fn load_plugin(
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
        if !wasmparser_is_component(component) {
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
        let pre = linker
            .instantiate_pre(&compiled)
            .map_err(|e| AdminError::WrongWorld {
                api: manifest.api_version.to_string(),
                reason: format!("{e:#}"),
            })?;
        Linked::new(&manifest.api_version, pre).map_err(|e| AdminError::WrongWorld {
            api: manifest.api_version.to_string(),
            reason: format!("{e:#}"),
        })?;
        // Only a component that passed every check is cached.
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
            let Some((package, versions, rest)) = HOST_PACKAGES.iter().find_map(|(p, v)| {
                name.strip_prefix(p)
                    .and_then(|r| r.strip_prefix('/'))
                    .map(|r| (p, v, r))
            }) else {
                return Err(AdminError::ForeignImport(name.to_string()));
            };
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            let api = manifest.api_version.to_string();
            if !versions.contains(&version) || !SUPPORTED_API_VERSIONS.contains(&api.as_str()) {
                return Err(AdminError::UnsupportedApiVersion(format!(
                    "the component imports {name}, built against {package}@{version}; this host links {package}@{} for plugin API {}",
                    versions.join(" and "),
                    SUPPORTED_API_VERSIONS.join(" and ")
                )));
            }
            if iface == "types" {
                continue;
            }
            let Some(cap) = Capability::from_interface(iface) else {
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
    /// tenant with the same plugin version and grants.
    fn pre_for(
        &self,
        plugin: &LoadedPlugin,
        grants: &BTreeSet<Capability>,
    ) -> Result<Linked, AdminError> {
        for cap in &plugin.imports {
            if !grants.contains(cap) {
                return Err(AdminError::ImportNotGranted {
                    import: format!("switchboard:host/{}@{HOST_API_VERSION}", cap.interface()),
                    capability: cap.to_string(),
                });
            }
        }
        let key = (plugin.digest.clone(), grants.clone());
        if let Some(pre) = self.pres.lock().recover().get(&key) {
            return Ok(pre.clone());
        }
        let linker = self
            .linker(grants)
            .map_err(|e| AdminError::Internal(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&plugin.component)
            .and_then(|pre| Linked::new(&plugin.manifest.api_version, pre))
            .map_err(|e| AdminError::Internal(format!("{e:#}")))?;
        self.pres.lock().recover().insert(key, pre.clone());
        Ok(pre)
    }

    /// Builds the call-path view of a tenant record: checks grants and
    /// config, links each enabled plugin. Keeps `previous`'s slots when the
    /// concurrency limit is unchanged, so in-flight calls stay counted.
    fn tenant_state(
        &self,
        record: TenantRecord,
        previous: Option<&TenantState>,
    ) -> Result<TenantState, AdminError> {
        let mut enabled = HashMap::new();
        for (name, en) in &record.plugins {
            let plugin =
                self.plugin(name, &en.version)
                    .ok_or_else(|| AdminError::PluginNotFound {
                        name: name.clone(),
                        version: en.version.to_string(),
                    })?;
            if let Some(accepted) = &record.publishers
                && !accepted.contains(&plugin.publisher.to_string())
            {
                return Err(AdminError::PublisherNotAccepted {
                    tenant: record.id.clone(),
                    plugin: name.clone(),
                    key: plugin.publisher.to_string(),
                });
            }
            for cap in &en.grants {
                if !plugin.manifest.capabilities.contains(cap) {
                    return Err(AdminError::GrantNotRequested(cap.to_string()));
                }
            }
            let config = plugin.manifest.resolve_config(&en.config)?;
            let pre = self.pre_for(&plugin, &en.grants)?;
            enabled.insert(
                name.clone(),
                Arc::new(EnabledPlugin {
                    plugin,
                    grants: en.grants.clone(),
                    config: Arc::new(config),
                    pre: PreHandle::new(pre),
                }),
            );
        }
        let slots = match previous {
            Some(p) if p.record.limits.concurrency == record.limits.concurrency => p.slots.clone(),
            _ => Arc::new(Semaphore::new(record.limits.concurrency as usize)),
        };
        let cpu = match previous {
            Some(p) => p.cpu.clone(),
            None => Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
        };
        Ok(TenantState {
            record,
            slots,
            cpu,
            enabled,
        })
    }

    fn load_trust(&self) -> anyhow::Result<()> {
        for (key, bytes) in self.scan_all(keys::TRUST)? {
            match serde_json::from_slice::<TrustedKey>(&bytes)
                .ok()
                .and_then(|k| Some((k.id()?, k)))
            {
                Some((id, record)) => {
                    self.trust.insert(id, record);
                }
                None => {
                    tracing::error!(key = %String::from_utf8_lossy(&key), "trust record unreadable; ignoring it")
                }
            }
        }
        Ok(())
    }

    /// Every entry under `prefix`, page by page.
    fn scan_all(&self, prefix: &[u8]) -> Result<Vec<crate::store::Entry>, StoreError> {
        let mut cursor: Option<Vec<u8>> = None;
        let mut out = Vec::new();
        loop {
            let page = self.store.scan(prefix, cursor.as_deref(), 256)?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.0.clone());
            out.extend(page);
        }
        Ok(out)
    }

    /// Loads every installed package, verifying it again: a package whose
    /// publisher was revoked still loads (so its tenants' other plugins keep
    /// running) but is marked revoked and refuses calls.
    fn load_plugins(&self) -> anyhow::Result<()> {
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
                    self.load_plugin(package.manifest().clone(), package.component(), publisher)
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

    fn load_tenants(&self) -> anyhow::Result<()> {
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(keys::TENANTS, cursor.as_deref(), 256)?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.0.clone());
            for (key, bytes) in page {
                let id = String::from_utf8_lossy(&key[keys::TENANTS.len()..]).into_owned();
                let record = serde_json::from_slice::<TenantDirectory>(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|d| self.store.place(&id, &d.region).map_err(|e| e.to_string()))
                    .and_then(|()| {
                        self.store
                            .get(&keys::tenant_record(&id))
                            .map_err(|e| e.to_string())?
                            .ok_or_else(|| "its record is missing".to_string())
                    })
                    .and_then(|raw| {
                        serde_json::from_slice::<TenantRecord>(&raw).map_err(|e| e.to_string())
                    });
                let record = match record {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(tenant = %id, error = %e, "tenant unreadable; skipping it");
                        continue;
                    }
                };
                let mut record = record;
                record.plugins.retain(|name, en| {
                    let present = self.plugin(name, &en.version).is_some();
                    if !present {
                        tracing::error!(tenant = %record.id, plugin = %name, version = %en.version, "enabled plugin is not loaded; the tenant starts without it");
                    }
                    present
                });
                match self.tenant_state(record.clone(), None) {
                    Ok(state) => self.publish_tenant(state),
                    Err(e) => {
                        // Keep the tenant reachable without the plugin that
                        // fails to load, rather than dropping the tenant.
                        tracing::error!(tenant = %record.id, error = %e, "tenant's plugins cannot all be loaded; starting it without them");
                        let mut bare = record;
                        bare.plugins.clear();
                        if let Ok(state) = self.tenant_state(bare, None) {
                            self.publish_tenant(state);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn acquire(
        &self,
        tenant: &TenantState,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), CallError> {
        let wait = Duration::from_millis(tenant.record.limits.queue_timeout_ms);
        let busy = || CallError::Busy(tenant.record.id.clone());
        let local = tokio::time::timeout(wait, tenant.slots.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        let global = tokio::time::timeout(wait, self.global_slots.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        Ok((local, global))
    }

    /// A top-level call: slots, then attempts until the transaction
    /// commits, conflicts too often, or the plugin fails.
    async fn call_top(
        self: &Arc<Self>,
        tenant: Arc<TenantState>,
        plugin: &str,
        principal: Principal,
        invocation: impl Fn() -> Invocation,
    ) -> Result<Outcome, CallError> {
        self.call_top_with(tenant, plugin, principal, invocation, |_| {})
            .await
    }

    /// `call_top` with `prepare` run on each attempt's fresh transaction.
    async fn call_top_with(
        self: &Arc<Self>,
        tenant: Arc<TenantState>,
        plugin: &str,
        principal: Principal,
        invocation: impl Fn() -> Invocation,
        prepare: impl Fn(&mut Txn),
    ) -> Result<Outcome, CallError> {
        let enabled = tenant.enabled_plugin(plugin)?;
        if enabled.plugin.revoked.load(Ordering::Relaxed) {
            return Err(CallError::PublisherRevoked(plugin.to_string()));
        }
        let _permits = self.acquire(&tenant).await?;
        for attempt in 0..MAX_COMMIT_ATTEMPTS {
            let deadline = Instant::now() + Duration::from_millis(tenant.record.limits.deadline_ms);
            let mut txn = Txn::default();
            prepare(&mut txn);
            let invocation = invocation();
            let spec = CallSpec {
                tenant: tenant.clone(),
                plugin: enabled.clone(),
                principal: principal.clone(),
                txn,
                deadline,
                depth: 0,
                request_id: request_id_of(&invocation),
                host_headers: Arc::new(host_headers_of(&invocation)),
                cpu: CpuTurn::new(tenant.cpu.clone()),
            };
            spec.cpu.take().await;
            let (result, txn) = self.run(spec, invocation).await;
            let outcome = result?;
            if let Outcome::Response(r) = &outcome
                && r.status >= 500
            {
                // A server error from the plugin rolls its writes back.
                return Ok(outcome);
            }
            let still_there = || {
                self.tenant(&tenant.record.id)
                    .is_some_and(|now| now.record.incarnation == tenant.record.incarnation)
            };
            match self.commits.commit(
                &tenant.record.id,
                &self.store,
                txn,
                quota_of(&tenant.record),
                still_there,
            ) {
                Ok((seq, effects)) => {
                    // Acknowledge only what is on disk (group commit), and
                    // let effects (audit, events, timers) follow only what
                    // is.
                    if effects.is_empty() {
                        if seq > 0 {
                            self.store.durable(seq).await?;
                        }
                        return Ok(outcome);
                    }
                    // On its own task, in the request's audit context: a
                    // client hanging up (the request future dropped) cannot
                    // lose the effects of writes that were kept.
                    let store = self.store.clone();
                    let tenant_id = tenant.record.id.clone();
                    let finish = crate::audit::with_context(crate::audit::context(), async move {
                        if seq > 0 {
                            store.durable(seq).await?;
                        }
                        effects.apply(&tenant_id);
                        Ok::<(), StoreError>(())
                    });
                    tokio::spawn(finish).await.map_err(|e| {
                        CallError::Internal(format!("commit follow-up failed: {e}"))
                    })??;
                    return Ok(outcome);
                }
                Err(CommitError::Quota(m)) => return Err(CallError::QuotaExceeded(m)),
                Err(CommitError::Gone) => {
                    return Err(CallError::TenantNotFound(tenant.record.id.clone()));
                }
                Err(CommitError::Conflict) => {
                    tracing::debug!(tenant = %tenant.record.id, plugin, attempt, "transaction conflict; re-running the call");
                    backoff(attempt).await;
                }
                Err(CommitError::Store(e)) => return Err(CallError::Store(e)),
            }
        }
        Err(CallError::Conflict(MAX_COMMIT_ATTEMPTS))
    }

    /// One attempt: a fresh store, instantiate, invoke, classify. Returns
    /// the transaction for the caller to commit or drop.
    pub(crate) async fn run(
        self: &Arc<Self>,
        spec: CallSpec,
        invocation: Invocation,
    ) -> (Result<Outcome, CallError>, Txn) {
        let limits = spec.tenant.record.limits.clone();
        let tenant_id = spec.tenant.record.id.clone();
        let plugin_name = spec.plugin.plugin.manifest.name.clone();
        let Some(pre) = spec.plugin.pre.get::<Linked>().cloned() else {
            // Only this kernel makes `EnabledPlugin`s, always with a `Linked`.
            return (
                Err(CallError::Internal(
                    "plugin is not linked by this kernel".into(),
                )),
                spec.txn,
            );
        };
        let state = HostState::new(self.services.clone(), self.clone(), self.caps.clone(), spec);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().call.deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                // Every tick: give the CPU turn to the tenant's next call
                // and the thread to other calls.
                Ok(UpdateDeadline::YieldCustom(1, ctx.data().call.cpu.pass()))
            }
        });
        let result = match &pre {
            Linked::V0_1(p) => v0_1::invoke(p, &mut store, invocation).await,
            Linked::V0_2(p) => v0_2::invoke(p, &mut store, invocation).await,
        };
        let state = store.into_data();
        let (stderr, dropped) = state.stderr.take();
        if !stderr.is_empty() {
            tracing::warn!(
                tenant = %tenant_id,
                plugin = %plugin_name,
                dropped_bytes = dropped,
                "plugin stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        let result = match result {
            Ok(Ok(outcome)) => check_outcome(outcome, &limits),
            Ok(Err(message)) => Err(CallError::Plugin(truncate(&message, 1024))),
            Err(v0_1::Stage::Instantiate(e)) => {
                tracing::error!(tenant = %tenant_id, plugin = %plugin_name, error = %format!("{e:#}"), "instantiation failed");
                Err(CallError::Busy(tenant_id.clone()))
            }
            Err(v0_1::Stage::Call(e)) => Err(classify(e, state.limiter.exceeded, &limits)),
        };
        if let Err(e) = &result {
            tracing::warn!(tenant = %tenant_id, plugin = %plugin_name, code = e.code(), error = %e, "plugin call failed");
        }
        (result, state.call.into_txn())
    }
}

impl crate::call::Kernel for Inner {
    fn run(self: Arc<Self>, spec: CallSpec, invocation: Invocation) -> crate::call::Attempt {
        Box::pin(async move { Inner::run(&self, spec, invocation).await })
    }
}

fn host_headers_of(invocation: &Invocation) -> Vec<(String, String)> {
    match invocation {
        Invocation::Handle(r) => r
            .headers
            .iter()
            .filter(|(k, _)| is_host_header(k))
            .cloned()
            .collect(),
        _ => Vec::new(),
    }
}

fn request_id_of(invocation: &Invocation) -> String {
    match invocation {
        Invocation::Handle(r) if !r.request_id.is_empty() => r.request_id.clone(),
        _ => crate::support::encoding::request_id(),
    }
}

fn check_outcome(outcome: Outcome, limits: &Limits) -> Result<Outcome, CallError> {
    if let Outcome::Response(r) = &outcome {
        if !(100..=599).contains(&r.status) {
            return Err(CallError::BadStatus(r.status));
        }
        let size = r.size_bytes();
        if size as u64 > limits.response_bytes {
            return Err(CallError::ResponseTooLarge {
                size,
                limit: limits.response_bytes,
            });
        }
    }
    Ok(outcome)
}

fn classify(e: wasmtime::Error, memory_exceeded: bool, limits: &Limits) -> CallError {
    if e.is::<DeadlineExceeded>() {
        return CallError::Timeout(limits.deadline_ms);
    }
    if memory_exceeded {
        return CallError::Memory(limits.memory_bytes);
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => CallError::Trap(trap.to_string()),
        None => CallError::Trap(truncate(&format!("{e:#}"), 512)),
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

async fn backoff(attempt: u32) {
    let mut seed = [0u8; 2];
    let _ = getrandom::fill(&mut seed);
    let jitter = u64::from(u16::from_le_bytes(seed));
    let ceiling_us = 50u64 << attempt.min(8);
    tokio::time::sleep(Duration::from_micros(jitter % ceiling_us.max(1))).await;
}

/// Cheap header check before handing bytes to the compiler: a component's
/// preamble is `\0asm` with layer 1.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

impl Inner {
    async fn fire_due_timers(self: &Arc<Self>, now: u64) -> usize {
        let page = match self.store.scan_raw(keys::TIMER_QUEUE, None, 256) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the timer queue");
                return 0;
            }
        };
        let mut fired = 0;
        for (queue_key, _) in page {
            let Some((due, tenant, plugin, id)) = keys::parse_timer_queue(&queue_key) else {
                tracing::error!(key = %String::from_utf8_lossy(&queue_key), "malformed timer queue entry; removing it");
                let _ = self.store.apply(&[(queue_key, None)]);
                continue;
            };
            if due > now {
                break;
            }
            fired += 1;
            self.fire_one(&queue_key, &tenant, &plugin, &id).await;
        }
        fired
    }

    async fn fire_one(self: &Arc<Self>, queue_key: &[u8], tenant: &str, plugin: &str, id: &str) {
        let record_key = keys::timer(tenant, plugin, id);
        let drop_timer = |why: &str| {
            tracing::warn!(tenant, plugin, timer = id, "dropping timer: {why}");
            self.apply_logged(
                tenant,
                vec![(queue_key.to_vec(), None), (record_key.clone(), None)],
            );
        };
        let Some(t) = self.tenant(tenant) else {
            return drop_timer("tenant no longer exists");
        };
        if !t.enabled.contains_key(plugin) {
            return drop_timer("plugin no longer enabled");
        }
        let record: timers::TimerRecord = match self
            .store
            .get(&record_key)
            .ok()
            .flatten()
            .map(|raw| serde_json::from_slice(&raw))
        {
            Some(Ok(r)) => r,
            _ => return drop_timer("timer record missing or unreadable"),
        };
        let payload = hex::decode(&record.payload).unwrap_or_default();
        let store = self.store.clone();
        let timers = &self.caps.timers;
        let result = self
            .call_top_with(
                t.clone(),
                plugin,
                Principal::system(tenant),
                || Invocation::Timer {
                    id: record.id.clone(),
                    name: record.name.clone(),
                    payload: payload.clone(),
                },
                |txn| {
                    // Claim the timer in the same transaction as its effects.
                    let _ = txn.delete(&store, &record_key);
                    let _ = txn.delete(&store, queue_key);
                    txn.push_effect(timers.wake());
                },
            )
            .await;
        if let Err(e) = result {
            let attempts = record.attempts + 1;
            if attempts >= timers::MAX_ATTEMPTS {
                tracing::error!(
                    tenant,
                    plugin,
                    timer = id,
                    code = e.code(),
                    "timer failed {attempts} times; dropped"
                );
                self.apply_logged(tenant, vec![(queue_key.to_vec(), None), (record_key, None)]);
                return;
            }
            let due_ms = crate::support::clock::now_ms() + 1000 * (1u64 << attempts);
            let retry = timers::TimerRecord {
                attempts,
                due_ms,
                ..record
            };
            let writes = match serde_json::to_vec(&retry) {
                Ok(raw) => vec![
                    (queue_key.to_vec(), None),
                    (
                        keys::timer_queue(due_ms, tenant, plugin, id),
                        Some(Vec::new()),
                    ),
                    (record_key, Some(raw)),
                ],
                Err(_) => vec![(queue_key.to_vec(), None), (record_key, None)],
            };
            self.apply_logged(tenant, writes);
        }
    }

    /// Deletes what a deleted tenant left in its region (already unreadable:
    /// its key is gone), then its deletion marker.
    fn reclaim_tenant(&self, id: &str) -> Result<(), StoreError> {
        self.reclaim_data(id)?;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan_raw(keys::TIMER_QUEUE, after.as_deref(), 1024)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, _) in page {
                if keys::tenant_of(&k) == Some(id) {
                    self.store.apply(&[(k, None)])?;
                }
            }
        }
        self.store.apply(&[(keys::deleted_tenant(id), None)])?;
        self.store.flush()?;
        tracing::info!(tenant = id, "deleted tenant's storage reclaimed");
        Ok(())
    }

    /// Deletes every key under `t/{id}/` in the tenant's region.
    fn reclaim_data(&self, id: &str) -> Result<(), StoreError> {
        let prefix = keys::tenant_prefix(id);
        loop {
            let page = self.store.scan_raw(&prefix, None, 1024)?;
            if page.is_empty() {
                return Ok(());
            }
            let deletes: Vec<crate::store::Write> =
                page.into_iter().map(|(k, _)| (k, None)).collect();
            self.store.apply(&deletes)?;
        }
    }

    /// Resumes reclaiming tenants deleted before a restart.
    fn resume_reclaims(&self) -> Result<(), StoreError> {
        for (key, raw) in self.scan_all(keys::DELETED_TENANTS)? {
            let id = String::from_utf8_lossy(&key[keys::DELETED_TENANTS.len()..]).into_owned();
            if let Ok(d) = serde_json::from_slice::<TenantDirectory>(&raw)
                && self.store.place(&id, &d.region).is_ok()
            {
                self.reclaim_tenant(&id)?;
            }
        }
        Ok(())
    }

    /// Applies host-side writes under the tenant's commit lock.
    fn apply_locked(
        &self,
        tenant: &str,
        writes: Vec<crate::store::Write>,
    ) -> Result<(), StoreError> {
        let mut txn = Txn::default();
        for (k, v) in writes {
            match v {
                Some(v) => txn.set(k, v),
                None => txn.set_delete(k),
            }
        }
        // Host bookkeeping is never refused for quota: it only shrinks
        // data or records the tenant's own settings.
        let quota = Quota {
            tenant_bytes: u64::MAX,
            owner_bytes: u64::MAX,
        };
        match self
            .commits
            .commit(tenant, &self.store, txn, quota, || true)
        {
            Ok(_) => Ok(()),
            Err(CommitError::Store(e)) => Err(e),
            // Blind writes record no reads, so they cannot conflict.
            Err(CommitError::Conflict | CommitError::Quota(_) | CommitError::Gone) => Ok(()),
        }
    }

    /// `apply_locked` for bookkeeping whose failure can only be logged.
    fn apply_logged(&self, tenant: &str, writes: Vec<crate::store::Write>) {
        if let Err(e) = self.apply_locked(tenant, writes) {
            tracing::error!(tenant, error = %e, "host bookkeeping write failed");
        }
    }
}
