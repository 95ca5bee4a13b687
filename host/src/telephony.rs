//! Call control (SPEC T1, T2): what the host decides about calls, apart
//! from how SIP and RTP carry them. Plugins own call legs through the
//! calls capabilities; the host owns every leg's media and signalling.
//!
//! - [`policy`]: every number a call would reach outside the tenant is
//!   normalised to E.164, classified, and allowed or refused (toll fraud
//!   is a security bug: T1).
//! - [`legs`]: the leg table, a state machine without I/O: owners,
//!   operations (plays, collects, bridges), per-leg event queues with
//!   in-order, one-at-a-time delivery, and the watchdog.
//! - [`records`]: the call record (CDR) of each leg, written as it ends.
//! - [`signalling`]: what call control asks of SIP (or of the harness's
//!   synthetic peers) and what they tell it.
//! - [`switch`]: the service, [`Telephony`]: its own thread drives the
//!   table, the media engine and the signalling side.

pub mod legs;
pub mod policy;
pub mod records;
pub mod signalling;
pub mod switch;

pub use switch::{Telephony, TelephonyConfig, TelephonyError};
