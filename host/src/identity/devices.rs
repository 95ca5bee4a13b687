//! SIP devices (SPEC T2): the phones and soft clients a tenant's users
//! register with. A device has its own credentials, apart from its
//! owner's web password: a generated password shown once, kept only as
//! its digest HA1 values (`identity::digest::Ha1`, MD5 and SHA-256) in
//! the tenant's sealed store. HA1 binds the SIP realm (the tenant's SIP
//! domain), so a changed domain needs new device passwords.
//!
//! ```text
//! t/{tenant}/id/d/{device}    device (owner, HA1s, realm, UDP flag)
//! ```
//!
//! The admin layer audits who added, removed or reset a device; the SIP
//! door reads [`Identity::device_secret`] for every authentication,
//! unknown devices included (same store work, no enumeration).

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::digest::Ha1;
use super::{AuthError, Identity, prefix};
use crate::audit::Scope;
use crate::support::clock::now_ms;

/// Longest device name (it is the SIP user part).
pub const MAX_DEVICE_NAME_LEN: usize = 32;
/// Devices a tenant may have.
pub const MAX_DEVICES_PER_TENANT: usize = 10_000;
/// Characters of a generated device password (24 of 56: ~139 bits).
const PASSWORD_CHARS: usize = 24;

#[derive(Serialize, Deserialize)]
struct Device {
    name: String,
    /// The owning user's id.
    user: String,
    /// `Ha1::to_stored`.
    ha1: String,
    /// The realm the HA1 values were made for.
    realm: String,
    /// SIP over UDP/TCP allowed for this device (off: TLS only).
    #[serde(default)]
    udp: bool,
    created_ms: u64,
    password_set_ms: u64,
}

/// A device as admins see it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceView {
    /// The SIP user name: `sip:{name}@{tenant's SIP domain}`.
    pub name: String,
    /// The owner's user id and login name.
    pub user: String,
    pub username: String,
    pub realm: String,
    pub udp: bool,
    pub created_ms: u64,
    pub password_set_ms: u64,
}

/// What the SIP door needs to authenticate a device.
pub struct DeviceSecret {
    pub ha1: Ha1,
    pub realm: String,
    /// The owner's user id.
    pub user: String,
    pub udp: bool,
}

/// A device name: the SIP user part, so lower-case letters, digits and
/// `.-_`, starting with a letter or digit.
pub fn check_device_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_DEVICE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidArgument(format!(
            "device name {:?}: 1-{MAX_DEVICE_NAME_LEN} characters a-z 0-9 . _ -, starting with a letter or digit",
            name.chars().take(40).collect::<String>()
        )))
    }
}

fn device_key(tenant: &str, name: &str) -> Vec<u8> {
    format!("{}d/{name}", prefix(&Scope::tenant(tenant))).into_bytes()
}

fn new_password() -> Zeroizing<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    // Uniform over the alphabet: bytes at or past the last whole multiple
    // of its length are drawn again (no modulo bias).
    let limit = 256 - 256 % ALPHABET.len();
    let mut out = Zeroizing::new(String::with_capacity(PASSWORD_CHARS));
    let mut pool = Zeroizing::new([0u8; 64]);
    while out.len() < PASSWORD_CHARS {
        if getrandom::fill(pool.as_mut_slice()).is_err() {
            // No randomness: fall back to hex from the same source the
            // rest of the host uses (it fails loudly there if it must).
            let hex = crate::support::encoding::random_hex(PASSWORD_CHARS);
            pool[..PASSWORD_CHARS].copy_from_slice(&hex.as_bytes()[..PASSWORD_CHARS]);
        }
        for b in pool.iter() {
            if out.len() < PASSWORD_CHARS && usize::from(*b) < limit {
                out.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
            }
        }
    }
    out
}

impl Identity {
    /// Adds device `name` for the user named `owner` (login name or id),
    /// with credentials for `realm`; returns it and its password, shown
    /// this once.
    pub async fn add_device(
        &self,
        tenant: &str,
        name: &str,
        owner: &str,
        realm: &str,
        udp: bool,
    ) -> Result<(DeviceView, Zeroizing<String>), AuthError> {
        let scope = Scope::tenant(tenant);
        self.require_realm(&scope)?;
        check_device_name(name)?;
        let account = match self.account(&scope, owner)? {
            Some(a) => a,
            None => self
                .account_by_name(&scope, owner)?
                .ok_or_else(|| AuthError::NotFound(format!("user {owner}")))?,
        };
        let password = new_password();
        let now = now_ms();
        let device = Device {
            name: name.to_string(),
            user: account.id.clone(),
            ha1: Ha1::derive(name, realm, &password).to_stored().to_string(),
            realm: realm.to_string(),
            udp,
            created_ms: now,
            password_set_ms: now,
        };
        let _w = self.writes.lock().await;
        if self.store.get(&device_key(tenant, name))?.is_some() {
            return Err(AuthError::AlreadyExists(format!("device {name}")));
        }
        if self.devices(tenant, None)?.len() >= MAX_DEVICES_PER_TENANT {
            return Err(AuthError::InvalidArgument(format!(
                "a tenant has at most {MAX_DEVICES_PER_TENANT} devices"
            )));
        }
        self.put_device(tenant, &device).await?;
        Ok((self.device_view(tenant, device), password))
    }

    /// The tenant's devices (of one user, by id, if given), by name.
    pub fn devices(&self, tenant: &str, user: Option<&str>) -> Result<Vec<DeviceView>, AuthError> {
        let prefix = device_key(tenant, "");
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(&prefix, after.as_deref(), 256)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0.clone());
            for (_, v) in page {
                if let Ok(d) = serde_json::from_slice::<Device>(&v)
                    && user.is_none_or(|u| u == d.user)
                {
                    out.push(self.device_view(tenant, d));
                }
            }
        }
        Ok(out)
    }

    /// Removes a device (its registrations end with its next refresh; the
    /// SIP door also drops them at once).
    pub async fn remove_device(&self, tenant: &str, name: &str) -> Result<(), AuthError> {
        check_device_name(name)?;
        let _w = self.writes.lock().await;
        let key = device_key(tenant, name);
        if self.store.get(&key)?.is_none() {
            return Err(AuthError::NotFound(format!("device {name}")));
        }
        let seq = self.store.apply(&[(key, None)])?;
        self.store.durable(seq).await?;
        Ok(())
    }

    /// Gives a device a new password for `realm` (the old one stops
    /// working at once); returns it, shown this once.
    pub async fn reset_device_password(
        &self,
        tenant: &str,
        name: &str,
        realm: &str,
    ) -> Result<Zeroizing<String>, AuthError> {
        check_device_name(name)?;
        let _w = self.writes.lock().await;
        let mut device = self
            .device(tenant, name)?
            .ok_or_else(|| AuthError::NotFound(format!("device {name}")))?;
        let password = new_password();
        device.ha1 = Ha1::derive(name, realm, &password).to_stored().to_string();
        device.realm = realm.to_string();
        device.password_set_ms = now_ms();
        self.put_device(tenant, &device).await?;
        Ok(password)
    }

    /// Turns SIP over UDP/TCP on or off for device `name` (`not_found`
    /// if there is none); returns it as listed.
    pub async fn set_device_udp(
        &self,
        tenant: &str,
        name: &str,
        udp: bool,
    ) -> Result<DeviceView, AuthError> {
        check_device_name(name)?;
        let _w = self.writes.lock().await;
        let mut device = self
            .device(tenant, name)?
            .ok_or_else(|| AuthError::NotFound(format!("device {name}")))?;
        device.udp = udp;
        self.put_device(tenant, &device).await?;
        Ok(self.device_view(tenant, device))
    }

    /// A user gives their own device `name` a new password for `realm`;
    /// another user's device, or none, is `not_found` alike. Audited
    /// (`device.password`) in the tenant's trail.
    pub async fn reset_own_device_password(
        &self,
        tenant: &str,
        user: &str,
        name: &str,
        realm: &str,
    ) -> Result<Zeroizing<String>, AuthError> {
        let owned = check_device_name(name).is_ok()
            && self.device(tenant, name)?.is_some_and(|d| d.user == user);
        if !owned {
            return Err(AuthError::NotFound(format!("device {name}")));
        }
        let password = self.reset_device_password(tenant, name, realm).await?;
        self.audit(
            &Scope::tenant(tenant),
            "device.password",
            name,
            crate::audit::outcome::SUCCESS,
            "a new password, set by the device's owner",
        );
        Ok(password)
    }

    /// The secret of device `name`, `None` if there is none (or the name
    /// cannot be one). The caller answers both alike.
    pub fn device_secret(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<DeviceSecret>, AuthError> {
        if check_device_name(name).is_err() {
            return Ok(None);
        }
        let Some(d) = self.device(tenant, name)? else {
            return Ok(None);
        };
        let ha1 = Ha1::from_stored(&d.ha1).map_err(|e| {
            AuthError::Store(crate::store::StoreError::Corrupt {
                key: format!("device {name}"),
                reason: e.to_string(),
            })
        })?;
        Ok(Some(DeviceSecret {
            ha1,
            realm: d.realm,
            user: d.user,
            udp: d.udp,
        }))
    }

    fn device(&self, tenant: &str, name: &str) -> Result<Option<Device>, AuthError> {
        match self.store.get(&device_key(tenant, name))? {
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                AuthError::Store(crate::store::StoreError::Corrupt {
                    key: format!("device {name}"),
                    reason: e.to_string(),
                })
            }),
            None => Ok(None),
        }
    }

    async fn put_device(&self, tenant: &str, d: &Device) -> Result<(), AuthError> {
        let bytes = serde_json::to_vec(d).map_err(|e| AuthError::InvalidArgument(e.to_string()))?;
        let seq = self
            .store
            .apply(&[(device_key(tenant, &d.name), Some(bytes))])?;
        self.store.durable(seq).await?;
        Ok(())
    }

    fn device_view(&self, tenant: &str, d: Device) -> DeviceView {
        let username = self
            .account(&Scope::tenant(tenant), &d.user)
            .ok()
            .flatten()
            .map(|a| a.username)
            .unwrap_or_default();
        DeviceView {
            name: d.name,
            user: d.user,
            username,
            realm: d.realm,
            udp: d.udp,
            created_ms: d.created_ms,
            password_set_ms: d.password_set_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_sip_user_parts() {
        for ok in ["alice-desk", "a", "100", "x.y_z"] {
            assert!(check_device_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_DEVICE_NAME_LEN + 1);
        for bad in ["", "Alice", "-a", "a b", "a@b", "a;tag", long.as_str()] {
            assert!(check_device_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_long_and_fresh() {
        let a = new_password();
        let b = new_password();
        assert_eq!(a.len(), PASSWORD_CHARS);
        assert_ne!(*a, *b);
    }
}
