//! RTCP (RFC 3550 §6): the reception statistics of a stream, and the
//! sender and receiver reports a leg sends and reads. Call records take
//! their loss and jitter from here.
//!
//! - [`Reception`] follows one incoming stream as RFC 3550 Appendix A
//!   does: extended highest sequence number, expected vs received, the
//!   fraction lost since the last report, and the interarrival jitter
//!   (A.8) in timestamp units.
//! - [`sender_report`] / [`receiver_report`] write an SR or RR with one
//!   report block; [`parse`] reads the report blocks of a compound packet
//!   and skips (but bounds-checks) every other packet type.

/// RTCP packet types.
const SR: u8 = 200;
const RR: u8 = 201;
/// Largest compound packet read.
pub const MAX_PACKET: usize = 1500;

/// Why bytes are not RTCP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    /// A length field that does not fit, a bad version, or too short.
    #[error("not a well-formed RTCP compound packet")]
    Malformed,
}

/// One report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The stream reported on.
    pub ssrc: u32,
    /// Lost since the last report, in 1/256.
    pub fraction_lost: u8,
    /// Lost since the start (24-bit signed).
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    /// Interarrival jitter, timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received, and the
    /// delay since, in 1/65536 s.
    pub last_sr: u32,
    pub delay_since_last_sr: u32,
}

/// Reception statistics of one incoming stream.
#[derive(Debug, Clone, Default)]
pub struct Reception {
    started: bool,
    base_seq: u32,
    /// Cycles (× 65536) and highest sequence number.
    cycles: u32,
    max_seq: u16,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Jitter × 16 (A.8's fixed-point form).
    jitter: u32,
    transit: Option<i64>,
}

impl Reception {
    /// Counts a packet with sequence number `seq` and RTP timestamp `ts`
    /// that arrived at `arrival` (in the same clock units as `ts`).
    pub fn packet(&mut self, seq: u16, ts: u32, arrival: u32) {
        if !self.started {
            self.started = true;
            self.base_seq = u32::from(seq);
            self.max_seq = seq;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta != 0 && delta < 0x8000 {
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(1 << 16);
                }
                self.max_seq = seq;
            }
        }
        self.received = self.received.saturating_add(1);
        // A.8: J += (|D| - J) / 16, kept × 16.
        let transit = i64::from(arrival) - i64::from(ts);
        if let Some(prev) = self.transit {
            let d = (transit - prev)
                .unsigned_abs()
                .min(u64::from(u32::MAX >> 4)) as u32;
            self.jitter = self
                .jitter
                .saturating_add(d)
                .saturating_sub((self.jitter + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// Extended highest sequence number.
    pub fn highest(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// Packets expected and received so far.
    pub fn counts(&self) -> (u32, u32) {
        if !self.started {
            return (0, 0);
        }
        (
            self.highest().wrapping_sub(self.base_seq).wrapping_add(1),
            self.received,
        )
    }

    /// Interarrival jitter in timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter >> 4
    }

    /// A report block on this stream (`ssrc`), updating the "since last
    /// report" counters.
    pub fn block(&mut self, ssrc: u32, last_sr: u32, delay_since_last_sr: u32) -> Block {
        let (expected, received) = self.counts();
        let lost = i64::from(expected) - i64::from(received);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        Block {
            ssrc,
            fraction_lost,
            cumulative_lost: lost.clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_seq: self.highest(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

fn write_block(out: &mut Vec<u8>, b: &Block) {
    out.extend_from_slice(&b.ssrc.to_be_bytes());
    out.push(b.fraction_lost);
    out.extend_from_slice(&(b.cumulative_lost as u32 & 0x00ff_ffff).to_be_bytes()[1..]);
    out.extend_from_slice(&b.highest_seq.to_be_bytes());
    out.extend_from_slice(&b.jitter.to_be_bytes());
    out.extend_from_slice(&b.last_sr.to_be_bytes());
    out.extend_from_slice(&b.delay_since_last_sr.to_be_bytes());
}

/// A sender report from `ssrc`: NTP time, RTP time, packets and octets
/// sent, and an optional block on what it receives.
pub fn sender_report(
    ssrc: u32,
    ntp: u64,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
    block: Option<&Block>,
) -> Vec<u8> {
    let words = 6 + if block.is_some() { 6 } else { 0 };
    let mut out = Vec::with_capacity(4 * (words + 1));
    out.push(0x80 | u8::from(block.is_some()));
    out.push(SR);
    out.extend_from_slice(&(words as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&ntp.to_be_bytes());
    out.extend_from_slice(&rtp_ts.to_be_bytes());
    out.extend_from_slice(&packets.to_be_bytes());
    out.extend_from_slice(&octets.to_be_bytes());
    if let Some(b) = block {
        write_block(&mut out, b);
    }
    out
}

/// A receiver report from `ssrc` with one block.
pub fn receiver_report(ssrc: u32, block: &Block) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&[0x81, RR, 0, 7]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    write_block(&mut out, block);
    out
}

/// What a compound packet reports: (sender SSRC, its NTP time if an SR,
/// the report blocks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reports {
    pub sender: Option<u32>,
    pub ntp: Option<u64>,
    pub blocks: Vec<Block>,
}

/// Reads the SRs and RRs of a compound packet; other types are skipped
/// after their length is checked.
pub fn parse(bytes: &[u8]) -> Result<Reports, RtcpError> {
    if bytes.len() < 8 || bytes.len() > MAX_PACKET {
        return Err(RtcpError::Malformed);
    }
    let mut out = Reports::default();
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes.get(at..at + 4).ok_or(RtcpError::Malformed)?;
        if head[0] >> 6 != 2 {
            return Err(RtcpError::Malformed);
        }
        let count = usize::from(head[0] & 0x1f);
        let len = 4 * (usize::from(u16::from_be_bytes([head[2], head[3]])) + 1);
        let body = bytes.get(at + 4..at + len).ok_or(RtcpError::Malformed)?;
        let (fixed, ssrc_at) = match head[1] {
            SR => (24, 0),
            RR => (4, 0),
            _ => {
                at += len;
                continue;
            }
        };
        let ssrc = body.get(ssrc_at..ssrc_at + 4).ok_or(RtcpError::Malformed)?;
        out.sender
            .get_or_insert(u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]));
        if head[1] == SR {
            let ntp = body.get(4..12).ok_or(RtcpError::Malformed)?;
            let mut b = [0u8; 8];
            b.copy_from_slice(ntp);
            out.ntp = Some(u64::from_be_bytes(b));
        }
        let blocks = body
            .get(fixed..fixed + 24 * count)
            .ok_or(RtcpError::Malformed)?;
        for b in blocks.chunks_exact(24) {
            let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let lost = u32::from_be_bytes([0, b[5], b[6], b[7]]);
            // Sign-extend the 24-bit count.
            let cumulative_lost = ((lost << 8) as i32) >> 8;
            out.blocks.push(Block {
                ssrc: word(0),
                fraction_lost: b[4],
                cumulative_lost,
                highest_seq: word(8),
                jitter: word(12),
                last_sr: word(16),
                delay_since_last_sr: word(20),
            });
            if out.blocks.len() > 64 {
                return Err(RtcpError::Malformed);
            }
        }
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reception_counts_loss_wraps_and_jitter() {
        let mut r = Reception::default();
        // 65530..65535, 0..10 with 3 and 7 lost, one 40-unit late packet.
        let seqs: Vec<u16> = (65530..=65535)
            .chain(0..=10)
            .filter(|s| *s != 3 && *s != 7)
            .collect();
        for s in &seqs {
            let ts = u32::from(s.wrapping_sub(65530)) * 160;
            let late = if *s == 5 { 40 } else { 0 };
            r.packet(*s, ts, ts + 1000 + late);
        }
        assert_eq!(r.highest(), 65536 + 10);
        assert_eq!(r.counts(), (17, 15));
        let b = r.block(9, 0, 0);
        assert_eq!(b.cumulative_lost, 2);
        assert_eq!(b.fraction_lost, (2 * 256 / 17) as u8);
        // Two jumps of 40 (late, then back): J ≈ 40/16 + 40·15/256.
        assert!((3..=6).contains(&b.jitter), "{}", b.jitter);
        // Nothing new: the next block reports no fresh loss.
        assert_eq!(r.block(9, 0, 0).fraction_lost, 0);
    }

    #[test]
    fn reports_round_trip() {
        let block = Block {
            ssrc: 0x1234,
            fraction_lost: 12,
            cumulative_lost: -3,
            highest_seq: 70_000,
            jitter: 42,
            last_sr: 7,
            delay_since_last_sr: 65536,
        };
        let sr = sender_report(0xabcd, 0x0102_0304_0506_0708, 160, 50, 8000, Some(&block));
        let rr = receiver_report(0xdcba, &block);
        let mut compound = sr.clone();
        compound.extend_from_slice(&rr);
        // An SDES packet between them is skipped.
        compound.extend_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 1, b'x', 0]);
        let got = parse(&compound).unwrap();
        assert_eq!(got.sender, Some(0xabcd));
        assert_eq!(got.ntp, Some(0x0102_0304_0506_0708));
        assert_eq!(got.blocks, vec![block, block]);
        assert_eq!(
            parse(&sender_report(1, 2, 3, 4, 5, None)).unwrap().blocks,
            vec![]
        );
    }

    #[test]
    fn malformed_compounds_are_refused_and_mutations_never_panic() {
        let rr = receiver_report(1, &Reception::default().block(2, 0, 0));
        for bad in [&rr[..7], &rr[..20]] {
            assert_eq!(parse(bad), Err(RtcpError::Malformed));
        }
        let mut long = rr.clone();
        long[3] = 200;
        assert_eq!(parse(&long), Err(RtcpError::Malformed));
        let mut many = rr.clone();
        many[0] = 0x9f; // 31 blocks claimed in a 1-block packet
        assert_eq!(parse(&many), Err(RtcpError::Malformed));
        for m in crate::media::hostile::mutations(&rr, 3, 20_000) {
            let _ = parse(&m);
        }
    }
}
