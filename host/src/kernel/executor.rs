//! The plugin executor (SPEC K5): plugin code runs on threads of its own,
//! apart from the network I/O runtime that accepts connections, speaks
//! TLS and HTTP and answers the host's own routes (`/healthz`, `/metrics`,
//! sign-in). However hard plugins are driven, those threads never poll a
//! plugin, so the front door keeps its latency.
//!
//! Which call runs next on these threads is decided by the fair turns of
//! `call::fair`: as many turns as threads, handed out across tenants by
//! their CPU share, one epoch tick at a time.

use std::sync::Arc;

use crate::call::fair::Fair;

/// Most threads an executor may have.
pub const MAX_WORKERS: usize = 1024;

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Threads running plugin code; 0: one per core.
    pub workers: usize,
    /// The nice value of those threads (0-19; Linux): higher lets the
    /// network threads take the CPU from plugin code at once when a
    /// request arrives. 0 keeps the process's priority.
    pub nice: i32,
    /// The CPUs those threads run on (Linux; empty: any), e.g. to keep
    /// them off the cores the media threads have.
    pub cpus: Vec<usize>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            workers: 0,
            nice: 10,
            cpus: Vec::new(),
        }
    }
}

/// The plugin executor: a tokio runtime of its own and its fair turns.
pub struct Executor {
    runtime: Option<tokio::runtime::Runtime>,
    fair: Arc<Fair>,
}

impl Executor {
    /// Starts the executor's threads.
    pub fn new(config: &ExecutorConfig) -> std::io::Result<Executor> {
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n if n <= MAX_WORKERS => n,
            n => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("plugin_workers must be at most {MAX_WORKERS}, not {n}"),
                ));
            }
        };
        if !(0..=19).contains(&config.nice) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("plugin_nice must be between 0 and 19, not {}", config.nice),
            ));
        }
        let (nice, cpus) = (config.nice, config.cpus.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("sb-plugin")
            .on_thread_start(move || {
                lower_priority(nice);
                if let Err(error) = crate::support::thread::set_affinity(&cpus) {
                    tracing::warn!(?cpus, %error, "the plugin threads run on any CPU");
                }
            })
            // New calls come from the network threads through the global
            // queue: look there first at every poll, so a new tenant's call
            // queues for its fair turn at once instead of after dozens of
            // the running calls' slices.
            .global_queue_interval(1)
            .enable_all()
            .build()?;
        Ok(Executor {
            runtime: Some(runtime),
            fair: Fair::new(workers),
        })
    }

    /// The turns tenants share.
    pub fn fair(&self) -> &Arc<Fair> {
        &self.fair
    }

    /// Runs `task` on the executor's threads.
    pub fn spawn<F>(&self, task: F) -> Option<tokio::task::JoinHandle<F::Output>>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.as_ref().map(|rt| rt.spawn(task))
    }
}

/// Builds rayon's global pool, on which Cranelift compiles functions in
/// parallel, with threads named `sb-cranelift-N` at `nice`: compiling a
/// package installed while the server runs then competes with plugin code,
/// not with the network threads. The pool is per process, so only the
/// first call has an effect (later kernels in the same process, e.g. in
/// tests, share it).
pub fn init_compile_pool(nice: i32) {
    let built = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("sb-cranelift-{i}"))
        .start_handler(move |_| lower_priority(nice))
        .build_global();
    if let Err(e) = built {
        tracing::debug!(error = %e, "the compile pool exists already");
    }
}

/// Lowers the calling thread's priority to `nice`. A failure (e.g. the
/// process already runs at a higher nice value) is logged; the executor
/// still works, with less headroom for the network threads.
pub(super) fn lower_priority(nice: i32) {
    if let Err(error) = crate::support::thread::set_nice(nice) {
        tracing::warn!(nice, %error, "cannot lower the plugin threads' priority");
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // The host may go from inside a task, even one of these threads
        // (the last handle held by a call): stop the runtime from a plain
        // thread, without waiting for its tasks.
        if let Some(rt) = self.runtime.take() {
            let stopper = std::thread::Builder::new()
                .name("sb-plugin-stop".into())
                .spawn(move || rt.shutdown_background());
            if let Err(e) = stopper {
                tracing::error!(error = %e, "cannot stop the plugin executor's threads");
            }
        }
    }
}
