//! Leaf helpers every layer may use: the one wall clock, encodings and
//! digests, lock poisoning decided once, and the file helpers for secrets
//! in the data folder. Nothing here imports another module of the crate.

pub mod clock;
pub mod encoding;
pub(crate) mod fsutil;
pub mod net;
pub mod sync;
pub mod task;
pub mod thread;
