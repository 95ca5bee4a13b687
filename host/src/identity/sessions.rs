//! Sessions (SPEC I4): authenticating a token on every request (the
//! session and the account re-read, so revocation is immediate), signing
//! out, listing and revoking a user's sessions, and guest sessions.

use super::{
    AuthError, Caller, Guest, Identity, Role, Session, SessionView, TOUCH_EVERY_MS,
    check_display_name, json, random_token_part, session_key, token_realm, user_sessions_prefix,
};
use crate::audit::{Scope, outcome};
use crate::metrics;
use crate::store::Write;
use crate::support::clock::now_ms;
use crate::support::encoding::sha256_hex;

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
        let Some(raw) = self.store.get(&key)? else {
            return Err(AuthError::Unauthenticated);
        };
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
                let account = self
                    .account(&realm, &session.user)?
                    .filter(|a| a.active)
                    .ok_or(AuthError::Unauthenticated)?;
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
            let _ = self.store.apply(&[(key, Some(json(&session)))]);
        }
        Ok(caller)
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
