//! Brute-force defence (SPEC I3): failed sign-ins are counted per account
//! name and per source address over a sliding hour. After a few free
//! failures each further attempt must wait twice as long as the last (up
//! to a minute); after `lock_after` failures in the hour the name is locked
//! for `lock_minutes`. Names are tracked whether or not an account exists,
//! so waiting and locking look the same for unknown names (no
//! enumeration). Addresses only slow down, never lock: a lock per address
//! would let one attacker shut out everyone behind the same NAT.
//!
//! The tracker lives in memory and is bounded; a real account's lock is
//! also written to its record by the caller, so it survives a restart.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use serde::Deserialize;

const HOUR_MS: u64 = 3_600_000;
/// Names or addresses tracked at most; beyond, idle entries are dropped.
const MAX_TRACKED: usize = 100_000;

/// Brute-force settings (`[identity]` in the server config).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures per account name before delays start.
    pub free_failures: u32,
    /// Failures per source address before delays start.
    pub address_free_failures: u32,
    /// Longest delay between attempts, in seconds.
    pub max_delay_secs: u64,
    /// Failures within an hour that lock the account (ASVS 2.2.1: at most
    /// 100 an hour; the default allows at most ~40).
    pub lock_after: u32,
    /// How long a lock lasts.
    pub lock_minutes: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 3,
            address_free_failures: 20,
            max_delay_secs: 60,
            lock_after: 10,
            lock_minutes: 15,
        }
    }
}

#[derive(Debug, Default)]
struct Track {
    failures: VecDeque<u64>,
    locked_until_ms: u64,
}

impl Track {
    fn expire(&mut self, now: u64) {
        while self.failures.front().is_some_and(|t| t + HOUR_MS <= now) {
            self.failures.pop_front();
        }
    }

    fn next_allowed(&self, free: u32, max_delay_ms: u64) -> u64 {
        let n = self.failures.len() as u32;
        let Some(last) = self.failures.back() else {
            return 0;
        };
        if n < free {
            return 0;
        }
        let doublings = (n - free).min(20);
        last + (1000u64 << doublings).min(max_delay_ms)
    }
}

/// The unit an address is counted by: the address for IPv4, its /64 for
/// IPv6 (one host usually holds a whole /64).
fn network(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => a,
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

/// Keeps a table under `MAX_TRACKED`: drops what has expired, then (rarely,
/// in one pass) the tenth with the oldest last failure, keeping locks.
fn make_room<K: Clone + Eq + std::hash::Hash>(table: &mut HashMap<K, Track>, now: u64) {
    if table.len() < MAX_TRACKED {
        return;
    }
    table.retain(|_, t| {
        t.expire(now);
        !t.failures.is_empty() || t.locked_until_ms > now
    });
    if table.len() < MAX_TRACKED * 9 / 10 {
        return;
    }
    let mut by_age: Vec<(u64, K)> = table
        .iter()
        .filter(|(_, t)| t.locked_until_ms <= now)
        .map(|(k, t)| (t.failures.back().copied().unwrap_or(0), k.clone()))
        .collect();
    by_age.sort_by_key(|(last, _)| *last);
    for (_, k) in by_age.into_iter().take(MAX_TRACKED / 10) {
        table.remove(&k);
    }
}

/// Whether an attempt may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Try again after this many milliseconds.
    Wait(u64),
}

/// The tracker.
#[derive(Debug, Default)]
pub struct Throttle {
    config: ThrottleConfig,
    names: HashMap<String, Track>,
    addresses: HashMap<IpAddr, Track>,
}

impl Throttle {
    /// A tracker with `config`.
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            ..Throttle::default()
        }
    }

    /// The settings.
    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// Whether an attempt for `name` from `addr` may be made at `now`.
    pub fn gate(&mut self, name: &str, addr: Option<IpAddr>, now: u64) -> Gate {
        let max = self.config.max_delay_secs * 1000;
        let mut until = 0;
        if let Some(t) = self.names.get_mut(name) {
            t.expire(now);
            until = until.max(t.next_allowed(self.config.free_failures, max));
        }
        if let Some(a) = addr
            && let Some(t) = self.addresses.get_mut(&network(a))
        {
            t.expire(now);
            until = until.max(t.next_allowed(self.config.address_free_failures, max));
        }
        if until > now {
            Gate::Wait(until - now)
        } else {
            Gate::Open
        }
    }

    /// Whether `name` is locked at `now` (known or not).
    pub fn is_locked(&self, name: &str, now: u64) -> bool {
        self.names
            .get(name)
            .is_some_and(|t| t.locked_until_ms > now)
    }

    /// Records a failure; returns the lock's end when this failure locked
    /// the name.
    pub fn failure(&mut self, name: &str, addr: Option<IpAddr>, now: u64) -> Option<u64> {
        // Full tables make room (never stop tracking: a flood of names
        // must not switch the defence off for the next one).
        make_room(&mut self.names, now);
        make_room(&mut self.addresses, now);
        if let Some(a) = addr {
            let t = self.addresses.entry(network(a)).or_default();
            t.expire(now);
            t.failures.push_back(now);
        }
        let t = self.names.entry(name.to_string()).or_default();
        t.expire(now);
        t.failures.push_back(now);
        if t.failures.len() as u32 >= self.config.lock_after && t.locked_until_ms <= now {
            t.locked_until_ms = now + self.config.lock_minutes * 60_000;
            // A fresh start after the lock: the lock is the penalty.
            t.failures.clear();
            return Some(t.locked_until_ms);
        }
        None
    }

    /// A successful sign-in clears the name's failures (not the address's).
    pub fn success(&mut self, name: &str) {
        self.names.remove(name);
    }

    /// Lifts a lock (an admin unlocked the account).
    pub fn unlock(&mut self, name: &str) {
        self.names.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_lock() {
        let mut t = Throttle::new(ThrottleConfig::default());
        let addr: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        let mut now = 1_000_000;
        for _ in 0..3 {
            assert_eq!(t.gate("acme/alice", addr, now), Gate::Open);
            assert_eq!(t.failure("acme/alice", addr, now), None);
            now += 10;
        }
        // 3 failures: the 4th attempt waits 1 s, then 2 s, 4 s...
        assert_eq!(t.gate("acme/alice", addr, now), Gate::Wait(990));
        let mut waits = Vec::new();
        let mut locked = None;
        for _ in 0..7 {
            if let Gate::Wait(ms) = t.gate("acme/alice", addr, now) {
                waits.push(ms);
                now += ms;
            }
            locked = t.failure("acme/alice", addr, now);
        }
        assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
        assert!(locked.is_some(), "10th failure locks");
        assert!(t.is_locked("acme/alice", now));
        assert!(!t.is_locked("acme/alice", now + 15 * 60_000 + 1));
        // Another name from another address is unaffected.
        assert_eq!(
            t.gate("acme/bob", Some("192.0.2.2".parse().unwrap()), now),
            Gate::Open
        );
    }

    #[test]
    fn addresses_slow_down_across_names() {
        let mut t = Throttle::new(ThrottleConfig::default());
        let addr: Option<IpAddr> = Some("198.51.100.7".parse().unwrap());
        let now = 5_000_000;
        for i in 0..20 {
            t.failure(&format!("acme/user{i}"), addr, now);
        }
        assert!(matches!(t.gate("acme/fresh", addr, now), Gate::Wait(_)));
        assert_eq!(t.gate("acme/fresh", None, now), Gate::Open);
        // Failures older than an hour are forgotten.
        assert_eq!(t.gate("acme/fresh", addr, now + HOUR_MS), Gate::Open);
        // Other addresses of the same IPv6 /64 count together.
        let a1: Option<IpAddr> = Some("2001:db8:1:2::1".parse().unwrap());
        let a2: Option<IpAddr> = Some("2001:db8:1:2:ffff::9".parse().unwrap());
        for i in 0..20 {
            t.failure(&format!("acme/v6-{i}"), a1, now);
        }
        assert!(matches!(t.gate("acme/other", a2, now), Gate::Wait(_)));
    }

    #[test]
    fn a_flood_of_names_does_not_switch_tracking_off() {
        let mut t = Throttle::new(ThrottleConfig::default());
        let now = 9_000_000;
        for i in 0..MAX_TRACKED + 10 {
            t.failure(&format!("flood-{i}"), None, now);
        }
        assert!(t.names.len() <= MAX_TRACKED);
        for _ in 0..10 {
            t.failure("acme/victim", None, now);
        }
        assert!(t.is_locked("acme/victim", now));
    }
}
