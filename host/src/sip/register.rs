//! Registering with trunk providers (RFC 3261 §10, the user agent's
//! side): a trunk with `register` keeps a binding of its user name at the
//! provider to our address (UDP, or the link's connection over TCP and
//! TLS), so the provider's calls for it reach us.
//!
//! A supervisor compares the tenants' registering trunks with the
//! registrations running every [`SUPERVISE_EVERY`]: a new trunk starts
//! one, a changed one (proxy, user name, domain, password) restarts it, a
//! removed one (or one no longer registering) stops it and removes its
//! binding (`Expires: 0`, best effort). Each registration asks for
//! [`ASK_EXPIRES`] seconds, answers one digest challenge per attempt with
//! the trunk's sealed password, refreshes at half what the provider
//! granted (never sooner than [`MIN_REFRESH`]) and after a failure tries
//! again after 30 s, doubling to 10 minutes. Answers are taken only from
//! the proxy's address and for the Call-ID in flight. What happened is
//! reported to the runtime (the trunk list's `registration`, audited on
//! changes of state).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;

use super::message::{Message, NameAddr};
use super::transport::Flow;
use super::{Door, dialogs};
use crate::support::encoding::random_hex;
use crate::support::sync::Recover as _;
use crate::tenant::Trunk;

/// What a registration asks for (seconds); the provider may grant less.
pub const ASK_EXPIRES: u32 = 600;
/// A refresh goes at half the granted time, never sooner than this.
pub const MIN_REFRESH: Duration = Duration::from_secs(2);
/// The wait after a first failure; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
pub const RETRY_MAX: Duration = Duration::from_secs(600);
/// How often the trunks are compared with the registrations running.
pub const SUPERVISE_EVERY: Duration = Duration::from_secs(2);
/// Longest wait for a final answer (the transaction layer gives up with a
/// `408` after 32 s).
const ANSWER_WAIT: Duration = Duration::from_secs(40);

/// The registrations running and the answers they wait for.
#[derive(Default)]
pub(super) struct Registrations {
    running: Mutex<HashMap<(String, String), Running>>,
    /// Call-ID → the flow the answer must come on (the proxy's), and the
    /// waiter.
    waiting: Mutex<HashMap<String, (u64, oneshot::Sender<Message>)>>,
}

struct Running {
    /// What the registration was started with (a change restarts it).
    fingerprint: String,
    task: tokio::task::JoinHandle<()>,
    binding: Arc<Binding>,
}

/// One registration's identity at the provider.
struct Binding {
    tenant: String,
    trunk: Trunk,
    /// The password it registers with, kept so the binding can still be
    /// removed after the trunk (and its sealed password) is gone.
    password: Option<zeroize::Zeroizing<String>>,
    call_id: String,
    tag: String,
    cseq: AtomicU32,
    /// The flow it last registered over: its removal goes there too
    /// (a link being closed lingers for it).
    flow: Mutex<Option<Arc<Flow>>>,
}

/// Forgets a REGISTER's waiter however its exchange ends (an aborted
/// registration task included).
struct Waiting<'a> {
    registrations: &'a Registrations,
    call_id: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.registrations
            .waiting
            .lock()
            .recover()
            .remove(self.call_id);
    }
}

/// Why an attempt failed: the provider's status (`408` when it never
/// answered), or nothing to try with.
struct Failure {
    status: Option<u16>,
    reason: String,
}

impl Door {
    /// Keeps the registrations in line with the trunks until `stopped`.
    pub(super) async fn supervise_registrations(
        self: Arc<Self>,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        super::every(SUPERVISE_EVERY, stopped, || self.reconcile()).await;
        for (_, r) in self.registrations.running.lock().recover().drain() {
            r.task.abort();
        }
    }

    fn reconcile(self: &Arc<Self>) {
        let mut wanted = HashMap::new();
        for (tenant, trunk) in self.rt.registering_trunks() {
            let password = self.rt.trunk_password(&tenant, &trunk);
            // Over a link, a new connection is a new contact: register
            // again on it.
            let link = match trunk.transport {
                crate::tenant::TrunkTransport::Udp => None,
                _ => self.trunk_flow(&tenant, &trunk).map(|f| f.id),
            };
            let fingerprint = format!(
                "{:?}|{:?}|{:?}|{:?}|{:?}|{}",
                trunk.proxy,
                trunk.transport,
                link,
                trunk.username,
                trunk.domain,
                password.as_deref().map_or(String::new(), |p| {
                    crate::support::encoding::sha256_hex(p.as_bytes())
                })
            );
            wanted.insert((tenant, trunk.name.clone()), (trunk, fingerprint, password));
        }
        let mut running = self.registrations.running.lock().recover();
        let gone: Vec<(String, String)> = running
            .iter()
            .filter(|(k, r)| wanted.get(*k).is_none_or(|(_, f, _)| *f != r.fingerprint))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let Some(r) = running.remove(&key) else {
                continue;
            };
            r.task.abort();
            let old = &r.binding.trunk;
            let moved = wanted.get(&key).is_none_or(|(t, _, _)| {
                (&t.proxy, &t.transport, &t.username, &t.domain)
                    != (&old.proxy, &old.transport, &old.username, &old.domain)
            });
            if !wanted.contains_key(&key) {
                self.rt.note_registration(&key.0, &key.1, None);
            }
            if moved {
                // Removed, no longer registering, or registering elsewhere
                // now: the old binding goes (a new password alone keeps
                // it: the new REGISTER replaces it).
                let me = self.clone();
                self.tokio.spawn(async move {
                    let _ = me.send_register(&r.binding, 0).await;
                });
            }
        }
        for (key, (trunk, fingerprint, password)) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let binding = Arc::new(Binding {
                tenant: key.0.clone(),
                trunk,
                password,
                call_id: format!("{}@switchboard", random_hex(16)),
                tag: random_hex(8),
                cseq: AtomicU32::new(0),
                flow: Mutex::new(None),
            });
            let task = self.tokio.spawn(keep_registered(
                self.me.clone(),
                key.0.clone(),
                binding.clone(),
            ));
            running.insert(
                key,
                Running {
                    fingerprint,
                    task,
                    binding,
                },
            );
        }
    }

    /// An answer to one of our REGISTERs: to its waiter, if it came on
    /// the flow it was sent over (from the proxy).
    pub(super) fn registration_answered(&self, flow: &Flow, m: Message) {
        if m.status().is_some_and(|s| s < 200) {
            return;
        }
        let mut waiting = self.registrations.waiting.lock().recover();
        if waiting
            .get(m.call_id())
            .is_some_and(|(sent_over, _)| *sent_over == flow.id)
            && let Some((_, tx)) = waiting.remove(m.call_id())
        {
            let _ = tx.send(m);
        }
    }

    /// One REGISTER (asking for `expires` seconds; 0 removes the binding),
    /// with one answer to a digest challenge. Returns the seconds granted.
    async fn send_register(&self, b: &Binding, expires: u32) -> Result<u32, Failure> {
        let none = |reason: &str| Failure {
            status: None,
            reason: reason.into(),
        };
        let (Some(proxy), Some(user)) = (b.trunk.proxy, b.trunk.username.clone()) else {
            return Err(none("the trunk has no proxy or user"));
        };
        let Some(password) = b.password.clone() else {
            return Err(none("the trunk has no password"));
        };
        let registered_over = (expires == 0)
            .then(|| b.flow.lock().recover().clone())
            .flatten()
            .filter(|f| f.is_open());
        let Some(flow) = registered_over.or_else(|| self.trunk_flow(&b.tenant, &b.trunk)) else {
            return Err(none(match b.trunk.transport {
                crate::tenant::TrunkTransport::Udp => {
                    "the server has no trunk socket (set [sip] trunk_listen), or no room for the provider's flow"
                }
                _ => "no connection to the proxy (see the trunk's connection)",
            }));
        };
        let domain = b.trunk.domain.clone().unwrap_or_else(|| match proxy {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        });
        let uri = format!("sip:{domain}");
        let aor = format!("<sip:{user}@{domain}>");
        let contact = format!("<{}>", flow.our_uri(&user));
        let mut answer = self
            .exchange(&flow, b, &uri, &aor, &contact, expires, None)
            .await?;
        if let Some(status @ (401 | 407)) = answer.status() {
            let (header, reply) = if status == 401 {
                ("WWW-Authenticate", "Authorization")
            } else {
                ("Proxy-Authenticate", "Proxy-Authorization")
            };
            let auth = answer.header(header).map(|c| {
                crate::identity::digest::client_answer(c, "REGISTER", &uri, &user, &password)
            });
            let Some(Ok(auth)) = auth else {
                return Err(Failure {
                    status: Some(status),
                    reason: "a challenge we cannot answer".into(),
                });
            };
            answer = self
                .exchange(&flow, b, &uri, &aor, &contact, expires, Some((reply, auth)))
                .await?;
        }
        match answer.status() {
            Some(200..=299) => {
                *b.flow.lock().recover() = Some(flow.clone());
                Ok(granted(&answer, &flow, expires))
            }
            status => Err(Failure {
                status,
                reason: match &answer.start {
                    super::message::Start::Response { reason, .. } => reason.clone(),
                    super::message::Start::Request { .. } => String::new(),
                },
            }),
        }
    }

    /// Sends one REGISTER and waits for its final answer.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        flow: &Arc<Flow>,
        b: &Binding,
        uri: &str,
        aor: &str,
        contact: &str,
        expires: u32,
        auth: Option<(&str, String)>,
    ) -> Result<Message, Failure> {
        let cseq = b.cseq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut m = dialogs::request("REGISTER", uri, &flow.via());
        m.push("From", format!("{aor};tag={}", b.tag));
        m.push("To", aor);
        m.push("Call-ID", b.call_id.clone());
        m.push("CSeq", format!("{cseq} REGISTER"));
        m.push("Contact", contact);
        m.push("Expires", expires.to_string());
        if let Some((name, value)) = auth {
            m.push(name, value);
        }
        let (tx, rx) = oneshot::channel();
        self.registrations
            .waiting
            .lock()
            .recover()
            .insert(b.call_id.clone(), (flow.id, tx));
        let _forget = Waiting {
            registrations: &self.registrations,
            call_id: &b.call_id,
        };
        if !flow.send(&m) {
            return Err(Failure {
                status: None,
                reason: "the provider's flow is gone".into(),
            });
        }
        let answer = tokio::time::timeout(ANSWER_WAIT, rx).await;
        match answer {
            Ok(Ok(m)) => Ok(m),
            _ => Err(Failure {
                status: Some(408),
                reason: "no answer".into(),
            }),
        }
    }
}

/// Seconds the provider granted: our Contact's `expires`, else the
/// `Expires` header, else what we asked.
fn granted(ok: &Message, flow: &Flow, asked: u32) -> u32 {
    let ours = flow.local.to_string();
    let from_contact = ok
        .all("Contact")
        .flat_map(|v| v.split(','))
        .filter_map(|c| NameAddr::parse(c.trim()).ok())
        .filter(|c| c.uri_text.contains(&ours))
        .find_map(|c| super::message::param(&c.params, "expires").and_then(|e| e.parse().ok()));
    from_contact
        .or_else(|| ok.header("Expires").and_then(|e| e.trim().parse().ok()))
        .unwrap_or(asked)
}

/// A trunk's registration for as long as the supervisor keeps it.
async fn keep_registered(door: Weak<Door>, tenant: String, b: Arc<Binding>) {
    let mut retry = RETRY_FIRST;
    loop {
        let Some(d) = door.upgrade() else { return };
        let outcome = d.send_register(&b, ASK_EXPIRES).await;
        let now = crate::support::clock::now_ms();
        let wait = match outcome {
            Ok(seconds) if seconds > 0 => {
                retry = RETRY_FIRST;
                d.rt.note_registration(
                    &tenant,
                    &b.trunk.name,
                    Some(json!({
                        "state": "registered",
                        "expires_ms": now + u64::from(seconds) * 1000,
                        "checked_ms": now,
                    })),
                );
                (Duration::from_secs(u64::from(seconds)) / 2).max(MIN_REFRESH)
            }
            Ok(_) => {
                d.rt.note_registration(
                    &tenant,
                    &b.trunk.name,
                    Some(json!({"state": "failed", "status": 200, "reason": "granted 0 seconds", "checked_ms": now})),
                );
                next_retry(&mut retry)
            }
            Err(f) => {
                tracing::info!(tenant = %tenant, trunk = %b.trunk.name, status = ?f.status, reason = %f.reason, "trunk registration failed");
                d.rt.note_registration(
                    &tenant,
                    &b.trunk.name,
                    Some(json!({
                        "state": "failed",
                        "status": f.status,
                        "reason": f.reason,
                        "checked_ms": now,
                    })),
                );
                next_retry(&mut retry)
            }
        };
        drop(d);
        tokio::time::sleep(wait).await;
    }
}

fn next_retry(retry: &mut Duration) -> Duration {
    let wait = *retry;
    *retry = (*retry * 2).min(RETRY_MAX);
    wait
}
