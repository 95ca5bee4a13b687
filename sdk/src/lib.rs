//! The Switchboard plugin SDK (SPEC P1, P3).
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. It implements
//! [`Plugin`] and exports it with one line, [`export_plugin!`]; it reaches
//! the host through the typed helpers here ([`kv`], [`blobs`], [`crypto`],
//! [`log`], [`config`], [`timers`], [`plugins`], [`events`], [`http_client`],
//! [`identity`], [`audit`], and for calls [`calls`] and [`audio`]) and answers
//! HTTP-shaped requests, usually through the small [`http::Router`], and
//! the events of its call legs through [`Plugin::on_call`]. With the `harness` feature (native
//! targets only), [`harness`] runs plugins in the real host runtime from
//! ordinary `cargo test`s. See `sdk/README.md` for a complete example.

/// The generated bindings of `switchboard:plugin@0.3.0`. Prefer the typed
/// helpers; the raw bindings are here for what they do not cover.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/0.3.0",
        world: "switchboard:plugin/feature",
        pub_export_macro: true,
        export_macro_name: "__export_feature",
        default_bindings_module: "switchboard_sdk::bindings",
        generate_all,
    });
}

pub mod audio;
pub mod audit;
pub mod blobs;
pub mod calls;
pub mod config;
pub mod crypto;
pub mod events;
pub mod http;
pub mod http_client;
pub mod identity;
pub mod kv;
pub mod log;
pub mod plugins;
pub mod timers;
pub mod tx;

#[cfg(all(feature = "harness", not(target_arch = "wasm32")))]
pub use switchboard::harness;

pub use bindings::switchboard::host::types::{
    Error, Method, Principal, PrincipalKind, Request, Response, Role,
};
pub use bindings::{Event, TimerEvent};

/// Milliseconds since the Unix epoch, by the host's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a plugin implements. Only `handle` is required; the hooks default
/// to doing nothing successfully.
pub trait Plugin {
    /// Called once when a tenant enables the plugin. An error refuses the
    /// enable and leaves nothing behind.
    fn init() -> Result<(), String> {
        Ok(())
    }

    /// Called when a tenant moves to this version from `from_version`. An
    /// error keeps the tenant on the old version with its data untouched.
    fn migrate(from_version: String) -> Result<(), String> {
        let _ = from_version;
        Ok(())
    }

    /// Answers one request. Writes made while handling it are kept only if
    /// this returns (without trapping) a status below 500.
    fn handle(request: Request) -> Response;

    /// Receives an event the host delivers to this plugin.
    fn on_event(event: Event) -> Result<(), String> {
        let _ = event;
        Ok(())
    }

    /// Receives a timer this plugin scheduled with [`timers::schedule`].
    /// An error makes the host retry it later, with backoff.
    fn on_timer(timer: TimerEvent) -> Result<(), String> {
        let _ = timer;
        Ok(())
    }

    /// A short JSON description of the plugin for admins (routes and
    /// purpose).
    fn describe() -> String {
        "{}".to_string()
    }

    /// Receives an event of one of this plugin's call legs (see
    /// [`calls`]). Events of one leg come one at a time, in order; an
    /// error (or a trap) has the host deliver the event again, a few
    /// times, then end the leg. The default takes no calls.
    fn on_call(event: calls::CallEvent) -> Result<(), String> {
        let _ = event;
        Err("this plugin takes no calls".into())
    }
}

/// Exports a [`Plugin`] implementation as the component's `feature` world:
///
/// ```ignore
/// struct Hello;
/// impl switchboard_sdk::Plugin for Hello {
///     fn handle(_: switchboard_sdk::Request) -> switchboard_sdk::Response {
///         switchboard_sdk::http::text(200, "hello")
///     }
/// }
/// switchboard_sdk::export_plugin!(Hello);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            struct __SwitchboardExport;
            impl $crate::bindings::Guest for __SwitchboardExport {
                fn init() -> Result<(), String> {
                    <$plugin as $crate::Plugin>::init()
                }
                fn migrate(from_version: String) -> Result<(), String> {
                    <$plugin as $crate::Plugin>::migrate(from_version)
                }
                fn handle(request: $crate::Request) -> $crate::Response {
                    <$plugin as $crate::Plugin>::handle(request)
                }
                fn on_event(event: $crate::Event) -> Result<(), String> {
                    <$plugin as $crate::Plugin>::on_event(event)
                }
                fn on_timer(timer: $crate::TimerEvent) -> Result<(), String> {
                    <$plugin as $crate::Plugin>::on_timer(timer)
                }
                fn describe() -> String {
                    <$plugin as $crate::Plugin>::describe()
                }
                fn on_call(event: $crate::calls::CallEvent) -> Result<(), String> {
                    <$plugin as $crate::Plugin>::on_call(event)
                }
            }
    $crate::bindings::__export_feature!(__SwitchboardExport with_types_in $crate::bindings);
        };
    };
}
