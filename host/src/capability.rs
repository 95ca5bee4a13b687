//! Host capabilities: one module per `switchboard:host` interface, each a
//! narrow door: plain functions over `call::CallCtx` (and, where it keeps
//! host-wide state, its part of `States`), its `add_to_linker`, and its
//! `Host` impls against the newest host bindings (`world::host`) on a
//! `View` of the call. The kernel's store data reaches them only through
//! `CapHost`. The grant check is the link: an ungranted capability is
//! never linked (SPEC K3), so a call can only reach what the tenant
//! granted.

pub mod audit;
pub mod blobs;
pub mod calls;
pub mod config;
pub mod crypto;
pub mod events;
pub mod http_client;
pub mod identity;
pub mod kv;
pub mod log;
pub mod plugins;
pub mod timers;
pub mod types;

use std::collections::BTreeSet;
use std::marker::PhantomData;

use switchboard_signing::Capability;
use wasmtime::component::{HasData, Linker};

use crate::call::CallCtx;
pub use crate::call::error::CapError;
pub(crate) use crate::world::host as wit;
pub(crate) use crate::world::telephony as twit;

/// The one list: each implemented capability and the function linking it
/// (in the module holding its state and `Host` impls). The names themselves are
/// the manifest vocabulary, `switchboard_signing::Capability`. Adding a
/// capability: its WIT, its module, one line here.
macro_rules! capabilities {
    ($($cap:ident => $module:path),* $(,)?) => {
        /// Capabilities this host implements. A component importing any
        /// other `switchboard:host` interface is refused at install,
        /// naming it.
        pub const IMPLEMENTED: &[Capability] = &[$(Capability::$cap),*];

        /// Adds `types` and the granted, implemented interfaces to
        /// `linker`. Interfaces not granted are simply absent: a component
        /// that imports one fails to link (SPEC K3).
        pub fn add_to_linker<T: CapHost>(
            linker: &mut Linker<T>,
            grants: &BTreeSet<Capability>,
        ) -> wasmtime::Result<()> {
            types::add_to_linker(linker)?;
            calls::add_types_to_linker(linker)?;
            for cap in grants {
                match cap {
                    $(Capability::$cap => $module(linker)?,)*
                    // Not implemented: never linked (install refuses importers).
                    _ => {}
                }
            }
            Ok(())
        }
    };
}

capabilities! {
    Kv => kv::add_to_linker,
    Log => log::add_to_linker,
    Config => config::add_to_linker,
    Timers => timers::add_to_linker,
    Plugins => plugins::add_to_linker,
    Blobs => blobs::add_to_linker,
    Crypto => crypto::add_to_linker,
    Identity => identity::add_to_linker,
    Audit => audit::add_to_linker,
    Events => events::add_to_linker,
    HttpClient => http_client::add_to_linker,
    Calls => calls::add_to_linker,
    Dial => calls::add_dial_to_linker,
    Mwi => calls::add_mwi_to_linker,
}

/// Whether this host can link `cap`.
pub fn is_implemented(cap: Capability) -> bool {
    IMPLEMENTED.contains(&cap)
}

/// A call's store data as the capabilities see it; the kernel's
/// `HostState` implements it, so no capability names the kernel.
pub trait CapHost: Send + 'static {
    /// The call being served and the capabilities' host-wide state.
    fn parts(&mut self) -> (&mut CallCtx, &States);
}

/// What one capability's `Host` impls work on: the call and that
/// capability's host-wide state (`()` for none).
pub struct View<'a, S: 'static> {
    pub(crate) call: &'a mut CallCtx,
    pub(crate) state: &'a S,
}

/// The `HasData` marker linking an interface to `View<'_, S>`.
pub struct ViewOf<S>(PhantomData<fn() -> S>);

impl<S: 'static> HasData for ViewOf<S> {
    type Data<'a> = View<'a, S>;
}

/// A host function's result: the outer error traps the guest, the inner one
/// is the plugin's to handle.
pub(crate) type WitResult<T> = wasmtime::Result<Result<T, wit::types::Error>>;

/// A capability's result as the plugin sees it.
pub(crate) fn wrap<T>(r: Result<T, CapError>) -> WitResult<T> {
    Ok(r.map_err(wit_error))
}

fn wit_error(e: CapError) -> wit::types::Error {
    use wit::types::Error as E;
    match e {
        CapError::InvalidArgument(m) => E::InvalidArgument(m),
        CapError::TooLarge(m) => E::TooLarge(m),
        CapError::Denied(m) => E::Denied(m),
        CapError::NotFound(m) => E::NotFound(m),
        CapError::QuotaExceeded(m) => E::QuotaExceeded(m),
        CapError::Conflict => E::Conflict,
        CapError::Timeout => E::Timeout,
        CapError::Internal(m) => E::Internal(m),
    }
}

/// What capabilities keep for the whole host, built once when the host
/// opens and shared by every call (Spin's factor state): the
/// audit trail, the event hub, the timer scheduler's wake-up and the
/// outbound HTTP client with its operator settings.
pub struct States {
    pub audit: audit::State,
    pub events: events::State,
    pub http_client: http_client::State,
    pub timers: timers::State,
    /// Call control (`calls`, `dial`).
    pub telephony: calls::State,
}
