//! `events`: a plugin publishes to the event streams of users of its own
//! tenant, or to a group it keeps (e.g. a live meeting's participants).
//! Publishing and group changes belong to the call's transaction: nothing
//! goes out, and no membership changes, unless the call commits. Groups are
//! the plugin's own (another plugin's group of the same name is another
//! group) and are stored, so they survive restarts.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
use crate::call::CallCtx;
use crate::call::txn::Effect;
use crate::events::{
    Audience, EventDraft, EventHub, MAX_AUDIENCE, MAX_EVENT_BYTES, MAX_GROUP_MEMBERS,
    MAX_PUBLISHES_PER_CALL, valid_group, valid_kind, valid_user,
};
use crate::store::{Store, keys};

/// The capability's host-wide state: the hub that fans events out to the
/// streams.
pub struct State {
    pub(crate) hub: Arc<EventHub>,
}

impl State {
    /// Events go out through `hub`.
    pub fn new(hub: Arc<EventHub>) -> State {
        State { hub }
    }
}

/// The effect of a publish: after the commit, the event goes to the
/// users named, or to the group's members as stored then.
pub struct Publish {
    hub: Arc<EventHub>,
    store: Arc<Store>,
    draft: EventDraft,
}

impl Effect for Publish {
    fn apply(&self, tenant: &str) {
        let d = &self.draft;
        let users = match &d.audience {
            Audience::Users(u) => u.clone(),
            Audience::Group(g) => {
                let prefix = keys::event_group_prefix(tenant, &d.plugin, g);
                match self.store.scan_raw(&prefix, None, MAX_GROUP_MEMBERS) {
                    Ok(entries) => entries
                        .into_iter()
                        .filter_map(|(k, _)| String::from_utf8(k[prefix.len()..].to_vec()).ok())
                        .collect(),
                    Err(e) => {
                        tracing::error!(tenant, plugin = %d.plugin, group = %g, error = %e, "cannot read an event group; event dropped");
                        return;
                    }
                }
            }
        };
        self.hub
            .deliver(tenant, &d.plugin, &users, &d.kind, &d.data);
    }
}

fn check_group(group: &str) -> Result<(), CapError> {
    if valid_group(group) {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(
            "group names are 1-128 of [A-Za-z0-9._:-]".into(),
        ))
    }
}

fn check_user(user: &str) -> Result<(), CapError> {
    if valid_user(user) {
        Ok(())
    } else {
        Err(CapError::InvalidArgument(format!(
            "{user:?} is not a user id (1-64 of [A-Za-z0-9._-])"
        )))
    }
}

/// Queues `kind`/`data` for `audience`.
pub fn publish(
    ctx: &mut CallCtx,
    state: &State,
    audience: Audience,
    kind: &str,
    data: Vec<u8>,
) -> Result<(), CapError> {
    ctx.charge(data.len() + kind.len())?;
    if !valid_kind(kind) {
        return Err(CapError::InvalidArgument(
            "event kinds are 1-64 of [a-z0-9._-]".into(),
        ));
    }
    if data.len() > MAX_EVENT_BYTES {
        return Err(CapError::TooLarge(format!(
            "event data of {} bytes exceeds {MAX_EVENT_BYTES}",
            data.len()
        )));
    }
    match &audience {
        Audience::Users(users) => {
            if users.len() > MAX_AUDIENCE {
                return Err(CapError::TooLarge(format!(
                    "at most {MAX_AUDIENCE} users per event; use a group"
                )));
            }
            ctx.charge(users.iter().map(String::len).sum())?;
            for u in users {
                check_user(u)?;
            }
            // Across the whole call, not per publish.
            let named: usize = users.len()
                + ctx
                    .txn
                    .effects_of::<Publish>()
                    .map(|p| match &p.draft.audience {
                        Audience::Users(u) => u.len(),
                        Audience::Group(_) => 0,
                    })
                    .sum::<usize>();
            if named > MAX_AUDIENCE {
                return Err(CapError::TooLarge(format!(
                    "at most {MAX_AUDIENCE} recipients named per call; use a group"
                )));
            }
        }
        Audience::Group(g) => check_group(g)?,
    }
    if ctx.txn.effects_of::<Publish>().count() >= MAX_PUBLISHES_PER_CALL {
        return Err(CapError::TooLarge(format!(
            "at most {MAX_PUBLISHES_PER_CALL} events per call"
        )));
    }
    let draft = EventDraft {
        plugin: ctx.plugin_name().to_string(),
        audience,
        kind: kind.to_string(),
        data,
    };
    let publish = Publish {
        hub: state.hub.clone(),
        store: ctx.services.store.clone(),
        draft,
    };
    ctx.txn.push_effect(publish);
    Ok(())
}

/// Adds `user` to the plugin's `group`.
pub fn join_group(ctx: &mut CallCtx, group: &str, user: &str) -> Result<(), CapError> {
    ctx.charge(group.len() + user.len())?;
    check_group(group)?;
    check_user(user)?;
    let key = keys::event_group_member(ctx.tenant_id(), ctx.plugin_name(), group, user);
    ctx.txn.set(key, Vec::new());
    Ok(())
}

/// Removes `user` from the plugin's `group`.
pub fn leave_group(ctx: &mut CallCtx, group: &str, user: &str) -> Result<(), CapError> {
    ctx.charge(group.len() + user.len())?;
    check_group(group)?;
    check_user(user)?;
    let key = keys::event_group_member(ctx.tenant_id(), ctx.plugin_name(), group, user);
    ctx.txn.set_delete(key);
    Ok(())
}

/// Links the `events` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::events::add_to_linker::<T, ViewOf<State>>(linker, |t| {
        let (call, caps) = t.parts();
        View {
            call,
            state: &caps.events,
        }
    })
}

impl wit::events::Host for View<'_, State> {
    fn publish(
        &mut self,
        audience: wit::events::Audience,
        kind: String,
        data: Vec<u8>,
    ) -> WitResult<()> {
        let audience = match audience {
            wit::events::Audience::Users(u) => crate::events::Audience::Users(u),
            wit::events::Audience::Group(g) => crate::events::Audience::Group(g),
        };
        wrap(publish(self.call, self.state, audience, &kind, data))
    }

    fn join_group(&mut self, group: String, user: String) -> WitResult<()> {
        wrap(join_group(self.call, &group, &user))
    }

    fn leave_group(&mut self, group: String, user: String) -> WitResult<()> {
        wrap(leave_group(self.call, &group, &user))
    }
}
