//! A leg's recorder (SPEC R3): what the far end says and what it hears,
//! decoded, mixed every 20 ms into 16-bit PCM and handed to a sink in
//! pieces, without I/O of its own (the engine's worker drives it, the
//! sink writes the blob). While paused nothing is kept: the frames are
//! dropped, not silenced, so the recording holds no trace of them.

use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::g711;
use super::tone::FRAME;

/// Frames waiting on each side before the oldest is dropped (60 ms), as
/// for conference members: delay never builds up.
const QUEUE: usize = 3;
/// PCM bytes handed to the sink at a time (1 s).
const PIECE: usize = 16_000;
/// A frame whose loudest sample is below this is silence (about -30 dBFS).
const SPEECH: i16 = 1_000;

/// What a recording asks of the engine.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    /// Longest recording, in 20 ms frames of wall time (paused ones
    /// count).
    pub max_frames: u64,
    /// End after this many frames without speech from the far end (0:
    /// never).
    pub silence_frames: u64,
    /// Where the audio goes.
    pub sink: mpsc::UnboundedSender<Piece>,
}

/// Why a recording ended in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordEnd {
    /// `max_frames` reached.
    Full,
    /// The far end was silent for `silence_frames`.
    Silence,
    /// Asked to stop.
    Stopped,
    /// The leg closed.
    Closed,
}

/// A piece of a recording: 16-bit little-endian PCM at 8 kHz, and with
/// the last one why it ended and the frames kept in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub pcm: Vec<u8>,
    pub end: Option<(RecordEnd, u64)>,
}

/// One leg's recording in progress.
#[derive(Debug)]
pub struct Recorder {
    spec: RecordSpec,
    /// Bumped when the recorder is replaced, so a stale ticker stops.
    pub generation: u64,
    paused: bool,
    heard: VecDeque<[i16; FRAME]>,
    said: VecDeque<[i16; FRAME]>,
    /// Samples of each side short of a whole frame (packets of other
    /// lengths than 20 ms are cut into frames here).
    heard_part: Vec<i16>,
    said_part: Vec<i16>,
    pcm: Vec<u8>,
    frames: u64,
    kept: u64,
    quiet: u64,
    done: bool,
}

impl Recorder {
    pub fn new(spec: RecordSpec, generation: u64) -> Recorder {
        Recorder {
            spec,
            generation,
            paused: false,
            heard: VecDeque::new(),
            said: VecDeque::new(),
            heard_part: Vec::with_capacity(FRAME),
            said_part: Vec::with_capacity(FRAME),
            pcm: Vec::with_capacity(PIECE),
            frames: 0,
            kept: 0,
            quiet: 0,
            done: false,
        }
    }

    /// Audio the far end sent (`alaw`: G.711 A-law, else µ-law).
    pub fn far(&mut self, payload: &[u8], alaw: bool) {
        push(&mut self.said, &mut self.said_part, payload, alaw);
    }

    /// Audio sent to the far end.
    pub fn near(&mut self, payload: &[u8], alaw: bool) {
        push(&mut self.heard, &mut self.heard_part, payload, alaw);
    }

    pub fn pause(&mut self, paused: bool) {
        self.paused = paused;
        // Nothing queued while paused is kept afterwards either.
        self.heard.clear();
        self.said.clear();
        self.heard_part.clear();
        self.said_part.clear();
    }

    /// Every 20 ms: one frame of each side mixed and kept (unless paused);
    /// a full piece goes to the sink. Returns why it ended, once it did
    /// (the last piece is sent then).
    pub fn tick(&mut self) -> Option<RecordEnd> {
        if self.done {
            return None;
        }
        let said = self.said.pop_front();
        let heard = self.heard.pop_front();
        self.frames += 1;
        let speech = said
            .as_ref()
            .is_some_and(|f| f.iter().any(|s| s.unsigned_abs() > SPEECH as u16));
        // Silence while paused is not the caller's silence.
        self.quiet = if speech || self.paused {
            0
        } else {
            self.quiet + 1
        };
        if !self.paused {
            let zero = [0i16; FRAME];
            let (a, b) = (
                said.as_ref().unwrap_or(&zero),
                heard.as_ref().unwrap_or(&zero),
            );
            for (x, y) in a.iter().zip(b) {
                self.pcm
                    .extend_from_slice(&x.saturating_add(*y).to_le_bytes());
            }
            self.kept += 1;
            if self.pcm.len() >= PIECE {
                self.send(None);
            }
        }
        let end = if self.frames >= self.spec.max_frames {
            Some(RecordEnd::Full)
        } else if self.spec.silence_frames > 0 && self.quiet >= self.spec.silence_frames {
            Some(RecordEnd::Silence)
        } else {
            None
        };
        if let Some(e) = end {
            self.finish(e);
        }
        end
    }

    /// Ends the recording: what is left and why go to the sink (once).
    pub fn finish(&mut self, end: RecordEnd) {
        if !self.done {
            self.done = true;
            self.send(Some(end));
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    fn send(&mut self, end: Option<RecordEnd>) {
        let pcm = std::mem::replace(&mut self.pcm, Vec::with_capacity(PIECE));
        let _ = self.spec.sink.send(Piece {
            pcm,
            end: end.map(|e| (e, self.kept)),
        });
    }
}

fn push(queue: &mut VecDeque<[i16; FRAME]>, part: &mut Vec<i16>, payload: &[u8], alaw: bool) {
    let decode = if alaw {
        g711::alaw_to_linear
    } else {
        g711::ulaw_to_linear
    };
    for c in payload {
        part.push(decode(*c));
        if part.len() == FRAME {
            let mut frame = [0i16; FRAME];
            frame.copy_from_slice(part);
            part.clear();
            if queue.len() >= QUEUE {
                queue.pop_front();
            }
            queue.push_back(frame);
        }
    }
}

/// Why a WAV file cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} (a WAV file of 8 kHz mono 16-bit PCM, µ-law or A-law)")]
pub struct WavError(String);

/// The audio of a WAV file as G.711 µ-law: 8 kHz mono, 16-bit PCM
/// (format 1), A-law (6) or µ-law (7). Chunks other than `fmt ` and
/// `data` are skipped; a `data` chunk cut short is taken as far as it
/// goes.
pub fn wav_to_ulaw(bytes: &[u8]) -> Result<Vec<u8>, WavError> {
    let bad = |why: &str| WavError(why.to_string());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a WAV file"));
    }
    let mut at = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body = &bytes[at + 8..(at + 8).saturating_add(len).min(bytes.len())];
        match id {
            b"fmt " if body.len() >= 16 => {
                let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                format = Some((u16_at(0), u16_at(2), rate, u16_at(14)));
            }
            b"data" => {
                let (tag, channels, rate, bits) =
                    format.ok_or_else(|| bad("no fmt chunk before the data"))?;
                if channels != 1 || rate != 8000 {
                    return Err(bad(&format!("{channels} channels at {rate} Hz")));
                }
                return match (tag, bits) {
                    (1, 16) => Ok(body
                        .chunks_exact(2)
                        .map(|b| g711::linear_to_ulaw(i16::from_le_bytes([b[0], b[1]])))
                        .collect()),
                    (7, 8) => Ok(body.to_vec()),
                    (6, 8) => Ok(body.iter().map(|a| g711::alaw_to_ulaw(*a)).collect()),
                    _ => Err(bad(&format!("format {tag} with {bits} bits"))),
                };
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        at = at
            .saturating_add(8)
            .saturating_add(len)
            .saturating_add(len & 1);
    }
    Err(bad("no data chunk"))
}

/// A WAV header for `pcm_bytes` of 8 kHz 16-bit mono PCM.
pub fn wav_header(pcm_bytes: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        h[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(b"RIFF");
    put(&pcm_bytes.saturating_add(36).to_le_bytes());
    put(b"WAVEfmt ");
    put(&16u32.to_le_bytes());
    put(&1u16.to_le_bytes()); // PCM
    put(&1u16.to_le_bytes()); // mono
    put(&8000u32.to_le_bytes());
    put(&16_000u32.to_le_bytes()); // bytes a second
    put(&2u16.to_le_bytes()); // block align
    put(&16u16.to_le_bytes()); // bits
    put(b"data");
    put(&pcm_bytes.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder(max: u64, silence: u64) -> (Recorder, mpsc::UnboundedReceiver<Piece>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Recorder::new(
                RecordSpec {
                    max_frames: max,
                    silence_frames: silence,
                    sink: tx,
                },
                1,
            ),
            rx,
        )
    }

    fn pcm_of(rx: &mut mpsc::UnboundedReceiver<Piece>) -> (Vec<i16>, Option<(RecordEnd, u64)>) {
        let mut out = Vec::new();
        let mut end = None;
        while let Ok(p) = rx.try_recv() {
            out.extend(p.pcm.chunks(2).map(|b| i16::from_le_bytes([b[0], b[1]])));
            end = end.or(p.end);
        }
        (out, end)
    }

    #[test]
    fn both_sides_are_mixed_and_pauses_keep_nothing() {
        let (mut r, mut rx) = recorder(1000, 0);
        let loud = g711::linear_to_ulaw(8000);
        let soft = g711::linear_to_ulaw(2000);
        r.far(&[loud; FRAME], false);
        r.near(&[soft; FRAME], false);
        assert_eq!(r.tick(), None);
        r.pause(true);
        r.far(&[loud; FRAME], false);
        assert_eq!(r.tick(), None);
        r.pause(false);
        r.near(&[soft; FRAME], false);
        assert_eq!(r.tick(), None);
        r.finish(RecordEnd::Stopped);
        let (pcm, end) = pcm_of(&mut rx);
        assert_eq!(
            end,
            Some((RecordEnd::Stopped, 2)),
            "the paused frame is not counted"
        );
        assert_eq!(pcm.len(), 2 * FRAME);
        let sum = g711::ulaw_to_linear(loud) + g711::ulaw_to_linear(soft);
        assert!(pcm[..FRAME].iter().all(|s| *s == sum));
        assert!(
            pcm[FRAME..]
                .iter()
                .all(|s| *s == g711::ulaw_to_linear(soft))
        );
        // Finished once: nothing more.
        r.finish(RecordEnd::Closed);
        assert_eq!(r.tick(), None);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn it_ends_at_its_length_or_after_silence_and_a_burst_cannot_queue_up() {
        let (mut r, mut rx) = recorder(5, 0);
        // A burst of 10 frames at once keeps only the last 3.
        r.far(&[g711::linear_to_ulaw(9000); FRAME * 10], false);
        let ends: Vec<_> = (0..5).map(|_| r.tick()).collect();
        assert_eq!(ends[4], Some(RecordEnd::Full));
        let (pcm, end) = pcm_of(&mut rx);
        assert_eq!(end, Some((RecordEnd::Full, 5)));
        let loud = pcm.chunks(FRAME).filter(|f| f[0] != 0).count();
        assert_eq!(loud, 3);
        let (mut r, mut rx) = recorder(1000, 4);
        r.far(&[g711::linear_to_ulaw(9000); FRAME], false);
        for _ in 0..4 {
            assert_eq!(r.tick(), None);
        }
        assert_eq!(r.tick(), Some(RecordEnd::Silence));
        assert_eq!(pcm_of(&mut rx).1, Some((RecordEnd::Silence, 5)));
    }

    #[test]
    fn wav_files_read_back_as_ulaw_and_others_are_refused() {
        let pcm: Vec<i16> = (0..320).map(|i| (i * 50 - 8000) as i16).collect();
        let mut wav = wav_header(640).to_vec();
        for s in &pcm {
            wav.extend_from_slice(&s.to_le_bytes());
        }
        let ulaw = wav_to_ulaw(&wav).unwrap();
        assert_eq!(ulaw.len(), 320);
        assert!(
            ulaw.iter()
                .zip(&pcm)
                .all(|(u, s)| *u == g711::linear_to_ulaw(*s))
        );
        // µ-law and A-law WAVs, with a chunk to skip first.
        for (tag, data, want) in [
            (7u16, vec![0x12u8, 0x80], vec![0x12u8, 0x80]),
            (6, vec![0xD5], vec![g711::alaw_to_ulaw(0xD5)]),
        ] {
            let mut w = b"RIFF\0\0\0\0WAVELIST\x03\0\0\0abc\0fmt \x10\0\0\0".to_vec();
            w.extend_from_slice(&tag.to_le_bytes());
            w.extend_from_slice(&1u16.to_le_bytes());
            w.extend_from_slice(&8000u32.to_le_bytes());
            w.extend_from_slice(&8000u32.to_le_bytes());
            w.extend_from_slice(&1u16.to_le_bytes());
            w.extend_from_slice(&8u16.to_le_bytes());
            w.extend_from_slice(b"data");
            w.extend_from_slice(&(data.len() as u32).to_le_bytes());
            w.extend_from_slice(&data);
            assert_eq!(wav_to_ulaw(&w).unwrap(), want);
        }
        // Not WAV, stereo, 16 kHz, no data, a huge chunk length: errors.
        assert!(wav_to_ulaw(b"ID3 mp3").is_err());
        let mut stereo = wav.clone();
        stereo[22] = 2;
        assert!(wav_to_ulaw(&stereo).is_err());
        let mut fast = wav.clone();
        fast[24..28].copy_from_slice(&16_000u32.to_le_bytes());
        assert!(wav_to_ulaw(&fast).is_err());
        assert!(wav_to_ulaw(&wav[..36]).is_err());
        let mut huge = wav.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(wav_to_ulaw(&huge).is_err());
    }

    #[test]
    fn packets_of_other_lengths_make_whole_frames() {
        let (mut r, mut rx) = recorder(1000, 0);
        let code = g711::linear_to_ulaw(4000);
        // 30 ms packets: two of them are three whole frames, no gaps.
        r.far(&[code; 240], false);
        r.far(&[code; 240], false);
        for _ in 0..3 {
            r.tick();
        }
        r.finish(RecordEnd::Stopped);
        let (pcm, _) = pcm_of(&mut rx);
        assert_eq!(pcm.len(), 3 * FRAME);
        assert!(pcm.iter().all(|s| *s == g711::ulaw_to_linear(code)));
        // Silence while paused does not end a recording on silence.
        let (mut r, _rx) = recorder(1000, 3);
        r.pause(true);
        for _ in 0..10 {
            assert_eq!(r.tick(), None);
        }
    }

    #[test]
    fn the_wav_header_says_what_follows() {
        let h = wav_header(32_000);
        assert_eq!(&h[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 32_036);
        assert_eq!(&h[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes(h[24..28].try_into().unwrap()), 8000);
        assert_eq!(&h[36..40], b"data");
        assert_eq!(u32::from_le_bytes(h[40..44].try_into().unwrap()), 32_000);
    }
}
