//! The tenant admin's settings for this plugin, validated by the host
//! against the `[config.*]` schema of `plugin.toml`, with defaults filled
//! in. Changes apply from the next request.

use serde::de::DeserializeOwned;

use crate::bindings::switchboard::host::config as raw;

/// The setting `key` decoded as `T`; `None` when it does not exist.
pub fn get<T: DeserializeOwned>(key: &str) -> Option<T> {
    raw::get(key)
        .ok()
        .flatten()
        .and_then(|json| serde_json::from_str(&json).ok())
}

/// All settings as a JSON object.
pub fn all() -> serde_json::Value {
    serde_json::from_str(&raw::all()).unwrap_or(serde_json::Value::Null)
}
