//! Accounts (SPEC I1): listing, creating, changing and deleting a realm's
//! accounts, and the admin's resets (password, lock, second factor). Only
//! the realm's own roles may be given (`check_role_for`).

use super::password;
use super::{
    Account, AccountChange, AuthError, Identity, NewAccount, Role, UserView, check_display_name,
    check_email, lock, name_key, normalize_username, prefix, user_key,
};
use crate::audit::{self, Scope, outcome};
use crate::support::clock::now_ms;

impl Identity {
    /// A user by id.
    pub fn user(&self, realm: &Scope, id: &str) -> Result<Option<UserView>, AuthError> {
        Ok(self.account(realm, id)?.map(|a| a.view(now_ms())))
    }

    /// Who created an account (the acting user's id), if recorded.
    pub fn created_by(&self, realm: &Scope, id: &str) -> Option<String> {
        self.account(realm, id)
            .ok()
            .flatten()
            .and_then(|a| a.created_by)
    }

    /// A user by login name.
    pub fn user_by_name(&self, realm: &Scope, name: &str) -> Result<Option<UserView>, AuthError> {
        let Ok(name) = normalize_username(name) else {
            return Ok(None);
        };
        Ok(self
            .account_by_name(realm, &name)?
            .map(|a| a.view(now_ms())))
    }

    /// Every account of a realm, by login name.
    pub fn users(&self, realm: &Scope) -> Result<Vec<UserView>, AuthError> {
        self.require_realm(realm)?;
        let now = now_ms();
        let prefix = format!("{}u/", prefix(realm)).into_bytes();
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(&prefix, after.as_deref(), 256)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (_, v) in page {
                if let Ok(a) = serde_json::from_slice::<Account>(&v) {
                    out.push(a.view(now));
                }
            }
        }
        out.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(out)
    }

    pub(super) fn check_role_for(realm: &Scope, role: Role) -> Result<(), AuthError> {
        match (realm, role.is_system()) {
            (Scope::System, true) | (Scope::Tenant(_), false) if role != Role::Guest => Ok(()),
            (Scope::System, _) => Err(AuthError::InvalidArgument(format!(
                "role {} belongs to a tenant; system accounts are operator or partner",
                role.as_str()
            ))),
            (Scope::Tenant(_), _) => Err(AuthError::InvalidArgument(format!(
                "role {} is not a tenant role; tenant accounts are tenant-admin or user",
                role.as_str()
            ))),
        }
    }

    /// Creates an account with a welcome password (given, or generated and
    /// returned) that must be changed at first sign-in.
    pub async fn create_user(
        &self,
        realm: &Scope,
        new: NewAccount,
    ) -> Result<(UserView, Option<String>), AuthError> {
        self.require_realm(realm)?;
        let username = normalize_username(&new.username)?;
        let role = Role::parse(&new.role).ok_or_else(|| {
            AuthError::InvalidArgument(format!(
                "unknown role {:?}: use operator, partner, tenant-admin or user",
                new.role.chars().take(40).collect::<String>()
            ))
        })?;
        Self::check_role_for(realm, role)?;
        let display_name = new.display_name.unwrap_or_else(|| username.clone());
        check_display_name(&display_name)?;
        if let Some(e) = &new.email {
            check_email(e)?;
        }
        if role != Role::Partner && !new.tenants.is_empty() {
            return Err(AuthError::InvalidArgument(
                "only partners are assigned tenants".into(),
            ));
        }
        for t in &new.tenants {
            self.require_realm(&Scope::tenant(t))?;
        }
        let (password, generated) = match new.password {
            Some(p) => {
                password::check(&p, &username).map_err(AuthError::PasswordPolicy)?;
                (p, None)
            }
            None => {
                let p = password::generate();
                (p.clone(), Some(p))
            }
        };
        let hash = self.hash(password).await?;
        let _w = self.writes.lock().await;
        if self.store.get(&name_key(realm, &username))?.is_some() {
            return Err(AuthError::AlreadyExists(format!("user {username}")));
        }
        let account = Account {
            id: format!("u{}", crate::support::encoding::random_hex(8)),
            username: username.clone(),
            display_name,
            email: new.email,
            role,
            active: true,
            password_hash: Some(hash),
            must_change_password: true,
            mfa: None,
            locked_until_ms: 0,
            tenants: new.tenants,
            external: None,
            created_ms: now_ms(),
            created_by: audit::context().actor.id,
        };
        self.save(
            realm,
            &account,
            vec![(
                name_key(realm, &username),
                Some(account.id.clone().into_bytes()),
            )],
        )
        .await?;
        self.audit(
            realm,
            "user.create",
            &format!("{} ({})", account.id, username),
            outcome::SUCCESS,
            &format!("role {}", role.as_str()),
        );
        Ok((account.view(now_ms()), generated))
    }

    /// Changes an account's profile, role, state or assigned tenants.
    /// Disabling an account or changing its role ends its sessions.
    pub async fn update_user(
        &self,
        realm: &Scope,
        id: &str,
        change: AccountChange,
    ) -> Result<UserView, AuthError> {
        let _w = self.writes.lock().await;
        let mut a = self.existing(realm, id)?;
        let mut revoke = false;
        let mut what = Vec::new();
        if let Some(d) = change.display_name {
            check_display_name(&d)?;
            a.display_name = d;
            what.push("display name".to_string());
        }
        if let Some(e) = change.email {
            if e.is_empty() {
                a.email = None;
            } else {
                check_email(&e)?;
                a.email = Some(e);
            }
            what.push("email".into());
        }
        if let Some(r) = change.role {
            let role = Role::parse(&r)
                .ok_or_else(|| AuthError::InvalidArgument(format!("unknown role {r:?}")))?;
            Self::check_role_for(realm, role)?;
            if role != a.role {
                what.push(format!("role {} -> {}", a.role.as_str(), role.as_str()));
                a.role = role;
                revoke = true;
            }
        }
        if let Some(active) = change.active {
            if active != a.active {
                what.push(if active { "enabled" } else { "disabled" }.into());
                revoke |= !active;
            }
            a.active = active;
        }
        if let Some(tenants) = change.tenants {
            if a.role != Role::Partner {
                return Err(AuthError::InvalidArgument(
                    "only partners are assigned tenants".into(),
                ));
            }
            for t in &tenants {
                self.require_realm(&Scope::tenant(t))?;
            }
            what.push(format!("tenants {tenants:?}"));
            a.tenants = tenants;
        }
        let mut extra = Vec::new();
        if revoke {
            extra = self.session_deletes(realm, id)?;
        }
        self.save(realm, &a, extra).await?;
        self.audit(realm, "user.update", id, outcome::SUCCESS, &what.join(", "));
        Ok(a.view(now_ms()))
    }

    /// Deletes an account and its sessions.
    pub async fn delete_user(&self, realm: &Scope, id: &str) -> Result<(), AuthError> {
        let _w = self.writes.lock().await;
        let a = self.existing(realm, id)?;
        let mut writes = self.session_deletes(realm, id)?;
        writes.push((user_key(realm, id), None));
        writes.push((name_key(realm, &a.username), None));
        let seq = self.store.apply(&writes)?;
        self.store.durable(seq).await?;
        self.audit(
            realm,
            "user.delete",
            &format!("{id} ({})", a.username),
            outcome::SUCCESS,
            "",
        );
        Ok(())
    }

    /// Sets a new welcome password (generated and returned), ending the
    /// account's sessions; it must be changed at the next sign-in.
    pub async fn reset_password(&self, realm: &Scope, id: &str) -> Result<String, AuthError> {
        let welcome = password::generate();
        let hash = self.hash(welcome.clone()).await?;
        let _w = self.writes.lock().await;
        let mut a = self.existing(realm, id)?;
        a.password_hash = Some(hash);
        a.must_change_password = true;
        let revoke = self.session_deletes(realm, id)?;
        self.save(realm, &a, revoke).await?;
        self.audit(
            realm,
            "user.password-reset",
            id,
            outcome::SUCCESS,
            "welcome password set; sessions ended",
        );
        Ok(welcome)
    }

    /// Lifts a lock.
    pub async fn unlock(&self, realm: &Scope, id: &str) -> Result<(), AuthError> {
        let _w = self.writes.lock().await;
        let mut a = self.existing(realm, id)?;
        a.locked_until_ms = 0;
        self.save(realm, &a, Vec::new()).await?;
        lock(&self.throttle).unlock(&format!("{}/{}", realm.label(), a.username));
        self.audit(realm, "user.unlock", id, outcome::SUCCESS, "");
        Ok(())
    }

    /// Removes an account's second factor (the user must enrol again if
    /// policy requires one), ending its sessions.
    pub async fn reset_mfa(&self, realm: &Scope, id: &str) -> Result<(), AuthError> {
        let _w = self.writes.lock().await;
        let mut a = self.existing(realm, id)?;
        a.mfa = None;
        let revoke = self.session_deletes(realm, id)?;
        self.save(realm, &a, revoke).await?;
        self.audit(
            realm,
            "user.mfa-reset",
            id,
            outcome::SUCCESS,
            "second factor removed; sessions ended",
        );
        Ok(())
    }
}
