//! Tenants: list (partners see their assigned ones), create, delete, and
//! their limits (shown to the operator and the tenant's admins, changed by
//! the operator only).
//!
//! This area's part of the one admin vocabulary (`admin::Op`): which ops
//! are its own, their names and realms for the audit trail, who may run
//! them (given the caller), and running them.

use serde_json::{Value, json};

use super::{Op, Runner, Who, deny, misrouted};
use crate::audit::Scope;
use crate::error::ApiError;
use crate::identity::Role;

/// Whether `op` is one of this area's.
pub(super) fn owns(op: &Op) -> bool {
    matches!(
        op,
        Op::TenantList
            | Op::TenantCreate { .. }
            | Op::TenantDelete { .. }
            | Op::TenantLimits { .. }
            | Op::TenantLimitsSet { .. }
            | Op::TenantUsage { .. }
    )
}

/// The op's name in the audit trail.
pub(super) fn op_name(op: &Op) -> &'static str {
    use Op::*;
    match op {
        TenantList => "tenant-list",
        TenantCreate { .. } => "tenant-create",
        TenantDelete { .. } => "tenant-delete",
        TenantLimits { .. } => "tenant-limits",
        TenantLimitsSet { .. } => "tenant-limits-set",
        TenantUsage { .. } => "tenant-usage",
        _ => "unknown",
    }
}

/// The realm the op aims at (where a refusal is audited).
pub(super) fn op_realm(op: &Op) -> Option<Scope> {
    use Op::*;
    match op {
        TenantDelete { id }
        | TenantLimits { id }
        | TenantLimitsSet { id, .. }
        | TenantUsage { id } => Scope::parse(id),
        _ => None,
    }
}

/// Whether the signed-in caller may run `op`.
pub(super) fn authorize(who: &Who<'_>, op: &Op) -> Result<(), ApiError> {
    use Op::*;
    match op {
        TenantList => {
            if who.operator || who.caller.role == Role::Partner {
                Ok(())
            } else {
                deny("list tenants")
            }
        }
        TenantLimits { id } | TenantUsage { id } => {
            if who.operator || who.own_tenant(id) || who.assigned(id) {
                Ok(())
            } else {
                deny("see this tenant's limits")
            }
        }
        TenantCreate { .. } | TenantDelete { .. } | TenantLimitsSet { .. } => {
            if who.operator {
                Ok(())
            } else {
                deny("manage tenants or the trust store")
            }
        }
        _ => Err(misrouted(op)),
    }
}

/// Runs `op` (already authorised).
pub(super) async fn run(r: &Runner<'_>, op: Op) -> Result<Value, ApiError> {
    let rt = r.rt;
    let partner_tenants = &r.partner_tenants;
    use Op::*;
    Ok(match op {
        TenantList => {
            let list: Vec<Value> = rt
                .tenants()
                .into_iter()
                .filter(|t| partner_tenants.as_ref().is_none_or(|p| p.contains(&t.id)))
                .map(|t| {
                    json!({
                        "id": t.id,
                        "region": t.region,
                        "legal_hold": t.legal_hold,
                        "plugins": t.plugins.iter().map(|(n, e)| json!({"name": n, "version": e.version.to_string()})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({ "tenants": list })
        }
        TenantCreate { id, region } => {
            rt.create_tenant_in(&id, region.as_deref(), None).await?;
            let plugins: Vec<Value> = rt
                .tenants()
                .into_iter()
                .filter(|t| t.id == id)
                .flat_map(|t| t.plugins.into_iter())
                .map(|(n, e)| json!({"name": n, "version": e.version.to_string()}))
                .collect();
            json!({ "id": id, "plugins": plugins })
        }
        TenantDelete { id } => {
            rt.delete_tenant(&id).await?;
            json!({ "deleted": id })
        }
        TenantLimits { id } => json!({ "id": id, "limits": rt.limits(&id)? }),
        TenantUsage { id } => {
            let u = rt.storage_usage(&id)?;
            json!({ "id": id, "bytes": u.bytes, "quota_bytes": u.quota_bytes })
        }
        TenantLimitsSet { id, set } => {
            let limits = rt.update_limits(&id, set).await?;
            json!({ "id": id, "limits": limits })
        }
        other => return Err(misrouted(&other)),
    })
}
