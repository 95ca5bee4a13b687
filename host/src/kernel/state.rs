//! The per-call store data: WASI with an empty context, the memory limiter,
//! the capabilities' host-wide state (`capability::States`) and
//! `call::CallCtx` — everything a capability needs to serve one call (who
//! is calling, which tenant and plugin, the transaction, the budgets).
//!
//! A `HostState` lives exactly as long as one call's `Store`; nothing in it
//! outlives the call except the transaction, which the runtime commits or
//! drops.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::call::{CallCtx, CallSpec, Kernel, Services};
use crate::capability;
use crate::support::sync::Recover as _;

/// Bytes of guest stderr kept per call for the log.
const STDERR_KEEP_BYTES: usize = 4096;

/// Store data of one call.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) call: CallCtx,
    /// What capabilities keep for the whole host (clients, settings).
    pub(crate) caps: Arc<capability::States>,
    pub(crate) stderr: StderrSink,
}

impl HostState {
    pub(crate) fn new(
        services: Arc<Services>,
        kernel: Arc<dyn Kernel>,
        caps: Arc<capability::States>,
        spec: CallSpec,
    ) -> HostState {
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
            call: CallCtx::new(services, kernel, spec),
            caps,
            stderr,
        }
    }
}

impl capability::CapHost for HostState {
    fn parts(&mut self) -> (&mut CallCtx, &capability::States) {
        (&mut self.call, &self.caps)
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
        let mut g = self.inner.lock().recover();
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
        let mut g = self.inner.lock().recover();
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
