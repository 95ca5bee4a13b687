//! The tenant's tamper-evident audit trail. Entries are attributed to this
//! plugin acting for the request's caller and are written only if the call
//! succeeds. `action` is `[a-z0-9._-]{1,64}` (e.g. `chat.message.delete`).

use serde_json::Value;

use crate::Error;
use crate::bindings::switchboard::host::audit as raw;
use crate::http::ApiError;

/// How the audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// Appends an entry: what was done (`action`) to what (`target`), how it
/// ended, and free-form `details` (at most 4 KiB; never message content).
pub fn append(action: &str, target: &str, outcome: Outcome, details: &str) -> Result<(), Error> {
    raw::append(action, target, outcome.as_str(), details)
}

/// Appends a [`Outcome::Success`] entry with JSON `details`, failing as an
/// [`ApiError`] a handler can pass on with `?`.
pub fn success(action: &str, target: &str, details: Value) -> Result<(), ApiError> {
    append(action, target, Outcome::Success, &details.to_string())?;
    Ok(())
}
