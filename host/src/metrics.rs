//! Process-wide counters in Prometheus text form (SPEC N3). Counters are
//! statics so any module can count without plumbing; `render` lists them
//! all for `/metrics`.

use crate::support::sync::Recover as _;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
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

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Counters by label values (e.g. per tenant and plugin). The label sets
/// seen are bounded by what exists (tenants, plugins, route classes);
/// past `MAX_SERIES` new label sets are folded into one `other` series.
pub struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

/// Label sets one family keeps before folding new ones into `other`.
pub const MAX_SERIES: usize = 4096;

impl Family {
    const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Family {
        Family {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds one to the series `values` (one per label).
    pub fn inc(&self, values: &[&str]) {
        self.add(values, 1);
    }

    /// Adds `n` to the series `values`.
    pub fn add(&self, values: &[&str], n: u64) {
        if n == 0 {
            return;
        }
        let mut series = self.series.lock().recover();
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        if let Some(v) = series.get_mut(&key) {
            *v += n;
            return;
        }
        let key = if series.len() >= MAX_SERIES {
            vec!["other".to_string(); values.len()]
        } else {
            key
        };
        *series.entry(key).or_default() += n;
    }

    /// The value of one series (0 when never counted).
    pub fn value(&self, values: &[&str]) -> u64 {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let series = self.series.lock().recover();
        series.get(&key).copied().unwrap_or(0)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} counter",
            self.name, self.help, self.name
        );
        let series = self.series.lock().recover();
        for (values, n) in series.iter() {
            let _ = writeln!(out, "{}{{{}}} {n}", self.name, labels(self.labels, values));
        }
    }
}

fn labels(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Latency histograms by route class, in seconds.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    series: Mutex<BTreeMap<&'static str, HistogramSeries>>,
}

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct HistogramSeries {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str) -> Histogram {
        Histogram {
            name,
            help,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records one observation for `class`.
    pub fn observe(&self, class: &'static str, seconds: f64) {
        let mut series = self.series.lock().recover();
        let s = series.entry(class).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                s.counts[i] += 1;
            }
        }
        s.count += 1;
        s.sum += seconds;
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} histogram",
            self.name, self.help, self.name
        );
        let series = self.series.lock().recover();
        for (class, s) in series.iter() {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{}_bucket{{route=\"{class}\",le=\"{bound}\"}} {}",
                    self.name, s.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "{}_bucket{{route=\"{class}\",le=\"+Inf\"}} {}",
                self.name, s.count
            );
            let _ = writeln!(out, "{}_sum{{route=\"{class}\"}} {}", self.name, s.sum);
            let _ = writeln!(out, "{}_count{{route=\"{class}\"}} {}", self.name, s.count);
        }
    }
}

/// Successful sign-ins.
/// Event streams open now (a gauge the event hub keeps).
pub static ACTIVE_STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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

/// Event-stream consumers cut off for not keeping up.
pub static SLOW_CONSUMERS: Counter = Counter::new(
    "switchboard_events_slow_consumers_total",
    "Event streams closed because the client did not keep up.",
);
/// Events queued on streams.
pub static EVENTS_DELIVERED: Counter = Counter::new(
    "switchboard_events_delivered_total",
    "Events queued on connected streams.",
);
/// TLS handshakes that failed or timed out.
pub static TLS_FAILURES: Counter = Counter::new(
    "switchboard_tls_handshake_failures_total",
    "TLS handshakes that failed (protocol version, garbage, timeout).",
);
/// Connections refused because the server was at its connection limit.
pub static CONNECTIONS_REFUSED: Counter = Counter::new(
    "switchboard_connections_refused_total",
    "Connections closed at once because the server was at its limit.",
);

const ALL: &[&Counter] = &[
    &LOGINS,
    &LOGIN_FAILURES,
    &LOGIN_THROTTLED,
    &LOCKOUTS,
    &BAD_TOKENS,
    &SLOW_CONSUMERS,
    &EVENTS_DELIVERED,
    &TLS_FAILURES,
    &CONNECTIONS_REFUSED,
];

/// Requests by route class and status class (`2xx`...).
pub static REQUESTS: Family = Family::new(
    "switchboard_http_requests_total",
    "HTTP requests by route class and status class.",
    &["route", "status"],
);
/// Plugin CPU time per tenant on the executor (SPEC K5).
pub static TENANT_CPU: Family = Family::new(
    "switchboard_tenant_cpu_microseconds_total",
    "Microseconds plugin calls of a tenant ran on the plugin executor.",
    &["tenant"],
);
/// Time plugin calls of a tenant waited for their turn on the executor.
pub static TENANT_CPU_WAIT: Family = Family::new(
    "switchboard_tenant_cpu_wait_microseconds_total",
    "Microseconds plugin calls of a tenant waited for a turn on the plugin executor.",
    &["tenant"],
);
/// Plugin requests per tenant and plugin.
pub static TENANT_REQUESTS: Family = Family::new(
    "switchboard_tenant_requests_total",
    "Plugin requests by tenant and plugin.",
    &["tenant", "plugin"],
);
/// Requests refused by a rate limit, by which limit.
pub static RATE_LIMITED: Family = Family::new(
    "switchboard_rate_limited_total",
    "Requests answered 429 by a rate limit (limit = tenant or address).",
    &["limit", "tenant"],
);
/// Plugin calls that trapped, timed out or ran out of memory.
pub static PLUGIN_FAILURES: Family = Family::new(
    "switchboard_plugin_failures_total",
    "Plugin calls that failed in the sandbox, by tenant, plugin and reason.",
    &["tenant", "plugin", "reason"],
);
/// Outbound calls the dialing policy refused (SPEC T1).
pub static CALLS_RESTRICTED: Family = Family::new(
    "switchboard_calls_restricted_total",
    "Dials refused by the dialing policy, by tenant and number class.",
    &["tenant", "class"],
);
/// Call legs that got media, by tenant and direction.
pub static CALL_LEGS: Family = Family::new(
    "switchboard_call_legs_total",
    "Call legs started (inbound offered or outbound answered), by tenant and direction.",
    &["tenant", "direction"],
);
/// Call legs ended because their plugin failed their events.
pub static CALL_LEGS_FAILED: Family = Family::new(
    "switchboard_call_legs_failed_total",
    "Call legs ended by the host because their plugin failed to take their events.",
    &["tenant", "plugin"],
);
/// SIP messages and connections the door dropped, by reason.
pub static SIP_DROPPED: Family = Family::new(
    "switchboard_sip_dropped_total",
    "SIP connections refused and messages dropped by the SIP door, by reason.",
    &["reason"],
);
/// SIP digest authentications, by method and outcome.
pub static SIP_AUTH: Family = Family::new(
    "switchboard_sip_auth_total",
    "SIP digest authentications by method (REGISTER, INVITE) and outcome (ok, refused, stale, throttled).",
    &["method", "outcome"],
);
/// Call legs live now (a gauge call control keeps).
pub static LIVE_CALL_LEGS: AtomicU64 = AtomicU64::new(0);

/// Request latency by route class.
pub static LATENCY: Histogram = Histogram::new(
    "switchboard_http_request_duration_seconds",
    "Time from request head to response head, by route class.",
);

const FAMILIES: &[&Family] = &[
    &REQUESTS,
    &TENANT_REQUESTS,
    &RATE_LIMITED,
    &PLUGIN_FAILURES,
    &TENANT_CPU,
    &TENANT_CPU_WAIT,
    &CALLS_RESTRICTED,
    &CALL_LEGS,
    &CALL_LEGS_FAILED,
    &SIP_DROPPED,
    &SIP_AUTH,
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
    for f in FAMILIES {
        f.render(&mut out);
    }
    LATENCY.render(&mut out);
    let _ = writeln!(
        out,
        "# HELP switchboard_websockets_active Event streams open now.\n# TYPE switchboard_websockets_active gauge\nswitchboard_websockets_active {}",
        ACTIVE_STREAMS.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP switchboard_call_legs_live Call legs live now.\n# TYPE switchboard_call_legs_live gauge\nswitchboard_call_legs_live {}",
        LIVE_CALL_LEGS.load(Ordering::Relaxed)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_histograms_render_in_prometheus_text_form() {
        static F: Family = Family::new("t_total", "help", &["tenant"]);
        F.inc(&["a\"b"]);
        F.inc(&["a\"b"]);
        let mut out = String::new();
        F.render(&mut out);
        assert!(out.contains("t_total{tenant=\"a\\\"b\"} 2"), "{out}");
        static H: Histogram = Histogram::new("h_seconds", "help");
        H.observe("plugin", 0.003);
        let mut out = String::new();
        H.render(&mut out);
        assert!(
            out.contains("h_seconds_bucket{route=\"plugin\",le=\"0.0025\"} 0"),
            "{out}"
        );
        assert!(
            out.contains("h_seconds_bucket{route=\"plugin\",le=\"0.005\"} 1"),
            "{out}"
        );
        assert!(out.contains("h_seconds_count{route=\"plugin\"} 1"), "{out}");
    }
}
