//! `Store`: the databases of one host behind one ordered-key interface.
//!
//! - **Routing (SPEC D3).** Keys of a tenant (`t/{tenant}/…` and its timer
//!   queue entries `q/{due}/{tenant}/…`) go to the database of the tenant's
//!   region; everything else to the system database. A batch never spans
//!   two databases, so every batch stays atomic.
//! - **Sealing (SPEC D2).** Values are sealed with a fresh data key under
//!   the owner's scope key on the way in and authenticated on the way out;
//!   a corrupted or moved value is an error, never garbage.
//! - **Group commit.** `apply` returns a sequence number; `durable(seq)`
//!   waits until a flush covering it has reached the disk. One flusher
//!   thread serves every waiter, so concurrent commits share an fsync.
//! - **Changelog and snapshots (SPEC D5).** While change tracking is on,
//!   every batch also records which keys it changed (`cl/{gen}/{key}`), so
//!   an incremental backup reads only those. An online snapshot keeps the
//!   before-image of every key a write touches ahead of the backup's cursor,
//!   so the backup sees the store exactly as it was when it began while
//!   writes go on.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use super::crypt::{self, CryptError, MasterKey, ScopeKey};
use super::keys::{self, Class};
use super::{Backend, Entry, SledBackend, StoreError, Write};
use crate::support::sync::Recover as _;

/// How to open a `Store`.
pub struct StoreConfig {
    /// Folder holding `system/` and `regions/{name}/`.
    pub dir: PathBuf,
    /// Region names; the first is the default.
    pub regions: Vec<String>,
    /// The key every scope key is wrapped by.
    pub master: MasterKey,
    /// A master key a rotation was moving to when the process stopped.
    pub next_master: Option<MasterKey>,
    /// Record changed keys for incremental backups.
    pub track_changes: bool,
}

/// Index of the system database in `Store::backends`.
const SYSTEM: usize = 0;
/// The system scope's name in the keyring.
const SYSTEM_SCOPE: &str = "system";

fn tenant_scope(tenant: &str) -> String {
    format!("tenant/{tenant}")
}

/// A store of sealed values over one database per region.
pub struct Store {
    backends: Vec<Arc<dyn Backend>>,
    /// `names[i]` names `backends[i]`: `system` or `region/{name}`.
    names: Vec<String>,
    placement: RwLock<HashMap<String, usize>>,
    keyring: RwLock<Keyring>,
    gate: Mutex<Gate>,
    sync: Arc<GroupCommit>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Keyring {
    master: MasterKey,
    scopes: HashMap<String, Arc<ScopeKey>>,
}

#[derive(Default)]
struct Gate {
    /// Generation of changelog markers; `None` when tracking is off.
    generation: Option<u32>,
    snapshot: Option<Snapshot>,
}

struct Snapshot {
    cursors: Vec<Cursor>,
    /// Before-images of keys written after the snapshot began and not yet
    /// passed by the cursor: `None` if the key did not exist.
    before: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

#[derive(Clone)]
enum Cursor {
    Start,
    After(Vec<u8>),
    Done,
}

impl Cursor {
    fn covers(&self, key: &[u8]) -> bool {
        match self {
            Cursor::Start => false,
            Cursor::After(c) => key <= c.as_slice(),
            Cursor::Done => true,
        }
    }
}

/// One page of a snapshot: raw entries as they were when it began.
pub struct SnapshotPage {
    /// Which database (`system` or `region/{name}`).
    pub database: String,
    pub entries: Vec<Entry>,
}

impl Store {
    /// Opens (creating) every database and the keyring.
    pub fn open(config: StoreConfig) -> Result<Store, StoreError> {
        if config.regions.is_empty() {
            return Err(StoreError::Routing(
                "at least one region is required".into(),
            ));
        }
        let mut backends: Vec<Arc<dyn Backend>> =
            vec![Arc::new(SledBackend::open(&config.dir.join("system"))?)];
        let mut names = vec!["system".to_string()];
        for (i, region) in config.regions.iter().enumerate() {
            if config.regions[..i].contains(region) {
                return Err(StoreError::Routing(format!(
                    "region {region:?} is listed twice"
                )));
            }
            if !crate::tenant::is_valid_tenant_id(region) {
                return Err(StoreError::Routing(format!(
                    "region name {region:?} must match [a-z0-9][a-z0-9-]*"
                )));
            }
            backends.push(Arc::new(SledBackend::open(
                &config.dir.join("regions").join(region),
            )?));
            names.push(format!("region/{region}"));
        }
        let mut state = read_state(backends[SYSTEM].as_ref())?;
        let generation = if config.track_changes {
            Some(state.generation)
        } else {
            if !state.untracked {
                state.untracked = true;
                backends[SYSTEM].apply(&[(keys::BACKUP_STATE.to_vec(), Some(state.encode()))])?;
            }
            None
        };
        let keyring = load_keyring(
            backends[SYSTEM].as_ref(),
            config.master,
            config.next_master,
            generation,
        )?;
        let (sync, flusher) = GroupCommit::start(backends.clone());
        Ok(Store {
            flusher: Mutex::new(flusher),
            backends,
            names,
            placement: RwLock::default(),
            keyring: RwLock::new(keyring),
            gate: Mutex::new(Gate {
                generation,
                snapshot: None,
            }),
            sync,
        })
    }

    /// Region names, default first.
    pub fn regions(&self) -> Vec<String> {
        self.names[1..]
            .iter()
            .map(|n| n.trim_start_matches("region/").to_string())
            .collect()
    }

    /// Places `tenant` in `region` (before any of its data is written).
    pub fn place(&self, tenant: &str, region: &str) -> Result<(), StoreError> {
        let idx = self
            .names
            .iter()
            .position(|n| n.strip_prefix("region/") == Some(region))
            .ok_or_else(|| {
                StoreError::Routing(format!(
                    "unknown region {region:?}; this server has {}",
                    self.regions().join(", ")
                ))
            })?;
        write_lock(&self.placement).insert(tenant.to_string(), idx);
        Ok(())
    }

    fn region_of(&self, tenant: &str) -> Result<usize, StoreError> {
        read_lock(&self.placement)
            .get(tenant)
            .copied()
            .ok_or_else(|| StoreError::Routing(format!("tenant {tenant} has no region")))
    }

    fn route(&self, key: &[u8]) -> Result<usize, StoreError> {
        match keys::tenant_of(key) {
            Some(t) => self.region_of(t),
            None => Ok(SYSTEM),
        }
    }

    // ---- sealing -----------------------------------------------------------

    fn scope_key(&self, scope: &str, key: &[u8]) -> Result<Arc<ScopeKey>, StoreError> {
        read_lock(&self.keyring)
            .scopes
            .get(scope)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt {
                key: show(key),
                reason: format!("the key of {scope} does not exist (deleted?)"),
            })
    }

    fn seal(&self, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let scope = match keys::classify(key) {
            Class::Keyring => {
                crypt::wrapped_by(value).map_err(|e| corrupt(key, e))?;
                return Ok(value.to_vec());
            }
            Class::Changelog => return Ok(value.to_vec()),
            Class::Chunk(_) => {
                if !value.starts_with(&crypt::CHUNK_MAGIC) {
                    return Err(StoreError::Corrupt {
                        key: show(key),
                        reason: "blob chunks must be sealed before they are stored".into(),
                    });
                }
                return Ok(value.to_vec());
            }
            Class::Tenant(t) => tenant_scope(t),
            Class::System => SYSTEM_SCOPE.to_string(),
        };
        Ok(self.scope_key(&scope, key)?.seal_object(key, value)?)
    }

    fn open_value(&self, key: &[u8], raw: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let scope = match keys::classify(key) {
            Class::Keyring | Class::Changelog | Class::Chunk(_) => return Ok(raw),
            Class::Tenant(t) => tenant_scope(t),
            Class::System => SYSTEM_SCOPE.to_string(),
        };
        self.scope_key(&scope, key)?
            .open_object(key, &raw)
            .map_err(|e| corrupt(key, e))
    }

    /// Bytes `value` occupies once stored under `key`.
    pub fn stored_len(key: &[u8], value_len: usize) -> usize {
        match keys::classify(key) {
            Class::Keyring | Class::Changelog | Class::Chunk(_) => value_len,
            Class::Tenant(_) | Class::System => value_len + crypt::OBJECT_OVERHEAD,
        }
    }

    // ---- reads and writes ------------------------------------------------

    /// Checks that the system database answers reads (for `/status`).
    pub fn probe(&self) -> Result<(), StoreError> {
        self.get(b"sys/probe").map(|_| ())
    }

    /// The value of `key`, authenticated and opened.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let b = self.route(key)?;
        match self.backends[b].get(key)? {
            Some(raw) => Ok(Some(self.open_value(key, raw)?)),
            None => Ok(None),
        }
    }

    /// The stored (sealed) bytes of `key`, unopened: every write seals under
    /// a fresh data key, so equal bytes mean the value was not written
    /// since (what the session check's cache compares).
    pub fn sealed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let b = self.route(key)?;
        self.backends[b].get(key)
    }

    /// Opens `sealed`, the stored bytes of `key` (from `sealed`).
    pub fn open_sealed(&self, key: &[u8], sealed: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.open_value(key, sealed)
    }

    /// Length of the stored (sealed) value of `key`.
    pub fn raw_len(&self, key: &[u8]) -> Result<Option<usize>, StoreError> {
        let b = self.route(key)?;
        Ok(self.backends[b].get(key)?.map(|v| v.len()))
    }

    /// Up to `limit` entries under `prefix` after `start_after`, opened.
    /// A prefix spanning tenants (the timer queue `q/`) is merged across
    /// every region.
    pub fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let raw = self.scan_raw(prefix, start_after, limit)?;
        raw.into_iter()
            .map(|(k, v)| {
                let v = self.open_value(&k, v)?;
                Ok((k, v))
            })
            .collect()
    }

    /// `scan` without opening values (for deleting and counting).
    pub fn scan_raw(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if let Some(t) = keys::tenant_of(prefix) {
            let b = self.region_of(t)?;
            return self.backends[b].scan(prefix, start_after, limit);
        }
        if prefix.starts_with(b"t/") || prefix == b"t" {
            return Err(StoreError::Routing(
                "a scan over tenant data must name one tenant".into(),
            ));
        }
        if prefix.starts_with(b"q/") || prefix == b"q" {
            let mut merged = Vec::new();
            for b in &self.backends[1..] {
                merged.extend(b.scan(prefix, start_after, limit)?);
            }
            merged.sort_by(|a, b| a.0.cmp(&b.0));
            merged.truncate(limit);
            return Ok(merged);
        }
        self.backends[SYSTEM].scan(prefix, start_after, limit)
    }

    /// Seals and applies `writes` atomically; they must all belong to one
    /// database. Returns the sequence number to pass to `durable`.
    pub fn apply(&self, writes: &[Write]) -> Result<u64, StoreError> {
        if writes.is_empty() {
            return Ok(self.sync.applied.load(Ordering::Acquire));
        }
        let b = self.route(&writes[0].0)?;
        let mut sealed = Vec::with_capacity(writes.len());
        for (k, v) in writes {
            if self.route(k)? != b {
                return Err(StoreError::Routing(format!(
                    "one batch cannot span databases ({} and {})",
                    show(&writes[0].0),
                    show(k)
                )));
            }
            let v = match v {
                Some(v) => Some(self.seal(k, v)?),
                None => None,
            };
            sealed.push((k.clone(), v));
        }
        self.apply_sealed(b, sealed)
    }

    /// Applies already-sealed writes to database `b`, keeping the
    /// changelog and any running snapshot consistent.
    fn apply_sealed(&self, b: usize, mut writes: Vec<Write>) -> Result<u64, StoreError> {
        let mut gate = lock(&self.gate);
        if let Some(generation) = gate.generation {
            let markers: Vec<Write> = writes
                .iter()
                .filter(|(k, _)| !k.starts_with(keys::CHANGELOG))
                .map(|(k, _)| (keys::changelog(generation, k), Some(Vec::new())))
                .collect();
            writes.extend(markers);
        }
        if let Some(snap) = gate.snapshot.as_mut() {
            for (k, _) in &writes {
                if !snap.cursors[b].covers(k) && !snap.before[b].contains_key(k) {
                    let before = self.backends[b].get(k)?;
                    snap.before[b].insert(k.clone(), before);
                }
            }
        }
        self.backends[b].apply(&writes)?;
        drop(gate);
        Ok(self.sync.applied.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Waits until the batch numbered `seq` is on disk. Concurrent waiters
    /// share one flush.
    pub async fn durable(&self, seq: u64) -> Result<(), StoreError> {
        if self.flusher.lock().map(|h| h.is_none()).unwrap_or(true) {
            // No flusher thread: flush inline.
            return self.flush();
        }
        let mut rx = self.sync.durable.subscribe();
        self.sync.request();
        let state = rx
            .wait_for(|s| s.durable >= seq || s.failed_at >= seq)
            .await
            .map_err(|_| StoreError::Backend("the flusher stopped".into()))?;
        if state.durable >= seq {
            Ok(())
        } else {
            Err(StoreError::Backend(format!(
                "flushing to disk failed: {}",
                state.error.as_deref().unwrap_or("unknown error")
            )))
        }
    }

    /// Flushes every database now (blocking).
    pub fn flush(&self) -> Result<(), StoreError> {
        for b in &self.backends {
            b.flush()?;
        }
        Ok(())
    }

    // ---- keyring -----------------------------------------------------------

    /// The current master key (backups carry it, sealed by the backup key).
    pub fn master_key(&self) -> MasterKey {
        read_lock(&self.keyring).master.clone()
    }

    /// The current master key's id.
    pub fn master_key_id(&self) -> String {
        read_lock(&self.keyring).master.id().to_string()
    }

    /// A new key for `tenant`: the write that stores it (to commit with the
    /// tenant record) and nothing else. It is usable at once.
    pub fn new_tenant_key(&self, tenant: &str) -> Result<Write, StoreError> {
        let scope = tenant_scope(tenant);
        let record_key = keys::keyring(&scope);
        let key = ScopeKey::generate()?;
        let mut ring = write_lock(&self.keyring);
        let wrapped = crypt::wrap_scope_key(&ring.master, &record_key, &key)?;
        ring.scopes.insert(scope, Arc::new(key));
        Ok((record_key, Some(wrapped)))
    }

    /// The write that destroys `tenant`'s key (crypto-shredding). Call
    /// `forget_tenant_key` once it is applied.
    pub fn shred_tenant_key(&self, tenant: &str) -> Write {
        (keys::keyring(&tenant_scope(tenant)), None)
    }

    /// Drops `tenant`'s key from memory (after its shredding is applied).
    pub fn forget_tenant_key(&self, tenant: &str) {
        write_lock(&self.keyring)
            .scopes
            .remove(&tenant_scope(tenant));
    }

    /// Whether anything of `tenant` is on disk: a directory entry, a key,
    /// a pending reclamation or data in `region`.
    pub fn tenant_traces(&self, tenant: &str) -> Result<bool, StoreError> {
        let system = &self.backends[SYSTEM];
        Ok(system.get(&keys::tenant(tenant))?.is_some()
            || system.get(&keys::deleted_tenant(tenant))?.is_some()
            || system.get(&keys::keyring(&tenant_scope(tenant)))?.is_some())
    }

    /// Whether `tenant` has a key.
    pub fn has_tenant_key(&self, tenant: &str) -> bool {
        read_lock(&self.keyring)
            .scopes
            .contains_key(&tenant_scope(tenant))
    }

    /// `tenant`'s key, for deriving per-plugin keys (crypto capability).
    pub fn tenant_key(&self, tenant: &str) -> Result<Arc<ScopeKey>, StoreError> {
        let scope = tenant_scope(tenant);
        self.scope_key(&scope, scope.as_bytes())
    }

    /// Rewraps every scope key under `next` in one batch and makes `next`
    /// current. No data is rewritten; calls go on throughout.
    pub fn rotate_master(&self, next: MasterKey) -> Result<usize, StoreError> {
        let mut ring = write_lock(&self.keyring);
        let mut writes = Vec::new();
        for (scope, key) in &ring.scopes {
            let record_key = keys::keyring(scope);
            writes.push((
                record_key.clone(),
                Some(crypt::wrap_scope_key(&next, &record_key, key)?),
            ));
        }
        let n = writes.len();
        self.apply_sealed(SYSTEM, writes)?;
        self.backends[SYSTEM].flush()?;
        ring.master = next;
        Ok(n)
    }

    // ---- snapshots and changelog ----------------------------------------

    /// Database names, system first.
    pub fn databases(&self) -> &[String] {
        &self.names
    }

    /// Begins an online snapshot. Returns the changelog generation it
    /// closes: markers of generations below it are covered by the snapshot.
    pub fn begin_snapshot(&self) -> Result<u32, StoreError> {
        let mut gate = lock(&self.gate);
        if gate.snapshot.is_some() {
            return Err(StoreError::Backend("a backup is already running".into()));
        }
        let mut state = read_state(self.backends[SYSTEM].as_ref())?;
        state.generation += 1;
        let closes = state.generation;
        self.backends[SYSTEM].apply(&[(keys::BACKUP_STATE.to_vec(), Some(state.encode()))])?;
        if gate.generation.is_some() {
            gate.generation = Some(closes);
        }
        gate.snapshot = Some(Snapshot {
            cursors: vec![Cursor::Start; self.backends.len()],
            before: vec![BTreeMap::new(); self.backends.len()],
        });
        Ok(closes)
    }

    /// The next page of database `db` in the running snapshot; `None` when
    /// that database is finished.
    pub fn snapshot_page(
        &self,
        db: usize,
        limit: usize,
    ) -> Result<Option<SnapshotPage>, StoreError> {
        let mut gate = lock(&self.gate);
        let snap = gate
            .snapshot
            .as_mut()
            .ok_or_else(|| StoreError::Backend("no snapshot is running".into()))?;
        let after = match &snap.cursors[db] {
            Cursor::Done => return Ok(None),
            Cursor::Start => None,
            Cursor::After(c) => Some(c.clone()),
        };
        let page = self.backends[db].scan(b"", after.as_deref(), limit.max(1))?;
        let end = if page.len() >= limit.max(1) {
            page.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            page.into_iter().map(|(k, v)| (k, Some(v))).collect();
        let lower = match &after {
            Some(a) => Bound::Excluded(a.clone()),
            None => Bound::Unbounded,
        };
        let upper = match &end {
            Some(e) => Bound::Included(e.clone()),
            None => Bound::Unbounded,
        };
        let passed: Vec<Vec<u8>> = snap.before[db]
            .range((lower, upper))
            .map(|(k, _)| k.clone())
            .collect();
        for k in passed {
            if let Some(before) = snap.before[db].remove(&k) {
                merged.insert(k, before);
            }
        }
        snap.cursors[db] = match end {
            Some(e) => Cursor::After(e),
            None => Cursor::Done,
        };
        Ok(Some(SnapshotPage {
            database: self.names[db].clone(),
            entries: merged
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect(),
        }))
    }

    /// Ends the running snapshot.
    pub fn end_snapshot(&self) {
        lock(&self.gate).snapshot = None;
    }

    /// Deletes changelog markers of generations below `generation` (after
    /// a backup that covers them succeeded).
    pub fn clear_changelog(&self, generation: u32) -> Result<(), StoreError> {
        for b in &self.backends {
            loop {
                let page = b.scan(keys::CHANGELOG, None, 1024)?;
                let stale: Vec<Write> = page
                    .iter()
                    .filter(|(k, _)| keys::parse_changelog(k).is_some_and(|(g, _)| g < generation))
                    .map(|(k, _)| (k.clone(), None))
                    .collect();
                if stale.is_empty() {
                    break;
                }
                b.apply(&stale)?;
            }
        }
        Ok(())
    }

    /// Whether the changelog holds every change since the last backup (so
    /// an incremental backup is complete).
    pub fn changes_complete(&self) -> Result<bool, StoreError> {
        let tracking = lock(&self.gate).generation.is_some();
        Ok(tracking && !read_state(self.backends[SYSTEM].as_ref())?.untracked)
    }

    /// Records that a full backup covered everything: the changelog is
    /// complete from here on (when tracking is on).
    pub fn mark_changes_complete(&self) -> Result<(), StoreError> {
        let gate = lock(&self.gate);
        if gate.generation.is_none() {
            return Ok(());
        }
        let mut state = read_state(self.backends[SYSTEM].as_ref())?;
        if state.untracked {
            state.untracked = false;
            self.backends[SYSTEM].apply(&[(keys::BACKUP_STATE.to_vec(), Some(state.encode()))])?;
        }
        Ok(())
    }

    /// Backup bookkeeping, raw (never backed up).
    pub fn backup_state(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.backends[SYSTEM]
            .get(keys::BACKUP_STATE)?
            .unwrap_or_default())
    }

    /// Replaces the backup bookkeeping, keeping the generation.
    pub fn set_backup_state(&self, extra: serde_json::Value) -> Result<(), StoreError> {
        let _gate = lock(&self.gate);
        let mut state = read_state(self.backends[SYSTEM].as_ref())?;
        state.extra = extra;
        self.backends[SYSTEM].apply(&[(keys::BACKUP_STATE.to_vec(), Some(state.encode()))])?;
        self.backends[SYSTEM].flush()
    }

    /// Writes raw entries into database `name` (restore only: the target
    /// must be fresh).
    pub fn restore_raw(&self, name: &str, writes: &[Write]) -> Result<(), StoreError> {
        let b = self
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| {
                StoreError::Routing(format!(
                    "the backup holds database {name}, which this server does not have; configure its region"
                ))
            })?;
        self.backends[b].apply(writes)
    }

    /// Every raw entry of database `db` (for digests), page by page.
    pub fn raw_page(
        &self,
        db: usize,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.backends[db].scan(b"", after, limit)
    }

    /// Reloads the keyring from the system database (after a restore).
    pub fn reload_keyring(&self) -> Result<(), StoreError> {
        let master = read_lock(&self.keyring).master.clone();
        let ring = load_keyring(self.backends[SYSTEM].as_ref(), master, None, None)?;
        *write_lock(&self.keyring) = ring;
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.sync.stop.store(true, Ordering::Release);
        self.sync.request();
        // The flusher holds the databases open; wait for it to let go so
        // the folder can be reopened at once.
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "flushing the store at shutdown failed");
        }
    }
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(&key[..key.len().min(120)]).into_owned()
}

fn corrupt(key: &[u8], e: CryptError) -> StoreError {
    StoreError::Corrupt {
        key: show(key),
        reason: e.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().recover()
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().recover()
}

fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().recover()
}

/// `cl/state`: the changelog generation and the backup module's notes.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct State {
    generation: u32,
    /// Set when the store ran without change tracking: the changelog may
    /// miss changes, so the next backup must be full.
    #[serde(default)]
    untracked: bool,
    #[serde(default)]
    extra: serde_json::Value,
}

impl State {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn read_state(system: &dyn Backend) -> Result<State, StoreError> {
    match system.get(keys::BACKUP_STATE)? {
        None => Ok(State::default()),
        Some(raw) => serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
            key: "cl/state".into(),
            reason: e.to_string(),
        }),
    }
}

/// Loads and unwraps every scope key; creates the system key on first run.
/// When a rotation was interrupted (`next` given), records wrapped by
/// either key are accepted and the rotation is completed.
fn load_keyring(
    system: &dyn Backend,
    master: MasterKey,
    next: Option<MasterKey>,
    generation: Option<u32>,
) -> Result<Keyring, StoreError> {
    let mut scopes = HashMap::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = system.scan(keys::KEYRING, after.as_deref(), 256)?;
        let Some(last) = page.last() else { break };
        after = Some(last.0.clone());
        for (k, v) in page {
            let scope = String::from_utf8_lossy(&k[keys::KEYRING.len()..]).into_owned();
            let by = crypt::wrapped_by(&v).map_err(|e| corrupt(&k, e))?;
            let with = match &next {
                Some(n) if n.id() == by => n,
                _ => &master,
            };
            let key = crypt::unwrap_scope_key(with, &k, &v).map_err(|e| match e {
                CryptError::MasterKey(m) => StoreError::Crypt(CryptError::MasterKey(format!(
                    "{m}; start the server with the master key this data folder was created with"
                ))),
                other => corrupt(&k, other),
            })?;
            scopes.insert(scope, Arc::new(key));
        }
    }
    let current = next.unwrap_or(master);
    let mut rewrap = Vec::new();
    if !scopes.contains_key(SYSTEM_SCOPE) {
        let key = ScopeKey::generate()?;
        let record_key = keys::keyring(SYSTEM_SCOPE);
        rewrap.push((
            record_key.clone(),
            Some(crypt::wrap_scope_key(&current, &record_key, &key)?),
        ));
        scopes.insert(SYSTEM_SCOPE.to_string(), Arc::new(key));
    }
    // Finish an interrupted rotation (idempotent when there was none).
    for (scope, key) in &scopes {
        let record_key = keys::keyring(scope);
        if let Some(raw) = system.get(&record_key)?
            && crypt::wrapped_by(&raw).ok().as_deref() != Some(current.id())
        {
            rewrap.push((
                record_key.clone(),
                Some(crypt::wrap_scope_key(&current, &record_key, key)?),
            ));
        }
    }
    if !rewrap.is_empty() {
        // Changed keyring records must reach the next incremental backup.
        if let Some(g) = generation {
            let markers: Vec<Write> = rewrap
                .iter()
                .map(|(k, _)| (keys::changelog(g, k), Some(Vec::new())))
                .collect();
            rewrap.extend(markers);
        }
        system.apply(&rewrap)?;
        system.flush()?;
    }
    Ok(Keyring {
        master: current,
        scopes,
    })
}

// ---- group commit ----------------------------------------------------------

#[derive(Clone, Default)]
struct Durable {
    durable: u64,
    failed_at: u64,
    error: Option<Arc<str>>,
}

struct GroupCommit {
    applied: AtomicU64,
    durable: tokio::sync::watch::Sender<Durable>,
    wake: Mutex<bool>,
    cv: Condvar,
    stop: AtomicBool,
}

impl GroupCommit {
    fn start(
        backends: Vec<Arc<dyn Backend>>,
    ) -> (Arc<GroupCommit>, Option<std::thread::JoinHandle<()>>) {
        let gc = Arc::new(GroupCommit {
            applied: AtomicU64::new(0),
            durable: tokio::sync::watch::Sender::new(Durable::default()),
            wake: Mutex::new(false),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&gc);
        let spawned = std::thread::Builder::new()
            .name("sb-flusher".into())
            .spawn(move || flusher(weak, backends));
        match spawned {
            Ok(h) => (gc, Some(h)),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the flusher thread; commits will flush inline");
                (gc, None)
            }
        }
    }

    fn request(&self) {
        *lock(&self.wake) = true;
        self.cv.notify_one();
    }
}

fn flusher(gc: std::sync::Weak<GroupCommit>, backends: Vec<Arc<dyn Backend>>) {
    loop {
        let Some(gc) = gc.upgrade() else { return };
        {
            let mut wake = lock(&gc.wake);
            while !*wake && !gc.stop.load(Ordering::Acquire) {
                let (w, _) = gc
                    .cv
                    .wait_timeout(wake, Duration::from_millis(100))
                    .recover();
                wake = w;
            }
            *wake = false;
        }
        if gc.stop.load(Ordering::Acquire) {
            return;
        }
        // Everything applied before this load is covered by the flush.
        let target = gc.applied.load(Ordering::Acquire);
        if gc.durable.borrow().durable >= target {
            continue;
        }
        let result = backends.iter().try_for_each(|b| b.flush());
        gc.durable.send_modify(|d| match result {
            Ok(()) => {
                d.durable = target;
                d.error = None;
            }
            Err(e) => {
                d.failed_at = target;
                d.error = Some(e.to_string().into());
            }
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store on a fresh folder with one region `local`.
    pub(crate) fn open_temp(dir: &std::path::Path, master: &MasterKey) -> Store {
        let store = Store::open(StoreConfig {
            dir: dir.to_path_buf(),
            regions: vec!["local".into(), "eu".into()],
            master: master.clone(),
            next_master: None,
            track_changes: true,
        })
        .unwrap();
        store.place("acme", "local").unwrap();
        store.place("beta", "eu").unwrap();
        if !store.has_tenant_key("acme") {
            let w = store.new_tenant_key("acme").unwrap();
            let w2 = store.new_tenant_key("beta").unwrap();
            store.apply(&[w, w2]).unwrap();
        }
        store
    }

    #[test]
    fn values_are_sealed_routed_by_region_and_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let store = open_temp(dir.path(), &master);
        store
            .apply(&[(b"t/acme/k/p/x".to_vec(), Some(b"MARKER-a1".to_vec()))])
            .unwrap();
        store
            .apply(&[(b"t/beta/k/p/x".to_vec(), Some(b"MARKER-b1".to_vec()))])
            .unwrap();
        assert_eq!(store.get(b"t/acme/k/p/x").unwrap().unwrap(), b"MARKER-a1");
        // Each tenant's data is in its region's database only.
        assert!(store.backends[1].get(b"t/acme/k/p/x").unwrap().is_some());
        assert!(store.backends[2].get(b"t/acme/k/p/x").unwrap().is_none());
        assert!(store.backends[2].get(b"t/beta/k/p/x").unwrap().is_some());
        // A batch over two regions is refused whole.
        let err = store
            .apply(&[
                (b"t/acme/k/p/y".to_vec(), Some(b"1".to_vec())),
                (b"t/beta/k/p/y".to_vec(), Some(b"1".to_vec())),
            ])
            .unwrap_err();
        assert!(matches!(err, StoreError::Routing(_)), "{err}");
        assert!(store.get(b"t/acme/k/p/y").unwrap().is_none());
        // A flipped byte on disk is an authentication error, not data.
        let mut raw = store.backends[1].get(b"t/acme/k/p/x").unwrap().unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        store.backends[1]
            .apply(&[(b"t/acme/k/p/x".to_vec(), Some(raw))])
            .unwrap();
        let err = store.get(b"t/acme/k/p/x").unwrap_err().to_string();
        assert!(err.contains("authentication failed"), "{err}");
        // A value copied under another tenant's key does not open either.
        let stolen = store.backends[2].get(b"t/beta/k/p/x").unwrap().unwrap();
        store.backends[1]
            .apply(&[(b"t/acme/k/p/z".to_vec(), Some(stolen))])
            .unwrap();
        assert!(store.get(b"t/acme/k/p/z").is_err());
    }

    #[test]
    fn shredding_a_tenant_key_makes_its_data_unreadable_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        {
            let store = open_temp(dir.path(), &master);
            store
                .apply(&[(b"t/acme/k/p/x".to_vec(), Some(b"v".to_vec()))])
                .unwrap();
            let shred = store.shred_tenant_key("acme");
            store.apply(&[shred]).unwrap();
            store.forget_tenant_key("acme");
            assert!(store.get(b"t/acme/k/p/x").is_err());
        }
        let store = Store::open(StoreConfig {
            dir: dir.path().to_path_buf(),
            regions: vec!["local".into(), "eu".into()],
            master,
            next_master: None,
            track_changes: false,
        })
        .unwrap();
        store.place("acme", "local").unwrap();
        assert!(!store.has_tenant_key("acme"));
        assert!(store.get(b"t/acme/k/p/x").is_err());
    }

    #[test]
    fn master_rotation_rewraps_keys_and_the_old_key_stops_working() {
        let dir = tempfile::tempdir().unwrap();
        let m1 = MasterKey::generate().unwrap();
        let m2 = MasterKey::generate().unwrap();
        {
            let store = open_temp(dir.path(), &m1);
            store
                .apply(&[(b"t/acme/k/p/x".to_vec(), Some(b"kept".to_vec()))])
                .unwrap();
            let raw_before = store.backends[1].get(b"t/acme/k/p/x").unwrap();
            assert_eq!(store.rotate_master(m2.clone()).unwrap(), 3);
            // Data was not rewritten.
            assert_eq!(store.backends[1].get(b"t/acme/k/p/x").unwrap(), raw_before);
            assert_eq!(store.master_key_id(), m2.id());
        }
        let reopen = |m: &MasterKey, next: Option<MasterKey>| {
            Store::open(StoreConfig {
                dir: dir.path().to_path_buf(),
                regions: vec!["local".into(), "eu".into()],
                master: m.clone(),
                next_master: next,
                track_changes: false,
            })
        };
        let err = reopen(&m1, None).err().unwrap().to_string();
        assert!(err.contains("wrapped by master key"), "{err}");
        let store = reopen(&m2, None).unwrap();
        store.place("acme", "local").unwrap();
        assert_eq!(store.get(b"t/acme/k/p/x").unwrap().unwrap(), b"kept");
        drop(store);
        // An interrupted rotation back to m1 (old = m2, next = m1) finishes.
        let store = reopen(&m2, Some(m1.clone())).unwrap();
        assert_eq!(store.master_key_id(), m1.id());
        drop(store);
        assert!(reopen(&m1, None).is_ok());
    }

    #[test]
    fn a_snapshot_sees_the_store_as_it_was_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let store = open_temp(dir.path(), &master);
        for i in 0..20u8 {
            store
                .apply(&[(format!("t/acme/k/p/{i:02}").into_bytes(), Some(vec![i]))])
                .unwrap();
        }
        let closes = store.begin_snapshot().unwrap();
        let mut seen: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut step = 0u8;
        while let Some(page) = store.snapshot_page(1, 3).unwrap() {
            for (k, v) in page.entries {
                seen.insert(k, v);
            }
            // Writes during the backup: changes, deletes, inserts on both
            // sides of the cursor.
            let k = format!("t/acme/k/p/{:02}", (step * 7) % 20).into_bytes();
            store.apply(&[(k, Some(vec![200]))]).unwrap();
            store
                .apply(&[(
                    format!("t/acme/k/p/{:02}", 19 - step % 20).into_bytes(),
                    None,
                )])
                .unwrap();
            store
                .apply(&[(format!("t/acme/k/p/new{step}").into_bytes(), Some(vec![1]))])
                .unwrap();
            step += 1;
        }
        store.end_snapshot();
        let data: BTreeMap<_, _> = seen
            .iter()
            .filter(|(k, _)| k.starts_with(b"t/acme/k/p/"))
            .map(|(k, v)| (k.clone(), store.open_value(k, v.clone()).unwrap()))
            .collect();
        assert_eq!(data.len(), 20, "exactly the keys present at the start");
        for (i, (_, v)) in data.iter().enumerate() {
            assert_eq!(v, &vec![i as u8]);
        }
        // Markers before the snapshot are in it; those after are not.
        let markers: Vec<_> = seen
            .keys()
            .filter_map(|k| keys::parse_changelog(k))
            .collect();
        assert!(markers.iter().all(|(g, _)| *g < closes));
        assert!(markers.len() >= 20);
        store.clear_changelog(closes).unwrap();
        let left = store.backends[1].scan(keys::CHANGELOG, None, 1000).unwrap();
        assert!(
            left.iter()
                .all(|(k, _)| keys::parse_changelog(k).unwrap().0 == closes)
        );
        assert!(!left.is_empty());
    }

    #[test]
    fn bad_region_lists_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        for (regions, want) in [
            (vec![], "at least one region"),
            (vec!["eu".to_string(), "eu".to_string()], "listed twice"),
            (vec!["EU/../x".to_string()], "must match"),
        ] {
            let err = Store::open(StoreConfig {
                dir: dir.path().to_path_buf(),
                regions,
                master: master.clone(),
                next_master: None,
                track_changes: false,
            })
            .err()
            .unwrap()
            .to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[tokio::test]
    async fn durable_waits_for_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::generate().unwrap();
        let store = Arc::new(open_temp(dir.path(), &master));
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let seq = store
                    .apply(&[(format!("t/acme/k/p/{i}").into_bytes(), Some(vec![i]))])
                    .unwrap();
                store.durable(seq).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(store.sync.durable.borrow().durable >= 16);
    }
}
