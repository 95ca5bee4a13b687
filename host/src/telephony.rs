//! Call control (SPEC T1, T2): what the host decides about calls, apart
//! from how SIP and RTP carry them. This first part is the dialing policy;
//! call legs, bridges and events come with the rest of the calls issue.
//!
//! - [`policy`]: every number a call would reach outside the tenant is
//!   normalised to E.164, classified, and allowed or refused (toll fraud
//!   is a security bug: T1).

pub mod policy;
