//! The generated bindings of every WIT world this host speaks, in one leaf
//! (as Spin's `world` crate): `v0_1`, `v0_2` and `v0_3` for the plugin
//! worlds (`switchboard:plugin@0.1.0`, `@0.2.0`, `@0.3.0`), all importing
//! `switchboard:host@0.1.0`, generated once in `v0_1` and shared by `with`;
//! `v0_3` also imports `switchboard:telephony@0.1.0`, generated there.
//! `host` names the newest host package: the capability modules implement
//! its interfaces, and the plugin-world adapters (`kernel::v0_x`) only
//! invoke exports. A new host package version is bound here beside the
//! old, becomes `host`, and the older one's interfaces convert and forward
//! to it (`wit/README.md`).

/// `switchboard:plugin@0.1.0`, world `feature`.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "switchboard:plugin/feature",
        imports: {
            "switchboard:host/plugins.call": async | trappable,
            "switchboard:host/http-client.send": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

/// `switchboard:plugin@0.2.0`, world `feature` (0.1.0 plus `describe`).
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2.0",
        world: "switchboard:plugin/feature",
        exports: { default: async },
        with: {
            "switchboard:host": crate::world::v0_1::switchboard::host,
        },
    });
}

/// `switchboard:plugin@0.3.0`, world `feature` (0.2.0 plus the calls
/// capabilities of `switchboard:telephony@0.1.0` and `on-call`).
pub mod v0_3 {
    wasmtime::component::bindgen!({
        path: "../wit/0.3.0",
        world: "switchboard:plugin/feature",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "switchboard:host": crate::world::v0_1::switchboard::host,
        },
    });
}

/// The newest `switchboard:host` package.
pub use v0_1::switchboard::host;

/// The newest `switchboard:telephony` package.
pub use v0_3::switchboard::telephony;

/// The `switchboard:host` package versions this host serves.
pub const HOST_PACKAGE_VERSIONS: &[&str] = &["0.1.0"];

/// The `switchboard:telephony` package versions this host serves (to
/// plugins of API 0.3.0 and later).
pub const TELEPHONY_PACKAGE_VERSIONS: &[&str] = &["0.1.0"];
