//! SIP over UDP for trunks (RFC 3261 §17, §18.2): the door's datagram
//! socket, heard only from addresses a tenant's trunk allow-lists (and,
//! when the operator opens it to them, `[sip] device_udp`, from devices),
//! and the transaction layer an unreliable transport needs.
//!
//! - A datagram from an address no trunk allows is dropped unread and
//!   counted (`trunk_not_allowed`), unless devices may use UDP: no
//!   answer, so a scanner learns nothing.
//! - Each peer address is a `Flow` (kind `Udp`), so the door's dialogs,
//!   forks and answers work as over TLS; the flow's writer sends to that
//!   address.
//! - Requests we send are retransmitted (Timer A/E: from T1, doubling;
//!   non-INVITE capped at T2) until a response (INVITE: any; others: a
//!   final one), and given up after 64·T1 (Timer B/F) with a `408` handed
//!   to the door as if the peer had sent it.
//! - A retransmitted request is absorbed: the last response we sent for
//!   its transaction goes out again, the door never sees it twice.
//! - Our final answers to INVITEs (2xx and the rest) are retransmitted
//!   until the ACK (Timer G, 2xx per §13.3.1.4), at most 64·T1.
//! - A retransmitted final response is absorbed: the ACK we sent for it
//!   goes out again.
//! - Every transaction is forgotten 64·T1 after it began (plus what
//!   absorbing needs), and at most [`MAX_TRANSACTIONS`] are held: past
//!   that, new requests are dropped (counted), never the state of calls.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::message::Message;
pub use super::transport::Datagrams;
use super::transport::{Flow, Flows, Handler, Party};
use crate::support::sync::Recover as _;

/// RFC 3261's T1 (round-trip estimate) and T2 (longest non-INVITE
/// retransmission interval).
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);
/// How long a transaction lives (Timer B, F, H: 64·T1).
pub const LIFETIME: Duration = Duration::from_secs(32);
/// Longest an INVITE we have not answered finally is kept (call control
/// ends an unanswered offer after 120 s).
pub const INVITE_LIMIT: Duration = Duration::from_secs(300);
/// Transactions held at once.
pub const MAX_TRANSACTIONS: usize = 100_000;
/// How often requests never answered are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Peers (address and port) the door keeps a flow for, in all and per
/// IP address, in each of two pools: trunks' providers, and devices (so
/// datagrams from forged device addresses can never crowd out a trunk).
pub const MAX_PEERS: usize = 4096;
pub const MAX_PEERS_PER_IP: usize = 64;
/// A peer's flow unused this long, carrying no call, may be forgotten.
pub const PEER_IDLE: Duration = Duration::from_secs(60);
/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams queued to one peer.
const QUEUE: usize = 1024;

/// A request we sent, until answered and absorbed.
struct Client {
    request: Message,
    bytes: Vec<u8>,
    flow: u64,
    /// 0 none yet, 1 provisional, 2 final.
    answered: u8,
    /// The ACK we sent for its non-2xx final answer.
    ack: Option<Vec<u8>>,
}

/// A request a peer sent, and our answer to it.
struct Server {
    /// When it came (and which entry for its key this is).
    born: tokio::time::Instant,
    /// A non-INVITE's final answer was sent (its forgetting is timed).
    finished: bool,
    /// The last response we sent, resent to a retransmission.
    last: Option<Vec<u8>>,
    /// Its status, and the To tag it carried.
    last_status: u16,
    last_tag: Option<String>,
    /// An INVITE's final answer waiting for its ACK.
    awaiting_ack: bool,
    /// An INVITE's (flow, Call-ID, CSeq number), for the ACK of a 2xx.
    dialog_key: Option<(u64, String, u32)>,
}

#[derive(Default)]
struct Table {
    /// By (our branch, method).
    client: HashMap<(String, String), Client>,
    /// By (flow, their branch, method).
    server: HashMap<(u64, String, String), Server>,
    /// INVITE server transactions by (flow, Call-ID, CSeq number), for
    /// the ACK of a 2xx (its own branch).
    by_dialog: HashMap<(u64, String, u32), (u64, String, String)>,
    /// ACKs we sent for 2xx answers, by (flow, Call-ID, CSeq number).
    acks: HashMap<(u64, String, u32), Vec<u8>>,
}

impl Table {
    fn len(&self) -> usize {
        self.client.len() + self.server.len() + self.acks.len()
    }

    fn forget_server(&mut self, key: &(u64, String, String)) {
        if let Some(s) = self.server.remove(key)
            && let Some(d) = s.dialog_key
        {
            self.by_dialog.remove(&d);
        }
    }
}

/// What to do with a received message.
pub enum Received {
    /// The door takes it.
    Pass,
    /// A retransmission: send this again (or nothing) and drop it.
    Absorb(Option<Vec<u8>>),
}

/// The transaction layer of the UDP socket.
pub struct Transactions {
    table: Mutex<Table>,
    /// Timed-out requests' `408`s, for the door (flow id, response).
    timeouts: mpsc::Sender<(u64, Message)>,
    tokio: tokio::runtime::Handle,
    me: Weak<Transactions>,
}

/// The top Via's branch if it is RFC 3261's (`z9hG4bK…`): only those
/// identify a transaction; a request without one is passed on untracked.
fn branch_of(m: &Message) -> Option<String> {
    m.branch()
        .filter(|b| b.starts_with("z9hG4bK") && b.len() > 7)
}

impl Transactions {
    /// A transaction layer (inside a tokio runtime: its timers run
    /// there); `timeouts` receives the `408`s of requests that got no
    /// answer. Public for the fuzz target; the door makes its own.
    pub fn new(timeouts: mpsc::Sender<(u64, Message)>) -> Arc<Transactions> {
        let t = Arc::new_cyclic(|me| Transactions {
            table: Mutex::default(),
            timeouts,
            tokio: tokio::runtime::Handle::current(),
            me: me.clone(),
        });
        let me = Arc::downgrade(&t);
        t.tokio.spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(me) = me.upgrade() else { return };
                me.sweep(tokio::time::Instant::now());
            }
        });
        t
    }

    /// Forgets the requests never answered finally within their limit
    /// (an INVITE: [`INVITE_LIMIT`]; others: 64·T1 + T2).
    pub fn sweep(&self, now: tokio::time::Instant) {
        let mut t = self.table.lock().recover();
        let stale: Vec<(u64, String, String)> = t
            .server
            .iter()
            .filter(|(k, s)| {
                let limit = if k.2 == "INVITE" {
                    INVITE_LIMIT
                } else {
                    LIFETIME + T2
                };
                s.last_status < 200 && now.duration_since(s.born) >= limit
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            t.forget_server(&key);
        }
    }

    /// A message from flow `flow`: passed to the door or absorbed.
    pub fn received(&self, flow: u64, m: &Message) -> Received {
        let Some(branch) = branch_of(m) else {
            return Received::Pass;
        };
        let mut t = self.table.lock().recover();
        match m.method() {
            Some("ACK") => {
                let key = (flow, branch, "INVITE".to_string());
                if let Some(s) = t.server.get_mut(&key)
                    && s.last_status >= 300
                {
                    // The ACK of a non-2xx answer: hop by hop, ours.
                    s.awaiting_ack = false;
                    return Received::Absorb(None);
                }
                let (cseq, _) = m.cseq().unwrap_or_default();
                let at = t
                    .by_dialog
                    .get(&(flow, m.call_id().to_string(), cseq))
                    .cloned();
                // Only an ACK naming our answer's tag stops it (a forged
                // one must not silence the 200 the real peer waits for).
                let tag = m.to().ok().and_then(|t| t.tag());
                if let Some(s) = at.and_then(|k| t.server.get_mut(&k))
                    && s.last_tag.is_some()
                    && s.last_tag == tag
                {
                    s.awaiting_ack = false;
                }
                Received::Pass
            }
            Some(method) => {
                let key = (flow, branch, method.to_string());
                if let Some(s) = t.server.get(&key) {
                    crate::metrics::SIP_DROPPED.inc(&["retransmission"]);
                    return Received::Absorb(s.last.clone());
                }
                if t.len() >= MAX_TRANSACTIONS {
                    crate::metrics::SIP_DROPPED.inc(&["transaction_cap"]);
                    return Received::Absorb(None);
                }
                let invite = method == "INVITE";
                let dialog_key = invite.then(|| {
                    let (cseq, _) = m.cseq().unwrap_or_default();
                    (flow, m.call_id().to_string(), cseq)
                });
                if let Some(d) = &dialog_key {
                    t.by_dialog.insert(d.clone(), key.clone());
                }
                t.server.insert(
                    key.clone(),
                    Server {
                        born: tokio::time::Instant::now(),
                        finished: false,
                        last: None,
                        last_status: 0,
                        last_tag: None,
                        awaiting_ack: false,
                        dialog_key,
                    },
                );
                // An INVITE lives until 64·T1 after its final answer
                // (`retransmit_answer`), another request as long after
                // its final answer; one never answered is swept
                // (`sweep`). No timer when a request comes, and none for
                // a stranger's (its answers are stateless).
                Received::Pass
            }
            None => {
                let status = m.status().unwrap_or_default();
                let (cseq, method) = m.cseq().unwrap_or_default();
                let ack_key = (flow, m.call_id().to_string(), cseq);
                let Some(c) = t
                    .client
                    .get_mut(&(branch, method.clone()))
                    .filter(|c| c.flow == flow)
                else {
                    // A 2xx retransmitted after its transaction ended:
                    // the ACK we sent for it, again.
                    if let Some(ack) = t.acks.get(&ack_key) {
                        return Received::Absorb(Some(ack.clone()));
                    }
                    return Received::Pass;
                };
                if c.answered == 2 {
                    // A final answer again: our ACK again (INVITE), or
                    // nothing.
                    let ack = if (200..300).contains(&status) {
                        t.acks.get(&ack_key).cloned()
                    } else {
                        c.ack.clone()
                    };
                    return Received::Absorb(ack);
                }
                c.answered = if status >= 200 { 2 } else { 1 };
                Received::Pass
            }
        }
    }

    /// Runs `forget` on the table after `life`.
    fn forget_after(&self, life: Duration, forget: impl FnOnce(&mut Table) + Send + 'static) {
        let me = self.me.clone();
        self.tokio.spawn(async move {
            tokio::time::sleep(life).await;
            if let Some(me) = me.upgrade() {
                forget(&mut me.table.lock().recover());
            }
        });
    }

    /// Timers A/B (INVITE) and E/F (others) for a request we sent.
    fn retransmit_request(&self, key: (String, String), invite: bool, out: mpsc::Sender<Vec<u8>>) {
        let me = self.me.clone();
        self.tokio.spawn(async move {
            let started = tokio::time::Instant::now();
            let mut wait = T1;
            let timed_out = loop {
                tokio::time::sleep(wait).await;
                let Some(me) = me.upgrade() else { return };
                let t = me.table.lock().recover();
                let Some(c) = t.client.get(&key) else { return };
                let done = if invite {
                    c.answered > 0
                } else {
                    c.answered == 2
                };
                if done {
                    break false;
                }
                if started.elapsed() >= LIFETIME {
                    break true;
                }
                let _ = out.try_send(c.bytes.clone());
                wait = if invite {
                    wait * 2
                } else if c.answered == 1 {
                    T2
                } else {
                    (wait * 2).min(T2)
                };
                // Never past the transaction's end.
                wait =
                    wait.min(LIFETIME.saturating_sub(started.elapsed()) + Duration::from_millis(1));
            };
            if timed_out && let Some(me) = me.upgrade() {
                let c = me.table.lock().recover().client.remove(&key);
                if let Some(c) = c {
                    let timeout = c.request.response(408, "Request Timeout", None);
                    let _ = me.timeouts.try_send((c.flow, timeout));
                }
                return;
            }
            // Answered: kept a while to absorb retransmitted answers.
            tokio::time::sleep(LIFETIME.saturating_sub(started.elapsed()) + T2).await;
            if let Some(me) = me.upgrade() {
                me.table.lock().recover().client.remove(&key);
            }
        });
    }

    /// Timer G (and §13.3.1.4 for 2xx): our final answer to an INVITE
    /// until its ACK.
    fn retransmit_answer(
        &self,
        key: (u64, String, String),
        bytes: Vec<u8>,
        out: mpsc::Sender<Vec<u8>>,
    ) {
        let me = self.me.clone();
        self.tokio.spawn(async move {
            let started = tokio::time::Instant::now();
            let mut wait = T1;
            while started.elapsed() + wait < LIFETIME {
                tokio::time::sleep(wait).await;
                let Some(me) = me.upgrade() else { return };
                let awaiting = me
                    .table
                    .lock()
                    .recover()
                    .server
                    .get(&key)
                    .is_some_and(|s| s.awaiting_ack && s.last.as_deref() == Some(&bytes));
                if !awaiting {
                    break;
                }
                let _ = out.try_send(bytes.clone());
                wait = (wait * 2).min(T2);
            }
            // Kept 64·T1 from the final answer to absorb retransmissions
            // of the INVITE, then forgotten.
            tokio::time::sleep(LIFETIME.saturating_sub(started.elapsed()) + T2).await;
            if let Some(me) = me.upgrade() {
                let mut t = me.table.lock().recover();
                if t.server
                    .get(&key)
                    .is_some_and(|s| s.last.as_deref() == Some(&bytes))
                {
                    t.forget_server(&key);
                }
            }
        });
    }
}

/// Where the `408`s of requests that got no answer arrive: (flow id,
/// response).
pub type Timeouts = mpsc::Receiver<(u64, Message)>;

/// What the door sends on a flow (`Flow::send`); public, through
/// [`Datagrams`], for the fuzz target. `stranger`: a device's flow on
/// which nothing authenticated yet.
impl Datagrams for Transactions {
    fn sending(
        &self,
        flow: u64,
        m: &Message,
        bytes: &[u8],
        out: &mpsc::Sender<Vec<u8>>,
        stranger: bool,
    ) {
        let Some(branch) = branch_of(m) else {
            return;
        };
        let mut t = self.table.lock().recover();
        match m.method() {
            Some("ACK") => {
                let (cseq, _) = m.cseq().unwrap_or_default();
                let key = (branch, "INVITE".to_string());
                if let Some(c) = t.client.get_mut(&key) {
                    c.ack = Some(bytes.to_vec());
                } else {
                    let k = (flow, m.call_id().to_string(), cseq);
                    t.acks.insert(k.clone(), bytes.to_vec());
                    drop(t);
                    self.forget_after(LIFETIME + T2, move |t| {
                        t.acks.remove(&k);
                    });
                }
            }
            Some(method) => {
                let key = (branch, method.to_string());
                t.client.insert(
                    key.clone(),
                    Client {
                        request: m.clone(),
                        bytes: bytes.to_vec(),
                        flow,
                        answered: 0,
                        ack: None,
                    },
                );
                drop(t);
                self.retransmit_request(key, method == "INVITE", out.clone());
            }
            None => {
                let status = m.status().unwrap_or_default();
                let (_, method) = m.cseq().unwrap_or_default();
                let key = (flow, branch, method);
                // A challenge, and any final answer to a stranger, is sent
                // statelessly (RFC 3261 §26.3.2.4): never resent, the
                // transaction forgotten (a request sent again is answered
                // again), so a forged source's request draws one answer,
                // not a train of retransmissions, and holds nothing.
                if matches!(status, 401 | 407) || (stranger && status >= 200) {
                    t.forget_server(&key);
                    return;
                }
                let Some(s) = t.server.get_mut(&key) else {
                    return;
                };
                s.last = Some(bytes.to_vec());
                s.last_status = status;
                s.last_tag = m.to().ok().and_then(|t| t.tag());
                if status < 200 {
                    return;
                }
                if s.dialog_key.is_some() {
                    s.awaiting_ack = true;
                    drop(t);
                    self.retransmit_answer(key, bytes.to_vec(), out.clone());
                } else if !s.finished {
                    // Kept 64·T1 from its final answer to absorb the
                    // request's retransmissions (this entry only: one
                    // made again meanwhile is another).
                    s.finished = true;
                    let born = s.born;
                    drop(t);
                    self.forget_after(LIFETIME + T2, move |t| {
                        if t.server.get(&key).is_some_and(|s| s.born == born) {
                            t.forget_server(&key);
                        }
                    });
                }
            }
        }
    }
}

/// The peers' flows in two pools (trunks' providers, devices), with the
/// counts that bound them and the order devices' peers came in, so that
/// every step on a new peer is O(1) amortised, under a flood too.
#[derive(Default)]
struct Peers {
    /// Each peer's flow and when it was last heard or used.
    map: HashMap<SocketAddr, (Arc<Flow>, tokio::time::Instant)>,
    /// Peers per pool (`true`: devices) and per pool and address (IPv6:
    /// per /64).
    count: [usize; 2],
    per_ip: HashMap<(bool, std::net::IpAddr), usize>,
    /// Devices' peers in the order they came, in all and per address
    /// (IPv6: per /64; with their flow id: an entry whose peer went or
    /// came again is stale and skipped).
    order: VecDeque<(SocketAddr, u64)>,
    order_per_ip: HashMap<std::net::IpAddr, VecDeque<(SocketAddr, u64)>>,
    /// Entries in `order_per_ip`.
    per_ip_entries: usize,
    /// When each pool's idle peers were last swept.
    swept: [Option<tokio::time::Instant>; 2],
    /// Until when no devices' peer is worth looking for to evict (the
    /// last look found every one carrying something).
    all_busy_until: Option<tokio::time::Instant>,
}

impl Peers {
    fn full(&self, devices: bool, ip: std::net::IpAddr) -> bool {
        self.count[usize::from(devices)] >= MAX_PEERS || self.at_ip_cap(devices, ip)
    }

    /// Whether `ip`'s network (IPv6: its /64) holds its share of a pool.
    fn at_ip_cap(&self, devices: bool, ip: std::net::IpAddr) -> bool {
        let net = super::transport::network(ip);
        self.per_ip.get(&(devices, net)).copied().unwrap_or(0) >= MAX_PEERS_PER_IP
    }

    fn insert(&mut self, peer: SocketAddr, flow: Arc<Flow>, now: tokio::time::Instant) {
        let devices = flow.party == Party::Devices;
        let (id, net) = (flow.id, super::transport::network(peer.ip()));
        self.count[usize::from(devices)] += 1;
        *self.per_ip.entry((devices, net)).or_default() += 1;
        self.map.insert(peer, (flow, now));
        if devices {
            self.order.push_back((peer, id));
            self.order_per_ip
                .entry(net)
                .or_default()
                .push_back((peer, id));
            self.per_ip_entries += 1;
            self.compact();
        }
    }

    fn remove(&mut self, peer: &SocketAddr) -> Option<Arc<Flow>> {
        let (flow, _) = self.map.remove(peer)?;
        let devices = flow.party == Party::Devices;
        self.count[usize::from(devices)] -= 1;
        let key = (devices, super::transport::network(peer.ip()));
        if let Some(n) = self.per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&key);
            }
        }
        Some(flow)
    }

    /// Drops stale entries from the order once they could outnumber the
    /// live ones.
    fn compact(&mut self) {
        let limit = 2 * MAX_PEERS + 64;
        if self.order.len() > limit || self.per_ip_entries > limit {
            let map = &self.map;
            let live = |(p, id): &(SocketAddr, u64)| map.get(p).is_some_and(|(f, _)| f.id == *id);
            self.order.retain(live);
            self.order_per_ip.retain(|_, q| {
                q.retain(live);
                !q.is_empty()
            });
            self.per_ip_entries = self.order_per_ip.values().map(VecDeque::len).sum();
        }
    }

    /// Forgets the least recently heard devices' peer (of `ip`'s network,
    /// if given) that carries nothing, a phone's included: when a pool is
    /// full of idle phones, a credential used from many places must not
    /// keep others out for good. O(n); only when no stranger can go.
    fn evict_idlest(
        &mut self,
        ip: Option<std::net::IpAddr>,
        in_use: &dyn Fn(u64) -> bool,
    ) -> Option<Arc<Flow>> {
        let now = tokio::time::Instant::now();
        if ip.is_none() && self.all_busy_until.is_some_and(|t| now < t) {
            return None;
        }
        let net = ip.map(super::transport::network);
        let idlest = self
            .map
            .iter()
            .filter(|(p, (f, _))| {
                f.party == Party::Devices
                    && net.is_none_or(|n| super::transport::network(p.ip()) == n)
                    && !in_use(f.id)
            })
            .min_by_key(|(_, (_, seen))| *seen)
            .map(|(p, _)| *p);
        let Some(peer) = idlest else {
            // Looked for again in a second, not for every datagram (one
            // network's look is bounded by its source gate).
            if ip.is_none() {
                self.all_busy_until = Some(now + Duration::from_secs(1));
            }
            return None;
        };
        self.remove(&peer)
    }

    /// Forgets the first devices' peer in the order (of every address, or
    /// of `ip`'s network) that no device ever authenticated on and that
    /// carries nothing; entries it passes leave the order (amortised O(1)).
    fn evict_stranger(
        &mut self,
        ip: Option<std::net::IpAddr>,
        in_use: &dyn Fn(u64) -> bool,
    ) -> Option<Arc<Flow>> {
        loop {
            let next = match ip {
                Some(ip) => {
                    let net = super::transport::network(ip);
                    let next = self.order_per_ip.get_mut(&net)?.pop_front();
                    self.per_ip_entries -= usize::from(next.is_some());
                    next
                }
                None => self.order.pop_front(),
            };
            let (peer, id) = next?;
            let Some((flow, _)) = self.map.get(&peer).filter(|(f, _)| f.id == id) else {
                continue; // Stale.
            };
            if flow.is_authenticated() || in_use(flow.id) {
                // A phone's (authentication is for good): no stranger, it
                // leaves the order (idle, it goes as every peer does).
                continue;
            }
            return self.remove(&peer);
        }
    }
}

/// The UDP side of the door: the socket, its peers' flows and the
/// transaction layer.
pub struct Udp {
    socket: Arc<tokio::net::UdpSocket>,
    local: SocketAddr,
    /// Each peer's flow and when it was last heard or used.
    peers: Mutex<Peers>,
    flows: Arc<Flows>,
    transactions: Arc<Transactions>,
}

impl Udp {
    /// Wraps a bound socket; `timeouts` receives the `408`s of requests
    /// that got no answer.
    pub fn new(
        socket: tokio::net::UdpSocket,
        flows: Arc<Flows>,
    ) -> std::io::Result<(Arc<Udp>, Timeouts)> {
        let local = socket.local_addr()?;
        let (tx, rx) = mpsc::channel(1024);
        Ok((
            Arc::new(Udp {
                socket: Arc::new(socket),
                local,
                peers: Mutex::default(),
                flows,
                transactions: Transactions::new(tx),
            }),
            rx,
        ))
    }

    /// The flow to `peer`, made on first use as `party`'s. At
    /// [`MAX_PEERS`] in its pool or [`MAX_PEERS_PER_IP`] for its address
    /// (IPv6: its /64) there, flows idle for [`PEER_IDLE`] that `in_use`
    /// says carry nothing are forgotten first; then, for devices, the
    /// first come on which no device ever authenticated (what forged
    /// sources make) and that carries nothing, else the least recently
    /// heard that carries nothing. `None` if there is still no room.
    pub fn flow_to(
        &self,
        peer: SocketAddr,
        party: Party,
        in_use: &dyn Fn(u64) -> bool,
    ) -> Option<Arc<Flow>> {
        let now = tokio::time::Instant::now();
        let mut peers = self.peers.lock().recover();
        if let Some((f, seen)) = peers.map.get_mut(&peer) {
            if f.party == party {
                *seen = now;
                return Some(f.clone());
            }
            // The address changed role (a trunk now allows it, or no
            // longer does): a flow of its new party replaces the old.
            if let Some(old) = peers.remove(&peer) {
                self.flows.remove(old.id);
            }
        }
        let devices = party == Party::Devices;
        let ip = peer.ip();
        if peers.full(devices, ip) {
            // Peers idle for long that carry nothing go (looked for at
            // most once a second: a flood of new peers must not make
            // every datagram walk the table).
            let due = peers.swept[usize::from(devices)]
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
            if due {
                peers.swept[usize::from(devices)] = Some(now);
                let idle: Vec<SocketAddr> = peers
                    .map
                    .iter()
                    .filter(|(_, (f, seen))| {
                        (f.party == Party::Devices) == devices
                            && now.duration_since(*seen) >= PEER_IDLE
                            && !in_use(f.id)
                    })
                    .map(|(p, _)| *p)
                    .collect();
                for p in idle {
                    if let Some(f) = peers.remove(&p) {
                        self.flows.remove(f.id);
                    }
                }
            }
            // Still full of devices' peers: the first come that no device
            // ever authenticated on goes, else the idlest that carries
            // nothing (this address's own, at its cap).
            if devices && peers.full(devices, ip) {
                let only = peers.at_ip_cap(true, ip).then_some(ip);
                if let Some(f) = peers
                    .evict_stranger(only, in_use)
                    .or_else(|| peers.evict_idlest(only, in_use))
                {
                    self.flows.remove(f.id);
                }
            }
            if peers.full(devices, ip) {
                return None;
            }
        }
        let (out, mut queue) = mpsc::channel::<Vec<u8>>(QUEUE);
        // Our address as the peer sees it: the socket's, unless it is
        // bound to all (then the route's source is unknown here; the
        // configured media address or the bound one is used).
        let local = self.local;
        let flow = Arc::new(Flow::datagram(
            self.flows.next_id(),
            (peer, local),
            party,
            self.transactions.clone(),
            out,
        ));
        let socket = self.socket.clone();
        tokio::spawn(async move {
            while let Some(bytes) = queue.recv().await {
                let _ = socket.send_to(&bytes, peer).await;
            }
        });
        self.flows.insert(flow.clone());
        peers.insert(peer, flow.clone(), now);
        Some(flow)
    }
}

/// Datagrams a second one source may send as a device (a burst of twice
/// that).
pub const DEVICE_DATAGRAMS_PER_SECOND: f64 = 20.0;
/// Sources the gate remembers; past that it starts afresh.
const GATE_SOURCES: usize = 100_000;

/// A token bucket per source address (IPv6 per /64) for devices'
/// datagrams.
#[derive(Default)]
struct SourceGate {
    buckets: HashMap<std::net::IpAddr, (f64, tokio::time::Instant)>,
}

impl SourceGate {
    /// Whether a datagram from `ip` at `now` may pass.
    fn admit(&mut self, ip: std::net::IpAddr, now: tokio::time::Instant) -> bool {
        if self.buckets.len() >= GATE_SOURCES {
            self.buckets.clear();
        }
        let burst = 2.0 * DEVICE_DATAGRAMS_PER_SECOND;
        let (tokens, last) = self
            .buckets
            .entry(super::transport::network(ip))
            .or_insert((burst, now));
        let refill = now.duration_since(*last).as_secs_f64() * DEVICE_DATAGRAMS_PER_SECOND;
        *tokens = (*tokens + refill).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Reads the socket until `shutdown`: datagrams from addresses
/// `party_of` names a party for go through the transaction layer to
/// `handler` (others are dropped unread); timed-out requests' `408`s too.
pub async fn serve<H: Handler>(
    udp: Arc<Udp>,
    mut timeouts: Timeouts,
    handler: Arc<H>,
    party_of: impl Fn(std::net::IpAddr) -> Option<Party>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut gate = SourceGate::default();
    loop {
        let (n, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some((flow, m)) = timeouts.recv() => {
                if let Some(flow) = udp.flows.get(flow) {
                    handler.clone().message(flow, m).await;
                }
                continue;
            }
            got = udp.socket.recv_from(&mut buf) => match got {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors surface here on some systems; go on.
                    tracing::debug!(error = %e, "SIP UDP receive failed");
                    continue;
                }
            },
        };
        let Some(party) = party_of(peer.ip()) else {
            crate::metrics::SIP_DROPPED.inc(&["trunk_not_allowed"]);
            continue;
        };
        // Devices' datagrams come from anywhere and may be forged: each
        // source gets a few a second, so the door cannot be used to
        // reflect challenges at someone else.
        if party == Party::Devices && !gate.admit(peer.ip(), tokio::time::Instant::now()) {
            crate::metrics::SIP_DROPPED.inc(&["device_rate"]);
            continue;
        }
        let bytes = &buf[..n];
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // A keep-alive (RFC 5626 §4.4.2 is STUN; CRLF is common).
        }
        // A flow only for a message that reads (garbage makes none).
        let m = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                crate::metrics::SIP_DROPPED.inc(&[e.code()]);
                continue;
            }
        };
        let Some(flow) = udp.flow_to(peer, party, &|id| handler.in_use(id)) else {
            crate::metrics::SIP_DROPPED.inc(&["peer_cap"]);
            continue;
        };
        match udp.transactions.received(flow.id, &m) {
            Received::Pass => handler.clone().message(flow, m).await,
            Received::Absorb(Some(again)) => {
                let _ = udp.socket.send_to(&again, peer).await;
            }
            Received::Absorb(None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn challenges_are_stateless_one_answer_per_request() {
        let (tx, _rx) = mpsc::channel(8);
        let t = Transactions::new(tx);
        let invite = Message::parse(
            b"INVITE sip:100@acme.localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKa1\r\n\
              From: <sip:x@acme.localhost>;tag=1\r\nTo: <sip:100@acme.localhost>\r\n\
              Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let (out, mut sent) = mpsc::channel(8);
        assert!(matches!(t.received(7, &invite), Received::Pass));
        let challenge = invite.response(407, "Proxy Authentication Required", Some("t"));
        t.sending(7, &challenge, &challenge.to_bytes(), &out, false);
        // The same request again is the door's again (a fresh challenge),
        // not absorbed; nothing is resent by itself.
        assert!(matches!(t.received(7, &invite), Received::Pass));
        tokio::time::sleep(T1 * 3).await;
        assert!(sent.try_recv().is_err(), "no retransmission of a challenge");
        // Any other final answer is kept and resent to a retransmission.
        let busy = invite.response(486, "Busy Here", Some("t"));
        t.sending(7, &busy, &busy.to_bytes(), &out, false);
        assert!(matches!(t.received(7, &invite), Received::Absorb(Some(_))));
        assert!(t.table.lock().recover().len() > 0);
        // Any refusal to a stranger (a device's flow on which nothing
        // authenticated) is stateless too; an answer it never got is
        // swept in time.
        let other = |branch: &str| {
            let text = String::from_utf8(invite.to_bytes())
                .unwrap()
                .replace("z9hG4bKa1", branch);
            Message::parse(text.as_bytes()).unwrap()
        };
        let forged = other("z9hG4bKa2");
        assert!(matches!(t.received(8, &forged), Received::Pass));
        let refused = forged.response(403, "Forbidden", Some("t"));
        t.sending(8, &refused, &refused.to_bytes(), &out, true);
        assert!(matches!(t.received(8, &forged), Received::Pass));
        // A final answer to a stranger is stateless whatever it is.
        let ping = other("z9hG4bKa4");
        assert!(matches!(t.received(8, &ping), Received::Pass));
        let ok = ping.response(200, "OK", Some("t"));
        t.sending(8, &ok, &ok.to_bytes(), &out, true);
        assert!(matches!(t.received(8, &ping), Received::Pass));
        // Never answered: an INVITE is kept until INVITE_LIMIT, another
        // request 64·T1 + T2.
        let silent = other("z9hG4bKa3");
        assert!(matches!(t.received(9, &silent), Received::Pass));
        let options = Message::parse(
            String::from_utf8(silent.to_bytes())
                .unwrap()
                .replace("INVITE", "OPTIONS")
                .replace("z9hG4bKa3", "z9hG4bKa5")
                .as_bytes(),
        )
        .unwrap();
        assert!(matches!(t.received(9, &options), Received::Pass));
        let now = tokio::time::Instant::now();
        t.sweep(now);
        assert!(
            matches!(t.received(9, &silent), Received::Absorb(None)),
            "kept a while"
        );
        t.sweep(now + LIFETIME + T2 + Duration::from_secs(1));
        assert!(
            matches!(t.received(9, &options), Received::Pass),
            "the OPTIONS swept"
        );
        assert!(
            matches!(t.received(9, &silent), Received::Absorb(None)),
            "the INVITE kept"
        );
        t.sweep(now + INVITE_LIMIT + Duration::from_secs(1));
        assert!(matches!(t.received(9, &silent), Received::Pass), "swept");
    }

    #[tokio::test]
    async fn forged_device_peers_never_crowd_out_trunks_or_authenticated_phones() {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (udp, _timeouts) = Udp::new(socket, Arc::new(Flows::default())).unwrap();
        let nothing = |_: u64| false;
        let addr =
            |i: usize| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5060));
        // A phone that authenticated, then a flood of forged sources
        // filling the devices' pool, and more.
        let phone = udp.flow_to(addr(0), Party::Devices, &nothing).unwrap();
        phone.authenticated();
        let flood = 3 * MAX_PEERS;
        for i in 1..flood {
            assert!(
                udp.flow_to(addr(i), Party::Devices, &nothing).is_some(),
                "{i}"
            );
        }
        let peers = udp.peers.lock().recover();
        assert_eq!(peers.map.len(), MAX_PEERS);
        assert!(peers.map.contains_key(&addr(0)), "the phone's peer stays");
        assert!(!peers.map.contains_key(&addr(1)), "the first stranger went");
        assert!(peers.map.contains_key(&addr(flood - 1)), "the last came in");
        // The bookkeeping stays bounded under the flood, and every
        // stranger kept is still in the order (evictable in its turn).
        let bound = 2 * MAX_PEERS + 64;
        assert!(peers.order.len() <= bound && peers.per_ip_entries <= bound);
        assert!(peers.order_per_ip.len() <= bound);
        let live = |q: &VecDeque<(SocketAddr, u64)>| {
            q.iter()
                .filter(|(p, id)| peers.map.get(p).is_some_and(|(f, _)| f.id == *id))
                .count()
        };
        assert_eq!(live(&peers.order), MAX_PEERS - 1);
        assert!(peers.order_per_ip.values().map(live).sum::<usize>() >= MAX_PEERS - 1);
        assert_eq!(
            udp.flows.count(),
            MAX_PEERS,
            "forgotten peers' flows went too"
        );
        drop(peers);
        // A trunk's provider has a pool of its own.
        let trunk = SocketAddr::from(([192, 0, 2, 1], 5060));
        assert!(udp.flow_to(trunk, Party::Provider, &nothing).is_some());
        // One address may hold at most its share, strangers churning.
        let one = |port: u16| SocketAddr::from(([198, 51, 100, 7], port));
        for port in 0..(MAX_PEERS_PER_IP as u16 + 10) {
            assert!(udp.flow_to(one(port), Party::Devices, &nothing).is_some());
        }
        let peers = udp.peers.lock().recover();
        let from_one = peers.map.keys().filter(|p| p.ip() == one(0).ip()).count();
        assert_eq!(from_one, MAX_PEERS_PER_IP);
        drop(peers);
        // A pool full of phones that authenticated and carry nothing:
        // the least recently heard gives way (one credential used from
        // many places cannot keep others out for good).
        let phones = Udp::new(
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| {
                    s.set_nonblocking(true)?;
                    tokio::net::UdpSocket::from_std(s)
                })
                .unwrap(),
            Arc::new(Flows::default()),
        )
        .unwrap()
        .0;
        for i in 0..MAX_PEERS {
            phones
                .flow_to(addr(i), Party::Devices, &nothing)
                .unwrap()
                .authenticated();
        }
        assert!(
            phones
                .flow_to(addr(MAX_PEERS), Party::Devices, &nothing)
                .is_some()
        );
        assert!(!phones.peers.lock().recover().map.contains_key(&addr(0)));
        // IPv6: one /64 is one address for the per-address share.
        let v6 = |i: u16| {
            SocketAddr::from((
                std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i),
                5060,
            ))
        };
        for i in 0..(MAX_PEERS_PER_IP as u16 + 5) {
            assert!(udp.flow_to(v6(i), Party::Devices, &nothing).is_some());
        }
        let from_net = udp
            .peers
            .lock()
            .recover()
            .map
            .keys()
            .filter(|p| p.ip().is_ipv6())
            .count();
        assert_eq!(from_net, MAX_PEERS_PER_IP);
        // When every device peer carries something, a new one waits.
        let busy = |_: u64| true;
        assert!(udp.flow_to(addr(99_999), Party::Devices, &busy).is_none());
        // Trunks' peers are never evicted for being unauthenticated.
        for i in 0..MAX_PEERS {
            let p = SocketAddr::from(([172, 16, (i >> 8) as u8, i as u8], 5060));
            if udp.flow_to(p, Party::Provider, &busy).is_none() {
                assert!(i >= MAX_PEERS - 1, "{i}");
            }
        }
        assert!(
            udp.flow_to(trunk, Party::Provider, &busy).is_some(),
            "still there"
        );
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_others_are_apart() {
        let mut gate = SourceGate::default();
        let t0 = tokio::time::Instant::now();
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let burst = (2.0 * DEVICE_DATAGRAMS_PER_SECOND) as usize;
        assert!((0..burst).all(|_| gate.admit(a, t0)));
        assert!(!gate.admit(a, t0), "past the burst");
        assert!(gate.admit(b, t0), "another source has its own");
        // A second later, a second's worth again.
        let t1 = t0 + Duration::from_secs(1);
        let per_second = DEVICE_DATAGRAMS_PER_SECOND as usize;
        assert!((0..per_second).all(|_| gate.admit(a, t1)));
        assert!(!gate.admit(a, t1));
    }
}
