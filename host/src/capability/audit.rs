//! `audit`: a plugin appends to its tenant's audit trail (SPEC I9). The
//! entry is attributed to the plugin, on behalf of the calling user, with
//! the request's source address and id; it is written only if the call
//! commits (like every other effect of a call), so a trapped call leaves
//! no entry claiming something happened.

use super::CapError;
use crate::audit::{MAX_ACTION_LEN, MAX_DETAILS_LEN, MAX_TARGET_LEN};
use crate::runtime::state::CallCtx;
use crate::runtime::txn::AuditDraft;

/// Entries one call may append.
pub const MAX_ENTRIES_PER_CALL: usize = 64;

/// Queues an entry for the call's commit.
pub fn append(
    ctx: &mut CallCtx,
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
    if ctx.txn.audit_drafts().len() >= MAX_ENTRIES_PER_CALL {
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
    ctx.txn.push_audit(draft);
    Ok(())
}
