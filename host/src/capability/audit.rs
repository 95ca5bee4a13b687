//! `audit`: a plugin appends to its tenant's audit trail (SPEC I9). The
//! entry is attributed to the plugin, on behalf of the calling user, with
//! the request's source address and id; it is written only if the call
//! commits (like every other effect of a call), so a trapped call leaves
//! no entry claiming something happened.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::{CapError, CapHost, View, ViewOf, WitResult, wit, wrap};
use crate::audit::{self, AuditLog, MAX_ACTION_LEN, MAX_DETAILS_LEN, MAX_TARGET_LEN, Scope};
use crate::call::CallCtx;
use crate::call::txn::Effect;

/// The capability's host-wide state: the trail entries go to.
pub struct State {
    pub(crate) trail: Arc<AuditLog>,
}

impl State {
    /// Entries go to `trail`.
    pub fn new(trail: Arc<AuditLog>) -> State {
        State { trail }
    }

    /// The effect appending `draft` once the call commits.
    pub(crate) fn append(&self, draft: AuditDraft) -> Append {
        Append {
            trail: self.trail.clone(),
            draft,
        }
    }
}

/// An audit entry a plugin asked for (or the host wrote for it, e.g. a
/// guest session), appended only if its call commits.
#[derive(Clone, Debug)]
pub struct AuditDraft {
    pub plugin: String,
    /// The user the plugin acted for.
    pub user: Option<String>,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub details: String,
}

/// The effect of an `AuditDraft`: the entry is appended to the tenant's
/// trail, attributed to the plugin on behalf of its user, in the request's
/// audit context.
pub struct Append {
    trail: Arc<AuditLog>,
    pub(crate) draft: AuditDraft,
}

impl Effect for Append {
    fn apply(&self, tenant: &str) {
        let d = &self.draft;
        let ctx = audit::Context {
            actor: audit::Actor {
                kind: audit::ActorKind::Plugin,
                id: Some(d.plugin.clone()),
                name: None,
                tenant: None,
                on_behalf_of: d.user.clone(),
            },
            ..audit::context()
        };
        let record = audit::Record {
            action: &d.action,
            target: &d.target,
            outcome: &d.outcome,
            details: &d.details,
        };
        if let Err(e) = self.trail.append_as(&Scope::tenant(tenant), &ctx, record) {
            tracing::error!(target: "audit", tenant, plugin = %d.plugin, error = %e, "plugin audit entry lost");
        }
    }
}

/// Entries one call may append.
pub const MAX_ENTRIES_PER_CALL: usize = 64;

/// Queues an entry for the call's commit.
pub fn append(
    ctx: &mut CallCtx,
    state: &State,
    action: &str,
    target: &str,
    outcome: &str,
    details: &str,
) -> Result<(), CapError> {
    let action_ok = !action.is_empty()
        && action.len() <= MAX_ACTION_LEN
        && action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if !action_ok {
        return Err(CapError::InvalidArgument(format!(
            "action must be 1-{MAX_ACTION_LEN} of [a-z0-9._-]"
        )));
    }
    if !matches!(outcome, "success" | "failure" | "denied") {
        return Err(CapError::InvalidArgument(
            "outcome must be success, failure or denied".into(),
        ));
    }
    if target.len() > MAX_TARGET_LEN {
        return Err(CapError::TooLarge(format!(
            "target over {MAX_TARGET_LEN} bytes"
        )));
    }
    if details.len() > MAX_DETAILS_LEN {
        return Err(CapError::TooLarge(format!(
            "details over {MAX_DETAILS_LEN} bytes"
        )));
    }
    if target.chars().chain(action.chars()).any(char::is_control) {
        return Err(CapError::InvalidArgument(
            "control characters in target".into(),
        ));
    }
    if ctx.txn.effects_of::<Append>().count() >= MAX_ENTRIES_PER_CALL {
        return Err(CapError::TooLarge(format!(
            "at most {MAX_ENTRIES_PER_CALL} audit entries per call"
        )));
    }
    let draft = AuditDraft {
        plugin: ctx.plugin_name().to_string(),
        user: ctx.principal.user.clone(),
        action: action.to_string(),
        target: target.to_string(),
        outcome: outcome.to_string(),
        details: details.to_string(),
    };
    ctx.txn.push_effect(state.append(draft));
    Ok(())
}

/// Links the `audit` interface, served by this module.
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::audit::add_to_linker::<T, ViewOf<State>>(linker, |t| {
        let (call, caps) = t.parts();
        View {
            call,
            state: &caps.audit,
        }
    })
}

impl wit::audit::Host for View<'_, State> {
    fn append(
        &mut self,
        action: String,
        target: String,
        outcome: String,
        details: String,
    ) -> WitResult<()> {
        wrap(append(
            self.call, self.state, &action, &target, &outcome, &details,
        ))
    }
}
