//! `timers`: durable one-shot timers. Scheduling and cancelling are writes
//! in the call's transaction (a timer set by a call that traps never
//! fires); the runtime's scheduler (`Runtime::fire_due_timers`) delivers due
//! timers to the plugin's `on-timer`, retrying a failing one with backoff.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
use crate::call::CallCtx;
use crate::call::txn::Effect;
use crate::store::keys;
use crate::support::clock::now_ms;

/// Longest timer name.
pub const MAX_NAME_BYTES: usize = 128;
/// Largest timer payload.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Furthest a timer may be set: one year.
pub const MAX_DELAY_MS: u64 = 366 * 24 * 3600 * 1000;
/// Delivery attempts before a failing timer is dropped (and logged).
pub const MAX_ATTEMPTS: u32 = 5;

/// The capability's host-wide state: how to wake the scheduler.
pub struct State {
    pub(crate) wake: Arc<Notify>,
}

impl State {
    /// Changes to the queue wake the scheduler waiting on `wake`.
    pub fn new(wake: Arc<Notify>) -> State {
        State { wake }
    }

    /// The effect waking the scheduler once a change to the queue commits
    /// (the kernel queues it when a fired timer is claimed, so a backlog
    /// drains page after page).
    pub fn wake(&self) -> Wake {
        Wake(self.wake.clone())
    }
}

/// The effect of scheduling or cancelling: the scheduler looks at the
/// queue again once the change is committed.
pub struct Wake(Arc<Notify>);

impl Effect for Wake {
    fn apply(&self, _tenant: &str) {
        self.0.notify_one();
    }
}

/// A pending timer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRecord {
    pub id: String,
    pub name: String,
    /// Hex-encoded payload.
    pub payload: String,
    pub due_ms: u64,
    pub attempts: u32,
}

/// Schedules a timer; returns its id.
pub fn schedule(
    ctx: &mut CallCtx,
    state: &State,
    delay_ms: u64,
    name: &str,
    payload: &[u8],
) -> Result<String, CapError> {
    let _span = tracing::trace_span!("sb.timers.schedule").entered();
    ctx.charge(name.len() + payload.len())?;
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(CapError::InvalidArgument(format!(
            "timer names must be 1-{MAX_NAME_BYTES} bytes"
        )));
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(CapError::TooLarge(format!(
            "timer payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}",
            payload.len()
        )));
    }
    if delay_ms > MAX_DELAY_MS {
        return Err(CapError::InvalidArgument(format!(
            "delay of {delay_ms} ms exceeds the maximum of {MAX_DELAY_MS} ms"
        )));
    }
    let id = crate::support::encoding::random_hex(16);
    let record = TimerRecord {
        id: id.clone(),
        name: name.to_string(),
        payload: hex::encode(payload),
        due_ms: now_ms().saturating_add(delay_ms),
        attempts: 0,
    };
    let (tenant, plugin) = (ctx.tenant_id().to_string(), ctx.plugin_name().to_string());
    let encoded = serde_json::to_vec(&record).map_err(|e| CapError::Internal(e.to_string()))?;
    ctx.txn.set(keys::timer(&tenant, &plugin, &id), encoded);
    ctx.txn.set(
        keys::timer_queue(record.due_ms, &tenant, &plugin, &id),
        Vec::new(),
    );
    ctx.txn.push_effect(state.wake());
    Ok(id)
}

/// Cancels one of the calling plugin's pending timers.
pub fn cancel(ctx: &mut CallCtx, state: &State, id: &str) -> Result<bool, CapError> {
    let _span = tracing::trace_span!("sb.timers.cancel").entered();
    ctx.charge(id.len())?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CapError::InvalidArgument(format!(
            "{id:?} is not a timer id"
        )));
    }
    let (tenant, plugin) = (ctx.tenant_id().to_string(), ctx.plugin_name().to_string());
    let key = keys::timer(&tenant, &plugin, id);
    let store = ctx.services.store.clone();
    let Some(raw) = ctx.txn.get(store.as_ref(), &key)? else {
        return Ok(false);
    };
    let record: TimerRecord = serde_json::from_slice(&raw)
        .map_err(|e| CapError::Internal(format!("timer record unreadable: {e}")))?;
    ctx.txn.delete(store.as_ref(), &key)?;
    ctx.txn.delete(
        store.as_ref(),
        &keys::timer_queue(record.due_ms, &tenant, &plugin, id),
    )?;
    ctx.txn.push_effect(state.wake());
    Ok(true)
}

/// Links the `timers` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::timers::add_to_linker::<T, ViewOf<State>>(linker, |t| {
        let (call, caps) = t.parts();
        View {
            call,
            state: &caps.timers,
        }
    })
}

impl wit::timers::Host for View<'_, State> {
    fn schedule(&mut self, delay_ms: u64, name: String, payload: Vec<u8>) -> WitResult<String> {
        wrap(schedule(self.call, self.state, delay_ms, &name, &payload))
    }

    fn cancel(&mut self, id: String) -> WitResult<bool> {
        wrap(cancel(self.call, self.state, &id))
    }
}
