//! The per-call store data: WASI with an empty context, the memory limiter,
//! and `CallCtx` — everything a capability needs to serve one call (who is
//! calling, which tenant and plugin, the transaction, the budgets).
//!
//! A `HostState` lives exactly as long as one call's `Store`; nothing in it
//! outlives the call except the transaction, which the runtime commits or
//! drops.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use switchboard_signing::Capability;
use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::txn::Txn;
use super::{EnabledPlugin, Inner, TenantState};
use crate::runtime::types::Principal;

/// Bytes of guest stderr kept per call for the log.
const STDERR_KEEP_BYTES: usize = 4096;

/// Store data of one call.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) call: CallCtx,
    pub(crate) stderr: StderrSink,
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

/// A call's turn on the CPU (SPEC K5: one tenant cannot starve another).
/// Each tenant has as many turns as the machine has cores; a call holds one
/// while its WebAssembly runs and gives it back at every epoch tick (and
/// while it waits on the network), queueing fairly behind the tenant's
/// other calls. So however many calls one tenant floods the host with, at
/// most `cores` of them compete for the CPU with other tenants' calls.
#[derive(Clone)]
pub struct CpuTurn {
    turns: Arc<tokio::sync::Semaphore>,
    held: Arc<Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
}

impl CpuTurn {
    pub(crate) fn new(turns: Arc<tokio::sync::Semaphore>) -> CpuTurn {
        CpuTurn {
            turns,
            held: Arc::new(Mutex::new(None)),
        }
    }

    /// Waits for a turn.
    pub(crate) async fn take(&self) {
        let permit = self.turns.clone().acquire_owned().await.ok();
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = permit;
    }

    /// Gives the turn back (before waiting on something other than CPU).
    pub(crate) fn release(&self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// What a running call does at an epoch tick: give the turn to the
    /// next call of the tenant, let the executor run others, queue again.
    pub(crate) fn pass(&self) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let me = self.clone();
        Box::pin(async move {
            me.release();
            tokio::task::yield_now().await;
            me.take().await;
        })
    }
}

/// What capabilities know about the call they serve: its `CallSpec`
/// (reached through `Deref`) plus the runtime and the call's budgets.
pub struct CallCtx {
    pub(crate) rt: Arc<Inner>,
    spec: CallSpec,
    host_bytes: u64,
    pub(crate) log_lines: u32,
}

impl CallCtx {
    /// The call's transaction, for the runtime to commit or drop.
    pub(crate) fn into_txn(self) -> Txn {
        self.spec.txn
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

impl HostState {
    pub(crate) fn new(rt: Arc<Inner>, spec: CallSpec) -> HostState {
        let stderr = StderrSink::default();
        // SPEC K2 / issue 2 item 3: no preopens, no sockets, no environment,
        // no inherited stdio. Clocks and random come from the defaults.
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        let memory_cap = spec.tenant.record.limits.memory_bytes;
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap_bytes: memory_cap,
                exceeded: false,
            },
            call: CallCtx {
                rt,
                spec,
                host_bytes: 0,
                log_lines: 0,
            },
            stderr,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
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
        self.rt.store.as_ref()
    }

    /// Charges `bytes` against the call's host-bytes budget (SPEC K5).
    pub fn charge(&mut self, bytes: usize) -> Result<(), crate::capability::CapError> {
        self.host_bytes = self.host_bytes.saturating_add(bytes as u64);
        let limit = self.tenant.record.limits.host_bytes_per_call;
        if self.host_bytes > limit {
            return Err(crate::capability::CapError::TooLarge(format!(
                "this call has passed more than {limit} bytes to the host"
            )));
        }
        Ok(())
    }
}

/// Caps linear memory per instance (SPEC K5) and remembers that it did, so
/// the trap that follows is reported as `plugin_memory`.
pub struct MemoryLimiter {
    cap_bytes: u64,
    pub(crate) exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.cap_bytes {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Guest stderr: kept up to `STDERR_KEEP_BYTES` for the log, the rest
/// counted and dropped. Writes never fail, so a chatty guest is not
/// punished with a trap.
#[derive(Clone, Default)]
pub struct StderrSink {
    inner: Arc<Mutex<(Vec<u8>, usize)>>,
}

impl StderrSink {
    /// What the guest wrote (bounded) and how many bytes were dropped.
    pub fn take(&self) -> (Vec<u8>, usize) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut g.0), std::mem::take(&mut g.1))
    }
}

impl IsTerminal for StderrSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrSink {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    // Direct, synchronous stream: the default adapter spawns a task and a
    // channel per stream, which costs a chatty guest most of its deadline.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl StderrSink {
    fn keep(&self, buf: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = STDERR_KEEP_BYTES.saturating_sub(g.0.len());
        let keep = room.min(buf.len());
        g.0.extend_from_slice(&buf[..keep]);
        g.1 += buf.len() - keep;
    }
}

impl OutputStream for StderrSink {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrSink {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StderrSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.keep(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
