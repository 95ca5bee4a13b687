//! The tenant and plugin registry: installed packages (`plugins`), the
//! operator's trust store (`trust::TrustStore`, kept here), and tenants
//! with the plugins each enabled, granted and configured (`tenants`).
//!
//! Every change runs under one admin lock, is validated and linked (by the
//! kernel) before anything is stored, is written durably, then published
//! to the live table the kernel reads (`call::Tenants`), and is audited in
//! the order applied.

pub mod plugins;
pub mod tenants;

use std::sync::{Arc, RwLock};

use switchboard_signing::KeyId;

pub use self::plugins::PluginInfo;
use self::plugins::PluginTable;
use crate::audit::{AuditLog, Scope};
use crate::call::{Services, TenantState, Tenants};
use crate::kernel::{AdminError, Kernel};
use crate::store::{Entry, StoreError, keys};
use crate::support::sync::Recover as _;
use crate::tenant::{Limits, TenantRecord};
use crate::trust::{TrustStore, TrustedKey};

/// How the registry is set up (the host's `RuntimeConfig` fills it in).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Linear memory one instance may ever use: a tenant's `memory_bytes`
    /// must not exceed it.
    pub max_memory_bytes: u64,
    /// Limits of tenants created without their own.
    pub default_limits: Limits,
}

/// The registry.
pub struct Registry {
    kernel: Arc<Kernel>,
    trail: Arc<AuditLog>,
    tenants: Arc<Tenants>,
    plugins: RwLock<PluginTable>,
    trust: TrustStore,
    admin: tokio::sync::Mutex<()>,
    config: RegistryConfig,
}

impl Registry {
    /// Loads the trust store, every installed package and every tenant,
    /// and resumes reclaiming tenants deleted before a restart. What cannot
    /// be loaded is logged and skipped, never fatal.
    pub fn open(
        config: RegistryConfig,
        kernel: Arc<Kernel>,
        trail: Arc<AuditLog>,
        tenants: Arc<Tenants>,
    ) -> anyhow::Result<Registry> {
        let registry = Registry {
            kernel,
            trail,
            tenants,
            plugins: RwLock::default(),
            trust: TrustStore::default(),
            admin: tokio::sync::Mutex::new(()),
            config,
        };
        registry.load_trust()?;
        registry.load_plugins()?;
        registry.load_tenants()?;
        registry.resume_reclaims()?;
        Ok(registry)
    }

    /// Takes the admin lock: one change at a time, audited in order.
    pub(crate) async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.admin.lock().await
    }

    fn services(&self) -> &Services {
        self.kernel.services()
    }

    /// The live tenant `id`, if it exists.
    pub(crate) fn tenant(&self, id: &str) -> Option<Arc<TenantState>> {
        self.tenants.get(id)
    }

    /// Every live tenant, in no order.
    pub(crate) fn states(&self) -> Vec<Arc<TenantState>> {
        self.tenants.states()
    }

    /// The live tenant `id`, or `tenant_not_found`.
    pub(crate) fn tenant_or_err(&self, id: &str) -> Result<Arc<TenantState>, AdminError> {
        self.tenant(id)
            .ok_or_else(|| AdminError::TenantNotFound(id.to_string()))
    }

    /// Under the admin lock: lets `change` edit a copy of `tenant`'s record,
    /// then validates, relinks and stores it, makes it the live state and
    /// runs `after` with what `change` returned (the audit entry, still
    /// under the lock, so entries follow the order of the changes).
    /// Nothing is saved if `change` fails.
    pub(crate) async fn update_tenant<R>(
        &self,
        tenant: &str,
        change: impl FnOnce(&mut TenantRecord) -> Result<R, AdminError>,
        after: impl FnOnce(&R),
    ) -> Result<R, AdminError> {
        let _admin = self.lock().await;
        let current = self.tenant_or_err(tenant)?;
        let mut record = current.record.clone();
        let out = change(&mut record)?;
        self.save_tenant(record, Some(&current))?;
        after(&out);
        Ok(out)
    }

    /// Records an action in a trail, attributed to the acting context
    /// (SPEC I9); the action itself has already happened.
    pub(crate) fn audit(
        &self,
        scope: &Scope,
        action: &str,
        target: &str,
        outcome: &str,
        details: &str,
    ) {
        self.trail.note(scope, action, target, outcome, details);
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

    fn put_trust(&self, id: &KeyId, record: TrustedKey) -> Result<(), AdminError> {
        let encoded =
            serde_json::to_vec(&record).map_err(|e| AdminError::Internal(e.to_string()))?;
        self.services()
            .store
            .apply(&[(keys::trusted_key(&record.key_id), Some(encoded))])?;
        self.trust.insert(*id, record);
        Ok(())
    }

    /// Every entry under `prefix`, page by page.
    fn scan_all(&self, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let mut cursor: Option<Vec<u8>> = None;
        let mut out = Vec::new();
        loop {
            let page = self.services().store.scan(prefix, cursor.as_deref(), 256)?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.0.clone());
            out.extend(page);
        }
        Ok(out)
    }

    fn read_plugins(&self) -> std::sync::RwLockReadGuard<'_, PluginTable> {
        self.plugins.read().recover()
    }
}
