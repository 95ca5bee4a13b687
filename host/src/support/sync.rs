//! Lock poisoning, decided once. A lock is poisoned only when a thread
//! panicked while holding it; every structure the host guards stays
//! consistent between statements (caches, tables, counters), so the host
//! keeps going with the contents rather than spreading the panic.

use std::sync::{LockResult, PoisonError};

/// `.recover()` on a lock result: the guard, poisoned or not.
pub trait Recover<G> {
    /// The guard, whether or not a panicking thread poisoned the lock.
    fn recover(self) -> G;
}

impl<G> Recover<G> for LockResult<G> {
    fn recover(self) -> G {
        self.unwrap_or_else(PoisonError::into_inner)
    }
}
