//! Throttling of access-code guessing (SPEC M2). Every wrong code counts
//! against the client's address (an IPv6 client's whole /64, which one
//! machine usually holds), against the signed-in user when there is one,
//! and against the code tried; past a limit within the window the answer
//! is `429 too_many_attempts` with `Retry-After`, whatever the code. Every
//! wrong code is audited with the address. A code keyed on a phone
//! (dial-in) counts against the calling number, the code, and all phone
//! callers of the tenant together (100 per window: caller ids from
//! outside can be forged). Counter keys are HMACs (the addresses and codes
//! are not in key names); stale counters are swept by a timer.
//!
//! A leaf: `live.rs` counts attempts through [`Attempt`]; `lib.rs` sends
//! the `sweep-guesses` timer to [`sweep`].

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_sdk::http::{self, ApiError};
use switchboard_sdk::{Response, audit, crypto, kv, timers, tx};

/// Failed attempts allowed per window, per source address, per user and
/// per code.
const PER_ADDRESS: u32 = 10;
const PER_USER: u32 = 10;
const PER_CODE: u32 = 20;
/// Wrong codes keyed by all phone callers of a tenant together.
const PER_PHONES: u32 = 100;
/// The throttling window.
const WINDOW_MS: u64 = 15 * 60 * 1000;
const SWEEP_MARK: &str = "g-sweep";
/// Counters deleted per sweep run.
const SWEEP_BATCH: usize = 500;

/// Failures within the current window.
#[derive(Serialize, Deserialize, Clone)]
struct Count {
    window_start: u64,
    failures: u32,
}

/// The counters one attempt is checked against.
pub struct Attempt {
    buckets: Vec<(String, u32, Count)>,
    address: String,
}

/// The bucket of an address: IPv4 whole, IPv6 by its /64.
fn address_bucket(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        // No address (a call from the host's own tools): one shared bucket.
        Err(_) => "unknown".to_string(),
    }
}

fn key(kind: &str, value: &str) -> Result<String, ApiError> {
    let mac = crypto::hmac_sha256("guess", format!("{kind}:{value}").as_bytes())?;
    Ok(format!("g/{kind}/{}", crypto::hex(&mac[..16])))
}

fn load(key: &str, now: u64) -> Result<Count, ApiError> {
    Ok(kv::get_json::<Count>(key)?
        .filter(|c| now < c.window_start + WINDOW_MS)
        .unwrap_or(Count {
            window_start: now,
            failures: 0,
        }))
}

impl Attempt {
    /// Checks an attempt with `code` from `address` (by `user`, if signed
    /// in). `Err` carries the 429 answer when a limit is reached.
    pub fn check(address: &str, user: Option<&str>, code: &str) -> Result<Attempt, Response> {
        let mut wanted = vec![("a", address_bucket(address), PER_ADDRESS)];
        if let Some(u) = user {
            wanted.push(("u", u.to_string(), PER_USER));
        }
        wanted.push(("c", code.to_string(), PER_CODE));
        Attempt::with(wanted, address)
    }

    /// Checks a code keyed by a phone caller who dialled in: counted per
    /// calling number (as a signed-in user is), per code (the same
    /// counters as the web's), and for all phone callers of the tenant
    /// together, since a caller id from outside proves nothing.
    pub fn check_phone(caller: &str, code: &str) -> Result<Attempt, Response> {
        let wanted = vec![
            ("p", caller.to_string(), PER_USER),
            ("c", code.to_string(), PER_CODE),
            ("a", "pstn".to_string(), PER_PHONES),
        ];
        Attempt::with(wanted, &format!("phone {caller}"))
    }

    fn with(wanted: Vec<(&str, String, u32)>, address: &str) -> Result<Attempt, Response> {
        let now = switchboard_sdk::now_ms();
        let mut buckets = Vec::new();
        for (kind, value, limit) in wanted {
            let k = key(kind, &value).map_err(ApiError::into_response)?;
            let c = load(&k, now).map_err(ApiError::into_response)?;
            buckets.push((k, limit, c));
        }
        let blocked_until = buckets
            .iter()
            .filter(|(_, limit, c)| c.failures >= *limit)
            .map(|(_, _, c)| c.window_start + WINDOW_MS)
            .max();
        if let Some(until) = blocked_until {
            let mut r = http::error(
                429,
                "too_many_attempts",
                "too many wrong codes; try again later",
            );
            r.headers.push((
                "retry-after".into(),
                (until.saturating_sub(now) / 1000 + 1).to_string(),
            ));
            return Err(r);
        }
        Ok(Attempt {
            buckets,
            address: address.to_string(),
        })
    }

    /// Counts a wrong code and audits it; the counters and the audit
    /// entry stand although the answer is a 4xx. Returns that answer.
    pub fn failed(mut self) -> ApiError {
        match self.record() {
            Ok(()) => ApiError::new(404, "code_not_found", "no space has this code"),
            Err(e) => e,
        }
    }

    fn record(&mut self) -> Result<(), ApiError> {
        let mut most = 0;
        for (k, _, c) in &mut self.buckets {
            c.failures += 1;
            most = most.max(c.failures);
            kv::set_json(&*k, c)?;
        }
        audit::append(
            "meeting.code.guess",
            "meetings",
            audit::Outcome::Failure,
            &json!({ "from": self.address, "failures": most }).to_string(),
        )?;
        if kv::get(SWEEP_MARK)?.is_none() {
            timers::schedule(Duration::from_millis(WINDOW_MS), "sweep-guesses", b"")?;
            kv::set(SWEEP_MARK, b"")?;
        }
        tx::keep_writes();
        Ok(())
    }
}

/// Deletes counters whose window has passed; runs again while any remain.
pub fn sweep() -> Result<(), ApiError> {
    let now = switchboard_sdk::now_ms();
    let entries = kv::scan_all("g/", SWEEP_BATCH)?;
    let mut left = entries.len() == SWEEP_BATCH;
    for e in &entries {
        let stale = serde_json::from_slice::<Count>(&e.value)
            .map(|c| now >= c.window_start + WINDOW_MS)
            .unwrap_or(true);
        if stale {
            kv::delete(&e.key)?;
        } else {
            left = true;
        }
    }
    if left {
        timers::schedule(Duration::from_millis(WINDOW_MS), "sweep-guesses", b"")?;
    } else {
        kv::delete(SWEEP_MARK)?;
    }
    Ok(())
}
