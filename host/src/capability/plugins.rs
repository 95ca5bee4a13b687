//! `plugins`: a call from one plugin into another of the same tenant. The
//! callee must be named in the caller's signed manifest as a dependency,
//! enabled for the tenant at a version the manifest accepts, and the chain
//! of calls is bounded in depth (a dependency cycle cannot recurse forever).
//! The callee sees the caller's real principal — whatever the caller put in
//! the request — and joins the caller's transaction.

use std::sync::Arc;

use super::CapError;
use crate::runtime::EnabledPlugin;
use crate::runtime::state::CallCtx;

/// Deepest chain of nested plugin calls.
pub const MAX_DEPTH: u32 = 4;

/// Checks that the calling plugin may call `name` and returns it.
pub fn resolve(ctx: &CallCtx, name: &str) -> Result<Arc<EnabledPlugin>, CapError> {
    let manifest = &ctx.plugin.plugin.manifest;
    let Some(range) = manifest.dependencies.get(name) else {
        return Err(CapError::Denied(format!(
            "plugin {} does not declare {name:?} as a dependency in its manifest",
            manifest.name
        )));
    };
    let Some(callee) = ctx.tenant.enabled.get(name) else {
        return Err(CapError::NotFound(format!(
            "plugin {name:?} is not enabled for tenant {}",
            ctx.tenant_id()
        )));
    };
    if callee
        .plugin
        .revoked
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(CapError::Denied(format!(
            "plugin {name:?} was signed by a revoked publisher key"
        )));
    }
    let version = &callee.plugin.manifest.version;
    if !range.matches(version) {
        return Err(CapError::Denied(format!(
            "tenant runs {name} {version}, outside the range {range} that {} accepts",
            manifest.name
        )));
    }
    if ctx.depth + 1 > MAX_DEPTH {
        return Err(CapError::Denied(format!(
            "plugin calls may nest at most {MAX_DEPTH} deep"
        )));
    }
    Ok(callee.clone())
}
