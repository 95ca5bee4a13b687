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
//! sys/tenant/{tenant}                 tenant directory entry: its region
//! t/{tenant}/record                   tenant record (limits, plugins...)
//! sys/plugin/{name}/{version}/package   installed signed package
//! sys/trust/{key id}                   trusted publisher key
//! sys/keyring/{scope}                  scope key wrapped by the master key
//! t/{tenant}/bm/{plugin}/{blob}       blob metadata (owner, class, size, key)
//! t/{tenant}/bc/{plugin}/{blob}/{n}   blob chunk n, sealed by the blob's key
//! t/{tenant}/rx/{class}/{created}/{plugin}/{blob}   retention index
//! t/{tenant}/gc/{plugin}/{blob}       chunks of a deleted blob to reclaim
//! t/{tenant}/tk/{trunk}              a trunk's password
//! t/{tenant}/usage                    bytes the tenant stores (quota)
//! t/{tenant}/uo/{owner}               blob bytes one owner stores (quota)
//! t/{tenant}/eg/{plugin}/{group}/{user}   event group membership
//! cl/{gen, 8 hex}/{key}               changed since backup generation gen
//! cl/state                            backup bookkeeping (never backed up)
//! ```
//!
//! Tenant keys (`t/` and `q/`) live in the tenant's region database; all
//! other keys in the system database.

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

/// Prefix of the members of a plugin's event group (group names are
/// `[A-Za-z0-9._:-]`, so they cannot contain the separator).
pub fn event_group_prefix(tenant: &str, plugin: &str, group: &str) -> Vec<u8> {
    format!("t/{tenant}/eg/{plugin}/{group}/").into_bytes()
}

/// One member of a plugin's event group.
pub fn event_group_member(tenant: &str, plugin: &str, group: &str, user: &str) -> Vec<u8> {
    let mut k = event_group_prefix(tenant, plugin, group);
    k.extend_from_slice(user.as_bytes());
    k
}

/// Prefix of a tenant's call records, ordered by end time.
pub fn call_record_prefix(tenant: &str) -> Vec<u8> {
    format!("t/{tenant}/cdr/").into_bytes()
}

/// A call record: one leg, by the time it ended (16 hex digits, so keys
/// sort by time) and its id.
pub fn call_record(tenant: &str, ended_ms: u64, leg: &str) -> Vec<u8> {
    format!("t/{tenant}/cdr/{ended_ms:016x}/{leg}").into_bytes()
}

/// The end time of a call record's key (after its prefix).
pub fn parse_call_record(rest: &[u8]) -> Option<u64> {
    let rest = std::str::from_utf8(rest).ok()?;
    u64::from_str_radix(rest.get(..16)?, 16).ok()
}

/// A trunk's password (for the provider's digest challenges), sealed
/// like every tenant value and never answered to anyone.
pub fn trunk_password(tenant: &str, trunk: &str) -> Vec<u8> {
    format!("t/{tenant}/tk/{trunk}").into_bytes()
}

/// A user's message-waiting counts (`mwi` capability), JSON.
pub fn mwi(tenant: &str, user: &str) -> Vec<u8> {
    format!("t/{tenant}/mw/{user}").into_bytes()
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

/// A tenant's directory entry (its region), in the system database.
pub fn tenant(id: &str) -> Vec<u8> {
    format!("sys/tenant/{id}").into_bytes()
}

/// A tenant's full record (limits, plugins, policies), in its region.
pub fn tenant_record(id: &str) -> Vec<u8> {
    format!("t/{id}/record").into_bytes()
}

/// A deleted tenant whose storage is still being reclaimed.
pub fn deleted_tenant(id: &str) -> Vec<u8> {
    format!("sys/deleted/{id}").into_bytes()
}

/// Prefix of deleted tenants awaiting reclamation.
pub const DELETED_TENANTS: &[u8] = b"sys/deleted/";

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

/// The tenant a key belongs to, if any.
pub fn tenant_of(key: &[u8]) -> Option<&str> {
    let rest = if let Some(rest) = key.strip_prefix(b"t/") {
        rest
    } else {
        // q/{16 hex}/{tenant}/...
        let rest = key.strip_prefix(b"q/")?;
        rest.get(17..).filter(|_| rest.get(16) == Some(&b'/'))?
    };
    let end = rest.iter().position(|b| *b == b'/')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// How a key's value is protected at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class<'a> {
    /// A scope key already wrapped by the master key.
    Keyring,
    /// Backup bookkeeping: key names only, never backed up.
    Changelog,
    /// A blob chunk already sealed under its blob's key.
    Chunk(&'a str),
    /// Sealed under this tenant's key.
    Tenant(&'a str),
    /// Sealed under the system key.
    System,
}

/// Classifies a store key.
pub fn classify(key: &[u8]) -> Class<'_> {
    if key.starts_with(KEYRING) {
        return Class::Keyring;
    }
    if key.starts_with(CHANGELOG) {
        return Class::Changelog;
    }
    match tenant_of(key) {
        Some(t) => {
            let chunk =
                key.len() > 2 + t.len() + 4 && &key[2 + t.len()..2 + t.len() + 4] == b"/bc/";
            if chunk && key.starts_with(b"t/") {
                Class::Chunk(t)
            } else {
                Class::Tenant(t)
            }
        }
        None => Class::System,
    }
}

/// Prefix of the keyring.
pub const KEYRING: &[u8] = b"sys/keyring/";

/// A keyring record.
pub fn keyring(scope: &str) -> Vec<u8> {
    format!("sys/keyring/{scope}").into_bytes()
}

/// Prefix of the changelog and backup bookkeeping.
pub const CHANGELOG: &[u8] = b"cl/";

/// Backup bookkeeping record.
pub const BACKUP_STATE: &[u8] = b"cl/state";

/// A changelog marker.
pub fn changelog(generation: u32, key: &[u8]) -> Vec<u8> {
    let mut k = format!("cl/{generation:08x}/").into_bytes();
    k.extend_from_slice(key);
    k
}

/// Parses a changelog marker into (generation, key).
pub fn parse_changelog(marker: &[u8]) -> Option<(u32, &[u8])> {
    let rest = marker.strip_prefix(CHANGELOG)?;
    if rest.len() < 9 || rest[8] != b'/' {
        return None;
    }
    let generation = u32::from_str_radix(std::str::from_utf8(&rest[..8]).ok()?, 16).ok()?;
    Some((generation, &rest[9..]))
}

/// Metadata of a blob.
pub fn blob_meta(tenant: &str, plugin: &str, id: &str) -> Vec<u8> {
    format!("t/{tenant}/bm/{plugin}/{id}").into_bytes()
}

/// Prefix of a blob's chunks.
pub fn blob_chunks(tenant: &str, plugin: &str, id: &str) -> Vec<u8> {
    format!("t/{tenant}/bc/{plugin}/{id}/").into_bytes()
}

/// Chunk `n` of a blob.
pub fn blob_chunk(tenant: &str, plugin: &str, id: &str, n: u64) -> Vec<u8> {
    format!("t/{tenant}/bc/{plugin}/{id}/{n:010x}").into_bytes()
}

/// Prefix of a tenant's retention index for one class.
pub fn retention_prefix(tenant: &str, class: &str) -> Vec<u8> {
    format!("t/{tenant}/rx/{class}/").into_bytes()
}

/// A blob's retention index entry.
pub fn retention(tenant: &str, class: &str, created_ms: u64, plugin: &str, id: &str) -> Vec<u8> {
    format!("t/{tenant}/rx/{class}/{created_ms:016x}/{plugin}/{id}").into_bytes()
}

/// Parses the part of a retention entry after its class prefix into
/// (created ms, plugin, blob id).
pub fn parse_retention(rest: &[u8]) -> Option<(u64, String, String)> {
    let text = std::str::from_utf8(rest).ok()?;
    let mut parts = text.splitn(3, '/');
    let created = u64::from_str_radix(parts.next()?, 16).ok()?;
    Some((
        created,
        parts.next()?.to_string(),
        parts.next()?.to_string(),
    ))
}

/// Prefix of a tenant's pending chunk reclamation.
pub fn blob_gc_prefix(tenant: &str) -> Vec<u8> {
    format!("t/{tenant}/gc/").into_bytes()
}

/// A deleted blob whose chunks remain to be reclaimed.
pub fn blob_gc(tenant: &str, plugin: &str, id: &str) -> Vec<u8> {
    format!("t/{tenant}/gc/{plugin}/{id}").into_bytes()
}

/// A tenant's stored-bytes counter.
pub fn usage(tenant: &str) -> Vec<u8> {
    format!("t/{tenant}/usage").into_bytes()
}

/// One owner's blob-bytes counter.
pub fn owner_usage(tenant: &str, owner: &str) -> Vec<u8> {
    format!("t/{tenant}/uo/{owner}").into_bytes()
}

/// Whether a key is a usage counter (not itself counted).
pub fn is_usage(tenant: &str, key: &[u8]) -> bool {
    let rest = &key[(2 + tenant.len()).min(key.len())..];
    rest == b"/usage" || rest.starts_with(b"/uo/")
}

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

    #[test]
    fn keys_classify_by_owner() {
        assert_eq!(classify(b"t/acme/k/chat/x"), Class::Tenant("acme"));
        assert_eq!(
            classify(&blob_chunk("acme", "rec", "ab", 3)),
            Class::Chunk("acme")
        );
        assert_eq!(
            classify(&timer_queue(9, "acme", "chat", "i")),
            Class::Tenant("acme")
        );
        assert_eq!(classify(b"sys/tenant/acme"), Class::System);
        assert_eq!(classify(&keyring("tenant/acme")), Class::Keyring);
        assert_eq!(classify(&changelog(3, b"t/a/k")), Class::Changelog);
        assert_eq!(classify(b"q/zz"), Class::System);
        // A plugin key that looks like a chunk path is still plain kv.
        assert_eq!(classify(&kv("acme", "p", b"/bc/x")), Class::Tenant("acme"));
        assert_eq!(
            parse_changelog(&changelog(7, b"t/a/k/p/x")),
            Some((7, &b"t/a/k/p/x"[..]))
        );
        assert!(is_usage("acme", &usage("acme")));
        assert!(is_usage("acme", &owner_usage("acme", "u1")));
        assert!(!is_usage("acme", &kv("acme", "usage", b"x")));
    }
}
