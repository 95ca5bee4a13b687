//! The audit trail (SPEC I9): verify, export, write to a file (console
//! only), the signing key.
//!
//! This area's part of the one admin vocabulary (`admin::Op`): which ops
//! are its own, their names and realms for the audit trail, who may run
//! them (given the caller), and running them.

use serde_json::{Value, json};

use super::{Op, Runner, Who, deny, misrouted, realm, require_trail};
use crate::audit;
use crate::audit::Scope;
use crate::error::ApiError;

/// Whether `op` is one of this area's.
pub(super) fn owns(op: &Op) -> bool {
    matches!(
        op,
        Op::AuditVerify { .. } | Op::AuditExport { .. } | Op::AuditKey | Op::AuditWrite { .. }
    )
}

/// The op's name in the audit trail.
pub(super) fn op_name(op: &Op) -> &'static str {
    use Op::*;
    match op {
        AuditVerify { .. } => "audit-verify",
        AuditExport { .. } => "audit-export",
        AuditKey => "audit-key",
        AuditWrite { .. } => "audit-write",
        _ => "unknown",
    }
}

/// The realm the op aims at (where a refusal is audited).
pub(super) fn op_realm(op: &Op) -> Option<Scope> {
    use Op::*;
    match op {
        AuditVerify { realm } | AuditExport { realm, .. } | AuditWrite { realm, .. } => {
            Scope::parse(realm)
        }
        _ => None,
    }
}

/// Whether the signed-in caller may run `op`.
pub(super) fn authorize(who: &Who<'_>, op: &Op) -> Result<(), ApiError> {
    use Op::*;
    match op {
        AuditKey => who.may_see_catalogue(),
        AuditVerify { realm } => {
            // Operators may read policies and verify trails anywhere, and
            // list users: all of the system realm, only the admins of a
            // tenant (filtered in `run`).
            if who.own_tenant(realm) || who.operator {
                Ok(())
            } else {
                deny("read this realm")
            }
        }
        AuditWrite { .. } => deny("write files on the server (console only)"),
        AuditExport { realm, .. } => {
            if who.own_tenant(realm) || (who.operator && realm == "system") {
                Ok(())
            } else {
                deny(
                    "read this tenant's audit trail (its admins may; operators need approved just-in-time access)",
                )
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
        AuditVerify { realm: r } => {
            let scope = realm(&r)?;
            require_trail(rt, &scope)?;
            let log = rt.audit_log();
            json!(log.verify(&scope)?)
        }
        AuditExport {
            realm: r,
            after,
            limit,
        } => {
            let scope = realm(&r)?;
            require_trail(rt, &scope)?;
            let entries = rt
                .audit_log()
                .entries(&scope, after, limit.clamp(1, 10_000))?;
            json!({ "entries": entries })
        }
        AuditWrite { realm: r, path } => {
            let scope = realm(&r)?;
            require_trail(rt, &scope)?;
            let file = std::fs::File::create(&path).map_err(|e| {
                ApiError::new(
                    400,
                    "io_error",
                    format!("cannot create {}: {e}", path.display()),
                )
            })?;
            let mut w = std::io::BufWriter::new(file);
            let n = rt.audit_log().export(&scope, &mut w)?;
            std::io::Write::flush(&mut w).map_err(|e| {
                ApiError::new(
                    500,
                    "io_error",
                    format!("cannot write {}: {e}", path.display()),
                )
            })?;
            json!({ "entries": n, "path": path })
        }
        AuditKey => {
            let key = rt.audit_log().public_key();
            json!({ "public_key": hex::encode(key.as_bytes()), "key_id": audit::key_id(&key) })
        }
        other => return Err(misrouted(&other)),
    })
}
