//! Per-call transactions (SPEC K6): a call's writes — kv entries and timer
//! records alike — are buffered here and reach the store only if the call
//! returns successfully, in one atomic batch.
//!
//! Concurrency control is optimistic. Every read records what the store
//! held; at commit, under the tenant's commit lock, each recorded read and
//! scan is repeated and must still give the same answer. If one does not,
//! a concurrent call committed first and this call is re-run from scratch
//! by the runtime (or fails with `conflict` after bounded retries): never a
//! lost update. Comparing values, not versions, is enough for
//! serializability: when every read still holds at commit time, the call
//! behaves as if it ran entirely at that instant.
//!
//! A call into a dependency (`plugins` capability) carries the same `Txn`
//! into the callee's store and back, so work spanning two plugins commits or
//! vanishes as one.
//!
//! What a call does beyond its writes — an audit entry, an event to the
//! streams, waking the timer scheduler, later a call-control command — is
//! an [`Effect`] a capability queues here. The kernel takes a successful
//! attempt's effects, commits its writes, waits until they are durable and
//! then applies each effect once, in the order they were queued. An
//! attempt that conflicts and re-runs, traps, answers 5xx or fails its
//! commit is dropped with its effects, so none ever happens twice or for
//! writes that were not kept.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::store::{Entry, Store, StoreError, Write, keys};
use crate::support::sync::Recover as _;

/// The buffered state of one call.
#[derive(Clone, Default)]
pub struct Txn {
    /// Pending writes, by full store key: `None` deletes.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// What each read key held when first read.
    reads: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Scans as (prefix, start_after, limit) and what the store returned.
    scans: Vec<ScanRecord>,
    /// Change of each blob owner's bytes (quota per user, SPEC K5). Not an
    /// effect: it is checked against the quota and written atomically with
    /// the commit, under the tenant's commit lock.
    owner_deltas: BTreeMap<String, i64>,
    /// What happens once the writes are durable, in queue order.
    effects: Vec<Arc<dyn Effect>>,
}

/// Something a capability asks to happen after the call's writes are
/// durable, once. A capability defines its effects (holding the handles
/// they need) and queues them with [`Txn::push_effect`].
pub trait Effect: Any + Send + Sync {
    /// Carries the effect out for `tenant`, whose call committed.
    fn apply(&self, tenant: &str);
}

/// A committed attempt's effects, taken from its transaction before the
/// commit and applied after it is durable.
#[must_use = "effects are applied with `apply` once the commit is durable"]
pub struct Effects(Vec<Arc<dyn Effect>>);

impl Effects {
    /// Whether nothing was queued.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Applies every effect once, in the order queued.
    pub fn apply(self, tenant: &str) {
        for effect in self.0 {
            effect.apply(tenant);
        }
    }
}

#[derive(Clone)]
struct ScanRecord {
    prefix: Vec<u8>,
    start_after: Option<Vec<u8>>,
    limit: usize,
    result: Vec<Entry>,
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A value this call read has changed since; re-run the call.
    #[error("a concurrent call changed data this call read")]
    Conflict,
    /// Committing would exceed a storage quota; nothing was written.
    #[error("{0}")]
    Quota(String),
    /// The tenant was deleted (and perhaps created again) while the call
    /// ran; nothing was written.
    #[error("the tenant was deleted during the call")]
    Gone,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Storage quotas of one tenant.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Bytes the tenant may store (keys and sealed values).
    pub tenant_bytes: u64,
    /// Blob bytes one owner may store.
    pub owner_bytes: u64,
}

/// A tenant's usage as last committed, cached under its commit lock.
#[derive(Default)]
pub struct Ledger {
    bytes: Option<u64>,
    owners: HashMap<String, u64>,
}

fn read_counter(store: &Store, key: &[u8]) -> Result<u64, StoreError> {
    match store.get(key)? {
        None => Ok(0),
        Some(raw) => std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                reason: "not a byte counter".into(),
            }),
    }
}

impl Ledger {
    fn bytes(&mut self, store: &Store, tenant: &str) -> Result<u64, StoreError> {
        if let Some(b) = self.bytes {
            return Ok(b);
        }
        let b = read_counter(store, &keys::usage(tenant))?;
        self.bytes = Some(b);
        Ok(b)
    }

    fn owner(&mut self, store: &Store, tenant: &str, owner: &str) -> Result<u64, StoreError> {
        if let Some(b) = self.owners.get(owner) {
            return Ok(*b);
        }
        let b = read_counter(store, &keys::owner_usage(tenant, owner))?;
        self.owners.insert(owner.to_string(), b);
        Ok(b)
    }
}

impl Txn {
    /// Reads a key, seeing this call's own writes first.
    pub fn get(&mut self, store: &Store, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.writes.get(key) {
            return Ok(pending.clone());
        }
        // Repeatable reads: the first observation is the one validated.
        if let Some(seen) = self.reads.get(key) {
            return Ok(seen.clone());
        }
        let value = store.get(key)?;
        self.reads.insert(key.to_vec(), value.clone());
        Ok(value)
    }

    /// Buffers a write.
    pub fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// Buffers a delete without reading the key first.
    pub fn set_delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    /// Buffers a delete; returns whether the key existed (as this call sees
    /// it).
    pub fn delete(&mut self, store: &Store, key: &[u8]) -> Result<bool, StoreError> {
        let existed = self.get(store, key)?.is_some();
        self.writes.insert(key.to_vec(), None);
        Ok(existed)
    }

    /// Keys under `prefix` after `start_after`, merged with this call's own
    /// writes. Returns the page and whether more entries may follow.
    pub fn scan(
        &mut self,
        store: &Store,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), StoreError> {
        let in_range =
            |k: &Vec<u8>| k.starts_with(prefix) && start_after.is_none_or(|a| k.as_slice() > a);
        // Own deletes can hide stored entries, so fetch that many more.
        let hidden = self
            .writes
            .iter()
            .filter(|(k, v)| v.is_none() && in_range(k))
            .count();
        let fetch = limit.saturating_add(hidden).saturating_add(1);
        let stored = store.scan(prefix, start_after, fetch)?;
        let store_full = stored.len() >= fetch;
        self.scans.push(ScanRecord {
            prefix: prefix.to_vec(),
            start_after: start_after.map(<[u8]>::to_vec),
            limit: fetch,
            result: stored.clone(),
        });
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        // Entries past the last stored key are unknown when the store page
        // was full; only overlay writes up to it.
        let horizon = if store_full {
            merged.keys().next_back().cloned()
        } else {
            None
        };
        for (k, v) in self.writes.iter().filter(|(k, _)| in_range(k)) {
            if let Some(h) = &horizon
                && k > h
            {
                continue;
            }
            match v {
                Some(v) => {
                    merged.insert(k.clone(), v.clone());
                }
                None => {
                    merged.remove(k);
                }
            }
        }
        let more = store_full || merged.len() > limit;
        Ok((merged.into_iter().take(limit).collect(), more))
    }

    /// Records that `owner`'s blobs grow (or shrink) by `delta` bytes.
    pub fn add_owner_delta(&mut self, owner: &str, delta: i64) {
        *self.owner_deltas.entry(owner.to_string()).or_default() += delta;
    }

    /// The change to `owner`'s bytes buffered so far.
    pub fn owner_delta(&self, owner: &str) -> i64 {
        self.owner_deltas.get(owner).copied().unwrap_or(0)
    }

    /// Whether the call wrote anything.
    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty()
    }

    /// Number of buffered writes.
    pub fn write_count(&self) -> usize {
        self.writes.len()
    }

    /// Validates every read, checks quotas and applies every write
    /// atomically. The caller holds the tenant's commit lock, so no other
    /// commit of the tenant interleaves. Returns the store's sequence
    /// number for `Store::durable`.
    pub fn commit(self, store: &Store, account: Option<Account<'_>>) -> Result<u64, CommitError> {
        if self.writes.is_empty() {
            // A read-only call is serializable at the moment it read.
            return Ok(0);
        }
        for (key, seen) in &self.reads {
            if store.get(key)? != *seen {
                return Err(CommitError::Conflict);
            }
        }
        for scan in &self.scans {
            let now = store.scan(&scan.prefix, scan.start_after.as_deref(), scan.limit)?;
            if now != scan.result {
                return Err(CommitError::Conflict);
            }
        }
        let mut writes: Vec<Write> = self.writes.into_iter().collect();
        let Some(Account {
            tenant,
            ledger,
            quota,
        }) = account
        else {
            return Ok(store.apply(&writes)?);
        };
        // Quotas (SPEC K5): computed from what is on disk, under the lock.
        let mut delta: i64 = 0;
        for (k, v) in &writes {
            if !k.starts_with(b"t/") || keys::is_usage(tenant, k) {
                continue;
            }
            let old = store.raw_len(k)?.map_or(0, |n| n + k.len()) as i64;
            let new =
                v.as_ref()
                    .map_or(0, |v| Store::stored_len(k, v.len()) + k.len()) as i64;
            delta += new - old;
        }
        let used = ledger.bytes(store, tenant)?;
        let total = (used as i64).saturating_add(delta).max(0) as u64;
        if delta > 0 && total > quota.tenant_bytes {
            return Err(CommitError::Quota(format!(
                "tenant {tenant} would store {total} bytes; its quota is {} bytes",
                quota.tenant_bytes
            )));
        }
        let mut owners = Vec::new();
        for (owner, d) in &self.owner_deltas {
            let used = ledger.owner(store, tenant, owner)?;
            let next = (used as i64).saturating_add(*d).max(0) as u64;
            if *d > 0 && next > quota.owner_bytes {
                return Err(CommitError::Quota(format!(
                    "user {owner} would store {next} bytes of files; the per-user quota is {} bytes",
                    quota.owner_bytes
                )));
            }
            owners.push((owner.clone(), next));
        }
        if delta != 0 {
            writes.push((keys::usage(tenant), Some(total.to_string().into_bytes())));
        }
        for (owner, next) in &owners {
            writes.push((
                keys::owner_usage(tenant, owner),
                Some(next.to_string().into_bytes()),
            ));
        }
        let seq = store.apply(&writes)?;
        ledger.bytes = Some(total);
        for (owner, next) in owners {
            ledger.owners.insert(owner, next);
        }
        Ok(seq)
    }

    /// Queues `effect` for after the commit.
    pub fn push_effect(&mut self, effect: impl Effect) {
        self.effects.push(Arc::new(effect));
    }

    /// The queued effects of type `T`, in queue order (capabilities bound
    /// what one call may queue).
    pub fn effects_of<T: Effect>(&self) -> impl Iterator<Item = &T> {
        self.effects.iter().filter_map(|e| {
            let any: &dyn Any = e.as_ref();
            any.downcast_ref::<T>()
        })
    }

    /// Takes the queued effects (before committing).
    pub fn take_effects(&mut self) -> Effects {
        Effects(std::mem::take(&mut self.effects))
    }

    /// Merges a nested call's successful transaction back (it started as a
    /// clone of this one, so it is a superset).
    pub fn absorb(&mut self, nested: Txn) {
        *self = nested;
    }
}

/// Usage accounting of one commit.
pub struct Account<'a> {
    pub tenant: &'a str,
    pub ledger: &'a mut Ledger,
    pub quota: Quota,
}

/// A commit lock per tenant, guarding its usage ledger: validation and
/// apply of one tenant's commits never interleave; tenants never wait on
/// each other.
#[derive(Default)]
pub struct CommitLocks {
    locks: std::sync::Mutex<HashMap<String, Arc<std::sync::Mutex<Ledger>>>>,
}

impl CommitLocks {
    fn ledger(&self, tenant: &str) -> Arc<std::sync::Mutex<Ledger>> {
        // Poisoning only happens if a commit panicked; the map itself is
        // still consistent, so keep going with its contents.
        let mut map = self.locks.lock().recover();
        map.entry(tenant.to_string()).or_default().clone()
    }

    /// Commits `txn` for `tenant` under its quota, if `still_valid` (checked
    /// under the lock) says the tenant the call ran for still exists.
    /// Returns the store's sequence number (0: nothing written) and the
    /// effects the call queued, for the caller to apply once that sequence
    /// is durable; a commit that fails drops them.
    pub fn commit(
        &self,
        tenant: &str,
        store: &Store,
        mut txn: Txn,
        quota: Quota,
        still_valid: impl FnOnce() -> bool,
    ) -> Result<(u64, Effects), CommitError> {
        let effects = txn.take_effects();
        if txn.is_read_only() {
            return Ok((0, effects));
        }
        let lock = self.ledger(tenant);
        let mut ledger = lock.lock().recover();
        if !still_valid() {
            return Err(CommitError::Gone);
        }
        let seq = txn.commit(
            store,
            Some(Account {
                tenant,
                ledger: &mut ledger,
                quota,
            }),
        )?;
        Ok((seq, effects))
    }

    /// (tenant bytes, `owner`'s bytes) as last committed.
    pub fn usage(
        &self,
        tenant: &str,
        owner: Option<&str>,
        store: &Store,
    ) -> Result<(u64, u64), StoreError> {
        let lock = self.ledger(tenant);
        let mut ledger = lock.lock().recover();
        let bytes = ledger.bytes(store, tenant)?;
        let owner = match owner {
            Some(o) => ledger.owner(store, tenant, o)?,
            None => 0,
        };
        Ok((bytes, owner))
    }

    /// Runs `f` holding `tenant`'s commit lock: no commit of the tenant
    /// interleaves (used to delete a tenant).
    pub fn exclusive<R>(&self, tenant: &str, f: impl FnOnce() -> R) -> R {
        let lock = self.ledger(tenant);
        let _guard = lock.lock().recover();
        f()
    }

    /// Forgets a tenant's cached usage (after it is deleted).
    pub fn forget(&self, tenant: &str) {
        self.locks.lock().recover().remove(tenant);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::crypt::MasterKey;

    fn temp_store(dir: &std::path::Path) -> Store {
        crate::store::sealed_tests::open_temp(dir, &MasterKey::generate().unwrap())
    }

    #[test]
    fn reads_see_own_writes_and_others_see_nothing_before_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_store(dir.path());
        let mut t = Txn::default();
        t.set(b"k".to_vec(), b"1".to_vec());
        assert_eq!(t.get(&db, b"k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(db.get(b"k").unwrap(), None);
        t.commit(&db, None).unwrap();
        assert_eq!(db.get(b"k").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn a_stale_read_conflicts_instead_of_losing_an_update() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_store(dir.path());
        let mut a = Txn::default();
        let mut b = Txn::default();
        assert_eq!(a.get(&db, b"n").unwrap(), None);
        assert_eq!(b.get(&db, b"n").unwrap(), None);
        a.set(b"n".to_vec(), b"1".to_vec());
        b.set(b"n".to_vec(), b"1".to_vec());
        a.commit(&db, None).unwrap();
        assert!(matches!(b.commit(&db, None), Err(CommitError::Conflict)));
    }

    #[test]
    fn a_phantom_in_a_scanned_range_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_store(dir.path());
        let mut a = Txn::default();
        let (page, _) = a.scan(&db, b"p/", None, 10).unwrap();
        assert!(page.is_empty());
        a.set(b"count".to_vec(), b"0".to_vec());
        db.apply(&[(b"p/x".to_vec(), Some(b"1".to_vec()))]).unwrap();
        assert!(matches!(a.commit(&db, None), Err(CommitError::Conflict)));
    }

    /// Records its label in a shared log when applied.
    struct Note(&'static str, Arc<std::sync::Mutex<Vec<String>>>);

    impl Effect for Note {
        fn apply(&self, tenant: &str) {
            self.1.lock().unwrap().push(format!("{tenant}:{}", self.0));
        }
    }

    fn unlimited() -> Quota {
        Quota {
            tenant_bytes: u64::MAX,
            owner_bytes: u64::MAX,
        }
    }

    #[test]
    fn effects_apply_once_in_queue_order_after_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_store(dir.path());
        let locks = CommitLocks::default();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut t = Txn::default();
        t.set(b"t/acme/k/p/a".to_vec(), b"1".to_vec());
        for label in ["audit", "event", "wake"] {
            t.push_effect(Note(label, log.clone()));
        }
        assert_eq!(t.effects_of::<Note>().count(), 3);
        let (seq, effects) = locks.commit("acme", &db, t, unlimited(), || true).unwrap();
        assert!(seq > 0);
        assert!(log.lock().unwrap().is_empty(), "nothing before apply");
        effects.apply("acme");
        assert_eq!(
            *log.lock().unwrap(),
            ["acme:audit", "acme:event", "acme:wake"]
        );
    }

    #[test]
    fn a_read_only_call_still_gets_its_effects() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_store(dir.path());
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut t = Txn::default();
        t.push_effect(Note("event", log.clone()));
        let (seq, effects) = CommitLocks::default()
            .commit("acme", &db, t, unlimited(), || true)
            .unwrap();
        assert_eq!(seq, 0);
        effects.apply("acme");
        assert_eq!(*log.lock().unwrap(), ["acme:event"]);
    }

    #[test]
    fn a_conflicting_attempt_leaves_no_effect_and_its_rerun_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_store(dir.path());
        let locks = CommitLocks::default();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let key = b"t/acme/k/p/n".to_vec();
        // The kernel's attempt loop: each attempt starts a fresh `Txn`.
        let attempt = |label: &'static str| {
            let mut t = Txn::default();
            let seen = t.get(&db, &key).unwrap();
            t.set(
                key.clone(),
                [seen.unwrap_or_default(), b"+".to_vec()].concat(),
            );
            t.push_effect(Note(label, log.clone()));
            t
        };
        let first = attempt("first");
        // A concurrent call commits in between.
        let (_, other) = locks
            .commit("acme", &db, attempt("other"), unlimited(), || true)
            .unwrap();
        other.apply("acme");
        assert!(matches!(
            locks.commit("acme", &db, first, unlimited(), || true),
            Err(CommitError::Conflict)
        ));
        let (_, rerun) = locks
            .commit("acme", &db, attempt("rerun"), unlimited(), || true)
            .unwrap();
        rerun.apply("acme");
        assert_eq!(*log.lock().unwrap(), ["acme:other", "acme:rerun"]);
        assert_eq!(db.get(&key).unwrap(), Some(b"++".to_vec()));
    }

    #[test]
    fn a_trapped_or_refused_attempt_leaves_no_effect() {
        let dir = tempfile::tempdir().unwrap();
        let db = temp_store(dir.path());
        let locks = CommitLocks::default();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        // A trap: the kernel drops the attempt's transaction uncommitted.
        let mut trapped = Txn::default();
        trapped.set(b"t/acme/k/p/x".to_vec(), b"1".to_vec());
        trapped.push_effect(Note("trapped", log.clone()));
        drop(trapped);
        // Over quota: the commit refuses, the effects go with it.
        let mut over = Txn::default();
        over.set(b"t/acme/k/p/y".to_vec(), vec![0; 4096]);
        over.push_effect(Note("over-quota", log.clone()));
        let quota = Quota {
            tenant_bytes: 16,
            owner_bytes: 16,
        };
        assert!(matches!(
            locks.commit("acme", &db, over, quota, || true),
            Err(CommitError::Quota(_))
        ));
        // The tenant went away during the call.
        let mut gone = Txn::default();
        gone.set(b"t/acme/k/p/z".to_vec(), b"1".to_vec());
        gone.push_effect(Note("gone", log.clone()));
        assert!(matches!(
            locks.commit("acme", &db, gone, unlimited(), || false),
            Err(CommitError::Gone)
        ));
        assert!(log.lock().unwrap().is_empty());
        assert_eq!(db.get(b"t/acme/k/p/x").unwrap(), None);
    }

    #[test]
    fn a_nested_call_carries_the_callers_effects_and_adds_its_own() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut caller = Txn::default();
        caller.push_effect(Note("caller", log.clone()));
        // A nested call runs on a clone and, on success, replaces it.
        let mut callee = caller.clone();
        callee.push_effect(Note("callee", log.clone()));
        let failed = callee.clone();
        drop(failed);
        caller.absorb(callee);
        caller.take_effects().apply("acme");
        assert_eq!(*log.lock().unwrap(), ["acme:caller", "acme:callee"]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8, Vec<u8>),
        Delete(u8),
        Get(u8),
        Scan(u8),
        Commit,
        Abandon,
        Restart,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..16, proptest::collection::vec(any::<u8>(), 0..48))
                .prop_map(|(k, v)| Op::Set(k, v)),
            2 => (0u8..16).prop_map(Op::Delete),
            2 => (0u8..16).prop_map(Op::Get),
            1 => (0u8..2).prop_map(Op::Scan),
            3 => Just(Op::Commit),
            1 => Just(Op::Abandon),
            1 => Just(Op::Restart),
        ]
    }

    fn key(k: u8) -> Vec<u8> {
        format!("t/acme/k/p/{k:02}").into_bytes()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Model test: random operations through transactions on the
        /// encrypted store, checked against a `BTreeMap`, with the store
        /// closed and reopened (a simulated restart) at random points.
        /// Uncommitted work never shows; committed work always survives.
        #[test]
        fn the_store_matches_a_btreemap_model_across_restarts(
            ops in proptest::collection::vec(op(), 1..120)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let master = MasterKey::generate().unwrap();
            let open = || crate::store::sealed_tests::open_temp(dir.path(), &master);
            let mut db = open();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut shadow = model.clone();
            let mut t = Txn::default();
            for op in ops {
                match op {
                    Op::Set(k, v) => {
                        t.set(key(k), v.clone());
                        shadow.insert(key(k), v);
                    }
                    Op::Delete(k) => {
                        let existed = t.delete(&db, &key(k)).unwrap();
                        proptest::prop_assert_eq!(existed, shadow.remove(&key(k)).is_some());
                    }
                    Op::Get(k) => {
                        proptest::prop_assert_eq!(t.get(&db, &key(k)).unwrap(), shadow.get(&key(k)).cloned());
                    }
                    Op::Scan(p) => {
                        let prefix = format!("t/acme/k/p/{p}").into_bytes();
                        let (page, more) = t.scan(&db, &prefix, None, 100).unwrap();
                        let expect: Vec<_> = shadow
                            .iter()
                            .filter(|(k, _)| k.starts_with(&prefix))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        proptest::prop_assert_eq!(page, expect);
                        proptest::prop_assert!(!more);
                    }
                    Op::Commit => {
                        std::mem::take(&mut t).commit(&db, None).unwrap();
                        model = shadow.clone();
                    }
                    Op::Abandon => {
                        t = Txn::default();
                        shadow = model.clone();
                    }
                    Op::Restart => {
                        t = Txn::default();
                        shadow = model.clone();
                        drop(db);
                        db = open();
                        let all = db.scan(b"t/acme/k/p/", None, 1000).unwrap();
                        let expect: Vec<_> = model.clone().into_iter().collect();
                        proptest::prop_assert_eq!(all, expect);
                    }
                }
            }
        }
    }
}
