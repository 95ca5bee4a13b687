//! The kernel: one wasmtime `Engine` (pooling allocator, epoch
//! interruption, Cranelift; `engine`), components compiled once per digest
//! (`cache`), linking a component for one grant set through the adapter of
//! its plugin API version (`link`, `v0_1`, `v0_2`), and the call path
//! (this file).
//!
//! Every call gets a fresh `Store` instantiated from a cached
//! `InstancePre` (no state survives a call), an epoch deadline, a memory
//! cap and a transaction (`call::txn`) that commits only when the call
//! returns; its effects apply once the commit is durable. A trap fails only
//! that call (SPEC K6). Calls of one tenant are bounded by its concurrency
//! slots; all calls by the host's pool.
//!
//! The kernel knows tenants only as the registry publishes them
//! (`call::Tenants`); it never changes them.

pub mod cache;
pub mod engine;
pub mod error;
pub mod executor;
pub mod link;
pub mod state;
pub mod v0_1;
pub mod v0_2;
pub mod v0_3;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use switchboard_signing::Capability;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, UpdateDeadline};

use self::cache::CompileCache;
pub use self::error::{AdminError, CallError};
use self::executor::{Executor, ExecutorConfig};
use self::link::Linked;
use self::state::HostState;
use crate::call::fair::Fair;
use crate::call::txn::{CommitError, Quota, Txn};
use crate::call::types::{Invocation, Outcome, Principal, is_host_header};
use crate::call::{CallSpec, CpuTurn, Services, TenantState, Tenants};
use crate::capability;
use crate::metrics;
use crate::store::StoreError;
use crate::support::task::AbortOnDrop;
use crate::tenant::{Limits, TenantRecord};

/// Attempts of a call whose transaction keeps conflicting.
const MAX_COMMIT_ATTEMPTS: u32 = 32;

/// The shortest and longest time slice accepted.
const MIN_TICK: Duration = Duration::from_micros(100);
const MAX_TICK: Duration = Duration::from_millis(10);

/// How the kernel is set up (the host's `RuntimeConfig` fills it in).
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Calls running at once across all tenants.
    pub max_concurrent_calls: u32,
    /// Largest component accepted at install.
    pub max_component_bytes: usize,
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// The key that authenticates cache entries.
    pub cache_key_file: PathBuf,
    /// The plugin executor's threads.
    pub executor: ExecutorConfig,
    /// The time slice: how often a running call checks its deadline and
    /// passes its turn on.
    pub epoch_tick: std::time::Duration,
}

/// The kernel. Shared as `Arc<Kernel>` by the registry and the host.
pub struct Kernel {
    engine: Engine,
    cache: CompileCache,
    config: KernelConfig,
    linkers: Mutex<HashMap<BTreeSet<Capability>, Arc<Linker<HostState>>>>,
    pres: Mutex<HashMap<(String, BTreeSet<Capability>), Linked>>,
    /// The handles calls get (store, identity, commit locks).
    services: Arc<Services>,
    /// The capabilities' host-wide state.
    caps: Arc<capability::States>,
    tenants: Arc<Tenants>,
    global_slots: Arc<Semaphore>,
    executor: Executor,
    /// One install compile at a time (`compile_apart`).
    compiles: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
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

impl Kernel {
    /// Opens the compile cache and starts the epoch ticker of `engine`
    /// (it stops when the kernel is dropped).
    pub fn new(
        engine: Engine,
        config: KernelConfig,
        services: Arc<Services>,
        caps: Arc<capability::States>,
        tenants: Arc<Tenants>,
    ) -> std::io::Result<Kernel> {
        if !(MIN_TICK..=MAX_TICK).contains(&config.epoch_tick) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the epoch tick must be between {MIN_TICK:?} and {MAX_TICK:?}, not {:?}",
                    config.epoch_tick
                ),
            ));
        }
        let cache = CompileCache::open(&engine, &config.cache_dir, &config.cache_key_file)?;
        let executor = Executor::new(&config.executor)?;
        executor::init_compile_pool(config.executor.nice);
        let stop = Arc::new(AtomicBool::new(false));
        engine::spawn_epoch_ticker(engine.clone(), config.epoch_tick, stop.clone());
        Ok(Kernel {
            global_slots: Arc::new(Semaphore::new(config.max_concurrent_calls as usize)),
            engine,
            cache,
            config,
            linkers: Mutex::default(),
            pres: Mutex::default(),
            services,
            caps,
            tenants,
            executor,
            compiles: Arc::new(Semaphore::new(1)),
            stop,
        })
    }

    /// The plugin executor's turns, which tenants share (`call::fair`).
    pub(crate) fn fair(&self) -> &Arc<Fair> {
        self.executor.fair()
    }

    /// The handles calls get.
    pub(crate) fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The capabilities' host-wide state.
    pub(crate) fn caps(&self) -> &capability::States {
        &self.caps
    }

    /// The compile-cache file of a digest (for operators and tests).
    pub fn cache_file(&self, digest: &str) -> PathBuf {
        self.cache.file_for(digest)
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
    pub(crate) async fn call(
        self: &Arc<Self>,
        tenant: Arc<TenantState>,
        plugin: &str,
        principal: Principal,
        invocation: impl Fn() -> Invocation,
    ) -> Result<Outcome, CallError> {
        self.call_with(tenant, plugin, principal, invocation, |_| {})
            .await
    }

    /// `call` with `prepare` run on each attempt's fresh transaction.
    pub(crate) async fn call_with(
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
                cpu: CpuTurn::new(tenant.share.clone()),
            };
            let (result, txn) = self.run_on_executor(spec, invocation).await;
            let outcome = result?;
            if let Outcome::Response(r) = &outcome
                && r.status >= 500
            {
                // A server error from the plugin rolls its writes back.
                return Ok(outcome);
            }
            let still_there = || {
                self.tenants
                    .get(&tenant.record.id)
                    .is_some_and(|now| now.record.incarnation == tenant.record.incarnation)
            };
            let store = &self.services.store;
            match self.services.commits.commit(
                &tenant.record.id,
                store,
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
                            store.durable(seq).await?;
                        }
                        return Ok(outcome);
                    }
                    // On its own task, in the request's audit context: a
                    // client hanging up (the request future dropped) cannot
                    // lose the effects of writes that were kept.
                    let store = store.clone();
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

    /// One attempt on the plugin executor: waits for a turn there, runs,
    /// gives the turn back, and counts the tenant's CPU time. The attempt
    /// is aborted if the caller goes away (a client hanging up).
    async fn run_on_executor(
        self: &Arc<Self>,
        spec: CallSpec,
        invocation: Invocation,
    ) -> (Result<Outcome, CallError>, Txn) {
        let cpu = spec.cpu.clone();
        let tenant = spec.tenant.record.id.clone();
        let kernel = self.clone();
        // Queued here, before the task first runs on a busy executor: the
        // call's place is kept from the moment it arrives. When the
        // executor is idle the call starts here instead (`inline`).
        let (queued, inline) = match cpu.queue_if_idle() {
            Some(granted) => (granted, true),
            None => (cpu.queue(), false),
        };
        let attempt = async move {
            spec.cpu.hold(queued).await;
            if Instant::now() >= spec.deadline {
                // Its deadline passed while it queued: do not start it.
                let limit = spec.tenant.record.limits.deadline_ms;
                spec.cpu.release();
                return (Err(CallError::Timeout(limit)), spec.txn);
            }
            let cpu = spec.cpu.clone();
            let out = kernel.run(spec, invocation).await;
            cpu.release();
            out
        };
        let mut attempt = Box::pin(attempt);
        // An idle executor: the call's first slice runs on this thread,
        // sparing it the hand-over to an executor thread (which costs more
        // than a trivial call: a parked thread is woken). Only one call can
        // do this at a time (it holds a turn, so the executor is no longer
        // idle), and only until it first yields: at its second epoch tick
        // at the latest (the first is skipped if nobody waits, `CpuTurn::
        // pass`), so at most two ticks (0.5 ms by default) on a network
        // thread. Then it moves to the executor like any other call.
        // A tenant whose call does not finish there starts its next calls on
        // the executor for a while (`fair::INLINE_BACKOFF`).
        let first = if inline {
            let first = std::future::poll_fn(|cx| Poll::Ready(attempt.as_mut().poll(cx))).await;
            if first.is_pending() {
                cpu.inline_overran();
            }
            first
        } else {
            Poll::Pending
        };
        let out = match first {
            Poll::Ready(out) => out,
            Poll::Pending => self.on_executor(attempt).await,
        };
        let (ran, waited) = cpu.totals();
        metrics::TENANT_CPU.add(&[&tenant], ran / 1000);
        metrics::TENANT_CPU_WAIT.add(&[&tenant], waited / 1000);
        out
    }

    /// Runs `attempt` as a task of the plugin executor and waits for it;
    /// the task is aborted if this future is dropped (a client hanging up),
    /// so an attempt never outlives the slots its caller holds.
    async fn on_executor(
        &self,
        attempt: impl std::future::Future<Output = (Result<Outcome, CallError>, Txn)> + Send + 'static,
    ) -> (Result<Outcome, CallError>, Txn) {
        let failed = |why: String| (Err(CallError::Internal(why)), Txn::default());
        match self.executor.spawn(attempt) {
            Some(task) => AbortOnDrop::new(task)
                .wait()
                .await
                .unwrap_or_else(|e| failed(format!("plugin task failed: {e}"))),
            None => failed("the plugin executor is stopping".into()),
        }
    }

    /// One attempt: a fresh store, instantiate, invoke, classify. Returns
    /// the transaction for the caller to commit or drop.
    async fn run(
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
            Linked::V0_3(p) => v0_3::invoke(p, &mut store, invocation).await,
        };
        let (stderr, dropped) = store.data().stderr.take();
        let memory_exceeded = store.data().limiter.exceeded;
        let txn = store.data_mut().call.take_txn();
        drop(store);
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
            Err(v0_1::Stage::Call(e)) => Err(classify(e, memory_exceeded, &limits)),
        };
        if let Err(e) = &result {
            tracing::warn!(tenant = %tenant_id, plugin = %plugin_name, code = e.code(), error = %e, "plugin call failed");
        }
        (result, txn)
    }
}

impl crate::call::Kernel for Kernel {
    /// A nested call: on its own task (its own fiber and store) on the
    /// plugin executor, whichever thread its caller runs on; aborted if the
    /// caller goes away, so a callee never outlives the slots its caller
    /// held.
    fn run(self: Arc<Self>, spec: CallSpec, invocation: Invocation) -> crate::call::Attempt {
        let kernel = self.clone();
        Box::pin(async move {
            self.on_executor(async move { Kernel::run(&kernel, spec, invocation).await })
                .await
        })
    }
}

/// The storage quotas of a tenant.
fn quota_of(record: &TenantRecord) -> Quota {
    Quota {
        tenant_bytes: record.limits.storage_bytes,
        owner_bytes: record.limits.owner_storage_bytes,
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
