//! The registrar (RFC 3261 §10): where each device can be reached. A
//! binding is a device, the Contact it registered and the flow it
//! registered over; requests to the device go out on that flow (phones
//! behind NAT accept nothing else), so bindings live in memory and die
//! with their flow or the process. A device has at most
//! [`MAX_BINDINGS_PER_DEVICE`]; a new one past that replaces the oldest.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::support::clock::now_ms;
use crate::support::sync::Recover as _;

/// Registrations one device may hold at once.
pub const MAX_BINDINGS_PER_DEVICE: usize = 8;

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as registered.
    pub contact: String,
    pub flow: u64,
    pub expires_at_ms: u64,
}

/// Bindings by (tenant, device).
#[derive(Default)]
pub struct Registrar {
    bindings: Mutex<HashMap<(String, String), Vec<Binding>>>,
}

impl Registrar {
    /// Adds or refreshes `contact` of `device` over `flow` for
    /// `expires_s`; 0 removes it. Returns the device's live bindings.
    pub fn register(
        &self,
        tenant: &str,
        device: &str,
        contact: &str,
        flow: u64,
        expires_s: u32,
    ) -> Vec<Binding> {
        let now = now_ms();
        let mut all = self.bindings.lock().recover();
        let list = all
            .entry((tenant.to_string(), device.to_string()))
            .or_default();
        list.retain(|b| b.expires_at_ms > now && b.contact != contact);
        if expires_s > 0 {
            if list.len() >= MAX_BINDINGS_PER_DEVICE {
                list.remove(0);
            }
            list.push(Binding {
                contact: contact.to_string(),
                flow,
                expires_at_ms: now + u64::from(expires_s) * 1000,
            });
        }
        let out = list.clone();
        if list.is_empty() {
            all.remove(&(tenant.to_string(), device.to_string()));
        }
        out
    }

    /// Removes every binding of `device` (`Contact: *`, or the device was
    /// removed).
    pub fn clear(&self, tenant: &str, device: &str) {
        self.bindings
            .lock()
            .recover()
            .remove(&(tenant.to_string(), device.to_string()));
    }

    /// The live bindings of `device`, newest last.
    pub fn lookup(&self, tenant: &str, device: &str) -> Vec<Binding> {
        let now = now_ms();
        self.bindings
            .lock()
            .recover()
            .get(&(tenant.to_string(), device.to_string()))
            .map(|l| {
                l.iter()
                    .filter(|b| b.expires_at_ms > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the bindings of `device` made over flows `gone` picks.
    pub fn clear_where(&self, tenant: &str, device: &str, gone: impl Fn(u64) -> bool) {
        let key = (tenant.to_string(), device.to_string());
        let mut all = self.bindings.lock().recover();
        if let Some(list) = all.get_mut(&key) {
            list.retain(|b| !gone(b.flow));
            if list.is_empty() {
                all.remove(&key);
            }
        }
    }

    /// Whether a live binding was made over `flow`.
    pub fn holds(&self, flow: u64) -> bool {
        let now = now_ms();
        self.bindings
            .lock()
            .recover()
            .values()
            .flatten()
            .any(|b| b.flow == flow && b.expires_at_ms > now)
    }

    /// Drops the bindings made over `flow` (it closed).
    pub fn flow_closed(&self, flow: u64) {
        let mut all = self.bindings.lock().recover();
        all.retain(|_, list| {
            list.retain(|b| b.flow != flow);
            !list.is_empty()
        });
    }

    /// Devices with a live binding.
    #[cfg(test)]
    pub fn registered(&self) -> usize {
        self.bindings.lock().recover().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_refresh_expire_and_die_with_their_flow() {
        let r = Registrar::default();
        assert_eq!(r.register("t", "d", "sip:d@1.2.3.4", 1, 60).len(), 1);
        // A refresh replaces, another contact adds.
        assert_eq!(r.register("t", "d", "sip:d@1.2.3.4", 1, 60).len(), 1);
        assert_eq!(r.register("t", "d", "sip:d@5.6.7.8", 2, 60).len(), 2);
        assert_eq!(r.lookup("t", "d").len(), 2);
        assert!(r.lookup("u", "d").is_empty(), "per tenant");
        r.flow_closed(1);
        assert_eq!(r.lookup("t", "d")[0].flow, 2);
        assert!(r.register("t", "d", "sip:d@5.6.7.8", 2, 0).is_empty());
        assert_eq!(r.registered(), 0);
        for i in 0..20 {
            r.register("t", "d", &format!("sip:d@10.0.0.{i}"), 3, 60);
        }
        assert_eq!(r.lookup("t", "d").len(), MAX_BINDINGS_PER_DEVICE);
        r.clear("t", "d");
        assert!(r.lookup("t", "d").is_empty());
    }
}
