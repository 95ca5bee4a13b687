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
    /// A TLS connection (devices, or a trunk's provider).
    Tls,
    /// A TCP connection (a trunk's provider only).
    Tcp,
    /// One trunk peer's address on the UDP socket, with the transaction
    /// layer that retransmits and absorbs retransmissions (`sip::udp`).
    Udp(Arc<dyn Datagrams>),
}

/// Who is at the other end of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Party {
    /// Devices: every request is digest-authenticated.
    Devices,
    /// A trunk's provider, known by its address: its connection to us
    /// (from an address a TCP or TLS trunk allows), or its UDP peer.
    Provider,
    /// Our connection to a trunk's proxy: (tenant, trunk).
    Link(String, String),
}

/// The transaction layer of an unreliable transport, told of every
/// message a flow sends (it keeps what it must send again on `out`).
pub trait Datagrams: Send + Sync {
    /// `stranger`: the flow is a device's on which no request has
    /// authenticated (its source may be forged).
    fn sending(
        &self,
        flow: u64,
        m: &Message,
        bytes: &[u8],
        out: &mpsc::Sender<Vec<u8>>,
        stranger: bool,
    );
}

/// One connection, or one trunk peer over UDP.
pub struct Flow {
    pub id: u64,
    pub peer: SocketAddr,
    /// Our address as the peer reached it (for SDP and Contact).
    pub local: SocketAddr,
    pub kind: Kind,
    pub party: Party,
    out: mpsc::Sender<Vec<u8>>,
    /// Some request on it passed digest authentication.
    authenticated: std::sync::atomic::AtomicBool,
    /// Told to close (a connection only).
    shut: tokio::sync::Notify,
    /// When its reader last read anything.
    last_read: Mutex<tokio::time::Instant>,
    /// Its peer answered a keep-alive of ours (RFC 5626 pong).
    ponged: std::sync::atomic::AtomicBool,
}

impl Flow {
    /// A flow over a datagram socket: `out` is its writer's queue.
    pub(super) fn datagram(
        id: u64,
        (peer, local): (SocketAddr, SocketAddr),
        party: Party,
        transactions: Arc<dyn Datagrams>,
        out: mpsc::Sender<Vec<u8>>,
    ) -> Flow {
        Flow {
            id,
            peer,
            local,
            kind: Kind::Udp(transactions),
            authenticated: std::sync::atomic::AtomicBool::new(party != Party::Devices),
            party,
            out,
            shut: tokio::sync::Notify::new(),
            last_read: Mutex::new(tokio::time::Instant::now()),
            ponged: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Queues `m` to be written; `false` if the flow is closed or its
    /// queue is full (the message is dropped). Over UDP the transaction
    /// layer keeps what it must retransmit.
    pub fn send(&self, m: &Message) -> bool {
        let bytes = m.to_bytes();
        if let Kind::Udp(t) = &self.kind {
            t.sending(self.id, m, &bytes, &self.out, !self.is_authenticated());
        }
        self.out.try_send(bytes).is_ok()
    }

    /// Whether this is a trunk's UDP flow.
    pub fn is_udp(&self) -> bool {
        matches!(self.kind, Kind::Udp(_))
    }

    /// Whether a trunk's provider is at the other end (over any
    /// transport).
    pub fn is_trunk(&self) -> bool {
        self.party != Party::Devices
    }

    /// Whether the flow is TLS (the only one SDES keys may travel over).
    pub fn is_tls(&self) -> bool {
        matches!(self.kind, Kind::Tls)
    }

    /// The trunk transport this flow is.
    pub fn transport(&self) -> crate::tenant::TrunkTransport {
        use crate::tenant::TrunkTransport;
        match self.kind {
            Kind::Tls => TrunkTransport::Tls,
            Kind::Tcp => TrunkTransport::Tcp,
            Kind::Udp(_) => TrunkTransport::Udp,
        }
    }

    /// Our Via's protocol and sent-by (`SIP/2.0/TLS 10.0.0.1:5061`).
    pub fn via(&self) -> String {
        format!("SIP/2.0/{} {}", self.transport().via_name(), self.local)
    }

    /// A SIP URI of ours with `user`, over this flow's transport.
    pub fn our_uri(&self, user: &str) -> String {
        match self.kind {
            Kind::Udp(_) => format!("sip:{user}@{}", self.local),
            Kind::Tcp => format!("sip:{user}@{};transport=tcp", self.local),
            Kind::Tls => format!("sip:{user}@{};transport=tls", self.local),
        }
    }

    /// Writes a keep-alive (RFC 5626 §4.4.1: a double CRLF) on a
    /// connection; `false` if it is closed or its queue full.
    pub fn ping(&self) -> bool {
        !self.is_udp() && self.out.try_send(b"\r\n\r\n".to_vec()).is_ok()
    }

    /// Closes a connection (its reader stops and the door is told).
    pub fn close(&self) {
        self.shut.notify_one();
    }

    /// Whether its peer ever answered a keep-alive.
    pub fn answers_pings(&self) -> bool {
        self.ponged.load(Ordering::Relaxed)
    }

    /// Whether anything was read on it since `at`.
    pub fn read_since(&self, at: tokio::time::Instant) -> bool {
        *self.last_read.lock().recover() > at
    }

    /// Whether the flow is still open.
    pub fn is_open(&self) -> bool {
        !self.out.is_closed()
    }

    /// Marks the flow as carrying an authenticated device.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    /// Whether a device authenticated a request on the flow (always, for
    /// flows of other parties).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
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
    // An IPv4 peer on a dual-stack socket arrives IPv4-mapped: its own.
    match ip.to_canonical() {
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

    /// Flows live now.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.live.lock().recover().len()
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
    /// Whether the flow's peer may still speak (a provider whose trunk
    /// was removed may not): asked whenever it sends something.
    fn allowed(&self, _flow: &Flow) -> bool {
        true
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

/// How a listener's connections begin.
pub enum Accept {
    /// A TLS handshake with the server's certificate.
    Tls(Arc<rustls::ServerConfig>),
    /// Plain TCP (trunks' providers only).
    Tcp,
}

/// Accepts connections on `listener` until `shutdown` completes. Each
/// connection's party is `party_of` its address; `None` closes it at
/// once (an address no trunk allows, on the trunks' TCP port).
pub async fn serve<H: Handler>(
    listener: tokio::net::TcpListener,
    accept: Accept,
    party_of: impl Fn(IpAddr) -> Option<Party>,
    flows: Arc<Flows>,
    handler: Arc<H>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = match accept {
        Accept::Tls(tls) => Some(tokio_rustls::TlsAcceptor::from(tls)),
        Accept::Tcp => None,
    };
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
        let Some(party) = party_of(peer.ip()) else {
            crate::metrics::SIP_DROPPED.inc(&["trunk_not_allowed"]);
            continue;
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
            let Some(acceptor) = acceptor else {
                let (flow, queue) = flows.open(peer, local, Kind::Tcp, party);
                return run_flow(stream, flow, queue, &flows, handler, limits).await;
            };
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let (flow, queue) = flows.open(peer, local, Kind::Tls, party);
                    run_flow(tls, flow, queue, &flows, handler, limits).await
                }
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

impl Flows {
    /// A new connection's flow, filed as live, and its writer's queue.
    /// A trunk's connection needs no digest (its address or our
    /// connection to its proxy is what identifies it).
    pub(super) fn open(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        kind: Kind,
        party: Party,
    ) -> (Arc<Flow>, mpsc::Receiver<Vec<u8>>) {
        let (out, queue) = mpsc::channel::<Vec<u8>>(QUEUE);
        let flow = Arc::new(Flow {
            id: self.next_id(),
            peer,
            local,
            kind,
            authenticated: std::sync::atomic::AtomicBool::new(party != Party::Devices),
            party,
            out,
            shut: tokio::sync::Notify::new(),
            last_read: Mutex::new(tokio::time::Instant::now()),
            ponged: std::sync::atomic::AtomicBool::new(false),
        });
        self.live.lock().recover().insert(flow.id, flow.clone());
        (flow, queue)
    }
}

/// Runs a connection's flow (opened by [`Flows::open`]) until either
/// side ends it: its reader here, its writer on a task of its own.
pub(super) async fn run_flow<H: Handler, S>(
    stream: S,
    flow: Arc<Flow>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    flows: &Flows,
    handler: Arc<H>,
    limits: Limits,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
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
        let read = tokio::select! {
            r = tokio::time::timeout(wait, rd.read(&mut buf)) => r,
            () = flow.shut.notified() => break,
        };
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            Err(_) if !flow.authenticated.load(Ordering::Relaxed) => continue,
            // Our connection to a trunk's proxy, and a provider's
            // connection carrying calls, are kept however quiet.
            Err(_)
                if !flow.out.is_closed()
                    && (matches!(flow.party, Party::Link(..)) || handler.in_use(flow.id)) =>
            {
                continue;
            }
            _ => break,
        };
        *flow.last_read.lock().recover() = tokio::time::Instant::now();
        if !handler.allowed(&flow) {
            crate::metrics::SIP_DROPPED.inc(&["trunk_not_allowed"]);
            break;
        }
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
                Ok(Some(Frame::Pong)) => flow.ponged.store(true, Ordering::Relaxed),
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
