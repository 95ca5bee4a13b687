//! What is stored, under which keys, and what every change tells the
//! owner: the message-waiting counts on their phones and an event on
//! their web stream.
//!
//! | key | value |
//! |---|---|
//! | `box/{user}` | [`Mailbox`]: number, phone, PIN hash, greetings, lockout |
//! | `num/{number}` | the user whose mailbox number it is |
//! | `msg/{user}/{id}` | [`Message`]; its audio is the blob it names |
//!
//! Audio lives in this plugin's blobs: messages in retention class
//! `voicemail`, greetings in `voicemail-greeting`, both counted against
//! the owner's quota. The host encrypts every blob under a key of its own
//! and deleting the blob destroys that key (shredding, SPEC D2).

use serde::{Deserialize, Serialize};
use switchboard_sdk::calls;
use switchboard_sdk::{Error, blobs, events, identity, kv};

/// Retention class of messages.
pub const MESSAGE_CLASS: &str = "voicemail";
/// Retention class of greetings (a tenant's message retention does not
/// take them).
pub const GREETING_CLASS: &str = "voicemail-greeting";
/// Longest mailbox number.
pub const MAX_NUMBER: usize = 10;

/// A user's mailbox settings. Every user has one (the default until
/// something is set): messages can be left for any active user.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Mailbox {
    /// The number callers key in at the voicemail number (usually the
    /// user's extension); set by a tenant admin.
    #[serde(default)]
    pub number: Option<String>,
    /// The user's own phone number (E.164 or digits), which a PIN may
    /// not be made of.
    #[serde(default)]
    pub phone: Option<String>,
    /// HMAC-SHA-256 of the PIN under this plugin's `pin` key, hex.
    #[serde(default)]
    pub pin: Option<String>,
    #[serde(default)]
    pub greetings: Greetings,
    /// Wrong PINs since the last right one or unlock.
    #[serde(default)]
    pub failures: u32,
    /// Lockouts since the last right PIN or unlock (each one doubles the
    /// next).
    #[serde(default)]
    pub lockouts: u32,
    /// No PIN is taken before this (ms since the epoch).
    #[serde(default)]
    pub locked_until_ms: u64,
}

/// A recorded or uploaded greeting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Greeting {
    pub blob: String,
    pub ms: u64,
    pub set_ms: u64,
    /// A temporary greeting's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Greetings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<Greeting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<Greeting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Greeting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporary: Option<Greeting>,
}

/// The four greetings (SPEC V2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GreetingKind {
    Unavailable,
    Busy,
    Name,
    Temporary,
}

impl GreetingKind {
    pub fn parse(s: &str) -> Option<GreetingKind> {
        match s {
            "unavailable" => Some(GreetingKind::Unavailable),
            "busy" => Some(GreetingKind::Busy),
            "name" => Some(GreetingKind::Name),
            "temporary" => Some(GreetingKind::Temporary),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GreetingKind::Unavailable => "unavailable",
            GreetingKind::Busy => "busy",
            GreetingKind::Name => "name",
            GreetingKind::Temporary => "temporary",
        }
    }
}

impl Greetings {
    pub fn slot(&mut self, kind: GreetingKind) -> &mut Option<Greeting> {
        match kind {
            GreetingKind::Unavailable => &mut self.unavailable,
            GreetingKind::Busy => &mut self.busy,
            GreetingKind::Name => &mut self.name,
            GreetingKind::Temporary => &mut self.temporary,
        }
    }

    /// The temporary greeting while it has not expired.
    pub fn temporary_at(&self, now_ms: u64) -> Option<&Greeting> {
        self.temporary
            .as_ref()
            .filter(|g| g.until_ms.is_none_or(|u| now_ms < u))
    }
}

/// A message's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Folder {
    New,
    Saved,
}

impl Folder {
    pub fn parse(s: &str) -> Option<Folder> {
        match s {
            "new" => Some(Folder::New),
            "saved" => Some(Folder::Saved),
            _ => None,
        }
    }
}

/// A message left in a mailbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    /// The blob holding its audio (8 kHz 16-bit mono WAV).
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub blob: String,
    pub folder: Folder,
    pub heard: bool,
    pub urgent: bool,
    /// Who called, as the call showed it (a number or a device name).
    pub from: String,
    /// The user whose registered phone called, as the host authenticated
    /// it (none for callers from outside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_user: Option<String>,
    /// When it was left, ms since the epoch.
    pub at_ms: u64,
    /// Its length, ms.
    pub ms: u64,
    /// The mailbox owner (user id) who forwarded it here, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_by: Option<String>,
}

/// Counts of a mailbox's messages.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// In the new folder.
    pub new: u32,
    /// In the saved folder.
    pub saved: u32,
    /// Not heard yet (the phones' "new" count).
    pub unheard: u32,
    /// Heard (the phones' "old" count).
    pub heard: u32,
}

fn box_key(user: &str) -> String {
    format!("box/{user}")
}

fn number_key(number: &str) -> String {
    format!("num/{number}")
}

fn message_key(user: &str, id: &str) -> String {
    format!("msg/{user}/{id}")
}

/// `user`'s mailbox (the default when nothing was set).
pub fn mailbox(user: &str) -> Result<Mailbox, Error> {
    Ok(kv::get_json(box_key(user))?.unwrap_or_default())
}

pub fn save_mailbox(user: &str, mailbox: &Mailbox) -> Result<(), Error> {
    kv::set_json(box_key(user), mailbox)
}

/// Every mailbox something was set for, with its user.
pub fn mailboxes(max: usize) -> Result<Vec<(String, Mailbox)>, Error> {
    let mut out = Vec::new();
    for e in kv::scan_all("box/", max)? {
        let user = String::from_utf8_lossy(&e.key["box/".len()..]).into_owned();
        if let Ok(m) = serde_json::from_slice(&e.value) {
            out.push((user, m));
        }
    }
    Ok(out)
}

/// The user whose mailbox number `number` is.
pub fn user_of_number(number: &str) -> Result<Option<String>, Error> {
    if number.is_empty() || number.len() > MAX_NUMBER || !number.bytes().all(|b| b.is_ascii_digit())
    {
        return Ok(None);
    }
    let Some(user) = kv::get(number_key(number))? else {
        return Ok(None);
    };
    let user = String::from_utf8_lossy(&user).into_owned();
    // A disabled user's mailbox takes no sign-in and no forwards.
    Ok(identity::lookup_user(&user)?
        .filter(|u| u.active && u.id == user)
        .map(|u| u.id))
}

/// Gives `user`'s mailbox the number `number` (or none), keeping the index
/// in step. The caller checked the number is free.
pub fn set_number(user: &str, mailbox: &mut Mailbox, number: Option<String>) -> Result<(), Error> {
    if let Some(old) = mailbox.number.take() {
        kv::delete(number_key(&old))?;
    }
    if let Some(n) = &number {
        kv::set(number_key(n), user)?;
    }
    mailbox.number = number;
    Ok(())
}

/// `user`'s messages in listening order: the new folder before the saved
/// one, urgent first within each, then oldest first.
pub fn messages(user: &str) -> Result<Vec<Message>, Error> {
    let mut out: Vec<Message> = kv::scan_all(format!("msg/{user}/"), 10_000)?
        .into_iter()
        .filter_map(|e| serde_json::from_slice(&e.value).ok())
        .collect();
    out.sort_by(|a, b| {
        (a.folder == Folder::Saved, !a.urgent, a.at_ms, &a.id).cmp(&(
            b.folder == Folder::Saved,
            !b.urgent,
            b.at_ms,
            &b.id,
        ))
    });
    Ok(out)
}

pub fn message(user: &str, id: &str) -> Result<Option<Message>, Error> {
    kv::get_json(message_key(user, id))
}

pub fn save_message(user: &str, message: &Message) -> Result<(), Error> {
    kv::set_json(message_key(user, &message.id), message)
}

/// Deletes a message and shreds its audio.
pub fn remove_message(user: &str, message: &Message) -> Result<(), Error> {
    if !message.blob.is_empty() {
        match blobs::delete(&message.blob) {
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    kv::delete(message_key(user, &message.id))?;
    Ok(())
}

pub fn counts(messages: &[Message]) -> Counts {
    let mut c = Counts::default();
    for m in messages {
        match m.folder {
            Folder::New => c.new += 1,
            Folder::Saved => c.saved += 1,
        }
        if m.heard {
            c.heard += 1;
        } else {
            c.unheard += 1;
        }
    }
    c
}

/// After any change to `user`'s messages: their phones' message-waiting
/// counts (never negative: counted afresh) and `voicemail.changed` on
/// their stream.
pub fn changed(user: &str) -> Result<Counts, Error> {
    let c = counts(&messages(user)?);
    calls::set_mwi(user, c.unheard, c.heard)?;
    events::publish_json(&[user.to_string()], "voicemail.changed", &c)?;
    Ok(c)
}

/// A new message in `user`'s mailbox: stored, counted, and announced as
/// `voicemail.message` (its metadata, never its audio).
pub fn deliver(user: &str, message: &Message) -> Result<Counts, Error> {
    save_message(user, message)?;
    events::publish_json(&[user.to_string()], "voicemail.message", &public(message))?;
    changed(user)
}

/// A message as the API and events show it (without its blob).
pub fn public(m: &Message) -> Message {
    Message {
        blob: String::new(),
        ..m.clone()
    }
}

/// A new message id: 32 hex digits.
pub fn new_id() -> String {
    switchboard_sdk::crypto::random_id()
}
