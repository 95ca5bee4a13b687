//! Audio files a plugin takes from users (a voicemail greeting, an
//! attendant's prompt): a WAV file is checked and converted to what the
//! host plays and records, 8 kHz mono 16-bit PCM ([`wav_8k`]), so a
//! plugin can keep it in a blob and play it (`calls::Prompt::Blob`).
//!
//! Taken: PCM 8 or 16 bit (also as `WAVE_FORMAT_EXTENSIBLE`), µ-law and
//! A-law; mono or stereo (averaged); 8 to 48 kHz (resampled: each output
//! sample is the mean of the input samples in its window, which keeps
//! what is above 4 kHz from folding into speech). Anything else, a
//! truncated or inconsistent file, or one longer than the cap, is refused
//! with a reason; nothing is stored then.

/// Why a file is refused, in words for the uploader.
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
    // Positions in u64: a chunk length near 4 GiB cannot wrap them on a
    // 32-bit guest, and every chunk moves `at` forward by at least 8.
    let size = file.len() as u64;
    let mut at: u64 = 12;
    let mut format: Option<(Coding, u16, u32)> = None;
    while at + 8 <= size {
        let i = at as usize;
        let id = &file[i..i + 4];
        let len = u64::from(u32::from_le_bytes([
            file[i + 4],
            file[i + 5],
            file[i + 6],
            file[i + 7],
        ]));
        let body_at = at + 8;
        let body_end = body_at + len;
        if id == b"data" {
            let Some((coding, channels, rate)) = format else {
                return refuse("the data chunk comes before the fmt chunk");
            };
            // A streamed file may say 0 or too much: take what is there.
            let end = body_end.min(size) as usize;
            return convert(&file[body_at as usize..end], coding, channels, rate, max_ms);
        }
        if body_end > size {
            return refuse("a chunk is longer than the file");
        }
        if id == b"fmt " {
            if len < 16 {
                return refuse("the fmt chunk is truncated");
            }
            format = Some(fmt(&file[body_at as usize..body_end as usize])?);
        }
        // Chunks are padded to even lengths.
        at = body_end + (len & 1);
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
    if out_len == 0 {
        // Less than one sample at 8 kHz (found by fuzzing).
        return refuse("the file holds no audio");
    }
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
    let mut out = wav_header((samples.len() * 2) as u32);
    out.reserve(samples.len() * 2);
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// The 44-byte header of an 8 kHz mono 16-bit WAV file holding
/// `data_len` bytes of samples; `u32::MAX` for a stream whose length is
/// not known yet (every size all ones, as streams write them).
pub fn wav_header(data_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(44);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
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
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stream_header_has_every_size_all_ones() {
        let h = super::wav_header(u32::MAX);
        assert_eq!(h.len(), 44);
        assert_eq!(&h[4..8], &u32::MAX.to_le_bytes());
        assert_eq!(&h[40..44], &u32::MAX.to_le_bytes());
        let w = super::wav_8k(&[1, -1]);
        assert_eq!(
            (&w[4..8], &w[40..44]),
            (&40u32.to_le_bytes()[..], &4u32.to_le_bytes()[..])
        );
        assert_eq!(&w[..44], &super::wav_header(4)[..]);
    }

    use super::*;

    fn wav(tag: u16, bits: u16, channels: u16, rate: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        let align = channels * bits / 8;
        out.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
        out.extend_from_slice(&align.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        // A chunk to skip, odd-sized (padded), before the data.
        out.extend_from_slice(b"LIST");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(b"abc\0");
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn g711_decodes_as_the_standard_says() {
        // µ-law: 0xff and 0x7f are ±0, 0x00 the loudest negative.
        assert_eq!(ulaw(0xff), 0);
        assert_eq!(ulaw(0x7f), 0);
        assert_eq!(ulaw(0x00), -32124);
        assert_eq!(ulaw(0x80), 32124);
        // A-law: 0xd5 and 0x55 are the smallest steps, 0x2a the loudest.
        assert_eq!(alaw(0xd5), 8);
        assert_eq!(alaw(0x55), -8);
        assert_eq!(alaw(0xaa), 32256);
        assert_eq!(alaw(0x2a), -32256);
    }

    #[test]
    fn stereo_at_16_khz_becomes_8_khz_mono_by_averaging() {
        // Left 1000, right 3000: mono 2000; 16 kHz pairs average to one.
        let mut data = Vec::new();
        for _ in 0..1600 {
            data.extend_from_slice(&1000i16.to_le_bytes());
            data.extend_from_slice(&3000i16.to_le_bytes());
        }
        let got = to_8k_mono(&wav(1, 16, 2, 16_000, &data), 60_000).unwrap();
        assert_eq!(got.len(), 800);
        assert!(got.iter().all(|&s| s == 2000));
        // µ-law, A-law and 8-bit PCM at 8 kHz are decoded code by code.
        assert_eq!(
            to_8k_mono(&wav(7, 8, 1, 8000, &[0x80; 80]), 60_000).unwrap(),
            vec![32124; 80]
        );
        assert_eq!(
            to_8k_mono(&wav(6, 8, 1, 8000, &[0xd5; 80]), 60_000).unwrap(),
            vec![8; 80]
        );
        assert_eq!(
            to_8k_mono(&wav(1, 8, 1, 8000, &[0x80; 80]), 60_000).unwrap(),
            vec![0; 80]
        );
        // 44.1 kHz: 441 input samples make 80 output ones.
        let data: Vec<u8> = (0..441).flat_map(|_| 500i16.to_le_bytes()).collect();
        let got = to_8k_mono(&wav(1, 16, 1, 44_100, &data), 60_000).unwrap();
        assert_eq!(got.len(), 80);
        assert!(got.iter().all(|&s| s == 500));
        // What comes out is a WAV the host plays.
        let file = wav_8k(&got);
        assert_eq!(file.len(), 44 + 160);
        assert_eq!(to_8k_mono(&file, 60_000).unwrap(), got);
    }

    #[test]
    fn anything_else_is_refused_with_a_reason_and_never_panics() {
        let ok = wav(1, 16, 1, 8000, &[0; 1600]);
        let refused = |file: &[u8]| to_8k_mono(file, 60_000).unwrap_err().0;
        assert!(refused(b"").contains("not a WAV"));
        assert!(refused(b"RIFF\0\0\0\0WAVX").contains("not a WAV"));
        assert!(refused(&wav(3, 32, 1, 8000, &[0; 64])).contains("format 3"));
        assert!(refused(&wav(1, 24, 1, 8000, &[0; 60])).contains("24-bit"));
        assert!(refused(&wav(1, 16, 6, 8000, &[0; 64])).contains("channels"));
        assert!(refused(&wav(1, 16, 1, 96_000, &[0; 64])).contains("96000 Hz"));
        assert!(refused(&wav(1, 16, 1, 8000, &[])).contains("no audio"));
        // One frame at 48 kHz is less than one sample at 8 kHz.
        assert!(refused(&wav(1, 16, 1, 48_000, &[1, 0])).contains("no audio"));
        assert!(to_8k_mono(&ok, 50).unwrap_err().0.contains("at most"));
        // Every truncation of a good file is refused or read in part.
        for cut in 0..ok.len() {
            let _ = to_8k_mono(&ok[..cut], 60_000);
        }
        // A chunk claiming 4 GiB (odd, as if to wrap the position past
        // the padding byte), a data chunk before fmt.
        let mut huge = ok.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(refused(&huge).contains("longer than the file"));
        let mut list = ok.clone();
        list[40..44].copy_from_slice(&(u32::MAX - 47).to_le_bytes());
        assert!(refused(&list).contains("longer than the file"));
        let mut early = b"RIFF\0\0\0\0WAVEdata\x04\0\0\0\0\0\0\0".to_vec();
        early.extend_from_slice(&ok[12..]);
        assert!(refused(&early).contains("before the fmt"));
    }
}
