//! SIP over TLS (RFC 3261 §18, RFC 5630): the door's own sockets. Each
//! accepted connection is a flow: a handshake under a deadline, a reader
//! that frames the stream (`frame`) and parses each message (`message`),
//! and a writer with a bounded queue and a write deadline, so a client
//! that never reads cannot hold the door (its flow is closed instead).
//! Requests to a registered device go out on the flow it registered over
//! (phones behind NAT accept nothing else).
//!
//! Connections are capped in total and per address; a framing error
//! closes the flow (its message boundaries can no longer be trusted); a
//! message that frames but does not parse is dropped and counted.

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

/// Messages queued to one flow before it is judged stuck and closed.
const QUEUE: usize = 256;
/// Longest a write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection.
pub struct Flow {
    pub id: u64,
    pub peer: SocketAddr,
    /// Our address as the peer reached it (for SDP and Contact).
    pub local: SocketAddr,
    out: mpsc::Sender<Vec<u8>>,
}

impl Flow {
    /// Queues `m` to be written; `false` if the flow is closed or stuck
    /// (then it closes).
    pub fn send(&self, m: &Message) -> bool {
        self.out.try_send(m.to_bytes()).is_ok()
    }

    /// Whether the flow is still open.
    pub fn is_open(&self) -> bool {
        !self.out.is_closed()
    }
}

/// The live flows, by id.
#[derive(Default)]
pub struct Flows {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Flow>>>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
}

impl Flows {
    /// Flow `id`, if it is open.
    pub fn get(&self, id: u64) -> Option<Arc<Flow>> {
        self.live
            .lock()
            .recover()
            .get(&id)
            .filter(|f| f.is_open())
            .cloned()
    }

    /// Open flows.
    pub fn count(&self) -> usize {
        self.live.lock().recover().len()
    }

    /// Takes a connection slot for `ip`, or `None` at either cap.
    fn admit(&self, ip: IpAddr, max_total: usize, max_per_address: usize) -> bool {
        let total = self.count();
        let mut per = self.per_address.lock().recover();
        let n = per.entry(ip).or_default();
        if total >= max_total || *n >= max_per_address {
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let mut per = self.per_address.lock().recover();
        if let Some(n) = per.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&ip);
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
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => run_flow(tls, peer, local, &flows, handler, limits).await,
                _ => crate::metrics::SIP_DROPPED.inc(&["tls_handshake"]),
            }
            flows.release(peer.ip());
        });
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
    let id = flows.next.fetch_add(1, Ordering::Relaxed) + 1;
    let flow = Arc::new(Flow {
        id,
        peer,
        local,
        out,
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
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 16 * 1024];
    'read: loop {
        let n = match tokio::time::timeout(limits.idle_timeout, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
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
    flows.live.lock().recover().remove(&id);
    handler.closed(&flow);
    drop(flow);
    writer.abort();
}
