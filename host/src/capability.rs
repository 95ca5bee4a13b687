//! Host capabilities: one module per `switchboard:host` interface, each a
//! narrow door of plain functions over `call::CallCtx` (and, where it
//! keeps host-wide state, its part of `States`). They know nothing of WIT
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

pub use crate::call::error::CapError;

/// What capabilities keep for the whole host, built once when the host
/// opens and shared by every call (Spin's factor state): the
/// audit trail, the event hub, the timer scheduler's wake-up and the
/// outbound HTTP client with its operator settings.
pub struct States {
    pub audit: audit::State,
    pub events: events::State,
    pub http_client: http_client::State,
    pub timers: timers::State,
}
