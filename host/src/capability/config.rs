//! `config`: the tenant admin's settings for the calling plugin, already
//! validated against the manifest's schema and completed with defaults when
//! the admin saved them. A change takes effect on the next call, without a
//! restart.

use super::CapError;
use crate::call::CallCtx;

/// One setting as JSON text.
pub fn get(ctx: &mut CallCtx, key: &str) -> Result<Option<String>, CapError> {
    ctx.charge(key.len())?;
    Ok(ctx.plugin.config.get(key).map(|v| v.to_string()))
}

/// All settings as a JSON object.
pub fn all(ctx: &CallCtx) -> String {
    serde_json::Value::Object((*ctx.plugin.config).clone()).to_string()
}
