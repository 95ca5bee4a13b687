//! Tones the host plays into a leg: DTMF keys, call-progress tones (ring
//! back, busy) and silence, as 16-bit PCM frames of 20 ms at 8 kHz ready
//! for G.711. Two sines summed at a fixed level (-13 dBm0 each, ITU-T
//! Q.23's DTMF level), with a cadence of on/off periods that repeats.

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;
/// Sample rate.
pub const RATE: f32 = 8000.0;
/// Peak amplitude of each sine: -13 dBm0 (G.711's 0 dBm0 is ~3.17 dB
/// below full scale).
const LEVEL: f32 = 32767.0 * 0.158;

/// A tone: one or two frequencies and a cadence of (on, off) periods in
/// milliseconds, repeated; an empty cadence is continuous.
#[derive(Debug, Clone, PartialEq)]
pub struct Tone {
    pub freqs: (f32, f32),
    pub cadence: &'static [(u32, u32)],
}

impl Tone {
    /// The DTMF tone of a key (ITU-T Q.23), continuous.
    pub fn dtmf(key: char) -> Option<Tone> {
        const LOW: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
        const HIGH: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
        const KEYS: [&str; 4] = ["123A", "456B", "789C", "*0#D"];
        let key = key.to_ascii_uppercase();
        let (row, col) = KEYS
            .iter()
            .enumerate()
            .find_map(|(r, keys)| keys.find(key).map(|c| (r, c)))?;
        Some(Tone {
            freqs: (LOW[row], HIGH[col]),
            cadence: &[],
        })
    }

    /// North American ring-back: 440 + 480 Hz, 2 s on, 4 s off.
    pub const RINGBACK_US: Tone = Tone {
        freqs: (440.0, 480.0),
        cadence: &[(2000, 4000)],
    };
    /// UK ring-back: 400 + 450 Hz, 0.4 on, 0.2 off, 0.4 on, 2 s off.
    pub const RINGBACK_UK: Tone = Tone {
        freqs: (400.0, 450.0),
        cadence: &[(400, 200), (400, 2000)],
    };
    /// North American busy: 480 + 620 Hz, 0.5 s on, 0.5 s off.
    pub const BUSY_US: Tone = Tone {
        freqs: (480.0, 620.0),
        cadence: &[(500, 500)],
    };

    /// Silence: no "on" period at all.
    pub const SILENCE: Tone = Tone {
        freqs: (0.0, 0.0),
        cadence: &[(0, 1000)],
    };

    /// A generator of this tone's frames.
    pub fn frames(&self) -> Frames {
        Frames {
            tone: self.clone(),
            sample: 0,
        }
    }
}

/// Frames of a tone, endless.
#[derive(Debug, Clone)]
pub struct Frames {
    tone: Tone,
    sample: u64,
}

impl Frames {
    /// Whether sample `n` of the cadence is in an "on" period.
    fn on(&self, n: u64) -> bool {
        let period: u64 = self
            .tone
            .cadence
            .iter()
            .map(|(a, b)| u64::from(a + b))
            .sum();
        if period == 0 {
            return true;
        }
        let mut at = (n * 1000 / RATE as u64) % period;
        for (on, off) in self.tone.cadence {
            let (on, off) = (u64::from(*on), u64::from(*off));
            if at < on {
                return true;
            }
            if at < on + off {
                return false;
            }
            at -= on + off;
        }
        false
    }

    /// The next 20 ms.
    pub fn next_frame(&mut self) -> [i16; FRAME] {
        let mut out = [0i16; FRAME];
        let (f1, f2) = self.tone.freqs;
        for (i, s) in out.iter_mut().enumerate() {
            let n = self.sample + i as u64;
            if self.on(n) {
                // Phase from the sample index, so nothing drifts.
                let t = (n % (RATE as u64 * 100)) as f32 / RATE;
                let v = LEVEL
                    * ((std::f32::consts::TAU * f1 * t).sin()
                        + (std::f32::consts::TAU * f2 * t).sin());
                *s = v as i16;
            }
        }
        self.sample += FRAME as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Power of `freq` in `samples` (Goertzel).
    fn power(samples: &[i16], freq: f32) -> f32 {
        let k = 2.0 * (std::f32::consts::TAU * freq / RATE).cos();
        let (mut s1, mut s2) = (0.0f32, 0.0f32);
        for &x in samples {
            let s0 = f32::from(x) + k * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        s1 * s1 + s2 * s2 - k * s1 * s2
    }

    #[test]
    fn dtmf_tones_carry_their_two_frequencies_only() {
        for key in "0123456789*#ABCD".chars() {
            let tone = Tone::dtmf(key).unwrap();
            let mut frames = tone.frames();
            let samples: Vec<i16> = (0..5).flat_map(|_| frames.next_frame()).collect();
            let (lo, hi) = tone.freqs;
            let on = power(&samples, lo).min(power(&samples, hi));
            for other in [697.0, 770.0, 852.0, 941.0, 1209.0, 1336.0, 1477.0, 1633.0] {
                if other != lo && other != hi {
                    assert!(
                        power(&samples, other) * 100.0 < on,
                        "{key}: {other} Hz leaks"
                    );
                }
            }
        }
        assert_eq!(Tone::dtmf('x'), None);
    }

    #[test]
    fn cadences_switch_on_and_off_on_time() {
        let mut busy = Tone::BUSY_US.frames();
        // 0.5 s on = 25 frames, then 25 silent.
        let frames: Vec<[i16; FRAME]> = (0..50).map(|_| busy.next_frame()).collect();
        assert!(frames[..25].iter().all(|f| f.iter().any(|s| *s != 0)));
        assert!(frames[25..].iter().all(|f| f.iter().all(|s| *s == 0)));
        let mut uk = Tone::RINGBACK_UK.frames();
        let frames: Vec<bool> = (0..150)
            .map(|_| uk.next_frame().iter().any(|s| *s != 0))
            .collect();
        // 0.4 on (20), 0.2 off (10), 0.4 on (20), 2 s off (100).
        assert!(frames[..20].iter().all(|on| *on));
        assert!(frames[20..30].iter().all(|on| !on));
        assert!(frames[30..50].iter().all(|on| *on));
        assert!(frames[50..150].iter().all(|on| !on));
    }
}
