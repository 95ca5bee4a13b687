//! Adapter for plugin API `switchboard:plugin@0.3.0`: the 0.2.0 world plus
//! the calls capabilities (`switchboard:telephony@0.1.0`, served by
//! `capability::{calls, dial, mwi}`) and the `on-call` export, which
//! receives the events of the plugin's call legs. Its `switchboard:host`
//! imports are still 0.1.0, shared with the older adapters.

use wasmtime::Store;

use super::state::HostState;
use super::v0_1::{Stage, invoke_feature};
use crate::call::types::{Invocation, Outcome};
use crate::capability::calls::wit_event;

use crate::world::v0_3 as bindings;

/// The API version this adapter serves.
pub const API_VERSION: &str = "0.3.0";

/// A component linked for one grant set, ready to instantiate.
pub type Pre = bindings::FeaturePre<HostState>;

/// Checks the component's exports against the 0.3.0 world and wraps it.
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
        |event| {
            feature
                .call_on_call(&mut *st, &wit_event(event))
                .await
                .map(|r| r.map(|()| Outcome::Done))
        }
    )
}
