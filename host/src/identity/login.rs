//! Sign-in (SPEC I2, I3, I7): password sign-in with throttling, locking
//! and the second factor, sign-in through an identity provider (SSO), and
//! issuing the session both end in.

use std::net::IpAddr;

use super::throttle::Gate;
use super::{
    Account, AuthError, Identity, Issued, Login, MAX_DISPLAY_NAME_LEN, MAX_PASSWORD_BYTES, Policy,
    Restriction, Role, Session, check_email, json, lock, name_key, normalize_username, prefix,
    random_token_part, session_key, user_sessions_prefix,
};
use super::{password, totp};
use crate::audit::{self, Actor, ActorKind, Scope, outcome};
use crate::metrics;
use crate::support::clock::now_ms;
use crate::support::encoding::sha256_hex;

impl Identity {
    /// Signs in with name and password (and a second factor when
    /// enrolled). Unknown names, wrong passwords, locked and disabled
    /// accounts all get `InvalidCredentials` after the same argon2 work.
    pub async fn login(&self, realm: &Scope, req: Login<'_>) -> Result<Issued, AuthError> {
        if req.password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::InvalidArgument(format!(
                "password longer than {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        if req.username.len() > 256 {
            return Err(AuthError::InvalidArgument(
                "user name longer than 256 bytes".into(),
            ));
        }
        let name = req.username.trim().to_lowercase();
        let track = format!("{}/{name}", realm.label());
        let now = now_ms();
        let source = req.source.map(|a| a.to_string());
        let ctx = audit::Context {
            actor: Actor {
                name: Some(name.chars().take(64).collect()),
                ..Actor::of(ActorKind::Anonymous, None)
            },
            source: source.clone(),
            ..audit::context()
        };
        let gate = lock(&self.throttle).gate(&track, req.source, now);
        if let Gate::Wait(ms) = gate {
            metrics::LOGIN_THROTTLED.inc();
            audit::with_context(ctx.clone(), async {
                self.audit(realm, "auth.login", &name, outcome::DENIED, "throttled");
            })
            .await;
            return Err(AuthError::Throttled { retry_after_ms: ms });
        }
        let account = if self.realm_exists(realm) && normalize_username(&name).is_ok() {
            self.account_by_name(realm, &name)?
        } else {
            None
        };
        let phc = account
            .as_ref()
            .and_then(|a| a.password_hash.clone())
            .unwrap_or_else(|| password::decoy_hash().to_string());
        let password_ok = self.verify_password(req.password.to_string(), phc).await;
        let locked = account.as_ref().is_some_and(|a| a.locked_until_ms > now)
            || lock(&self.throttle).is_locked(&track, now);
        let reason = match &account {
            None => Some("unknown user"),
            Some(a) if a.password_hash.is_none() => {
                Some("account signs in through single sign-on only")
            }
            Some(_) if locked => Some("account locked"),
            Some(a) if !a.active => Some("account disabled"),
            Some(_) if !password_ok => Some("wrong password"),
            Some(_) => None,
        };
        let realm_audit = |action: &'static str, outcome: &'static str, details: String| {
            let ctx = ctx.clone();
            let name = name.clone();
            async move {
                audit::with_context(ctx, async {
                    self.audit(realm, action, &name, outcome, &details);
                })
                .await
            }
        };
        if let Some(reason) = reason {
            self.record_failure(
                realm,
                &track,
                account.as_ref(),
                req.source,
                now,
                &realm_audit,
            )
            .await?;
            realm_audit("auth.login", outcome::FAILURE, reason.to_string()).await;
            return Err(AuthError::InvalidCredentials);
        }
        // Checked above: the account exists.
        let Some(mut account) = account else {
            return Err(AuthError::InvalidCredentials);
        };
        if account.mfa_enrolled() {
            match (req.totp, req.recovery_code) {
                (None, None) => {
                    realm_audit(
                        "auth.login",
                        outcome::FAILURE,
                        "second factor missing".into(),
                    )
                    .await;
                    return Err(AuthError::MfaRequired);
                }
                (totp, recovery) => {
                    let _w = self.writes.lock().await;
                    // Re-read: a concurrent sign-in may have used a code.
                    let Some(fresh) = self.account(realm, &account.id)? else {
                        return Err(AuthError::InvalidCredentials);
                    };
                    account = fresh;
                    let used = self.use_second_factor(&mut account, totp, recovery, now);
                    if !used {
                        drop(_w);
                        self.record_failure(
                            realm,
                            &track,
                            Some(&account),
                            req.source,
                            now,
                            &realm_audit,
                        )
                        .await?;
                        realm_audit("auth.login", outcome::FAILURE, "wrong second factor".into())
                            .await;
                        return Err(AuthError::MfaInvalid);
                    }
                    self.save(realm, &account, Vec::new()).await?;
                }
            }
        }
        lock(&self.throttle).success(&track);
        let policy = self.policy(realm)?;
        let restriction = if account.must_change_password {
            Some(Restriction::ChangePassword)
        } else if policy.requires_mfa(account.role) && !account.mfa_enrolled() {
            Some(Restriction::EnrolMfa)
        } else {
            None
        };
        let via = if req.via.is_empty() {
            "password"
        } else {
            req.via
        };
        let issued = self
            .issue(
                realm,
                &account,
                &policy,
                restriction,
                source,
                req.user_agent,
                via,
            )
            .await?;
        metrics::LOGINS.inc();
        let caller_ctx = audit::Context {
            actor: Actor {
                kind: account.role.actor_kind(),
                id: Some(account.id.clone()),
                name: Some(account.username.clone()),
                tenant: None,
                on_behalf_of: None,
            },
            ..ctx.clone()
        };
        audit::with_context(caller_ctx, async {
            self.audit(
                realm,
                "auth.login",
                &account.username,
                outcome::SUCCESS,
                &format!(
                    "session {}{}",
                    issued.session.id,
                    restriction.map_or(String::new(), |r| format!(", restricted to {r:?}"))
                ),
            );
        })
        .await;
        Ok(issued)
    }

    pub(super) async fn record_failure<F, Fut>(
        &self,
        realm: &Scope,
        track: &str,
        account: Option<&Account>,
        source: Option<IpAddr>,
        now: u64,
        realm_audit: &F,
    ) -> Result<(), AuthError>
    where
        F: Fn(&'static str, &'static str, String) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        metrics::LOGIN_FAILURES.inc();
        let locked_until = lock(&self.throttle).failure(track, source, now);
        if let Some(until) = locked_until {
            metrics::LOCKOUTS.inc();
            if let Some(a) = account {
                let _w = self.writes.lock().await;
                if let Some(mut fresh) = self.account(realm, &a.id)? {
                    fresh.locked_until_ms = until;
                    self.save(realm, &fresh, Vec::new()).await?;
                }
            }
            realm_audit(
                "auth.lockout",
                outcome::DENIED,
                format!(
                    "locked until {} after repeated failures",
                    audit::rfc3339(until)
                ),
            )
            .await;
        }
        Ok(())
    }

    pub(super) fn use_second_factor(
        &self,
        account: &mut Account,
        totp: Option<&str>,
        recovery: Option<&str>,
        now: u64,
    ) -> bool {
        let Some(mfa) = account.mfa.as_mut().filter(|m| m.confirmed) else {
            return false;
        };
        if let Some(code) = totp {
            let Some(secret) = totp::base32_decode(&mfa.secret) else {
                return false;
            };
            if let Some(step) =
                totp::check(&secret, code.trim(), totp::step(now / 1000), mfa.last_step)
            {
                mfa.last_step = step;
                return true;
            }
            return false;
        }
        if let Some(code) = recovery {
            let normalized: String = code
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_lowercase();
            let h = sha256_hex(normalized.as_bytes());
            if let Some(i) = mfa.recovery.iter().position(|r| *r == h) {
                mfa.recovery.remove(i);
                return true;
            }
        }
        false
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn issue(
        &self,
        realm: &Scope,
        account: &Account,
        policy: &Policy,
        restriction: Option<Restriction>,
        source: Option<String>,
        user_agent: Option<&str>,
        via: &str,
    ) -> Result<Issued, AuthError> {
        let realm_tag = match realm {
            Scope::System => "_".to_string(),
            Scope::Tenant(t) => t.clone(),
        };
        let token = format!("sb1.{realm_tag}.{}", random_token_part()?);
        let hash = sha256_hex(token.as_bytes());
        let now = now_ms();
        let session = Session {
            id: hash[..24].to_string(),
            user: account.id.clone(),
            created_ms: now,
            last_seen_ms: now,
            expires_ms: now + u64::from(policy.session_absolute_hours) * 3_600_000,
            idle_ms: u64::from(policy.session_idle_minutes) * 60_000,
            source,
            user_agent: user_agent.map(|u| u.chars().take(256).collect()),
            restriction,
            guest: None,
            via: via.into(),
        };
        let seq = self.store.apply(&[
            (session_key(realm, &hash), Some(json(&session))),
            (
                [
                    user_sessions_prefix(realm, &account.id),
                    session.id.clone().into_bytes(),
                ]
                .concat(),
                Some(hash.into_bytes()),
            ),
        ])?;
        self.store.durable(seq).await?;
        Ok(Issued {
            token,
            session: session.view(Some(&session.id)),
            user: account.view(now),
        })
    }

    /// Signs in an account federated from an external identity provider
    /// (SPEC I6): the account linked to (issuer, subject), or — when the
    /// tenant allows it — a new one provisioned under the provider's user
    /// name. A local account of the same name is never taken over.
    #[allow(clippy::too_many_arguments)]
    pub async fn sso_sign_in(
        &self,
        realm: &Scope,
        issuer: &str,
        subject: &str,
        username: &str,
        display_name: Option<&str>,
        email: Option<&str>,
        provision: bool,
        source: Option<String>,
    ) -> Result<Issued, AuthError> {
        self.require_realm(realm)?;
        let link = format!(
            "{}x/{}",
            prefix(realm),
            sha256_hex(format!("{issuer}\0{subject}").as_bytes())
        )
        .into_bytes();
        let _w = self.writes.lock().await;
        let account = match self.store.get(&link)? {
            Some(id) => self.account(realm, &String::from_utf8_lossy(&id))?,
            None => None,
        };
        let account = match account {
            Some(a) => a,
            None if !provision => {
                self.audit(
                    realm,
                    "auth.sso",
                    username,
                    outcome::DENIED,
                    "no linked account and provisioning is off",
                );
                return Err(AuthError::Forbidden(
                    "no account is linked to this identity and the tenant does not create accounts on first sign-in".into(),
                ));
            }
            None => {
                let name = normalize_username(username)?;
                if self.store.get(&name_key(realm, &name))?.is_some() {
                    self.audit(
                        realm,
                        "auth.sso",
                        &name,
                        outcome::DENIED,
                        "a local account of that name exists and is not linked",
                    );
                    return Err(AuthError::AlreadyExists(format!(
                        "a local account named {name} (not linked to the identity provider; an admin must rename or delete it)"
                    )));
                }
                let display = display_name
                    .unwrap_or(&name)
                    .chars()
                    .take(MAX_DISPLAY_NAME_LEN)
                    .collect::<String>();
                let a = Account {
                    id: format!("u{}", crate::support::encoding::random_hex(8)),
                    username: name.clone(),
                    display_name: display,
                    email: email.filter(|e| check_email(e).is_ok()).map(str::to_string),
                    role: Role::User,
                    active: true,
                    password_hash: None,
                    must_change_password: false,
                    mfa: None,
                    locked_until_ms: 0,
                    tenants: Vec::new(),
                    external: Some((issuer.to_string(), subject.to_string())),
                    created_ms: now_ms(),
                    created_by: None,
                };
                self.save(
                    realm,
                    &a,
                    vec![
                        (name_key(realm, &name), Some(a.id.clone().into_bytes())),
                        (link.clone(), Some(a.id.clone().into_bytes())),
                    ],
                )
                .await?;
                self.audit(
                    realm,
                    "user.create",
                    &format!("{} ({name})", a.id),
                    outcome::SUCCESS,
                    &format!("provisioned on first sign-in through {issuer}"),
                );
                a
            }
        };
        drop(_w);
        if !account.active || account.locked_until_ms > now_ms() {
            self.audit(
                realm,
                "auth.sso",
                &account.username,
                outcome::DENIED,
                "account disabled or locked",
            );
            return Err(AuthError::InvalidCredentials);
        }
        let policy = self.policy(realm)?;
        // The identity provider authenticated the user, second factor
        // included: no local restriction applies.
        let issued = self
            .issue(realm, &account, &policy, None, source, None, "sso")
            .await?;
        metrics::LOGINS.inc();
        self.audit(
            realm,
            "auth.sso",
            &account.username,
            outcome::SUCCESS,
            &format!("through {issuer}, session {}", issued.session.id),
        );
        Ok(issued)
    }
}
