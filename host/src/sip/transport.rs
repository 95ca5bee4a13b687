//! SIP over TLS (RFC 3261 §18, RFC 5630): the door's own sockets. Each
//! accepted connection is a flow: a handshake under a deadline, a reader
//! that frames the stream (`frame`) and parses each message (`message`),
//! and a writer with a bounded queue and a write deadline, so a client
//! that never reads cannot hold the door (its flow is closed instead).
//! Requests to a registered device go out on the flow it registered over
//! (phones behind NAT accept nothing else).
//!
//! Connections are capped in total (handshakes included) and per address
//! (IPv6 per /64); a connection that has not authenticated a request
//! within [`UNAUTHENTICATED_FOR`] is closed (keep-alives do not keep it);
//! a framing error closes the flow (its message boundaries can no longer
//! be trusted); a message that frames but does not parse is dropped and
//! counted. Whatever ends a flow (a panic included) releases its slots
//! and tells the door.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::frame::{Frame, Framer};
use super::message::Message;
use crate::support::sync::Recover as _;

/// Messages queued to one flow; past that they are dropped (a peer that
/// never reads is closed by the write deadline).
const QUEUE: usize = 256;
/// How long a connection may stay without authenticating a request.
pub const UNAUTHENTICATED_FOR: Duration = Duration::from_secs(60);
/// Longest a write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What carries a flow.
pub enum Kind {
    /// A TLS connection (devices).
    Tls,
    /// One trunk peer's address on the UDP socket, with the transaction
    /// layer that retransmits and absorbs retransmissions (`sip::udp`).
    Udp(Arc<dyn Datagrams>),
}

/// The transaction layer of an unreliable transport, told of every
/// message a flow sends (it keeps what it must send again on `out`).
pub trait Datagrams: Send + Sync {
    fn sending(&self, flow: u64, m: &Message, bytes: &[u8], out: &mpsc::Sender<Vec<u8>>);
}

/// One connection, or one trunk peer over UDP.
pub struct Flow {
    pub id: u64,
    pub peer: SocketAddr,
    /// Our address as the peer reached it (for SDP and Contact).
    pub local: SocketAddr,
    pub kind: Kind,
    out: mpsc::Sender<Vec<u8>>,
    /// Some request on it passed digest authentication.
    authenticated: std::sync::atomic::AtomicBool,
}

impl Flow {
    /// A flow over a datagram socket: `out` is its writer's queue.
    pub(super) fn datagram(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        transactions: Arc<dyn Datagrams>,
        out: mpsc::Sender<Vec<u8>>,
    ) -> Flow {
        Flow {
            id,
            peer,
            local,
            kind: Kind::Udp(transactions),
            out,
            authenticated: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Queues `m` to be written; `false` if the flow is closed or its
    /// queue is full (the message is dropped). Over UDP the transaction
    /// layer keeps what it must retransmit.
    pub fn send(&self, m: &Message) -> bool {
        let bytes = m.to_bytes();
        if let Kind::Udp(t) = &self.kind {
            t.sending(self.id, m, &bytes, &self.out);
        }
        self.out.try_send(bytes).is_ok()
    }

    /// Whether this is a trunk's UDP flow.
    pub fn is_udp(&self) -> bool {
        matches!(self.kind, Kind::Udp(_))
    }

    /// Our Via's protocol and sent-by (`SIP/2.0/TLS 10.0.0.1:5061`).
    pub fn via(&self) -> String {
        let proto = if self.is_udp() { "UDP" } else { "TLS" };
        format!("SIP/2.0/{proto} {}", self.local)
    }

    /// A SIP URI of ours with `user`, over this flow's transport.
    pub fn our_uri(&self, user: &str) -> String {
        if self.is_udp() {
            format!("sip:{user}@{}", self.local)
        } else {
            format!("sip:{user}@{};transport=tls", self.local)
        }
    }

    /// Whether the flow is still open.
    pub fn is_open(&self) -> bool {
        !self.out.is_closed()
    }

    /// Marks the flow as carrying an authenticated device.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }
}

/// The live flows, by id.
#[derive(Default)]
pub struct Flows {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Flow>>>,
    /// Connections admitted (handshaking or live), in total and per
    /// address (IPv6: per /64).
    admitted: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// The network a per-address cap or throttle counts under: IPv6 by /64 (one host
/// has the whole prefix).
pub fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

impl Flows {
    /// A new flow id.
    pub(super) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Files a flow (UDP flows live as long as the door).
    pub(super) fn insert(&self, flow: Arc<Flow>) {
        self.live.lock().recover().insert(flow.id, flow);
    }

    /// Forgets a UDP flow (it carries nothing).
    pub(super) fn remove(&self, id: u64) {
        self.live.lock().recover().remove(&id);
    }

    /// Flow `id`, if it is open.
    pub fn get(&self, id: u64) -> Option<Arc<Flow>> {
        self.live
            .lock()
            .recover()
            .get(&id)
            .filter(|f| f.is_open())
            .cloned()
    }

    /// Takes a connection slot for `ip`, or `false` at either cap.
    fn admit(&self, ip: IpAddr, max_total: usize, max_per_address: usize) -> bool {
        let mut admitted = self.admitted.lock().recover();
        let (total, per) = &mut *admitted;
        let n = per.entry(network(ip)).or_default();
        if *total >= max_total || *n >= max_per_address {
            return false;
        }
        *n += 1;
        *total += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut admitted = self.admitted.lock().recover();
        let (total, per) = &mut *admitted;
        *total = total.saturating_sub(1);
        let key = network(ip);
        if let Some(n) = per.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&key);
            }
        }
    }
}

/// What the door does with a flow's messages.
pub trait Handler: Send + Sync + 'static {
    /// One parsed message from `flow` (handled in order per flow).
    fn message(
        self: Arc<Self>,
        flow: Arc<Flow>,
        m: Message,
    ) -> impl std::future::Future<Output = ()> + Send;
    /// A message that did not parse (for a counter).
    fn dropped(&self, flow: &Flow, code: &'static str);
    /// Whether flow `id` carries a call (a UDP flow that does is never
    /// forgotten).
    fn in_use(&self, _id: u64) -> bool {
        false
    }
    /// The flow closed.
    fn closed(&self, flow: &Flow);
}

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
}

/// Accepts TLS connections on `listener` until `shutdown` completes.
pub async fn serve<H: Handler>(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    flows: Arc<Flows>,
    handler: Arc<H>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "SIP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !flows.admit(
            peer.ip(),
            limits.max_connections,
            limits.max_connections_per_address,
        ) {
            crate::metrics::SIP_DROPPED.inc(&["connection_cap"]);
            continue;
        }
        let local = stream.local_addr().unwrap_or(peer);
        let _ = stream.set_nodelay(true);
        let (acceptor, flows, handler) = (acceptor.clone(), flows.clone(), handler.clone());
        tokio::spawn(async move {
            // Released however this task ends (a panic included).
            let _slot = Slot(&flows, peer.ip());
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => run_flow(tls, peer, local, &flows, handler, limits).await,
                _ => crate::metrics::SIP_DROPPED.inc(&["tls_handshake"]),
            }
        });
    }
}

/// A connection slot, released when dropped.
struct Slot<'a>(&'a Flows, IpAddr);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// A live flow's registration: dropped (also by a panic), it leaves the
/// live set, tells the door and stops the writer.
struct Live<'a, H: Handler> {
    flows: &'a Flows,
    flow: Arc<Flow>,
    handler: Arc<H>,
    writer: tokio::task::JoinHandle<()>,
}

impl<H: Handler> Drop for Live<'_, H> {
    fn drop(&mut self) {
        self.flows.live.lock().recover().remove(&self.flow.id);
        self.handler.closed(&self.flow);
        self.writer.abort();
    }
}

async fn run_flow<H: Handler>(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    flows: &Flows,
    handler: Arc<H>,
    limits: Limits,
) {
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (out, mut queue) = mpsc::channel::<Vec<u8>>(QUEUE);
    let id = flows.next_id();
    let flow = Arc::new(Flow {
        id,
        peer,
        local,
        kind: Kind::Tls,
        out,
        authenticated: std::sync::atomic::AtomicBool::new(false),
    });
    flows.live.lock().recover().insert(id, flow.clone());
    let writer = tokio::spawn(async move {
        while let Some(bytes) = queue.recv().await {
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.shutdown()).await;
    });
    let live = Live {
        flows,
        flow: flow.clone(),
        handler: handler.clone(),
        writer,
    };
    let opened = tokio::time::Instant::now();
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 16 * 1024];
    'read: loop {
        // Until a request authenticates, the connection has a deadline that
        // keep-alives do not move.
        let wait = if flow.authenticated.load(Ordering::Relaxed) {
            limits.idle_timeout
        } else {
            match UNAUTHENTICATED_FOR.checked_sub(opened.elapsed()) {
                Some(left) => left.min(limits.idle_timeout),
                None => {
                    crate::metrics::SIP_DROPPED.inc(&["unauthenticated"]);
                    break;
                }
            }
        };
        let n = match tokio::time::timeout(wait, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            Err(_) if !flow.authenticated.load(Ordering::Relaxed) => continue,
            _ => break,
        };
        framer.push(&buf[..n]);
        loop {
            match framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Ping)) => {
                    // RFC 5626 §4.4.1: a pong, straight to the writer.
                    if flow.out.try_send(b"\r\n".to_vec()).is_err() {
                        break 'read;
                    }
                }
                Ok(Some(Frame::Pong)) => {}
                Ok(Some(Frame::Message(bytes))) => match Message::parse(&bytes) {
                    Ok(m) => handler.clone().message(flow.clone(), m).await,
                    Err(e) => handler.dropped(&flow, e.code()),
                },
                Err(e) => {
                    handler.dropped(&flow, e.code());
                    break 'read;
                }
            }
            if flow.out.is_closed() {
                break 'read;
            }
        }
    }
    drop(live);
}
