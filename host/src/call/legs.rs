//! Call legs as a plugin sees them, apart from any WIT version: the
//! events `on-call` receives and the snapshot `get-leg` answers. The
//! telephony service produces them; the kernel's adapters convert them
//! for the plugin API version they serve.

/// Where a leg is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// Inbound, waiting for `answer`.
    Offered,
    /// Outbound, not answered yet.
    Ringing,
    Answered,
    Ended,
}

/// Who started the leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Why a leg ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Normal,
    Busy,
    NoAnswer,
    Rejected,
    /// The plugin did not take the leg's events; the host ended it.
    Failed,
    /// The dialing policy refused the number.
    Restricted,
    Unavailable,
    /// A host limit on the leg's lifetime or idleness.
    Timeout,
}

impl Cause {
    /// The name in call records and logs.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Normal => "normal",
            Cause::Busy => "busy",
            Cause::NoAnswer => "no-answer",
            Cause::Rejected => "rejected",
            Cause::Failed => "failed",
            Cause::Restricted => "restricted",
            Cause::Unavailable => "unavailable",
            Cause::Timeout => "timeout",
        }
    }
}

/// How a play or a collect ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpEnd {
    Done,
    Stopped,
    Barged,
    Timeout,
    Hangup,
}

/// A tone a plugin may play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToneName {
    Ringback,
    Busy,
    Silence,
}

/// One item of a play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Tone {
        tone: ToneName,
        ms: u32,
    },
    Digits(String),
    /// A prompt of the built-in library, by name.
    Library(String),
    /// A blob of the plugin by id, as the plugin names it (the `calls`
    /// capability reads it into `Audio` when the play is issued).
    Blob(String),
    /// G.711 µ-law audio read from a plugin's blob when the play was
    /// issued.
    Audio(std::sync::Arc<[u8]>),
}

/// What a collect waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectOpts {
    pub max_digits: u8,
    pub terminators: String,
    pub first_ms: u32,
    pub between_ms: u32,
}

/// What a recording asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOpts {
    /// The blob's owner (their quota), if any.
    pub owner: Option<String>,
    /// The blob's retention class.
    pub class: String,
    pub max_ms: u32,
    /// 0: no end on silence.
    pub silence_ms: u32,
    pub terminators: String,
    /// 0: no `RecordingChunk` events; else about this much audio per one.
    pub chunk_ms: u32,
}

/// Why a call was handed to another plugin on a user's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DivertReason {
    Always,
    Busy,
    NoAnswer,
}

/// Whose call a handed-off leg was, and why it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diversion {
    /// The user (id) the call was for.
    pub user: String,
    pub reason: DivertReason,
}

/// A leg as it is at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegSnapshot {
    pub id: String,
    pub state: LegState,
    pub direction: Direction,
    pub caller: String,
    pub callee: String,
    /// `pcmu`, `pcma`, or empty before media is agreed.
    pub codec: String,
    pub secure: bool,
    pub bridged_with: Option<String>,
    /// The conference room the leg is in.
    pub room: Option<String>,
    /// The user whose phone placed this inbound leg.
    pub user: Option<String>,
    /// The far end has put the leg on hold.
    pub on_hold: bool,
    /// Whose call a leg handed to this plugin was, and why.
    pub diverted: Option<Diversion>,
    pub started_ms: u64,
    pub answered_ms: Option<u64>,
}

/// What happened on a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEventKind {
    /// A new inbound leg, with its route's arguments.
    Offered(Vec<u8>),
    Ringing,
    Answered,
    Digit(char),
    Played {
        op: String,
        end: OpEnd,
    },
    Collected {
        op: String,
        digits: String,
        end: OpEnd,
    },
    /// A recording ended; `blob` (the plugin's) holds it, `ms` long.
    Recorded {
        op: String,
        blob: String,
        ms: u64,
        end: OpEnd,
    },
    /// More of a running recording is stored: `len` bytes of `blob` from
    /// `offset`.
    RecordingChunk {
        op: String,
        blob: String,
        offset: u64,
        len: u64,
    },
    Bridged(String),
    Unbridged,
    Joined(String),
    Left(String),
    /// The leg's phone asks to transfer its call to this number (REFER).
    Transfer(String),
    /// The leg's phone asks to connect this leg's other party with the
    /// other party of its other call (this leg id): REFER with Replaces.
    AttendedTransfer(String),
    Held,
    Resumed,
    /// The leg went to another plugin (the number it was handed to).
    HandedOff(String),
    Ended(Cause),
}

/// One event for a plugin's `on-call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEvent {
    pub leg: String,
    /// 1, 2, 3 … per leg; a re-delivery keeps its number.
    pub seq: u64,
    pub at_ms: u64,
    /// The leg's client state when the event is delivered.
    pub state: Vec<u8>,
    pub snapshot: LegSnapshot,
    pub kind: CallEventKind,
}
