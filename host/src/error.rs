//! The error every door renders: an HTTP status, a stable code and a
//! message that says what was wrong and what to do. The services' own
//! error types convert into it beside their definitions (`identity`,
//! `audit`, `kernel::error`), so this module stays a leaf.

use serde::{Deserialize, Serialize};

/// A failure as a door answers it: HTTP status, stable code, message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "forbidden", message)
    }

    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid_argument", message)
    }
}
