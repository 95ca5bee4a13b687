//! `config`: the tenant admin's settings for the calling plugin, already
//! validated against the manifest's schema and completed with defaults when
//! the admin saved them. A change takes effect on the next call, without a
//! restart.

use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
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

/// Links the `config` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::config::add_to_linker::<T, ViewOf<()>>(linker, |t| {
        let (call, _) = t.parts();
        View { call, state: &() }
    })
}

impl wit::config::Host for View<'_, ()> {
    fn get(&mut self, key: String) -> WitResult<Option<String>> {
        wrap(get(self.call, &key))
    }

    fn all(&mut self) -> wasmtime::Result<String> {
        Ok(all(self.call))
    }
}
