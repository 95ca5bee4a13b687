//! Message waiting (RFC 3265, RFC 3842): a device subscribes to
//! `message-summary` and the door tells it the counts a plugin set for
//! its owner (`mwi` grant, `set-mwi`): at once on every (re)subscription,
//! on every change, and after the device registers again. Only an
//! authenticated device subscribes, and only to its own owner's counts;
//! counts are never negative (they are `u32`s from the plugin).
//!
//! Subscriptions live with the connection they came over, like
//! registrations, and last at most `max_expires_s`.

use std::collections::HashMap;
use std::sync::Mutex;

use super::auth::{self, Verdict};
use super::dialogs;
use super::message::{Message, NameAddr, Uri};
use super::transport::Flow;
use super::{Door, answer};
use crate::support::clock::now_ms;
use crate::support::encoding::random_hex;
use crate::support::sync::Recover as _;

/// Subscriptions one device may hold.
const MAX_PER_DEVICE: usize = 4;

/// One subscription.
#[derive(Debug, Clone)]
pub(super) struct Sub {
    tenant: String,
    device: String,
    /// The owner's user id: whose counts.
    user: String,
    flow: u64,
    call_id: String,
    /// Our side (To with our tag) and the device's (its From).
    local: String,
    remote: String,
    /// The device's Contact: where NOTIFYs go.
    target: String,
    cseq: u32,
    expires_at_ms: u64,
}

/// The device's tag of a subscription (in its From).
fn their_tag(sub: &Sub) -> String {
    NameAddr::parse(&sub.remote)
        .ok()
        .and_then(|r| r.tag())
        .unwrap_or_default()
}

/// Subscriptions by (Call-ID, the device's tag).
#[derive(Default)]
pub(super) struct Subs {
    all: Mutex<HashMap<(String, String), Sub>>,
}

impl Door {
    /// A SUBSCRIBE: new, refreshed, or ended (`Expires: 0`).
    pub(super) fn subscribe(&self, flow: &Flow, m: &Message) {
        if !m.header("Event").is_some_and(|e| {
            e.split(';')
                .next()
                .is_some_and(|e| e.trim() == "message-summary")
        }) {
            let mut r = answer(m, 489, "Bad Event");
            r.push("Allow-Events", "message-summary");
            flow.send(&r);
            return;
        }
        let Some(host) = m.uri().and_then(|u| Uri::parse(u).ok()).map(|u| u.host) else {
            flow.send(&answer(m, 400, "Bad Request"));
            return;
        };
        let tenant = self.rt.tenant_of_sip_domain(&host);
        let device = m.from().ok().and_then(|f| f.uri.user).unwrap_or_default();
        let verdict = self.auth.check(
            &self.rt,
            m,
            &auth::Claim {
                header: "Authorization",
                realm: &host,
                tenant: tenant.as_deref(),
                device: &device,
                source: flow.peer.ip(),
                over_tls: flow.is_tls(),
            },
        );
        let Verdict::Ok(device) = verdict else {
            return Self::refuse(flow, m, verdict, false);
        };
        flow.authenticated();
        let their_tag = m.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let key = (m.call_id().to_string(), their_tag);
        let ours = m.to().ok().and_then(|t| t.tag());
        let expires = m
            .header("Expires")
            .and_then(|e| e.trim().parse::<u32>().ok())
            .unwrap_or(3600)
            .min(self.config.max_expires_s);
        if expires > 0 && expires < self.config.min_expires_s {
            let mut r = answer(m, 423, "Interval Too Brief");
            r.push("Min-Expires", self.config.min_expires_s.to_string());
            flow.send(&r);
            return;
        }
        let mut subs = self.subs.all.lock().recover();
        let sub = match (ours, subs.get_mut(&key)) {
            // A refresh (or an end) in the subscription's dialog.
            (Some(tag), Some(sub))
                if sub.local.ends_with(&format!(";tag={tag}"))
                    && sub.tenant == device.tenant
                    && sub.device == device.name =>
            {
                sub.flow = flow.id;
                sub.expires_at_ms = now_ms() + u64::from(expires) * 1000;
                sub.clone()
            }
            (Some(_), _) => {
                drop(subs);
                flow.send(&answer(m, 481, "Subscription Does Not Exist"));
                return;
            }
            (None, _) => {
                let mine = subs
                    .values()
                    .filter(|s| s.tenant == device.tenant && s.device == device.name)
                    .count();
                if mine >= MAX_PER_DEVICE && expires > 0 {
                    drop(subs);
                    let mut r = answer(m, 503, "Service Unavailable");
                    r.push("Retry-After", "60");
                    flow.send(&r);
                    return;
                }
                let tag = random_hex(8);
                let sub = Sub {
                    tenant: device.tenant.clone(),
                    device: device.name.clone(),
                    user: device.user.clone(),
                    flow: flow.id,
                    call_id: m.call_id().to_string(),
                    local: format!("{};tag={tag}", m.header("To").unwrap_or_default()),
                    remote: m.header("From").unwrap_or_default().to_string(),
                    target: m
                        .header("Contact")
                        .and_then(|c| NameAddr::parse(c).ok())
                        .map(|c| c.uri_text)
                        .unwrap_or_else(|| format!("sip:{}@{}", device.name, flow.peer)),
                    cseq: 0,
                    expires_at_ms: now_ms() + u64::from(expires) * 1000,
                };
                subs.insert(key.clone(), sub.clone());
                sub
            }
        };
        if expires == 0 {
            subs.remove(&key);
        }
        drop(subs);
        let _ = &key;
        let tag = sub
            .local
            .rsplit_once(";tag=")
            .map(|(_, t)| t.to_string())
            .unwrap_or_default();
        let mut ok = m.response(200, "OK", Some(&tag));
        ok.push("Expires", expires.to_string());
        ok.push("Contact", format!("<{}>", flow.our_uri("switchboard")));
        flow.send(&ok);
        self.notify(sub, expires == 0);
    }

    /// Sends the counts to one subscription (a final NOTIFY if `ended`).
    fn notify(&self, sub: Sub, ended: bool) {
        let mut sub = sub;
        if let Some(live) = self
            .subs
            .all
            .lock()
            .recover()
            .get_mut(&(sub.call_id.clone(), their_tag(&sub)))
        {
            live.cseq += 1;
            sub.cseq = live.cseq;
        } else {
            sub.cseq += 1;
        }
        self.send_notify(sub, ended);
    }

    fn send_notify(&self, sub: Sub, ended: bool) {
        let Some(flow) = self.flows.get(sub.flow) else {
            self.subs
                .all
                .lock()
                .recover()
                .retain(|_, s| s.flow != sub.flow);
            return;
        };
        let (new, old) = self.rt.mwi_counts(&sub.tenant, &sub.user);
        let realm = self.rt.sip_realm(&sub.tenant);
        let left = sub.expires_at_ms.saturating_sub(now_ms()).div_ceil(1000);
        let mut m = dialogs::request("NOTIFY", &sub.target, &flow.via());
        m.push("From", sub.local.clone());
        m.push("To", sub.remote.clone());
        m.push("Call-ID", sub.call_id.clone());
        m.push("CSeq", format!("{} NOTIFY", sub.cseq.max(1)));
        m.push("Event", "message-summary");
        m.push(
            "Subscription-State",
            if ended {
                "terminated;reason=timeout".to_string()
            } else {
                format!("active;expires={left}")
            },
        );
        m.push("Contact", format!("<{}>", flow.our_uri("switchboard")));
        m.push("Content-Type", "application/simple-message-summary");
        m.body = format!(
            "Messages-Waiting: {}\r\nMessage-Account: sip:{}@{realm}\r\nVoice-Message: {new}/{old} (0/0)\r\n",
            if new > 0 { "yes" } else { "no" },
            sub.device,
        )
        .into_bytes();
        flow.send(&m);
    }

    /// A plugin changed `user`'s counts: every live subscription of their
    /// devices hears it.
    pub(super) fn mwi_changed(&self, tenant: &str, user: &str) {
        self.notify_where(|s| s.tenant == tenant && s.user == user);
    }

    /// A device registered again: its subscriptions hear the counts.
    pub(super) fn mwi_registered(&self, tenant: &str, device: &str) {
        self.notify_where(|s| s.tenant == tenant && s.device == device);
    }

    /// NOTIFYs every live subscription `pick` chooses (expired ones go).
    fn notify_where(&self, pick: impl Fn(&Sub) -> bool) {
        let now = now_ms();
        let due: Vec<Sub> = {
            let mut subs = self.subs.all.lock().recover();
            subs.retain(|_, s| s.expires_at_ms > now);
            subs.values_mut()
                .filter(|s| pick(s))
                .map(|s| {
                    s.cseq += 1;
                    s.clone()
                })
                .collect()
        };
        for sub in due {
            self.send_notify(sub, false);
        }
    }

    /// A NOTIFY was answered: a 481 or other failure ends the
    /// subscription (only an answer on the subscription's own connection).
    pub(super) fn notify_answered(&self, flow: &Flow, m: &Message) {
        if m.status().is_some_and(|s| s >= 300) {
            let their = m.to().ok().and_then(|t| t.tag()).unwrap_or_default();
            let key = (m.call_id().to_string(), their);
            let mut subs = self.subs.all.lock().recover();
            if subs.get(&key).is_some_and(|s| s.flow == flow.id) {
                subs.remove(&key);
            }
        }
    }

    /// A device is gone (removed, or a new password): its subscriptions
    /// end.
    pub(super) fn subs_device_gone(&self, tenant: &str, device: &str) {
        self.subs
            .all
            .lock()
            .recover()
            .retain(|_, s| !(s.tenant == tenant && s.device == device));
    }

    /// `tenant`'s `device` may no longer use the flows `off` picks: its
    /// subscriptions over one end (no NOTIFY reaches it there again).
    pub(super) fn subs_device_off(&self, tenant: &str, device: &str, off: impl Fn(u64) -> bool) {
        self.subs
            .all
            .lock()
            .recover()
            .retain(|_, s| !(s.tenant == tenant && s.device == device && off(s.flow)));
    }

    /// A flow closed: its subscriptions end.
    pub(super) fn subs_flow_gone(&self, flow: u64) {
        self.subs.all.lock().recover().retain(|_, s| s.flow != flow);
    }
}
