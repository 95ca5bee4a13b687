//! Trunks over TCP and TLS (RFC 3261 §18): for every tenant trunk with
//! `transport` `tcp` or `tls` and a `proxy`, the door keeps one
//! connection to the proxy open, and everything of that trunk's goes
//! over it: our calls out, our REGISTERs, and the provider's requests
//! back to us (its calls to our registered contact, its BYEs). Over TLS
//! the provider's certificate must chain to Mozilla's roots or to the
//! trunk's own `tls_ca`, for the trunk's `tls_name` (else its `domain`,
//! else the proxy's address).
//!
//! A supervisor compares the trunks with the links every
//! [`SUPERVISE_EVERY`]: a new trunk connects, a changed one (proxy,
//! transport, name, CA) reconnects, a removed one closes; a link made
//! for an older form of the trunk is never used (`trunk_flow`). A failed
//! connection is tried again after [`RETRY_FIRST`], doubling to
//! [`RETRY_MAX`]; a link that closes after [`STABLE`] up is connected
//! again at once, one that closes sooner backs off like a failure (a
//! proxy that accepts and drops cannot make the door spin). Links send a
//! keep-alive (RFC 5626 §4.4.1) every [`KEEPALIVE`]; a peer that answers
//! them and then says nothing for [`PONG_WAIT`] after one is taken for
//! gone, as is a write that fails. The state is reported to the runtime
//! (the trunk list's `connection`, audited `trunk.connect` on changes).
//!
//! Providers that connect to us instead are heard at `[sip]
//! trunk_tls_listen` (from an address a `tls` trunk allows) and, for
//! `tcp` trunks, on TCP at `[sip] trunk_listen` (see `transport::serve`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::time::Instant;

use super::Door;
use super::transport::{Flow, Kind, Party};
use crate::support::sync::Recover as _;
use crate::tenant::{Trunk, TrunkTransport};

/// How often the trunks are compared with the links.
pub const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// Longest a connection (TLS handshake included) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The wait after a failed connection; it doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// How often a link sends a keep-alive.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// The door's links to trunk proxies, by (tenant, trunk).
#[derive(Default)]
pub(super) struct Links {
    live: Mutex<HashMap<(String, String), Link>>,
    /// Numbers each connection attempt, so an attempt that outlived its
    /// link (the trunk changed meanwhile) files nothing.
    attempts: std::sync::atomic::AtomicU64,
}

struct Link {
    /// What the link was made for (a change reconnects).
    fingerprint: String,
    flow: Option<Arc<Flow>>,
    /// A connection attempt in flight: its number, and its task once
    /// spawned (after the state notes of the round that started it).
    connecting: Option<(u64, Option<tokio::task::JoinHandle<()>>)>,
    retry_at: Instant,
    backoff: Duration,
    pinged: Option<Instant>,
    /// Since when the flow has been up.
    up_since: Option<Instant>,
}

impl Link {
    fn close(&mut self) {
        if let Some((_, Some(task))) = self.connecting.take() {
            task.abort();
        }
        if let Some(f) = self.flow.take() {
            f.close();
        }
    }

    /// The next attempt waits: after a failure, or a link that did not
    /// stay up [`STABLE`], longer each time.
    fn back_off(&mut self, now: Instant) {
        self.retry_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
    }
}

/// How long a link's written data may stay unacknowledged before the
/// link is taken for dead (`TCP_USER_TIMEOUT`).
pub const USER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a link no longer wanted stays open (for `Expires: 0`).
pub const LINGER: Duration = Duration::from_secs(5);
/// A link up this long is sound again: its next failure waits only
/// [`RETRY_FIRST`].
pub const STABLE: Duration = Duration::from_secs(60);
/// A peer that ever answered a keep-alive and then says nothing for this
/// long after one is taken for gone (RFC 5626 §4.4.1).
pub const PONG_WAIT: Duration = Duration::from_secs(10);

/// What makes a link: a change of any of it reconnects.
fn fingerprint(t: &Trunk) -> String {
    format!(
        "{:?}|{:?}|{:?}|{}",
        t.proxy,
        t.transport,
        t.tls_server_name(),
        t.tls_ca
            .as_deref()
            .map_or(String::new(), crate::support::encoding::sha256_hex)
    )
}

/// A state of a link for the trunk list.
fn shown(state: &str, detail: (&str, String)) -> serde_json::Value {
    json!({"state": state, detail.0: detail.1, "checked_ms": crate::support::clock::now_ms()})
}

impl Door {
    /// The open flow trunk `trunk` of `tenant` speaks over: its link
    /// (TCP, TLS) if it was made for this very trunk (its proxy,
    /// transport, name and CA: a link still going to an old proxy is
    /// never used), or its proxy's UDP peer; `None` if there is none now.
    pub(super) fn trunk_flow(&self, tenant: &str, trunk: &Trunk) -> Option<Arc<Flow>> {
        let proxy = trunk.proxy?;
        let flow = match trunk.transport {
            TrunkTransport::Udp => self
                .udp
                .as_ref()?
                .flow_to(proxy, Party::Provider, &|id| self.carries_calls(id))?,
            TrunkTransport::Tcp | TrunkTransport::Tls => self
                .links
                .live
                .lock()
                .recover()
                .get(&(tenant.to_string(), trunk.name.clone()))
                .filter(|l| l.fingerprint == fingerprint(trunk))
                .and_then(|l| l.flow.clone())?,
        };
        (flow.is_open() && flow.peer == proxy && flow.transport() == trunk.transport)
            .then_some(flow)
    }

    /// Keeps the links in line with the trunks until `stopped`.
    pub(super) async fn supervise_links(
        self: Arc<Self>,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        super::every(SUPERVISE_EVERY, stopped, || self.reconcile_links()).await;
        for (_, mut l) in self.links.live.lock().recover().drain() {
            l.close();
        }
    }

    fn reconcile_links(self: &Arc<Self>) {
        let mut wanted = HashMap::new();
        for (tenant, trunk) in self.rt.linked_trunks() {
            wanted.insert((tenant, trunk.name.clone()), trunk);
        }
        let now = Instant::now();
        // Reported, and started, once the lock is let go.
        let mut notes = Vec::new();
        let mut attempts = Vec::new();
        let mut live = self.links.live.lock().recover();
        let gone: Vec<(String, String)> = live
            .iter()
            .filter(|(k, l)| {
                wanted
                    .get(*k)
                    .is_none_or(|t| fingerprint(t) != l.fingerprint)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(mut l) = live.remove(&key) {
                // Never used again; open a while longer for the trunk's
                // registration to be removed over it.
                if let Some(f) = l.flow.take() {
                    self.tokio.spawn(async move {
                        tokio::time::sleep(LINGER).await;
                        f.close();
                    });
                }
                l.close();
            }
            if !wanted.contains_key(&key) {
                notes.push((key, None));
            }
        }
        for (key, trunk) in wanted {
            let link = live.entry(key.clone()).or_insert_with(|| Link {
                fingerprint: fingerprint(&trunk),
                flow: None,
                connecting: None,
                retry_at: now,
                backoff: RETRY_FIRST,
                pinged: None,
                up_since: None,
            });
            if let Some(f) = link.flow.clone() {
                let silent = link.pinged.is_some_and(|at| {
                    now.duration_since(at) >= PONG_WAIT && f.answers_pings() && !f.read_since(at)
                });
                if f.is_open() && !silent {
                    if link
                        .pinged
                        .is_none_or(|at| now.duration_since(at) >= KEEPALIVE)
                    {
                        link.pinged = Some(now);
                        f.ping();
                    }
                    continue;
                }
                // It closed, or its peer stopped answering: connect
                // again, at once if it had been up a while.
                f.close();
                link.flow = None;
                let reason = if silent {
                    "no answer to a keep-alive"
                } else {
                    "the connection closed"
                };
                if link
                    .up_since
                    .is_some_and(|t| now.duration_since(t) >= STABLE)
                {
                    link.backoff = RETRY_FIRST;
                    link.retry_at = now;
                } else {
                    link.back_off(now);
                }
                link.up_since = None;
                notes.push((key.clone(), Some(shown("down", ("reason", reason.into())))));
            }
            match &link.connecting {
                Some((_, None)) => continue,
                Some((_, Some(task))) if !task.is_finished() => continue,
                Some((_, Some(_))) => {
                    // It ended without filing anything (it panicked): a
                    // failure like any.
                    link.connecting = None;
                    link.back_off(now);
                    notes.push((
                        key,
                        Some(shown("down", ("reason", "the attempt failed".into()))),
                    ));
                    continue;
                }
                None if now < link.retry_at => continue,
                None => {}
            }
            let attempt = self
                .links
                .attempts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            link.connecting = Some((attempt, None));
            attempts.push((key, trunk, attempt));
        }
        drop(live);
        // The notes first, then the attempts: an attempt's own note (up,
        // or down with its reason) always comes after this round's.
        for ((tenant, name), state) in notes {
            self.rt.note_connection(&tenant, &name, state);
        }
        for (key, trunk, attempt) in attempts {
            let task = self
                .tokio
                .spawn(connect(self.me.clone(), key.clone(), trunk, attempt));
            let mut live = self.links.live.lock().recover();
            match live.get_mut(&key).map(|l| &mut l.connecting) {
                Some(Some((a, slot @ None))) if *a == attempt => *slot = Some(task),
                // The link went meanwhile.
                _ => task.abort(),
            }
        }
    }

    /// Files the outcome of connection attempt `attempt`.
    fn linked(&self, key: &(String, String), attempt: u64, made: Result<Arc<Flow>, String>) {
        let mut live = self.links.live.lock().recover();
        let link = live
            .get_mut(key)
            .filter(|l| l.connecting.as_ref().is_some_and(|(a, _)| *a == attempt));
        let Some(link) = link else {
            // The trunk changed or went meanwhile: not its link.
            drop(live);
            if let Ok(f) = made {
                f.close();
            }
            return;
        };
        link.connecting = None;
        let now = Instant::now();
        let state = match made {
            Ok(flow) => {
                let state = shown("up", ("local", flow.local.to_string()));
                if let Some(old) = link.flow.replace(flow) {
                    old.close();
                }
                link.pinged = None;
                link.up_since = Some(now);
                state
            }
            Err(reason) => {
                link.back_off(now);
                tracing::info!(tenant = %key.0, trunk = %key.1, %reason, "trunk connection failed");
                shown("down", ("reason", reason))
            }
        };
        drop(live);
        self.rt.note_connection(&key.0, &key.1, Some(state));
    }
}

/// One connection attempt of a link; files the outcome.
async fn connect(door: Weak<Door>, key: (String, String), trunk: Trunk, attempt: u64) {
    let made = tokio::time::timeout(CONNECT_TIMEOUT, open(&door, &key, &trunk))
        .await
        .unwrap_or_else(|_| Err("no connection within 10 s".into()));
    if let Some(d) = door.upgrade() {
        d.linked(&key, attempt, made);
    }
}

/// Connects to the trunk's proxy and starts the flow's reader.
async fn open(
    door: &Weak<Door>,
    key: &(String, String),
    trunk: &Trunk,
) -> Result<Arc<Flow>, String> {
    let proxy = trunk.proxy.ok_or("the trunk has no proxy")?;
    let tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("cannot connect to {proxy}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    // A provider that vanished fails the next keep-alive's write within
    // this, not after the kernel's quarter hour of retransmissions.
    if let Err(error) = crate::support::net::set_user_timeout(&tcp, USER_TIMEOUT) {
        tracing::debug!(%error, "no TCP user timeout on a trunk link");
    }
    let local = tcp.local_addr().map_err(|e| e.to_string())?;
    let party = Party::Link(key.0.clone(), key.1.clone());
    match trunk.transport {
        TrunkTransport::Tls => {
            let config = client_config(trunk)?;
            let name = trunk.tls_server_name().ok_or("no name to verify")?;
            let name = ServerName::try_from(name.clone())
                .map_err(|_| format!("{name:?} is not a name a certificate can show"))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {proxy}: {e}"))?;
            Ok(start(door, tls, proxy, local, Kind::Tls, party))
        }
        _ => Ok(start(door, tcp, proxy, local, Kind::Tcp, party)),
    }
    .and_then(|f| f.ok_or_else(|| "the door is stopping".to_string()))
}

/// Files a link's flow and runs its reader on a task of its own.
fn start<S>(
    door: &Weak<Door>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    kind: Kind,
    party: Party,
) -> Option<Arc<Flow>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let d = door.upgrade()?;
    let (flow, queue) = d.flows.open(peer, local, kind, party);
    let (flows, limits) = (d.flows.clone(), d.limits);
    let f = flow.clone();
    tokio::spawn(async move {
        super::transport::run_flow(stream, f, queue, &flows, d, limits).await;
    });
    Some(flow)
}

/// A TLS client trusting Mozilla's roots and the trunk's `tls_ca`.
fn client_config(trunk: &Trunk) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = &trunk.tls_ca {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("tls_ca: {e}"))?;
            roots.add(cert).map_err(|e| format!("tls_ca: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
