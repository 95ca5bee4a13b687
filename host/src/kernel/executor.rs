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
#[derive(Debug, Clone, Default)]
pub struct ExecutorConfig {
    /// Threads running plugin code; 0: one per core.
    pub workers: usize,
}

/// The plugin executor: a tokio runtime of its own and its fair turns.
pub struct Executor {
    runtime: Option<tokio::runtime::Runtime>,
    fair: Arc<Fair>,
    workers: usize,
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("sb-plugin")
            .enable_all()
            .build()?;
        Ok(Executor {
            runtime: Some(runtime),
            fair: Fair::new(workers),
            workers,
        })
    }

    /// The turns tenants share.
    pub fn fair(&self) -> &Arc<Fair> {
        &self.fair
    }

    /// Threads running plugin code.
    pub fn workers(&self) -> usize {
        self.workers
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
