//! Data and retention (SPEC D4): retention by class and legal holds on a
//! tenant or one object; and a tenant's dialing policy (SPEC T1), which
//! like retention is a tenant's rule its admins keep within the
//! operator's bounds.
//!
//! This area's part of the one admin vocabulary (`admin::Op`): which ops
//! are its own, their names and realms for the audit trail, who may run
//! them (given the caller), and running them.

use serde_json::{Value, json};

use super::{Op, Runner, Who, deny, misrouted};
use crate::audit::Scope;
use crate::error::ApiError;
use crate::telephony::policy::Class;

/// Whether `op` is one of this area's.
pub(super) fn owns(op: &Op) -> bool {
    matches!(
        op,
        Op::RetentionShow { .. }
            | Op::RetentionSet { .. }
            | Op::HoldSet { .. }
            | Op::DialingShow { .. }
            | Op::DialingSet { .. }
            | Op::CallRecords { .. }
            | Op::CallCounts { .. }
    )
}

/// The op's name in the audit trail.
pub(super) fn op_name(op: &Op) -> &'static str {
    use Op::*;
    match op {
        RetentionShow { .. } => "retention-show",
        RetentionSet { .. } => "retention-set",
        HoldSet { .. } => "hold-set",
        DialingShow { .. } => "dialing-show",
        DialingSet { .. } => "dialing-set",
        CallRecords { .. } => "call-records",
        CallCounts { .. } => "call-counts",
        _ => "unknown",
    }
}

/// The realm the op aims at (where a refusal is audited).
pub(super) fn op_realm(op: &Op) -> Option<Scope> {
    use Op::*;
    match op {
        RetentionShow { tenant }
        | RetentionSet { tenant, .. }
        | HoldSet { tenant, .. }
        | DialingShow { tenant }
        | DialingSet { tenant, .. }
        | CallRecords { tenant, .. }
        | CallCounts { tenant, .. } => Scope::parse(tenant),
        _ => None,
    }
}

/// Whether the signed-in caller may run `op`.
pub(super) fn authorize(who: &Who<'_>, op: &Op) -> Result<(), ApiError> {
    use Op::*;
    match op {
        RetentionShow { tenant } => {
            if who.operator || who.own_tenant(tenant) {
                Ok(())
            } else {
                deny("see this tenant's retention (its admins and operators may)")
            }
        }
        // The audit trail's retention and a tenant-wide hold are the
        // who.operator's: a tenant admin could otherwise prune the record of
        // their own actions or lift a hold placed on the tenant.
        RetentionSet { tenant, class, .. } => {
            if who.operator || (who.own_tenant(tenant) && class != "audit") {
                Ok(())
            } else {
                deny("set this retention (the audit trail's is the operator's)")
            }
        }
        HoldSet {
            tenant, blob, on, ..
        } => {
            if who.operator || (who.own_tenant(tenant) && (blob.is_some() || *on)) {
                Ok(())
            } else {
                deny("lift a hold on the whole tenant (operators may)")
            }
        }
        // Who called whom is the tenant's; operators see counts (SPEC I8).
        CallRecords { tenant, .. } => {
            if who.own_tenant(tenant) {
                Ok(())
            } else {
                deny("read this tenant's call records (its admins may; operators see counts)")
            }
        }
        CallCounts { tenant, .. } => {
            if who.operator || who.own_tenant(tenant) {
                Ok(())
            } else {
                deny("see this tenant's call counts (its admins and operators may)")
            }
        }
        DialingShow { tenant } => {
            if who.operator || who.own_tenant(tenant) {
                Ok(())
            } else {
                deny("see this tenant's dialing policy (its admins and operators may)")
            }
        }
        // Toll fraud: numbers that bill the caller at a premium rate, or
        // that cannot be classified, are the operator's to open.
        DialingSet { tenant, dialing } => {
            let opens_toll = dialing
                .classes
                .iter()
                .flatten()
                .filter_map(|c| Class::from_name(c))
                .any(|c| Class::OPERATOR_ONLY.contains(&c));
            if who.operator || (who.own_tenant(tenant) && !opens_toll) {
                Ok(())
            } else if who.own_tenant(tenant) {
                deny("open premium-rate, shared-cost or unknown numbers (operators may)")
            } else {
                deny("set this tenant's dialing policy (its admins and operators may)")
            }
        }
        _ => Err(misrouted(op)),
    }
}

/// Runs `op` (already authorised).
pub(super) async fn run(r: &Runner<'_>, op: Op) -> Result<Value, ApiError> {
    let rt = r.rt;
    use Op::*;
    Ok(match op {
        RetentionShow { tenant } => {
            let (days, hold) = rt.retention_policy(&tenant)?;
            json!({ "days": days, "legal_hold": hold })
        }
        RetentionSet {
            tenant,
            class,
            days,
        } => {
            rt.set_retention(&tenant, &class, days).await?;
            let (days, hold) = rt.retention_policy(&tenant)?;
            json!({ "days": days, "legal_hold": hold })
        }
        HoldSet {
            tenant,
            on,
            plugin,
            blob,
        } => {
            match (plugin, blob) {
                (Some(p), Some(b)) => rt.set_blob_hold(&tenant, &p, &b, on).await?,
                (None, None) => rt.set_legal_hold(&tenant, on).await?,
                _ => {
                    return Err(ApiError::bad(
                        "a hold on one object names both plugin and blob".to_string(),
                    ));
                }
            }
            json!({ "legal_hold": on })
        }
        CallRecords {
            tenant,
            from_ms,
            to_ms,
            after,
            limit,
        } => {
            let page = rt.call_records(
                &tenant,
                from_ms,
                to_ms.unwrap_or(u64::MAX),
                after.as_deref(),
                limit.unwrap_or(crate::runtime::telephony::MAX_RECORDS_PAGE),
            )?;
            serde_json::to_value(page).map_err(|e| ApiError::new(500, "internal", e.to_string()))?
        }
        CallCounts {
            tenant,
            from_ms,
            to_ms,
        } => rt.call_counts(&tenant, from_ms, to_ms.unwrap_or(u64::MAX))?,
        DialingShow { tenant } => rt.dialing(&tenant)?,
        DialingSet { tenant, dialing } => {
            rt.set_dialing(&tenant, dialing).await?;
            rt.dialing(&tenant)?
        }
        other => return Err(misrouted(&other)),
    })
}
