//! What the recording plugin stores, and where (keys hold only ids and
//! hashes; values are encrypted at rest by the host):
//!
//! | key                         | value                                   |
//! |-----------------------------|-----------------------------------------|
//! | `r/{rid}`                   | [`Recording`]                           |
//! | `c/{rid}/{seq:016x}`        | [`Chunk`]: where a chunk lies, its hash and the chain after it |
//! | `u/{user}/{rid}`            | empty: recordings a user may see        |
//! | `s/{kind}/{source}/{rid}`   | empty: recordings of a source           |
//! | `a/{kind}/{source}`         | rid of the source's running recording   |
//! | `b/{blob}`                  | rid whose media the blob holds          |
//!
//! A leaf: every area builds its keys here; it uses no other module.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A meeting's live session.
    Meeting,
    Call,
    Screen,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Meeting => "meeting",
            SourceKind::Call => "call",
            SourceKind::Screen => "screen",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct Source {
    pub kind: SourceKind,
    pub id: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Recording,
    Paused,
    Stopped,
    /// The media is gone (deleted, or expired by retention): crypto-shredded.
    Shredded,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Pause {
    /// Milliseconds since the epoch.
    pub from: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// Chunks accepted before the pause.
    pub after_chunk: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Seal {
    /// The signed statement, canonical JSON of [`SealPayload`].
    pub payload: String,
    /// Ed25519 signature over `payload`, hex.
    pub signature: String,
    /// The public key (hex) of the tenant's recording seal key.
    pub public_key: String,
}

/// What a seal states, in this field order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SealPayload {
    pub v: u32,
    pub tenant: String,
    pub recording: String,
    pub source: Source,
    pub initiator: String,
    pub content_type: String,
    pub started_at: u64,
    pub stopped_at: u64,
    pub chunks: u64,
    pub bytes: u64,
    /// The chain head after the last chunk, hex.
    pub head: String,
    /// (from, to, chunks accepted before the pause).
    pub pauses: Vec<(u64, u64, u64)>,
    /// From v2: the plugin that started the recording (`meetings`, `pbx`)
    /// and, for a call, the tenant policy it was recorded under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_plugin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Recording {
    pub id: String,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Who started it; owns it (its bytes count against their quota) and
    /// alone may pause, resume and stop it.
    pub initiator: String,
    /// The plugin that started it for its user (e.g. `meetings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_plugin: Option<String>,
    /// For a call recorded by the calls plugin (`pbx`): the tenant policy
    /// it was started under, `always` or `on_demand`. Only that plugin
    /// pauses, resumes, stops and feeds a call recording; one recorded
    /// `always` is deleted by tenant admins only, never by its initiator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub participants: Vec<String>,
    pub content_type: String,
    pub state: State,
    pub started_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<u64>,
    pub pauses: Vec<Pause>,
    pub chunks: u64,
    pub bytes: u64,
    /// Chain head after the last accepted chunk, hex.
    pub head: String,
    pub blob: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Seal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shredded: Option<Shredded>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Shredded {
    pub at: u64,
    /// `deleted` or `retention`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub seq: u64,
    pub offset: u64,
    pub len: u64,
    /// SHA-256 of the chunk's bytes, hex.
    pub hash: String,
    /// The chain head after this chunk, hex.
    pub chain: String,
}

pub fn recording(rid: &str) -> String {
    format!("r/{rid}")
}

pub const RECORDINGS: &str = "r/";

pub fn chunk(rid: &str, seq: u64) -> String {
    format!("c/{rid}/{seq:016x}")
}

pub fn chunks_prefix(rid: &str) -> String {
    format!("c/{rid}/")
}

pub fn user_index(user: &str, rid: &str) -> String {
    format!("u/{user}/{rid}")
}

pub fn user_prefix(user: &str) -> String {
    format!("u/{user}/")
}

pub fn source_index(source: &Source, rid: &str) -> String {
    format!("s/{}/{}/{rid}", source.kind.as_str(), source.id)
}

pub fn source_prefix(source: &Source) -> String {
    format!("s/{}/{}/", source.kind.as_str(), source.id)
}

pub fn active(namespace: &str, source: &Source) -> String {
    format!("a/{namespace}/{}/{}", source.kind.as_str(), source.id)
}

pub fn blob(blob: &str) -> String {
    format!("b/{blob}")
}
