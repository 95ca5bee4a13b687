//! A user's own credentials (SPEC I2, I3): changing the password (other
//! sessions end) and enrolling a TOTP second factor with recovery codes.

use super::throttle::Gate;
use super::{
    AuthError, Caller, Identity, Issued, MAX_PASSWORD_BYTES, Mfa, RECOVERY_CODES, Restriction,
    Role, Session, json, lock, session_key, user_sessions_prefix,
};
use super::{password, totp};
use crate::audit::outcome;
use crate::metrics;
use crate::support::clock::now_ms;
use crate::support::encoding::sha256_hex;

impl Identity {
    /// Changes the caller's password: the current one must be given, the
    /// new one must meet the policy and differ. Every session of the user
    /// ends; a fresh one is returned.
    pub async fn change_password(
        &self,
        caller: &Caller,
        current: &str,
        new: &str,
        source: Option<String>,
        user_agent: Option<&str>,
    ) -> Result<Issued, AuthError> {
        if caller.role == Role::Guest {
            return Err(AuthError::Forbidden("guests have no password".into()));
        }
        if current.len() > MAX_PASSWORD_BYTES || new.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::InvalidArgument(format!(
                "password longer than {MAX_PASSWORD_BYTES} bytes"
            )));
        }
        let realm = &caller.realm;
        let account = self.existing(realm, &caller.user)?;
        let phc = account.password_hash.clone().ok_or_else(|| {
            AuthError::Forbidden(
                "this account signs in through single sign-on and has no password".into(),
            )
        })?;
        // Guessing the current password through a stolen session is
        // throttled like a sign-in.
        let track = format!("{}/{}", realm.label(), account.username);
        let now = now_ms();
        let gate = lock(&self.throttle).gate(&track, None, now);
        if let Gate::Wait(ms) = gate {
            return Err(AuthError::Throttled { retry_after_ms: ms });
        }
        if !self.verify_password(current.to_string(), phc.clone()).await {
            let locked_until = lock(&self.throttle).failure(&track, None, now);
            metrics::LOGIN_FAILURES.inc();
            self.audit(
                realm,
                "auth.password-change",
                &caller.username,
                outcome::FAILURE,
                if locked_until.is_some() {
                    "current password wrong; attempts now throttled"
                } else {
                    "current password wrong"
                },
            );
            return Err(AuthError::InvalidCredentials);
        }
        let mut unmet = password::check(new, &account.username)
            .err()
            .unwrap_or_default();
        if unmet.is_empty() && self.verify_password(new.to_string(), phc).await {
            unmet.push("choose a password different from the current one".into());
        }
        if !unmet.is_empty() {
            return Err(AuthError::PasswordPolicy(unmet));
        }
        let hash = self.hash(new.to_string()).await?;
        let _w = self.writes.lock().await;
        let mut account = self.existing(realm, &caller.user)?;
        account.password_hash = Some(hash);
        account.must_change_password = false;
        let revoke = self.session_deletes(realm, &account.id)?;
        self.save(realm, &account, revoke).await?;
        drop(_w);
        self.audit(
            realm,
            "auth.password-change",
            &caller.username,
            outcome::SUCCESS,
            "every session ended",
        );
        let policy = self.policy(realm)?;
        let restriction = (policy.requires_mfa(account.role) && !account.mfa_enrolled())
            .then_some(Restriction::EnrolMfa);
        self.issue(
            realm,
            &account,
            &policy,
            restriction,
            source,
            user_agent,
            "password",
        )
        .await
    }

    /// Starts TOTP enrolment: a new secret the caller's app must prove it
    /// holds (`mfa_confirm`). Returns (base32 secret, otpauth URI).
    pub async fn mfa_enroll(&self, caller: &Caller) -> Result<(String, String), AuthError> {
        if caller.role == Role::Guest {
            return Err(AuthError::Forbidden(
                "guests cannot enrol a second factor".into(),
            ));
        }
        let _w = self.writes.lock().await;
        let mut account = self.existing(&caller.realm, &caller.user)?;
        if account.mfa_enrolled() {
            return Err(AuthError::AlreadyExists(
                "a second factor (reset it through an admin to enrol a new one)".into(),
            ));
        }
        let mut secret = [0u8; totp::SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(|e| AuthError::Audit(e.to_string()))?;
        let b32 = totp::base32(&secret);
        account.mfa = Some(Mfa {
            secret: b32.clone(),
            confirmed: false,
            last_step: 0,
            recovery: Vec::new(),
        });
        self.save(&caller.realm, &account, Vec::new()).await?;
        let issuer = format!("Switchboard {}", caller.realm.label());
        self.audit(
            &caller.realm,
            "auth.mfa-enroll",
            &caller.username,
            outcome::SUCCESS,
            "secret issued, awaiting confirmation",
        );
        Ok((b32, totp::uri(&issuer, &account.username, &secret)))
    }

    /// Confirms enrolment with a current code; returns the recovery codes
    /// (shown once) and lifts an MFA restriction on the session.
    pub async fn mfa_confirm(&self, caller: &Caller, code: &str) -> Result<Vec<String>, AuthError> {
        let _w = self.writes.lock().await;
        let mut account = self.existing(&caller.realm, &caller.user)?;
        let Some(mfa) = account.mfa.as_mut().filter(|m| !m.confirmed) else {
            return Err(AuthError::InvalidArgument(
                "no enrolment is pending: start one with POST /api/v1/auth/mfa/enroll".into(),
            ));
        };
        let secret = totp::base32_decode(&mfa.secret).unwrap_or_default();
        let Some(step) = totp::check(&secret, code.trim(), totp::step(now_ms() / 1000), 0) else {
            self.audit(
                &caller.realm,
                "auth.mfa-confirm",
                &caller.username,
                outcome::FAILURE,
                "wrong code",
            );
            return Err(AuthError::MfaInvalid);
        };
        let mut codes = Vec::new();
        for _ in 0..RECOVERY_CODES {
            let raw = crate::support::encoding::random_hex(5);
            codes.push(format!("{}-{}", &raw[..5], &raw[5..]));
        }
        mfa.confirmed = true;
        mfa.last_step = step;
        mfa.recovery = codes
            .iter()
            .map(|c| sha256_hex(c.replace('-', "").as_bytes()))
            .collect();
        let mut extra = Vec::new();
        // Lift the restriction on the session that enrolled.
        let index = [
            user_sessions_prefix(&caller.realm, &caller.user),
            caller.session.as_bytes().to_vec(),
        ]
        .concat();
        if let Some(hash) = self.store.get(&index)? {
            let skey = session_key(&caller.realm, &String::from_utf8_lossy(&hash));
            if let Some(raw) = self.store.get(&skey)?
                && let Ok(mut s) = serde_json::from_slice::<Session>(&raw)
                && s.restriction == Some(Restriction::EnrolMfa)
            {
                s.restriction = None;
                extra.push((skey, Some(json(&s))));
            }
        }
        self.save(&caller.realm, &account, extra).await?;
        self.audit(
            &caller.realm,
            "auth.mfa-confirm",
            &caller.username,
            outcome::SUCCESS,
            "second factor enrolled",
        );
        Ok(codes)
    }
}
