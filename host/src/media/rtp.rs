//! RTP (RFC 3550) packets as the media engine reads and writes them, and
//! the re-origination of a stream: the host sends every leg its own SSRC,
//! sequence numbers and timestamps, whatever the other leg sent (a B2BUA
//! never passes a peer's numbering through, so a peer cannot steer the
//! other side's jitter buffer or replay window).
//!
//! Parsing checks the version, the CSRC list, the extension and padding
//! against the packet's length and hands out the payload as a slice; it
//! never allocates. Building writes a 12-byte header (no CSRCs, no
//! extension) before a payload.

/// Bytes of a header without CSRCs or extension.
pub const HEADER: usize = 12;
/// Largest packet read or written (an Ethernet MTU).
pub const MAX_PACKET: usize = 1500;

/// Why bytes are not an RTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than its header says, or longer than [`MAX_PACKET`].
    #[error("RTP packet of {0} bytes does not fit its header or the MTU")]
    Length(usize),
    /// Not version 2, or bad padding.
    #[error("not an RTP version 2 packet")]
    Malformed,
}

impl RtpError {
    /// A stable code for counters.
    pub fn code(&self) -> &'static str {
        "rtp_malformed"
    }
}

/// A parsed RTP packet borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

/// Whether the first bytes look like RTCP rather than RTP (RFC 5761 §4:
/// payload types 64–95 with the marker bit are RTCP's 192–223).
pub fn is_rtcp(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && (192..=223).contains(&bytes[1])
}

/// Parses an RTP packet.
pub fn parse(bytes: &[u8]) -> Result<Packet<'_>, RtpError> {
    let len = bytes.len();
    if !(HEADER..=MAX_PACKET).contains(&len) {
        return Err(RtpError::Length(len));
    }
    if bytes[0] >> 6 != 2 {
        return Err(RtpError::Malformed);
    }
    let mut start = HEADER + 4 * usize::from(bytes[0] & 0x0f);
    if bytes[0] & 0x10 != 0 {
        let ext = bytes
            .get(start + 2..start + 4)
            .ok_or(RtpError::Length(len))?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = len;
    if bytes[0] & 0x20 != 0 {
        let pad = usize::from(bytes[len - 1]);
        if pad == 0 || pad > len {
            return Err(RtpError::Malformed);
        }
        end = len - pad;
    }
    if start > end {
        return Err(RtpError::Length(len));
    }
    Ok(Packet {
        marker: bytes[1] & 0x80 != 0,
        payload_type: bytes[1] & 0x7f,
        seq: u16::from_be_bytes([bytes[2], bytes[3]]),
        timestamp: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        ssrc: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        payload: &bytes[start..end],
    })
}

/// Writes a packet into `out` (cleared first): a 12-byte header, then the
/// payload. `payload_type` must be below 128.
pub fn write(
    out: &mut Vec<u8>,
    marker: bool,
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    payload: &[u8],
) {
    out.clear();
    out.push(0x80);
    out.push((u8::from(marker) << 7) | (payload_type & 0x7f));
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The numbering of one stream the host sends: its own SSRC, a random
/// first sequence number and timestamp (RFC 3550 §5.1), and the mapping of
/// what arrives from the other leg onto them.
///
/// Incoming packets are numbered by their extended sequence number, so a
/// gap (loss) stays a gap and a late packet keeps its place; a new
/// incoming SSRC (the other side restarted, or a new leg was bridged in)
/// continues our numbering after what we sent, with the marker bit set.
#[derive(Debug, Clone)]
pub struct Rewriter {
    ssrc: u32,
    seq_base: u16,
    ts_base: u32,
    /// The incoming stream being mapped: SSRC, its first extended seq and
    /// timestamp, and our offsets when it began.
    source: Option<Source>,
    /// Highest extended seq and timestamp sent, in our numbering.
    sent_seq: u64,
    sent_ts: u32,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    /// Extended sequence number of the highest packet seen.
    top: u64,
    seq_offset: u64,
    ts_offset: u32,
}

/// How far a sequence number may jump before it counts as a new stream.
const MAX_JUMP: u64 = 3000;

impl Rewriter {
    /// A stream with `ssrc` and random starting points.
    pub fn new(ssrc: u32, seq_base: u16, ts_base: u32) -> Rewriter {
        Rewriter {
            ssrc,
            seq_base,
            ts_base,
            source: None,
            sent_seq: 0,
            sent_ts: 0,
        }
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The (marker, seq, timestamp) to send `p` with, or `None` for a
    /// packet too far behind to place (it is dropped).
    pub fn map(&mut self, p: &Packet<'_>) -> Option<(bool, u16, u32)> {
        let mut marker = p.marker;
        let fresh = |me: &Rewriter| Source {
            ssrc: p.ssrc,
            top: u64::from(p.seq) + (1 << 16),
            // Continue one after what we sent.
            seq_offset: (me.sent_seq + 1).wrapping_sub(u64::from(p.seq) + (1 << 16)),
            ts_offset: me.sent_ts.wrapping_add(160).wrapping_sub(p.timestamp),
        };
        let source = match self.source {
            Some(s) if s.ssrc == p.ssrc => s,
            _ => {
                marker = true;
                fresh(self)
            }
        };
        // Extend the 16-bit seq next to the highest seen.
        let top16 = source.top as u16;
        let delta = i64::from(p.seq.wrapping_sub(top16) as i16);
        if delta < -(MAX_JUMP as i64) {
            // Far behind what was seen: too late to place.
            return None;
        }
        let (source, ext) = if delta > MAX_JUMP as i64 {
            // A jump ahead: the sender restarted its numbering.
            marker = true;
            let s = fresh(self);
            (s, s.top)
        } else {
            let ext = source.top.checked_add_signed(delta)?;
            (
                Source {
                    top: source.top.max(ext),
                    ..source
                },
                ext,
            )
        };
        let ours = ext.wrapping_add(source.seq_offset);
        let ts = p.timestamp.wrapping_add(source.ts_offset);
        if self.sent_seq == 0 || ours > self.sent_seq {
            self.sent_seq = ours;
            self.sent_ts = ts;
        }
        self.source = Some(source);
        Some((
            marker,
            (ours as u16).wrapping_add(self.seq_base),
            ts.wrapping_add(self.ts_base),
        ))
    }

    /// The (seq, timestamp) for a packet the host makes itself (tones,
    /// prompts, mixed audio) `samples` after the last one sent.
    pub fn next_own(&mut self, samples: u32) -> (u16, u32) {
        self.sent_seq += 1;
        self.sent_ts = self.sent_ts.wrapping_add(samples);
        // Whatever arrives next from a leg continues from here.
        self.source = None;
        (
            (self.sent_seq as u16).wrapping_add(self.seq_base),
            self.sent_ts.wrapping_add(self.ts_base),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, false, 0, seq, ts, ssrc, &[0xff; 160]);
        out
    }

    #[test]
    fn a_written_packet_parses_back() {
        let bytes = packet(7, 1234, 0xdead_beef);
        let p = parse(&bytes).unwrap();
        assert_eq!(
            (p.seq, p.timestamp, p.ssrc, p.payload_type),
            (7, 1234, 0xdead_beef, 0)
        );
        assert_eq!(p.payload, &[0xff; 160][..]);
        assert!(!is_rtcp(&bytes));
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
    }

    #[test]
    fn csrcs_extensions_and_padding_are_skipped_and_checked() {
        // CC=1, X, P: header 12 + 4 + extension 4+4, payload 3, padding 5.
        let mut b = vec![0xb1, 0x00, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
        b.extend_from_slice(&[1, 2, 3, 4]);
        b.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]);
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&[0, 0, 0, 0, 5]);
        assert_eq!(parse(&b).unwrap().payload, b"abc");
        let mut bad = b.clone();
        *bad.last_mut().unwrap() = 0;
        assert_eq!(parse(&bad), Err(RtpError::Malformed));
        *bad.last_mut().unwrap() = 200;
        assert_eq!(parse(&bad), Err(RtpError::Malformed));
        // Padding eating into the header.
        *bad.last_mut().unwrap() = 12;
        assert!(parse(&bad).is_err());
        for cut in 0..b.len() - 8 {
            assert!(parse(&b[..cut]).is_err() || cut >= 12 + 4 + 8, "cut {cut}");
        }
        assert_eq!(
            parse(&vec![0x80; MAX_PACKET + 1]),
            Err(RtpError::Length(MAX_PACKET + 1))
        );
        assert_eq!(parse(&[0x40; 20]), Err(RtpError::Malformed));
    }

    #[test]
    fn mutated_packets_never_panic() {
        let base = packet(1, 2, 3);
        for p in crate::media::hostile::mutations(&base, 5, 20_000) {
            if let Ok(parsed) = parse(&p) {
                assert!(parsed.payload.len() <= p.len());
            }
        }
    }

    fn ours(r: &mut Rewriter, seq: u16, ts: u32, ssrc: u32) -> (bool, u16, u32) {
        r.map(&parse(&packet(seq, ts, ssrc)).unwrap()).unwrap()
    }

    #[test]
    fn a_stream_is_renumbered_keeping_gaps_order_and_wraps() {
        let mut r = Rewriter::new(1, 1000, 50_000);
        let (m, s0, t0) = ours(&mut r, 65_534, 9_000, 77);
        assert!(m, "a new source starts with the marker");
        assert_eq!(ours(&mut r, 65_535, 9_160, 77), (false, s0 + 1, t0 + 160));
        // Wrap, then a loss (1 missing), then a late packet.
        assert_eq!(ours(&mut r, 0, 9_320, 77), (false, s0 + 2, t0 + 320));
        assert_eq!(ours(&mut r, 2, 9_640, 77), (false, s0 + 4, t0 + 640));
        assert_eq!(ours(&mut r, 1, 9_480, 77), (false, s0 + 3, t0 + 480));
    }

    #[test]
    fn a_new_source_or_a_jump_continues_our_numbering() {
        let mut r = Rewriter::new(1, 0, 0);
        let (_, s0, t0) = ours(&mut r, 100, 1_000, 77);
        ours(&mut r, 101, 1_160, 77);
        // Another SSRC with unrelated numbers: next seq, marker set.
        let (m, s, t) = ours(&mut r, 40_000, 123_456, 88);
        assert!(m);
        assert_eq!((s, t), (s0 + 2, t0 + 320));
        // The same SSRC jumping far ahead: treated as a restart; far
        // behind: dropped.
        let (m, s, _) = ours(&mut r, 50_000, 999, 88);
        assert!(m);
        assert_eq!(s, s0 + 3);
        assert_eq!(r.map(&parse(&packet(40_000, 5, 88)).unwrap()), None);
        // Our own packets in between, then the leg again.
        let (s, t) = r.next_own(160);
        assert_eq!(s, s0 + 4);
        let (m, s2, t2) = ours(&mut r, 50_001, 1_159, 88);
        assert!(m);
        assert_eq!((s2, t2), (s + 1, t + 160));
    }
}
