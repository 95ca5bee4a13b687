//! Errors of the registry and admin operations, each with a stable code
//! for API responses. `CallError` (a plugin call) lives in `call::error`.

pub use crate::call::error::CallError;

use switchboard_signing::{ManifestError, PackageError};

use crate::store::StoreError;

/// Why an administrative operation (install, create tenant, enable) was
/// refused. Nothing is stored when one of these is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The package is malformed, unsigned, untrusted or tampered with.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The package's publisher key was revoked.
    #[error("{name} {version} was signed by revoked key {key}; it can no longer be enabled")]
    PublisherRevoked {
        name: String,
        version: String,
        key: String,
    },
    /// The tenant does not accept this publisher.
    #[error("tenant {tenant} does not accept packages of publisher {key} (plugin {plugin})")]
    PublisherNotAccepted {
        tenant: String,
        plugin: String,
        key: String,
    },
    /// Enabling a lower version than the tenant has run (SPEC S3).
    #[error(
        "tenant {tenant} has run {plugin} {highest}; enabling {version} is a rollback and needs the operator's override"
    )]
    RollbackRefused {
        tenant: String,
        plugin: String,
        version: String,
        highest: String,
    },
    /// The new version asks for capabilities the tenant has not granted.
    #[error(
        "{plugin} {version} asks for capabilities the tenant has not granted: {added}; enable it again granting them"
    )]
    GrantsRequired {
        plugin: String,
        version: String,
        added: String,
    },
    /// A revoked key cannot be trusted again.
    #[error("key {0} was revoked; revocation is permanent — publish with a new key")]
    KeyRevoked(String),
    /// No such key in the trust store.
    #[error("key {0} is not in the trust store")]
    UnknownKey(String),
    /// The component is larger than the host accepts.
    #[error("component is {size} bytes; the limit is {limit}")]
    ComponentTooLarge { size: usize, limit: usize },
    /// The bytes are not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    MalformedComponent(String),
    /// The component targets a plugin API version this host does not link.
    #[error("{0}")]
    UnsupportedApiVersion(String),
    /// The component's exports do not match the `feature` world.
    #[error("the component does not implement switchboard:plugin/feature@{api}: {reason}")]
    WrongWorld { api: String, reason: String },
    /// The component imports a capability its manifest does not declare.
    #[error(
        "the component imports {import}, but its manifest does not request the `{capability}` capability"
    )]
    ImportNotDeclared { import: String, capability: String },
    /// The component imports a capability this host does not provide yet.
    #[error(
        "the component imports {import}: capability `{capability}` is not available on this host yet"
    )]
    CapabilityUnavailable { import: String, capability: String },
    /// The component imports something outside WASI and `switchboard:host`.
    #[error("the component imports {0}, which is not a Switchboard capability or WASI interface")]
    ForeignImport(String),
    /// Enabling would grant less than the component imports.
    #[error("the component imports {import}, but the tenant did not grant `{capability}`")]
    ImportNotGranted { import: String, capability: String },
    /// The admin tried to grant something the manifest does not request.
    #[error("cannot grant `{0}`: the plugin's manifest does not request it")]
    GrantNotRequested(String),
    /// The plugin version is installed already (versions are immutable).
    #[error("{name} {version} is already installed; publish a new version instead")]
    AlreadyInstalled { name: String, version: String },
    /// No such plugin version is installed.
    #[error("plugin {name} {version} is not installed")]
    PluginNotFound { name: String, version: String },
    /// The tenant id is malformed.
    #[error(
        "tenant id {0:?} is invalid: use 1-63 lower-case letters, digits or '-', starting with a letter or digit; \"system\" is reserved"
    )]
    InvalidTenantId(String),
    /// The tenant exists already.
    #[error("tenant {0:?} already exists")]
    TenantExists(String),
    /// No such tenant.
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    /// The tenant has not enabled this plugin.
    #[error("plugin {plugin:?} is not enabled for tenant {tenant:?}")]
    PluginNotEnabled { tenant: String, plugin: String },
    /// Limits outside what the host can honour.
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
    /// The plugin's `init` or `migrate` failed; the previous state stands.
    #[error("the plugin's {hook} failed, nothing was changed: {source}")]
    Hook {
        hook: &'static str,
        #[source]
        source: CallError,
    },
    /// No such region on this server.
    #[error("{0}")]
    InvalidRegion(String),
    /// Deletion is suspended by a legal hold (SPEC D4).
    #[error("{0} is under legal hold; release the hold first")]
    LegalHold(String),
    /// A retention policy or class is malformed.
    #[error("invalid retention policy: {0}")]
    InvalidRetention(String),
    /// A dialing policy (numbering plan or rules) is malformed.
    #[error("invalid dialing policy: {0}")]
    InvalidDialing(String),
    /// A route list is malformed or names a plugin that cannot take calls.
    #[error("invalid routes: {0}")]
    InvalidRoutes(String),
    /// A trunk is malformed (addresses, proxy, caller ids, password).
    #[error("invalid trunk: {0}")]
    InvalidTrunk(String),
    /// A tenant admin touching a trunk only an operator may change.
    #[error("{0}")]
    TrunkManaged(String),
    /// No such object.
    #[error("{0} does not exist")]
    NotFound(String),
    /// A key operation failed (master key rotation).
    #[error("{0}")]
    Key(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Compiling failed for a reason other than the component's validity.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AdminError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Manifest(e) => e.code(),
            AdminError::Package(e) => e.code(),
            AdminError::PublisherRevoked { .. } => "publisher_revoked",
            AdminError::PublisherNotAccepted { .. } => "publisher_not_accepted",
            AdminError::RollbackRefused { .. } => "rollback_refused",
            AdminError::GrantsRequired { .. } => "grants_required",
            AdminError::KeyRevoked(_) => "key_revoked",
            AdminError::UnknownKey(_) => "key_unknown",
            AdminError::ComponentTooLarge { .. } => "component_too_large",
            AdminError::MalformedComponent(_) => "malformed_component",
            AdminError::UnsupportedApiVersion(_) => "unsupported_api_version",
            AdminError::WrongWorld { .. } => "wrong_world",
            AdminError::ImportNotDeclared { .. } => "import_not_declared",
            AdminError::CapabilityUnavailable { .. } => "capability_unavailable",
            AdminError::ForeignImport(_) => "foreign_import",
            AdminError::ImportNotGranted { .. } => "capability_not_granted",
            AdminError::GrantNotRequested(_) => "grant_not_requested",
            AdminError::AlreadyInstalled { .. } => "already_installed",
            AdminError::PluginNotFound { .. } => "plugin_not_found",
            AdminError::InvalidTenantId(_) => "invalid_tenant_id",
            AdminError::TenantExists(_) => "tenant_exists",
            AdminError::TenantNotFound(_) => "tenant_not_found",
            AdminError::PluginNotEnabled { .. } => "plugin_not_enabled",
            AdminError::InvalidLimits(_) => "invalid_limits",
            AdminError::Hook { .. } => "plugin_hook_failed",
            AdminError::InvalidRegion(_) => "invalid_region",
            AdminError::LegalHold(_) => "legal_hold",
            AdminError::InvalidRetention(_) => "invalid_retention",
            AdminError::InvalidDialing(_) => "invalid_dialing",
            AdminError::InvalidRoutes(_) => "invalid_routes",
            AdminError::InvalidTrunk(_) => "invalid_trunk",
            AdminError::TrunkManaged(_) => "trunk_managed",
            AdminError::NotFound(_) => "not_found",
            AdminError::Key(_) => "key_error",
            AdminError::Store(_) => "storage_unavailable",
            AdminError::Internal(_) => "internal",
        }
    }
}

impl From<AdminError> for crate::error::ApiError {
    fn from(e: AdminError) -> Self {
        let code = e.code();
        let status = match code {
            "tenant_not_found" | "plugin_not_found" | "not_found" | "plugin_not_enabled" => 404,
            "tenant_exists" | "already_installed" | "legal_hold" => 409,
            "trunk_managed" => 403,
            "package_too_large" | "component_too_large" => 413,
            "storage_unavailable" => 503,
            "internal" | "key_error" => 500,
            _ => 400,
        };
        crate::error::ApiError::new(status, code, e.to_string())
    }
}
