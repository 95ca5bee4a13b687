//! Administration: one set of operations (`Op`) behind the admin HTTP API,
//! the CLI and the control socket, each authorised against the acting
//! party's role and tenant (SPEC I1, I8) before it runs, and audited.
//!
//! Who may do what:
//!
//! | operation                         | console | operator          | partner        | tenant admin |
//! |-----------------------------------|---------|-------------------|----------------|--------------|
//! | tenants: list, create, delete     | yes     | yes               | list assigned  | no           |
//! | trust store, install packages     | yes     | yes               | list           | list         |
//! | enable / disable plugins          | yes     | yes               | assigned       | own tenant   |
//! | system accounts (operators...)    | yes     | read              | no             | no           |
//! | tenant admins' accounts           | yes     | read; create the first (more: JIT grant) | no | own tenant |
//! | other tenant users                | yes     | JIT grant         | no             | own tenant   |
//! | sign-in policy                    | yes     | read              | no             | own tenant   |
//! | audit: verify                     | yes     | yes               | no             | own tenant   |
//! | audit: export (content)           | yes     | system; a tenant's with a JIT grant | no | own tenant |
//! | call records (numbers)            | yes     | no (counts only)  | no             | own tenant   |
//! | routes, SIP devices               | yes     | no                | no             | own tenant   |
//!
//! "Console" is the machine's operator on the local CLI or control socket
//! (file-system permissions are the credential). Operators manage only the
//! tenant-admin accounts of a tenant — enough to bootstrap and support it —
//! and see no user directory, audit content or plugin data (SPEC I8).

mod accounts;
mod data;
mod jit;
mod plugins;
mod providers;
mod telephony;
mod tenants;
mod trail;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{self, Scope};
pub use crate::error::ApiError;
use crate::identity::access::{self, AccessScope, Person};
use crate::identity::sso;
use crate::identity::{AccountChange, AuthError, Caller, NewAccount, Policy, Role};
use crate::runtime::Runtime;

/// A trunk's password as it passes through an op: never printed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrunkPassword(pub String);

impl std::fmt::Debug for TrunkPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrunkPassword(…)")
    }
}

impl Drop for TrunkPassword {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

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
    /// A tenant's limits (SPEC K5).
    TenantLimits {
        id: String,
    },
    /// A tenant's storage use against its quota.
    TenantUsage {
        id: String,
    },
    /// Changes some of a tenant's limits, online: the fields given replace
    /// the current ones; calls already running finish under the old.
    TenantLimitsSet {
        id: String,
        set: serde_json::Map<String, serde_json::Value>,
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
    /// Installs a signed package (SPEC S1): verified before anything is
    /// compiled, stored only if every check passes; online.
    PluginInstall {
        package: crate::support::encoding::Base64Bytes,
    },
    PluginEnable {
        tenant: String,
        name: String,
        version: String,
        grants: Option<Vec<String>>,
        /// Settings replacing the current ones (default: keep them).
        #[serde(default)]
        config: Option<serde_json::Map<String, Value>>,
        /// Allow a version lower than the tenant has run (operators and
        /// the console only; audited as such).
        #[serde(default)]
        allow_rollback: bool,
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
    /// A tenant's call records (CDRs) that ended in `[from_ms, to_ms)`,
    /// oldest first, a page at a time (the tenant's admins only).
    CallRecords {
        tenant: String,
        #[serde(default)]
        from_ms: u64,
        #[serde(default)]
        to_ms: Option<u64>,
        #[serde(default)]
        after: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Counts of a tenant's calls per day, without numbers (operators and
    /// the tenant's admins).
    CallCounts {
        tenant: String,
        #[serde(default)]
        from_ms: u64,
        #[serde(default)]
        to_ms: Option<u64>,
    },
    /// A tenant's dialing policy, as set and as it applies (SPEC T1).
    DialingShow {
        tenant: String,
    },
    /// Replaces a tenant's dialing policy. Premium-rate, shared-cost and
    /// unknown numbers only an operator may open.
    DialingSet {
        tenant: String,
        dialing: crate::tenant::Dialing,
    },
    /// A tenant's routes: numbers and the plugins that take their calls.
    RoutesShow {
        tenant: String,
    },
    /// Replaces a tenant's routes (each plugin enabled with `calls`).
    RoutesSet {
        tenant: String,
        routes: Vec<crate::tenant::Route>,
    },
    /// A tenant's SIP devices (of one user, by id, if given).
    DeviceList {
        tenant: String,
        #[serde(default)]
        user: Option<String>,
    },
    /// Adds a SIP device for a user (login name or id); the answer holds
    /// its password, shown this once.
    DeviceAdd {
        tenant: String,
        name: String,
        user: String,
        /// Allow SIP over UDP/TCP for it (default: TLS only).
        #[serde(default)]
        udp: bool,
    },
    DeviceRemove {
        tenant: String,
        name: String,
    },
    /// Gives a device a new password (shown this once); the old one
    /// stops working at once.
    DevicePassword {
        tenant: String,
        name: String,
    },
    /// Turns SIP over UDP/TCP on or off for a device (TLS always works);
    /// off ends at once what it holds over UDP/TCP.
    DeviceUdp {
        tenant: String,
        name: String,
        udp: bool,
    },
    /// A tenant's SIP trunks (never a password: only whether one is set).
    TrunkList {
        tenant: String,
    },
    /// Adds or replaces one trunk (by name). `password`: set it (write
    /// only, sealed), `""` clears it, absent keeps it.
    TrunkSet {
        tenant: String,
        trunk: crate::tenant::Trunk,
        #[serde(default)]
        password: Option<TrunkPassword>,
    },
    TrunkRemove {
        tenant: String,
        name: String,
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

pub(super) fn deny(what: &str) -> Result<(), ApiError> {
    Err(ApiError::forbidden(format!("your role may not {what}")))
}

/// Facts about the target an authorisation decision needs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Facts {
    /// Whether the tenant an account operation aims at has an admin.
    pub(super) tenant_has_admin: bool,
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

/// Who asks, as an area's authorisation sees a signed-in caller.
pub(super) struct Who<'a> {
    pub(super) caller: &'a Caller,
    /// Whether the caller is an operator.
    pub(super) operator: bool,
    /// The role of the account an account operation touches (read before
    /// authorising).
    pub(super) target_role: Option<Role>,
    pub(super) facts: Facts,
}

impl Who<'_> {
    /// Whether the caller is an admin of `tenant`.
    pub(super) fn own_tenant(&self, tenant: &str) -> bool {
        self.caller.role == Role::TenantAdmin && self.caller.tenant() == Some(tenant)
    }

    /// Operators, partners and tenant admins see the plugin catalogue, the
    /// trust store and the audit signing key (what a tenant may enable and
    /// how to check its trail).
    pub(super) fn may_see_catalogue(&self) -> Result<(), ApiError> {
        if self.operator
            || self.caller.role == Role::Partner
            || self.caller.role == Role::TenantAdmin
        {
            Ok(())
        } else {
            deny("see the plugin catalogue")
        }
    }

    /// Whether the caller is a partner assigned to `tenant`.
    pub(super) fn assigned(&self, tenant: &str) -> bool {
        self.caller.role == Role::Partner && self.caller.tenants.iter().any(|t| t == tenant)
    }
}

/// What an area's `run` gets besides the op.
pub(super) struct Runner<'a> {
    pub(super) rt: &'a Runtime,
    pub(super) actor: &'a Actor,
    /// An operator acting without a just-in-time grant.
    pub(super) is_operator: bool,
    /// A partner's assigned tenants (what it may list).
    pub(super) partner_tenants: Option<Vec<String>>,
}

/// An op handed to an area that does not own it (a bug, never input).
fn misrouted(op: &Op) -> ApiError {
    ApiError::new(
        500,
        "internal",
        format!("admin operation {op:?} reached the wrong area"),
    )
}

/// The areas, each owning its ops' names, realms, authorisation and
/// execution in its own file. Adding an area: its ops in `Op`, its file,
/// its name here.
macro_rules! areas {
    ($($area:ident),* $(,)?) => {
        fn op_name(op: &Op) -> &'static str {
            $(if $area::owns(op) {
                return $area::op_name(op);
            })*
            "unknown"
        }

        fn op_realm(op: &Op) -> Option<Scope> {
            $(if $area::owns(op) {
                return $area::op_realm(op);
            })*
            None
        }

        /// Whether `actor` may run `op` (the console always may).
        fn authorize(
            actor: &Actor,
            op: &Op,
            target_role: Option<Role>,
            facts: Facts,
        ) -> Result<(), ApiError> {
            let Actor::Caller(c) = actor else {
                return Ok(());
            };
            if let Some(r) = c.restriction {
                return Err(AuthError::Restricted(r).into());
            }
            let who = Who {
                caller: c,
                operator: c.role == Role::Operator,
                target_role,
                facts,
            };
            $(if $area::owns(op) {
                return $area::authorize(&who, op);
            })*
            Err(misrouted(op))
        }

        async fn run(rt: &Runtime, actor: &Actor, op: Op, granted: bool) -> Result<Value, ApiError> {
            let runner = Runner {
                rt,
                actor,
                is_operator: !granted
                    && matches!(actor, Actor::Caller(c) if c.role == Role::Operator),
                partner_tenants: match actor {
                    Actor::Caller(c) if c.role == Role::Partner => Some(c.tenants.clone()),
                    _ => None,
                },
            };
            $(if $area::owns(&op) {
                return $area::run(&runner, op).await;
            })*
            Err(misrouted(&op))
        }
    };
}

areas!(
    tenants, accounts, trail, plugins, data, providers, jit, telephony
);

/// Whether `actor` may run `op` as far as its role and tenant tell, before
/// anything about the target is read (e.g. before an upload's body is).
/// `execute` decides again, and audits a refusal.
pub fn may(actor: &Actor, op: &Op) -> Result<(), ApiError> {
    authorize(actor, op, None, Facts::default())
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

pub(super) fn person(actor: &Actor) -> Option<Person> {
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

pub(super) fn require_trail(rt: &Runtime, scope: &Scope) -> Result<(), ApiError> {
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
