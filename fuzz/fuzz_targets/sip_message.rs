//! Untrusted bytes on a SIP flow: framing, parsing and every header read
//! the door makes, then the SDP of the body, must not panic (SPEC T2: a
//! hostile device cannot take the door down).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::sip::frame::{Frame, Framer};
use switchboard::sip::message::{Message, NameAddr, Uri};
use switchboard::sip::sdp;

fuzz_target!(|data: &[u8]| {
    let mut framer = Framer::default();
    framer.push(data);
    while let Ok(Some(frame)) = framer.next_frame() {
        let Frame::Message(bytes) = frame else { continue };
        let Ok(m) = Message::parse(&bytes) else { continue };
        let _ = (m.from(), m.to(), m.cseq(), m.branch(), m.via(), m.list("Contact"));
        if let Some(u) = m.uri() {
            let _ = Uri::parse(u);
        }
        for c in m.list("Contact") {
            let _ = NameAddr::parse(c);
        }
        let _ = m.response(200, "OK", Some("t")).to_bytes();
        if let Ok(text) = std::str::from_utf8(&m.body)
            && let Ok(offer) = sdp::parse(text)
        {
            let policy = sdp::Policy {
                srtp_required: false,
                over_tls: true,
                allow_loopback: true,
                codecs: vec![sdp::Codec::Pcmu, sdp::Codec::Pcma],
            };
            let _ = sdp::choose(&offer, &policy);
        }
    }
});
