//! What the chat plugin stores, and where. Every key lives in the plugin's
//! namespace of one tenant (the host keeps tenants and plugins apart):
//!
//! | key                              | value                                |
//! |----------------------------------|--------------------------------------|
//! | `c/{cid}`                        | [`Conversation`]                     |
//! | `cm/{cid}/{user}`                | [`Member`]                           |
//! | `uc/{user}/{cid}`                | empty: the user's conversations      |
//! | `dp/{a}/{b}`                     | cid of the direct conversation a<b   |
//! | `ow/{plugin}/{resource}`         | cid of a plugin-owned conversation   |
//! | `m/{cid}/{!seq}`                 | [`Message`] (newest first)           |
//! | `h/{cid}/{seq}/{n}`              | [`Revision`]: an earlier text        |
//! | `a/{cid}/{aid}`                  | [`Attachment`]                       |
//! | `i/{cid}/{tag}/{!seq}`           | empty: search index (tag: keyed hash of a word's first letters) |
//! | `ci/{cid}/{user}/{client hash}`  | seq of an idempotent post            |
//! | `p/{user}`                       | [`Presence`]                         |
//! | `up/{user}/{aid}`                | cid of an upload not yet posted      |
//! | `pb`                             | boot id of the running host          |
//!
//! `{!seq}` is `u64::MAX - seq` in 16 hex digits, so a forward scan lists
//! the newest message first; `{seq}` and `{n}` are fixed-width hex too.
//! Key names are not encrypted at rest (values are), so keys hold only
//! random ids, user ids and hashes — never message text, names or titles.
//!
//! A leaf: every area builds its keys here; it uses no other module.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Direct,
    Group,
    /// Created, and its members managed, by another plugin (e.g. a meeting
    /// space's conversation owned by `meetings`).
    Owned,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Conversation {
    pub id: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub created_by: String,
    pub created_at: u64,
    /// Seq of the newest message (0: none yet).
    pub last_seq: u64,
    pub last_at: u64,
    pub members: u32,
    /// The owning plugin and its resource id, for `Owned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Set when deletion started; the purge timer removes the rest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Member {
    pub user: String,
    pub joined_at: u64,
    pub added_by: String,
    /// Highest seq the member has read.
    pub last_read: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Quote {
    pub seq: u64,
    pub sender: String,
    pub sent_at: u64,
    /// A copy taken when the reply was posted: it survives the original
    /// being edited or deleted (SPEC C4).
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AttachmentRef {
    pub id: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Deletion {
    pub at: u64,
    pub by: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Message {
    pub conversation: String,
    pub seq: u64,
    pub sender: String,
    pub sent_at: u64,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Quote>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    #[serde(default)]
    pub edits: u32,
    /// A tombstone: text, history and attachments are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Deletion>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Revision {
    pub text: String,
    /// When this text was replaced.
    pub replaced_at: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Attachment {
    pub id: String,
    pub conversation: String,
    pub uploader: String,
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub blob: String,
    pub created_at: u64,
    /// The message it belongs to; `None` while it is still being uploaded
    /// or waits to be posted (visible to its uploader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<u64>,
}

impl Attachment {
    pub fn reference(&self) -> AttachmentRef {
        AttachmentRef {
            id: self.id.clone(),
            name: self.name.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Available,
    Away,
    Busy,
    /// Only ever reported, never set: no event stream is connected.
    Offline,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Presence {
    /// What the user chose.
    pub status: Status,
    /// Whether a stream was connected, as of host process `boot`.
    pub online: bool,
    pub boot: u64,
    pub since: u64,
}

pub fn conversation(cid: &str) -> String {
    format!("c/{cid}")
}

pub fn member(cid: &str, user: &str) -> String {
    format!("cm/{cid}/{user}")
}

pub fn members_prefix(cid: &str) -> String {
    format!("cm/{cid}/")
}

pub fn user_conversation(user: &str, cid: &str) -> String {
    format!("uc/{user}/{cid}")
}

pub fn direct_pair(a: &str, b: &str) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    format!("dp/{lo}/{hi}")
}

pub fn owned(plugin: &str, resource: &str) -> String {
    format!("ow/{plugin}/{resource}")
}

fn inv(seq: u64) -> String {
    format!("{:016x}", u64::MAX - seq)
}

pub fn message(cid: &str, seq: u64) -> String {
    format!("m/{cid}/{}", inv(seq))
}

pub fn messages_prefix(cid: &str) -> String {
    format!("m/{cid}/")
}

pub fn revision(cid: &str, seq: u64, n: u32) -> String {
    format!("h/{cid}/{seq:016x}/{n:08x}")
}

pub fn revisions_prefix(cid: &str, seq: u64) -> String {
    format!("h/{cid}/{seq:016x}/")
}

pub fn attachment(cid: &str, aid: &str) -> String {
    format!("a/{cid}/{aid}")
}

pub fn index(cid: &str, tag: &str, seq: u64) -> String {
    format!("i/{cid}/{tag}/{}", inv(seq))
}

pub fn index_prefix(cid: &str, tag: &str) -> String {
    format!("i/{cid}/{tag}/")
}

/// The seq at the end of an index key.
pub fn index_seq(key: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(key.get(key.len().checked_sub(16)?..)?).ok()?;
    u64::from_str_radix(hex, 16).ok().map(|v| u64::MAX - v)
}

pub fn client_id(cid: &str, user: &str, client: &str) -> String {
    format!("ci/{cid}/{user}/{client}")
}

pub fn pending(user: &str, aid: &str) -> String {
    format!("up/{user}/{aid}")
}

pub fn pending_prefix(user: &str) -> String {
    format!("up/{user}/")
}

pub fn presence(user: &str) -> String {
    format!("p/{user}")
}

pub const BOOT: &str = "pb";

/// Every per-conversation prefix the purge removes, in order.
pub fn purge_prefixes(cid: &str) -> [String; 6] {
    [
        format!("a/{cid}/"),
        format!("m/{cid}/"),
        format!("h/{cid}/"),
        format!("i/{cid}/"),
        format!("ci/{cid}/"),
        format!("cm/{cid}/"),
    ]
}

/// The event group of a conversation's members.
pub fn group(cid: &str) -> String {
    format!("c.{cid}")
}

/// The event group of the users watching `user`'s presence.
pub fn watchers(user: &str) -> String {
    format!("pw.{user}")
}
