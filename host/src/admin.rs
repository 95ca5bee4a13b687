//! Administration: one set of operations (`Op`) behind the admin HTTP API,
//! the CLI and the control socket, each authorised against the acting
//! party's role and tenant (SPEC I1, I8) before it runs, and audited.
//!
//! Who may do what:
//!
//! | operation                         | console | operator | partner        | tenant admin |
//! |-----------------------------------|---------|----------|----------------|--------------|
//! | tenants: list, create, delete     | yes     | yes      | list assigned  | no           |
//! | trust store, plugin packages      | yes     | yes      | list packages  | no           |
//! | enable / disable plugins          | yes     | yes      | assigned       | own tenant   |
//! | system accounts (operators...)    | yes     | yes      | no             | no           |
//! | tenant admins' accounts           | yes     | yes      | no             | own tenant   |
//! | other tenant users                | yes     | no       | no             | own tenant   |
//! | sign-in policy                    | yes     | read     | no             | own tenant   |
//! | audit: verify                     | yes     | yes      | no             | own tenant   |
//! | audit: export (content)           | yes     | system   | no             | own tenant   |
//!
//! "Console" is the machine's operator on the local CLI or control socket
//! (file-system permissions are the credential). Operators manage only the
//! tenant-admin accounts of a tenant — enough to bootstrap and support it —
//! and see no user directory, audit content or plugin data (SPEC I8).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_signing::Capability;

use crate::audit::{self, Scope};
pub use crate::error::ApiError;
use crate::identity::access::{self, AccessScope, Person};
use crate::identity::{AccountChange, AuthError, Caller, NewAccount, Policy, Role};
use crate::identity::{oidc, sso};
use crate::runtime::Runtime;

/// One administrative operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    TenantList,
    TenantCreate {
        id: String,
        region: Option<String>,
    },
    TenantDelete {
        id: String,
    },
    UserList {
        realm: String,
    },
    UserShow {
        realm: String,
        user: String,
    },
    UserCreate {
        realm: String,
        account: NewAccount,
    },
    UserUpdate {
        realm: String,
        user: String,
        change: AccountChange,
    },
    UserDelete {
        realm: String,
        user: String,
    },
    UserResetPassword {
        realm: String,
        user: String,
    },
    UserUnlock {
        realm: String,
        user: String,
    },
    UserResetMfa {
        realm: String,
        user: String,
    },
    SessionList {
        realm: String,
        user: String,
    },
    /// One session by id, or all of the user's when `session` is absent.
    SessionRevoke {
        realm: String,
        user: String,
        session: Option<String>,
    },
    PolicyShow {
        realm: String,
    },
    PolicySet {
        realm: String,
        policy: Policy,
    },
    AuditVerify {
        realm: String,
    },
    /// Entries after `after`, at most `limit`, as JSON lines.
    AuditExport {
        realm: String,
        after: u64,
        limit: usize,
    },
    /// Writes the whole export to a file on the server's machine (console
    /// only).
    AuditWrite {
        realm: String,
        path: std::path::PathBuf,
    },
    AuditKey,
    TrustList,
    TrustAdd {
        public_key: String,
        label: String,
    },
    TrustRevoke {
        key_id: String,
    },
    PluginList,
    PluginEnable {
        tenant: String,
        name: String,
        version: String,
        grants: Option<Vec<String>>,
    },
    PluginDisable {
        tenant: String,
        name: String,
    },
    /// A tenant's retention periods per class and its legal hold.
    RetentionShow {
        tenant: String,
    },
    /// Sets the retention of one class: `days`, or `None` to keep.
    RetentionSet {
        tenant: String,
        class: String,
        days: Option<u32>,
    },
    /// Sets or releases a legal hold on the tenant, or on one blob of one
    /// plugin (e.g. a recording's media).
    HoldSet {
        tenant: String,
        on: bool,
        #[serde(default)]
        plugin: Option<String>,
        #[serde(default)]
        blob: Option<String>,
    },
    /// The settings of an enabled plugin, defaults filled in.
    PluginConfigShow {
        tenant: String,
        name: String,
    },
    /// Replaces the settings of an enabled plugin (validated against its
    /// manifest's schema); in force from the next call.
    PluginConfigSet {
        tenant: String,
        name: String,
        config: serde_json::Map<String, Value>,
    },
    OidcClientList {
        tenant: String,
    },
    OidcClientAdd {
        tenant: String,
        name: String,
        redirect_uris: Vec<String>,
        public: bool,
    },
    OidcClientRemove {
        tenant: String,
        id: String,
    },
    /// Just-in-time access (SPEC I8).
    AccessList {
        tenant: Option<String>,
    },
    AccessRequest {
        tenant: String,
        ticket: String,
        reason: String,
        scope: AccessScope,
        minutes: u32,
    },
    AccessDecide {
        id: String,
        approve: bool,
    },
    AccessRevoke {
        id: String,
    },
    /// Single sign-on through the tenant's identity provider (SPEC I6).
    SsoShow {
        tenant: String,
    },
    SsoSet {
        tenant: String,
        config: sso::SsoConfig,
    },
    SsoRemove {
        tenant: String,
    },
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Actor {
    /// The local CLI or control socket.
    Console,
    /// A signed-in caller of the HTTP API.
    Caller(Box<Caller>),
}

/// Parses a realm name: `system` or a tenant id.
pub fn realm(text: &str) -> Result<Scope, ApiError> {
    Scope::parse(text).ok_or_else(|| {
        ApiError::bad(format!(
            "{:?} is neither `system` nor a tenant id ([a-z0-9-], at most 63)",
            text.chars().take(80).collect::<String>()
        ))
    })
}

fn deny(what: &str) -> Result<(), ApiError> {
    Err(ApiError::forbidden(format!("your role may not {what}")))
}

/// Whether `actor` may run `op`. `target_role` is the role of the account
/// an account operation touches (read before authorising).
/// Facts about the target an authorisation decision needs.
#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    /// Whether the tenant an account operation aims at has an admin.
    tenant_has_admin: bool,
}

fn authorize(
    actor: &Actor,
    op: &Op,
    target_role: Option<Role>,
    ctx: Facts,
) -> Result<(), ApiError> {
    let Actor::Caller(c) = actor else {
        return Ok(());
    };
    if let Some(r) = c.restriction {
        return Err(AuthError::Restricted(r).into());
    }
    let own_tenant = |realm: &str| c.role == Role::TenantAdmin && c.tenant() == Some(realm);
    let assigned = |tenant: &str| c.role == Role::Partner && c.tenants.iter().any(|t| t == tenant);
    let operator = c.role == Role::Operator;
    use Op::*;
    match op {
        TenantList => {
            if operator || c.role == Role::Partner {
                Ok(())
            } else {
                deny("list tenants")
            }
        }
        TenantCreate { .. } | TenantDelete { .. } | TrustAdd { .. } | TrustRevoke { .. } => {
            if operator {
                Ok(())
            } else {
                deny("manage tenants or the trust store")
            }
        }
        TrustList | AuditKey | PluginList => {
            if operator || c.role == Role::Partner || c.role == Role::TenantAdmin {
                Ok(())
            } else {
                deny("see the plugin catalogue")
            }
        }
        RetentionShow { tenant } => {
            if operator || own_tenant(tenant) {
                Ok(())
            } else {
                deny("see this tenant's retention (its admins and operators may)")
            }
        }
        // The audit trail's retention and a tenant-wide hold are the
        // operator's: a tenant admin could otherwise prune the record of
        // their own actions or lift a hold placed on the tenant.
        RetentionSet { tenant, class, .. } => {
            if operator || (own_tenant(tenant) && class != "audit") {
                Ok(())
            } else {
                deny("set this retention (the audit trail's is the operator's)")
            }
        }
        HoldSet {
            tenant, blob, on, ..
        } => {
            if operator || (own_tenant(tenant) && (blob.is_some() || *on)) {
                Ok(())
            } else {
                deny("lift a hold on the whole tenant (operators may)")
            }
        }
        PluginEnable { tenant, .. }
        | PluginDisable { tenant, .. }
        | PluginConfigShow { tenant, .. }
        | PluginConfigSet { tenant, .. } => {
            if operator || own_tenant(tenant) || assigned(tenant) {
                Ok(())
            } else {
                deny("configure this tenant's plugins")
            }
        }
        UserList { realm } | PolicyShow { realm } | AuditVerify { realm } => {
            // Operators may read policies and verify trails anywhere, and
            // list users: all of the system realm, only the admins of a
            // tenant (filtered in `run`).
            if own_tenant(realm) || operator {
                Ok(())
            } else {
                deny("read this realm")
            }
        }
        OidcClientList { tenant }
        | OidcClientAdd { tenant, .. }
        | OidcClientRemove { tenant, .. }
        | SsoShow { tenant }
        | SsoSet { tenant, .. }
        | SsoRemove { tenant } => {
            if own_tenant(tenant) {
                Ok(())
            } else {
                deny(
                    "manage this tenant's OpenID Connect clients or single sign-on (its admins may)",
                )
            }
        }
        // Who may request, decide or revoke is checked by `access` itself
        // (it depends on the request); listing is for operators and a
        // tenant's admins (their own tenant's requests).
        AccessRequest { .. } | AccessDecide { .. } | AccessRevoke { .. } => Ok(()),
        AccessList { tenant } => {
            if operator || tenant.as_deref().is_some_and(own_tenant) {
                Ok(())
            } else {
                deny("list access requests (operators, or a tenant admin for their tenant)")
            }
        }
        PolicySet { realm, .. } => {
            if own_tenant(realm) {
                Ok(())
            } else {
                deny("change this tenant's sign-in policy (only its admins may)")
            }
        }
        AuditWrite { .. } => deny("write files on the server (console only)"),
        AuditExport { realm, .. } => {
            if own_tenant(realm) || (operator && realm == "system") {
                Ok(())
            } else {
                deny(
                    "read this tenant's audit trail (its admins may; operators need approved just-in-time access)",
                )
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
                _ => target_role,
            };
            if own_tenant(realm) {
                return Ok(());
            }
            let reads = matches!(op, UserShow { .. } | SessionList { .. });
            // Operators read system accounts and tenant admins; they create
            // a tenant's first admin (bootstrap). Creating or changing
            // operators and partners is the console's (the machine owner's),
            // so no operator can mint a second identity to approve their
            // own access; changing a tenant's accounts needs a grant.
            if operator && reads && (realm == "system" || role == Some(Role::TenantAdmin)) {
                return Ok(());
            }
            if operator
                && matches!(op, UserCreate { .. })
                && realm != "system"
                && role == Some(Role::TenantAdmin)
                && !ctx.tenant_has_admin
            {
                return Ok(());
            }
            deny(
                "manage this account (system accounts are managed from the console; a tenant's accounts by its admins, or by an operator with approved just-in-time access; operators create only a tenant's first admin)",
            )
        }
    }
}

fn target_of(op: &Op) -> Option<(&str, &str)> {
    use Op::*;
    match op {
        UserShow { realm, user }
        | UserUpdate { realm, user, .. }
        | UserDelete { realm, user }
        | UserResetPassword { realm, user }
        | UserUnlock { realm, user }
        | UserResetMfa { realm, user }
        | SessionList { realm, user }
        | SessionRevoke { realm, user, .. } => Some((realm, user)),
        _ => None,
    }
}

/// Runs `op` for `actor`: authorises, executes, and returns the result as
/// JSON. Refusals are audited in the realm they aimed at.
pub async fn execute(rt: &Runtime, actor: &Actor, op: Op) -> Result<Value, ApiError> {
    let ids = rt.identity();
    // The role of the account an operation touches decides whether an
    // operator may (tenant admins only); an unknown account is a 404 only
    // for those allowed to look.
    let mut target_role = None;
    let mut facts = Facts::default();
    if let Some((r, u)) = target_of(&op) {
        let scope = realm(r)?;
        // An unknown tenant must look like an unknown user, not leak
        // through a storage error.
        if realm_exists(rt, &scope) {
            target_role = ids.user(&scope, u)?.map(|v| v.role);
        }
    }
    if let Op::UserCreate { realm: r, .. } = &op {
        let scope = realm(r)?;
        if scope != Scope::System && realm_exists(rt, &scope) {
            facts.tenant_has_admin = ids
                .users(&scope)?
                .iter()
                .any(|u| u.role == Role::TenantAdmin);
        }
    }
    // Operators list a tenant's admins without a grant; with one, the
    // whole directory (and the listing is recorded as access).
    let mut grant = match op {
        Op::UserList { .. } => jit_grant(rt, actor, &op, target_role),
        _ => None,
    };
    if grant.is_none() && authorize(actor, &op, target_role, facts).is_err() {
        grant = jit_grant(rt, actor, &op, target_role);
    }
    if grant.is_none()
        && let Err(e) = authorize(actor, &op, target_role, facts)
    {
        let scope = op_realm(&op).unwrap_or(Scope::System);
        let scope = match &scope {
            Scope::Tenant(t) if !rt.tenants().iter().any(|r| &r.id == t) => Scope::System,
            _ => scope,
        };
        rt.audit_log()
            .append(
                &scope,
                audit::Record {
                    action: "admin.denied",
                    target: op_name(&op),
                    outcome: audit::outcome::DENIED,
                    details: &e.message,
                },
            )
            .ok();
        return Err(e);
    }
    if let Some((r, u)) = target_of(&op)
        && target_role.is_none()
    {
        return Err(ApiError::new(
            404,
            "not_found",
            format!("user {u} not found in {r}"),
        ));
    }
    match grant {
        None => run(rt, actor, op, false).await,
        Some(g) => {
            // Every operation under a grant is recorded, reads included,
            // in both trails, and everything it changes carries its id.
            let what = op_name(&op);
            for scope in [Scope::System, Scope::tenant(&g.tenant)] {
                rt.audit_log()
                    .append(
                        &scope,
                        audit::Record {
                            action: "access.use",
                            target: what,
                            outcome: audit::outcome::SUCCESS,
                            details: &format!(
                                "grant {} ({:?}), ticket {}",
                                g.id, g.scope, g.ticket
                            ),
                        },
                    )
                    .ok();
            }
            let ctx = audit::Context {
                access: Some(g.id.clone()),
                ..audit::context()
            };
            audit::with_context(ctx, run(rt, actor, op, true)).await
        }
    }
}

/// The scope of just-in-time access an operator needs for `op`, and the
/// tenant it concerns.
fn needed_scope(op: &Op, target_role: Option<Role>) -> Option<(&str, AccessScope)> {
    use Op::*;
    let (realm, scope) = match op {
        AuditExport { realm, .. } => (realm, AccessScope::AuditRead),
        UserList { realm } | UserShow { realm, .. } | SessionList { realm, .. } => {
            (realm, AccessScope::DirectoryRead)
        }
        UserUpdate { realm, .. }
        | UserDelete { realm, .. }
        | UserResetPassword { realm, .. }
        | UserUnlock { realm, .. }
        | UserResetMfa { realm, .. }
        | SessionRevoke { realm, .. } => (realm, AccessScope::DirectoryManage),
        _ => return None,
    };
    let _ = target_role;
    (realm != "system").then_some((realm.as_str(), scope))
}

/// An active grant letting operator `actor` run `op`, if any.
fn jit_grant(
    rt: &Runtime,
    actor: &Actor,
    op: &Op,
    target_role: Option<Role>,
) -> Option<access::Grant> {
    let Actor::Caller(c) = actor else { return None };
    if c.role != Role::Operator || c.restriction.is_some() {
        return None;
    }
    let (tenant, scope) = needed_scope(op, target_role)?;
    access::active(rt.identity(), &c.user, tenant)
        .into_iter()
        .find(|g| g.covers(scope))
}

fn person(actor: &Actor) -> Option<Person> {
    match actor {
        Actor::Console => None,
        Actor::Caller(c) => Some(Person {
            user: c.user.clone(),
            name: c.username.clone(),
            role: c.role,
            tenant: c.tenant().map(str::to_string),
        }),
    }
}

fn realm_exists(rt: &Runtime, scope: &Scope) -> bool {
    match scope {
        Scope::System => true,
        Scope::Tenant(t) => rt.tenants().iter().any(|r| &r.id == t),
    }
}

fn op_name(op: &Op) -> &'static str {
    use Op::*;
    match op {
        TenantList => "tenant-list",
        TenantCreate { .. } => "tenant-create",
        TenantDelete { .. } => "tenant-delete",
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
        AuditVerify { .. } => "audit-verify",
        AuditExport { .. } => "audit-export",
        AuditKey => "audit-key",
        AuditWrite { .. } => "audit-write",
        TrustList => "trust-list",
        TrustAdd { .. } => "trust-add",
        TrustRevoke { .. } => "trust-revoke",
        PluginList => "plugin-list",
        PluginEnable { .. } => "plugin-enable",
        PluginDisable { .. } => "plugin-disable",
        RetentionShow { .. } => "retention-show",
        RetentionSet { .. } => "retention-set",
        HoldSet { .. } => "hold-set",
        PluginConfigShow { .. } => "plugin-config-show",
        PluginConfigSet { .. } => "plugin-config-set",
        OidcClientList { .. } => "oidc-client-list",
        OidcClientAdd { .. } => "oidc-client-add",
        OidcClientRemove { .. } => "oidc-client-remove",
        AccessList { .. } => "access-list",
        AccessRequest { .. } => "access-request",
        AccessDecide { .. } => "access-decide",
        AccessRevoke { .. } => "access-revoke",
        SsoShow { .. } => "sso-show",
        SsoSet { .. } => "sso-set",
        SsoRemove { .. } => "sso-remove",
    }
}

fn op_realm(op: &Op) -> Option<Scope> {
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
        | PolicySet { realm, .. }
        | AuditVerify { realm }
        | AuditExport { realm, .. }
        | AuditWrite { realm, .. } => Scope::parse(realm),
        PluginEnable { tenant, .. }
        | PluginDisable { tenant, .. }
        | PluginConfigShow { tenant, .. }
        | PluginConfigSet { tenant, .. }
        | RetentionShow { tenant }
        | RetentionSet { tenant, .. }
        | HoldSet { tenant, .. }
        | OidcClientList { tenant }
        | OidcClientAdd { tenant, .. }
        | OidcClientRemove { tenant, .. }
        | SsoShow { tenant }
        | SsoSet { tenant, .. }
        | SsoRemove { tenant } => Scope::parse(tenant),
        TenantDelete { id } => Scope::parse(id),
        AccessRequest { tenant, .. } => Scope::parse(tenant),
        _ => None,
    }
}

async fn run(rt: &Runtime, actor: &Actor, op: Op, granted: bool) -> Result<Value, ApiError> {
    let ids = rt.identity();
    let is_operator = !granted && matches!(actor, Actor::Caller(c) if c.role == Role::Operator);
    let partner_tenants = match actor {
        Actor::Caller(c) if c.role == Role::Partner => Some(c.tenants.clone()),
        _ => None,
    };
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
            json!({ "id": id })
        }
        TenantDelete { id } => {
            rt.delete_tenant(&id).await?;
            json!({ "deleted": id })
        }
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
        TrustList => json!({ "keys": rt.trusted_keys() }),
        TrustAdd { public_key, label } => {
            let key = crate::audit::parse_public_key(&public_key)
                .map_err(|e| ApiError::new(400, "key_malformed", e))?;
            let id = rt.trust_add(&key, &label).await?;
            json!({ "key_id": id.to_string() })
        }
        TrustRevoke { key_id } => {
            let id: switchboard_signing::KeyId = key_id.parse().map_err(|_| {
                ApiError::new(
                    400,
                    "key_malformed",
                    format!("{key_id:?} is not a key id (32 hex digits)"),
                )
            })?;
            let disabled = rt.trust_revoke(&id).await?;
            json!({ "revoked": key_id, "disabled": disabled.iter().map(|(n, v)| format!("{n}@{v}")).collect::<Vec<_>>() })
        }
        PluginList => {
            let list: Vec<Value> = rt
                .plugins()
                .into_iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "version": p.version.to_string(),
                        "digest": p.digest,
                        "publisher": p.publisher,
                        "revoked": p.revoked,
                        "capabilities": p.capabilities.iter().map(|c| c.interface()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({ "plugins": list })
        }
        PluginEnable {
            tenant,
            name,
            version,
            grants,
        } => {
            let version = semver::Version::parse(&version)
                .map_err(|e| ApiError::bad(format!("version {version:?}: {e}")))?;
            let grants = match grants {
                Some(list) => Some(
                    list.iter()
                        .map(|g| {
                            Capability::from_interface(g)
                                .ok_or_else(|| ApiError::bad(format!("unknown capability {g:?}")))
                        })
                        .collect::<Result<BTreeSet<_>, _>>()?,
                ),
                None => None,
            };
            rt.enable_plugin(&tenant, &name, &version, grants, Default::default())
                .await?;
            json!({ "enabled": name, "version": version.to_string() })
        }
        PluginDisable { tenant, name } => {
            rt.disable_plugin(&tenant, &name).await?;
            json!({ "disabled": name })
        }
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
        PluginConfigShow { tenant, name } => {
            json!({ "plugin": name, "config": rt.plugin_config(&tenant, &name)? })
        }
        PluginConfigSet {
            tenant,
            name,
            config,
        } => {
            rt.set_config(&tenant, &name, config).await?;
            json!({ "plugin": name, "config": rt.plugin_config(&tenant, &name)? })
        }
        OidcClientList { tenant } => {
            require_tenant(rt, &tenant)?;
            json!({ "clients": oidc::clients(rt.identity(), &tenant)? })
        }
        OidcClientAdd {
            tenant,
            name,
            redirect_uris,
            public,
        } => {
            let (client, secret) = {
                require_tenant(rt, &tenant)?;
                oidc::add_client(rt.identity(), &tenant, &name, redirect_uris, public).await?
            };
            json!({ "client": client, "client_secret": secret })
        }
        OidcClientRemove { tenant, id } => {
            require_tenant(rt, &tenant)?;
            oidc::remove_client(rt.identity(), &tenant, &id).await?;
            json!({ "removed": id })
        }
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
            {
                let exists = rt.tenants().iter().any(|t| t.id == tenant);
                json!(
                    access::request(
                        rt.identity(),
                        &who,
                        &tenant,
                        &ticket,
                        &reason,
                        scope,
                        minutes,
                        exists
                    )
                    .await?
                )
            }
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
        SsoShow { tenant } => {
            require_tenant(rt, &tenant)?;
            sso::show(rt.identity(), &tenant)?
        }
        SsoSet { tenant, config } => {
            require_tenant(rt, &tenant)?;
            sso::set(rt.identity(), &tenant, config).await?;
            sso::show(rt.identity(), &tenant)?
        }
        SsoRemove { tenant } => {
            require_tenant(rt, &tenant)?;
            sso::remove(rt.identity(), &tenant).await?;
            json!({ "removed": tenant })
        }
    })
}

fn require_trail(rt: &Runtime, scope: &Scope) -> Result<(), ApiError> {
    match scope {
        Scope::Tenant(t) => require_tenant(rt, t),
        Scope::System => Ok(()),
    }
}

/// `tenant_not_found` unless `tenant` exists.
pub(crate) fn require_tenant(rt: &Runtime, tenant: &str) -> Result<(), ApiError> {
    if rt.tenants().iter().any(|t| t.id == tenant) {
        Ok(())
    } else {
        Err(ApiError::new(
            404,
            "tenant_not_found",
            format!("tenant {tenant:?} does not exist"),
        ))
    }
}

/// The audit context for `actor`.
pub fn context_of(
    actor: &Actor,
    source: Option<String>,
    request_id: Option<String>,
) -> audit::Context {
    match actor {
        Actor::Console => audit::Context::console(),
        Actor::Caller(c) => c.audit_context(source, request_id),
    }
}
