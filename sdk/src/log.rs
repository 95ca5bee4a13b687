//! Logging into the host's log, tagged with tenant and plugin. Lines are
//! capped at 4 KiB and 256 per request. Never log message bodies or other
//! content users wrote: logs are for operators.

use crate::bindings::switchboard::host::log::{Level, log};

/// Logs at trace level.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs at error level.
pub fn error(message: &str) {
    log(Level::Error, message);
}
