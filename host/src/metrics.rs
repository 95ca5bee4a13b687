//! Process-wide counters in Prometheus text form (SPEC N3). Counters are
//! statics so any module can count without plumbing; `render` lists them
//! all for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Successful sign-ins.
pub static LOGINS: Counter = Counter::new("switchboard_auth_logins_total", "Successful sign-ins.");
/// Failed sign-ins (wrong or unknown name, wrong password or code, locked).
pub static LOGIN_FAILURES: Counter = Counter::new(
    "switchboard_auth_login_failures_total",
    "Failed sign-in attempts.",
);
/// Sign-ins refused because the name or address must wait.
pub static LOGIN_THROTTLED: Counter = Counter::new(
    "switchboard_auth_login_throttled_total",
    "Sign-in attempts refused by brute-force throttling.",
);
/// Accounts (or unknown names) locked after too many failures.
pub static LOCKOUTS: Counter = Counter::new(
    "switchboard_auth_lockouts_total",
    "Account locks after repeated failed sign-ins.",
);
/// Requests with a missing, malformed, expired or revoked session token.
pub static BAD_TOKENS: Counter = Counter::new(
    "switchboard_auth_rejected_tokens_total",
    "Requests refused for a missing, malformed, expired or revoked token.",
);

const ALL: &[&Counter] = &[
    &LOGINS,
    &LOGIN_FAILURES,
    &LOGIN_THROTTLED,
    &LOCKOUTS,
    &BAD_TOKENS,
];

/// Every counter in Prometheus text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    for c in ALL {
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} counter\n{} {}\n",
            c.name,
            c.help,
            c.name,
            c.name,
            c.value()
        ));
    }
    out
}
