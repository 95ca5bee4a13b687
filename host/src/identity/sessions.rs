//! Sessions (SPEC I4): authenticating a token on every request (the
//! session and the account re-checked against the store, so revocation is
//! immediate), signing out, listing and revoking a user's sessions, and
//! guest sessions.
//!
//! A recently authenticated token is remembered with the sealed bytes of
//! its session and account records (`Verified`). The next request with it
//! reads those two records' stored bytes and compares them: equal bytes
//! mean neither was written since (every write seals under a fresh data
//! key), so the decoded caller is still right, without opening and
//! parsing both records again. Any change — sign-out, revocation, a
//! disabled account, a role change, a deleted tenant — changes or removes
//! the bytes, and the token goes the full way again.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{
    AuthError, Caller, Guest, Identity, Role, Session, SessionView, TOUCH_EVERY_MS,
    check_display_name, decode_account, json, random_token_part, session_key, token_realm,
    user_key, user_sessions_prefix,
};
use crate::audit::{Scope, outcome};
use crate::metrics;
use crate::store::Write;
use crate::support::clock::now_ms;
use crate::support::encoding::sha256_hex;
use crate::support::sync::Recover as _;

/// Tokens remembered at most; the table is emptied when it is full (only
/// tokens that authenticated get in, so guessing cannot fill it).
const VERIFIED_MAX: usize = 16_384;

/// Tokens that authenticated recently, by token hash.
#[derive(Default)]
pub(super) struct Verified(Mutex<HashMap<String, Entry>>);

#[derive(Clone)]
struct Entry {
    caller: Caller,
    session: Session,
    /// The stored bytes of the session and (for accounts) account records
    /// it was decoded from.
    session_sealed: Vec<u8>,
    account_sealed: Option<Vec<u8>>,
}

impl Verified {
    fn get(&self, hash: &str) -> Option<Entry> {
        self.0.lock().recover().get(hash).cloned()
    }

    fn put(&self, hash: String, entry: Entry) {
        let mut map = self.0.lock().recover();
        if map.len() >= VERIFIED_MAX {
            map.clear();
        }
        map.insert(hash, entry);
    }

    fn forget(&self, hash: &str) {
        self.0.lock().recover().remove(hash);
    }
}

impl Identity {
    /// Resolves a bearer token to its caller, or `Unauthenticated` for a
    /// missing, malformed, unknown, expired or revoked one.
    pub fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let r = self.authenticate_inner(token);
        if r.is_err() {
            metrics::BAD_TOKENS.inc();
        }
        r
    }

    pub(super) fn authenticate_inner(&self, token: &str) -> Result<Caller, AuthError> {
        let realm = token_realm(token).ok_or(AuthError::Unauthenticated)?;
        if !self.realm_exists(&realm) {
            return Err(AuthError::Unauthenticated);
        }
        let hash = sha256_hex(token.as_bytes());
        let key = session_key(&realm, &hash);
        if let Some(caller) = self.verified_again(&realm, &hash, &key)? {
            return Ok(caller);
        }
        self.verified.forget(&hash);
        let Some(session_sealed) = self.store.sealed(&key)? else {
            return Err(AuthError::Unauthenticated);
        };
        let raw = self.store.open_sealed(&key, session_sealed.clone())?;
        let mut session: Session =
            serde_json::from_slice(&raw).map_err(|_| AuthError::Unauthenticated)?;
        let now = now_ms();
        if now >= session.expires_ms || now >= session.last_seen_ms.saturating_add(session.idle_ms)
        {
            let _ = self.store.apply(&[
                (key, None),
                (
                    [
                        user_sessions_prefix(&realm, &session.user),
                        session.id.clone().into_bytes(),
                    ]
                    .concat(),
                    None,
                ),
            ]);
            return Err(AuthError::Unauthenticated);
        }
        let mut account_sealed = None;
        let caller = match &session.guest {
            Some(g) => Caller {
                realm: realm.clone(),
                user: session.user.clone(),
                username: session.user.clone(),
                display_name: g.display_name.clone(),
                role: Role::Guest,
                session: session.id.clone(),
                restriction: None,
                tenants: Vec::new(),
                guest: Some(g.clone()),
                via: session.via.clone(),
            },
            None => {
                let account_key = user_key(&realm, &session.user);
                let sealed = self
                    .store
                    .sealed(&account_key)?
                    .ok_or(AuthError::Unauthenticated)?;
                account_sealed = Some(sealed.clone());
                let account = decode_account(
                    &session.user,
                    &self.store.open_sealed(&account_key, sealed)?,
                )?;
                if !account.active {
                    return Err(AuthError::Unauthenticated);
                }
                Caller {
                    realm: realm.clone(),
                    user: account.id,
                    username: account.username,
                    display_name: account.display_name,
                    role: account.role,
                    session: session.id.clone(),
                    restriction: session.restriction,
                    tenants: account.tenants,
                    guest: None,
                    via: session.via.clone(),
                }
            }
        };
        if now.saturating_sub(session.last_seen_ms) >= TOUCH_EVERY_MS {
            session.last_seen_ms = now;
            // Durable soon enough: losing a touch only shortens idle time.
            // Not remembered: the next request reads what was written.
            let _ = self.store.apply(&[(key, Some(json(&session)))]);
            return Ok(caller);
        }
        self.verified.put(
            hash,
            Entry {
                caller: caller.clone(),
                session,
                session_sealed,
                account_sealed,
            },
        );
        Ok(caller)
    }

    /// The caller of a remembered token if its session and account records
    /// are stored exactly as when it was remembered, the session has not
    /// expired and no touch is due; else `None` (the full check follows).
    fn verified_again(
        &self,
        realm: &Scope,
        hash: &str,
        key: &[u8],
    ) -> Result<Option<Caller>, AuthError> {
        let Some(Entry {
            caller,
            session,
            session_sealed,
            account_sealed,
        }) = self.verified.get(hash)
        else {
            return Ok(None);
        };
        let now = now_ms();
        if now >= session.expires_ms
            || now >= session.last_seen_ms.saturating_add(session.idle_ms)
            || now.saturating_sub(session.last_seen_ms) >= TOUCH_EVERY_MS
        {
            return Ok(None);
        }
        if self.store.sealed(key)?.as_deref() != Some(&session_sealed[..]) {
            return Ok(None);
        }
        if let Some(account_sealed) = account_sealed {
            let account_key = user_key(realm, &session.user);
            if self.store.sealed(&account_key)?.as_deref() != Some(&account_sealed[..]) {
                return Ok(None);
            }
        }
        Ok(Some(caller))
    }

    /// Ends the session of `token`.
    pub async fn logout(&self, caller: &Caller) -> Result<(), AuthError> {
        self.revoke_session(&caller.realm, &caller.user, &caller.session)
            .await?;
        self.audit(
            &caller.realm,
            "auth.logout",
            &caller.username,
            outcome::SUCCESS,
            &format!("session {}", caller.session),
        );
        Ok(())
    }

    pub(super) fn session_deletes(
        &self,
        realm: &Scope,
        user: &str,
    ) -> Result<Vec<Write>, AuthError> {
        let prefix = user_sessions_prefix(realm, user);
        let mut writes = Vec::new();
        for (k, hash) in self.store.scan(&prefix, None, usize::MAX)? {
            writes.push((session_key(realm, &String::from_utf8_lossy(&hash)), None));
            writes.push((k, None));
        }
        Ok(writes)
    }

    /// A user's live sessions, newest first.
    pub fn sessions(
        &self,
        realm: &Scope,
        user: &str,
        current: Option<&str>,
    ) -> Result<Vec<SessionView>, AuthError> {
        let now = now_ms();
        let mut out = Vec::new();
        for (_, hash) in self
            .store
            .scan(&user_sessions_prefix(realm, user), None, usize::MAX)?
        {
            if let Some(raw) = self
                .store
                .get(&session_key(realm, &String::from_utf8_lossy(&hash)))?
                && let Ok(s) = serde_json::from_slice::<Session>(&raw)
                && now < s.expires_ms
                && now < s.last_seen_ms + s.idle_ms
            {
                out.push(s.view(current));
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.created_ms));
        Ok(out)
    }

    /// Ends one of a user's sessions by its public id.
    pub async fn revoke_session(
        &self,
        realm: &Scope,
        user: &str,
        id: &str,
    ) -> Result<(), AuthError> {
        let index = [user_sessions_prefix(realm, user), id.as_bytes().to_vec()].concat();
        let Some(hash) = self.store.get(&index)? else {
            return Err(AuthError::NotFound(format!("session {id}")));
        };
        let seq = self.store.apply(&[
            (session_key(realm, &String::from_utf8_lossy(&hash)), None),
            (index, None),
        ])?;
        self.store.durable(seq).await?;
        self.audit(
            realm,
            "session.revoke",
            &format!("{user}/{id}"),
            outcome::SUCCESS,
            "",
        );
        Ok(())
    }

    /// Ends every session of a user; returns how many.
    pub async fn revoke_all(&self, realm: &Scope, user: &str) -> Result<usize, AuthError> {
        let writes = self.session_deletes(realm, user)?;
        let n = writes.len() / 2;
        let seq = self.store.apply(&writes)?;
        self.store.durable(seq).await?;
        self.audit(
            realm,
            "session.revoke-all",
            user,
            outcome::SUCCESS,
            &format!("{n} sessions"),
        );
        Ok(n)
    }

    /// The writes creating a guest session for one resource (the
    /// `identity` capability puts them in its call's transaction), at most
    /// 24 hours. Returns (token, guest id, writes).
    pub fn guest_session_writes(
        &self,
        tenant: &str,
        plugin: &str,
        display_name: &str,
        resource: &str,
        ttl_ms: u64,
    ) -> Result<(String, String, Vec<Write>), AuthError> {
        let realm = Scope::tenant(tenant);
        self.require_realm(&realm)?;
        check_display_name(display_name)?;
        if display_name.trim().is_empty() {
            return Err(AuthError::InvalidArgument(
                "a guest needs a display name".into(),
            ));
        }
        if resource.is_empty() || resource.len() > 256 || resource.chars().any(char::is_control) {
            return Err(AuthError::InvalidArgument(
                "the guest's resource scope must be 1-256 bytes without control characters".into(),
            ));
        }
        let ttl_ms = ttl_ms.clamp(60_000, 24 * 3_600_000);
        let token = format!("sb1.{tenant}.{}", random_token_part()?);
        let hash = sha256_hex(token.as_bytes());
        let now = now_ms();
        let id = format!("g{}", &hash[..16]);
        let session = Session {
            id: hash[..24].to_string(),
            user: id.clone(),
            created_ms: now,
            last_seen_ms: now,
            expires_ms: now + ttl_ms,
            idle_ms: ttl_ms,
            source: None,
            user_agent: None,
            restriction: None,
            guest: Some(Guest {
                display_name: display_name.to_string(),
                resource: resource.to_string(),
                plugin: plugin.to_string(),
            }),
            via: "guest".into(),
        };
        let writes = vec![
            (session_key(&realm, &hash), Some(json(&session))),
            (
                [
                    user_sessions_prefix(&realm, &id),
                    session.id.clone().into_bytes(),
                ]
                .concat(),
                Some(hash.into_bytes()),
            ),
        ];
        Ok((token, id, writes))
    }
}
