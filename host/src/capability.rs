//! Host capabilities: one module per `switchboard:host` interface, each a
//! narrow door of plain functions over `CallCtx`. They know nothing of WIT
//! versions; `runtime::v0_1` adapts them to the 0.1.0 bindings. The grant
//! check is not repeated here: an ungranted capability is never linked
//! (SPEC K3), so a call can only reach what the tenant granted.

pub mod audit;
pub mod blobs;
pub mod config;
pub mod crypto;
pub mod events;
pub mod http_client;
pub mod identity;
pub mod kv;
pub mod log;
pub mod plugins;
pub mod timers;

use switchboard_signing::Capability;

/// Capabilities this host implements. A component importing any other
/// `switchboard:host` interface is refused at install, naming it.
pub const IMPLEMENTED: &[Capability] = &[
    Capability::Kv,
    Capability::Log,
    Capability::Config,
    Capability::Timers,
    Capability::Plugins,
    Capability::Blobs,
    Capability::Crypto,
    Capability::Identity,
    Capability::Audit,
    Capability::Events,
    Capability::HttpClient,
];

/// Whether this host can link `cap`.
pub fn is_implemented(cap: Capability) -> bool {
    IMPLEMENTED.contains(&cap)
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

impl From<crate::store::StoreError> for CapError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "storage failed inside a capability call");
        CapError::Internal("storage is unavailable".into())
    }
}
