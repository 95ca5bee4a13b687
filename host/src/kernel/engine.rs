//! The kernel's engine: one wasmtime `Engine` per host (Cranelift, the
//! pooling allocator, epoch interruption, no component-model async) and
//! the thread that ticks its epoch, which is how deadlines fire and how a
//! running call passes its CPU turn on. Its settings are `EngineConfig`,
//! taken from the host's configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

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
    // Reset the first 64 KiB of a reused slot with memset instead of
    // madvise: fewer page faults on the next instantiation. Measured over
    // three runs each: the example plugin's p50 went from 39-44 µs to
    // 31-35 µs, the noop plugin's from ~30 µs to 27-30 µs.
    pool.linear_memory_keep_resident(64 << 10)
        .table_keep_resident(64 << 10);
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
