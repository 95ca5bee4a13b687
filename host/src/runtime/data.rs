//! Data protection on the runtime (SPEC D2, D4, K5): legal holds,
//! retention policies and their sweeper, reclaiming the chunks of deleted
//! blobs, and storage usage. Every change here is audited.

use std::sync::Arc;

use super::{AdminError, Inner, Runtime};
use crate::audit::{Scope, outcome};
use crate::call::txn::Txn;
use crate::capability::blobs::{self, BlobMeta};
use crate::store::{StoreError, keys};

/// What one retention sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Blobs deleted because their retention ended.
    pub deleted: u64,
    /// Expired blobs kept because of an object hold.
    pub held_objects: u64,
    /// Tenants skipped entirely because of a tenant hold.
    pub held_tenants: u64,
    /// What was deleted: (tenant, plugin, blob id, class). Each owning
    /// plugin is told (host event `blob.expired`).
    pub expired: Vec<(String, String, String, String)>,
}

/// A tenant's storage use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Bytes stored (keys and sealed values and chunks).
    pub bytes: u64,
    /// The tenant's quota.
    pub quota_bytes: u64,
}

const DAY_MS: u64 = 86_400_000;
/// Longest retention period accepted (100 years).
const MAX_RETENTION_DAYS: u32 = 36_500;

impl Runtime {
    /// Puts a tenant under legal hold (or releases it): while held nothing
    /// of it is deleted — not by retention, not by its plugins, not by
    /// deleting the tenant.
    pub async fn set_legal_hold(&self, tenant: &str, on: bool) -> Result<(), AdminError> {
        self.inner
            .registry
            .update_tenant(
                tenant,
                |record| {
                    record.legal_hold = on;
                    Ok(())
                },
                |_| {
                    self.inner.trail.note(
                        &Scope::tenant(tenant),
                        if on {
                            "hold.tenant.set"
                        } else {
                            "hold.tenant.release"
                        },
                        tenant,
                        outcome::SUCCESS,
                        "",
                    )
                },
            )
            .await
    }

    /// Puts one blob under legal hold (or releases it).
    pub async fn set_blob_hold(
        &self,
        tenant: &str,
        plugin: &str,
        blob: &str,
        on: bool,
    ) -> Result<(), AdminError> {
        let _admin = self.inner.registry.lock().await;
        self.inner.registry.tenant_or_err(tenant)?;
        let what = format!("blob {blob} of plugin {plugin} in tenant {tenant}");
        if !blobs::is_valid_id(blob) || !crate::tenant::is_valid_tenant_id(plugin) {
            return Err(AdminError::NotFound(what));
        }
        let key = keys::blob_meta(tenant, plugin, blob);
        // Read and write in one transaction, so a concurrent append or
        // delete is never overwritten (a conflict re-reads).
        let mut attempts = 0;
        loop {
            let mut txn = Txn::default();
            let Some(raw) = txn.get(self.inner.store(), &key)? else {
                return Err(AdminError::NotFound(what));
            };
            let mut meta: BlobMeta =
                serde_json::from_slice(&raw).map_err(|e| AdminError::Internal(e.to_string()))?;
            meta.hold = on;
            let raw = serde_json::to_vec(&meta).map_err(|e| AdminError::Internal(e.to_string()))?;
            txn.set(key.clone(), raw);
            match self.inner.commit_host(tenant, txn) {
                Ok(true) => break,
                Ok(false) if attempts < 16 => attempts += 1,
                Ok(false) => return Err(AdminError::Internal("the blob kept changing".into())),
                Err(e) => return Err(e.into()),
            }
        }
        self.inner.store().flush()?;
        self.inner.trail.note(
            &Scope::tenant(tenant),
            if on {
                "hold.object.set"
            } else {
                "hold.object.release"
            },
            &what,
            outcome::SUCCESS,
            "",
        );
        Ok(())
    }

    /// Sets how long objects of `class` are kept: `Some(days)`, or `None`
    /// to keep them until deleted. Overrides the default of SPEC D4.
    pub async fn set_retention(
        &self,
        tenant: &str,
        class: &str,
        days: Option<u32>,
    ) -> Result<(), AdminError> {
        self.inner
            .registry
            .update_tenant(
                tenant,
                |record| {
                    if !crate::tenant::is_valid_class(class) {
                        return Err(AdminError::InvalidRetention(format!(
                            "class {class:?} must be 1-32 of [a-z0-9-], starting with a letter"
                        )));
                    }
                    if let Some(d) = days
                        && (d == 0 || d > MAX_RETENTION_DAYS)
                    {
                        return Err(AdminError::InvalidRetention(format!(
                            "days must be between 1 and {MAX_RETENTION_DAYS}"
                        )));
                    }
                    record.retention.insert(class.to_string(), days);
                    Ok(())
                },
                |_| {
                    self.inner.trail.note(
                        &Scope::tenant(tenant),
                        "retention.policy",
                        class,
                        outcome::SUCCESS,
                        &days.map_or("keep".to_string(), |d| format!("{d} days")),
                    )
                },
            )
            .await
    }

    /// The effective retention policy (defaults included) and hold.
    pub fn retention_policy(
        &self,
        tenant: &str,
    ) -> Result<(std::collections::BTreeMap<String, Option<u32>>, bool), AdminError> {
        let t = self.inner.registry.tenant_or_err(tenant)?;
        Ok((t.record.retention_policy(), t.record.legal_hold))
    }

    /// A tenant's storage use.
    pub fn storage_usage(&self, tenant: &str) -> Result<Usage, AdminError> {
        let t = self.inner.registry.tenant_or_err(tenant)?;
        let (bytes, _) = self
            .inner
            .services()
            .commits
            .usage(tenant, None, self.inner.store())?;
        Ok(Usage {
            bytes,
            quota_bytes: t.record.limits.storage_bytes,
        })
    }

    /// Bytes of blobs `owner` stores in `tenant`.
    pub fn owner_usage(&self, tenant: &str, owner: &str) -> Result<u64, AdminError> {
        self.inner.registry.tenant_or_err(tenant)?;
        Ok(self
            .inner
            .services()
            .commits
            .usage(tenant, Some(owner), self.inner.store())?
            .1)
    }

    /// Deletes every blob whose retention ended at `now_ms`, except under
    /// hold, then reclaims deleted blobs' chunks.
    pub async fn sweep_retention(&self, now_ms: u64) -> Result<SweepReport, StoreError> {
        sweep_and_tell(&self.inner, now_ms).await
    }

    /// Reclaims the chunks of deleted blobs now (normally done in the
    /// background); returns how many chunks were deleted.
    pub async fn reclaim_blobs(&self) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            for t in inner.tenant_ids() {
                n += inner.reclaim_blobs(&t)?;
            }
            Ok(n)
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?
    }
}

impl Inner {
    fn tenant_ids(&self) -> Vec<String> {
        self.tenants.ids()
    }

    fn sweep_retention(&self, now: u64) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        for id in self.tenant_ids() {
            let Some(t) = self.tenants.get(&id) else {
                continue;
            };
            if t.record.legal_hold {
                report.held_tenants += 1;
                continue;
            }
            for (class, days) in t.record.retention_policy() {
                let Some(days) = days else { continue };
                let cutoff = now.saturating_sub(u64::from(days) * DAY_MS);
                if class == "audit" {
                    // The tenant's trail, pruned to a signed checkpoint
                    // (SPEC I9: default 7 years).
                    match self.trail.prune(&Scope::tenant(&id), cutoff) {
                        Ok(n) => report.deleted += n,
                        Err(e) => tracing::error!(tenant = %id, error = %e, "audit pruning failed"),
                    }
                    continue;
                }
                if class == "cdr" {
                    // Call records: plain entries ordered by end time.
                    report.deleted += self.prune_call_records(&id, cutoff)?;
                    continue;
                }
                self.sweep_class(&id, &class, cutoff, &mut report)?;
            }
            self.reclaim_blobs(&id)?;
        }
        for id in self.tenant_ids() {
            // Expired sign-in codes, tokens and pending sign-ons.
            if let Err(e) = crate::identity::oidc::sweep_expired(self.store(), &id, now) {
                tracing::error!(tenant = %id, error = %e, "sweeping expired sign-in records failed");
            }
        }
        let audit_days = crate::tenant::DEFAULT_RETENTION
            .iter()
            .find(|(c, _)| *c == "audit")
            .map_or(7 * 365 + 2, |(_, d)| *d);
        if let Err(e) = self.trail.prune(
            &Scope::System,
            now.saturating_sub(u64::from(audit_days) * DAY_MS),
        ) {
            tracing::error!(error = %e, "pruning the system audit trail failed");
        }
        Ok(report)
    }

    /// Deletes a tenant's call records that ended before `cutoff`.
    fn prune_call_records(&self, tenant: &str, cutoff: u64) -> Result<u64, StoreError> {
        let prefix = keys::call_record_prefix(tenant);
        let mut deleted = 0;
        loop {
            let page = self.store().scan_raw(&prefix, None, 256)?;
            let old: Vec<Vec<u8>> = page
                .into_iter()
                .map(|(k, _)| k)
                .take_while(|k| {
                    keys::parse_call_record(&k[prefix.len()..]).is_some_and(|ended| ended < cutoff)
                })
                .collect();
            if old.is_empty() {
                return Ok(deleted);
            }
            deleted += old.len() as u64;
            self.services()
                .apply_locked(tenant, old.into_iter().map(|k| (k, None)).collect())?;
        }
    }

    fn sweep_class(
        &self,
        tenant: &str,
        class: &str,
        cutoff: u64,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let prefix = keys::retention_prefix(tenant, class);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store().scan_raw(&prefix, after.as_deref(), 256)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.0.clone());
            for (index_key, _) in page {
                let Some((created, plugin, id)) = keys::parse_retention(&index_key[prefix.len()..])
                else {
                    continue;
                };
                if created > cutoff {
                    return Ok(());
                }
                // One bad object must not stop retention for everyone.
                if let Err(e) = self.expire(tenant, class, index_key, &plugin, &id, report) {
                    tracing::error!(tenant, plugin = %plugin, blob = %id, error = %e, "cannot expire blob; skipping it");
                }
            }
        }
    }

    /// Deletes one expired blob unless held. The metadata is read inside
    /// the deleting transaction, so a hold set or a delete made meanwhile
    /// conflicts instead of being overridden (it is retried next sweep).
    fn expire(
        &self,
        tenant: &str,
        class: &str,
        index_key: Vec<u8>,
        plugin: &str,
        id: &str,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let meta_key = keys::blob_meta(tenant, plugin, id);
        let mut txn = Txn::default();
        let Some(raw) = txn.get(self.store(), &meta_key)? else {
            // A stale index entry: its blob is gone already.
            txn.set_delete(index_key);
            self.commit_host(tenant, txn)?;
            return Ok(());
        };
        let meta: BlobMeta = serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(&meta_key).into_owned(),
            reason: e.to_string(),
        })?;
        if meta.hold {
            report.held_objects += 1;
            return Ok(());
        }
        for (k, v) in blobs::deletion_writes(tenant, plugin, id, meta_key, &meta) {
            match v {
                Some(v) => txn.set(k, v),
                None => txn.set_delete(k),
            }
        }
        if let Some(owner) = &meta.owner {
            txn.add_owner_delta(owner, -(meta.size as i64));
        }
        if self.commit_host(tenant, txn)? {
            report.deleted += 1;
            report.expired.push((
                tenant.to_string(),
                plugin.to_string(),
                id.to_string(),
                class.to_string(),
            ));
            self.trail.note(
                &Scope::tenant(tenant),
                "retention.delete",
                &format!("blob {plugin}/{id}"),
                outcome::SUCCESS,
                &format!(
                    "class {class}, {} bytes, created {}",
                    meta.size, meta.created_ms
                ),
            );
        }
        Ok(())
    }

    /// Commits host bookkeeping for `tenant` (never refused for quota).
    /// Returns false when a concurrent call changed what it read.
    fn commit_host(&self, tenant: &str, txn: Txn) -> Result<bool, StoreError> {
        self.services()
            .commit_host(tenant, txn, || self.tenants.get(tenant).is_some())
    }

    /// Deletes the chunks of this tenant's deleted blobs.
    pub(super) fn reclaim_blobs(&self, tenant: &str) -> Result<u64, StoreError> {
        let mut reclaimed = 0;
        let prefix = keys::blob_gc_prefix(tenant);
        loop {
            let page = self.store().scan_raw(&prefix, None, 64)?;
            if page.is_empty() {
                return Ok(reclaimed);
            }
            for (marker, _) in page {
                let rest = String::from_utf8_lossy(&marker[prefix.len()..]).into_owned();
                let Some((plugin, id)) = rest.split_once('/') else {
                    self.services().apply_locked(tenant, vec![(marker, None)])?;
                    continue;
                };
                let chunks = keys::blob_chunks(tenant, plugin, id);
                loop {
                    let page = self.store().scan_raw(&chunks, None, 512)?;
                    if page.is_empty() {
                        break;
                    }
                    reclaimed += page.len() as u64;
                    self.services()
                        .apply_locked(tenant, page.into_iter().map(|(k, _)| (k, None)).collect())?;
                }
                self.services().apply_locked(tenant, vec![(marker, None)])?;
            }
        }
    }
}

/// Sweeps retention (on a blocking thread), then tells each plugin whose
/// blobs expired: host event `blob.expired` with `{"blob", "class"}`
/// (SPEC D4: a recording plugin marks the recording shredded).
async fn sweep_and_tell(inner: &Arc<Inner>, now: u64) -> Result<SweepReport, StoreError> {
    let job = inner.clone();
    let report = tokio::task::spawn_blocking(move || job.sweep_retention(now))
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))??;
    for (tenant, plugin, blob, class) in &report.expired {
        let Some(t) = inner.tenants.get(tenant) else {
            continue;
        };
        let data = serde_json::json!({ "blob": blob, "class": class }).to_string();
        inner
            .host_event_to(&t, plugin, "blob.expired", data.as_bytes())
            .await;
    }
    Ok(report)
}

impl Runtime {
    /// Makes a backup into `dir` while calls go on (SPEC D5). `kind` `None`:
    /// incremental when a previous backup is in `dir`, full otherwise.
    pub async fn backup(
        &self,
        dir: &std::path::Path,
        kind: Option<crate::backup::Kind>,
    ) -> Result<crate::backup::BackupInfo, crate::backup::BackupError> {
        let inner = self.inner.clone();
        let dir = dir.to_path_buf();
        let shown = dir.display().to_string();
        let _one_at_a_time = self.inner.backup_lock.lock().await;
        let info = tokio::task::spawn_blocking(move || {
            let key = crate::backup::backup_key(&inner.config.data_dir, true)?;
            crate::backup::create(inner.store(), &key, &dir, kind)
        })
        .await
        .map_err(|e| crate::backup::BackupError::Io(e.to_string()))?;
        match &info {
            Ok(i) => self.inner.trail.note(
                &Scope::System,
                "backup.create",
                &i.header.id,
                outcome::SUCCESS,
                &format!(
                    "{:?} to {} ({} entries written, {} bytes)",
                    i.header.kind,
                    i.file.display(),
                    i.trailer.puts,
                    i.bytes
                ),
            ),
            Err(e) => self.inner.trail.note(
                &Scope::System,
                "backup.create",
                &shown,
                outcome::FAILURE,
                &format!("{}: {e}", e.code()),
            ),
        }
        info
    }

    /// When the last backup and the last full backup were made (ms since
    /// the epoch), if any.
    pub fn last_backup_times(&self) -> Option<(u64, u64)> {
        crate::backup::last_times(self.inner.store()).ok().flatten()
    }
}
