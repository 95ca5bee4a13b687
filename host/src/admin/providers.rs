//! Identity providers of a tenant: its OpenID Connect clients (SPEC I5) and
//! its single sign-on provider (SPEC I6). The tenant is checked first.
//!
//! This area's part of the one admin vocabulary (`admin::Op`): which ops
//! are its own, their names and realms for the audit trail, who may run
//! them (given the caller), and running them.

use serde_json::{Value, json};

use super::{Op, Runner, Who, deny, misrouted, require_tenant};
use crate::audit::Scope;
use crate::error::ApiError;
use crate::identity::oidc;
use crate::identity::sso;

/// Whether `op` is one of this area's.
pub(super) fn owns(op: &Op) -> bool {
    matches!(
        op,
        Op::OidcClientList { .. }
            | Op::OidcClientAdd { .. }
            | Op::OidcClientRemove { .. }
            | Op::SsoShow { .. }
            | Op::SsoSet { .. }
            | Op::SsoRemove { .. }
    )
}

/// The op's name in the audit trail.
pub(super) fn op_name(op: &Op) -> &'static str {
    use Op::*;
    match op {
        OidcClientList { .. } => "oidc-client-list",
        OidcClientAdd { .. } => "oidc-client-add",
        OidcClientRemove { .. } => "oidc-client-remove",
        SsoShow { .. } => "sso-show",
        SsoSet { .. } => "sso-set",
        SsoRemove { .. } => "sso-remove",
        _ => "unknown",
    }
}

/// The realm the op aims at (where a refusal is audited).
pub(super) fn op_realm(op: &Op) -> Option<Scope> {
    tenant_of(op).and_then(Scope::parse)
}

/// The tenant every op of this area names.
fn tenant_of(op: &Op) -> Option<&str> {
    use Op::*;
    match op {
        OidcClientList { tenant }
        | OidcClientAdd { tenant, .. }
        | OidcClientRemove { tenant, .. }
        | SsoShow { tenant }
        | SsoSet { tenant, .. }
        | SsoRemove { tenant } => Some(tenant),
        _ => None,
    }
}

/// Whether the signed-in caller may run `op`.
pub(super) fn authorize(who: &Who<'_>, op: &Op) -> Result<(), ApiError> {
    match tenant_of(op) {
        Some(tenant) if who.own_tenant(tenant) => Ok(()),
        Some(_) => {
            deny("manage this tenant's OpenID Connect clients or single sign-on (its admins may)")
        }
        None => Err(misrouted(op)),
    }
}

/// Runs `op` (already authorised).
pub(super) async fn run(r: &Runner<'_>, op: Op) -> Result<Value, ApiError> {
    let rt = r.rt;
    use Op::*;
    // Every op here names a tenant, which must exist (checked first).
    let tenant = tenant_of(&op).ok_or_else(|| misrouted(&op))?;
    require_tenant(rt, tenant)?;
    Ok(match op {
        OidcClientList { tenant } => {
            json!({ "clients": oidc::clients(rt.identity(), &tenant)? })
        }
        OidcClientAdd {
            tenant,
            name,
            redirect_uris,
            public,
        } => {
            let (client, secret) =
                oidc::add_client(rt.identity(), &tenant, &name, redirect_uris, public).await?;
            json!({ "client": client, "client_secret": secret })
        }
        OidcClientRemove { tenant, id } => {
            oidc::remove_client(rt.identity(), &tenant, &id).await?;
            json!({ "removed": id })
        }
        SsoShow { tenant } => sso::show(rt.identity(), &tenant)?,
        SsoSet { tenant, config } => {
            sso::set(rt.identity(), &tenant, config).await?;
            sso::show(rt.identity(), &tenant)?
        }
        SsoRemove { tenant } => {
            sso::remove(rt.identity(), &tenant).await?;
            json!({ "removed": tenant })
        }
        other => return Err(misrouted(&other)),
    })
}
