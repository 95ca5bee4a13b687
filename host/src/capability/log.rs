//! `log`: plugin log lines into the host's log, tagged with tenant and
//! plugin, bounded per line and per call so a plugin cannot flood the log.

use wasmtime::component::Linker;

use super::{CapHost, View, ViewOf, wit};
use crate::call::CallCtx;

/// Longest message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most lines one call may log; the rest are dropped.
pub const MAX_LINES_PER_CALL: u32 = 256;

/// Severity of a plugin log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Logs `message` at `level` for the calling plugin.
pub fn log(ctx: &mut CallCtx, level: Level, message: &str) {
    ctx.log_lines = ctx.log_lines.saturating_add(1);
    if ctx.log_lines > MAX_LINES_PER_CALL {
        if ctx.log_lines == MAX_LINES_PER_CALL + 1 {
            tracing::warn!(
                tenant = ctx.tenant_id(),
                plugin = ctx.plugin_name(),
                "plugin log limit reached; dropping further lines of this call"
            );
        }
        return;
    }
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message[..end];
    let (tenant, plugin) = (ctx.tenant_id(), ctx.plugin_name());
    match level {
        Level::Trace => tracing::trace!(target: "plugin", tenant, plugin, "{msg}"),
        Level::Debug => tracing::debug!(target: "plugin", tenant, plugin, "{msg}"),
        Level::Info => tracing::info!(target: "plugin", tenant, plugin, "{msg}"),
        Level::Warn => tracing::warn!(target: "plugin", tenant, plugin, "{msg}"),
        Level::Error => tracing::error!(target: "plugin", tenant, plugin, "{msg}"),
    }
}

/// Links the `log` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::log::add_to_linker::<T, ViewOf<()>>(linker, |t| {
        let (call, _) = t.parts();
        View { call, state: &() }
    })
}

impl wit::log::Host for View<'_, ()> {
    fn log(&mut self, level: wit::log::Level, message: String) -> wasmtime::Result<()> {
        use Level as L;
        use wit::log::Level as W;
        let level = match level {
            W::Trace => L::Trace,
            W::Debug => L::Debug,
            W::Info => L::Info,
            W::Warn => L::Warn,
            W::Error => L::Error,
        };
        log(self.call, level, &message);
        Ok(())
    }
}
