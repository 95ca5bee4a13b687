//! Who is in a meeting space (SPEC M1, M3, M4): loading a space, the role
//! each user holds in it (organizer, invited, attended) under both index
//! keys, the space as a member sees it, and naming users by id or login
//! name. Shared by `spaces.rs` and `live.rs` and below both, so that
//! neither reaches into the other for these.

use serde_json::{Value, json};
use switchboard_sdk::http::{self, ApiError};
use switchboard_sdk::{identity, kv};

use crate::model::{self, Role, Space};

/// Invitees of one space.
pub const MAX_INVITEES: usize = 1000;

/// The answer for a space that is not there or that the caller has no
/// role in: the same for both, so existence is not revealed.
pub fn not_found() -> ApiError {
    ApiError::new(
        404,
        "space_not_found",
        "no such space, or you are not in it",
    )
}

/// Space `sid` (checked), or [`not_found`].
pub fn load(sid: &str) -> Result<Space, ApiError> {
    http::check_id(sid, "space")?;
    kv::get_json::<Space>(model::space(sid))?.ok_or_else(not_found)
}

/// The caller's role in space `sid`, if any.
pub fn role_of(user: &str, sid: &str) -> Result<Option<Role>, ApiError> {
    Ok(kv::get_json::<Role>(model::role(user, sid))?)
}

/// Gives `user` `role` in the space (both index keys).
pub fn set_role(user: &str, sid: &str, role: Role) -> Result<(), ApiError> {
    kv::set_json(model::role(user, sid), &role)?;
    kv::set_json(model::member(sid, user), &role)?;
    Ok(())
}

/// The id of an active user of the tenant named by id or login name.
pub fn resolve_user(name: &str) -> Result<String, ApiError> {
    let found = if name.is_empty() || name.len() > 256 {
        None
    } else {
        identity::lookup_user(name)?
    };
    match found {
        Some(u) if u.active => Ok(u.id),
        _ => Err(ApiError::bad_request(
            "unknown_user",
            format!(
                "no active user {:?} in this tenant",
                name.chars().take(80).collect::<String>()
            ),
        )),
    }
}

/// The space as the API shows it, with the caller's `role` in it.
pub fn view(space: &Space, role: Role) -> Value {
    let mut v = crate::to_value(space);
    v["role"] = json!(role);
    v
}
