//! Uploaded greetings (SPEC V2): a WAV file is checked and converted to
//! what the host plays, 8 kHz mono 16-bit PCM.
//!
//! Taken: PCM 8 or 16 bit (also as `WAVE_FORMAT_EXTENSIBLE`), µ-law and
//! A-law; mono or stereo (averaged); 8 to 48 kHz (resampled: each output
//! sample is the mean of the input samples in its window, which keeps
//! what is above 4 kHz from folding into speech). Anything else, a
//! truncated or inconsistent file, or one longer than the cap, is refused
//! with a reason; nothing is stored then.

/// Why a file is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub String);

fn refuse<T>(why: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(why.into()))
}

/// How samples are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Pcm8,
    Pcm16,
    Ulaw,
    Alaw,
}

/// The samples of `file` as 8 kHz mono 16-bit, at most `max_ms` long.
pub fn to_8k_mono(file: &[u8], max_ms: u64) -> Result<Vec<i16>, Refused> {
    if file.len() < 12 || &file[0..4] != b"RIFF" || &file[8..12] != b"WAVE" {
        return refuse("not a WAV file (RIFF/WAVE)");
    }
    let mut at = 12;
    let mut format: Option<(Coding, u16, u32)> = None;
    while at + 8 <= file.len() {
        let id = &file[at..at + 4];
        let len = u32::from_le_bytes([file[at + 4], file[at + 5], file[at + 6], file[at + 7]]);
        let body_at = at + 8;
        let Some(body_end) = body_at.checked_add(len as usize) else {
            return refuse("a chunk is longer than the file");
        };
        if id == b"fmt " {
            if body_end > file.len() || len < 16 {
                return refuse("the fmt chunk is truncated");
            }
            format = Some(fmt(&file[body_at..body_end])?);
        } else if id == b"data" {
            let Some((coding, channels, rate)) = format else {
                return refuse("the data chunk comes before the fmt chunk");
            };
            // A streamed file may say 0 or too much: take what is there.
            let end = body_end.min(file.len());
            return convert(&file[body_at..end], coding, channels, rate, max_ms);
        }
        // Chunks are padded to even lengths.
        at = body_end + (len as usize & 1);
    }
    refuse("no data chunk")
}

fn fmt(b: &[u8]) -> Result<(Coding, u16, u32), Refused> {
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let mut tag = u16_at(0);
    let channels = u16_at(2);
    let rate = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let bits = u16_at(14);
    if tag == 0xFFFE {
        // WAVE_FORMAT_EXTENSIBLE: the sub-format GUID's first two bytes.
        if b.len() < 26 {
            return refuse("the extensible fmt chunk is truncated");
        }
        tag = u16_at(24);
    }
    let coding = match (tag, bits) {
        (1, 8) => Coding::Pcm8,
        (1, 16) => Coding::Pcm16,
        (7, 8) => Coding::Ulaw,
        (6, 8) => Coding::Alaw,
        (1, _) => return refuse(format!("{bits}-bit PCM is not taken (8 or 16)")),
        _ => {
            return refuse(format!(
                "audio format {tag} is not taken (PCM, µ-law or A-law)"
            ));
        }
    };
    if !(1..=2).contains(&channels) {
        return refuse(format!("{channels} channels (mono or stereo only)"));
    }
    if !(8000..=48_000).contains(&rate) {
        return refuse(format!("{rate} Hz (8 to 48 kHz only)"));
    }
    Ok((coding, channels, rate))
}

fn convert(
    data: &[u8],
    coding: Coding,
    channels: u16,
    rate: u32,
    max_ms: u64,
) -> Result<Vec<i16>, Refused> {
    let width = if coding == Coding::Pcm16 { 2 } else { 1 };
    let frame = width * channels as usize;
    let frames = data.len() / frame;
    let ms = frames as u64 * 1000 / u64::from(rate);
    if ms > max_ms {
        return refuse(format!(
            "the greeting is {} s long; at most {} s",
            ms.div_ceil(1000),
            max_ms / 1000
        ));
    }
    if frames == 0 {
        return refuse("the file holds no audio");
    }
    let sample = |i: usize| -> i32 {
        let mut sum = 0i32;
        for c in 0..channels as usize {
            let at = i * frame + c * width;
            sum += i32::from(match coding {
                Coding::Pcm8 => (i16::from(data[at]) - 128) << 8,
                Coding::Pcm16 => i16::from_le_bytes([data[at], data[at + 1]]),
                Coding::Ulaw => ulaw(data[at]),
                Coding::Alaw => alaw(data[at]),
            });
        }
        sum / i32::from(channels)
    };
    let out_len = (frames as u64 * 8000 / u64::from(rate)) as usize;
    let mut out = Vec::with_capacity(out_len);
    for k in 0..out_len {
        let from = (k as u64 * u64::from(rate) / 8000) as usize;
        let to = (((k as u64 + 1) * u64::from(rate) / 8000) as usize).clamp(from + 1, frames);
        let sum: i64 = (from..to).map(|i| i64::from(sample(i))).sum();
        out.push((sum / (to - from) as i64) as i16);
    }
    Ok(out)
}

/// G.711 µ-law to linear.
fn ulaw(b: u8) -> i16 {
    let b = !b;
    let t = ((i32::from(b & 0x0f) << 3) + 0x84) << ((b >> 4) & 7);
    (if b & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// G.711 A-law to linear.
fn alaw(b: u8) -> i16 {
    let b = b ^ 0x55;
    let seg = (b >> 4) & 7;
    let mut t = i32::from(b & 0x0f) << 4;
    t = match seg {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (seg - 1),
    };
    (if b & 0x80 != 0 { t } else { -t }) as i16
}

/// A WAV file of 8 kHz mono 16-bit `samples` (what the host plays).
pub fn wav_8k(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}
