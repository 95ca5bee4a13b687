//! Accounts and sessions of a realm, and its sign-in policy (SPEC I1–I4):
//! who may touch which account, including operators' bootstrap of a
//! tenant's first admin.
//!
//! This area's part of the one admin vocabulary (`admin::Op`): which ops
//! are its own, their names and realms for the audit trail, who may run
//! them (given the caller), and running them.

use serde_json::{Value, json};

use super::{Op, Runner, Who, deny, misrouted, realm};
use crate::audit::Scope;
use crate::error::ApiError;
use crate::identity::Role;

/// Whether `op` is one of this area's.
pub(super) fn owns(op: &Op) -> bool {
    matches!(
        op,
        Op::UserList { .. }
            | Op::UserShow { .. }
            | Op::UserCreate { .. }
            | Op::UserUpdate { .. }
            | Op::UserDelete { .. }
            | Op::UserResetPassword { .. }
            | Op::UserUnlock { .. }
            | Op::UserResetMfa { .. }
            | Op::SessionList { .. }
            | Op::SessionRevoke { .. }
            | Op::PolicyShow { .. }
            | Op::PolicySet { .. }
    )
}

/// The op's name in the audit trail.
pub(super) fn op_name(op: &Op) -> &'static str {
    use Op::*;
    match op {
        UserList { .. } => "user-list",
        UserShow { .. } => "user-show",
        UserCreate { .. } => "user-create",
        UserUpdate { .. } => "user-update",
        UserDelete { .. } => "user-delete",
        UserResetPassword { .. } => "user-reset-password",
        UserUnlock { .. } => "user-unlock",
        UserResetMfa { .. } => "user-reset-mfa",
        SessionList { .. } => "session-list",
        SessionRevoke { .. } => "session-revoke",
        PolicyShow { .. } => "policy-show",
        PolicySet { .. } => "policy-set",
        _ => "unknown",
    }
}

/// The realm the op aims at (where a refusal is audited).
pub(super) fn op_realm(op: &Op) -> Option<Scope> {
    use Op::*;
    match op {
        UserList { realm }
        | UserShow { realm, .. }
        | UserCreate { realm, .. }
        | UserUpdate { realm, .. }
        | UserDelete { realm, .. }
        | UserResetPassword { realm, .. }
        | UserUnlock { realm, .. }
        | UserResetMfa { realm, .. }
        | SessionList { realm, .. }
        | SessionRevoke { realm, .. }
        | PolicyShow { realm }
        | PolicySet { realm, .. } => Scope::parse(realm),
        _ => None,
    }
}

/// Whether the signed-in caller may run `op`.
pub(super) fn authorize(who: &Who<'_>, op: &Op) -> Result<(), ApiError> {
    use Op::*;
    match op {
        UserList { realm } | PolicyShow { realm } => {
            // Operators may read policies and verify trails anywhere, and
            // list users: all of the system realm, only the admins of a
            // tenant (filtered in `run`).
            if who.own_tenant(realm) || who.operator {
                Ok(())
            } else {
                deny("read this realm")
            }
        }
        PolicySet { realm, .. } => {
            if who.own_tenant(realm) {
                Ok(())
            } else {
                deny("change this tenant's sign-in policy (only its admins may)")
            }
        }
        UserShow { realm, .. }
        | UserUpdate { realm, .. }
        | UserDelete { realm, .. }
        | UserResetPassword { realm, .. }
        | UserUnlock { realm, .. }
        | UserResetMfa { realm, .. }
        | SessionList { realm, .. }
        | SessionRevoke { realm, .. }
        | UserCreate { realm, .. } => {
            let role = match op {
                UserCreate { account, .. } => Role::parse(&account.role),
                _ => who.target_role,
            };
            if who.own_tenant(realm) {
                return Ok(());
            }
            let reads = matches!(op, UserShow { .. } | SessionList { .. });
            // Operators read system accounts and tenant admins; they create
            // a tenant's first admin (bootstrap). Creating or changing
            // operators and partners is the console's (the machine owner's),
            // so no who.operator can mint a second identity to approve their
            // own access; changing a tenant's accounts needs a grant.
            if who.operator && reads && (realm == "system" || role == Some(Role::TenantAdmin)) {
                return Ok(());
            }
            if who.operator
                && matches!(op, UserCreate { .. })
                && realm != "system"
                && role == Some(Role::TenantAdmin)
                && !who.facts.tenant_has_admin
            {
                return Ok(());
            }
            deny(
                "manage this account (system accounts are managed from the console; a tenant's accounts by its admins, or by an operator with approved just-in-time access; operators create only a tenant's first admin)",
            )
        }
        _ => Err(misrouted(op)),
    }
}

/// Runs `op` (already authorised).
pub(super) async fn run(r: &Runner<'_>, op: Op) -> Result<Value, ApiError> {
    let ids = r.rt.identity();
    let is_operator = r.is_operator;
    use Op::*;
    Ok(match op {
        UserList { realm: r } => {
            let scope = realm(&r)?;
            let mut users = ids.users(&scope)?;
            if is_operator && scope != Scope::System {
                users.retain(|u| u.role == Role::TenantAdmin);
            }
            json!({ "users": users })
        }
        UserShow { realm: r, user } => {
            let scope = realm(&r)?;
            json!(ids.user(&scope, &user)?)
        }
        UserCreate { realm: r, account } => {
            let scope = realm(&r)?;
            let (user, welcome) = ids.create_user(&scope, account).await?;
            json!({ "user": user, "welcome_password": welcome })
        }
        UserUpdate {
            realm: r,
            user,
            change,
        } => {
            let scope = realm(&r)?;
            if is_operator
                && scope != Scope::System
                && change
                    .role
                    .as_deref()
                    .and_then(Role::parse)
                    .is_some_and(|r| r != Role::TenantAdmin)
            {
                return deny("turn a tenant admin into a user").map(|_| Value::Null);
            }
            json!(ids.update_user(&scope, &user, change).await?)
        }
        UserDelete { realm: r, user } => {
            let scope = realm(&r)?;
            ids.delete_user(&scope, &user).await?;
            json!({ "deleted": user })
        }
        UserResetPassword { realm: r, user } => {
            let scope = realm(&r)?;
            let welcome = ids.reset_password(&scope, &user).await?;
            json!({ "user": user, "welcome_password": welcome })
        }
        UserUnlock { realm: r, user } => {
            ids.unlock(&realm(&r)?, &user).await?;
            json!({ "unlocked": user })
        }
        UserResetMfa { realm: r, user } => {
            ids.reset_mfa(&realm(&r)?, &user).await?;
            json!({ "mfa_reset": user })
        }
        SessionList { realm: r, user } => {
            json!({ "sessions": ids.sessions(&realm(&r)?, &user, None)? })
        }
        SessionRevoke {
            realm: r,
            user,
            session,
        } => {
            let scope = realm(&r)?;
            match session {
                Some(id) => {
                    ids.revoke_session(&scope, &user, &id).await?;
                    json!({ "revoked": 1 })
                }
                None => json!({ "revoked": ids.revoke_all(&scope, &user).await? }),
            }
        }
        PolicyShow { realm: r } => json!(ids.policy(&realm(&r)?)?),
        PolicySet { realm: r, policy } => {
            ids.set_policy(&realm(&r)?, policy.clone()).await?;
            json!(policy)
        }
        other => return Err(misrouted(&other)),
    })
}
