//! Backups (SPEC D5): online, consistent, encrypted, full or incremental,
//! verified on restore.
//!
//! A backup is one file, `{created}-{kind}-{id}.sbbak`:
//!
//! ```text
//! "SBBACKUP1\n" | u32 header length | header (JSON, authenticated)
//! frames: u32 length | nonce | AES-256-GCM(records) | tag
//! ```
//!
//! Frames are sealed under a key derived from the backup key and the
//! backup's id, with the header's hash, the frame's index and whether it
//! is the last frame as associated data: a flipped bit, a dropped,
//! reordered or swapped frame, a truncated file or an edited header all
//! fail authentication. Records carry raw store entries, so values stay
//! sealed under their tenant keys inside the backup as well. The last frame
//! holds the trailer: counts and a SHA-256 digest of the whole store as of
//! the snapshot, which a restore recomputes over what it wrote.
//!
//! A backup reads the store through an online snapshot (`Store::
//! begin_snapshot`): calls go on while it runs and the backup is the store
//! exactly as it was when it began. An incremental backup writes only keys
//! the changelog names as changed since the previous backup, plus
//! deletions; a restore replays the full backup and then each incremental
//! of its chain.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::crypt::{self, MasterKey};
use crate::store::{Backend, SledBackend, Store, StoreError, keys};

const MAGIC: &[u8; 10] = b"SBBACKUP1\n";
const FRAME_TARGET: usize = 1 << 20;
const MAX_FRAME: usize = 64 << 20;
const MAX_HEADER: usize = 64 << 10;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_MASTER: u8 = 3;

/// Why a backup operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("{0}")]
    Io(String),
    /// The file is damaged, truncated, tampered with or sealed under
    /// another backup key.
    #[error("backup {file} is corrupt: {reason}")]
    Corrupt { file: String, reason: String },
    /// An incremental backup's chain is incomplete.
    #[error("{0}")]
    Chain(String),
    /// The restore target is not fresh.
    #[error("{0}")]
    Target(String),
    /// The restored store differs from what was backed up.
    #[error("restore verification failed: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BackupError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            BackupError::Io(_) => "backup_io",
            BackupError::Corrupt { .. } => "backup_corrupt",
            BackupError::Chain(_) => "backup_chain_broken",
            BackupError::Target(_) => "restore_target_not_empty",
            BackupError::Mismatch(_) => "restore_mismatch",
            BackupError::Store(_) => "storage_unavailable",
        }
    }
}

fn io(context: &str, e: std::io::Error) -> BackupError {
    BackupError::Io(format!("{context}: {e}"))
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Incremental,
}

/// The authenticated header of a backup file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: u32,
    pub id: String,
    pub kind: Kind,
    /// The backup this one builds on (incremental only).
    pub parent: Option<String>,
    pub created_ms: u64,
    /// Databases, by index used in records.
    pub databases: Vec<String>,
    /// Which backup key sealed it.
    pub backup_key_id: String,
}

/// Counts and digest, in the last frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Trailer {
    /// Entries written (puts).
    pub puts: u64,
    /// Deletions written (incremental only).
    pub deletes: u64,
    /// Entries in the store at the snapshot.
    pub live: u64,
    /// SHA-256 over every entry of the store at the snapshot.
    pub digest: String,
}

/// What `create` made.
#[derive(Debug, Clone)]
pub struct BackupInfo {
    pub header: Header,
    pub trailer: Trailer,
    pub file: PathBuf,
    pub bytes: u64,
}

/// Bookkeeping kept in the store (`cl/state`, never backed up).
#[derive(Debug, Default, Serialize, Deserialize)]
struct LastBackup {
    id: String,
    file: String,
    kind: Option<Kind>,
    created_ms: u64,
    /// When the last full backup was made.
    #[serde(default)]
    full_ms: u64,
}

fn last_backup(store: &Store) -> Result<Option<LastBackup>, BackupError> {
    let raw = store.backup_state()?;
    if raw.is_empty() {
        return Ok(None);
    }
    let state: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|e| BackupError::Corrupt {
            file: "cl/state".into(),
            reason: e.to_string(),
        })?;
    Ok(state
        .get("extra")
        .and_then(|e| e.get("last"))
        .and_then(|l| serde_json::from_value(l.clone()).ok()))
}

/// When the last backup and the last full backup were made (ms).
pub fn last_times(store: &Store) -> Result<Option<(u64, u64)>, BackupError> {
    Ok(last_backup(store)?.map(|l| (l.created_ms, l.full_ms)))
}

/// Streams the digest of a store's entries.
#[derive(Default)]
struct Digester {
    hash: Sha256,
    live: u64,
}

impl Digester {
    fn add(&mut self, db: &str, key: &[u8], value: &[u8]) {
        self.hash.update(db.as_bytes());
        self.hash.update([0]);
        self.hash.update((key.len() as u32).to_be_bytes());
        self.hash.update(key);
        self.hash.update((value.len() as u32).to_be_bytes());
        self.hash.update(value);
        self.live += 1;
    }

    fn finish(self) -> (u64, String) {
        (self.live, hex::encode(self.hash.finalize()))
    }
}

struct FrameWriter {
    file: std::fs::File,
    key: [u8; 32],
    header_hash: [u8; 32],
    index: u64,
    buf: Vec<u8>,
    bytes: u64,
}

fn frame_aad(header_hash: &[u8; 32], index: u64, last: bool) -> Vec<u8> {
    let mut aad = header_hash.to_vec();
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

impl FrameWriter {
    fn record(&mut self, op: u8, db: u16, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        self.buf.push(op);
        self.buf.extend_from_slice(&db.to_be_bytes());
        self.buf
            .extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(value);
        if self.buf.len() >= FRAME_TARGET {
            self.flush_frame(false)?;
        }
        Ok(())
    }

    fn flush_frame(&mut self, last: bool) -> Result<(), BackupError> {
        let aad = frame_aad(&self.header_hash, self.index, last);
        let sealed =
            crypt::seal(&self.key, &self.buf, &aad).map_err(|e| BackupError::Io(e.to_string()))?;
        self.file
            .write_all(&(sealed.len() as u32).to_be_bytes())
            .and_then(|()| self.file.write_all(&sealed))
            .map_err(|e| io("writing the backup", e))?;
        self.bytes += 4 + sealed.len() as u64;
        self.index += 1;
        self.buf.clear();
        Ok(())
    }
}

fn frame_key(backup_key: &MasterKey, id: &str) -> [u8; 32] {
    backup_key.derive(format!("switchboard backup frames\0{id}").as_bytes())
}

/// Makes a backup of `store` into `dir`. `kind` `None` picks incremental
/// when a previous backup exists in `dir`, full otherwise.
pub fn create(
    store: &Store,
    backup_key: &MasterKey,
    dir: &Path,
    kind: Option<Kind>,
) -> Result<BackupInfo, BackupError> {
    std::fs::create_dir_all(dir).map_err(|e| io(&format!("creating {}", dir.display()), e))?;
    let last = last_backup(store)?;
    let parent = last.filter(|l| dir.join(&l.file).exists());
    // Without a complete changelog (tracking off now or at some point
    // since the last backup) an incremental would miss changes.
    let complete = store.changes_complete()?;
    let kind = match (kind, &parent) {
        (Some(Kind::Incremental), None) => {
            return Err(BackupError::Chain(format!(
                "no previous backup in {} to build an incremental on; make a full backup first",
                dir.display()
            )));
        }
        (Some(Kind::Incremental), Some(_)) if !complete => {
            return Err(BackupError::Chain(
                "change tracking was off (backups disabled) since the last backup, so an incremental would miss changes; make a full backup".into(),
            ));
        }
        (Some(k), _) => k,
        (None, Some(_)) if complete => Kind::Incremental,
        (None, _) => Kind::Full,
    };
    let created_ms = crate::support::clock::now_ms();
    let id = crate::support::encoding::random_hex(8);
    let header = Header {
        format: 1,
        id: id.clone(),
        kind,
        parent: match kind {
            Kind::Incremental => parent.as_ref().map(|p| p.id.clone()),
            Kind::Full => None,
        },
        created_ms,
        databases: store.databases().to_vec(),
        backup_key_id: backup_key.id().to_string(),
    };
    let name = format!(
        "{created_ms:013}-{}-{id}.sbbak",
        match kind {
            Kind::Full => "full",
            Kind::Incremental => "incr",
        }
    );
    let tmp = dir.join(format!(".{name}.partial"));
    let result = write_backup(store, backup_key, &header, &tmp);
    let (trailer, bytes, closes) = match result {
        Ok(ok) => ok,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let file = dir.join(&name);
    std::fs::rename(&tmp, &file).map_err(|e| io("naming the backup", e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let full_ms = match (kind, &parent) {
        (Kind::Full, _) => created_ms,
        (Kind::Incremental, Some(p)) => p.full_ms,
        (Kind::Incremental, None) => 0,
    };
    store.set_backup_state(serde_json::json!({
        "last": LastBackup { id: id.clone(), file: name, kind: Some(kind), created_ms, full_ms }
    }))?;
    store.clear_changelog(closes)?;
    if kind == Kind::Full {
        store.mark_changes_complete()?;
    }
    Ok(BackupInfo {
        header,
        trailer,
        file,
        bytes,
    })
}

fn write_backup(
    store: &Store,
    backup_key: &MasterKey,
    header: &Header,
    path: &Path,
) -> Result<(Trailer, u64, u32), BackupError> {
    let header_json = serde_json::to_vec(header).map_err(|e| BackupError::Io(e.to_string()))?;
    let header_hash: [u8; 32] = Sha256::digest(&header_json).into();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io(&format!("creating {}", path.display()), e))?;
    file.write_all(MAGIC)
        .and_then(|()| file.write_all(&(header_json.len() as u32).to_be_bytes()))
        .and_then(|()| file.write_all(&header_json))
        .map_err(|e| io("writing the backup", e))?;
    let mut w = FrameWriter {
        file,
        key: frame_key(backup_key, &header.id),
        header_hash,
        index: 0,
        buf: Vec::new(),
        bytes: (MAGIC.len() + 4 + header_json.len()) as u64,
    };
    w.record(OP_MASTER, 0, b"", store.master_key().to_hex().as_bytes())?;
    let closes = store.begin_snapshot()?;
    let walked = walk_snapshot(store, header.kind, &mut w);
    store.end_snapshot();
    let (puts, deletes, digest) = walked?;
    let (live, digest) = digest.finish();
    let trailer = Trailer {
        puts,
        deletes,
        live,
        digest,
    };
    if !w.buf.is_empty() {
        w.flush_frame(false)?;
    }
    w.buf = serde_json::to_vec(&trailer).map_err(|e| BackupError::Io(e.to_string()))?;
    w.flush_frame(true)?;
    w.file.sync_all().map_err(|e| io("syncing the backup", e))?;
    Ok((trailer, w.bytes, closes))
}

fn walk_snapshot(
    store: &Store,
    kind: Kind,
    w: &mut FrameWriter,
) -> Result<(u64, u64, Digester), BackupError> {
    let mut digest = Digester::default();
    let (mut puts, mut deletes) = (0u64, 0u64);
    for (db, name) in store.databases().iter().enumerate() {
        let db16 = db as u16;
        // Keys changed since the last backup, from the changelog (which
        // sorts before every data key).
        let mut changed: HashSet<Vec<u8>> = HashSet::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        while let Some(page) = store.snapshot_page(db, 512)? {
            for (k, v) in page.entries {
                if k.starts_with(keys::CHANGELOG) {
                    if let Some((_, key)) = keys::parse_changelog(&k) {
                        changed.insert(key.to_vec());
                    }
                    continue;
                }
                digest.add(name, &k, &v);
                let include = match kind {
                    Kind::Full => true,
                    Kind::Incremental => {
                        let hit = changed.contains(&k) || k.as_slice() < keys::CHANGELOG;
                        if hit {
                            seen.insert(k.clone());
                        }
                        hit
                    }
                };
                if include {
                    w.record(OP_PUT, db16, &k, &v)?;
                    puts += 1;
                }
            }
        }
        if kind == Kind::Incremental {
            let mut gone: Vec<&Vec<u8>> = changed.difference(&seen).collect();
            gone.sort();
            for k in gone {
                w.record(OP_DELETE, db16, k, b"")?;
                deletes += 1;
            }
        }
    }
    Ok((puts, deletes, digest))
}

// ---- reading -------------------------------------------------------------

/// One record of a backup.
enum Record {
    Put(u16, Vec<u8>, Vec<u8>),
    Delete(u16, Vec<u8>),
    Master(String),
}

/// A backup file opened and authenticated frame by frame.
struct Reader {
    file: std::io::BufReader<std::fs::File>,
    name: String,
    header: Header,
    key: [u8; 32],
    header_hash: [u8; 32],
    index: u64,
    trailer: Option<Trailer>,
}

fn read_header(
    path: &Path,
) -> Result<(std::io::BufReader<std::fs::File>, Header, [u8; 32]), BackupError> {
    let name = path.display().to_string();
    let corrupt = |reason: &str| BackupError::Corrupt {
        file: name.clone(),
        reason: reason.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| io(&format!("opening {name}"), e))?;
    let mut file = std::io::BufReader::new(file);
    let mut magic = [0u8; 10];
    file.read_exact(&mut magic)
        .map_err(|_| corrupt("too short to be a backup"))?;
    if &magic != MAGIC {
        return Err(corrupt("not a Switchboard backup (bad magic)"));
    }
    let mut len = [0u8; 4];
    file.read_exact(&mut len)
        .map_err(|_| corrupt("truncated header"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(corrupt("header too large"));
    }
    let mut raw = vec![0u8; len];
    file.read_exact(&mut raw)
        .map_err(|_| corrupt("truncated header"))?;
    let header: Header =
        serde_json::from_slice(&raw).map_err(|e| corrupt(&format!("unreadable header: {e}")))?;
    if header.format != 1 {
        return Err(corrupt(&format!("unknown format {}", header.format)));
    }
    Ok((file, header, Sha256::digest(&raw).into()))
}

impl Reader {
    fn open(path: &Path, backup_key: &MasterKey) -> Result<Reader, BackupError> {
        let (file, header, header_hash) = read_header(path)?;
        if header.backup_key_id != backup_key.id() {
            return Err(BackupError::Corrupt {
                file: path.display().to_string(),
                reason: format!(
                    "it was sealed by backup key {}, not by the supplied key {}",
                    header.backup_key_id,
                    backup_key.id()
                ),
            });
        }
        Ok(Reader {
            file,
            name: path.display().to_string(),
            key: frame_key(backup_key, &header.id),
            header,
            header_hash,
            index: 0,
            trailer: None,
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> BackupError {
        BackupError::Corrupt {
            file: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The next frame's records; `None` after the trailer.
    fn next_frame(&mut self) -> Result<Option<Vec<Record>>, BackupError> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        if self.file.read_exact(&mut len).is_err() {
            return Err(self.corrupt("truncated: the final frame is missing"));
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(self.corrupt(format!("frame {} claims {len} bytes", self.index)));
        }
        let mut sealed = vec![0u8; len];
        self.file
            .read_exact(&mut sealed)
            .map_err(|_| self.corrupt(format!("frame {} is truncated", self.index)))?;
        // Try as a data frame, then as the last one: the flag is bound in
        // the associated data, so a data frame cannot pass for the trailer.
        let index = self.index;
        self.index += 1;
        if let Ok(plain) = crypt::open(
            &self.key,
            &sealed,
            &frame_aad(&self.header_hash, index, false),
        ) {
            return self.parse_records(&plain).map(Some);
        }
        let plain = crypt::open(
            &self.key,
            &sealed,
            &frame_aad(&self.header_hash, index, true),
        )
        .map_err(|_| self.corrupt(format!("frame {index} failed authentication")))?;
        let trailer = serde_json::from_slice(&plain)
            .map_err(|e| self.corrupt(format!("unreadable trailer: {e}")))?;
        self.trailer = Some(trailer);
        let mut rest = [0u8; 1];
        if self.file.read(&mut rest).map_err(|e| io("reading", e))? != 0 {
            return Err(self.corrupt("data after the final frame"));
        }
        Ok(None)
    }

    fn parse_records(&self, b: &[u8]) -> Result<Vec<Record>, BackupError> {
        let mut out = Vec::new();
        let bad = || self.corrupt("malformed record");
        let mut r = Bytes(b);
        while !r.0.is_empty() {
            let op = r.take(1).ok_or_else(bad)?[0];
            let db = r.u16().ok_or_else(bad)?;
            let klen = r.u32().ok_or_else(bad)?;
            let key = r.take(klen as usize).ok_or_else(bad)?.to_vec();
            let vlen = r.u32().ok_or_else(bad)?;
            let value = r.take(vlen as usize).ok_or_else(bad)?.to_vec();
            if op != OP_MASTER && usize::from(db) >= self.header.databases.len() {
                return Err(bad());
            }
            out.push(match op {
                OP_PUT => Record::Put(db, key, value),
                OP_DELETE => Record::Delete(db, key),
                OP_MASTER => Record::Master(String::from_utf8(value).map_err(|_| bad())?),
                _ => return Err(bad()),
            });
        }
        Ok(out)
    }
}

/// A reader over a frame's records.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// The chain ending at `file`: its full backup first.
fn chain(file: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut by_id: BTreeMap<String, (PathBuf, Header)> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "sbbak")
                && let Ok((_, h, _)) = read_header(&p)
            {
                by_id.insert(h.id.clone(), (p, h));
            }
        }
    }
    let (_, mut header, _) = read_header(file)?;
    let mut out = vec![file.to_path_buf()];
    while let Some(parent) = header.parent.clone() {
        let (p, h) = by_id.get(&parent).cloned().ok_or_else(|| {
            BackupError::Chain(format!(
                "backup {} builds on {parent}, which is not in {}",
                header.id,
                dir.display()
            ))
        })?;
        if out.len() > 10_000 || h.created_ms > header.created_ms {
            return Err(BackupError::Chain(
                "the backup chain is inconsistent".into(),
            ));
        }
        out.push(p);
        header = h;
    }
    if header.kind != Kind::Full {
        return Err(BackupError::Chain(format!(
            "the chain of {} does not start with a full backup",
            file.display()
        )));
    }
    out.reverse();
    Ok(out)
}

/// What a restore or verify found.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Backups replayed, full first.
    pub chain: Vec<PathBuf>,
    /// Entries in the restored store.
    pub live: u64,
    pub digest: String,
    /// The master key the restored data needs.
    pub master_key_id: String,
}

/// Restores the backup `file` (with its chain) into `data_dir`, which must
/// not hold a store yet, and verifies the result against the backup's
/// digest. Writes the master key file when the folder has none.
pub fn restore(
    file: &Path,
    backup_key: &MasterKey,
    data_dir: &Path,
) -> Result<Restored, BackupError> {
    let store_dir = data_dir.join("store");
    if store_dir.exists()
        && std::fs::read_dir(&store_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(BackupError::Target(format!(
            "{} already holds a store; restore into a fresh data folder",
            data_dir.display()
        )));
    }
    let restored = replay(file, backup_key, &store_dir)?;
    let master = MasterKey::parse(&restored.1).map_err(|e| BackupError::Corrupt {
        file: file.display().to_string(),
        reason: e.to_string(),
    })?;
    let key_file = data_dir.join("keys").join("master.key");
    match crypt::load_key_file(&key_file, false) {
        Ok(existing) if existing.id() != master.id() => {
            return Err(BackupError::Target(format!(
                "{} holds master key {}, but the restored data needs {}",
                key_file.display(),
                existing.id(),
                master.id()
            )));
        }
        Ok(_) => {}
        Err(_) => {
            crypt::write_key_file(&key_file, &master).map_err(|e| BackupError::Io(e.to_string()))?
        }
    }
    Ok(restored.0)
}

/// Authenticates every frame of `file` and its chain and replays them into
/// a scratch folder, comparing the result with the recorded digest.
pub fn verify(file: &Path, backup_key: &MasterKey) -> Result<Restored, BackupError> {
    let scratch = tempfile::tempdir().map_err(|e| io("creating a scratch folder", e))?;
    Ok(replay(file, backup_key, scratch.path())?.0)
}

fn replay(
    file: &Path,
    backup_key: &MasterKey,
    store_dir: &Path,
) -> Result<(Restored, String), BackupError> {
    let chain = chain(file)?;
    let mut dbs: BTreeMap<String, SledBackend> = BTreeMap::new();
    let mut master = None;
    let mut last_trailer = None;
    for path in &chain {
        let mut r = Reader::open(path, backup_key)?;
        while let Some(records) = r.next_frame()? {
            let mut batch: BTreeMap<u16, Vec<crate::store::Write>> = BTreeMap::new();
            for rec in records {
                match rec {
                    Record::Put(db, k, v) => batch.entry(db).or_default().push((k, Some(v))),
                    Record::Delete(db, k) => batch.entry(db).or_default().push((k, None)),
                    Record::Master(m) => master = Some(m),
                }
            }
            for (db, writes) in batch {
                let name = &r.header.databases[usize::from(db)];
                let backend = match dbs.entry(name.clone()) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let dir = match name.strip_prefix("region/") {
                            Some(region) => store_dir.join("regions").join(region),
                            None => store_dir.join(name),
                        };
                        v.insert(SledBackend::open(&dir)?)
                    }
                };
                backend.apply(&writes)?;
            }
        }
        last_trailer = r.trailer.clone();
        if last_trailer.is_none() {
            return Err(r.corrupt("no trailer"));
        }
    }
    let trailer = last_trailer.ok_or_else(|| BackupError::Chain("empty chain".into()))?;
    let master = master.ok_or_else(|| BackupError::Corrupt {
        file: file.display().to_string(),
        reason: "it does not carry the master key".into(),
    })?;
    // Verify: recompute the digest over everything written, in the order
    // the backup walked it (databases in header order, keys ascending).
    let (_, header, _) = read_header(file)?;
    let mut digest = Digester::default();
    for name in &header.databases {
        let Some(backend) = dbs.get(name) else {
            continue;
        };
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = backend.scan(b"", after.as_deref(), 1024)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, v) in page {
                if !k.starts_with(keys::CHANGELOG) {
                    digest.add(name, &k, &v);
                }
            }
        }
    }
    for backend in dbs.values() {
        backend.flush()?;
    }
    // The keyring must be wrapped by the master key the backup carries,
    // or the restored folder would not open.
    let master_id = MasterKey::parse(&master)
        .map(|m| m.id().to_string())
        .map_err(|e| BackupError::Corrupt {
            file: file.display().to_string(),
            reason: e.to_string(),
        })?;
    if let Some(system) = dbs.get("system") {
        for (k, v) in system.scan(keys::KEYRING, None, usize::MAX)? {
            if crypt::wrapped_by(&v).ok().as_deref() != Some(master_id.as_str()) {
                return Err(BackupError::Mismatch(format!(
                    "{} is not wrapped by the master key the backup carries",
                    String::from_utf8_lossy(&k)
                )));
            }
        }
    }
    let (live, digest) = digest.finish();
    if live != trailer.live || digest != trailer.digest {
        return Err(BackupError::Mismatch(format!(
            "restored {live} entries with digest {digest}; the backup recorded {} entries with digest {}",
            trailer.live, trailer.digest
        )));
    }
    let master_key_id = master_id;
    Ok((
        Restored {
            chain,
            live,
            digest,
            master_key_id,
        },
        master,
    ))
}

/// Deletes the oldest chains in `dir`, keeping the newest `keep_full` full
/// backups and every incremental built on them.
pub fn prune(dir: &Path, keep_full: usize) -> Result<usize, BackupError> {
    let mut files: Vec<(u64, PathBuf, Header)> = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|e| io("listing backups", e))?
        .flatten()
    {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "sbbak")
            && let Ok((_, h, _)) = read_header(&p)
        {
            files.push((h.created_ms, p, h));
        }
    }
    files.sort_by_key(|f| f.0);
    let fulls: Vec<u64> = files
        .iter()
        .filter(|f| f.2.kind == Kind::Full)
        .map(|f| f.0)
        .collect();
    if fulls.len() <= keep_full.max(1) {
        return Ok(0);
    }
    let oldest_kept = fulls[fulls.len() - keep_full.max(1)];
    let mut removed = 0;
    for (created, path, _) in files {
        if created < oldest_kept {
            std::fs::remove_file(&path).map_err(|e| io("pruning", e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Loads (creating on first run) the backup key of a data folder.
pub fn backup_key(data_dir: &Path, create: bool) -> Result<MasterKey, BackupError> {
    crypt::load_key_file(&data_dir.join("keys").join("backup.key"), create)
        .map_err(|e| BackupError::Io(e.to_string()))
}
