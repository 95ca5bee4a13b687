//! Just-in-time access (SPEC I8): requests, decisions and revocations; who
//! may decide is `identity::access`'s rule.
//!
//! This area's part of the one admin vocabulary (`admin::Op`): which ops
//! are its own, their names and realms for the audit trail, who may run
//! them (given the caller), and running them.

use serde_json::{Value, json};

use super::{Op, Runner, Who, deny, misrouted, person};
use crate::audit::Scope;
use crate::error::ApiError;
use crate::identity::access;

/// Whether `op` is one of this area's.
pub(super) fn owns(op: &Op) -> bool {
    matches!(
        op,
        Op::AccessList { .. }
            | Op::AccessRequest { .. }
            | Op::AccessDecide { .. }
            | Op::AccessRevoke { .. }
    )
}

/// The op's name in the audit trail.
pub(super) fn op_name(op: &Op) -> &'static str {
    use Op::*;
    match op {
        AccessList { .. } => "access-list",
        AccessRequest { .. } => "access-request",
        AccessDecide { .. } => "access-decide",
        AccessRevoke { .. } => "access-revoke",
        _ => "unknown",
    }
}

/// The realm the op aims at (where a refusal is audited).
pub(super) fn op_realm(op: &Op) -> Option<Scope> {
    use Op::*;
    match op {
        AccessRequest { tenant, .. } => Scope::parse(tenant),
        _ => None,
    }
}

/// Whether the signed-in caller may run `op`.
pub(super) fn authorize(who: &Who<'_>, op: &Op) -> Result<(), ApiError> {
    use Op::*;
    match op {
        // Who may request, decide or revoke is checked by `access` itself
        // (it depends on the request); listing is for operators and a
        // tenant's admins (their own tenant's requests).
        AccessRequest { .. } | AccessDecide { .. } | AccessRevoke { .. } => Ok(()),
        AccessList { tenant } => {
            if who.operator || tenant.as_deref().is_some_and(|t| who.own_tenant(t)) {
                Ok(())
            } else {
                deny("list access requests (operators, or a tenant admin for their tenant)")
            }
        }
        _ => Err(misrouted(op)),
    }
}

/// Runs `op` (already authorised).
pub(super) async fn run(r: &Runner<'_>, op: Op) -> Result<Value, ApiError> {
    let rt = r.rt;
    let actor = r.actor;
    use Op::*;
    Ok(match op {
        AccessList { tenant } => {
            let now = crate::support::clock::now_ms();
            let list: Vec<Value> = access::list(rt.identity(), tenant.as_deref())?
                .into_iter()
                .map(|g| {
                    let status = g.status(now);
                    let mut v = json!(g);
                    v["status"] = json!(status);
                    v
                })
                .collect();
            json!({ "requests": list })
        }
        AccessRequest {
            tenant,
            ticket,
            reason,
            scope,
            minutes,
        } => {
            let who = person(actor).ok_or_else(|| {
                ApiError::forbidden(
                    "just-in-time access is requested by a signed-in operator, not the console",
                )
            })?;
            let exists = rt.tenants().iter().any(|t| t.id == tenant);
            json!(
                access::request(
                    rt.identity(),
                    &who,
                    &tenant,
                    exists,
                    access::Ask {
                        ticket: &ticket,
                        reason: &reason,
                        scope,
                        minutes,
                    },
                )
                .await?
            )
        }
        AccessDecide { id, approve } => {
            let who = person(actor).ok_or_else(|| {
                ApiError::forbidden("a signed-in operator or tenant admin decides, not the console")
            })?;
            json!(access::decide(rt.identity(), &who, &id, approve).await?)
        }
        AccessRevoke { id } => {
            json!(access::revoke(rt.identity(), person(actor).as_ref(), &id).await?)
        }
        other => return Err(misrouted(&other)),
    })
}
