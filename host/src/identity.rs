//! Identity (SPEC I1–I4, I7): accounts and roles, sign-in with brute-force
//! defence, sessions, TOTP multi-factor authentication and guest sessions.
//!
//! Accounts live in a realm: the system realm holds operators and
//! partners, each tenant's realm its admins and users (so a tenant's
//! people are stored, encrypted and deleted with the tenant). A session
//! token is `sb1.{realm}.{43 base64url chars}` — the realm (a tenant id, or
//! `_` for the system) says where to look, 256 random bits make it
//! unguessable, and only its SHA-256 is stored. Every request re-reads the
//! session and the account, so a revoked session, a disabled account or a
//! changed role takes effect at once.
//!
//! ```text
//! {realm}/id/u/{user id}          account (argon2id hash, MFA secret, lock)
//! {realm}/id/n/{login name}       login name -> user id
//! {realm}/id/s/{sha256(token)}    session
//! {realm}/id/us/{user id}/{sid}   the user's sessions (sid -> token hash)
//! {realm}/id/policy               MFA and session policy
//! ```
//! where `{realm}` is `sys` or `t/{tenant}`.
//!
//! Wiring: the runtime owns one `Identity`; the HTTP front door calls
//! `login` and `authenticate`, the admin layer the account verbs, the
//! `identity` capability `lookup` and `guest_session`. Every sign-in,
//! failure, lock, session and account change goes to the realm's audit
//! trail.

pub mod access;
pub mod oidc;
pub mod password;
pub mod sso;
pub mod throttle;
pub mod totp;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use self::throttle::{Gate, Throttle, ThrottleConfig};
use crate::audit::{self, Actor, ActorKind, AuditLog, Record, Scope, outcome};
use crate::metrics;
use crate::store::{Store, StoreError, Write};
use crate::support::clock::now_ms;
use crate::support::encoding::sha256_hex;
use crate::support::sync::Recover as _;

/// Longest login name.
pub const MAX_USERNAME_LEN: usize = 64;
/// Longest password accepted at sign-in, in bytes (longer is refused
/// before hashing, so it cannot be used to burn CPU).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest display name.
pub const MAX_DISPLAY_NAME_LEN: usize = 128;
/// Recovery codes issued at MFA enrolment.
pub const RECOVERY_CODES: usize = 10;
/// A session's last-seen time is rewritten at most this often.
const TOUCH_EVERY_MS: u64 = 30_000;
/// Password hashes computed at once (each takes ~19 MiB and a core).
const HASHING_SLOTS: usize = 4;

/// What a caller is allowed to be (SPEC I1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs the server; no tenant content (SPEC I8).
    Operator,
    /// Writes plugins; manages the configuration of assigned tenants.
    Partner,
    /// Configures one tenant.
    TenantAdmin,
    /// A registered user of one tenant.
    User,
    /// Invited into one resource (e.g. a meeting), without an account.
    Guest,
}

impl Role {
    /// Roles whose accounts live in the system realm.
    pub fn is_system(self) -> bool {
        matches!(self, Role::Operator | Role::Partner)
    }

    /// The audit actor kind for this role.
    pub fn actor_kind(self) -> ActorKind {
        match self {
            Role::Operator => ActorKind::Operator,
            Role::Partner => ActorKind::Partner,
            Role::TenantAdmin => ActorKind::TenantAdmin,
            Role::User => ActorKind::User,
            Role::Guest => ActorKind::Guest,
        }
    }

    /// Parses `operator`, `partner`, `tenant-admin` (or `admin`), `user`.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "operator" => Some(Role::Operator),
            "partner" => Some(Role::Partner),
            "tenant-admin" | "admin" => Some(Role::TenantAdmin),
            "user" => Some(Role::User),
            _ => None,
        }
    }

    /// The name used in APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Partner => "partner",
            Role::TenantAdmin => "tenant-admin",
            Role::User => "user",
            Role::Guest => "guest",
        }
    }
}

/// Who must use a second factor in a tenant (operators and partners
/// always must, SPEC I7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MfaPolicy {
    #[default]
    Optional,
    Admins,
    All,
}

/// A realm's sign-in policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    pub mfa: MfaPolicy,
    /// A session unused this long expires.
    pub session_idle_minutes: u32,
    /// A session expires this long after sign-in, used or not.
    pub session_absolute_hours: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mfa: MfaPolicy::Optional,
            session_idle_minutes: 30,
            session_absolute_hours: 12,
        }
    }
}

impl Policy {
    fn system() -> Policy {
        Policy {
            mfa: MfaPolicy::All,
            session_idle_minutes: 15,
            session_absolute_hours: 8,
        }
    }

    /// Checks the bounds (idle 1 min–24 h, absolute 1 h–30 days).
    pub fn validate(&self) -> Result<(), AuthError> {
        if !(1..=1440).contains(&self.session_idle_minutes) {
            return Err(AuthError::InvalidArgument(
                "session_idle_minutes must be 1-1440".into(),
            ));
        }
        if !(1..=720).contains(&self.session_absolute_hours) {
            return Err(AuthError::InvalidArgument(
                "session_absolute_hours must be 1-720".into(),
            ));
        }
        Ok(())
    }

    fn requires_mfa(&self, role: Role) -> bool {
        role.is_system()
            || match self.mfa {
                MfaPolicy::Optional => false,
                MfaPolicy::Admins => role == Role::TenantAdmin,
                MfaPolicy::All => true,
            }
    }
}

/// An account's second factor.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Mfa {
    /// TOTP secret, base32.
    secret: String,
    /// False until the first code proves the app has it.
    confirmed: bool,
    /// Last TOTP step used (replay protection).
    last_step: u64,
    /// SHA-256 (hex) of each unused recovery code.
    recovery: Vec<String>,
}

/// A stored account.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Account {
    id: String,
    username: String,
    display_name: String,
    email: Option<String>,
    role: Role,
    active: bool,
    /// PHC argon2id string; `None` for accounts that sign in only through
    /// single sign-on.
    password_hash: Option<String>,
    must_change_password: bool,
    mfa: Option<Mfa>,
    locked_until_ms: u64,
    /// Tenants a partner manages.
    #[serde(default)]
    tenants: Vec<String>,
    /// The external identity (issuer, subject) of a federated account.
    #[serde(default)]
    external: Option<(String, String)>,
    created_ms: u64,
    /// Who created the account (user id of the acting admin or operator).
    #[serde(default)]
    created_by: Option<String>,
}

/// An account as admins and APIs see it (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub email: Option<String>,
    pub role: Role,
    pub active: bool,
    pub locked: bool,
    pub must_change_password: bool,
    pub mfa: bool,
    pub tenants: Vec<String>,
    pub federated: bool,
    pub created_ms: u64,
}

impl Account {
    fn view(&self, now: u64) -> UserView {
        UserView {
            id: self.id.clone(),
            username: self.username.clone(),
            display_name: self.display_name.clone(),
            email: self.email.clone(),
            role: self.role,
            active: self.active,
            locked: self.locked_until_ms > now,
            must_change_password: self.must_change_password,
            mfa: self.mfa.as_ref().is_some_and(|m| m.confirmed),
            tenants: self.tenants.clone(),
            federated: self.external.is_some(),
            created_ms: self.created_ms,
        }
    }

    fn mfa_enrolled(&self) -> bool {
        self.mfa.as_ref().is_some_and(|m| m.confirmed)
    }
}

/// What a session may do before it is a full one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restriction {
    /// Only change the welcome password (SPEC I2).
    ChangePassword,
    /// Only enrol a second factor (SPEC I7).
    EnrolMfa,
}

/// A guest's session: a display name and the one resource it may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    pub display_name: String,
    pub resource: String,
    /// The plugin that created it.
    pub plugin: String,
}

/// A stored session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    id: String,
    user: String,
    created_ms: u64,
    last_seen_ms: u64,
    expires_ms: u64,
    idle_ms: u64,
    source: Option<String>,
    user_agent: Option<String>,
    restriction: Option<Restriction>,
    guest: Option<Guest>,
    /// How it was made: `password`, `sso`, `guest`.
    via: String,
}

/// A session as its owner or an admin sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: String,
    pub user: String,
    pub created_ms: u64,
    pub last_seen_ms: u64,
    pub expires_ms: u64,
    pub source: Option<String>,
    pub user_agent: Option<String>,
    pub restriction: Option<Restriction>,
    pub via: String,
    /// Whether this is the session making the request.
    pub current: bool,
}

impl Session {
    fn view(&self, current: Option<&str>) -> SessionView {
        SessionView {
            id: self.id.clone(),
            user: self.user.clone(),
            created_ms: self.created_ms,
            last_seen_ms: self.last_seen_ms,
            expires_ms: self.expires_ms.min(self.last_seen_ms + self.idle_ms),
            source: self.source.clone(),
            user_agent: self.user_agent.clone(),
            restriction: self.restriction,
            via: self.via.clone(),
            current: current == Some(self.id.as_str()),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The realm the account (or guest) belongs to.
    pub realm: Scope,
    pub user: String,
    pub username: String,
    pub display_name: String,
    pub role: Role,
    /// The session's public id.
    pub session: String,
    pub restriction: Option<Restriction>,
    /// Tenants a partner manages.
    pub tenants: Vec<String>,
    /// Set for guests.
    pub guest: Option<Guest>,
    /// How the session was made (`password`, `sso`, `guest`, `oidc`).
    pub via: String,
}

impl Caller {
    /// The tenant of a tenant-realm caller.
    pub fn tenant(&self) -> Option<&str> {
        match &self.realm {
            Scope::Tenant(t) => Some(t),
            Scope::System => None,
        }
    }

    /// The audit context of this caller.
    pub fn audit_context(
        &self,
        source: Option<String>,
        request_id: Option<String>,
    ) -> audit::Context {
        audit::Context {
            actor: Actor {
                kind: self.role.actor_kind(),
                id: Some(self.user.clone()),
                name: Some(self.username.clone()),
                tenant: self.tenant().map(str::to_string),
                on_behalf_of: None,
            },
            source,
            request_id,
            access: None,
        }
    }
}

/// A sign-in attempt.
#[derive(Debug, Clone, Default)]
pub struct Login<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub totp: Option<&'a str>,
    pub recovery_code: Option<&'a str>,
    pub source: Option<IpAddr>,
    pub user_agent: Option<&'a str>,
    /// What the session is for: `password` (default, the API) or `oidc`
    /// (the provider's own sign-in session, refused by the API).
    pub via: &'a str,
}

/// A new session.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    /// The bearer token; shown once, stored only as a hash.
    pub token: String,
    pub session: SessionView,
    pub user: UserView,
}

/// A new account.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub username: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    pub role: String,
    /// The welcome password; generated when absent. Either way it must be
    /// changed at first sign-in.
    #[serde(default)]
    pub password: Option<String>,
    /// Tenants a partner manages.
    #[serde(default)]
    pub tenants: Vec<String>,
}

/// Changes to an account; absent fields stay.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountChange {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
}

/// Why an identity operation failed. Codes are stable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Wrong or unknown name, wrong password, locked or disabled: one
    /// answer for all, so nothing says which (SPEC I3).
    #[error(
        "sign-in failed: the user name or password is wrong, or the account is locked or disabled"
    )]
    InvalidCredentials,
    /// Too many recent failures for this name or address.
    #[error("too many failed sign-ins; try again in {} s", retry_after_ms.div_ceil(1000))]
    Throttled { retry_after_ms: u64 },
    /// The password was right; a TOTP or recovery code is needed too.
    #[error(
        "a second factor is required: send a 6-digit authenticator code as `totp` or a recovery code as `recovery_code`"
    )]
    MfaRequired,
    /// The second factor was wrong, expired or already used.
    #[error("the authenticator or recovery code is wrong, expired or already used")]
    MfaInvalid,
    /// No valid session.
    #[error(
        "not signed in: the session token is missing, malformed, expired or revoked; sign in again"
    )]
    Unauthenticated,
    /// The session may only change its password or enrol MFA first.
    #[error("{}", match .0 {
        Restriction::ChangePassword => "the welcome password must be changed before anything else (POST /api/v1/auth/password)",
        Restriction::EnrolMfa => "a second factor must be enrolled before anything else (POST /api/v1/auth/mfa/enroll)",
    })]
    Restricted(Restriction),
    /// The caller's role does not allow this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A new password breaks the policy; one message per unmet rule.
    #[error("the password does not meet the policy: {}", .0.join("; "))]
    PasswordPolicy(Vec<String>),
    /// A malformed or oversized argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such account, session or tenant.
    #[error("{0} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Storage failed.
    #[error("storage is unavailable: {0}")]
    Store(#[from] StoreError),
    /// A host service the operation needs (audit trail, randomness,
    /// hashing) failed.
    #[error("the audit trail cannot be written: {0}")]
    Audit(String),
}

impl AuthError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::InvalidCredentials => "invalid_credentials",
            AuthError::Throttled { .. } => "throttled",
            AuthError::MfaRequired => "mfa_required",
            AuthError::MfaInvalid => "mfa_invalid",
            AuthError::Unauthenticated => "unauthenticated",
            AuthError::Restricted(Restriction::ChangePassword) => "password_change_required",
            AuthError::Restricted(Restriction::EnrolMfa) => "mfa_enrolment_required",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::PasswordPolicy(_) => "password_policy",
            AuthError::InvalidArgument(_) => "invalid_argument",
            AuthError::NotFound(_) => "not_found",
            AuthError::AlreadyExists(_) => "already_exists",
            AuthError::Store(_) => "storage_unavailable",
            AuthError::Audit(_) => "audit_unavailable",
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::InvalidCredentials
            | AuthError::MfaRequired
            | AuthError::MfaInvalid
            | AuthError::Unauthenticated => 401,
            AuthError::Throttled { .. } => 429,
            AuthError::Restricted(_) | AuthError::Forbidden(_) => 403,
            AuthError::PasswordPolicy(_) | AuthError::InvalidArgument(_) => 400,
            AuthError::NotFound(_) => 404,
            AuthError::AlreadyExists(_) => 409,
            AuthError::Store(_) | AuthError::Audit(_) => 503,
        }
    }
}

impl From<audit::AuditError> for AuthError {
    fn from(e: audit::AuditError) -> Self {
        AuthError::Audit(e.to_string())
    }
}

/// Identity settings (`[identity]` in the server config).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    pub throttle: ThrottleConfig,
    /// Let tenants use an identity provider on this machine's loopback
    /// interface (federating tenants of one server, and tests). Off by
    /// default: a tenant admin must not make the host call local services.
    pub allow_loopback_idp: bool,
    /// Extra CA certificates (PEM) trusted for identity providers, beside
    /// Mozilla's roots (a private corporate CA).
    pub idp_ca_file: Option<std::path::PathBuf>,
}

/// The identity service.
pub struct Identity {
    store: Arc<Store>,
    trail: Arc<AuditLog>,
    throttle: Mutex<Throttle>,
    writes: tokio::sync::Mutex<()>,
    hashing: tokio::sync::Semaphore,
    outbound: crate::outbound::Outbound,
    /// The URL clients reach this server at (issuers, redirects).
    public_url: RwLock<String>,
}

/// The public URL until the server sets its own.
pub const DEFAULT_PUBLIC_URL: &str = "https://127.0.0.1:8443";

fn prefix(realm: &Scope) -> String {
    match realm {
        Scope::System => "sys/id/".into(),
        Scope::Tenant(t) => format!("t/{t}/id/"),
    }
}

fn user_key(realm: &Scope, id: &str) -> Vec<u8> {
    format!("{}u/{id}", prefix(realm)).into_bytes()
}

fn name_key(realm: &Scope, name: &str) -> Vec<u8> {
    format!("{}n/{name}", prefix(realm)).into_bytes()
}

fn session_key(realm: &Scope, hash: &str) -> Vec<u8> {
    format!("{}s/{hash}", prefix(realm)).into_bytes()
}

fn user_sessions_prefix(realm: &Scope, user: &str) -> Vec<u8> {
    format!("{}us/{user}/", prefix(realm)).into_bytes()
}

fn policy_key(realm: &Scope) -> Vec<u8> {
    format!("{}policy", prefix(realm)).into_bytes()
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn random_token_part() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| AuthError::Audit(format!("no randomness for a token: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The realm a token names, if it is well-formed.
fn token_realm(token: &str) -> Option<Scope> {
    let mut parts = token.split('.');
    let (Some("sb1"), Some(realm), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let secret_ok = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !secret_ok {
        return None;
    }
    match realm {
        "_" => Some(Scope::System),
        t if crate::tenant::is_valid_tenant_id(t) => Some(Scope::tenant(t)),
        _ => None,
    }
}

/// Validates and normalises a login name: lower-case
/// `[a-z0-9][a-z0-9._@+-]*`, at most 64 characters.
pub fn normalize_username(name: &str) -> Result<String, AuthError> {
    let n = name.trim().to_lowercase();
    let ok = !n.is_empty()
        && n.len() <= MAX_USERNAME_LEN
        && n.as_bytes()[0].is_ascii_alphanumeric()
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._@+-".contains(&b));
    if ok {
        Ok(n)
    } else {
        Err(AuthError::InvalidArgument(format!(
            "user name {:?} must be 1-{MAX_USERNAME_LEN} of a-z 0-9 . _ @ + - and start with a letter or digit",
            name.chars().take(80).collect::<String>()
        )))
    }
}

fn check_display_name(name: &str) -> Result<(), AuthError> {
    if name.chars().count() > MAX_DISPLAY_NAME_LEN || name.chars().any(char::is_control) {
        return Err(AuthError::InvalidArgument(format!(
            "display name must be at most {MAX_DISPLAY_NAME_LEN} characters without control characters"
        )));
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), AuthError> {
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidArgument(format!(
            "{:?} is not an e-mail address",
            email.chars().take(80).collect::<String>()
        )))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().recover()
}

impl Identity {
    /// The identity service over `store`, auditing to `trail`.
    pub fn new(
        store: Arc<Store>,
        trail: Arc<AuditLog>,
        config: IdentityConfig,
    ) -> Result<Identity, crate::outbound::OutboundError> {
        let outbound = crate::outbound::Outbound::new(
            config.idp_ca_file.as_deref(),
            config.allow_loopback_idp,
        )?;
        Ok(Identity {
            store,
            trail,
            throttle: Mutex::new(Throttle::new(config.throttle)),
            writes: tokio::sync::Mutex::new(()),
            hashing: tokio::sync::Semaphore::new(HASHING_SLOTS),
            outbound,
            public_url: RwLock::new(String::from(DEFAULT_PUBLIC_URL)),
        })
    }

    /// The store the identity records live in (the OpenID Connect
    /// provider, single sign-on and just-in-time access keep theirs there
    /// too).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The audit trail sign-ins and identity changes are written to.
    pub fn trail(&self) -> &AuditLog {
        &self.trail
    }

    /// Applies `writes` atomically, waits until they are durable, then
    /// appends `record` to `realm`'s trail (an entry that cannot be written
    /// does not undo the change). The one sequence behind the OpenID
    /// Connect clients and single sign-on settings.
    pub async fn commit_audited(
        &self,
        writes: &[Write],
        realm: &Scope,
        record: Record<'_>,
    ) -> Result<(), AuthError> {
        let seq = self.store.apply(writes)?;
        self.store.durable(seq).await?;
        self.trail.append(realm, record).ok();
        Ok(())
    }

    /// The URL clients reach this server at (issuers, redirects).
    pub fn public_url(&self) -> String {
        self.public_url.read().recover().clone()
    }

    /// Sets the public URL (the server sets it from its listener unless
    /// configured); a trailing `/` is dropped.
    pub fn set_public_url(&self, url: &str) {
        *self.public_url.write().recover() = url.trim_end_matches('/').to_string();
    }

    /// The client single sign-on reaches identity providers with.
    pub fn outbound(&self) -> &crate::outbound::Outbound {
        &self.outbound
    }

    fn realm_exists(&self, realm: &Scope) -> bool {
        match realm {
            Scope::System => true,
            Scope::Tenant(t) => self.store.has_tenant_key(t),
        }
    }

    fn require_realm(&self, realm: &Scope) -> Result<(), AuthError> {
        if self.realm_exists(realm) {
            Ok(())
        } else {
            Err(AuthError::NotFound(realm.label()))
        }
    }

    fn audit(&self, realm: &Scope, action: &str, target: &str, outcome: &str, details: &str) {
        // A sign-in to a tenant that does not exist is recorded in the
        // system trail: an unknown id must not create a trail.
        let scope = if self.realm_exists(realm) {
            realm.clone()
        } else {
            Scope::System
        };
        self.trail.note(&scope, action, target, outcome, details);
    }

    /// The realm's sign-in policy.
    pub fn policy(&self, realm: &Scope) -> Result<Policy, AuthError> {
        if *realm == Scope::System {
            return Ok(Policy::system());
        }
        match self.store.get(&policy_key(realm))? {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| AuthError::Audit(format!("stored policy unreadable: {e}"))),
            None => Ok(Policy::default()),
        }
    }

    /// Sets a tenant's sign-in policy.
    pub async fn set_policy(&self, realm: &Scope, policy: Policy) -> Result<(), AuthError> {
        self.require_realm(realm)?;
        if *realm == Scope::System {
            return Err(AuthError::Forbidden(
                "the system realm's policy is fixed: MFA for every operator and partner".into(),
            ));
        }
        policy.validate()?;
        let seq = self
            .store
            .apply(&[(policy_key(realm), Some(json(&policy)))])?;
        self.store.durable(seq).await?;
        self.audit(
            realm,
            "identity.policy",
            &realm.label(),
            outcome::SUCCESS,
            &format!(
                "mfa {:?}, idle {} min, absolute {} h",
                policy.mfa, policy.session_idle_minutes, policy.session_absolute_hours
            ),
        );
        Ok(())
    }

    fn account(&self, realm: &Scope, id: &str) -> Result<Option<Account>, AuthError> {
        match self.store.get(&user_key(realm, id))? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                AuthError::Audit(format!("stored account {id} unreadable: {e}"))
            })?)),
            None => Ok(None),
        }
    }

    fn account_by_name(&self, realm: &Scope, name: &str) -> Result<Option<Account>, AuthError> {
        match self.store.get(&name_key(realm, name))? {
            Some(id) => self.account(realm, &String::from_utf8_lossy(&id)),
            None => Ok(None),
        }
    }

    fn existing(&self, realm: &Scope, id: &str) -> Result<Account, AuthError> {
        self.account(realm, id)?
            .ok_or_else(|| AuthError::NotFound(format!("user {id}")))
    }

    async fn save(
        &self,
        realm: &Scope,
        account: &Account,
        extra: Vec<Write>,
    ) -> Result<(), AuthError> {
        let mut writes = vec![(user_key(realm, &account.id), Some(json(account)))];
        writes.extend(extra);
        let seq = self.store.apply(&writes)?;
        self.store.durable(seq).await?;
        Ok(())
    }

    /// A user by id.
    pub fn user(&self, realm: &Scope, id: &str) -> Result<Option<UserView>, AuthError> {
        Ok(self.account(realm, id)?.map(|a| a.view(now_ms())))
    }

    /// Who created an account (the acting user's id), if recorded.
    pub fn created_by(&self, realm: &Scope, id: &str) -> Option<String> {
        self.account(realm, id)
            .ok()
            .flatten()
            .and_then(|a| a.created_by)
    }

    /// A user by login name.
    pub fn user_by_name(&self, realm: &Scope, name: &str) -> Result<Option<UserView>, AuthError> {
        let Ok(name) = normalize_username(name) else {
            return Ok(None);
        };
        Ok(self
            .account_by_name(realm, &name)?
            .map(|a| a.view(now_ms())))
    }

    /// Every account of a realm, by login name.
    pub fn users(&self, realm: &Scope) -> Result<Vec<UserView>, AuthError> {
        self.require_realm(realm)?;
        let now = now_ms();
        let prefix = format!("{}u/", prefix(realm)).into_bytes();
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(&prefix, after.as_deref(), 256)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (_, v) in page {
                if let Ok(a) = serde_json::from_slice::<Account>(&v) {
                    out.push(a.view(now));
                }
            }
        }
        out.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(out)
    }

    fn check_role_for(realm: &Scope, role: Role) -> Result<(), AuthError> {
        match (realm, role.is_system()) {
            (Scope::System, true) | (Scope::Tenant(_), false) if role != Role::Guest => Ok(()),
            (Scope::System, _) => Err(AuthError::InvalidArgument(format!(
                "role {} belongs to a tenant; system accounts are operator or partner",
                role.as_str()
            ))),
            (Scope::Tenant(_), _) => Err(AuthError::InvalidArgument(format!(
                "role {} is not a tenant role; tenant accounts are tenant-admin or user",
                role.as_str()
            ))),
        }
    }

    /// Creates an account with a welcome password (given, or generated and
    /// returned) that must be changed at first sign-in.
    pub async fn create_user(
        &self,
        realm: &Scope,
        new: NewAccount,
    ) -> Result<(UserView, Option<String>), AuthError> {
        self.require_realm(realm)?;
        let username = normalize_username(&new.username)?;
        let role = Role::parse(&new.role).ok_or_else(|| {
            AuthError::InvalidArgument(format!(
                "unknown role {:?}: use operator, partner, tenant-admin or user",
                new.role.chars().take(40).collect::<String>()
            ))
        })?;
        Self::check_role_for(realm, role)?;
        let display_name = new.display_name.unwrap_or_else(|| username.clone());
        check_display_name(&display_name)?;
        if let Some(e) = &new.email {
            check_email(e)?;
        }
        if role != Role::Partner && !new.tenants.is_empty() {
            return Err(AuthError::InvalidArgument(
                "only partners are assigned tenants".into(),
            ));
        }
        for t in &new.tenants {
            self.require_realm(&Scope::tenant(t))?;
        }
        let (password, generated) = match new.password {
            Some(p) => {
                password::check(&p, &username).map_err(AuthError::PasswordPolicy)?;
                (p, None)
            }
            None => {
                let p = password::generate();
                (p.clone(), Some(p))
            }
        };
        let hash = self.hash(password).await?;
        let _w = self.writes.lock().await;
        if self.store.get(&name_key(realm, &username))?.is_some() {
            return Err(AuthError::AlreadyExists(format!("user {username}")));
        }
        let account = Account {
            id: format!("u{}", crate::support::encoding::random_hex(8)),
            username: username.clone(),
            display_name,
            email: new.email,
            role,
            active: true,
            password_hash: Some(hash),
            must_change_password: true,
            mfa: None,
            locked_until_ms: 0,
            tenants: new.tenants,
            external: None,
            created_ms: now_ms(),
            created_by: audit::context().actor.id,
        };
        self.save(
            realm,
            &account,
            vec![(
                name_key(realm, &username),
                Some(account.id.clone().into_bytes()),
            )],
        )
        .await?;
        self.audit(
            realm,
            "user.create",
            &format!("{} ({})", account.id, username),
            outcome::SUCCESS,
            &format!("role {}", role.as_str()),
        );
        Ok((account.view(now_ms()), generated))
    }

    /// Changes an account's profile, role, state or assigned tenants.
    /// Disabling an account or changing its role ends its sessions.
    pub async fn update_user(
        &self,
        realm: &Scope,
        id: &str,
        change: AccountChange,
    ) -> Result<UserView, AuthError> {
        let _w = self.writes.lock().await;
        let mut a = self.existing(realm, id)?;
        let mut revoke = false;
        let mut what = Vec::new();
        if let Some(d) = change.display_name {
            check_display_name(&d)?;
            a.display_name = d;
            what.push("display name".to_string());
        }
        if let Some(e) = change.email {
            if e.is_empty() {
                a.email = None;
            } else {
                check_email(&e)?;
                a.email = Some(e);
            }
            what.push("email".into());
        }
        if let Some(r) = change.role {
            let role = Role::parse(&r)
                .ok_or_else(|| AuthError::InvalidArgument(format!("unknown role {r:?}")))?;
            Self::check_role_for(realm, role)?;
            if role != a.role {
                what.push(format!("role {} -> {}", a.role.as_str(), role.as_str()));
                a.role = role;
                revoke = true;
            }
        }
        if let Some(active) = change.active {
            if active != a.active {
                what.push(if active { "enabled" } else { "disabled" }.into());
                revoke |= !active;
            }
            a.active = active;
        }
        if let Some(tenants) = change.tenants {
            if a.role != Role::Partner {
                return Err(AuthError::InvalidArgument(
                    "only partners are assigned tenants".into(),
                ));
            }
            for t in &tenants {
                self.require_realm(&Scope::tenant(t))?;
            }
            what.push(format!("tenants {tenants:?}"));
            a.tenants = tenants;
        }
        let mut extra = Vec::new();
        if revoke {
            extra = self.session_deletes(realm, id)?;
        }
        self.save(realm, &a, extra).await?;
        self.audit(realm, "user.update", id, outcome::SUCCESS, &what.join(", "));
        Ok(a.view(now_ms()))
    }

    /// Deletes an account and its sessions.
    pub async fn delete_user(&self, realm: &Scope, id: &str) -> Result<(), AuthError> {
        let _w = self.writes.lock().await;
        let a = self.existing(realm, id)?;
        let mut writes = self.session_deletes(realm, id)?;
        writes.push((user_key(realm, id), None));
        writes.push((name_key(realm, &a.username), None));
        let seq = self.store.apply(&writes)?;
        self.store.durable(seq).await?;
        self.audit(
            realm,
            "user.delete",
            &format!("{id} ({})", a.username),
            outcome::SUCCESS,
            "",
        );
        Ok(())
    }

    /// Sets a new welcome password (generated and returned), ending the
    /// account's sessions; it must be changed at the next sign-in.
    pub async fn reset_password(&self, realm: &Scope, id: &str) -> Result<String, AuthError> {
        let welcome = password::generate();
        let hash = self.hash(welcome.clone()).await?;
        let _w = self.writes.lock().await;
        let mut a = self.existing(realm, id)?;
        a.password_hash = Some(hash);
        a.must_change_password = true;
        let revoke = self.session_deletes(realm, id)?;
        self.save(realm, &a, revoke).await?;
        self.audit(
            realm,
            "user.password-reset",
            id,
            outcome::SUCCESS,
            "welcome password set; sessions ended",
        );
        Ok(welcome)
    }

    /// Lifts a lock.
    pub async fn unlock(&self, realm: &Scope, id: &str) -> Result<(), AuthError> {
        let _w = self.writes.lock().await;
        let mut a = self.existing(realm, id)?;
        a.locked_until_ms = 0;
        self.save(realm, &a, Vec::new()).await?;
        lock(&self.throttle).unlock(&format!("{}/{}", realm.label(), a.username));
        self.audit(realm, "user.unlock", id, outcome::SUCCESS, "");
        Ok(())
    }

    /// Removes an account's second factor (the user must enrol again if
    /// policy requires one), ending its sessions.
    pub async fn reset_mfa(&self, realm: &Scope, id: &str) -> Result<(), AuthError> {
        let _w = self.writes.lock().await;
        let mut a = self.existing(realm, id)?;
        a.mfa = None;
        let revoke = self.session_deletes(realm, id)?;
        self.save(realm, &a, revoke).await?;
        self.audit(
            realm,
            "user.mfa-reset",
            id,
            outcome::SUCCESS,
            "second factor removed; sessions ended",
        );
        Ok(())
    }

    async fn hash(&self, password: String) -> Result<String, AuthError> {
        let _slot = self.hashing.acquire().await;
        tokio::task::spawn_blocking(move || password::hash(&password))
            .await
            .map_err(|e| AuthError::Audit(e.to_string()))?
            .map_err(AuthError::Audit)
    }

    async fn verify_password(&self, password: String, phc: String) -> bool {
        let _slot = self.hashing.acquire().await;
        tokio::task::spawn_blocking(move || password::verify(&password, &phc))
            .await
            .unwrap_or(false)
    }

    /// Signs in with name and password (and a second factor when
    /// enrolled). Unknown names, wrong passwords, locked and disabled
    /// accounts all get `InvalidCredentials` after the same argon2 work.
    pub async fn login(&self, realm: &Scope, req: Login<'_>) -> Result<Issued, AuthError> {
        if req.password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::InvalidArgument(format!(
                "password longer than {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        if req.username.len() > 256 {
            return Err(AuthError::InvalidArgument(
                "user name longer than 256 bytes".into(),
            ));
        }
        let name = req.username.trim().to_lowercase();
        let track = format!("{}/{name}", realm.label());
        let now = now_ms();
        let source = req.source.map(|a| a.to_string());
        let ctx = audit::Context {
            actor: Actor {
                name: Some(name.chars().take(64).collect()),
                ..Actor::of(ActorKind::Anonymous, None)
            },
            source: source.clone(),
            ..audit::context()
        };
        let gate = lock(&self.throttle).gate(&track, req.source, now);
        if let Gate::Wait(ms) = gate {
            metrics::LOGIN_THROTTLED.inc();
            audit::with_context(ctx.clone(), async {
                self.audit(realm, "auth.login", &name, outcome::DENIED, "throttled");
            })
            .await;
            return Err(AuthError::Throttled { retry_after_ms: ms });
        }
        let account = if self.realm_exists(realm) && normalize_username(&name).is_ok() {
            self.account_by_name(realm, &name)?
        } else {
            None
        };
        let phc = account
            .as_ref()
            .and_then(|a| a.password_hash.clone())
            .unwrap_or_else(|| password::decoy_hash().to_string());
        let password_ok = self.verify_password(req.password.to_string(), phc).await;
        let locked = account.as_ref().is_some_and(|a| a.locked_until_ms > now)
            || lock(&self.throttle).is_locked(&track, now);
        let reason = match &account {
            None => Some("unknown user"),
            Some(a) if a.password_hash.is_none() => {
                Some("account signs in through single sign-on only")
            }
            Some(_) if locked => Some("account locked"),
            Some(a) if !a.active => Some("account disabled"),
            Some(_) if !password_ok => Some("wrong password"),
            Some(_) => None,
        };
        let realm_audit = |action: &'static str, outcome: &'static str, details: String| {
            let ctx = ctx.clone();
            let name = name.clone();
            async move {
                audit::with_context(ctx, async {
                    self.audit(realm, action, &name, outcome, &details);
                })
                .await
            }
        };
        if let Some(reason) = reason {
            self.record_failure(
                realm,
                &track,
                account.as_ref(),
                req.source,
                now,
                &realm_audit,
            )
            .await?;
            realm_audit("auth.login", outcome::FAILURE, reason.to_string()).await;
            return Err(AuthError::InvalidCredentials);
        }
        // Checked above: the account exists.
        let Some(mut account) = account else {
            return Err(AuthError::InvalidCredentials);
        };
        if account.mfa_enrolled() {
            match (req.totp, req.recovery_code) {
                (None, None) => {
                    realm_audit(
                        "auth.login",
                        outcome::FAILURE,
                        "second factor missing".into(),
                    )
                    .await;
                    return Err(AuthError::MfaRequired);
                }
                (totp, recovery) => {
                    let _w = self.writes.lock().await;
                    // Re-read: a concurrent sign-in may have used a code.
                    let Some(fresh) = self.account(realm, &account.id)? else {
                        return Err(AuthError::InvalidCredentials);
                    };
                    account = fresh;
                    let used = self.use_second_factor(&mut account, totp, recovery, now);
                    if !used {
                        drop(_w);
                        self.record_failure(
                            realm,
                            &track,
                            Some(&account),
                            req.source,
                            now,
                            &realm_audit,
                        )
                        .await?;
                        realm_audit("auth.login", outcome::FAILURE, "wrong second factor".into())
                            .await;
                        return Err(AuthError::MfaInvalid);
                    }
                    self.save(realm, &account, Vec::new()).await?;
                }
            }
        }
        lock(&self.throttle).success(&track);
        let policy = self.policy(realm)?;
        let restriction = if account.must_change_password {
            Some(Restriction::ChangePassword)
        } else if policy.requires_mfa(account.role) && !account.mfa_enrolled() {
            Some(Restriction::EnrolMfa)
        } else {
            None
        };
        let via = if req.via.is_empty() {
            "password"
        } else {
            req.via
        };
        let issued = self
            .issue(
                realm,
                &account,
                &policy,
                restriction,
                source,
                req.user_agent,
                via,
            )
            .await?;
        metrics::LOGINS.inc();
        let caller_ctx = audit::Context {
            actor: Actor {
                kind: account.role.actor_kind(),
                id: Some(account.id.clone()),
                name: Some(account.username.clone()),
                tenant: None,
                on_behalf_of: None,
            },
            ..ctx.clone()
        };
        audit::with_context(caller_ctx, async {
            self.audit(
                realm,
                "auth.login",
                &account.username,
                outcome::SUCCESS,
                &format!(
                    "session {}{}",
                    issued.session.id,
                    restriction.map_or(String::new(), |r| format!(", restricted to {r:?}"))
                ),
            );
        })
        .await;
        Ok(issued)
    }

    async fn record_failure<F, Fut>(
        &self,
        realm: &Scope,
        track: &str,
        account: Option<&Account>,
        source: Option<IpAddr>,
        now: u64,
        realm_audit: &F,
    ) -> Result<(), AuthError>
    where
        F: Fn(&'static str, &'static str, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        metrics::LOGIN_FAILURES.inc();
        let locked_until = lock(&self.throttle).failure(track, source, now);
        if let Some(until) = locked_until {
            metrics::LOCKOUTS.inc();
            if let Some(a) = account {
                let _w = self.writes.lock().await;
                if let Some(mut fresh) = self.account(realm, &a.id)? {
                    fresh.locked_until_ms = until;
                    self.save(realm, &fresh, Vec::new()).await?;
                }
            }
            realm_audit(
                "auth.lockout",
                outcome::DENIED,
                format!(
                    "locked until {} after repeated failures",
                    audit::rfc3339(until)
                ),
            )
            .await;
        }
        Ok(())
    }

    fn use_second_factor(
        &self,
        account: &mut Account,
        totp: Option<&str>,
        recovery: Option<&str>,
        now: u64,
    ) -> bool {
        let Some(mfa) = account.mfa.as_mut().filter(|m| m.confirmed) else {
            return false;
        };
        if let Some(code) = totp {
            let Some(secret) = totp::base32_decode(&mfa.secret) else {
                return false;
            };
            if let Some(step) =
                totp::check(&secret, code.trim(), totp::step(now / 1000), mfa.last_step)
            {
                mfa.last_step = step;
                return true;
            }
            return false;
        }
        if let Some(code) = recovery {
            let normalized: String = code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_lowercase();
            let h = sha256_hex(normalized.as_bytes());
            if let Some(i) = mfa.recovery.iter().position(|r| *r == h) {
                mfa.recovery.remove(i);
                return true;
            }
        }
        false
    }

    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        realm: &Scope,
        account: &Account,
        policy: &Policy,
        restriction: Option<Restriction>,
        source: Option<String>,
        user_agent: Option<&str>,
        via: &str,
    ) -> Result<Issued, AuthError> {
        let realm_tag = match realm {
            Scope::System => "_".to_string(),
            Scope::Tenant(t) => t.clone(),
        };
        let token = format!("sb1.{realm_tag}.{}", random_token_part()?);
        let hash = sha256_hex(token.as_bytes());
        let now = now_ms();
        let session = Session {
            id: hash[..24].to_string(),
            user: account.id.clone(),
            created_ms: now,
            last_seen_ms: now,
            expires_ms: now + u64::from(policy.session_absolute_hours) * 3_600_000,
            idle_ms: u64::from(policy.session_idle_minutes) * 60_000,
            source,
            user_agent: user_agent.map(|u| u.chars().take(256).collect()),
            restriction,
            guest: None,
            via: via.into(),
        };
        let seq = self.store.apply(&[
            (session_key(realm, &hash), Some(json(&session))),
            (
                [
                    user_sessions_prefix(realm, &account.id),
                    session.id.clone().into_bytes(),
                ]
                .concat(),
                Some(hash.into_bytes()),
            ),
        ])?;
        self.store.durable(seq).await?;
        Ok(Issued {
            token,
            session: session.view(Some(&session.id)),
            user: account.view(now),
        })
    }

    /// Resolves a bearer token to its caller, or `Unauthenticated` for a
    /// missing, malformed, unknown, expired or revoked one.
    pub fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let r = self.authenticate_inner(token);
        if r.is_err() {
            metrics::BAD_TOKENS.inc();
        }
        r
    }

    fn authenticate_inner(&self, token: &str) -> Result<Caller, AuthError> {
        let realm = token_realm(token).ok_or(AuthError::Unauthenticated)?;
        if !self.realm_exists(&realm) {
            return Err(AuthError::Unauthenticated);
        }
        let hash = sha256_hex(token.as_bytes());
        let key = session_key(&realm, &hash);
        let Some(raw) = self.store.get(&key)? else {
            return Err(AuthError::Unauthenticated);
        };
        let mut session: Session =
            serde_json::from_slice(&raw).map_err(|_| AuthError::Unauthenticated)?;
        let now = now_ms();
        if now >= session.expires_ms || now >= session.last_seen_ms.saturating_add(session.idle_ms)
        {
            let _ = self.store.apply(&[
                (key, None),
                (
                    [
                        user_sessions_prefix(&realm, &session.user),
                        session.id.clone().into_bytes(),
                    ]
                    .concat(),
                    None,
                ),
            ]);
            return Err(AuthError::Unauthenticated);
        }
        let caller = match &session.guest {
            Some(g) => Caller {
                realm: realm.clone(),
                user: session.user.clone(),
                username: session.user.clone(),
                display_name: g.display_name.clone(),
                role: Role::Guest,
                session: session.id.clone(),
                restriction: None,
                tenants: Vec::new(),
                guest: Some(g.clone()),
                via: session.via.clone(),
            },
            None => {
                let account = self
                    .account(&realm, &session.user)?
                    .filter(|a| a.active)
                    .ok_or(AuthError::Unauthenticated)?;
                Caller {
                    realm: realm.clone(),
                    user: account.id,
                    username: account.username,
                    display_name: account.display_name,
                    role: account.role,
                    session: session.id.clone(),
                    restriction: session.restriction,
                    tenants: account.tenants,
                    guest: None,
                    via: session.via.clone(),
                }
            }
        };
        if now.saturating_sub(session.last_seen_ms) >= TOUCH_EVERY_MS {
            session.last_seen_ms = now;
            // Durable soon enough: losing a touch only shortens idle time.
            let _ = self.store.apply(&[(key, Some(json(&session)))]);
        }
        Ok(caller)
    }

    /// Ends the session of `token`.
    pub async fn logout(&self, caller: &Caller) -> Result<(), AuthError> {
        self.revoke_session(&caller.realm, &caller.user, &caller.session)
            .await?;
        self.audit(
            &caller.realm,
            "auth.logout",
            &caller.username,
            outcome::SUCCESS,
            &format!("session {}", caller.session),
        );
        Ok(())
    }

    fn session_deletes(&self, realm: &Scope, user: &str) -> Result<Vec<Write>, AuthError> {
        let prefix = user_sessions_prefix(realm, user);
        let mut writes = Vec::new();
        for (k, hash) in self.store.scan(&prefix, None, usize::MAX)? {
            writes.push((session_key(realm, &String::from_utf8_lossy(&hash)), None));
            writes.push((k, None));
        }
        Ok(writes)
    }

    /// A user's live sessions, newest first.
    pub fn sessions(
        &self,
        realm: &Scope,
        user: &str,
        current: Option<&str>,
    ) -> Result<Vec<SessionView>, AuthError> {
        let now = now_ms();
        let mut out = Vec::new();
        for (_, hash) in self
            .store
            .scan(&user_sessions_prefix(realm, user), None, usize::MAX)?
        {
            if let Some(raw) = self
                .store
                .get(&session_key(realm, &String::from_utf8_lossy(&hash)))?
                && let Ok(s) = serde_json::from_slice::<Session>(&raw)
                && now < s.expires_ms
                && now < s.last_seen_ms + s.idle_ms
            {
                out.push(s.view(current));
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.created_ms));
        Ok(out)
    }

    /// Ends one of a user's sessions by its public id.
    pub async fn revoke_session(
        &self,
        realm: &Scope,
        user: &str,
        id: &str,
    ) -> Result<(), AuthError> {
        let index = [user_sessions_prefix(realm, user), id.as_bytes().to_vec()].concat();
        let Some(hash) = self.store.get(&index)? else {
            return Err(AuthError::NotFound(format!("session {id}")));
        };
        let seq = self.store.apply(&[
            (session_key(realm, &String::from_utf8_lossy(&hash)), None),
            (index, None),
        ])?;
        self.store.durable(seq).await?;
        self.audit(
            realm,
            "session.revoke",
            &format!("{user}/{id}"),
            outcome::SUCCESS,
            "",
        );
        Ok(())
    }

    /// Ends every session of a user; returns how many.
    pub async fn revoke_all(&self, realm: &Scope, user: &str) -> Result<usize, AuthError> {
        let writes = self.session_deletes(realm, user)?;
        let n = writes.len() / 2;
        let seq = self.store.apply(&writes)?;
        self.store.durable(seq).await?;
        self.audit(
            realm,
            "session.revoke-all",
            user,
            outcome::SUCCESS,
            &format!("{n} sessions"),
        );
        Ok(n)
    }

    /// Changes the caller's password: the current one must be given, the
    /// new one must meet the policy and differ. Every session of the user
    /// ends; a fresh one is returned.
    pub async fn change_password(
        &self,
        caller: &Caller,
        current: &str,
        new: &str,
        source: Option<String>,
        user_agent: Option<&str>,
    ) -> Result<Issued, AuthError> {
        if caller.role == Role::Guest {
            return Err(AuthError::Forbidden("guests have no password".into()));
        }
        if current.len() > MAX_PASSWORD_BYTES || new.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::InvalidArgument(format!(
                "password longer than {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let realm = &caller.realm;
        let account = self.existing(realm, &caller.user)?;
        let phc = account.password_hash.clone().ok_or_else(|| {
            AuthError::Forbidden(
                "this account signs in through single sign-on and has no password".into(),
            )
        })?;
        // Guessing the current password through a stolen session is
        // throttled like a sign-in.
        let track = format!("{}/{}", realm.label(), account.username);
        let now = now_ms();
        let gate = lock(&self.throttle).gate(&track, None, now);
        if let Gate::Wait(ms) = gate {
            return Err(AuthError::Throttled { retry_after_ms: ms });
        }
        if !self.verify_password(current.to_string(), phc.clone()).await {
            let locked_until = lock(&self.throttle).failure(&track, None, now);
            metrics::LOGIN_FAILURES.inc();
            self.audit(
                realm,
                "auth.password-change",
                &caller.username,
                outcome::FAILURE,
                if locked_until.is_some() {
                    "current password wrong; attempts now throttled"
                } else {
                    "current password wrong"
                },
            );
            return Err(AuthError::InvalidCredentials);
        }
        let mut unmet = password::check(new, &account.username)
            .err()
            .unwrap_or_default();
        if unmet.is_empty() && self.verify_password(new.to_string(), phc).await {
            unmet.push("choose a password different from the current one".into());
        }
        if !unmet.is_empty() {
            return Err(AuthError::PasswordPolicy(unmet));
        }
        let hash = self.hash(new.to_string()).await?;
        let _w = self.writes.lock().await;
        let mut account = self.existing(realm, &caller.user)?;
        account.password_hash = Some(hash);
        account.must_change_password = false;
        let revoke = self.session_deletes(realm, &account.id)?;
        self.save(realm, &account, revoke).await?;
        drop(_w);
        self.audit(
            realm,
            "auth.password-change",
            &caller.username,
            outcome::SUCCESS,
            "every session ended",
        );
        let policy = self.policy(realm)?;
        let restriction = (policy.requires_mfa(account.role) && !account.mfa_enrolled())
            .then_some(Restriction::EnrolMfa);
        self.issue(
            realm,
            &account,
            &policy,
            restriction,
            source,
            user_agent,
            "password",
        )
        .await
    }

    /// Starts TOTP enrolment: a new secret the caller's app must prove it
    /// holds (`mfa_confirm`). Returns (base32 secret, otpauth URI).
    pub async fn mfa_enroll(&self, caller: &Caller) -> Result<(String, String), AuthError> {
        if caller.role == Role::Guest {
            return Err(AuthError::Forbidden(
                "guests cannot enrol a second factor".into(),
            ));
        }
        let _w = self.writes.lock().await;
        let mut account = self.existing(&caller.realm, &caller.user)?;
        if account.mfa_enrolled() {
            return Err(AuthError::AlreadyExists(
                "a second factor (reset it through an admin to enrol a new one)".into(),
            ));
        }
        let mut secret = [0u8; totp::SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(|e| AuthError::Audit(e.to_string()))?;
        let b32 = totp::base32(&secret);
        account.mfa = Some(Mfa {
            secret: b32.clone(),
            confirmed: false,
            last_step: 0,
            recovery: Vec::new(),
        });
        self.save(&caller.realm, &account, Vec::new()).await?;
        let issuer = format!("Switchboard {}", caller.realm.label());
        self.audit(
            &caller.realm,
            "auth.mfa-enroll",
            &caller.username,
            outcome::SUCCESS,
            "secret issued, awaiting confirmation",
        );
        Ok((b32, totp::uri(&issuer, &account.username, &secret)))
    }

    /// Confirms enrolment with a current code; returns the recovery codes
    /// (shown once) and lifts an MFA restriction on the session.
    pub async fn mfa_confirm(&self, caller: &Caller, code: &str) -> Result<Vec<String>, AuthError> {
        let _w = self.writes.lock().await;
        let mut account = self.existing(&caller.realm, &caller.user)?;
        let Some(mfa) = account.mfa.as_mut().filter(|m| !m.confirmed) else {
            return Err(AuthError::InvalidArgument(
                "no enrolment is pending: start one with POST /api/v1/auth/mfa/enroll".into(),
            ));
        };
        let secret = totp::base32_decode(&mfa.secret).unwrap_or_default();
        let Some(step) = totp::check(&secret, code.trim(), totp::step(now_ms() / 1000), 0) else {
            self.audit(
                &caller.realm,
                "auth.mfa-confirm",
                &caller.username,
                outcome::FAILURE,
                "wrong code",
            );
            return Err(AuthError::MfaInvalid);
        };
        let mut codes = Vec::new();
        for _ in 0..RECOVERY_CODES {
            let raw = crate::support::encoding::random_hex(5);
            codes.push(format!("{}-{}", &raw[..5], &raw[5..]));
        }
        mfa.confirmed = true;
        mfa.last_step = step;
        mfa.recovery = codes
            .iter()
            .map(|c| sha256_hex(c.replace('-', "").as_bytes()))
            .collect();
        let mut extra = Vec::new();
        // Lift the restriction on the session that enrolled.
        let index = [
            user_sessions_prefix(&caller.realm, &caller.user),
            caller.session.as_bytes().to_vec(),
        ]
        .concat();
        if let Some(hash) = self.store.get(&index)? {
            let skey = session_key(&caller.realm, &String::from_utf8_lossy(&hash));
            if let Some(raw) = self.store.get(&skey)?
                && let Ok(mut s) = serde_json::from_slice::<Session>(&raw)
                && s.restriction == Some(Restriction::EnrolMfa)
            {
                s.restriction = None;
                extra.push((skey, Some(json(&s))));
            }
        }
        self.save(&caller.realm, &account, extra).await?;
        self.audit(
            &caller.realm,
            "auth.mfa-confirm",
            &caller.username,
            outcome::SUCCESS,
            "second factor enrolled",
        );
        Ok(codes)
    }

    /// Signs in an account federated from an external identity provider
    /// (SPEC I6): the account linked to (issuer, subject), or — when the
    /// tenant allows it — a new one provisioned under the provider's user
    /// name. A local account of the same name is never taken over.
    #[allow(clippy::too_many_arguments)]
    pub async fn sso_sign_in(
        &self,
        realm: &Scope,
        issuer: &str,
        subject: &str,
        username: &str,
        display_name: Option<&str>,
        email: Option<&str>,
        provision: bool,
        source: Option<String>,
    ) -> Result<Issued, AuthError> {
        self.require_realm(realm)?;
        let link = format!(
            "{}x/{}",
            prefix(realm),
            sha256_hex(format!("{issuer}\0{subject}").as_bytes())
        )
        .into_bytes();
        let _w = self.writes.lock().await;
        let account = match self.store.get(&link)? {
            Some(id) => self.account(realm, &String::from_utf8_lossy(&id))?,
            None => None,
        };
        let account = match account {
            Some(a) => a,
            None if !provision => {
                self.audit(
                    realm,
                    "auth.sso",
                    username,
                    outcome::DENIED,
                    "no linked account and provisioning is off",
                );
                return Err(AuthError::Forbidden(
                    "no account is linked to this identity and the tenant does not create accounts on first sign-in".into(),
                ));
            }
            None => {
                let name = normalize_username(username)?;
                if self.store.get(&name_key(realm, &name))?.is_some() {
                    self.audit(
                        realm,
                        "auth.sso",
                        &name,
                        outcome::DENIED,
                        "a local account of that name exists and is not linked",
                    );
                    return Err(AuthError::AlreadyExists(format!(
                        "a local account named {name} (not linked to the identity provider; an admin must rename or delete it)"
                    )));
                }
                let display = display_name
                    .unwrap_or(&name)
                    .chars()
                    .take(MAX_DISPLAY_NAME_LEN)
                    .collect::<String>();
                let a = Account {
                    id: format!("u{}", crate::support::encoding::random_hex(8)),
                    username: name.clone(),
                    display_name: display,
                    email: email.filter(|e| check_email(e).is_ok()).map(str::to_string),
                    role: Role::User,
                    active: true,
                    password_hash: None,
                    must_change_password: false,
                    mfa: None,
                    locked_until_ms: 0,
                    tenants: Vec::new(),
                    external: Some((issuer.to_string(), subject.to_string())),
                    created_ms: now_ms(),
                    created_by: None,
                };
                self.save(
                    realm,
                    &a,
                    vec![
                        (name_key(realm, &name), Some(a.id.clone().into_bytes())),
                        (link.clone(), Some(a.id.clone().into_bytes())),
                    ],
                )
                .await?;
                self.audit(
                    realm,
                    "user.create",
                    &format!("{} ({name})", a.id),
                    outcome::SUCCESS,
                    &format!("provisioned on first sign-in through {issuer}"),
                );
                a
            }
        };
        drop(_w);
        if !account.active || account.locked_until_ms > now_ms() {
            self.audit(
                realm,
                "auth.sso",
                &account.username,
                outcome::DENIED,
                "account disabled or locked",
            );
            return Err(AuthError::InvalidCredentials);
        }
        let policy = self.policy(realm)?;
        // The identity provider authenticated the user, second factor
        // included: no local restriction applies.
        let issued = self
            .issue(realm, &account, &policy, None, source, None, "sso")
            .await?;
        metrics::LOGINS.inc();
        self.audit(
            realm,
            "auth.sso",
            &account.username,
            outcome::SUCCESS,
            &format!("through {issuer}, session {}", issued.session.id),
        );
        Ok(issued)
    }

    /// The writes creating a guest session for one resource (the
    /// `identity` capability puts them in its call's transaction), at most
    /// 24 hours. Returns (token, guest id, writes).
    pub fn guest_session_writes(
        &self,
        tenant: &str,
        plugin: &str,
        display_name: &str,
        resource: &str,
        ttl_ms: u64,
    ) -> Result<(String, String, Vec<Write>), AuthError> {
        let realm = Scope::tenant(tenant);
        self.require_realm(&realm)?;
        check_display_name(display_name)?;
        if display_name.trim().is_empty() {
            return Err(AuthError::InvalidArgument(
                "a guest needs a display name".into(),
            ));
        }
        if resource.is_empty() || resource.len() > 256 || resource.chars().any(char::is_control) {
            return Err(AuthError::InvalidArgument(
                "the guest's resource scope must be 1-256 bytes without control characters".into(),
            ));
        }
        let ttl_ms = ttl_ms.clamp(60_000, 24 * 3_600_000);
        let token = format!("sb1.{tenant}.{}", random_token_part()?);
        let hash = sha256_hex(token.as_bytes());
        let now = now_ms();
        let id = format!("g{}", &hash[..16]);
        let session = Session {
            id: hash[..24].to_string(),
            user: id.clone(),
            created_ms: now,
            last_seen_ms: now,
            expires_ms: now + ttl_ms,
            idle_ms: ttl_ms,
            source: None,
            user_agent: None,
            restriction: None,
            guest: Some(Guest {
                display_name: display_name.to_string(),
                resource: resource.to_string(),
                plugin: plugin.to_string(),
            }),
            via: "guest".into(),
        };
        let writes = vec![
            (session_key(&realm, &hash), Some(json(&session))),
            (
                [
                    user_sessions_prefix(&realm, &id),
                    session.id.clone().into_bytes(),
                ]
                .concat(),
                Some(hash.into_bytes()),
            ),
        ];
        Ok((token, id, writes))
    }
}

impl From<AuthError> for crate::error::ApiError {
    fn from(e: AuthError) -> Self {
        crate::error::ApiError::new(e.status(), e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_only_in_their_exact_form() {
        let good = format!("sb1.acme.{}", "a".repeat(43));
        assert_eq!(token_realm(&good), Some(Scope::tenant("acme")));
        assert_eq!(
            token_realm(&format!("sb1._.{}", "B".repeat(43))),
            Some(Scope::System)
        );
        for bad in [
            String::new(),
            "sb1.acme".into(),
            format!("sb2.acme.{}", "a".repeat(43)),
            format!("sb1.Acme.{}", "a".repeat(43)),
            format!("sb1.acme.{}", "a".repeat(42)),
            format!("sb1.acme.{}.x", "a".repeat(43)),
            format!("sb1.acme.{}=", "a".repeat(42)),
            format!("sb1.../{}", "a".repeat(43)),
        ] {
            assert_eq!(token_realm(&bad), None, "{bad}");
        }
    }

    #[test]
    fn usernames_are_normalised_and_checked() {
        assert_eq!(
            normalize_username(" Alice@Example.com ").unwrap(),
            "alice@example.com"
        );
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65), "ümlaut"] {
            assert!(normalize_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_belong_to_their_realm() {
        assert!(Identity::check_role_for(&Scope::System, Role::Operator).is_ok());
        assert!(Identity::check_role_for(&Scope::System, Role::User).is_err());
        assert!(Identity::check_role_for(&Scope::tenant("a"), Role::TenantAdmin).is_ok());
        assert!(Identity::check_role_for(&Scope::tenant("a"), Role::Partner).is_err());
        assert!(Identity::check_role_for(&Scope::tenant("a"), Role::Guest).is_err());
    }
}
