//! Untrusted SDP (an offer or an answer from a device or a trunk): parse,
//! choose under every policy the door uses, answer, and read it as an
//! answer to our offer; nothing may panic (SPEC T2).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::media::srtp::{MasterKey, Suite};
use switchboard::sip::sdp;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(session) = sdp::parse(text) else {
        return;
    };
    let key = MasterKey::from_bytes(&[7u8; 30]).expect("a 30-byte master key");
    for (srtp_required, over_tls, allow_loopback) in [
        (true, true, false),
        (false, false, true),
        (false, true, true),
    ] {
        let policy = sdp::Policy {
            srtp_required,
            over_tls,
            allow_loopback,
            codecs: vec![sdp::Codec::Pcmu, sdp::Codec::Pcma],
        };
        if let Ok(choice) = sdp::choose(&session, &policy) {
            let _ = choice
                .answer(
                    &session,
                    sdp::Local {
                        addr: "192.0.2.1:20000".parse().expect("an address"),
                        session_id: 1,
                        session_version: 2,
                    },
                )
                .sdp;
        }
        let _ = sdp::read_answer(&session, &policy, Some(Suite::AesCm128HmacSha1_80), Some(&key));
        let _ = sdp::read_answer(&session, &policy, None, None);
    }
});
