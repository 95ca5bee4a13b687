//! Device authentication at the SIP door (SPEC T2): digest challenges and
//! answers (`identity::digest`), throttled per device name from each
//! source network (delays, then a lock) and per source address (delays),
//! with `identity::throttle`, the same defence as web sign-in; audited.
//!
//! No oracle: an unknown domain, an unknown device and a wrong password
//! are all challenged alike, checked with the same work and refused with
//! the same `403 Forbidden`; a locked name, known or not, gets the same
//! `403` with `Retry-After` (sipvicious' `svwar` and `svcrack` learn
//! nothing).

use std::net::IpAddr;
use std::sync::Mutex;

use super::message::Message;
use crate::audit::{Scope, outcome};
use crate::identity::digest::{Algorithm, Credentials, Digest, DigestError};
use crate::identity::throttle::{Gate, Throttle, ThrottleConfig};
use crate::runtime::Runtime;
use crate::support::clock::now_ms;
use crate::support::sync::Recover as _;

/// Who a request authenticated as.
#[derive(Debug, Clone)]
pub struct Device {
    pub tenant: String,
    pub name: String,
    /// The owner's user id.
    pub user: String,
}

/// What a request claims: its credentials are in `header`
/// (`Authorization` or `Proxy-Authorization`), for `realm` (the SIP domain
/// it was sent to, whose tenant is `tenant`, if any), as `device` (the To
/// of a REGISTER, the From of an INVITE), from `source`.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub header: &'a str,
    pub realm: &'a str,
    pub tenant: Option<&'a str>,
    pub device: &'a str,
    pub source: IpAddr,
    /// Whether the request came over TLS: over UDP or TCP only a device
    /// its admins turned UDP/TCP on for passes.
    pub over_tls: bool,
}

/// The outcome of checking a request.
#[derive(Debug)]
pub enum Verdict {
    Ok(Device),
    /// Answer 401/407 with these challenges.
    Challenge(Vec<String>),
    /// Answer 403 (with `Retry-After` seconds, when throttled).
    Refuse(Option<u64>),
}

/// Challenges and checks device credentials.
pub struct Auth {
    digest: Digest,
    throttle: Mutex<Throttle>,
    /// Offered in this order; answers under any other are refused.
    algorithms: Vec<Algorithm>,
}

impl Auth {
    pub fn new(throttle: ThrottleConfig, algorithms: &[Algorithm]) -> Result<Auth, DigestError> {
        if algorithms.is_empty() {
            return Err(DigestError::Unsupported(
                "[sip] digest_algorithms must name SHA-256, MD5 or both".into(),
            ));
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| DigestError::Unavailable(format!("no randomness: {e}")))?;
        Ok(Auth {
            digest: Digest::new(key, now_ms())?,
            throttle: Mutex::new(Throttle::new(throttle)),
            algorithms: algorithms.to_vec(),
        })
    }

    /// Checks `req`'s credentials (in `header`, `Authorization` or
    /// `Proxy-Authorization`) for `realm`, the SIP domain it was sent to;
    /// `tenant` is that domain's tenant, if it has one. `user` is the
    /// device name the request claims (the To of a REGISTER, the From of
    /// an INVITE): the credentials must be that device's.
    pub fn check(&self, rt: &Runtime, req: &Message, claim: &Claim<'_>) -> Verdict {
        let Claim {
            header,
            realm,
            tenant,
            device: user,
            source,
            over_tls,
        } = *claim;
        let method = req.method().unwrap_or_default();
        let now = now_ms();
        let challenge =
            |stale: bool| match self
                .digest
                .challenge_with(realm, now, stale, &self.algorithms)
            {
                Ok(c) => Verdict::Challenge(c),
                Err(_) => Verdict::Refuse(None),
            };
        // The answer to our challenge for this realm (a phone may send
        // several, one per realm it knows).
        let creds = req
            .all(header)
            .filter_map(|v| Credentials::parse(v).ok())
            .find(|c| {
                c.realm.eq_ignore_ascii_case(realm) && self.algorithms.contains(&c.algorithm)
            });
        let Some(creds) = creds else {
            return challenge(false);
        };
        // Counted per device name *and* source network: guessing from one
        // place slows down and then locks, while nobody elsewhere can lock
        // the real phone out (its passwords are random; a lock per name
        // alone would only be a way to deny service). Sources are slowed
        // on their own too (all names).
        let throttle_key = format!(
            "{realm}/{}@{}",
            creds.username,
            super::transport::network(source)
        );
        {
            let mut throttle = self.throttle.lock().recover();
            let locked = throttle.is_locked(&throttle_key, now);
            let gate = throttle.gate(&throttle_key, Some(source), now);
            let wait_ms = match (locked, gate) {
                (true, _) => Some(throttle.config().lock_minutes * 60_000),
                (false, Gate::Wait(ms)) => Some(ms),
                (false, Gate::Open) => None,
            };
            if let Some(ms) = wait_ms {
                crate::metrics::SIP_AUTH.inc(&[method, "throttled"]);
                return Verdict::Refuse(Some(ms.div_ceil(1000)));
            }
        }
        // The URI the answer covers must be this request's (RFC 7616
        // §3.4.6), and the device must be the one the request names.
        let same_uri = req.uri().is_some_and(|u| u == creds.uri);
        let secret = match tenant {
            Some(t) => rt
                .identity()
                .device_secret(t, &creds.username)
                .ok()
                .flatten(),
            None => None,
        };
        let ha1 = secret
            .as_ref()
            .filter(|s| s.realm == realm && same_uri && creds.username == user)
            .map(|s| &s.ha1);
        let audit_scope = tenant.map_or(Scope::System, Scope::tenant);
        match self.digest.verify(&creds, method, realm, ha1, now) {
            Ok(()) => {
                self.throttle.lock().recover().success(&throttle_key);
                crate::metrics::SIP_AUTH.inc(&[method, "ok"]);
                match (tenant, secret) {
                    (Some(t), Some(s)) if over_tls || s.udp => Verdict::Ok(Device {
                        tenant: t.to_string(),
                        name: creds.username.clone(),
                        user: s.user,
                    }),
                    (Some(_), Some(_)) => {
                        // The right password over a transport this device
                        // may not use: refused like a wrong one, audited.
                        rt.audit_log().note(
                            &audit_scope,
                            "sip.auth",
                            &creds.username,
                            outcome::FAILURE,
                            &format!("{method} from {source}: UDP/TCP is off for this device"),
                        );
                        Verdict::Refuse(None)
                    }
                    _ => Verdict::Refuse(None),
                }
            }
            // A right answer with an old nonce, or a nonce count used
            // before (phones that reuse one): a fresh challenge, no
            // failure counted.
            Err(DigestError::Stale | DigestError::Replayed) => {
                crate::metrics::SIP_AUTH.inc(&[method, "stale"]);
                challenge(true)
            }
            Err(e) => {
                crate::metrics::SIP_AUTH.inc(&[method, "refused"]);
                let locked =
                    self.throttle
                        .lock()
                        .recover()
                        .failure(&throttle_key, Some(source), now);
                let _ = e;
                let detail = format!("{method} from {source}: wrong credentials or unknown device");
                // The name as the request gave it only if it could be a
                // device name (it is attacker text).
                let target = if crate::identity::devices::check_device_name(&creds.username).is_ok()
                {
                    creds.username.as_str()
                } else {
                    "<invalid>"
                };
                rt.audit_log()
                    .note(&audit_scope, "sip.auth", target, outcome::FAILURE, &detail);
                if let Some(until) = locked {
                    rt.audit_log().note(
                        &audit_scope,
                        "sip.lockout",
                        target,
                        outcome::FAILURE,
                        &format!("locked from {source} until {until} ms"),
                    );
                }
                Verdict::Refuse(None)
            }
        }
    }
}
