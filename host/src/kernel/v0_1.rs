//! Adapter for plugin API `switchboard:plugin@0.1.0`: its exports (the
//! `feature` world's `init`, `migrate`, `handle`, `on-event`, `on-timer`)
//! over the bindings in `world::v0_1`. The host interfaces it imports are
//! served by the capability modules against the newest `switchboard:host`
//! bindings (`world::host`); this module only links the granted ones and
//! invokes exports. A later API version gets a sibling module, so plugins
//! of both versions run side by side (SPEC K8).

use std::collections::BTreeSet;

use switchboard_signing::Capability;
use wasmtime::Store;
use wasmtime::component::Linker;

use super::state::HostState;
use crate::call::types::{Invocation, Outcome};
use crate::capability;

use crate::world::v0_1 as bindings;

/// The API version this adapter serves.
pub const API_VERSION: &str = "0.1.0";

/// A component linked for one grant set, ready to instantiate.
pub type Pre = bindings::FeaturePre<HostState>;

/// Adds the granted (and implemented) `switchboard:host` interfaces to
/// `linker`, each through its capability module. Interfaces not granted
/// are simply absent: a component that imports one fails to link.
pub fn add_to_linker(
    linker: &mut Linker<HostState>,
    grants: &BTreeSet<Capability>,
) -> wasmtime::Result<()> {
    capability::add_to_linker(linker, grants)
}

/// Checks the component's exports against the world and wraps it.
pub fn pre(instance_pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Pre> {
    bindings::FeaturePre::new(instance_pre)
}

/// Instantiates `pre` in `store` and runs one invocation through the
/// generated bindings at `$b` (a `bindgen!` module of some plugin API
/// version). `$describe` answers `Invocation::Describe` and `$on_call`
/// `Invocation::Call` (`$event`) given the instance (`$feature`), since
/// only newer worlds export `describe` and `on-call`.
macro_rules! invoke_feature {
    ($b:path, $pre:expr, $store:expr, $invocation:expr, |$feature:ident, $st:ident| $describe:expr, |$event:ident| $on_call:expr) => {{
        use $b as b;
        let $st = $store;
        let $feature = $pre
            .instantiate_async(&mut *$st)
            .await
            .map_err(Stage::Instantiate)?;
        let result = match $invocation {
            Invocation::Handle(request) => $feature
                .call_handle(&mut *$st, &request.into())
                .await
                .map(|r| Ok(Outcome::Response(r.into()))),
            Invocation::Init => $feature
                .call_init(&mut *$st)
                .await
                .map(|r| r.map(|()| Outcome::Done)),
            Invocation::Migrate(from) => $feature
                .call_migrate(&mut *$st, &from)
                .await
                .map(|r| r.map(|()| Outcome::Done)),
            Invocation::Event(e) => $feature
                .call_on_event(
                    &mut *$st,
                    &b::Event {
                        source: e.source,
                        kind: e.kind,
                        data: e.data,
                    },
                )
                .await
                .map(|r| r.map(|()| Outcome::Done)),
            Invocation::Timer { id, name, payload } => $feature
                .call_on_timer(&mut *$st, &b::TimerEvent { id, name, payload })
                .await
                .map(|r| r.map(|()| Outcome::Done)),
            Invocation::Describe => $describe,
            Invocation::Call($event) => $on_call,
        };
        result.map_err(Stage::Call)
    }};
}
pub(crate) use invoke_feature;

/// Instantiates and runs one invocation.
pub async fn invoke(
    pre: &Pre,
    store: &mut Store<HostState>,
    invocation: Invocation,
) -> Result<Result<Outcome, String>, Stage> {
    invoke_feature!(
        bindings,
        pre,
        store,
        invocation,
        |_feature, _store| {
            // API 0.1.0 has no `describe` export.
            Ok(Ok(Outcome::Description(None)))
        },
        |_event| Ok(Err(NO_CALLS.to_string()))
    )
}

/// What a plugin of an API version before 0.3.0 answers a call event.
pub(crate) const NO_CALLS: &str = "this plugin's API version takes no calls (0.3.0 or later)";

/// Where a failed invocation failed.
pub enum Stage {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
}
