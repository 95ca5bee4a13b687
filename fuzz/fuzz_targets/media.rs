//! Untrusted media packets (RTP, RTCP, RFC 4733 events, SRTP and SRTCP)
//! from any address a call's media port hears: parsing and unprotecting
//! must not panic, and a refused packet must leave the context usable
//! (SPEC T2). Part of the input is sent through a real SRTP sender first,
//! so the receiver's index estimation, replay window and decryption are
//! reached, not only the tag check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::media::srtp::{MasterKey, Srtp, Suite};
use switchboard::media::{dtmf, rtcp, rtp};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let suite = if mode & 1 == 0 {
        Suite::AesCm128HmacSha1_80
    } else {
        Suite::AesCm128HmacSha1_32
    };
    let key = MasterKey::from_bytes(&[9u8; 30]).expect("a 30-byte master key");
    let mut sender = Srtp::new(suite, &key);
    let mut receiver = Srtp::new(suite, &key);
    let mut events = dtmf::Detector::default();
    // Chunks of the input, each at most 1,500 bytes (an MTU).
    for chunk in rest.chunks(1500) {
        if let Ok(p) = rtp::parse(chunk) {
            let _ = events.feed(p.timestamp, p.payload);
        }
        let _ = rtcp::parse(chunk);
        let _ = dtmf::Event::parse(chunk);
        // As received: forged or damaged SRTP and SRTCP.
        let mut raw = chunk.to_vec();
        let _ = receiver.unprotect_rtp(&mut raw);
        let mut raw = chunk.to_vec();
        let _ = receiver.unprotect_rtcp(&mut raw);
        // Through a real sender, then damaged where the input says.
        let mut sealed = chunk.to_vec();
        if sender.protect_rtp(&mut sealed).is_ok() {
            if mode & 2 != 0 && !sealed.is_empty() {
                let at = usize::from(mode) % sealed.len();
                sealed[at] ^= 0x5a;
            }
            let mut copy = sealed.clone();
            let _ = receiver.unprotect_rtp(&mut copy);
            // A replay of the same packet.
            let _ = receiver.unprotect_rtp(&mut sealed);
        }
        let mut sealed = chunk.to_vec();
        if sender.protect_rtcp(&mut sealed).is_ok() {
            let _ = receiver.unprotect_rtcp(&mut sealed);
        }
    }
});
