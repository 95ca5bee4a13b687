//! Untrusted bytes on a SIP flow: framing, parsing and every header read
//! the door makes (digest answers and challenges included), then the SDP
//! of the body, must not panic (SPEC T2: a
//! hostile device cannot take the door down).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::sip::frame::{Frame, Framer};
use switchboard::sip::message::{Message, NameAddr, Uri};
use switchboard::identity::digest::{Credentials, client_answer};
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
        // Digest: a device's answer, and a provider's challenge to a trunk
        // (answered with the trunk's credentials).
        for h in ["Authorization", "Proxy-Authorization"] {
            for v in m.all(h) {
                let _ = Credentials::parse(v);
            }
        }
        for h in ["WWW-Authenticate", "Proxy-Authenticate"] {
            for v in m.all(h) {
                let _ = client_answer(v, "INVITE", "sip:+442079460018@example", "acct", "pw");
            }
        }
        // A REFER's Refer-To, as the door reads it (with an embedded
        // Replaces) and a Contact's parameters.
        let _ = switchboard::sip::refer_target(&m);
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
