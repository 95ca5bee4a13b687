//! The tenant registry: which tenants exist, their limits (SPEC K5), and for
//! each the plugins it enabled — pinned version, granted capabilities and
//! validated settings (SPEC K3, K7). Records live in the store under
//! `sys/tenant/`; an in-memory copy answers the hot path.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use switchboard_signing::Capability;

/// Per-tenant limits. Defaults suit an interactive UC workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock deadline of one plugin call, nested calls included.
    pub deadline_ms: u64,
    /// Cap on one instance's linear memory.
    pub memory_bytes: u64,
    /// Bytes a call may pass to host functions (keys, values, logs...).
    pub host_bytes_per_call: u64,
    /// Largest response a plugin may return.
    pub response_bytes: u64,
    /// Calls of this tenant running at once.
    pub concurrency: u32,
    /// How long a call waits for a free slot before `tenant_busy`.
    pub queue_timeout_ms: u64,
    /// Bytes the tenant may store: keys plus sealed values and blob chunks.
    pub storage_bytes: u64,
    /// Blob bytes one owner (user) may store, e.g. their recordings.
    pub owner_storage_bytes: u64,
    /// Plugin requests per second the gateway admits for the tenant
    /// (bursts of twice that); more are answered 429 with `Retry-After`.
    pub requests_per_second: u32,
    /// The tenant's weight on the plugin executor when tenants compete for
    /// it (SPEC K5): a tenant with 200 gets twice the CPU of one with 100.
    pub cpu_share: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 2_000,
            memory_bytes: 64 << 20,
            host_bytes_per_call: 64 << 20,
            response_bytes: 16 << 20,
            concurrency: 32,
            queue_timeout_ms: 2_000,
            storage_bytes: 100 << 30,
            owner_storage_bytes: 5 << 30,
            requests_per_second: 500,
            cpu_share: 100,
        }
    }
}

impl Limits {
    /// Refuses limits the host cannot honour.
    pub fn validate(&self, max_memory_bytes: u64) -> Result<(), String> {
        if self.deadline_ms == 0 || self.deadline_ms > 300_000 {
            return Err("deadline_ms must be between 1 and 300000".into());
        }
        if self.memory_bytes < (1 << 20) || self.memory_bytes > max_memory_bytes {
            return Err(format!(
                "memory_bytes must be between 1 MiB and the host's slot size of {max_memory_bytes} bytes"
            ));
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err("concurrency must be between 1 and 1024".into());
        }
        if self.response_bytes == 0 || self.host_bytes_per_call == 0 {
            return Err("response_bytes and host_bytes_per_call must be positive".into());
        }
        if self.storage_bytes == 0 || self.owner_storage_bytes == 0 {
            return Err("storage_bytes and owner_storage_bytes must be positive".into());
        }
        if self.requests_per_second == 0 || self.requests_per_second > 1_000_000 {
            return Err("requests_per_second must be between 1 and 1000000".into());
        }
        if self.cpu_share == 0 || self.cpu_share > 10_000 {
            return Err("cpu_share must be between 1 and 10000".into());
        }
        if self.queue_timeout_ms > 60_000 {
            return Err("queue_timeout_ms must be at most 60000".into());
        }
        Ok(())
    }
}

/// One plugin as a tenant enabled it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enablement {
    pub version: semver::Version,
    pub grants: BTreeSet<Capability>,
    /// The admin's settings as given (defaults are applied on read).
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: String,
    pub region: String,
    pub limits: Limits,
    pub plugins: BTreeMap<String, Enablement>,
    /// Publisher key ids this tenant accepts (SPEC S2); `None`: every key
    /// the operator trusts.
    #[serde(default)]
    pub publishers: Option<BTreeSet<String>>,
    /// The highest version of each plugin this tenant has run, for rollback
    /// protection (SPEC S3).
    #[serde(default)]
    pub highest: BTreeMap<String, semver::Version>,
    /// Retention per class in days, overriding the defaults (SPEC D4);
    /// `None` keeps objects of that class until they are deleted.
    #[serde(default)]
    pub retention: BTreeMap<String, Option<u32>>,
    /// A legal hold on the whole tenant: nothing of it is deleted.
    #[serde(default)]
    pub legal_hold: bool,
    /// Random per creation: a call that ran for a deleted tenant cannot
    /// commit into a new tenant of the same id.
    #[serde(default)]
    pub incarnation: String,
    /// How the tenant's users dial and what they may reach (SPEC T1).
    #[serde(default)]
    pub dialing: Dialing,
    /// The numbers callers reach and the plugins that take their calls
    /// (SPEC T2).
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// Most routes a tenant has.
pub const MAX_ROUTES: usize = 1000;
/// Longest route arguments, in bytes.
pub const MAX_ROUTE_ARGS: usize = 1024;

/// A number (an extension, a DID in E.164, a feature code) and the plugin
/// that takes the calls to it, with arguments for that plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// What the caller dials: 1-32 of `0-9 * #`, or `+` and digits.
    pub number: String,
    /// The plugin (enabled, granted `calls`) that gets the call.
    pub plugin: String,
    /// Handed to the plugin with the call (e.g. the menu or mailbox).
    #[serde(default)]
    pub args: String,
}

impl Route {
    /// Checks a tenant's whole route list: well-formed numbers, each once,
    /// within the bounds.
    pub fn check_all(routes: &[Route]) -> Result<(), String> {
        if routes.len() > MAX_ROUTES {
            return Err(format!("a tenant has at most {MAX_ROUTES} routes"));
        }
        let mut seen = BTreeSet::new();
        for r in routes {
            let n = r.number.as_str();
            let digits = n.strip_prefix('+').unwrap_or(n);
            let ok = !digits.is_empty()
                && n.len() <= 32
                && if n.starts_with('+') {
                    digits.bytes().all(|b| b.is_ascii_digit())
                } else {
                    digits
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
                };
            if !ok {
                return Err(format!(
                    "route number {:?}: 1-32 of 0-9 * #, or + and digits",
                    n.chars().take(40).collect::<String>()
                ));
            }
            if !seen.insert(n) {
                return Err(format!("route number {n} is given twice"));
            }
            if r.plugin.is_empty()
                || r.plugin.len() > 64
                || !r
                    .plugin
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!("route {n}: plugin name {:?}", r.plugin));
            }
            if r.args.len() > MAX_ROUTE_ARGS {
                return Err(format!("route {n}: args over {MAX_ROUTE_ARGS} bytes"));
            }
        }
        Ok(())
    }
}

/// A tenant's numbering plan and dialing rules as set (SPEC T1); checked
/// by `telephony::policy` when set, applied to every outbound leg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialing {
    /// ISO 3166 alpha-2 region numbers are read in (`GB`); `None`: the
    /// server's default region.
    #[serde(default)]
    pub region: Option<String>,
    /// What users dial for an outside line first (`9`), if anything.
    #[serde(default)]
    pub outside_line: Option<String>,
    /// Shortest and longest extension, in digits.
    #[serde(default = "Dialing::default_extension_digits")]
    pub extension_digits: [usize; 2],
    /// Number classes anyone may dial; `None`: internal, national, mobile
    /// and toll-free.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// E.164 numbers or prefixes (`+4420*`) allowed beyond the classes.
    #[serde(default)]
    pub allow: Vec<String>,
    /// E.164 numbers or prefixes refused whatever else allows them.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Outbound calls the tenant may have ringing or answered at once
    /// (toll fraud runs many calls in parallel); `None`: no cap.
    /// Emergency calls are never refused for it.
    #[serde(default)]
    pub max_outbound_calls: Option<u32>,
}

impl Dialing {
    fn default_extension_digits() -> [usize; 2] {
        [2, 6]
    }
}

impl Default for Dialing {
    fn default() -> Self {
        Dialing {
            region: None,
            outside_line: None,
            extension_digits: Dialing::default_extension_digits(),
            classes: None,
            allow: Vec::new(),
            deny: Vec::new(),
            max_outbound_calls: None,
        }
    }
}

/// Default retention in days per class (SPEC D4). Classes not listed keep
/// their objects until deleted (meeting content lives as long as the
/// meeting).
pub const DEFAULT_RETENTION: &[(&str, u32)] =
    &[("recording", 365), ("audit", 7 * 365 + 2), ("cdr", 400)];

impl TenantRecord {
    /// Days objects of `class` are kept, `None` for "until deleted".
    pub fn retention_days(&self, class: &str) -> Option<u32> {
        match self.retention.get(class) {
            Some(days) => *days,
            None => DEFAULT_RETENTION
                .iter()
                .find(|(c, _)| *c == class)
                .map(|(_, d)| *d),
        }
    }

    /// Every class with a retention period, defaults included.
    pub fn retention_policy(&self) -> BTreeMap<String, Option<u32>> {
        let mut policy: BTreeMap<String, Option<u32>> = DEFAULT_RETENTION
            .iter()
            .map(|(c, d)| (c.to_string(), Some(*d)))
            .collect();
        policy.extend(self.retention.clone());
        policy
    }
}

/// Retention classes: `^[a-z][a-z0-9-]{0,31}$`.
pub fn is_valid_class(class: &str) -> bool {
    let b = class.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Tenant ids: `^[a-z0-9][a-z0-9-]{0,62}$` — they appear in URLs and keys.
pub fn is_valid_tenant_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_cannot_forge_key_separators() {
        assert!(is_valid_tenant_id("acme-2"));
        for bad in ["", "a/b", "..", "A", "-x", "a b", &"x".repeat(64)] {
            assert!(!is_valid_tenant_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn default_limits_are_valid() {
        Limits::default().validate(256 << 20).unwrap();
        let zero = Limits {
            concurrency: 0,
            ..Limits::default()
        };
        assert!(zero.validate(256 << 20).is_err());
    }
}
