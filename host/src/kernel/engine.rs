//! The kernel's engine: one wasmtime `Engine` per host (Cranelift, the
//! pooling allocator, epoch interruption, no component-model async) and
//! the thread that ticks its epoch, which is how deadlines fire and how a
//! running call passes its CPU turn on. Its settings are `EngineConfig`,
//! taken from the host's configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::capability;

/// The time slice of a plugin call by default: at each tick a running call
/// checks its deadline and passes its turn on (`call::CpuTurn`), so another
/// tenant's call waits at most one tick for a thread. Measured
/// (`benches/fairness.rs`, same run): at 250 µs a quiet tenant's p99 under
/// a flood is 0.4-0.5 ms against 1.1-1.2 ms at 1 ms, and a call doing
/// 50 ms of work alone takes the same time at both.
pub const EPOCH_TICK: Duration = Duration::from_micros(250);

/// What the engine is sized for.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Calls in flight on the whole host (each nested call holds its own
    /// instance as well).
    pub max_concurrent_calls: u32,
    /// The largest linear memory a plugin may have (the pool's slot size).
    pub max_memory_bytes: u64,
    /// How a returned instance slot is reset for the next call.
    pub reset: SlotReset,
}

/// How an instance's memory slot is made clean for the next call. Either
/// way nothing of one call survives into the next (the isolation tests
/// hold for both); they differ in what the kernel's page tables go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotReset {
    /// Up to this many bytes of a slot's written pages are copied back from
    /// the plugin's memory image (or zeroed) in place and stay resident;
    /// the rest is handed back to the OS with `madvise`, which on a
    /// multi-core host costs a TLB shoot-down of every core.
    pub keep_resident: u64,
    /// Find the written pages with Linux's `PAGEMAP_SCAN` (6.7 and later)
    /// instead of resetting the first `keep_resident` bytes blindly. Off,
    /// or on an older kernel, the slot's low bytes are reset with memset.
    pub scan_written_pages: bool,
}

impl SlotReset {
    /// What the host uses: written pages found by `PAGEMAP_SCAN` and reset
    /// in place, up to 1 MiB of them per slot. Measured in
    /// `benches/runtime.rs` against [`SlotReset::MADVISE`] in the same run.
    pub const SCAN: SlotReset = SlotReset {
        keep_resident: 1 << 20,
        scan_written_pages: true,
    };

    /// The reset before issue 18: the first 64 KiB memset, the rest
    /// `madvise`d on every call (kept for the benchmark's comparison).
    pub const MADVISE: SlotReset = SlotReset {
        keep_resident: 64 << 10,
        scan_written_pages: false,
    };
}

/// Builds the one engine of a host: Cranelift, the pooling allocator sized
/// for the concurrent calls (times the nesting depth), epoch interruption.
pub fn build(config: &EngineConfig) -> wasmtime::Result<Engine> {
    let calls = config.max_concurrent_calls.max(1);
    // Nested plugin calls each hold an instance, so size for the depth.
    let instances = calls.saturating_mul(capability::plugins::MAX_DEPTH);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memory_size(config.max_memory_bytes as usize);
    // Reset written pages in place rather than madvise them away: no page
    // faults on the next instantiation and no TLB shoot-down per call
    // (`SlotReset`).
    let keep = usize::try_from(config.reset.keep_resident).unwrap_or(usize::MAX);
    pool.linear_memory_keep_resident(keep)
        .table_keep_resident(keep.min(64 << 10))
        .pagemap_scan(if config.reset.scan_written_pages {
            Enabled::Auto
        } else {
            Enabled::No
        });
    let mut cfg = wasmtime::Config::new();
    cfg.wasm_component_model(true)
        // Component-model async costs ~2.5x per call and is unused.
        .concurrency_support(false)
        .epoch_interruption(true)
        .max_wasm_stack(1 << 20)
        .async_stack_size(2 << 20)
        .memory_reservation(config.max_memory_bytes)
        .memory_guard_size(64 << 10)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

    Engine::new(&cfg)
}

/// Starts the thread that ticks `engine`'s epoch every `tick` until `stop`
/// is set.
pub(super) fn spawn_epoch_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("sb-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        });
    if let Err(e) = spawned {
        // Without the ticker no deadline fires; refuse to run blind.
        tracing::error!(error = %e, "cannot start the epoch thread; plugin deadlines will not fire");
    }
}
