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
//!
//! Files: this one holds the types, the realm keys and the shared helpers;
//! `accounts` (the admin's verbs), `login` (password and SSO sign-in,
//! issuing sessions), `sessions` (authenticating, listing, revoking,
//! guests), `credentials` (a user's own password and second factor);
//! `password`, `totp` and `throttle` are their primitives; `access` (JIT
//! grants), `sso` (sign-in through a tenant's identity provider) and
//! `oidc` (the OpenID provider's records and token issuing) build on them.

pub mod access;
mod accounts;
pub mod bootstrap;
mod credentials;
pub mod devices;
pub mod digest;
mod login;
pub mod oidc;
pub mod password;
mod sessions;
pub mod sso;
pub mod throttle;
pub mod totp;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use self::throttle::{Throttle, ThrottleConfig};
use crate::audit::{self, Actor, ActorKind, AuditLog, Record, Scope, outcome};
use crate::store::{Store, StoreError, Write};
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
    /// The first-run bootstrap secret is wrong, already used or expired
    /// (one answer for all).
    #[error(
        "the bootstrap secret is wrong, already used or expired; while no operator exists, each start of the server prints a new one"
    )]
    BootstrapRefused,
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
            AuthError::BootstrapRefused => "bootstrap_refused",
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
            AuthError::Restricted(_) | AuthError::Forbidden(_) | AuthError::BootstrapRefused => 403,
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
    /// Tokens that authenticated recently (`sessions`).
    verified: sessions::Verified,
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

/// Account `id`'s record from its stored (opened) bytes.
fn decode_account(id: &str, bytes: &[u8]) -> Result<Account, AuthError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AuthError::Audit(format!("stored account {id} unreadable: {e}")))
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
            verified: sessions::Verified::default(),
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
            Some(b) => Ok(Some(decode_account(id, &b)?)),
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
