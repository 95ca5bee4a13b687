//! Who is who in this plugin's tenant: look a user up, or mint a guest
//! session scoped to one resource (e.g. a meeting) for someone without an
//! account. The caller of the current request is `Request::principal`.

use crate::Error;
use crate::bindings::switchboard::host::identity as raw;

pub use raw::UserInfo;

/// A user of this tenant by id or login name; `None` when there is none.
/// Other tenants' users are never visible.
pub fn lookup_user(id_or_name: &str) -> Result<Option<UserInfo>, Error> {
    raw::lookup_user(id_or_name)
}

/// A bearer token for a guest named `display_name`, valid for `resource`
/// only, for `ttl_ms` (clamped to 1 minute–24 hours). The session exists
/// only if this call succeeds.
pub fn create_guest_session(
    display_name: &str,
    resource: &str,
    ttl_ms: u64,
) -> Result<String, Error> {
    raw::create_guest_session(display_name, resource, ttl_ms)
}
