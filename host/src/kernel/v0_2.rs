//! Adapter for plugin API `switchboard:plugin@0.2.0`: the 0.1.0 world plus
//! a `describe` export. Its capability imports are still
//! `switchboard:host@0.1.0`, so the generated host interfaces (and their
//! implementations in the capability modules) are shared rather than
//! generated again (`world::v0_2` binds them `with` 0.1's); only the
//! exports differ. Plugins of both versions run side by side (SPEC K8).

use wasmtime::Store;

use super::state::HostState;
use super::v0_1::{NO_CALLS, Stage, invoke_feature};
use crate::call::types::{Invocation, Outcome};

use crate::world::v0_2 as bindings;

/// The API version this adapter serves.
pub const API_VERSION: &str = "0.2.0";

/// A component linked for one grant set, ready to instantiate.
pub type Pre = bindings::FeaturePre<HostState>;

/// Checks the component's exports against the 0.2.0 world and wraps it.
pub fn pre(instance_pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Pre> {
    bindings::FeaturePre::new(instance_pre)
}

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
        |feature, st| {
            feature
                .call_describe(&mut *st)
                .await
                .map(|d| Ok(Outcome::Description(Some(d))))
        },
        |_event| Ok(Err(NO_CALLS.to_string()))
    )
}
