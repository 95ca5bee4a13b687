//! The media engine's building blocks (SPEC T2): codecs and the secure
//! transport of call audio. Pure functions and per-stream state with no
//! I/O, so the media threads that will own the sockets (calls issue) can
//! call them without locks, and every rule here is tested offline.
//!
//! - [`g711`]: G.711 µ-law and A-law, to and from 16-bit linear PCM, and
//!   µ-law ↔ A-law transcoding for bridges whose legs disagree.
//! - [`srtp`]: SRTP and SRTCP (RFC 3711) with the SDES suites
//!   `AES_CM_128_HMAC_SHA1_80` and `_32` (RFC 4568): key derivation,
//!   protect, and unprotect with a replay window and constant-time tags.
//! - [`rtp`]: RTP packets read without copying, and the re-origination of
//!   a stream (our SSRC, sequence numbers and timestamps per leg).
//! - [`dtmf`]: RFC 4733 telephone events, detected once per key press and
//!   generated with the end packet three times.
//! - [`jitter`]: the reorder buffer of the decoding paths, bounded.
//! - [`rtcp`]: reception statistics (loss, jitter) and sender/receiver
//!   reports, for call records.
//! - [`engine`]: the media threads that own the sockets and relay legs.
//! - [`mix`]: conference mixing, each leg hearing all but itself.
//! - [`tone`]: DTMF and call-progress tones as 20 ms PCM frames.

pub mod dtmf;
pub mod engine;
pub mod g711;
pub mod jitter;
pub mod mix;
pub mod prompts;
pub mod record;
pub mod rtcp;
pub mod rtp;
pub mod srtp;
pub mod tone;

/// Hostile-input generation for the parsers' tests: deterministic byte
/// mutations (flips, cuts, splices, repeats) of a valid input.
#[cfg(test)]
pub(crate) mod hostile {
    /// `n` mutations of `base` from `seed`, the same on every run.
    pub(crate) fn mutations(base: &[u8], seed: u64, n: usize) -> impl Iterator<Item = Vec<u8>> {
        let mut state = seed | 1;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let base = base.to_vec();
        (0..n).map(move |_| {
            let mut v = base.clone();
            for _ in 0..1 + next() % 4 {
                let len = v.len().max(1) as u64;
                let at = (next() % len) as usize;
                match next() % 5 {
                    0 if !v.is_empty() => {
                        let i = at.min(v.len() - 1);
                        v[i] ^= 1 << (next() % 8);
                    }
                    1 => v.truncate(at),
                    2 => v.insert(at.min(v.len()), next() as u8),
                    3 if !v.is_empty() => {
                        let from = (next() % len) as usize;
                        let chunk: Vec<u8> = v[from.min(v.len() - 1)..]
                            .iter()
                            .take(64)
                            .copied()
                            .collect();
                        let at = at.min(v.len());
                        v.splice(at..at, chunk);
                    }
                    _ => v.extend(std::iter::repeat_n(next() as u8, (next() % 300) as usize)),
                }
            }
            v
        })
    }
}
