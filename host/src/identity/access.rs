//! Just-in-time access (SPEC I8). Operators see no tenant content by
//! default; when a support case needs it, an operator requests access to
//! one tenant, naming a ticket and a reason, for one scope and a bounded
//! time. A different person — another operator, or that tenant's admin —
//! approves (two-person rule). The grant then works until it expires by
//! itself (or is revoked), and every step and every operation made under
//! it lands in both the system trail and the tenant's trail, the latter
//! tagged with the grant's id.
//!
//! ```text
//! sys/jit/{grant id}   request / grant record
//! ```

use serde::{Deserialize, Serialize};

use crate::audit::{self, Scope, outcome};
use crate::error::ApiError;
use crate::identity::{AuthError, Identity, Role};
use crate::support::clock::now_ms;

/// Longest a grant may last.
pub const MAX_MINUTES: u32 = 8 * 60;
/// How long an unapproved request stays approvable.
const PENDING_TTL_MS: u64 = 24 * 3_600_000;

/// What a grant opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessScope {
    /// Read the tenant's audit trail.
    AuditRead,
    /// Read the tenant's user directory (all accounts, sessions).
    DirectoryRead,
    /// Manage any account of the tenant (unlock, reset, disable).
    DirectoryManage,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    Revoked,
}

/// A request and, once approved, a grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub tenant: String,
    /// The operator's user id.
    pub requester: String,
    pub requester_name: String,
    pub ticket: String,
    pub reason: String,
    pub scope: AccessScope,
    pub minutes: u32,
    pub state: State,
    pub created_ms: u64,
    /// Who approved, denied or revoked, as `realm/user id (name)`.
    pub decided_by: Option<String>,
    pub decided_ms: Option<u64>,
    pub expires_ms: Option<u64>,
}

impl Grant {
    /// Whether the grant is usable at `now`.
    pub fn is_active(&self, now: u64) -> bool {
        self.state == State::Approved && self.expires_ms.is_some_and(|e| e > now)
    }

    /// The state as people read it (`expired` once past its time).
    pub fn status(&self, now: u64) -> &'static str {
        match self.state {
            State::Approved if self.is_active(now) => "active",
            State::Approved => "expired",
            State::Pending if now > self.created_ms + PENDING_TTL_MS => "expired",
            State::Pending => "pending",
            State::Denied => "denied",
            State::Revoked => "revoked",
        }
    }

    /// Whether this grant covers `scope` (manage implies read).
    pub fn covers(&self, scope: AccessScope) -> bool {
        self.scope == scope
            || (self.scope == AccessScope::DirectoryManage && scope == AccessScope::DirectoryRead)
    }
}

/// Decisions and revocations are read-modify-write of one record: one at a
/// time, so a late approval cannot resurrect a revoked request.
static DECISIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn key(id: &str) -> Vec<u8> {
    format!("sys/jit/{id}").into_bytes()
}

/// Who decides or requests: (realm label, user id, name, role, tenant).
#[derive(Debug, Clone)]
pub struct Person {
    pub user: String,
    pub name: String,
    pub role: Role,
    pub tenant: Option<String>,
}

fn both_trails(
    identity: &Identity,
    tenant: &str,
    action: &str,
    target: &str,
    outcome: &str,
    details: &str,
) {
    for scope in [Scope::System, Scope::tenant(tenant)] {
        identity
            .trail()
            .note(&scope, action, target, outcome, details);
    }
}

async fn save(identity: &Identity, g: &Grant) -> Result<(), ApiError> {
    let store = identity.store();
    let seq = store
        .apply(&[(key(&g.id), Some(serde_json::to_vec(g).unwrap_or_default()))])
        .map_err(AuthError::from)?;
    store.durable(seq).await.map_err(AuthError::from)?;
    Ok(())
}

/// A grant by id.
pub fn get(identity: &Identity, id: &str) -> Result<Grant, ApiError> {
    let raw = if id.is_empty() || id.len() > 64 || id.contains('/') {
        None
    } else {
        identity.store().get(&key(id)).map_err(AuthError::from)?
    };
    raw.and_then(|r| serde_json::from_slice(&r).ok())
        .ok_or_else(|| not_found(id))
}

/// Every request, newest first; only `tenant`'s when given.
pub fn list(identity: &Identity, tenant: Option<&str>) -> Result<Vec<Grant>, ApiError> {
    let page = identity
        .store()
        .scan(b"sys/jit/", None, 100_000)
        .map_err(AuthError::from)?;
    let mut out: Vec<Grant> = page
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<Grant>(v).ok())
        .filter(|g| tenant.is_none_or(|t| g.tenant == t))
        .collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.created_ms));
    Ok(out)
}

/// The active grants of operator `user` on `tenant`.
pub fn active(identity: &Identity, user: &str, tenant: &str) -> Vec<Grant> {
    let now = now_ms();
    list(identity, Some(tenant))
        .unwrap_or_default()
        .into_iter()
        .filter(|g| g.requester == user && g.is_active(now))
        .collect()
}

/// What an operator asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The support case it is for (1-64 characters).
    pub ticket: &'a str,
    /// Why (10-1000 characters).
    pub reason: &'a str,
    pub scope: AccessScope,
    pub minutes: u32,
}

/// Files a request. `tenant_exists` is the registry's answer, which this
/// layer cannot see (it is checked after the requester's role).
pub async fn request(
    identity: &Identity,
    who: &Person,
    tenant: &str,
    tenant_exists: bool,
    ask: Ask<'_>,
) -> Result<Grant, ApiError> {
    let Ask {
        ticket,
        reason,
        scope,
        minutes,
    } = ask;
    if who.role != Role::Operator {
        return Err(ApiError::new(
            403,
            "forbidden",
            "only operators request just-in-time access",
        ));
    }
    if !tenant_exists {
        return Err(ApiError::new(
            404,
            "tenant_not_found",
            format!("tenant {tenant:?} does not exist"),
        ));
    }
    let ticket_ok =
        !ticket.trim().is_empty() && ticket.len() <= 64 && !ticket.chars().any(char::is_control);
    if !ticket_ok {
        return Err(ApiError::new(
            400,
            "invalid_argument",
            "a ticket reference (1-64 characters) is required",
        ));
    }
    if reason.trim().len() < 10
        || reason.len() > 1000
        || reason.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(ApiError::new(
            400,
            "invalid_argument",
            "a reason of 10-1000 characters is required",
        ));
    }
    if !(1..=MAX_MINUTES).contains(&minutes) {
        return Err(ApiError::new(
            400,
            "invalid_argument",
            format!("minutes must be 1-{MAX_MINUTES}"),
        ));
    }
    let g = Grant {
        id: format!("a{}", crate::support::encoding::random_hex(8)),
        tenant: tenant.to_string(),
        requester: who.user.clone(),
        requester_name: who.name.clone(),
        ticket: ticket.to_string(),
        reason: reason.to_string(),
        scope,
        minutes,
        state: State::Pending,
        created_ms: now_ms(),
        decided_by: None,
        decided_ms: None,
        expires_ms: None,
    };
    save(identity, &g).await?;
    both_trails(
        identity,
        tenant,
        "access.request",
        &g.id,
        outcome::SUCCESS,
        &format!("{:?} for {minutes} min, ticket {ticket}: {reason}", g.scope),
    );
    Ok(g)
}

/// Whether `who` may see request `g` at all: the console and operators
/// see every request, a tenant's admins those on their tenant. To anyone
/// else a request answers exactly as an unknown id does (no existence
/// oracle).
fn visible(who: Option<&Person>, g: &Grant) -> bool {
    match who {
        None => true,
        Some(p) => match p.role {
            Role::Operator => true,
            Role::TenantAdmin => p.tenant.as_deref() == Some(g.tenant.as_str()),
            _ => false,
        },
    }
}

/// `get`, answering a request `who` may not see as `get` answers an
/// unknown id; the attempt is recorded in the system trail.
fn get_visible(
    identity: &Identity,
    who: Option<&Person>,
    id: &str,
    action: &str,
) -> Result<Grant, ApiError> {
    let g = get(identity, id)?;
    if visible(who, &g) {
        return Ok(g);
    }
    // The system trail only: a stranger must not be able to write into
    // another tenant's trail by guessing at ids.
    identity.trail().note(
        &Scope::System,
        action,
        &g.id,
        outcome::DENIED,
        &format!(
            "by {}, who may not see this request",
            who.map(describe).unwrap_or_default()
        ),
    );
    Err(not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(404, "not_found", format!("access request {id} not found"))
}

fn describe(p: &Person) -> String {
    match &p.tenant {
        Some(t) => format!("{t}/{} ({})", p.user, p.name),
        None => format!("system/{} ({})", p.user, p.name),
    }
}

/// Approves or denies a pending request: by another operator, or by the
/// tenant's admin — never by the requester.
pub async fn decide(
    identity: &Identity,
    who: &Person,
    id: &str,
    approve: bool,
) -> Result<Grant, ApiError> {
    let _one = DECISIONS.lock().await;
    let mut g = get_visible(identity, Some(who), id, "access.decide")?;
    let may = match who.role {
        Role::Operator => who.user != g.requester,
        // A tenant admin the requester created (a tenant's first admin is
        // made by an operator) is not a second person.
        Role::TenantAdmin => {
            who.tenant.as_deref() == Some(g.tenant.as_str())
                && identity
                    .created_by(&Scope::tenant(&g.tenant), &who.user)
                    .as_deref()
                    != Some(g.requester.as_str())
        }
        _ => false,
    };
    if !may {
        both_trails(
            identity,
            &g.tenant,
            "access.decide",
            &g.id,
            outcome::DENIED,
            "not allowed to decide (the requester cannot approve their own request)",
        );
        return Err(ApiError::new(
            403,
            "forbidden",
            "a different operator or the tenant's admin must decide; the requester cannot approve their own request",
        ));
    }
    let now = now_ms();
    if g.status(now) != "pending" {
        return Err(ApiError::new(
            409,
            "not_pending",
            format!("access request {id} is {}", g.status(now)),
        ));
    }
    g.state = if approve {
        State::Approved
    } else {
        State::Denied
    };
    g.decided_by = Some(describe(who));
    g.decided_ms = Some(now);
    if approve {
        g.expires_ms = Some(now + u64::from(g.minutes) * 60_000);
    }
    save(identity, &g).await?;
    both_trails(
        identity,
        &g.tenant,
        if approve {
            "access.approve"
        } else {
            "access.deny"
        },
        &g.id,
        outcome::SUCCESS,
        &format!(
            "requested by {} for ticket {}{}",
            g.requester_name,
            g.ticket,
            g.expires_ms
                .map(|e| format!(", until {}", audit::rfc3339(e)))
                .unwrap_or_default()
        ),
    );
    Ok(g)
}

/// Ends a grant early (the requester, any operator, the tenant's admin).
pub async fn revoke(
    identity: &Identity,
    who: Option<&Person>,
    id: &str,
) -> Result<Grant, ApiError> {
    let _one = DECISIONS.lock().await;
    let mut g = get_visible(identity, who, id, "access.revoke")?;
    let may = match who {
        None => true,
        Some(p) => match p.role {
            Role::Operator => true,
            Role::TenantAdmin => p.tenant.as_deref() == Some(g.tenant.as_str()),
            _ => false,
        },
    };
    if !may {
        return Err(ApiError::new(
            403,
            "forbidden",
            "only operators and the tenant's admins revoke access",
        ));
    }
    if !matches!(g.state, State::Pending | State::Approved) {
        return Err(ApiError::new(
            409,
            "not_pending",
            format!("access request {id} is already {:?}", g.state),
        ));
    }
    g.state = State::Revoked;
    g.decided_by = Some(who.map(describe).unwrap_or_else(|| "console".into()));
    g.decided_ms = Some(now_ms());
    save(identity, &g).await?;
    both_trails(
        identity,
        &g.tenant,
        "access.revoke",
        &g.id,
        outcome::SUCCESS,
        "",
    );
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(state: State, expires_ms: Option<u64>) -> Grant {
        Grant {
            id: "a1".into(),
            tenant: "acme".into(),
            requester: "u1".into(),
            requester_name: "opal".into(),
            ticket: "T-1".into(),
            reason: "a good reason".into(),
            scope: AccessScope::DirectoryManage,
            minutes: 10,
            state,
            created_ms: 1_000,
            decided_by: None,
            decided_ms: None,
            expires_ms,
        }
    }

    #[test]
    fn grants_expire_by_themselves() {
        let g = grant(State::Approved, Some(601_000));
        assert!(g.is_active(600_999));
        assert_eq!(g.status(600_999), "active");
        assert!(!g.is_active(601_000));
        assert_eq!(g.status(601_000), "expired");
        assert!(!grant(State::Revoked, Some(601_000)).is_active(2_000));
        assert!(!grant(State::Pending, None).is_active(2_000));
        assert_eq!(
            grant(State::Pending, None).status(1_000 + PENDING_TTL_MS + 1),
            "expired"
        );
    }

    #[test]
    fn manage_covers_read_but_not_audit() {
        let g = grant(State::Approved, Some(10));
        assert!(g.covers(AccessScope::DirectoryRead));
        assert!(g.covers(AccessScope::DirectoryManage));
        assert!(!g.covers(AccessScope::AuditRead));
    }
}
