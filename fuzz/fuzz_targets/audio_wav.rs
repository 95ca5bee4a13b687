//! Untrusted WAV files (a voicemail greeting or an attendant prompt a user
//! uploads): checked and converted by `switchboard_sdk::audio`; nothing may
//! panic, loop or allocate beyond the input, and whatever it takes comes
//! out as a WAV file it takes again, unchanged (SPEC V2, V4).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_sdk::audio;

fuzz_target!(|data: &[u8]| {
    if let Ok(samples) = audio::to_8k_mono(data, 600_000) {
        let file = audio::wav_8k(&samples);
        let again = audio::to_8k_mono(&file, 600_000).expect("our own WAV is taken");
        assert_eq!(again, samples);
    }
});
