//! A reorder buffer for the paths that decode (mixing, recording, digit
//! detection in audio): packets go in as they arrive, frames come out in
//! sequence order on the engine's 20 ms tick. Relayed bridges never wait
//! in it; they forward on arrival.
//!
//! It holds at most [`Jitter::depth`] frames of delay (60 ms by default)
//! and [`CAPACITY`] packets: a missing frame is given up once that much
//! newer audio waits (the caller plays silence for it), a duplicate or a
//! packet behind what was played is dropped, and a flood of far-future
//! sequence numbers cannot grow it.

use std::collections::BTreeMap;

/// Most packets held.
pub const CAPACITY: usize = 32;
/// Default delay in frames (3 × 20 ms).
pub const DEFAULT_DEPTH: usize = 3;

/// What a tick gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The next frame's payload.
    Audio(Vec<u8>),
    /// The next frame was lost (or is too late): play silence or conceal.
    Lost,
    /// Nothing yet (the stream has not started or is drained).
    Empty,
}

/// The reorder buffer of one incoming stream.
#[derive(Debug, Clone)]
pub struct Jitter {
    depth: usize,
    /// Extended seq of the next frame to play.
    next: Option<u64>,
    /// Highest extended seq seen (to extend the 16-bit numbers).
    top: Option<u64>,
    held: BTreeMap<u64, Vec<u8>>,
    /// Packets dropped as duplicate, late or over capacity.
    pub dropped: u64,
}

impl Jitter {
    /// A buffer playing `depth` frames behind the newest (1..=CAPACITY/2).
    pub fn new(depth: usize) -> Jitter {
        Jitter {
            depth: depth.clamp(1, CAPACITY / 2),
            next: None,
            top: None,
            held: BTreeMap::new(),
            dropped: 0,
        }
    }

    /// Delay in frames.
    pub fn depth(&self) -> usize {
        self.depth
    }

    fn extend(&mut self, seq: u16) -> u64 {
        let Some(top) = self.top else {
            let ext = u64::from(seq) + (1 << 16);
            self.top = Some(ext);
            return ext;
        };
        let delta = i64::from(seq.wrapping_sub(top as u16) as i16);
        let ext = top.saturating_add_signed(delta);
        self.top = Some(top.max(ext));
        ext
    }

    /// Takes a packet's payload.
    pub fn push(&mut self, seq: u16, payload: &[u8]) {
        let ext = self.extend(seq);
        if self.next.is_some_and(|n| ext < n) || self.held.contains_key(&ext) {
            self.dropped += 1;
            return;
        }
        if self.held.len() >= CAPACITY {
            // Keep the oldest (what plays next); drop the newest.
            let newest = self.held.keys().next_back().copied();
            match newest {
                Some(n) if n > ext => {
                    self.held.remove(&n);
                    self.dropped += 1;
                }
                _ => {
                    self.dropped += 1;
                    return;
                }
            }
        }
        self.held.insert(ext, payload.to_vec());
        if self.next.is_none() {
            // Start once `depth` frames of audio wait.
            if self.held.len() >= self.depth {
                self.next = self.held.keys().next().copied();
            }
        }
    }

    /// Keeps at most `max` frames waiting: the oldest beyond are dropped
    /// (played as skipped), so a burst or a fast sender's clock cannot
    /// build up delay.
    pub fn trim(&mut self, max: usize) {
        while self.held.len() > max.max(1) {
            let Some((&oldest, _)) = self.held.iter().next() else {
                break;
            };
            self.held.remove(&oldest);
            self.dropped += 1;
            self.next = Some(oldest + 1);
        }
    }

    /// The frame for this 20 ms tick.
    pub fn pop(&mut self) -> Frame {
        let Some(next) = self.next else {
            return Frame::Empty;
        };
        if let Some(payload) = self.held.remove(&next) {
            self.next = Some(next + 1);
            return Frame::Audio(payload);
        }
        // Missing: wait while less than `depth` frames of newer audio wait.
        let waiting = self.held.range(next..).count();
        if waiting == 0 {
            return Frame::Empty;
        }
        if waiting >= self.depth {
            self.next = Some(next + 1);
            return Frame::Lost;
        }
        Frame::Empty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(n: u8) -> Frame {
        Frame::Audio(vec![n])
    }

    #[test]
    fn trimming_keeps_the_newest_frames_and_plays_on_from_them() {
        let mut j = Jitter::new(2);
        for seq in 0u16..10 {
            j.push(seq, &[seq as u8]);
        }
        j.trim(4);
        assert_eq!(j.dropped, 6);
        assert_eq!(j.pop(), audio(6));
        assert_eq!(j.pop(), audio(7));
        // Late packets behind what now plays are dropped.
        j.push(3, &[3]);
        assert_eq!(j.dropped, 7);
        assert_eq!(j.pop(), audio(8));
    }

    #[test]
    fn reordered_packets_come_out_in_order() {
        let mut j = Jitter::new(3);
        for seq in [65534u16, 0, 65535, 1, 2] {
            j.push(seq, &[seq as u8]);
        }
        assert_eq!(j.pop(), audio(254));
        assert_eq!(j.pop(), audio(255));
        assert_eq!(j.pop(), audio(0));
        assert_eq!(j.pop(), audio(1));
        assert_eq!(j.pop(), audio(2));
        assert_eq!(j.pop(), Frame::Empty);
    }

    #[test]
    fn a_lost_packet_is_given_up_after_the_depth_and_late_ones_dropped() {
        let mut j = Jitter::new(2);
        j.push(10, &[10]);
        j.push(11, &[11]);
        assert_eq!(j.pop(), audio(10));
        assert_eq!(j.pop(), audio(11));
        // 12 missing; 13 arrives: wait (one frame of newer audio < depth 2).
        j.push(13, &[13]);
        assert_eq!(j.pop(), Frame::Empty);
        j.push(14, &[14]);
        assert_eq!(j.pop(), Frame::Lost);
        // 12 arrives too late: dropped.
        j.push(12, &[12]);
        assert_eq!(j.dropped, 1);
        assert_eq!(j.pop(), audio(13));
        // A duplicate is dropped.
        j.push(14, &[14]);
        assert_eq!(j.dropped, 2);
        assert_eq!(j.pop(), audio(14));
    }

    #[test]
    fn a_flood_of_future_packets_cannot_grow_it() {
        let mut j = Jitter::new(3);
        for seq in 0..3u16 {
            j.push(seq, &[1]);
        }
        for seq in (1000..5000u16).rev() {
            j.push(seq, &[2]);
        }
        assert!(j.held.len() <= CAPACITY);
        // What plays next is still there.
        assert_eq!(j.pop(), audio(1));
    }
}
