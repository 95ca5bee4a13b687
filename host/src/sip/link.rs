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
//! transport, name, CA) reconnects, a removed one closes. A failed
//! connection is tried again after [`RETRY_FIRST`], doubling to
//! [`RETRY_MAX`]; a link that closes is connected again at once (then
//! backs off if that fails). Links send a keep-alive (RFC 5626 §4.4.1)
//! every [`KEEPALIVE`]; a dead peer shows as a write that fails, which
//! closes the link. The state is reported to the runtime (the trunk
//! list's `connection`, audited `trunk.connect` on changes).
//!
//! Providers that connect to us instead are heard on the door's TLS port
//! (from an address a `tls` trunk allows) and, for `tcp` trunks, on TCP
//! at `[sip] trunk_listen` (see `transport::serve`).

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
}

struct Link {
    /// What the link was made for (a change reconnects).
    fingerprint: String,
    flow: Option<Arc<Flow>>,
    /// A connection attempt in flight.
    connecting: Option<tokio::task::JoinHandle<()>>,
    retry_at: Instant,
    backoff: Duration,
    pinged: Instant,
}

impl Link {
    fn close(&mut self) {
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
        if let Some(f) = self.flow.take() {
            f.close();
        }
    }
}

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

impl Door {
    /// The open flow trunk `trunk` of `tenant` speaks over: its link
    /// (TCP, TLS), or its proxy's UDP peer; `None` if there is none now.
    pub(super) fn trunk_flow(&self, tenant: &str, trunk: &Trunk) -> Option<Arc<Flow>> {
        let proxy = trunk.proxy?;
        match trunk.transport {
            TrunkTransport::Udp => self
                .udp
                .as_ref()?
                .flow_to(proxy, &|id| self.carries_calls(id)),
            TrunkTransport::Tcp | TrunkTransport::Tls => self
                .links
                .live
                .lock()
                .recover()
                .get(&(tenant.to_string(), trunk.name.clone()))
                .and_then(|l| l.flow.clone())
                .filter(|f| f.is_open()),
        }
    }

    /// Keeps the links in line with the trunks until `stopped`.
    pub(super) async fn supervise_links(
        self: Arc<Self>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(SUPERVISE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => self.reconcile_links(),
                _ = stopped.changed() => break,
            }
        }
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
                l.close();
            }
            if !wanted.contains_key(&key) {
                self.rt.note_connection(&key.0, &key.1, None);
            }
        }
        for (key, trunk) in wanted {
            let link = live.entry(key.clone()).or_insert_with(|| Link {
                fingerprint: fingerprint(&trunk),
                flow: None,
                connecting: None,
                retry_at: now,
                backoff: RETRY_FIRST,
                pinged: now,
            });
            if let Some(f) = &link.flow {
                if f.is_open() {
                    if now.duration_since(link.pinged) >= KEEPALIVE {
                        link.pinged = now;
                        f.ping();
                    }
                    continue;
                }
                // It closed: connect again now.
                link.flow = None;
                link.retry_at = now;
                self.rt.note_connection(
                    &key.0,
                    &key.1,
                    Some(json!({"state": "down", "reason": "the connection closed",
                        "checked_ms": crate::support::clock::now_ms()})),
                );
            }
            if link.connecting.as_ref().is_some_and(|t| !t.is_finished()) || now < link.retry_at {
                continue;
            }
            link.connecting = Some(self.tokio.spawn(connect(self.me.clone(), key, trunk)));
        }
    }

    /// Files the outcome of a connection attempt.
    fn linked(&self, key: &(String, String), made: Result<Arc<Flow>, String>) {
        let now_ms = crate::support::clock::now_ms();
        let mut live = self.links.live.lock().recover();
        let Some(link) = live.get_mut(key) else {
            // The trunk went meanwhile.
            if let Ok(f) = made {
                f.close();
            }
            return;
        };
        let shown = match made {
            Ok(flow) => {
                link.backoff = RETRY_FIRST;
                link.pinged = Instant::now();
                let shown = json!({"state": "up", "local": flow.local.to_string(),
                    "checked_ms": now_ms});
                link.flow = Some(flow);
                shown
            }
            Err(reason) => {
                link.retry_at = Instant::now() + link.backoff;
                link.backoff = (link.backoff * 2).min(RETRY_MAX);
                tracing::info!(tenant = %key.0, trunk = %key.1, %reason, "trunk connection failed");
                json!({"state": "down", "reason": reason, "checked_ms": now_ms})
            }
        };
        drop(live);
        self.rt.note_connection(&key.0, &key.1, Some(shown));
    }
}

/// One connection attempt of a link; files the outcome.
async fn connect(door: Weak<Door>, key: (String, String), trunk: Trunk) {
    let made = tokio::time::timeout(CONNECT_TIMEOUT, open(&door, &key, &trunk))
        .await
        .unwrap_or_else(|_| Err("no connection within 10 s".into()));
    if let Some(d) = door.upgrade() {
        d.linked(&key, made);
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
