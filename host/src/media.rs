//! The media engine's building blocks (SPEC T2): codecs and the secure
//! transport of call audio. Pure functions and per-stream state with no
//! I/O, so the media threads that will own the sockets (calls issue) can
//! call them without locks, and every rule here is tested offline.
//!
//! - [`g711`]: G.711 µ-law and A-law, to and from 16-bit linear PCM, and
//!   µ-law ↔ A-law transcoding for bridges whose legs disagree.
//! - [`srtp`]: SRTP and SRTCP (RFC 3711) with the SDES suites
//!   `AES_CM_128_HMAC_SHA1_80` and `_32` (RFC 4568): key derivation,
//!   protect, and unprotect with a replay window and constant-time tags.

pub mod g711;
pub mod srtp;
