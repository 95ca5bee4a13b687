//! The SIP door (SPEC T2): how devices and trunks reach the host's
//! telephony. This first part is its SDP offer/answer: the transports,
//! registrar and B2BUA come with the rest of the calls issue.
//!
//! - [`frame`]: cut a TLS/TCP byte stream into SIP messages, with limits
//!   and keep-alives (the door owns its sockets and hands whole messages
//!   to the transaction layer).
//! - [`sdp`]: parse an offer, choose a codec and an SRTP suite under the
//!   leg's policy, and write a fresh answer with a fresh key (the B2BUA
//!   re-originates every SDP; no key crosses legs).

pub mod frame;
pub mod sdp;
