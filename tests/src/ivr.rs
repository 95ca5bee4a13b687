//! What a caller hears, for the voice services' tests and bench: library
//! prompts recognised frame for frame at a test phone (the engine plays
//! clips frame-aligned, so a prompt's first frame of speech arrives byte
//! for byte), keys pressed in answer, and WAV files to upload.

use std::time::{Duration, Instant};

use switchboard::harness::calls::Phone;

/// The first 20 ms frame of speech (not µ-law silence) of library prompt
/// `name`.
pub fn first_frame(name: &str) -> Vec<u8> {
    switchboard::media::prompts::get(name)
        .unwrap_or_else(|| panic!("no prompt {name} in the library"))
        .chunks(160)
        .find(|f| f.iter().any(|&b| b != 0xff))
        .unwrap_or_else(|| panic!("prompt {name} is silence"))
        .to_vec()
}

/// Waits (blocking, up to `limit`) until `phone` receives `frame`.
pub fn wait_frame(phone: &Phone, frame: &[u8], limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if phone.next_audio(end - Instant::now(), 0).as_deref() == Some(frame) {
            return true;
        }
    }
    false
}

/// Waits (up to `limit`) until `phone` hears library prompt `name`.
pub async fn hears(phone: &Phone, name: &str) -> bool {
    let frame = first_frame(name);
    tokio::task::block_in_place(|| wait_frame(phone, &frame, WAIT))
}

/// How long a test waits for a prompt.
pub const WAIT: Duration = Duration::from_secs(15);

/// Presses `keys` once `phone` hears prompt `name` (cutting it short);
/// panics if it never does.
pub async fn answer(phone: &mut Phone, name: &str, keys: &str) {
    assert!(hears(phone, name).await, "no {name} prompt");
    tokio::task::block_in_place(|| phone.dial_keys(keys)).expect("keys sent");
}

/// A WAV file: 16-bit PCM at `rate` Hz with `channels`, `ms` long, every
/// sample `value`.
pub fn wav(rate: u32, channels: u16, ms: u32, value: i16) -> Vec<u8> {
    let frames = rate as usize * ms as usize / 1000;
    let data = frames * channels as usize * 2;
    let mut out = Vec::with_capacity(44 + data);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    out.extend_from_slice(&(channels * 2).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data as u32).to_le_bytes());
    for _ in 0..frames * channels as usize {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// Waits (up to `limit`) until `phone` hears a whole frame of one level
/// (`linear`, as µ-law): an uploaded greeting or prompt of a constant
/// level, as the tests make them.
pub async fn hears_level(phone: &Phone, linear: i16, limit: Duration) -> bool {
    let code = switchboard::media::g711::linear_to_ulaw(linear);
    let end = Instant::now() + limit;
    tokio::task::block_in_place(|| {
        while Instant::now() < end {
            match phone.next_audio(end - Instant::now(), 0) {
                Some(f) if f.iter().all(|&b| b == code) => return true,
                Some(_) => {}
                None => return false,
            }
        }
        false
    })
}
