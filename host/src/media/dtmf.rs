//! RFC 4733 telephone events: DTMF digits received from a leg and sent to
//! one. One event is one RTP timestamp: its start packet has the marker
//! bit, updates carry a growing duration, and the end packet (E bit) is
//! sent three times. A digit is reported once, on its first packet, so a
//! caller's key press reaches the plugin without waiting for the key's
//! release; retransmitted ends and duplicates are ignored.

/// Payload bytes of one event.
pub const PAYLOAD: usize = 4;
/// Events a leg may send or receive: the 16 DTMF keys and flash (16).
const MAX_EVENT: u8 = 16;
/// Samples per update packet (20 ms at 8 kHz).
const STEP: u16 = 160;

/// Why a telephone-event payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtmfError {
    /// Not four bytes, or an event outside 0–16.
    #[error("not an RFC 4733 DTMF event")]
    Malformed,
}

/// A key (RFC 4733 §3.2 event codes 0–16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u8);

impl Key {
    /// The key for a character `0-9 * # A-D`, or `!` for flash.
    pub fn from_char(c: char) -> Option<Key> {
        let code = match c {
            '0'..='9' => c as u8 - b'0',
            '*' => 10,
            '#' => 11,
            'A'..='D' => c as u8 - b'A' + 12,
            'a'..='d' => c as u8 - b'a' + 12,
            '!' => 16,
            _ => return None,
        };
        Some(Key(code))
    }

    /// The key's character.
    pub fn to_char(self) -> char {
        match self.0 {
            0..=9 => (b'0' + self.0) as char,
            10 => '*',
            11 => '#',
            12..=15 => (b'A' + self.0 - 12) as char,
            _ => '!',
        }
    }

    /// The event code.
    pub fn code(self) -> u8 {
        self.0
    }
}

/// One event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub key: Key,
    pub end: bool,
    /// Power in -dBm0, 0–63.
    pub volume: u8,
    /// Samples since the event began.
    pub duration: u16,
}

impl Event {
    /// Parses a telephone-event payload (trailing redundancy, RFC 4733
    /// §2.6, is not used here: its first event is the one in force).
    pub fn parse(payload: &[u8]) -> Result<Event, DtmfError> {
        let [code, flags, d0, d1, ..] = *payload else {
            return Err(DtmfError::Malformed);
        };
        if code > MAX_EVENT {
            return Err(DtmfError::Malformed);
        }
        Ok(Event {
            key: Key(code),
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// The payload bytes.
    pub fn to_bytes(self) -> [u8; PAYLOAD] {
        let d = self.duration.to_be_bytes();
        [
            self.key.0,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// Turns received events into key presses, once each.
#[derive(Debug, Default, Clone)]
pub struct Detector {
    /// RTP timestamp of the last event reported.
    last: Option<u32>,
}

impl Detector {
    /// The key pressed, if this packet (RTP timestamp `ts`) starts a new
    /// event.
    pub fn feed(&mut self, ts: u32, payload: &[u8]) -> Result<Option<Key>, DtmfError> {
        let event = Event::parse(payload)?;
        if self.last == Some(ts) {
            return Ok(None);
        }
        self.last = Some(ts);
        Ok(Some(event.key))
    }
}

/// The packets that send one key press: (marker, timestamp offset is 0 for
/// all — one event, one timestamp — and the payload). `duration_ms` is
/// rounded to 20 ms steps, at least one.
pub fn press(key: Key, duration_ms: u32, volume: u8) -> Vec<(bool, [u8; PAYLOAD])> {
    let steps = (duration_ms / 20).clamp(1, 400) as u16;
    let mut out = Vec::with_capacity(usize::from(steps) + 3);
    for n in 1..=steps {
        let event = Event {
            key,
            end: false,
            volume,
            duration: n * STEP,
        };
        out.push((n == 1, event.to_bytes()));
    }
    let end = Event {
        key,
        end: true,
        volume,
        duration: steps * STEP,
    };
    // RFC 4733 §2.5.1.4: the end packet three times.
    for _ in 0..3 {
        out.push((false, end.to_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_codes_and_back() {
        for (c, code) in [
            ('0', 0),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('d', 15),
            ('!', 16),
        ] {
            let k = Key::from_char(c).unwrap();
            assert_eq!(k.code(), code);
            assert_eq!(k.to_char(), c.to_ascii_uppercase());
        }
        assert_eq!(Key::from_char('x'), None);
    }

    #[test]
    fn a_press_is_detected_once_whatever_the_repeats() {
        let mut d = Detector::default();
        let packets = press(Key::from_char('5').unwrap(), 100, 10);
        assert_eq!(packets.len(), 5 + 3);
        assert!(packets[0].0 && !packets[1].0, "marker on the first only");
        let mut got = Vec::new();
        for (_, payload) in &packets {
            if let Some(k) = d.feed(4000, payload).unwrap() {
                got.push(k.to_char());
            }
        }
        // Duplicated and reordered delivery of a second press.
        for (_, payload) in press(Key::from_char('#').unwrap(), 40, 10)
            .iter()
            .rev()
            .chain(&press(Key::from_char('#').unwrap(), 40, 10))
        {
            if let Some(k) = d.feed(4800, payload).unwrap() {
                got.push(k.to_char());
            }
        }
        assert_eq!(got, vec!['5', '#']);
        let last = Event::parse(&packets[7].1).unwrap();
        assert!(last.end);
        assert_eq!((last.duration, last.volume), (800, 10));
    }

    #[test]
    fn malformed_events_are_refused() {
        let mut d = Detector::default();
        assert_eq!(d.feed(1, &[1, 2, 3]), Err(DtmfError::Malformed));
        assert_eq!(d.feed(1, &[17, 0, 0, 160]), Err(DtmfError::Malformed));
        assert_eq!(d.feed(1, &[255, 0, 0, 160]), Err(DtmfError::Malformed));
        // Redundant trailing bytes are tolerated.
        assert_eq!(d.feed(1, &[3, 0x80, 0, 160, 9, 9]).unwrap(), Some(Key(3)));
    }
}
