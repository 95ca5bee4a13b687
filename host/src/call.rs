//! The call context: what one plugin call runs against and what the
//! capabilities serving it see. A layer below the capabilities and above
//! the services: it knows the tenant and plugin as the registry published
//! them (`TenantState`, `EnabledPlugin`), the call's transaction
//! (`txn`), the version-independent request types (`types`), the errors
//! (`error`), and the host services a capability may reach, as handles
//! (`Services`), never the host itself. Nested plugin calls go back to the
//! kernel through the `Kernel` trait, which the kernel implements.

pub mod blob;
pub mod error;
pub mod fair;
pub mod legs;
pub mod txn;
pub mod types;

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use switchboard_signing::{Capability, KeyId, Manifest};
use tokio::sync::Semaphore;
use wasmtime::component::Component;

use self::error::{CallError, CapError};
use self::txn::{CommitError, CommitLocks, Quota, Txn};
use self::types::{Invocation, Outcome, Principal};
use crate::identity::Identity;
use crate::store::{Store, StoreError, Write};
use crate::support::sync::Recover as _;
use crate::tenant::TenantRecord;

/// The host services a call's capabilities may use.
pub struct Services {
    /// The data store (plugin data, blobs, timers).
    pub(crate) store: Arc<Store>,
    /// Accounts and sessions (the `identity` capability).
    pub(crate) identity: Arc<Identity>,
    /// Per-tenant commit locks and usage (quota checks).
    pub(crate) commits: Arc<CommitLocks>,
}

impl Services {
    /// Commits host bookkeeping for `tenant` under its commit lock, never
    /// refused for quota (it only shrinks data or records the tenant's own
    /// settings). Returns false when a concurrent call changed what `txn`
    /// read; `still_there` is asked under the lock.
    pub(crate) fn commit_host(
        &self,
        tenant: &str,
        txn: Txn,
        still_there: impl FnOnce() -> bool,
    ) -> Result<bool, StoreError> {
        let quota = Quota {
            tenant_bytes: u64::MAX,
            owner_bytes: u64::MAX,
        };
        match self
            .commits
            .commit(tenant, &self.store, txn, quota, still_there)
        {
            Ok(_) => Ok(true),
            Err(CommitError::Conflict) => Ok(false),
            Err(CommitError::Store(e)) => Err(e),
            Err(other) => Err(StoreError::Backend(other.to_string())),
        }
    }

    /// Blind host writes for `tenant` under its commit lock (they record
    /// no reads, so they cannot conflict).
    pub(crate) fn apply_locked(&self, tenant: &str, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut txn = Txn::default();
        for (k, v) in writes {
            match v {
                Some(v) => txn.set(k, v),
                None => txn.set_delete(k),
            }
        }
        self.commit_host(tenant, txn, || true).map(drop)
    }

    /// `apply_locked` for bookkeeping whose failure can only be logged.
    pub(crate) fn apply_logged(&self, tenant: &str, writes: Vec<Write>) {
        if let Err(e) = self.apply_locked(tenant, writes) {
            tracing::error!(tenant, error = %e, "host bookkeeping write failed");
        }
    }
}

/// The live tenants as the registry published them. The registry writes
/// (an admin change swaps a tenant's whole state); the kernel and the
/// host read (is a tenant still there when its call commits?).
#[derive(Default)]
pub struct Tenants(RwLock<HashMap<String, Arc<TenantState>>>);

impl Tenants {
    /// The tenant `id`, if it exists.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<TenantState>> {
        self.0.read().recover().get(id).cloned()
    }

    /// Makes `state` the tenant's live state.
    pub(crate) fn publish(&self, state: Arc<TenantState>) {
        state.share.set_weight(state.record.limits.cpu_share);
        self.0
            .write()
            .recover()
            .insert(state.record.id.clone(), state);
    }

    /// Forgets the tenant `id`.
    pub(crate) fn remove(&self, id: &str) {
        self.0.write().recover().remove(id);
    }

    /// Every live tenant, in no order.
    pub(crate) fn states(&self) -> Vec<Arc<TenantState>> {
        self.0.read().recover().values().cloned().collect()
    }

    /// Every tenant's id, in no order.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.0.read().recover().keys().cloned().collect()
    }

    /// Every tenant's record, sorted by id.
    pub(crate) fn records(&self) -> Vec<TenantRecord> {
        let mut out: Vec<TenantRecord> = self
            .0
            .read()
            .recover()
            .values()
            .map(|t| t.record.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// A call attempt in flight: its result and the transaction it ended with.
pub type Attempt = Pin<Box<dyn Future<Output = (Result<Outcome, CallError>, Txn)> + Send>>;

/// What a call needs of the kernel: running a nested call.
pub trait Kernel: Send + Sync {
    /// Runs `invocation` as the call `spec` describes; the transaction it
    /// ends with is handed back whether it succeeded or not.
    fn run(self: Arc<Self>, spec: CallSpec, invocation: Invocation) -> Attempt;
}

/// The kernel's pre-instantiated component, opaque to this layer: only
/// the kernel knows (and asks for) its type.
#[derive(Clone)]
pub struct PreHandle(Arc<dyn Any + Send + Sync>);

impl PreHandle {
    /// Wraps the kernel's handle.
    pub(crate) fn new<T: Any + Send + Sync>(pre: T) -> PreHandle {
        PreHandle(Arc::new(pre))
    }

    /// The handle, if it is a `T`.
    pub(crate) fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

/// An installed plugin version, compiled.
pub struct LoadedPlugin {
    pub manifest: Manifest,
    pub digest: String,
    /// The publisher key that signed the package.
    pub publisher: KeyId,
    /// Set when the publisher key is revoked: the package no longer runs.
    pub(crate) revoked: AtomicBool,
    pub(crate) component: Component,
    /// Capabilities its component imports.
    pub(crate) imports: BTreeSet<Capability>,
}

/// A plugin as one tenant enabled it: linked for its grants.
pub struct EnabledPlugin {
    pub(crate) plugin: Arc<LoadedPlugin>,
    pub(crate) grants: BTreeSet<Capability>,
    /// Settings resolved against the schema (defaults filled in).
    pub(crate) config: Arc<serde_json::Map<String, serde_json::Value>>,
    /// The kernel's pre-instantiated component for these grants.
    pub(crate) pre: PreHandle,
}

/// A tenant as the call path sees it: immutable; admin changes swap it.
pub struct TenantState {
    pub(crate) record: TenantRecord,
    pub(crate) slots: Arc<Semaphore>,
    /// Its share of the plugin executor's turns (`CpuTurn`).
    pub(crate) share: Arc<fair::Share>,
    pub(crate) enabled: HashMap<String, Arc<EnabledPlugin>>,
}

impl TenantState {
    /// The enabled plugin `name`, or `plugin_not_enabled`.
    pub(crate) fn enabled_plugin(&self, name: &str) -> Result<Arc<EnabledPlugin>, CallError> {
        self.enabled
            .get(name)
            .cloned()
            .ok_or_else(|| CallError::PluginNotEnabled {
                tenant: self.record.id.clone(),
                plugin: name.to_string(),
            })
    }
}

/// Everything that defines one call attempt, before its store exists.
pub struct CallSpec {
    pub(crate) tenant: Arc<TenantState>,
    pub(crate) plugin: Arc<EnabledPlugin>,
    pub(crate) principal: Principal,
    pub(crate) txn: Txn,
    pub(crate) deadline: Instant,
    /// 0 for a top-level call; +1 per nested plugin call.
    pub(crate) depth: u32,
    pub(crate) request_id: String,
    /// The `x-switchboard-*` headers the gateway set on the top-level
    /// request (client address, guest scope): nested calls see these,
    /// never what a calling plugin wrote.
    pub(crate) host_headers: Arc<Vec<(String, String)>>,
    /// The call's turn on the CPU, shared with its nested calls.
    pub(crate) cpu: CpuTurn,
}

/// A call's turn on the plugin executor (SPEC K5; `fair`): held while its
/// WebAssembly runs, given back at every epoch tick (and while it waits on
/// the network) and queued for again behind the other tenants' calls.
/// Shared with the call's nested calls (the caller waits for its callee:
/// one turn for both). It counts what the call ran and waited.
#[derive(Clone)]
pub struct CpuTurn {
    share: Arc<fair::Share>,
    held: Arc<Mutex<Option<fair::Turn>>>,
    /// Nanoseconds run holding a turn, and waited for one.
    ran_ns: Arc<AtomicU64>,
    waited_ns: Arc<AtomicU64>,
    /// Slices ended so far.
    slices: Arc<AtomicU64>,
}

impl CpuTurn {
    pub(crate) fn new(share: Arc<fair::Share>) -> CpuTurn {
        CpuTurn {
            share,
            held: Arc::new(Mutex::new(None)),
            ran_ns: Arc::new(AtomicU64::new(0)),
            waited_ns: Arc::new(AtomicU64::new(0)),
            slices: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues for a turn now (in the caller's thread, so the call has its
    /// place before its task first runs); `hold` waits for it.
    pub(crate) fn queue(&self) -> fair::Acquire {
        self.share.acquire()
    }

    /// A turn at once if the executor is idle (no call holds or waits for
    /// one), for a call that runs its first slice on the caller's thread.
    pub(crate) fn queue_if_idle(&self) -> Option<fair::Acquire> {
        self.share.acquire_if_idle()
    }

    /// The call started on its caller's thread did not finish there.
    pub(crate) fn inline_overran(&self) {
        self.share.inline_overran();
    }

    /// Waits for the turn `queued` and holds it.
    pub(crate) async fn hold(&self, queued: fair::Acquire) {
        let asked = Instant::now();
        let turn = queued.await;
        self.waited_ns
            .fetch_add(asked.elapsed().as_nanos() as u64, Ordering::Relaxed);
        *self.held.lock().recover() = Some(turn);
    }

    /// Waits for a turn.
    pub(crate) async fn take(&self) {
        self.hold(self.queue()).await;
    }

    /// Gives the turn back (before waiting on something other than CPU,
    /// and when the call ends).
    pub(crate) fn release(&self) {
        let turn = self.held.lock().recover().take();
        if let Some(turn) = turn {
            self.ran_ns
                .fetch_add(turn.held_ns() as u64, Ordering::Relaxed);
        }
    }

    /// What a running call does at an epoch tick: end its slice (the turn
    /// goes to the call owed it most, which may be this one), let the
    /// thread's other tasks run once, and wait for its next turn. At its
    /// first tick a call that nobody else waits for goes on at once: the
    /// tick came early in its slice (ticks are not aligned to calls), and a
    /// short call should not pay a trip through the run queue for it.
    pub(crate) fn pass(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let first = self.slices.fetch_add(1, Ordering::Relaxed) == 0;
        let held = self.held.lock().recover().take();
        let mut next = match held {
            Some(turn) => {
                self.ran_ns
                    .fetch_add(turn.held_ns() as u64, Ordering::Relaxed);
                self.share.pass(turn)
            }
            None => self.share.acquire(),
        };
        let me = self.clone();
        if first && next.granted() {
            return Box::pin(async move { me.hold(next).await });
        }
        Box::pin(async move {
            fair::yield_once().await;
            me.hold(next).await;
        })
    }

    /// Nanoseconds run holding a turn and waited for one, so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.ran_ns.load(Ordering::Relaxed),
            self.waited_ns.load(Ordering::Relaxed),
        )
    }
}

/// What capabilities know about the call they serve: its `CallSpec`
/// (reached through `Deref`), the host services it may use, the kernel
/// (for nested calls) and the call's budgets.
pub struct CallCtx {
    pub(crate) services: Arc<Services>,
    pub(crate) kernel: Arc<dyn Kernel>,
    spec: CallSpec,
    host_bytes: u64,
    pub(crate) log_lines: u32,
}

impl CallCtx {
    /// The context of a call attempt described by `spec`.
    pub(crate) fn new(services: Arc<Services>, kernel: Arc<dyn Kernel>, spec: CallSpec) -> CallCtx {
        CallCtx {
            services,
            kernel,
            spec,
            host_bytes: 0,
            log_lines: 0,
        }
    }

    /// The call's transaction, for the kernel to commit or drop (the
    /// context is left with an empty one).
    pub(crate) fn take_txn(&mut self) -> Txn {
        std::mem::take(&mut self.spec.txn)
    }
}

impl std::ops::Deref for CallCtx {
    type Target = CallSpec;

    fn deref(&self) -> &CallSpec {
        &self.spec
    }
}

impl std::ops::DerefMut for CallCtx {
    fn deref_mut(&mut self) -> &mut CallSpec {
        &mut self.spec
    }
}

impl CallCtx {
    /// The calling tenant's id.
    pub fn tenant_id(&self) -> &str {
        &self.tenant.record.id
    }

    /// The called plugin's name.
    pub fn plugin_name(&self) -> &str {
        &self.plugin.plugin.manifest.name
    }

    /// Grants of the called plugin in this tenant.
    pub fn grants(&self) -> &BTreeSet<Capability> {
        &self.plugin.grants
    }

    /// The storage backend.
    pub fn store(&self) -> &crate::store::Store {
        self.services.store.as_ref()
    }

    /// Charges `bytes` against the call's host-bytes budget (SPEC K5).
    pub fn charge(&mut self, bytes: usize) -> Result<(), CapError> {
        self.host_bytes = self.host_bytes.saturating_add(bytes as u64);
        let limit = self.tenant.record.limits.host_bytes_per_call;
        if self.host_bytes > limit {
            return Err(CapError::TooLarge(format!(
                "this call has passed more than {limit} bytes to the host"
            )));
        }
        Ok(())
    }
}
