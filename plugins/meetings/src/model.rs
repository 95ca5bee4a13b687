//! What the meetings plugin stores, and under which keys. A leaf: every
//! area builds its keys here; it uses no other module.
//!
//! | key | value |
//! |---|---|
//! | `s/{sid}` | a [`Space`] |
//! | `c/{hmac(code)}` | the space id of an access code (never the digits) |
//! | `u/{user}/{sid}` | the user's [`Role`] in a space (their list) |
//! | `m/{sid}/{user}` | the same role, found from the space (for deletion) |
//! | `h/{user}/{sid}` | the user hid the space |
//! | `k/{sid}/{lid}` | the space's live sessions, past and present |
//! | `r/{sid}/{rid}` | the space's recordings (in the recording plugin) |
//! | `l/{lid}` | a [`Live`] session |
//! | `p/{lid}/{pid}` | a [`Participant`] of it, one key each so joins do not contend |
//! | `g/{a,u,c}/{hmac}` | failed-code counters per address, user and code |
//! | `g-sweep` | a sweep of stale counters is scheduled |

use serde::{Deserialize, Serialize};
use switchboard_sdk::crypto;
use switchboard_sdk::http::ApiError;

/// A user's place in a space (SPEC M6).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Organizer,
    Invited,
    Attended,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Space {
    pub id: String,
    pub title: String,
    pub organizer: String,
    pub invited: Vec<String>,
    /// Milliseconds since the epoch; `None` for an ad hoc space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<u64>,
    pub created_at: u64,
    /// Digits only; unique within the tenant.
    pub code: String,
    /// The space's conversation in the chat plugin.
    pub conversation: String,
    /// The running live session, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
}

/// How a participant takes part (SPEC M6).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Registered,
    Guest,
    Pstn,
}

/// Where a participant stands in a live session.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A guest in the waiting room (SPEC M7).
    Waiting,
    /// In the session: sees the roster, chats, signals media.
    Present,
    Left,
    /// A guest turned away from the waiting room.
    Rejected,
    /// Removed by a registered participant.
    Removed,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Participant {
    pub id: String,
    pub kind: Kind,
    /// Display name: the user's, the guest's own, or the PSTN caller's
    /// label.
    pub name: String,
    /// Their role in the space; `None` for guests and PSTN callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub state: State,
    pub since: u64,
    /// Who admitted (a guest) or removed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// The plugin that brought a PSTN caller in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// A caller who dialled in: their call leg (this plugin's), hung up
    /// (and cleared) when they are removed or the session ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
    /// The recording a caller who dialled in was last told of (M9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub told: Option<String>,
    /// The play that tells them (while it is under way): only its end
    /// takes the caller (back) into the bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub told_op: Option<String>,
}

/// Where a caller who dialled in stands, kept with their call leg
/// (`set-state`, SPEC M6).
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(tag = "stage", rename_all = "kebab-case")]
pub enum Dial {
    /// Keying the access code (`tries` wrong or empty so far).
    Code { tries: u8 },
    /// Hearing that they join (and that the session is recorded), then
    /// into the session's phone bridge.
    Joining { lid: String, pid: String },
    /// In the phone bridge.
    InBridge { lid: String, pid: String },
    /// Out of the bridge for an announcement, then back in.
    Announcing { lid: String, pid: String },
    /// The last words, then hang up.
    Closing,
}

/// A dial-in leg's state: its stage and the operation it waits for.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DialState {
    pub dial: Dial,
    #[serde(default)]
    pub op: String,
    #[serde(default)]
    pub collecting: bool,
}

/// The conference room of a live session's phone participants.
pub fn phone_bridge(lid: &str) -> String {
    format!("live-{lid}")
}

/// This plugin's name (the `via` of callers who dialled in here).
pub const NAME: &str = "meetings";

/// A recording running in a live session (SPEC M9).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Recording {
    /// The recording's id in the recording plugin.
    pub id: String,
    /// Its initiator: the only one who stops it.
    pub by: String,
    pub started_at: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Live {
    pub id: String,
    pub space: String,
    pub started_by: String,
    pub started_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    pub end_timer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<Recording>,
    /// Guest sessions handed out for this session (capped).
    #[serde(default)]
    pub guest_sessions: u32,
}

pub fn space(sid: &str) -> String {
    format!("s/{sid}")
}

/// Access codes are credentials: their index key holds an HMAC (a key the
/// host holds for this plugin), never the digits (key names are not
/// encrypted at rest).
pub fn code(code: &str) -> Result<String, ApiError> {
    let mac = crypto::hmac_sha256("code-index", code.as_bytes())?;
    Ok(format!("c/{}", crypto::hex(&mac[..16])))
}

pub fn role(user: &str, sid: &str) -> String {
    format!("u/{user}/{sid}")
}

pub fn member(sid: &str, user: &str) -> String {
    format!("m/{sid}/{user}")
}

pub fn member_prefix(sid: &str) -> String {
    format!("m/{sid}/")
}

pub fn hidden(user: &str, sid: &str) -> String {
    format!("h/{user}/{sid}")
}

pub fn session_of(sid: &str, lid: &str) -> String {
    format!("k/{sid}/{lid}")
}

pub fn sessions_prefix(sid: &str) -> String {
    format!("k/{sid}/")
}

pub fn recording_of(sid: &str, rid: &str) -> String {
    format!("r/{sid}/{rid}")
}

pub fn recordings_prefix(sid: &str) -> String {
    format!("r/{sid}/")
}

pub fn live(lid: &str) -> String {
    format!("l/{lid}")
}

pub fn participant(lid: &str, pid: &str) -> String {
    format!("p/{lid}/{pid}")
}

pub fn participants_prefix(lid: &str) -> String {
    format!("p/{lid}/")
}

/// The guest-session scope of a live session (what the host reports as
/// `x-switchboard-guest-resource` on the guest's calls).
pub fn guest_scope(lid: &str) -> String {
    format!("live:{lid}")
}
