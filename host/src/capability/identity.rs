//! `identity`: who is who inside the plugin's own tenant (SPEC I1). A
//! plugin may look up a user of its tenant (never another tenant's, never
//! secrets) and mint a guest session scoped to one resource — the token a
//! meeting's waiting room hands to an invited guest. The guest session is
//! written in the call's transaction, so it exists only if the call
//! commits.

use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
use crate::audit::Scope;
use crate::call::CallCtx;
use crate::identity::{AuthError, UserView};

/// Looks a user of the calling tenant up by id or login name.
pub fn lookup_user(ctx: &mut CallCtx, id: &str) -> Result<Option<UserView>, CapError> {
    if id.is_empty() || id.len() > 256 {
        return Err(CapError::InvalidArgument(
            "user id must be 1-256 bytes".into(),
        ));
    }
    let realm = Scope::tenant(ctx.tenant_id());
    let ids = &ctx.services.identity;
    let found = match ids.user(&realm, id).map_err(cap)? {
        Some(u) => Some(u),
        None => ids.user_by_name(&realm, id).map_err(cap)?,
    };
    Ok(found)
}

/// A guest session for `resource`, valid `ttl_ms` (clamped to 1 min–24 h).
pub fn create_guest_session(
    ctx: &mut CallCtx,
    audit: &super::audit::State,
    display_name: &str,
    resource: &str,
    ttl_ms: u64,
) -> Result<String, CapError> {
    let tenant = ctx.tenant_id().to_string();
    let plugin = ctx.plugin_name().to_string();
    let (token, guest, writes) = ctx
        .services
        .identity
        .guest_session_writes(&tenant, &plugin, display_name, resource, ttl_ms)
        .map_err(cap)?;
    for (k, v) in writes {
        match v {
            Some(v) => ctx.txn.set(k, v),
            None => ctx.txn.set_delete(k),
        }
    }
    let draft = super::audit::AuditDraft {
        plugin,
        user: ctx.principal.user.clone(),
        action: "guest.session".into(),
        target: guest,
        outcome: "success".into(),
        details: format!("resource {resource}"),
    };
    ctx.txn.push_effect(audit.append(draft));
    Ok(token)
}

fn cap(e: AuthError) -> CapError {
    match e {
        AuthError::InvalidArgument(m) => CapError::InvalidArgument(m),
        AuthError::NotFound(m) => CapError::NotFound(m),
        other => {
            tracing::error!(error = %other, "identity capability failed");
            CapError::Internal("identity is unavailable".into())
        }
    }
}

/// Links the `identity` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::identity::add_to_linker::<T, ViewOf<super::audit::State>>(linker, |t| {
        let (call, caps) = t.parts();
        View {
            call,
            state: &caps.audit,
        }
    })
}

impl wit::identity::Host for View<'_, super::audit::State> {
    fn lookup_user(&mut self, id: String) -> WitResult<Option<wit::identity::UserInfo>> {
        wrap(lookup_user(self.call, &id).map(|found| {
            found.map(|u| wit::identity::UserInfo {
                id: u.id,
                display_name: u.display_name,
                email: u.email,
                active: u.active,
            })
        }))
    }

    fn create_guest_session(
        &mut self,
        display_name: String,
        scope: String,
        ttl_ms: u64,
    ) -> WitResult<String> {
        wrap(create_guest_session(
            self.call,
            self.state,
            &display_name,
            &scope,
            ttl_ms,
        ))
    }
}
