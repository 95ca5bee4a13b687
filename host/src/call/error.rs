//! The errors of a call: `CallError`, what the caller of a plugin call
//! sees (each with a stable code), and `CapError`, what a capability
//! hands back to the plugin (the outer trap/inner error split is the
//! WIT adapters').

use crate::store::StoreError;

/// Why a plugin call failed. Only the caller of that call sees it (K6).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No such tenant.
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    /// The tenant has not enabled the plugin.
    #[error("plugin {plugin:?} is not enabled for tenant {tenant:?}")]
    PluginNotEnabled { tenant: String, plugin: String },
    /// The plugin trapped (panic, stack overflow, unreachable...).
    #[error("the plugin failed while handling this call ({0}); nothing it wrote was kept")]
    Trap(String),
    /// The plugin ran past its deadline.
    #[error("the plugin did not finish within its {0} ms deadline; nothing it wrote was kept")]
    Timeout(u64),
    /// The plugin needed more memory than the tenant's cap.
    #[error("the plugin exceeded its {0}-byte memory limit; nothing it wrote was kept")]
    Memory(u64),
    /// The plugin's response is larger than allowed.
    #[error("the plugin's response of {size} bytes exceeds the {limit}-byte limit")]
    ResponseTooLarge { size: usize, limit: u64 },
    /// The plugin returned an invalid status code.
    #[error("the plugin returned invalid HTTP status {0}")]
    BadStatus(u16),
    /// A lifecycle hook (init, migrate, on-event, on-timer) returned an error.
    #[error("the plugin reported an error: {0}")]
    Plugin(String),
    /// The plugin's publisher key was revoked; the package no longer runs.
    #[error("plugin {0} was signed by a revoked publisher key and is disabled")]
    PublisherRevoked(String),
    /// The tenant (or the host) has no free call slot.
    #[error("too many calls in flight for tenant {0}; retry shortly")]
    Busy(String),
    /// The transaction kept conflicting with concurrent calls.
    #[error("the call conflicted with concurrent calls {0} times; retry")]
    Conflict(u32),
    /// Committing the call's writes would exceed a storage quota; nothing
    /// was written.
    #[error("storage quota exceeded: {0}; nothing this call wrote was kept")]
    QuotaExceeded(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CallError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::TenantNotFound(_) => "tenant_not_found",
            CallError::PluginNotEnabled { .. } => "plugin_not_enabled",
            CallError::Trap(_) => "plugin_trap",
            CallError::Timeout(_) => "plugin_timeout",
            CallError::Memory(_) => "plugin_memory",
            CallError::ResponseTooLarge { .. } => "plugin_response_too_large",
            CallError::BadStatus(_) => "plugin_bad_response",
            CallError::Plugin(_) => "plugin_error",
            CallError::PublisherRevoked(_) => "publisher_revoked",
            CallError::Busy(_) => "tenant_busy",
            CallError::Conflict(_) => "conflict",
            CallError::QuotaExceeded(_) => "quota_exceeded",
            CallError::Store(StoreError::Corrupt { .. }) => "storage_corrupt",
            CallError::Store(_) => "storage_unavailable",
            CallError::Internal(_) => "internal",
        }
    }

    /// The HTTP status a gateway answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            CallError::TenantNotFound(_) | CallError::PluginNotEnabled { .. } => 404,
            CallError::PublisherRevoked(_) => 403,
            CallError::Busy(_) => 429,
            CallError::Conflict(_) => 409,
            CallError::Timeout(_) => 504,
            CallError::Trap(_)
            | CallError::Memory(_)
            | CallError::ResponseTooLarge { .. }
            | CallError::BadStatus(_)
            | CallError::Plugin(_) => 502,
            CallError::QuotaExceeded(_) => 507,
            CallError::Store(_) => 503,
            CallError::Internal(_) => 500,
        }
    }
}

/// A capability call's failure, handed to the plugin to deal with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapError {
    /// An argument was malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A key, value or budget exceeded a limit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Not allowed for this plugin or tenant.
    #[error("denied: {0}")]
    Denied(String),
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A quota is exhausted.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The transaction lost a race.
    #[error("conflict")]
    Conflict,
    /// The host could not finish in time.
    #[error("timeout")]
    Timeout,
    /// The host failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for CapError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage failed inside a capability call");
        CapError::Internal("storage is unavailable".into())
    }
}
