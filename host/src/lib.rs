//! Switchboard host: the trusted microkernel of a unified-communications
//! server. It owns storage, identity, networking and crypto, and lends them
//! to sandboxed WebAssembly feature plugins over the `switchboard:host` WIT
//! interfaces, per tenant and only as granted.
//!
//! Layout (`docs/architecture.md`, checked by `tests/layers.rs`): the doors
//! (`cli`, `server`, `control`, `gateway`), `admin` and `scheduler`, the
//! host facade `runtime`, the `registry` of packages and tenants, the
//! `kernel` (engine, plugin executor, linking, call path), `capability`
//! (one module per host interface), `call` (the call context), the
//! services (`identity`, `audit`, `events`, `backup`, `outbound`), `store`,
//! and the leaves.

// Unsafe code is denied everywhere; the exceptions are loading an
// authenticated compile-cache entry (`kernel::cache`) and lowering the
// plugin threads' priority (`kernel::executor`), each with its SAFETY
// argument beside it.
#![deny(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod audit;
pub mod backup;
pub mod bundle;
pub mod call;
pub mod capability;
pub mod cli;
pub mod control;
pub mod error;
pub mod events;
pub mod gateway;
pub mod harness;
pub mod identity;
pub mod kernel;
pub mod media;
pub mod metrics;
pub mod outbound;
pub mod registry;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod sip;
pub mod store;
pub mod support;
pub mod telephony;
pub mod tenant;
pub mod trust;
pub mod world;

pub use runtime::{Runtime, RuntimeConfig};
