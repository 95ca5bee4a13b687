//! `plugins`: a call from one plugin into another of the same tenant. The
//! callee must be named in the caller's signed manifest as a dependency,
//! enabled for the tenant at a version the manifest accepts, and the chain
//! of calls is bounded in depth (a dependency cycle cannot recurse forever).
//! The callee sees the caller's real principal — whatever the caller put in
//! the request — and joins the caller's transaction.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
use crate::call::error::CallError;
use crate::call::types::{Invocation, Outcome, Request, Response};
use crate::call::{CallCtx, CallSpec, EnabledPlugin};

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

/// Runs `request` in `callee` inside this call's transaction. The callee's
/// writes join the caller's on success and are dropped on failure; the
/// caller's own writes are untouched either way.
pub async fn call(
    ctx: &mut CallCtx,
    callee: Arc<EnabledPlugin>,
    request: Request,
) -> Result<Response, CapError> {
    let name = callee.plugin.manifest.name.clone();
    let kernel = ctx.kernel.clone();
    let spec = CallSpec {
        tenant: ctx.tenant.clone(),
        plugin: callee,
        principal: ctx.principal.clone(),
        txn: ctx.txn.clone(),
        deadline: ctx.deadline,
        depth: ctx.depth + 1,
        request_id: request.request_id.clone(),
        host_headers: ctx.host_headers.clone(),
        // The caller waits for the callee: one turn for both.
        cpu: ctx.cpu.clone(),
    };
    // The kernel runs the callee on a task of its own (its own fiber and
    // store) and aborts it if this call goes away.
    let (result, txn) = kernel.run(spec, Invocation::Handle(request)).await;
    match result {
        Ok(Outcome::Response(r)) => {
            if r.status < 500 {
                ctx.txn = txn;
            }
            Ok(r)
        }
        Ok(_) => Err(CapError::Internal("callee returned no response".into())),
        Err(CallError::Timeout(_)) => Err(CapError::Timeout),
        Err(e) => Err(CapError::Internal(format!(
            "plugin {name} failed: {} ({})",
            e,
            e.code()
        ))),
    }
}

/// Links the `plugins` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::plugins::add_to_linker::<T, ViewOf<()>>(linker, |t| {
        let (call, _) = t.parts();
        View { call, state: &() }
    })
}

impl wit::plugins::Host for View<'_, ()> {
    async fn call(
        &mut self,
        plugin: String,
        request: wit::types::Request,
    ) -> WitResult<wit::types::Response> {
        let ctx = &mut *self.call;
        let callee = match resolve(ctx, &plugin) {
            Ok(c) => c,
            Err(e) => return wrap(Err(e)),
        };
        let request = crate::call::types::Request {
            method: request.method.into(),
            path: request.path,
            query: request.query,
            // Host headers (client address, guest scope) are the top-level
            // request's, never what the calling plugin wrote.
            headers: request
                .headers
                .into_iter()
                .filter(|(k, _)| !crate::call::types::is_host_header(k))
                .chain(ctx.host_headers.iter().cloned())
                .collect(),
            body: request.body,
            // The callee sees who really called, never what the caller wrote.
            principal: ctx.principal.clone(),
            caller_plugin: Some(ctx.plugin_name().to_string()),
            request_id: ctx.request_id.clone(),
        };
        if let Err(e) = ctx.charge(request.size_bytes()) {
            return wrap(Err(e));
        }
        let result = call(ctx, callee, request).await;
        wrap(result.map(|r| wit::types::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }))
    }
}
