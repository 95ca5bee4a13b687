//! Tenants (SPEC T1, D2, D3, S3, K7): creating one in a region with its
//! own key, deleting one by destroying its key, its limits and accepted
//! publishers, and the plugins it enables — with grants, settings and the
//! `init`/`migrate` hook committed together with the switch.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use switchboard_signing::{Capability, KeyId};
use tokio::sync::Semaphore;

use super::Registry;
use crate::audit::{Scope, outcome};
use crate::call::types::{Invocation, Principal};
use crate::call::{EnabledPlugin, TenantState};
use crate::kernel::AdminError;
use crate::store::{Store, StoreError, Write, keys};
use crate::tenant::{Enablement, Limits, TenantRecord, is_valid_tenant_id};

/// A tenant's entry in the system database's directory.
#[derive(serde::Serialize, serde::Deserialize)]
struct TenantDirectory {
    region: String,
}

fn encode(record: &TenantRecord) -> Result<Vec<u8>, AdminError> {
    serde_json::to_vec(record).map_err(|e| AdminError::Internal(e.to_string()))
}

impl Registry {
    /// Creates a tenant in `region` (SPEC D3; the default region when
    /// `None`) with its own key (SPEC D2) and the given limits (or the
    /// defaults).
    pub async fn create_tenant_in(
        &self,
        id: &str,
        region: Option<&str>,
        limits: Option<Limits>,
    ) -> Result<(), AdminError> {
        let _admin = self.lock().await;
        // `system` names the host's own realm (accounts, audit trail).
        if !is_valid_tenant_id(id) || id == "system" {
            return Err(AdminError::InvalidTenantId(id.to_string()));
        }
        let store = &self.services().store;
        if self.tenant(id).is_some() || store.tenant_traces(id)? {
            // Also when it exists only on disk (its region is not
            // configured, or its deletion is not finished): creating it
            // again would overwrite its key.
            return Err(AdminError::TenantExists(id.to_string()));
        }
        let limits = limits.unwrap_or_else(|| self.config.default_limits.clone());
        limits
            .validate(self.config.max_memory_bytes)
            .map_err(AdminError::InvalidLimits)?;
        let region = match region {
            Some(r) => r.to_string(),
            None => store.regions().first().cloned().unwrap_or_default(),
        };
        store
            .place(id, &region)
            .map_err(|e| AdminError::InvalidRegion(e.to_string()))?;
        // Leftovers of a creation that crashed before its key was saved are
        // unreadable; clear them so the new tenant starts empty.
        reclaim_data(store, id)?;
        self.services().commits.forget(id);
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
            dialing: Default::default(),
            routes: Vec::new(),
            trunks: Vec::new(),
        };
        let state = self.tenant_state(record.clone(), None)?;
        // The record first (region database), then the directory entry and
        // key (system database): a crash in between leaves only an orphan
        // record no key can open, overwritten if the id is created again.
        self.write_record(&record)?;
        let entry = serde_json::to_vec(&TenantDirectory {
            region: region.clone(),
        })
        .map_err(|e| AdminError::Internal(e.to_string()))?;
        store.apply(&[(keys::tenant(id), Some(entry)), key])?;
        store.flush()?;
        self.tenants.publish(Arc::new(state));
        for scope in [Scope::System, Scope::tenant(id)] {
            self.audit(
                &scope,
                "tenant.create",
                id,
                outcome::SUCCESS,
                &format!("region {region}"),
            );
        }
        Ok(())
    }

    /// Deletes a tenant: its key is destroyed first (crypto-shredding,
    /// SPEC D2), so every byte of it left on disk or in backups is
    /// unreadable; then its bytes are deleted from its region.
    /// Refused while the tenant is under legal hold.
    pub async fn delete_tenant(&self, id: &str) -> Result<(), AdminError> {
        let _admin = self.lock().await;
        let current = self.tenant_or_err(id)?;
        if current.record.legal_hold {
            return Err(AdminError::LegalHold(format!("tenant {id}")));
        }
        let services = self.services();
        let store = &services.store;
        let shred = store.shred_tenant_key(id);
        let marker = serde_json::to_vec(&TenantDirectory {
            region: current.record.region.clone(),
        })
        .map_err(|e| AdminError::Internal(e.to_string()))?;
        // Under the tenant's commit lock: a call still running for it can
        // no longer commit once this returns.
        services
            .commits
            .exclusive(id, || -> Result<(), StoreError> {
                store.apply(&[
                    (keys::tenant(id), None),
                    shred,
                    (keys::deleted_tenant(id), Some(marker)),
                ])?;
                store.flush()?;
                store.forget_tenant_key(id);
                self.tenants.remove(id);
                Ok(())
            })?;
        services.commits.forget(id);
        self.trail.forget(id);
        self.audit(
            &Scope::System,
            "tenant.delete",
            id,
            outcome::SUCCESS,
            "tenant key destroyed; its data and audit trail are unreadable",
        );
        // Reclaim the (already unreadable) bytes before the id can be
        // reused; a crash midway resumes at the next start.
        let store = store.clone();
        let tenant = id.to_string();
        tokio::task::spawn_blocking(move || reclaim_tenant(&store, &tenant))
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))??;
        Ok(())
    }

    /// Changes a tenant's limits; running calls finish under the old ones.
    pub async fn set_limits(&self, tenant: &str, limits: Limits) -> Result<(), AdminError> {
        self.change_limits(tenant, |current| {
            *current = limits;
            Ok(())
        })
        .await
        .map(drop)
    }

    /// A tenant's limits.
    pub fn limits(&self, tenant: &str) -> Result<Limits, AdminError> {
        Ok(self.tenant_or_err(tenant)?.record.limits.clone())
    }

    /// Changes the limits named in `set` (the others stay), online: the
    /// next call runs under them. Unknown names and values out of range
    /// are refused with `invalid_limits`, and nothing changes.
    pub async fn update_limits(
        &self,
        tenant: &str,
        set: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Limits, AdminError> {
        self.change_limits(tenant, |current| {
            let mut merged = match serde_json::to_value(&*current) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => return Err(AdminError::Internal("limits are not an object".into())),
            };
            for (name, value) in set {
                if !merged.contains_key(&name) {
                    return Err(AdminError::InvalidLimits(format!(
                        "unknown limit {name:?}; known: {}",
                        merged.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                merged.insert(name, value);
            }
            *current = serde_json::from_value(serde_json::Value::Object(merged))
                .map_err(|e| AdminError::InvalidLimits(e.to_string()))?;
            Ok(())
        })
        .await
    }

    /// Lets `change` edit the tenant's limits, validates them and saves
    /// them; audits what changed (in the system's and the tenant's trail).
    async fn change_limits(
        &self,
        tenant: &str,
        change: impl FnOnce(&mut Limits) -> Result<(), AdminError>,
    ) -> Result<Limits, AdminError> {
        let max_memory_bytes = self.config.max_memory_bytes;
        self.update_tenant(
            tenant,
            |record| {
                let before = serde_json::to_value(&record.limits).unwrap_or_default();
                change(&mut record.limits)?;
                record
                    .limits
                    .validate(max_memory_bytes)
                    .map_err(AdminError::InvalidLimits)?;
                let after = serde_json::to_value(&record.limits).unwrap_or_default();
                let changed: Vec<String> = after
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| before.get(k.as_str()) != Some(v))
                    .map(|(k, v)| format!("{k} {} -> {v}", before[k.as_str()]))
                    .collect();
                Ok((record.limits.clone(), changed.join(", ")))
            },
            |(_, changed)| {
                for scope in [Scope::System, Scope::tenant(tenant)] {
                    self.audit(&scope, "tenant.limits", tenant, outcome::SUCCESS, changed);
                }
            },
        )
        .await
        .map(|(limits, _)| limits)
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
                self.audit(
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
                self.audit(
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
        self.tenants.records()
    }

    /// Enables (or moves to) `version` of plugin `name` for `tenant`.
    /// `grants`: `None` grants everything the manifest requests on a first
    /// enable, and keeps the tenant's grants on an upgrade — refusing with
    /// `grants_required` (and the diff) if the new version asks for more.
    /// An empty `config` keeps the current settings. Runs the plugin's
    /// `init` (first enable) or `migrate` (version change) in the same
    /// transaction as the switch: if the hook fails, the tenant keeps what
    /// it had (SPEC K7). Refuses revoked or unaccepted publishers, and
    /// rollbacks unless `allow_rollback` (the operator's explicit, audited
    /// override; SPEC S2, S3).
    pub async fn enable(
        &self,
        tenant: &str,
        name: &str,
        version: &semver::Version,
        grants: Option<BTreeSet<Capability>>,
        config: serde_json::Map<String, serde_json::Value>,
        allow_rollback: bool,
    ) -> Result<(), AdminError> {
        let _admin = self.lock().await;
        let current = self.tenant_or_err(tenant)?;
        let plugin = self
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
            self.audit(
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
        let state = Arc::new(self.tenant_state(record.clone(), Some(&current))?);
        let hook = match &previous {
            None => Some(Invocation::Init),
            Some(v) if v != version => Some(Invocation::Migrate(v.to_string())),
            Some(_) => None,
        };
        let encoded = encode(&record)?;
        match hook {
            Some(invocation) => {
                let hook_name = match invocation {
                    Invocation::Init => "init",
                    _ => "migrate",
                };
                // The hook and the switch to the new record commit as one:
                // if the hook fails, neither happens.
                let principal = Principal::system(tenant);
                self.kernel
                    .call_with(
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
                self.services()
                    .apply_locked(tenant, vec![(keys::tenant_record(tenant), Some(encoded))])?;
            }
        }
        self.tenants.publish(state);
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
        let t = self.tenant_or_err(tenant)?;
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
                self.audit(
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

    /// Validates and links `record`, stores it, and makes it the tenant's
    /// live state.
    pub(super) fn save_tenant(
        &self,
        record: TenantRecord,
        previous: Option<&TenantState>,
    ) -> Result<(), AdminError> {
        let state = self.tenant_state(record.clone(), previous)?;
        self.write_record(&record)?;
        self.tenants.publish(Arc::new(state));
        Ok(())
    }

    /// Writes a tenant's record (in its region) durably.
    fn write_record(&self, record: &TenantRecord) -> Result<(), AdminError> {
        let services = self.services();
        services.apply_locked(
            &record.id,
            vec![(keys::tenant_record(&record.id), Some(encode(record)?))],
        )?;
        services.store.flush()?;
        Ok(())
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
            let pre = self.kernel.link(&plugin, &en.grants)?;
            enabled.insert(
                name.clone(),
                Arc::new(EnabledPlugin {
                    plugin,
                    grants: en.grants.clone(),
                    config: Arc::new(config),
                    pre,
                }),
            );
        }
        let slots = match previous {
            Some(p) if p.record.limits.concurrency == record.limits.concurrency => p.slots.clone(),
            _ => Arc::new(Semaphore::new(record.limits.concurrency as usize)),
        };
        // The executor share survives changes, so the tenant's standing
        // carries over; its weight follows the record when published.
        let share = match previous {
            Some(p) => p.share.clone(),
            None => self
                .kernel
                .fair()
                .share(&record.id, record.limits.cpu_share),
        };
        Ok(TenantState {
            record,
            slots,
            share,
            enabled,
        })
    }

    /// Loads every tenant of the directory. A tenant whose record cannot
    /// be read is skipped; one whose plugins cannot all be loaded starts
    /// without them (logged), rather than not at all.
    pub(super) fn load_tenants(&self) -> anyhow::Result<()> {
        let store = &self.services().store;
        for (key, bytes) in self.scan_all(keys::TENANTS)? {
            let id = String::from_utf8_lossy(&key[keys::TENANTS.len()..]).into_owned();
            let record = serde_json::from_slice::<TenantDirectory>(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|d| store.place(&id, &d.region).map_err(|e| e.to_string()))
                .and_then(|()| {
                    store
                        .get(&keys::tenant_record(&id))
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| "its record is missing".to_string())
                })
                .and_then(|raw| {
                    serde_json::from_slice::<TenantRecord>(&raw).map_err(|e| e.to_string())
                });
            let mut record = match record {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(tenant = %id, error = %e, "tenant unreadable; skipping it");
                    continue;
                }
            };
            record.plugins.retain(|name, en| {
                let present = self.plugin(name, &en.version).is_some();
                if !present {
                    tracing::error!(tenant = %record.id, plugin = %name, version = %en.version, "enabled plugin is not loaded; the tenant starts without it");
                }
                present
            });
            match self.tenant_state(record.clone(), None) {
                Ok(state) => self.tenants.publish(Arc::new(state)),
                Err(e) => {
                    // Keep the tenant reachable without the plugin that
                    // fails to load, rather than dropping the tenant.
                    tracing::error!(tenant = %record.id, error = %e, "tenant's plugins cannot all be loaded; starting it without them");
                    let mut bare = record;
                    bare.plugins.clear();
                    if let Ok(state) = self.tenant_state(bare, None) {
                        self.tenants.publish(Arc::new(state));
                    }
                }
            }
        }
        Ok(())
    }

    /// Resumes reclaiming tenants deleted before a restart.
    pub(super) fn resume_reclaims(&self) -> Result<(), StoreError> {
        let store = &self.services().store;
        for (key, raw) in self.scan_all(keys::DELETED_TENANTS)? {
            let id = String::from_utf8_lossy(&key[keys::DELETED_TENANTS.len()..]).into_owned();
            if let Ok(d) = serde_json::from_slice::<TenantDirectory>(&raw)
                && store.place(&id, &d.region).is_ok()
            {
                reclaim_tenant(store, &id)?;
            }
        }
        Ok(())
    }
}

/// Deletes what a deleted tenant left in its region (already unreadable:
/// its key is gone), then its deletion marker.
fn reclaim_tenant(store: &Store, id: &str) -> Result<(), StoreError> {
    reclaim_data(store, id)?;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan_raw(keys::TIMER_QUEUE, after.as_deref(), 1024)?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        for (k, _) in page {
            if keys::tenant_of(&k) == Some(id) {
                store.apply(&[(k, None)])?;
            }
        }
    }
    store.apply(&[(keys::deleted_tenant(id), None)])?;
    store.flush()?;
    tracing::info!(tenant = id, "deleted tenant's storage reclaimed");
    Ok(())
}

/// Deletes every key under `t/{id}/` in the tenant's region.
fn reclaim_data(store: &Store, id: &str) -> Result<(), StoreError> {
    let prefix = keys::tenant_prefix(id);
    loop {
        let page = store.scan_raw(&prefix, None, 1024)?;
        if page.is_empty() {
            return Ok(());
        }
        let deletes: Vec<Write> = page.into_iter().map(|(k, _)| (k, None)).collect();
        store.apply(&deletes)?;
    }
}
