//! The audit trail (SPEC I9): one append-only, hash-chained log per tenant
//! plus one for the host itself ("system": installs, trust, tenants,
//! operator sign-ins). Each entry says who (actor), what (action, target),
//! when, from where (source address) and with which outcome, and carries
//! the SHA-256 of the entry before it, so editing, removing or reordering
//! any entry breaks the chain. Every 256 entries, and once a minute while
//! entries are unsigned, the host signs a checkpoint (scope, sequence
//! number, hash) with its Ed25519 audit key (`keys/audit.key`, outside the
//! store): someone who can rewrite the store but lacks that key cannot
//! rebuild a chain that still matches the signed checkpoints, so
//! truncation behind a checkpoint is detected too.
//!
//! Wiring: the runtime owns one `AuditLog`. Who is acting comes from a
//! task-local `Context` that the admin layer and the HTTP front door set
//! for the duration of a request (`with_context`); host work outside one
//! is attributed to the system. `verify` walks a scope (or an exported
//! file) and names the first entry that does not hold; `export` writes
//! JSON lines that can be verified offline against the public key.
//!
//! ```text
//! sys/audit/e/{seq, 16 hex}      entry      t/{tenant}/au/e/{seq}
//! sys/audit/head                 head       t/{tenant}/au/head
//! sys/audit/cp/{seq, 16 hex}     checkpoint t/{tenant}/au/cp/{seq}
//! sys/audit/base                 checkpoint the trail was pruned to
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, Write};
use crate::support::clock::now_ms;
use crate::support::sync::Recover as _;

/// The hash before the first entry of a trail.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// A checkpoint is signed at least every this many entries.
pub const CHECKPOINT_EVERY: u64 = 256;
/// Longest action name.
pub const MAX_ACTION_LEN: usize = 64;
/// Longest target.
pub const MAX_TARGET_LEN: usize = 256;
/// Longest details text.
pub const MAX_DETAILS_LEN: usize = 4096;

const ENTRY_DOMAIN: &[u8] = b"switchboard-audit-entry-v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"switchboard-audit-checkpoint-v1\0";

/// Which trail: the host's own or one tenant's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "scope", content = "tenant")]
pub enum Scope {
    System,
    Tenant(String),
}

impl Scope {
    /// A tenant's scope.
    pub fn tenant(id: &str) -> Scope {
        Scope::Tenant(id.to_string())
    }

    fn prefix(&self) -> String {
        match self {
            Scope::System => "sys/audit/".into(),
            Scope::Tenant(t) => format!("t/{t}/au/"),
        }
    }

    fn entry_key(&self, seq: u64) -> Vec<u8> {
        format!("{}e/{seq:016x}", self.prefix()).into_bytes()
    }

    fn checkpoint_key(&self, seq: u64) -> Vec<u8> {
        format!("{}cp/{seq:016x}", self.prefix()).into_bytes()
    }

    fn head_key(&self) -> Vec<u8> {
        format!("{}head", self.prefix()).into_bytes()
    }

    fn base_key(&self) -> Vec<u8> {
        format!("{}base", self.prefix()).into_bytes()
    }

    /// How the scope is named in signatures and messages.
    pub fn label(&self) -> String {
        match self {
            Scope::System => "system".into(),
            Scope::Tenant(t) => format!("tenant:{t}"),
        }
    }

    /// Parses `system` or a tenant id.
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "system" => Some(Scope::System),
            t if crate::tenant::is_valid_tenant_id(t) => Some(Scope::tenant(t)),
            _ => None,
        }
    }
}

/// What kind of party acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    /// The server itself (schedules, sweeps, start-up).
    System,
    /// The machine's operator through the local CLI or control socket.
    Console,
    Operator,
    Partner,
    TenantAdmin,
    User,
    Guest,
    /// A plugin, through the `audit` capability.
    Plugin,
    /// Someone not (yet) signed in, e.g. a failed login.
    Anonymous,
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    /// Stable id (user id, plugin name); none for system and anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The sign-in name at the time, for people reading the trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The tenant the actor belongs to, when not the trail's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The user on whose behalf a plugin acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

impl Actor {
    /// The server itself.
    pub fn system() -> Actor {
        Actor::of(ActorKind::System, None)
    }

    /// The local console (CLI, control socket).
    pub fn console() -> Actor {
        let user = std::env::var("USER").ok();
        Actor {
            name: user,
            ..Actor::of(ActorKind::Console, None)
        }
    }

    /// An actor of `kind` with an optional id.
    pub fn of(kind: ActorKind, id: Option<&str>) -> Actor {
        Actor {
            kind,
            id: id.map(str::to_string),
            name: None,
            tenant: None,
            on_behalf_of: None,
        }
    }
}

/// Who is acting right now, from where, under which request.
#[derive(Debug, Clone)]
pub struct Context {
    pub actor: Actor,
    pub source: Option<String>,
    pub request_id: Option<String>,
    /// The just-in-time access grant the actor is using (SPEC I8).
    pub access: Option<String>,
}

impl Context {
    /// The server acting on its own.
    pub fn system() -> Context {
        Context {
            actor: Actor::system(),
            source: None,
            request_id: None,
            access: None,
        }
    }

    /// The local console.
    pub fn console() -> Context {
        Context {
            actor: Actor::console(),
            source: Some("local".into()),
            ..Context::system()
        }
    }
}

tokio::task_local! {
    static CONTEXT: Context;
}

/// Runs `fut` with `ctx` as the acting context of every entry it records.
pub async fn with_context<F: std::future::Future>(ctx: Context, fut: F) -> F::Output {
    CONTEXT.scope(ctx, fut).await
}

/// The acting context (the system when none was set).
pub fn context() -> Context {
    CONTEXT
        .try_with(Clone::clone)
        .unwrap_or_else(|_| Context::system())
}

/// How an action ended.
pub mod outcome {
    pub const SUCCESS: &str = "success";
    pub const FAILURE: &str = "failure";
    pub const DENIED: &str = "denied";
}

/// One entry of a trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub time_ms: u64,
    pub actor: Actor,
    pub action: String,
    pub target: String,
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
    /// Hash of the previous entry (GENESIS for the first).
    pub prev: String,
    /// SHA-256 over the domain, `prev` and this entry without `hash`.
    #[serde(default)]
    pub hash: String,
}

impl Entry {
    /// The hash this entry should carry.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        // Serialising a struct of strings and integers cannot fail.
        let body = serde_json::to_vec(&unhashed).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(ENTRY_DOMAIN);
        h.update(self.prev.as_bytes());
        h.update(b"\0");
        h.update(&body);
        hex::encode(h.finalize())
    }
}

/// A signed statement that a trail had `hash` at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub scope: String,
    pub seq: u64,
    pub hash: String,
    pub time_ms: u64,
    /// Hex SHA-256 of the signing public key, first 16 bytes.
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

impl Checkpoint {
    fn message(scope: &str, seq: u64, hash: &str, time_ms: u64) -> Vec<u8> {
        let mut m = CHECKPOINT_DOMAIN.to_vec();
        m.extend_from_slice(format!("{scope}\0{seq}\0{hash}\0{time_ms}").as_bytes());
        m
    }

    /// Whether `key` signed this checkpoint.
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let Ok(sig) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else {
            return false;
        };
        key.verify(
            &Checkpoint::message(&self.scope, self.seq, &self.hash, self.time_ms),
            &sig,
        )
        .is_ok()
    }
}

/// The newest entry of a trail and its newest checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
    signed: u64,
}

/// What an action wants recorded; the context supplies the rest.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub action: &'a str,
    pub target: &'a str,
    pub outcome: &'a str,
    pub details: &'a str,
}

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored head or checkpoint could not be decoded.
    #[error("the audit trail of {scope} is unreadable: {reason}")]
    Corrupt { scope: String, reason: String },
    /// The audit key could not be loaded.
    #[error("audit key: {0}")]
    Key(String),
}

/// The host's audit trails.
pub struct AuditLog {
    store: Arc<Store>,
    key: SigningKey,
    key_id: String,
    heads: Mutex<HashMap<Scope, Head>>,
    /// The newest signed (seq, hash) of each trail, kept beside the audit
    /// key outside the store: deleting entries, checkpoints and the head
    /// from the store together still shows (`keys/audit-anchors.json`).
    anchors_file: std::path::PathBuf,
    anchors: Mutex<BTreeMap<String, (u64, String)>>,
}

/// The audit public key's id: hex of the first 16 bytes of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

impl AuditLog {
    /// Opens the trails of `store`, signing with the key in `key_file`
    /// (created on first use, mode 0600).
    pub fn open(store: Arc<Store>, key_file: &std::path::Path) -> Result<AuditLog, AuditError> {
        let seed = crate::support::fsutil::secret_key_file(key_file)
            .map_err(|e| AuditError::Key(format!("{}: {e}", key_file.display())))?;
        let key = SigningKey::from_bytes(&seed);
        let key_id = key_id(&key.verifying_key());
        let anchors_file = key_file.with_file_name("audit-anchors.json");
        let anchors = match std::fs::read(&anchors_file) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                AuditError::Key(format!("{} is unreadable: {e}", anchors_file.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(AuditError::Key(format!("{}: {e}", anchors_file.display()))),
        };
        Ok(AuditLog {
            store,
            key,
            key_id,
            heads: Mutex::default(),
            anchors_file,
            anchors: Mutex::new(anchors),
        })
    }

    /// Records the newest checkpoints outside the store (write to a
    /// temporary file, then rename).
    fn anchor(&self, signed: &[(String, u64, String)]) {
        let mut anchors = lock(&self.anchors);
        for (label, seq, hash) in signed {
            anchors.insert(label.clone(), (*seq, hash.clone()));
        }
        let tmp = self.anchors_file.with_extension("json.tmp");
        let written = std::fs::write(&tmp, json(&*anchors))
            .and_then(|()| std::fs::rename(&tmp, &self.anchors_file));
        if let Err(e) = written {
            tracing::error!(target: "audit", error = %e, "cannot record audit anchors");
        }
    }

    /// The key checkpoints are verified with.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    fn load_head(&self, scope: &Scope) -> Result<Head, AuditError> {
        Ok(self.stored_head(scope)?.unwrap_or(Head {
            seq: 0,
            hash: GENESIS.into(),
            signed: 0,
        }))
    }

    /// Appends an entry attributed to the current context; returns the
    /// store sequence number to wait on for durability. Entries are never
    /// lost silently: a failure is logged and returned.
    pub fn append(&self, scope: &Scope, record: Record<'_>) -> Result<u64, AuditError> {
        self.append_as(scope, &context(), record)
    }

    /// `append` for an action that has already happened: a trail that
    /// cannot be written is logged loudly (SPEC I9), never returned.
    pub fn note(&self, scope: &Scope, action: &str, target: &str, outcome: &str, details: &str) {
        let record = Record {
            action,
            target,
            outcome,
            details,
        };
        if let Err(e) = self.append(scope, record) {
            tracing::error!(target: "audit", action, error = %e, "audit entry lost");
        }
    }

    /// `append` with an explicit context.
    pub fn append_as(
        &self,
        scope: &Scope,
        ctx: &Context,
        record: Record<'_>,
    ) -> Result<u64, AuditError> {
        // One writer per host: entries of all scopes are cheap, and a
        // single lock keeps each chain strictly sequential.
        let mut heads = lock(&self.heads);
        let head = match heads.get(scope) {
            Some(h) => h.clone(),
            None => self.load_head(scope)?,
        };
        let mut entry = Entry {
            seq: head.seq + 1,
            time_ms: now_ms(),
            actor: ctx.actor.clone(),
            action: clip(record.action, MAX_ACTION_LEN),
            target: clip(record.target, MAX_TARGET_LEN),
            outcome: clip(record.outcome, 32),
            source: ctx.source.clone(),
            details: clip(record.details, MAX_DETAILS_LEN),
            request_id: ctx.request_id.clone(),
            access: ctx.access.clone(),
            prev: head.hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        let mut next = Head {
            seq: entry.seq,
            hash: entry.hash.clone(),
            signed: head.signed,
        };
        let mut writes: Vec<Write> = vec![(scope.entry_key(entry.seq), Some(json(&entry)))];
        let mut signed = None;
        if next.seq - next.signed >= CHECKPOINT_EVERY {
            let cp = self.sign(scope, next.seq, &next.hash);
            writes.push((scope.checkpoint_key(cp.seq), Some(json(&cp))));
            next.signed = next.seq;
            signed = Some((cp.scope, cp.seq, cp.hash));
        }
        writes.push((scope.head_key(), Some(json(&next))));
        let seq = self.store.apply(&writes).inspect_err(|e| {
            tracing::error!(target: "audit", scope = %scope.label(), action = record.action, error = %e, "cannot append to the audit trail");
        })?;
        heads.insert(scope.clone(), next);
        if let Some(s) = signed {
            self.anchor(&[s]);
        }
        tracing::info!(target: "audit", scope = %scope.label(), action = record.action, outcome = record.outcome, actor = ?ctx.actor.kind, "{}", record.target);
        Ok(seq)
    }

    /// Appends and waits until the entry is durable.
    pub async fn append_durable(
        &self,
        scope: &Scope,
        record: Record<'_>,
    ) -> Result<(), AuditError> {
        let seq = self.append(scope, record)?;
        self.store.durable(seq).await?;
        Ok(())
    }

    fn sign(&self, scope: &Scope, seq: u64, hash: &str) -> Checkpoint {
        let time_ms = now_ms();
        let label = scope.label();
        let sig = self
            .key
            .sign(&Checkpoint::message(&label, seq, hash, time_ms));
        Checkpoint {
            scope: label,
            seq,
            hash: hash.to_string(),
            time_ms,
            key_id: self.key_id.clone(),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    /// Signs a checkpoint for every trail with unsigned entries (the
    /// maintenance loop calls this once a minute). Returns how many.
    pub fn checkpoint_all(&self) -> Result<usize, AuditError> {
        let mut heads = lock(&self.heads);
        let mut anchored = Vec::new();
        let scopes: Vec<Scope> = heads
            .iter()
            .filter(|(_, h)| h.seq > h.signed)
            .map(|(s, _)| s.clone())
            .collect();
        for scope in scopes {
            let Some(head) = heads.get(&scope).cloned() else {
                continue;
            };
            if matches!(&scope, Scope::Tenant(t) if !self.store.has_tenant_key(t)) {
                // The tenant was deleted; its trail went with its key.
                heads.remove(&scope);
                continue;
            }
            let cp = self.sign(&scope, head.seq, &head.hash);
            let next = Head {
                signed: head.seq,
                ..head
            };
            self.store.apply(&[
                (scope.checkpoint_key(cp.seq), Some(json(&cp))),
                (scope.head_key(), Some(json(&next))),
            ])?;
            heads.insert(scope, next);
            anchored.push((cp.scope, cp.seq, cp.hash));
        }
        if !anchored.is_empty() {
            self.anchor(&anchored);
        }
        Ok(anchored.len())
    }

    /// Forgets the cached head of a deleted tenant's trail.
    pub fn forget(&self, tenant: &str) {
        lock(&self.heads).remove(&Scope::tenant(tenant));
        let label = Scope::tenant(tenant).label();
        let known = lock(&self.anchors).remove(&label).is_some();
        if known {
            self.anchor(&[]);
        }
    }

    /// Entries of `scope` with `seq > after`, at most `limit`.
    pub fn entries(
        &self,
        scope: &Scope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, AuditError> {
        let prefix = format!("{}e/", scope.prefix()).into_bytes();
        let start = (after > 0).then(|| scope.entry_key(after));
        let page = self.store.scan(&prefix, start.as_deref(), limit)?;
        page.into_iter()
            .map(|(k, v)| {
                serde_json::from_slice(&v).map_err(|e| AuditError::Corrupt {
                    scope: scope.label(),
                    reason: format!("{}: {e}", String::from_utf8_lossy(&k)),
                })
            })
            .collect()
    }

    fn checkpoints(&self, scope: &Scope) -> Result<Vec<Result<Checkpoint, String>>, AuditError> {
        let prefix = format!("{}cp/", scope.prefix()).into_bytes();
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan_raw(&prefix, after.as_deref(), 1024)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, _) in page {
                out.push(match self.store.get(&k) {
                    Ok(Some(v)) => serde_json::from_slice(&v).map_err(|e| e.to_string()),
                    Ok(None) => continue,
                    Err(e) => Err(e.to_string()),
                });
            }
        }
        Ok(out)
    }

    /// Everything `verify` and `export` need from the store, read lazily.
    fn stored_head(&self, scope: &Scope) -> Result<Option<Head>, AuditError> {
        match self.store.get(&scope.head_key())? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                AuditError::Corrupt {
                    scope: scope.label(),
                    reason: format!("head: {e}"),
                }
            })?)),
            None => Ok(None),
        }
    }

    fn stored_base(&self, scope: &Scope) -> Result<Option<Checkpoint>, AuditError> {
        match self.store.get(&scope.base_key())? {
            Some(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                AuditError::Corrupt {
                    scope: scope.label(),
                    reason: format!("base: {e}"),
                }
            })?)),
            None => Ok(None),
        }
    }

    /// Checks a stored trail end to end.
    pub fn verify(&self, scope: &Scope) -> Result<Report, AuditError> {
        let mut v = Verifier::new(scope.label(), self.public_key());
        if let Some(base) = self.stored_base(scope)? {
            v.base(base);
        }
        for cp in self.checkpoints(scope)? {
            v.checkpoint(cp);
        }
        let prefix = format!("{}e/", scope.prefix()).into_bytes();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan_raw(&prefix, after.as_deref(), 512)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (k, _) in page {
                let key_seq = parse_seq(&k);
                match self.store.get(&k) {
                    Ok(Some(v_bytes)) => match serde_json::from_slice::<Entry>(&v_bytes) {
                        Ok(e) => v.entry(key_seq, e),
                        Err(e) => v.unreadable(key_seq, &e.to_string()),
                    },
                    Ok(None) => {}
                    Err(e) => v.unreadable(key_seq, &e.to_string()),
                }
            }
        }
        if let Some((seq, hash)) = lock(&self.anchors).get(&scope.label()).cloned() {
            v.anchor(seq, hash);
        }
        let head = self.stored_head(scope)?;
        let mut report = v.finish(head.map(|h| (h.seq, h.hash)));
        if let (Scope::Tenant(t), Some(base)) = (scope, report.pruned_to)
            && !self.prune_recorded(&Scope::tenant(t).label(), base)?
        {
            report.problems.push(Problem {
                seq: base,
                kind: ProblemKind::Removed,
                message: format!(
                    "entries up to {base} are gone, but the system trail records no pruning of this trail to {base}"
                ),
            });
        }
        if report.entries == 0 && report.pruned_to.is_none() && self.expects_entries(scope) {
            report.problems.push(Problem {
                seq: 1,
                kind: ProblemKind::Removed,
                message: "the trail is empty, but every tenant's trail starts with its creation"
                    .into(),
            });
        }
        Ok(report)
    }

    fn expects_entries(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Tenant(t) => self.store.has_tenant_key(t),
            Scope::System => false,
        }
    }

    /// Whether the system trail records pruning `label` to `seq`.
    fn prune_recorded(&self, label: &str, seq: u64) -> Result<bool, AuditError> {
        let wanted = format!("to {seq} ");
        let mut after = 0;
        loop {
            let page = self.entries(&Scope::System, after, 512)?;
            let Some(last) = page.last() else {
                return Ok(false);
            };
            after = last.seq;
            if page.iter().any(|e| {
                e.action == "audit.prune" && e.target == label && e.details.starts_with(&wanted)
            }) {
                return Ok(true);
            }
        }
    }

    /// Writes `scope` as JSON lines: a header naming the scope, public key
    /// and base, every entry, then every checkpoint. Returns entries
    /// written.
    pub fn export(&self, scope: &Scope, out: &mut dyn std::io::Write) -> Result<u64, AuditError> {
        let header = ExportHeader {
            scope: scope.label(),
            public_key: hex::encode(self.public_key().as_bytes()),
            key_id: self.key_id.clone(),
            base: self.stored_base(scope)?,
            head: self.stored_head(scope)?.map(|h| h.seq),
        };
        let io = |e: std::io::Error| AuditError::Key(format!("cannot write the export: {e}"));
        writeln!(out, "{}", serde_json::json!({ "audit_export": header })).map_err(io)?;
        let mut after = 0;
        let mut n = 0;
        loop {
            let page = self.entries(scope, after, 512)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default()).map_err(io)?;
                n += 1;
            }
        }
        for cp in self.checkpoints(scope)?.into_iter().flatten() {
            writeln!(out, "{}", serde_json::json!({ "checkpoint": cp })).map_err(io)?;
        }
        Ok(n)
    }

    /// Drops entries older than `cutoff_ms`, but only up to the newest
    /// checkpoint covering them, which becomes the trail's signed base
    /// (written first, so an interrupted prune leaves a verifiable trail).
    /// Returns entries removed.
    pub fn prune(&self, scope: &Scope, cutoff_ms: u64) -> Result<u64, AuditError> {
        let pruned = self.prune_locked(scope, cutoff_ms)?;
        if let Some((seq, removed)) = pruned {
            self.append_as(
                &Scope::System,
                &Context::system(),
                Record {
                    action: "audit.prune",
                    target: &scope.label(),
                    outcome: outcome::SUCCESS,
                    details: &format!("to {seq} ({removed} entries past retention removed)"),
                },
            )?;
            return Ok(removed);
        }
        Ok(0)
    }

    fn prune_locked(
        &self,
        scope: &Scope,
        cutoff_ms: u64,
    ) -> Result<Option<(u64, u64)>, AuditError> {
        let _writers = lock(&self.heads);
        let mut target: Option<Checkpoint> = None;
        for cp in self.checkpoints(scope)?.into_iter().flatten() {
            let entry = match self.store.get(&scope.entry_key(cp.seq))? {
                Some(raw) => serde_json::from_slice::<Entry>(&raw).ok(),
                None => None,
            };
            match entry {
                Some(e) if e.time_ms < cutoff_ms && e.hash == cp.hash => target = Some(cp),
                _ => break,
            }
        }
        let Some(base) = target else { return Ok(None) };
        self.store.apply(&[(scope.base_key(), Some(json(&base)))])?;
        let mut removed = 0;
        for part in ["e/", "cp/"] {
            let prefix = format!("{}{part}", scope.prefix()).into_bytes();
            loop {
                let page = self.store.scan_raw(&prefix, None, 512)?;
                let writes: Vec<Write> = page
                    .iter()
                    .filter(|(k, _)| {
                        parse_seq(k)
                            .is_some_and(|s| s < base.seq || (part == "e/" && s == base.seq))
                    })
                    .map(|(k, _)| (k.clone(), None))
                    .collect();
                if writes.is_empty() {
                    break;
                }
                if part == "e/" {
                    removed += writes.len() as u64;
                }
                self.store.apply(&writes)?;
            }
        }
        Ok(Some((base.seq, removed)))
    }
}

/// The first line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportHeader {
    pub scope: String,
    pub public_key: String,
    pub key_id: String,
    #[serde(default)]
    pub base: Option<Checkpoint>,
    #[serde(default)]
    pub head: Option<u64>,
}

/// What kind of damage verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// An entry's content does not match its hash, or it cannot be read.
    Edited,
    /// Entries are missing from the sequence.
    Removed,
    /// An entry is out of order, duplicated or chained to the wrong
    /// predecessor.
    Reordered,
    /// Entries at the end are gone (a checkpoint or the head names more).
    Truncated,
    /// A checkpoint's signature or hash does not hold.
    BadCheckpoint,
}

/// One finding of `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub seq: u64,
    pub kind: ProblemKind,
    pub message: String,
}

/// The result of verifying a trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scope: String,
    pub entries: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    pub last_checkpoint: Option<u64>,
    /// The signed checkpoint the trail was pruned to (retention).
    #[serde(default)]
    pub pruned_to: Option<u64>,
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether the trail is intact.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Walks a trail in order (from the store or an export).
pub struct Verifier {
    scope: String,
    key: VerifyingKey,
    expected: u64,
    prev: String,
    /// Valid checkpoints by seq, with their hash.
    checkpoints: BTreeMap<u64, String>,
    base: Option<(u64, String)>,
    anchor: Option<(u64, String)>,
    first: bool,
    report: Report,
}

impl Verifier {
    /// A verifier for `scope` (its label) trusting `key`.
    pub fn new(scope: String, key: VerifyingKey) -> Verifier {
        Verifier {
            report: Report {
                scope: scope.clone(),
                entries: 0,
                first_seq: None,
                last_seq: None,
                checkpoints: 0,
                last_checkpoint: None,
                pruned_to: None,
                problems: Vec::new(),
            },
            scope,
            key,
            expected: 1,
            prev: GENESIS.into(),
            checkpoints: BTreeMap::new(),
            base: None,
            anchor: None,
            first: true,
        }
    }

    fn problem(&mut self, seq: u64, kind: ProblemKind, message: String) {
        // The first findings say where it broke; a flood says nothing more.
        if self.report.problems.len() < 100 {
            self.report.problems.push(Problem { seq, kind, message });
        }
    }

    /// The signed checkpoint the trail was pruned to.
    pub fn base(&mut self, base: Checkpoint) {
        if base.scope != self.scope || !base.verify(&self.key) {
            self.problem(
                base.seq,
                ProblemKind::BadCheckpoint,
                format!(
                    "the base (pruned to entry {}) is not signed by the audit key",
                    base.seq
                ),
            );
        }
        self.expected = base.seq.saturating_add(1);
        self.report.pruned_to = Some(base.seq);
        self.base = Some((base.seq, base.hash.clone()));
        self.prev = base.hash;
    }

    /// A stored checkpoint (before the entries).
    pub fn checkpoint(&mut self, cp: Result<Checkpoint, String>) {
        match cp {
            Ok(cp) if cp.scope == self.scope && cp.verify(&self.key) => {
                self.report.checkpoints += 1;
                self.report.last_checkpoint = self.report.last_checkpoint.max(Some(cp.seq));
                self.checkpoints.insert(cp.seq, cp.hash);
            }
            Ok(cp) => self.problem(
                cp.seq,
                ProblemKind::BadCheckpoint,
                format!(
                    "checkpoint at entry {} is not signed by the audit key {} for {}",
                    cp.seq,
                    key_id(&self.key),
                    self.scope
                ),
            ),
            Err(e) => self.problem(
                0,
                ProblemKind::BadCheckpoint,
                format!("unreadable checkpoint: {e}"),
            ),
        }
    }

    /// An entry that could not be read at all.
    pub fn unreadable(&mut self, key_seq: Option<u64>, why: &str) {
        let seq = key_seq.unwrap_or(self.expected);
        self.problem(
            seq,
            ProblemKind::Edited,
            format!("entry {seq} cannot be read (altered or moved): {why}"),
        );
        // Keep going as if it were there, so later entries are judged on
        // their own.
        self.expected = seq + 1;
        self.prev = String::new();
    }

    /// The next entry in order. `key_seq` is the sequence its storage key
    /// names, when read from the store.
    pub fn entry(&mut self, key_seq: Option<u64>, e: Entry) {
        if std::mem::take(&mut self.first)
            && let Some((b, _)) = &self.base
            && e.seq <= *b
        {
            // Left behind by an interrupted prune: checked as a chain of
            // its own that must end exactly at the signed base.
            self.expected = e.seq;
            self.prev = e.prev.clone();
        }
        if let Some((b, h)) = &self.base
            && e.seq == *b
            && e.hash != *h
        {
            let b = *b;
            self.problem(
                b,
                ProblemKind::Edited,
                format!("entry {b} differs from the signed base the trail was pruned to"),
            );
        }
        self.report.entries += 1;
        self.report.first_seq.get_or_insert(e.seq);
        if let Some(k) = key_seq
            && k != e.seq
        {
            self.problem(
                k,
                ProblemKind::Reordered,
                format!(
                    "the entry stored at position {k} says it is entry {}",
                    e.seq
                ),
            );
        }
        if e.seq > self.expected {
            let (from, to) = (self.expected, e.seq - 1);
            self.problem(
                from,
                ProblemKind::Removed,
                if from == to {
                    format!("entry {from} is missing")
                } else {
                    format!("entries {from}-{to} are missing")
                },
            );
        } else if e.seq < self.expected {
            self.problem(
                e.seq,
                ProblemKind::Reordered,
                format!("entry {} appears after entry {}", e.seq, self.expected - 1),
            );
        } else if !self.prev.is_empty() && e.prev != self.prev {
            self.problem(
                e.seq,
                ProblemKind::Reordered,
                format!(
                    "entry {} does not follow the entry before it (that entry was altered, replaced or moved)",
                    e.seq
                ),
            );
        }
        let computed = e.compute_hash();
        if computed != e.hash {
            self.problem(
                e.seq,
                ProblemKind::Edited,
                format!(
                    "entry {} was edited: its content does not match its hash",
                    e.seq
                ),
            );
        }
        if let Some(signed) = self.checkpoints.get(&e.seq)
            && *signed != e.hash
        {
            self.problem(
                e.seq,
                ProblemKind::Edited,
                format!(
                    "entry {} differs from what checkpoint {} signed",
                    e.seq, e.seq
                ),
            );
        }
        self.report.last_seq = Some(e.seq);
        self.expected = e.seq.saturating_add(1);
        self.prev = e.hash;
    }

    /// The newest checkpoint recorded outside the store.
    pub fn anchor(&mut self, seq: u64, hash: String) {
        self.anchor = Some((seq, hash));
    }

    /// The verdict, given the stored head (seq, hash) if any.
    pub fn finish(mut self, head: Option<(u64, String)>) -> Report {
        let last = self.expected.saturating_sub(1);
        if let Some((seq, hash)) = self.anchor.clone() {
            let pruned_past = self.base.as_ref().is_some_and(|(b, _)| *b >= seq);
            if !pruned_past && seq > last {
                self.problem(
                    last + 1,
                    ProblemKind::Truncated,
                    format!("entries after {last} are gone: the audit key's anchor records entry {seq} as signed"),
                );
            } else if !pruned_past && self.checkpoints.get(&seq).is_some_and(|h| *h != hash) {
                self.problem(
                    seq,
                    ProblemKind::BadCheckpoint,
                    format!("the checkpoint at entry {seq} differs from the anchor"),
                );
            } else if !pruned_past && !self.checkpoints.contains_key(&seq) {
                self.problem(
                    seq,
                    ProblemKind::Truncated,
                    format!("the checkpoint at entry {seq} recorded by the anchor is gone"),
                );
            }
        }
        if head.is_none() && (self.report.entries > 0 || !self.checkpoints.is_empty()) {
            self.problem(
                last,
                ProblemKind::Truncated,
                "the trail's head record is gone".into(),
            );
        }
        if let Some((&cp, _)) = self.checkpoints.range(last + 1..).next() {
            let newest = *self.checkpoints.keys().next_back().unwrap_or(&cp);
            self.problem(
                last + 1,
                ProblemKind::Truncated,
                format!(
                    "entries after {last} are gone: a signed checkpoint covers entries up to {newest}"
                ),
            );
        }
        if let Some((seq, hash)) = head {
            if seq > last {
                self.problem(
                    last + 1,
                    ProblemKind::Truncated,
                    format!("entries after {last} are gone: the trail's head says {seq}"),
                );
            } else if seq < last {
                self.problem(
                    seq + 1,
                    ProblemKind::Truncated,
                    format!("the trail's head says {seq} but entries go on to {last}"),
                );
            } else if hash != self.prev && !self.prev.is_empty() {
                self.problem(
                    seq,
                    ProblemKind::Edited,
                    format!("the trail's head does not match entry {seq}"),
                );
            }
        }
        self.report
    }
}

/// Verifies an export (JSON lines as `AuditLog::export` writes them). With
/// `pinned`, checkpoints must be signed by that key; otherwise by the key
/// named in the file's header (which proves only internal consistency).
pub fn verify_export(
    input: impl std::io::BufRead,
    pinned: Option<VerifyingKey>,
) -> Result<Report, String> {
    let mut lines = input.lines();
    let first = lines
        .next()
        .ok_or("the export is empty")?
        .map_err(|e| e.to_string())?;
    #[derive(Deserialize)]
    struct First {
        audit_export: ExportHeader,
    }
    let header: First = serde_json::from_str(&first)
        .map_err(|e| format!("line 1 is not an audit export header: {e}"))?;
    let header = header.audit_export;
    let key = match pinned {
        Some(k) => k,
        None => parse_public_key(&header.public_key)?,
    };
    let mut entries = Vec::new();
    let mut cps = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| format!("line {}: not JSON: {e}", i + 2))?;
        if let Some(cp) = value.get("checkpoint") {
            cps.push(serde_json::from_value::<Checkpoint>(cp.clone()).map_err(|e| e.to_string()));
        } else {
            entries.push(
                serde_json::from_value::<Entry>(value)
                    .map_err(|e| format!("line {}: not an audit entry: {e}", i + 2))?,
            );
        }
    }
    let mut v = Verifier::new(header.scope, key);
    if let Some(base) = header.base {
        v.base(base);
    }
    for cp in cps {
        v.checkpoint(cp);
    }
    let last = entries.last().map(|e| (e.seq, e.hash.clone()));
    for e in entries {
        v.entry(None, e);
    }
    let head = match (header.head, last) {
        (Some(seq), Some((lseq, hash))) if seq == lseq => Some((seq, hash)),
        (Some(seq), _) => Some((seq, String::new())),
        (None, _) => None,
    };
    Ok(v.finish(head))
}

/// Parses a hex Ed25519 public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes =
        hex::decode(text.trim()).map_err(|_| "the audit public key must be 64 hex digits")?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "the audit public key must be 64 hex digits")?;
    VerifyingKey::from_bytes(&arr).map_err(|_| "not a valid Ed25519 public key".to_string())
}

fn parse_seq(key: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(key).ok()?;
    u64::from_str_radix(text.rsplit('/').next()?, 16).ok()
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our records are plain structs of strings and numbers.
    serde_json::to_vec(v).unwrap_or_default()
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().recover()
}

/// `time_ms` as RFC 3339 UTC with milliseconds (for people and exports).
pub fn rfc3339(time_ms: u64) -> String {
    let secs = time_ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        time_ms % 1000
    )
}

impl From<AuditError> for crate::error::ApiError {
    fn from(e: AuditError) -> Self {
        crate::error::ApiError::new(503, "audit_unavailable", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, prev: &str) -> Entry {
        let mut e = Entry {
            seq,
            time_ms: 1_000 + seq,
            actor: Actor::system(),
            action: "test.act".into(),
            target: format!("t{seq}"),
            outcome: outcome::SUCCESS.into(),
            source: None,
            details: String::new(),
            request_id: None,
            access: None,
            prev: prev.into(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    fn chain(n: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        for seq in 1..=n {
            let prev = out.last().map(|e| e.hash.clone()).unwrap_or(GENESIS.into());
            out.push(entry(seq, &prev));
        }
        out
    }

    fn run(entries: Vec<Entry>, head: Option<(u64, String)>) -> Report {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut v = Verifier::new("system".into(), key.verifying_key());
        for e in entries {
            v.entry(None, e);
        }
        v.finish(head)
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let head = (5, c[4].hash.clone());
        assert!(run(c, Some(head)).is_intact());
    }

    #[test]
    fn edit_remove_reorder_truncate_are_named() {
        let mut c = chain(6);
        c[2].outcome = "failure".into();
        let r = run(c, None);
        assert_eq!(r.problems[0].kind, ProblemKind::Edited);
        assert_eq!(r.problems[0].seq, 3);

        let mut c = chain(6);
        c.remove(3);
        let r = run(c, None);
        assert_eq!(r.problems[0].kind, ProblemKind::Removed);
        assert_eq!(r.problems[0].seq, 4);

        let mut c = chain(6);
        c.swap(1, 2);
        let r = run(c, None);
        assert!(r.problems.iter().any(|p| p.kind == ProblemKind::Reordered));

        let c = chain(6);
        let head = (6, c[5].hash.clone());
        let r = run(c[..4].to_vec(), Some(head));
        assert_eq!(r.problems[0].kind, ProblemKind::Truncated);
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
        let mut c = chain(4);
        c[1].target = "forged".into();
        c[1].hash = c[1].compute_hash();
        let r = run(c, None);
        assert_eq!(r.problems[0].seq, 3);
        assert_eq!(r.problems[0].kind, ProblemKind::Reordered);
    }

    #[test]
    fn checkpoints_catch_a_rebuilt_chain() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let c = chain(4);
        let msg = Checkpoint::message("system", 4, &c[3].hash, 9);
        let cp = Checkpoint {
            scope: "system".into(),
            seq: 4,
            hash: c[3].hash.clone(),
            time_ms: 9,
            key_id: key_id(&key.verifying_key()),
            signature: hex::encode(key.sign(&msg).to_bytes()),
        };
        // A chain rebuilt without entry 4 and with a rewritten head.
        let mut v = Verifier::new("system".into(), key.verifying_key());
        v.checkpoint(Ok(cp.clone()));
        for e in c[..3].iter().cloned() {
            v.entry(None, e);
        }
        let r = v.finish(Some((3, c[2].hash.clone())));
        assert_eq!(r.problems[0].kind, ProblemKind::Truncated);

        // A forged signature is refused.
        let mut forged = cp;
        forged.seq = 3;
        let mut v = Verifier::new("system".into(), key.verifying_key());
        v.checkpoint(Ok(forged));
        assert_eq!(v.finish(None).problems[0].kind, ProblemKind::BadCheckpoint);
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
    }
}
