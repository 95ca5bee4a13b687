//! The layout of the keyspace. Every key the runtime reads or writes is
//! built here, so namespace isolation (SPEC K4) is decided in one place:
//! tenant ids and plugin names are validated to `[a-z0-9-]`, so the `/`
//! separators cannot be forged, and a plugin's own key bytes always come
//! last, after its fixed namespace prefix — `../`, empty segments or
//! non-UTF-8 bytes in a plugin key can only name keys inside that prefix.
//!
//! ```text
//! t/{tenant}/k/{plugin}/{key bytes}   plugin kv
//! t/{tenant}/tm/{plugin}/{timer id}   pending timer record
//! q/{due ms, 16 hex}/{tenant}/{plugin}/{timer id}   timer queue
//! sys/tenant/{tenant}                 tenant record
//! sys/plugin/{name}/{version}/package   installed signed package
//! sys/trust/{key id}                   trusted publisher key
//! ```

/// Prefix of a plugin's kv namespace within a tenant.
pub fn kv_prefix(tenant: &str, plugin: &str) -> Vec<u8> {
    format!("t/{tenant}/k/{plugin}/").into_bytes()
}

/// A plugin kv key.
pub fn kv(tenant: &str, plugin: &str, key: &[u8]) -> Vec<u8> {
    let mut k = kv_prefix(tenant, plugin);
    k.extend_from_slice(key);
    k
}

/// Prefix of everything a tenant owns.
pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    format!("t/{tenant}/").into_bytes()
}

/// A pending timer's record.
pub fn timer(tenant: &str, plugin: &str, id: &str) -> Vec<u8> {
    format!("t/{tenant}/tm/{plugin}/{id}").into_bytes()
}

/// Prefix of the global timer queue.
pub const TIMER_QUEUE: &[u8] = b"q/";

/// A timer's place in the queue, ordered by due time.
pub fn timer_queue(due_ms: u64, tenant: &str, plugin: &str, id: &str) -> Vec<u8> {
    format!("q/{due_ms:016x}/{tenant}/{plugin}/{id}").into_bytes()
}

/// Parses a queue key back into (due ms, tenant, plugin, id).
pub fn parse_timer_queue(key: &[u8]) -> Option<(u64, String, String, String)> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.strip_prefix("q/")?.splitn(4, '/');
    let due = u64::from_str_radix(parts.next()?, 16).ok()?;
    let tenant = parts.next()?.to_string();
    let plugin = parts.next()?.to_string();
    let id = parts.next()?.to_string();
    Some((due, tenant, plugin, id))
}

/// A tenant's record.
pub fn tenant(id: &str) -> Vec<u8> {
    format!("sys/tenant/{id}").into_bytes()
}

/// Prefix of all tenant records.
pub const TENANTS: &[u8] = b"sys/tenant/";

/// An installed plugin's signed package.
pub fn plugin_package(name: &str, version: &str) -> Vec<u8> {
    format!("sys/plugin/{name}/{version}/package").into_bytes()
}

/// A trust-store record.
pub fn trusted_key(key_id: &str) -> Vec<u8> {
    format!("sys/trust/{key_id}").into_bytes()
}

/// Prefix of all trust-store records.
pub const TRUST: &[u8] = b"sys/trust/";

/// Prefix of all installed plugins.
pub const PLUGINS: &[u8] = b"sys/plugin/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crafted_plugin_keys_stay_inside_their_namespace() {
        let prefix = kv_prefix("acme", "chat");
        for crafted in [
            &b"../../beta/k/chat/x"[..],
            b"",
            b"\xff\xfe/..",
            b"/t/beta/",
        ] {
            assert!(kv("acme", "chat", crafted).starts_with(&prefix));
        }
        assert!(!kv_prefix("acme", "chat").starts_with(&kv_prefix("acme", "cha")));
    }

    #[test]
    fn timer_queue_keys_round_trip_and_sort_by_due_time() {
        let a = timer_queue(5, "acme", "chat", "x1");
        let b = timer_queue(300, "acme", "chat", "x0");
        assert!(a < b);
        assert_eq!(
            parse_timer_queue(&b),
            Some((300, "acme".into(), "chat".into(), "x0".into()))
        );
    }
}
