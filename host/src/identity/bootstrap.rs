//! The first run (SPEC K1): a server whose system realm has no operator
//! prints a one-time bootstrap secret when it starts; whoever holds it may
//! create the first operator over HTTP (`POST /api/v1/auth/bootstrap`),
//! who then changes the welcome password and enrols TOTP as every operator
//! does.
//!
//! The secret is stored only as its SHA-256 and is valid until the first
//! operator exists or `VALID_FOR` has passed, whichever comes first. It is
//! printed once: a later start with still no operator makes a new one,
//! which replaces (and so invalidates) the last. Attempts are throttled
//! per source address like sign-ins and every use, right or wrong, is in
//! the system trail.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::throttle::Gate;
use super::{AuthError, Identity, NewAccount, Role, lock};
use crate::audit::{self, Actor, ActorKind, Scope, outcome};
use crate::support::clock::now_ms;
use crate::support::encoding::{constant_time_eq, random_b64url, sha256_hex};

/// Where `serve` leaves the secret when its output is not a terminal
/// (in the data folder, mode 0600).
pub const SECRET_FILE: &str = "bootstrap.secret";

/// How long a printed secret stays valid.
pub const VALID_FOR_MS: u64 = 24 * 3600 * 1000;

/// Where the secret's hash is kept.
const KEY: &[u8] = b"sys/bootstrap";

/// The throttle's name for bootstrap attempts from `source` (no user name
/// can be this): guesses slow down and lock out their own address, not
/// the operator at another.
fn track(source: Option<IpAddr>) -> String {
    format!(
        "system/\u{0}bootstrap/{}",
        source.map(|a| a.to_string()).unwrap_or_default()
    )
}

/// The longest secret accepted (they are 43 characters).
const MAX_SECRET_LEN: usize = 128;

/// One bootstrap step at a time: checking the secret, creating the
/// operator and forgetting the secret are one step, so two holders of the
/// secret cannot both create an operator.
static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Serialize, Deserialize)]
struct Stored {
    sha256: String,
    expires_ms: u64,
}

/// A new secret to print, and until when it is valid.
pub struct Secret {
    pub secret: String,
    pub expires_ms: u64,
}

/// The first operator, as made with the secret.
pub struct FirstOperator {
    pub id: String,
    pub username: String,
    /// To be changed at the first sign-in.
    pub welcome_password: String,
}

impl Identity {
    fn has_operator(&self) -> Result<bool, AuthError> {
        Ok(self
            .users(&Scope::System)?
            .iter()
            .any(|u| u.role == Role::Operator))
    }

    /// At start: when no operator exists, a fresh secret (replacing any
    /// earlier one) to print; `None` when an operator exists (any stored
    /// secret is removed then).
    pub async fn bootstrap_secret(&self) -> Result<Option<Secret>, AuthError> {
        let _one = ONE.lock().await;
        if self.has_operator()? {
            if self.store.get(KEY)?.is_some() {
                self.put_bootstrap(None).await?;
            }
            return Ok(None);
        }
        let secret =
            random_b64url(32).map_err(|e| AuthError::Audit(format!("no randomness: {e}")))?;
        let expires_ms = now_ms() + VALID_FOR_MS;
        let stored = Stored {
            sha256: sha256_hex(&secret),
            expires_ms,
        };
        self.put_bootstrap(Some(serde_json::to_vec(&stored).unwrap_or_default()))
            .await?;
        self.audit(
            &Scope::System,
            "bootstrap.issue",
            "first operator",
            outcome::SUCCESS,
            &format!("valid until {}", audit::rfc3339(expires_ms)),
        );
        Ok(Some(Secret { secret, expires_ms }))
    }

    async fn put_bootstrap(&self, value: Option<Vec<u8>>) -> Result<(), AuthError> {
        let seq = self.store.apply(&[(KEY.to_vec(), value)])?;
        self.store.durable(seq).await?;
        Ok(())
    }

    /// Creates the first operator `username` with the bootstrap secret.
    /// A wrong, used or expired secret gets one answer
    /// (`BootstrapRefused`); attempts are throttled per source address.
    pub async fn bootstrap(
        &self,
        secret: &str,
        username: &str,
        source: Option<IpAddr>,
    ) -> Result<FirstOperator, AuthError> {
        let now = now_ms();
        let ctx = audit::Context {
            actor: Actor {
                name: Some(username.chars().take(64).collect()),
                ..Actor::of(ActorKind::Anonymous, None)
            },
            source: source.map(|a| a.to_string()),
            ..audit::context()
        };
        audit::with_context(ctx, async {
            let track = track(source);
            if let Gate::Wait(ms) = lock(&self.throttle).gate(&track, source, now) {
                self.audit(
                    &Scope::System,
                    "bootstrap.use",
                    "first operator",
                    outcome::DENIED,
                    "throttled",
                );
                return Err(AuthError::Throttled { retry_after_ms: ms });
            }
            let _one = ONE.lock().await;
            let stored: Option<Stored> = self
                .store
                .get(KEY)?
                .and_then(|v| serde_json::from_slice(&v).ok());
            let valid = accepts(stored.as_ref(), secret, now) && !self.has_operator()?;
            if !valid {
                lock(&self.throttle).failure(&track, source, now);
                self.audit(
                    &Scope::System,
                    "bootstrap.use",
                    "first operator",
                    outcome::DENIED,
                    "wrong, used or expired secret",
                );
                return Err(AuthError::BootstrapRefused);
            }
            let (view, welcome) = self
                .create_user(
                    &Scope::System,
                    NewAccount {
                        username: username.to_string(),
                        display_name: None,
                        email: None,
                        role: "operator".into(),
                        password: None,
                        tenants: Vec::new(),
                    },
                )
                .await?;
            // The operator exists, which alone closes the bootstrap; a
            // failure to forget the secret must not lose its password.
            if let Err(e) = self.put_bootstrap(None).await {
                tracing::warn!(code = e.code(), error = %e, "cannot forget the used bootstrap secret");
            }
            lock(&self.throttle).success(&track);
            self.audit(
                &Scope::System,
                "bootstrap.use",
                &view.id,
                outcome::SUCCESS,
                &format!("first operator {} created", view.username),
            );
            Ok(FirstOperator {
                id: view.id,
                username: view.username,
                welcome_password: welcome.unwrap_or_default(),
            })
        })
        .await
    }
}

/// Whether `secret` is the stored one and still valid at `now`.
fn accepts(stored: Option<&Stored>, secret: &str, now: u64) -> bool {
    secret.len() <= MAX_SECRET_LEN
        && stored.is_some_and(|s| {
            s.expires_ms > now
                && constant_time_eq(sha256_hex(secret).as_bytes(), s.sha256.as_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_accepted_only_while_valid_and_only_itself() {
        let stored = Stored {
            sha256: sha256_hex("s3cret"),
            expires_ms: 1_000,
        };
        assert!(accepts(Some(&stored), "s3cret", 999));
        assert!(!accepts(Some(&stored), "s3cret", 1_000), "expired");
        assert!(!accepts(Some(&stored), "s3cres", 0));
        assert!(!accepts(Some(&stored), "", 0));
        assert!(!accepts(None, "s3cret", 0), "used (forgotten)");
        let long = "x".repeat(MAX_SECRET_LEN + 1);
        assert!(!accepts(Some(&stored), &long, 0));
    }
}
