//! Real-time events to users' WebSocket streams (`GET /api/v1/events`).
//! What a call publishes goes out only if the call succeeds; group changes
//! likewise. Groups belong to this plugin (another plugin's group of the
//! same name is another group) and are stored, so they outlive restarts.
//!
//! Kinds are `[a-z0-9._-]{1,64}` (e.g. `chat.message.new`); data is at most
//! 64 KiB and reaches clients as JSON when it is JSON (else as a string,
//! or base64 when it is not UTF-8). Groups are `[A-Za-z0-9._:-]{1,128}`
//! (e.g. `meeting:42`); user ids are the ids in `Request::principal`
//! (guests included).

use crate::Error;
use crate::bindings::switchboard::host::events as raw;

/// Publishes `data` as `kind` to each of `users` (at most 10,000).
pub fn publish_to_users(users: &[String], kind: &str, data: &[u8]) -> Result<(), Error> {
    raw::publish(&raw::Audience::Users(users.to_vec()), kind, data)
}

/// Publishes `data` as `kind` to every member of this plugin's `group`
/// (as it stands when the call commits).
pub fn publish_to_group(group: &str, kind: &str, data: &[u8]) -> Result<(), Error> {
    raw::publish(&raw::Audience::Group(group.to_string()), kind, data)
}

/// Publishes a serializable value as JSON.
pub fn publish_json<T: serde::Serialize>(
    users: &[String],
    kind: &str,
    value: &T,
) -> Result<(), Error> {
    let data = serde_json::to_vec(value)
        .map_err(|e| Error::InvalidArgument(format!("cannot encode event: {e}")))?;
    publish_to_users(users, kind, &data)
}

/// Adds `user` to `group`.
pub fn join_group(group: &str, user: &str) -> Result<(), Error> {
    crate::tx::note(raw::join_group(group, user))
}

/// Removes `user` from `group`.
pub fn leave_group(group: &str, user: &str) -> Result<(), Error> {
    crate::tx::note(raw::leave_group(group, user))
}
