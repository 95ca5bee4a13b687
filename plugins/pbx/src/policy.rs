//! The tenant's call recording policy (SPEC R1, R3, R5 for calls), which
//! its admins set (`GET`/`PUT /admin/recording`, audited): whose calls
//! are recorded `always` and who may record theirs `on_demand`, by user
//! or by number; what every party hears when recording starts (the
//! library's "this call is being recorded", or a WAV the admin uploads:
//! `PUT /admin/recording/announcement`); whether recording may be
//! silent (only when the admin says so, and every such recording is
//! audited as silent); the keys that start or stop and pause or resume
//! it from a phone.
//!
//! A leaf: it uses only the SDK.

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_sdk::http::{self, ApiError, Params, RequestExt as _};
use switchboard_sdk::{Error, Request, Response, audio, audit, blobs, identity, kv};

/// Where the policy is kept.
const KEY: &str = "policy/recording";
/// The uploaded announcement, a blob of 8 kHz mono WAV.
const ANNOUNCEMENT: &str = "policy/announcement";
/// Users or numbers in one list.
const MAX_ENTRIES: usize = 500;
/// Longest announcement, ms, and its upload.
const MAX_ANNOUNCEMENT_MS: u64 = 30_000;
const MAX_UPLOAD: usize = 8 << 20;

/// Who is recorded.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Matches {
    /// Users (ids; login names are taken on `PUT` and stored as ids).
    #[serde(default)]
    pub users: Vec<String>,
    /// Numbers either party calls from or dials: exact, or a prefix
    /// ending in `*` (`+4420*`).
    #[serde(default)]
    pub numbers: Vec<String>,
}

impl Matches {
    fn has(&self, users: &[&str], numbers: &[&str]) -> bool {
        users
            .iter()
            .any(|u| !u.is_empty() && self.users.iter().any(|x| x == u))
            || numbers.iter().any(|n| {
                !n.is_empty()
                    && self.numbers.iter().any(|m| match m.strip_suffix('*') {
                        Some(prefix) => n.starts_with(prefix),
                        None => m == n,
                    })
            })
    }
}

/// What the announcement is.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Announcement {
    /// The library's `recording-on` ("This call is being recorded.").
    #[default]
    Standard,
    /// The tenant's upload.
    Custom,
}

/// The tenant's call recording policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Calls recorded from the answer to the end; nobody on the call
    /// stops them (a user may pause them, if `users_may_pause`).
    #[serde(default)]
    pub always: Matches,
    /// Users who may record their calls (the start code or the API), and
    /// numbers whose calls they may record.
    #[serde(default)]
    pub on_demand: Matches,
    #[serde(default)]
    pub announcement: Announcement,
    /// No announcement at all: only when the admin sets it; every such
    /// recording is audited as silent.
    #[serde(default)]
    pub silent: bool,
    /// Keys a user presses on a call to start or stop an on-demand
    /// recording: `*` and one digit.
    #[serde(default = "start_code")]
    pub start_code: String,
    /// Keys that pause or resume a recording (card numbers read out).
    #[serde(default = "pause_code")]
    pub pause_code: String,
    /// Whether a user on a recorded call may pause it (else nobody: the
    /// recording runs through).
    #[serde(default = "yes")]
    pub users_may_pause: bool,
    /// Longest pause, s (10-3600): then the recording resumes by itself
    /// (a pause is for a card number, not for the rest of the call).
    #[serde(default = "max_pause")]
    pub max_pause_seconds: u32,
    /// What `GET` adds (whether an announcement was uploaded): taken back
    /// by `PUT` and ignored.
    #[serde(default, skip_serializing)]
    pub custom_announcement: Option<bool>,
}

fn max_pause() -> u32 {
    300
}

fn start_code() -> String {
    "*1".into()
}

fn pause_code() -> String {
    "*2".into()
}

fn yes() -> bool {
    true
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            always: Matches::default(),
            on_demand: Matches::default(),
            announcement: Announcement::Standard,
            silent: false,
            start_code: start_code(),
            pause_code: pause_code(),
            users_may_pause: true,
            max_pause_seconds: max_pause(),
            custom_announcement: None,
        }
    }
}

/// How a call is to be recorded, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Always,
    OnDemand,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Always => "always",
            Mode::OnDemand => "on_demand",
        }
    }
}

impl Policy {
    /// The tenant's policy (the default records nothing).
    pub fn load() -> Result<Policy, Error> {
        Ok(kv::get_json(KEY)?.unwrap_or_default())
    }

    /// Whether a call between these users and numbers is recorded always.
    pub fn always(&self, users: &[&str], numbers: &[&str]) -> bool {
        self.always.has(users, numbers)
    }

    /// Whether `user` may start recording a call with these numbers.
    pub fn on_demand(&self, user: &str, numbers: &[&str]) -> bool {
        self.on_demand.has(&[user], &[]) || self.on_demand.has(&[], numbers)
    }

    /// What the parties hear when recording starts (none when silent).
    pub fn prompt(&self) -> Result<Option<switchboard_sdk::calls::Prompt>, Error> {
        use switchboard_sdk::calls::Prompt;
        if self.silent {
            return Ok(None);
        }
        Ok(Some(match self.announcement {
            Announcement::Custom => match kv::get(ANNOUNCEMENT)? {
                Some(blob) => Prompt::Blob(String::from_utf8_lossy(&blob).into_owned()),
                None => Prompt::Library("recording-on".into()),
            },
            Announcement::Standard => Prompt::Library("recording-on".into()),
        }))
    }
}

/// Tenant admins only.
pub fn admin(req: &Request) -> Result<(), ApiError> {
    if req.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("tenant admins only"))
    }
}

/// `GET /admin/recording`.
pub fn show(req: &Request, _: &Params) -> Result<Response, ApiError> {
    admin(req)?;
    let mut v = serde_json::to_value(Policy::load()?).unwrap_or_default();
    v["custom_announcement"] = json!(kv::get(ANNOUNCEMENT)?.is_some());
    Ok(http::json(200, &v))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_policy", message)
}

fn check_code(name: &str, code: &str) -> Result<(), ApiError> {
    let b = code.as_bytes();
    if b.len() == 2 && b[0] == b'*' && b[1].is_ascii_digit() {
        Ok(())
    } else {
        Err(invalid(format!("{name} is * and one digit, e.g. *1")))
    }
}

/// The list's users as ids (an unknown or inactive one is refused),
/// its numbers checked.
fn resolve(list: &mut Matches, name: &str) -> Result<(), ApiError> {
    if list.users.len() > MAX_ENTRIES || list.numbers.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "{name} has at most {MAX_ENTRIES} users and {MAX_ENTRIES} numbers"
        )));
    }
    let mut ids = Vec::new();
    for u in &list.users {
        if u.is_empty() || u.len() > 256 {
            return Err(invalid(format!("{name}: a user is an id or login name")));
        }
        match identity::lookup_user(u)? {
            Some(found) if found.active => ids.push(found.id),
            _ => {
                return Err(ApiError::bad_request(
                    "unknown_user",
                    format!("{name}: no active user {u:?} in this tenant"),
                ));
            }
        }
    }
    ids.sort();
    ids.dedup();
    list.users = ids;
    for n in &list.numbers {
        let digits = n.strip_suffix('*').unwrap_or(n);
        let ok = !digits.is_empty()
            && digits.len() <= 32
            && digits
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'+'));
        if !ok {
            return Err(invalid(format!(
                "{name}: {n:?} is not a number (digits, a leading +, a trailing * for a prefix)"
            )));
        }
    }
    list.numbers.sort();
    list.numbers.dedup();
    Ok(())
}

/// `PUT /admin/recording`: the whole policy, checked; audited with what
/// changed to silent or not.
pub fn set(req: &Request, _: &Params) -> Result<Response, ApiError> {
    admin(req)?;
    let mut policy: Policy = serde_json::from_slice(&req.body)
        .map_err(|e| invalid(format!("not a recording policy: {e}")))?;
    resolve(&mut policy.always, "always")?;
    resolve(&mut policy.on_demand, "on_demand")?;
    check_code("start_code", &policy.start_code)?;
    check_code("pause_code", &policy.pause_code)?;
    if policy.start_code == policy.pause_code {
        return Err(invalid("start_code and pause_code differ"));
    }
    if !(10..=3600).contains(&policy.max_pause_seconds) {
        return Err(invalid("max_pause_seconds is 10-3600"));
    }
    policy.custom_announcement = None;
    if policy.announcement == Announcement::Custom && kv::get(ANNOUNCEMENT)?.is_none() {
        return Err(ApiError::new(
            409,
            "no_announcement",
            "upload the announcement first (PUT /admin/recording/announcement)",
        ));
    }
    let before = Policy::load()?;
    kv::set_json(KEY, &policy)?;
    audit::success(
        "pbx.recording.policy",
        "recording-policy",
        json!({
            "always": policy.always,
            "on_demand": policy.on_demand,
            "silent": policy.silent,
            "was_silent": before.silent,
            "announcement": policy.announcement,
            "users_may_pause": policy.users_may_pause,
            "max_pause_seconds": policy.max_pause_seconds,
        }),
    )?;
    Ok(http::json(200, &policy))
}

/// `PUT /admin/recording/announcement` with a WAV body: checked,
/// converted to 8 kHz mono and kept; it replaces any earlier one.
pub fn upload(req: &Request, _: &Params) -> Result<Response, ApiError> {
    admin(req)?;
    if req.body.len() > MAX_UPLOAD {
        return Err(ApiError::new(
            413,
            "announcement_too_large",
            format!("an announcement file is at most {} MiB", MAX_UPLOAD >> 20),
        ));
    }
    let samples = audio::to_8k_mono(&req.body, MAX_ANNOUNCEMENT_MS)
        .map_err(|audio::Refused(why)| ApiError::bad_request("invalid_audio", why))?;
    let ms = samples.len() as u64 / 8;
    let blob = blobs::create(None, "prompt")?;
    blobs::append(&blob, &audio::wav_8k(&samples))?;
    if let Some(old) = kv::get(ANNOUNCEMENT)? {
        match blobs::delete(&String::from_utf8_lossy(&old)) {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    kv::set(ANNOUNCEMENT, blob.as_bytes())?;
    audit::success(
        "pbx.recording.announcement",
        "recording-policy",
        json!({ "ms": ms }),
    )?;
    Ok(http::json(200, &json!({ "ms": ms })))
}

/// `DELETE /admin/recording/announcement`: refused while the policy
/// says it.
pub fn remove(req: &Request, _: &Params) -> Result<Response, ApiError> {
    admin(req)?;
    if Policy::load()?.announcement == Announcement::Custom {
        return Err(ApiError::new(
            409,
            "announcement_in_use",
            "the policy says the uploaded announcement: set it to standard first",
        ));
    }
    let Some(old) = kv::get(ANNOUNCEMENT)? else {
        return Err(ApiError::not_found("no announcement was uploaded"));
    };
    match blobs::delete(&String::from_utf8_lossy(&old)) {
        Ok(_) | Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    kv::delete(ANNOUNCEMENT)?;
    audit::success(
        "pbx.recording.announcement.delete",
        "recording-policy",
        json!({}),
    )?;
    Ok(http::json(200, &json!({ "deleted": true })))
}
