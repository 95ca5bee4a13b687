//! Token-bucket rate limits (SPEC K5, N1): one bucket per tenant and one
//! per source address (IPv6 by /64, so one host cannot rotate through its
//! addresses). A refused request learns when a token will be there
//! (`Retry-After`). Tables are bounded: full, idle buckets are forgotten
//! first; when even that is not enough, new keys share one overflow bucket
//! (strict, never fail-open).

use crate::support::sync::Recover as _;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys one limiter tracks before sharing an overflow bucket.
const MAX_KEYS: usize = 100_000;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A rate limiter over keys of type `K`.
pub struct RateLimiter<K> {
    table: Mutex<HashMap<K, Bucket>>,
    overflow: Mutex<Option<Bucket>>,
}

impl<K: std::hash::Hash + Eq + Clone> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter {
            table: Mutex::new(HashMap::new()),
            overflow: Mutex::new(None),
        }
    }
}

fn take(bucket: &mut Bucket, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
    bucket.at = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        Ok(())
    } else {
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
    }
}

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    /// Takes one token from `key`'s bucket (`rate` per second, `burst`
    /// at most); on refusal, how long until one is there.
    pub fn check(&self, key: &K, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let rate = rate.max(0.001);
        let burst = burst.max(1.0);
        let mut table = self.table.lock().recover();
        if let Some(b) = table.get_mut(key) {
            return take(b, rate, burst, now);
        }
        if table.len() >= MAX_KEYS {
            // Forget buckets that have refilled: they hold no information.
            table.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        if table.len() >= MAX_KEYS {
            drop(table);
            let mut o = self.overflow.lock().recover();
            let b = o.get_or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            return take(b, rate, burst, now);
        }
        let b = table.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        take(b, rate, burst, now)
    }
}

/// The key of a source address: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = RateLimiter::<u32>::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.check(&1, 5.0, 10.0, t0).is_ok());
        }
        let wait = l.check(&1, 5.0, 10.0, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(
            l.check(&2, 5.0, 10.0, t0).is_ok(),
            "other keys are unaffected"
        );
        assert!(
            l.check(&1, 5.0, 10.0, t0 + Duration::from_millis(200))
                .is_ok()
        );
        assert!(
            l.check(&1, 5.0, 10.0, t0 + Duration::from_millis(200))
                .is_err()
        );
    }

    #[test]
    fn ipv6_hosts_share_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(address_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
