//! What the scheduler's loops do at each step: deliver due timers (SPEC
//! K4), host events (presence, expired blobs) and call-leg events to
//! plugins. The scheduler (`scheduler.rs`) decides when; this file decides
//! what.

use std::sync::Arc;

use switchboard_signing::Capability;

use super::{Inner, Runtime};
use crate::call::TenantState;
use crate::call::types::{Event, Invocation, Principal};
use crate::capability::timers;
use crate::store::keys;

impl Runtime {
    /// What commits that change the timer queue notify (the scheduler
    /// waits on it).
    pub(crate) fn timer_wake(&self) -> Arc<tokio::sync::Notify> {
        self.inner.timer_wake.clone()
    }

    /// Delivers a host event to every enabled plugin of `tenant` granted
    /// `events`; returns whether every one took it (failures are logged; a
    /// tenant that is gone has nothing to take).
    pub async fn host_event(&self, tenant: &str, kind: &str, data: &[u8]) -> bool {
        let Some(t) = self.inner.tenants.get(tenant) else {
            return true;
        };
        let mut all = true;
        let mut names: Vec<&String> = t
            .enabled
            .iter()
            .filter(|(_, e)| e.grants.contains(&Capability::Events))
            .map(|(name, _)| name)
            .collect();
        names.sort();
        for name in names {
            all &= self.inner.host_event_to(&t, name, kind, data).await;
        }
        all
    }

    /// Call control: legs, their media and signalling.
    pub fn telephony(&self) -> &Arc<crate::telephony::Telephony> {
        &self.inner.telephony
    }

    /// Delivers the call-leg events ready now, each to its plugin's
    /// `on-call` as an ordinary call (fair turns, deadline, transaction),
    /// concurrently across legs and one at a time per leg; reports each
    /// outcome to call control. Returns how many were started.
    pub fn deliver_call_events(&self) -> usize {
        /// Deliveries started per round (more wait for the next).
        const BATCH: usize = 256;
        let ready = self.inner.telephony.take_ready(BATCH);
        let started = ready.len();
        for d in ready {
            let rt = self.clone();
            tokio::spawn(async move {
                let (leg, seq) = (d.event.leg.clone(), d.event.seq);
                let ok = rt.deliver_call_event(&d.tenant, &d.plugin, d.event).await;
                rt.inner.telephony.delivered(&leg, seq, ok);
            });
        }
        started
    }

    /// Delivers one call-leg event; returns whether the plugin took it.
    async fn deliver_call_event(
        &self,
        tenant: &str,
        plugin: &str,
        event: crate::call::legs::CallEvent,
    ) -> bool {
        let Some(t) = self.inner.tenants.get(tenant) else {
            return false;
        };
        let result = self
            .inner
            .kernel
            .call(t, plugin, Principal::system(tenant), || {
                Invocation::Call(event.clone())
            })
            .await;
        match result {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(tenant, plugin, code = e.code(), error = %e, "call event not taken");
                false
            }
        }
    }

    /// Delivers every timer due now; returns how many were attempted. The
    /// background scheduler calls this; tests may call it directly.
    pub async fn fire_due_timers(&self) -> usize {
        self.fire_timers_due_by(crate::support::clock::now_ms())
            .await
    }

    /// Delivers every timer due by `now_ms` (a time in the future lets
    /// tests see what a long timer does without waiting for it).
    pub async fn fire_timers_due_by(&self, now_ms: u64) -> usize {
        let store = self.inner.store();
        let page = match store.scan_raw(keys::TIMER_QUEUE, None, 256) {
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
                let _ = store.apply(&[(queue_key, None)]);
                continue;
            };
            if due > now_ms {
                break;
            }
            fired += 1;
            self.inner.fire_one(&queue_key, &tenant, &plugin, &id).await;
        }
        fired
    }
}

impl Inner {
    /// Delivers a host event to one enabled plugin of `tenant`; returns
    /// whether it took it (a plugin not enabled has nothing to take).
    pub(super) async fn host_event_to(
        &self,
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
            .kernel
            .call(tenant.clone(), plugin, principal, || {
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

    /// Delivers one due timer. The timer is claimed in the same
    /// transaction as the plugin's writes; a failed delivery is retried
    /// with backoff, then dropped after `timers::MAX_ATTEMPTS`.
    async fn fire_one(&self, queue_key: &[u8], tenant: &str, plugin: &str, id: &str) {
        let services = self.services();
        let record_key = keys::timer(tenant, plugin, id);
        let drop_timer = |why: &str| {
            tracing::warn!(tenant, plugin, timer = id, "dropping timer: {why}");
            services.apply_logged(
                tenant,
                vec![(queue_key.to_vec(), None), (record_key.clone(), None)],
            );
        };
        let Some(t) = self.tenants.get(tenant) else {
            return drop_timer("tenant no longer exists");
        };
        if !t.enabled.contains_key(plugin) {
            return drop_timer("plugin no longer enabled");
        }
        let store = &services.store;
        let record: timers::TimerRecord = match store
            .get(&record_key)
            .ok()
            .flatten()
            .map(|raw| serde_json::from_slice(&raw))
        {
            Some(Ok(r)) => r,
            _ => return drop_timer("timer record missing or unreadable"),
        };
        let payload = hex::decode(&record.payload).unwrap_or_default();
        let timers = &self.kernel.caps().timers;
        let result = self
            .kernel
            .call_with(
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
                    let _ = txn.delete(store, &record_key);
                    let _ = txn.delete(store, queue_key);
                    txn.push_effect(timers.wake());
                },
            )
            .await;
        let Err(e) = result else { return };
        let attempts = record.attempts + 1;
        if attempts >= timers::MAX_ATTEMPTS {
            tracing::error!(
                tenant,
                plugin,
                timer = id,
                code = e.code(),
                "timer failed {attempts} times; dropped"
            );
            services.apply_logged(tenant, vec![(queue_key.to_vec(), None), (record_key, None)]);
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
        services.apply_logged(tenant, writes);
    }
}
