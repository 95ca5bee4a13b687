//! Call records (CDRs): one per leg, written when the leg ends, kept in
//! the tenant's store under retention class `cdr` (400 days by default),
//! read by the tenant's admins (`Runtime::call_records`) and counted for
//! operators, who see no numbers (SPEC I8).

use serde::{Deserialize, Serialize};

use crate::call::legs::{Direction, LegSnapshot};
use crate::media::engine::LegStats;

/// One leg's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub leg: String,
    pub plugin: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub caller: String,
    pub callee: String,
    pub started_ms: u64,
    pub answered_ms: Option<u64>,
    pub ended_ms: u64,
    /// From answer to end; 0 when never answered.
    pub talk_ms: u64,
    /// Why it ended (`normal`, `busy`, `no-answer`, `failed`, …).
    pub cause: String,
    /// `pcmu`, `pcma`, or empty when it never had media.
    pub codec: String,
    /// SRTP on the leg.
    pub secure: bool,
    /// What the media engine measured, when the leg had media.
    pub media: Option<MediaFigures>,
    /// The trunk the leg came in or went out over, if any.
    #[serde(default)]
    pub trunk: Option<String>,
    /// The account code an outbound leg was billed to, if any.
    #[serde(default)]
    pub account_code: Option<String>,
    /// The user the leg is for: whose phone placed an inbound leg, or
    /// for whom a plugin placed an outbound one (whose restriction
    /// allowed it).
    #[serde(default)]
    pub user: Option<String>,
    /// The first leg it was bridged with, if any: the other half of the
    /// call (records of one call name each other).
    #[serde(default)]
    pub bridged_with: Option<String>,
    /// The first conference room the leg was in: the room's name and the
    /// id of that meeting of it (`r1~3f9a0c1d2e4b5a69`), the same in the
    /// records of every leg that was in the room with it (a room empties
    /// and is met again under a new id).
    #[serde(default)]
    pub room: Option<String>,
}

/// A leg's media figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaFigures {
    pub sent_packets: u32,
    pub received_packets: u32,
    /// RTP payload bytes sent and received (authentic packets).
    #[serde(default)]
    pub sent_bytes: u64,
    #[serde(default)]
    pub received_bytes: u64,
    pub lost_packets: u32,
    pub jitter_ms: u32,
    /// What the far end reported of our stream (RTCP), if it did.
    pub peer_fraction_lost: Option<u8>,
    pub peer_jitter_ms: Option<u32>,
}

impl CallRecord {
    /// The record of a leg that ended now with `cause`.
    pub fn of(plugin: &str, s: &LegSnapshot, cause: &str, ended_ms: u64) -> CallRecord {
        CallRecord {
            leg: s.id.clone(),
            plugin: plugin.to_string(),
            direction: match s.direction {
                Direction::Inbound => "inbound",
                Direction::Outbound => "outbound",
            }
            .to_string(),
            caller: s.caller.clone(),
            callee: s.callee.clone(),
            started_ms: s.started_ms,
            answered_ms: s.answered_ms,
            ended_ms,
            talk_ms: s.answered_ms.map_or(0, |a| ended_ms.saturating_sub(a)),
            cause: cause.to_string(),
            codec: s.codec.clone(),
            secure: s.secure,
            media: None,
            trunk: None,
            account_code: None,
            user: s.user.clone(),
            bridged_with: None,
            room: None,
        }
    }

    /// A call out of the tenant (to an E.164 number; emergency numbers
    /// are dialled as digits and not counted).
    pub fn is_outside(&self) -> bool {
        self.direction == "outbound" && self.callee.starts_with('+')
    }

    /// Adds the media engine's figures.
    pub fn with_stats(mut self, st: &LegStats) -> CallRecord {
        self.media = Some(MediaFigures {
            sent_packets: st.sent_packets,
            received_packets: st.received,
            sent_bytes: u64::from(st.sent_octets),
            received_bytes: st.received_octets,
            lost_packets: st.expected.saturating_sub(st.received),
            jitter_ms: st.jitter_ms,
            peer_fraction_lost: st.peer_fraction_lost,
            peer_jitter_ms: st.peer_jitter_ms,
        });
        self
    }
}

/// The CSV header of [`CallRecord::csv_row`].
pub const CSV_HEADER: &str = "leg,plugin,direction,caller,callee,started_ms,answered_ms,ended_ms,talk_ms,cause,codec,secure,sent_packets,received_packets,lost_packets,jitter_ms,trunk,account_code,user,sent_bytes,received_bytes,peer_fraction_lost,peer_jitter_ms,bridged_with,room";

impl CallRecord {
    /// The record as one CSV row (RFC 4180 quoting; cells that a
    /// spreadsheet would run as a formula are prefixed with `'`).
    pub fn csv_row(&self) -> String {
        let m = self.media.as_ref();
        let cells = [
            self.leg.clone(),
            self.plugin.clone(),
            self.direction.clone(),
            self.caller.clone(),
            self.callee.clone(),
            self.started_ms.to_string(),
            self.answered_ms.map_or(String::new(), |a| a.to_string()),
            self.ended_ms.to_string(),
            self.talk_ms.to_string(),
            self.cause.clone(),
            self.codec.clone(),
            self.secure.to_string(),
            m.map_or(String::new(), |m| m.sent_packets.to_string()),
            m.map_or(String::new(), |m| m.received_packets.to_string()),
            m.map_or(String::new(), |m| m.lost_packets.to_string()),
            m.map_or(String::new(), |m| m.jitter_ms.to_string()),
            self.trunk.clone().unwrap_or_default(),
            self.account_code.clone().unwrap_or_default(),
            self.user.clone().unwrap_or_default(),
            m.map_or(String::new(), |m| m.sent_bytes.to_string()),
            m.map_or(String::new(), |m| m.received_bytes.to_string()),
            m.and_then(|m| m.peer_fraction_lost)
                .map_or(String::new(), |f| f.to_string()),
            m.and_then(|m| m.peer_jitter_ms)
                .map_or(String::new(), |j| j.to_string()),
            self.bridged_with.clone().unwrap_or_default(),
            self.room.clone().unwrap_or_default(),
        ];
        cells
            .iter()
            .map(|c| csv_cell(c))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn csv_cell(c: &str) -> String {
    // CSV injection: a leading = + - @ (or tab, CR) would be a formula.
    let c = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) && c.parse::<f64>().is_err() {
        format!("'{c}")
    } else {
        c.to_string()
    };
    if c.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_never_formulas() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("+442079460018"), "+442079460018", "a number stays");
        assert_eq!(csv_cell("@sum"), "'@sum");
    }
}
