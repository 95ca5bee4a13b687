//! Device authentication at the SIP door (SPEC T2): digest challenges and
//! answers (`identity::digest`), throttled per device name and per source
//! address with lockout (`identity::throttle`, the same defence as web
//! sign-in), audited.
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
    pub fn check(
        &self,
        rt: &Runtime,
        req: &Message,
        header: &str,
        realm: &str,
        tenant: Option<&str>,
        user: &str,
        source: IpAddr,
    ) -> Verdict {
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
        let throttle_key = format!("{realm}/{}", creds.username);
        if let Gate::Wait(ms) =
            self.throttle
                .lock()
                .recover()
                .gate(&throttle_key, Some(source), now)
        {
            crate::metrics::SIP_AUTH.inc(&[method, "throttled"]);
            return Verdict::Refuse(Some(ms.div_ceil(1000)));
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
                    (Some(t), Some(s)) => Verdict::Ok(Device {
                        tenant: t.to_string(),
                        name: creds.username.clone(),
                        user: s.user,
                    }),
                    _ => Verdict::Refuse(None),
                }
            }
            Err(DigestError::Stale) => {
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
                let detail = format!(
                    "{method} from {source}: {}",
                    match e {
                        DigestError::Replayed => "replayed nonce count",
                        _ => "wrong credentials or unknown device",
                    }
                );
                rt.audit_log().note(
                    &audit_scope,
                    "sip.auth",
                    &creds.username,
                    outcome::FAILURE,
                    &detail,
                );
                if let Some(until) = locked {
                    rt.audit_log().note(
                        &audit_scope,
                        "sip.lockout",
                        &creds.username,
                        outcome::FAILURE,
                        &format!("locked until {until} ms after failures from {source}"),
                    );
                }
                Verdict::Refuse(None)
            }
        }
    }
}
