//! The media engine: call audio on threads of its own (SPEC T2, K5), apart
//! from the network runtime and from the plugin executor. Each worker
//! thread (`sb-media-N`) runs a single-threaded runtime that owns the UDP
//! sockets of its legs and every piece of their state, so a packet goes
//! from socket to socket without a lock or a thread hand-over:
//!
//! `recv → SRTP unprotect → latch → RTP parse → (DTMF detect) →
//!  other leg's renumbering → SRTP protect → send`
//!
//! Legs that will be bridged are opened in the same group (one call), and
//! a group lives on one worker. Commands come in and events go out on
//! bounded channels; a full event channel drops the event and counts it,
//! so the engine never waits on its consumer.
//!
//! Symmetric RTP (latching): a leg first sends where the SDP said; the
//! first packet that authenticates (SRTP), or for plain RTP the first from
//! the signalled IP address, moves the leg's destination to the packet's
//! source (phones behind NAT). Packets that fail are counted and dropped;
//! they never move anything.
//!
//! It relays bridges (transcoding µ-law ↔ A-law when the codecs differ),
//! detects RFC 4733 digits, plays tones and prompts, mixes conference
//! rooms, sends RTCP reports and records legs (`record`: what a leg says
//! and hears, mixed every 20 ms, handed to a sink as PCM).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::dtmf::Detector;
use super::g711;
use super::jitter::Jitter;
use super::mix;
use super::record::{RecordEnd, RecordSpec, Recorder};
use super::rtcp::{self, Block, Reception};
use super::rtp::{self, Rewriter};
use super::srtp::{MasterKey, Srtp, SrtpError, Suite};
use super::tone::{FRAME, Tone};
use crate::support::sync::Recover as _;

/// Commands queued to one worker before senders wait.
const COMMANDS: usize = 1024;
/// Events queued before new ones are dropped (and counted).
const EVENTS: usize = 4096;
/// How far behind a conference member's newest packet the mixer plays it
/// (its jitter buffer's depth, 2 × 20 ms): packets that arrive out of
/// order within it are mixed in order; a frame missing longer is silence.
const ROOM_DEPTH: usize = 2;
/// Most frames a member's buffer holds (80 ms): beyond, the oldest go,
/// so a burst or a fast sender's clock never builds up delay.
const ROOM_MAX_WAITING: usize = 4;
/// Most legs in one conference room.
pub const MAX_ROOM_MEMBERS: usize = 64;

/// Why the engine refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// No free port pair in the configured range.
    #[error("no free media port in {0}")]
    NoPorts(String),
    /// A socket could not be opened.
    #[error("media socket: {0}")]
    Socket(String),
    /// The leg does not exist (closed, or never opened here).
    #[error("no such media leg")]
    NoLeg,
    /// Legs of different groups (calls) cannot be bridged.
    #[error("the legs are not in one group")]
    NotSameGroup,
    /// A leg's codec is not one the engine carries (G.711 only).
    #[error("payload type {0} is not G.711 (0 or 8)")]
    Codec(u8),
    /// The engine has stopped.
    #[error("the media engine has stopped")]
    Stopped,
    /// A conference room is full.
    #[error("the room has {MAX_ROOM_MEMBERS} members")]
    RoomFull,
}

/// What a play sends: a generated tone for a while, or a clip of µ-law
/// samples (the prompt library), transcoded for A-law legs.
#[derive(Debug, Clone, PartialEq)]
pub enum Sound {
    Tone(Tone, Duration),
    /// G.711 µ-law audio of the built-in library.
    Clip(&'static [u8]),
    /// G.711 µ-law audio a plugin's blob held.
    Audio(Arc<[u8]>),
}

impl Sound {
    /// The µ-law audio of a clip, if it is one.
    fn ulaw(&self) -> Option<&[u8]> {
        match self {
            Sound::Clip(c) => Some(c),
            Sound::Audio(a) => Some(a),
            Sound::Tone(..) => None,
        }
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Address the sockets bind to.
    pub bind: IpAddr,
    /// Ports for RTP (even) and RTCP (the odd one above).
    pub ports: std::ops::RangeInclusive<u16>,
    /// How often each leg sends an RTCP report (RFC 3550 suggests 5 s).
    pub report_interval: Duration,
    /// The media threads' nice value (Linux): below 0 puts audio ahead
    /// of everything else on the machine (plugin work runs at 10 by
    /// default), which needs `CAP_SYS_NICE`; refused, the threads run at
    /// 0 and say so in the log.
    pub nice: i32,
    /// The CPUs the media threads run on (Linux; empty: any): cores of
    /// their own keep audio apart from plugin work entirely.
    pub cpus: Vec<usize>,
    /// A real-time FIFO priority (1-99) for the media threads (Linux,
    /// `CAP_SYS_NICE`), as PBXs run their media (Asterisk `-p`,
    /// FreeSWITCH `-rp`); refused, they keep `nice` and say so. `None`:
    /// ordinary scheduling.
    pub realtime: Option<u8>,
}

/// A leg's media, as agreed in SDP.
#[derive(Debug, Clone)]
pub struct LegSetup {
    /// The call the leg belongs to: legs bridged together share it.
    pub group: u64,
    /// Where the peer asked for media.
    pub remote: SocketAddr,
    /// Static payload type of the codec (0 PCMU, 8 PCMA).
    pub payload_type: u8,
    /// RFC 4733 payload type, if agreed.
    pub dtmf: Option<u8>,
    /// (suite, the peer's key, our key), or plain RTP.
    pub srtp: Option<(Suite, MasterKey, MasterKey)>,
}

/// What the engine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A key pressed on a leg (RFC 4733).
    Digit { leg: u64, key: char },
    /// The leg's media now goes to `to` (symmetric RTP).
    Latched { leg: u64, to: SocketAddr },
    /// A tone ended (the `tag` given to [`Engine::play`]); a play
    /// stopped, replaced or cut by a bridge reports nothing.
    PlayDone { leg: u64, tag: u64 },
}

/// Packet counters of the whole engine.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub relayed: AtomicU64,
    pub refused: AtomicU64,
    pub events_dropped: AtomicU64,
}

/// A leg's media statistics, for call records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegStats {
    /// RTP packets and payload bytes the host sent on the leg.
    pub sent_packets: u32,
    pub sent_octets: u32,
    /// RTP packets expected and received from the peer (authentic ones),
    /// and the payload bytes received.
    pub expected: u32,
    pub received: u32,
    pub received_octets: u64,
    /// Interarrival jitter of what the peer sends, ms.
    pub jitter_ms: u32,
    /// What the peer's last RTCP report said of our stream: fraction
    /// lost (of 256) and jitter (ms).
    pub peer_fraction_lost: Option<u8>,
    pub peer_jitter_ms: Option<u32>,
}

enum Cmd {
    Open(
        Box<LegSetup>,
        u64,
        oneshot::Sender<Result<SocketAddr, MediaError>>,
    ),
    Stats(u64, oneshot::Sender<Option<LegStats>>),
    Bridge(u64, u64, oneshot::Sender<Result<(), MediaError>>),
    Unbridge(u64),
    Play(u64, Sound, u64),
    StopPlay(u64),
    Join(u64, u64, oneshot::Sender<Result<(), MediaError>>),
    Leave(u64),
    Close(u64),
    Retarget(u64, Box<LegSetup>),
    Record(u64, RecordSpec),
    StopRecord(u64),
    PauseRecord(u64, bool),
}

/// The engine: its workers, port pool and event stream.
pub struct Engine {
    workers: Vec<mpsc::Sender<Cmd>>,
    /// Leg id → worker index.
    legs: Mutex<HashMap<u64, usize>>,
    next_leg: AtomicU64,
    ports: Arc<Mutex<Ports>>,
    pub counters: Arc<Counters>,
}

struct Ports {
    range: std::ops::RangeInclusive<u16>,
    used: BTreeSet<u16>,
    next: u16,
}

impl Ports {
    /// An even port whose pair is free, round-robin so a closed port is
    /// not reused at once (late packets of the last call).
    fn take(&mut self) -> Option<u16> {
        let (lo, hi) = (*self.range.start(), *self.range.end());
        let first = lo + (lo & 1);
        if first >= hi {
            return None;
        }
        let pairs = (hi - first).div_ceil(2);
        for _ in 0..pairs {
            let p = self.next.max(first);
            self.next = if p + 2 >= hi { first } else { p + 2 };
            if p < hi && !self.used.contains(&p) {
                self.used.insert(p);
                return Some(p);
            }
        }
        None
    }
}

impl Engine {
    /// Starts the workers; events arrive on the returned receiver.
    pub fn start(config: MediaConfig) -> Result<(Engine, mpsc::Receiver<MediaEvent>), MediaError> {
        let (events_tx, events) = mpsc::channel(EVENTS);
        let counters = Arc::new(Counters::default());
        let ports = Arc::new(Mutex::new(Ports {
            next: *config.ports.start(),
            range: config.ports.clone(),
            used: BTreeSet::new(),
        }));
        if config.realtime.is_some() && config.cpus.is_empty() {
            tracing::warn!(
                "[sip] media_realtime without media_cpus: real-time media threads take their CPU from everything else on it (docs/benchmarks.md, \"Media in real time\")"
            );
        }
        let mut workers = Vec::new();
        for n in 0..config.workers.max(1) {
            let (tx, rx) = mpsc::channel(COMMANDS);
            let (bind, events, counters, ports, interval) = (
                config.bind,
                events_tx.clone(),
                counters.clone(),
                ports.clone(),
                config.report_interval,
            );
            let (nice, cpus, realtime) = (config.nice, config.cpus.clone(), config.realtime);
            std::thread::Builder::new()
                .name(format!("sb-media-{n}"))
                .spawn(move || {
                    set_nice(nice);
                    if let Err(error) = crate::support::thread::set_affinity(&cpus) {
                        tracing::warn!(?cpus, %error, "the media threads run on any CPU");
                    }
                    // Pinned first: a real-time thread never runs where
                    // it was not meant to.
                    if let Some(priority) = realtime
                        && let Err(error) = crate::support::thread::set_realtime(priority)
                    {
                        tracing::warn!(priority, %error, "the media threads are not real-time (that needs CAP_SYS_NICE, and RLIMIT_RTPRIO or the cgroup's real-time budget may refuse it)");
                    }
                    // The worker's state never leaves its thread.
                    let worker = Worker {
                        bind,
                        events,
                        counters,
                        ports,
                        legs: Rc::default(),
                        rooms: RefCell::default(),
                        interval,
                        epoch: std::time::Instant::now(),
                    };
                    worker.run(rx)
                })
                .map_err(|e| MediaError::Socket(format!("cannot start a media thread: {e}")))?;
            workers.push(tx);
        }
        let engine = Engine {
            workers,
            legs: Mutex::new(HashMap::new()),
            next_leg: AtomicU64::new(1),
            ports,
            counters,
        };
        Ok((engine, events))
    }

    fn worker_of(&self, leg: u64) -> Result<&mpsc::Sender<Cmd>, MediaError> {
        let index = *self
            .legs
            .lock()
            .recover()
            .get(&leg)
            .ok_or(MediaError::NoLeg)?;
        self.workers.get(index).ok_or(MediaError::Stopped)
    }

    /// Sends a command that needs no reply to the worker of `leg`.
    async fn tell(&self, leg: u64, cmd: Cmd) -> Result<(), MediaError> {
        self.worker_of(leg)?
            .send(cmd)
            .await
            .map_err(|_| MediaError::Stopped)
    }

    /// Opens a leg; returns its id and the local RTP address for the SDP.
    pub async fn open(&self, setup: LegSetup) -> Result<(u64, SocketAddr), MediaError> {
        let index = (setup.group % self.workers.len() as u64) as usize;
        let id = self.next_leg.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let worker = self.workers.get(index).ok_or(MediaError::Stopped)?;
        worker
            .send(Cmd::Open(Box::new(setup), id, tx))
            .await
            .map_err(|_| MediaError::Stopped)?;
        let addr = rx.await.map_err(|_| MediaError::Stopped)??;
        self.legs.lock().recover().insert(id, index);
        Ok((id, addr))
    }

    /// Points an open leg at the far end its answer named: where media
    /// goes, the codec, telephone events and both SRTP keys (a leg opened
    /// for an offer of ours before the answer came; its group stays).
    pub async fn retarget(&self, leg: u64, setup: LegSetup) -> Result<(), MediaError> {
        self.tell(leg, Cmd::Retarget(leg, Box::new(setup))).await
    }

    /// Relays two legs to each other.
    pub async fn bridge(&self, a: u64, b: u64) -> Result<(), MediaError> {
        let worker = self.worker_of(a)?;
        if !std::ptr::eq(worker, self.worker_of(b)?) {
            return Err(MediaError::NotSameGroup);
        }
        let (tx, rx) = oneshot::channel();
        worker
            .send(Cmd::Bridge(a, b, tx))
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)?
    }

    /// Ends a leg's bridge (both directions).
    pub async fn unbridge(&self, leg: u64) -> Result<(), MediaError> {
        self.tell(leg, Cmd::Unbridge(leg)).await
    }

    /// Plays `sound` into a leg (then `PlayDone` with `tag`), replacing
    /// anything playing.
    pub async fn play(&self, leg: u64, sound: Sound, tag: u64) -> Result<(), MediaError> {
        self.tell(leg, Cmd::Play(leg, sound, tag)).await
    }

    /// Puts a leg into conference room `room` (rooms are the engine
    /// caller's numbers; legs of one group share a worker, and so can
    /// share a room): every 20 ms each member hears the sum of the others
    /// (mix-minus), decoded and encoded in its own codec. A bridge or a
    /// tone of the leg ends; a leg in another room leaves it first.
    pub async fn join(&self, leg: u64, room: u64) -> Result<(), MediaError> {
        let (tx, rx) = oneshot::channel();
        self.worker_of(leg)?
            .send(Cmd::Join(leg, room, tx))
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await.map_err(|_| MediaError::Stopped)?
    }

    /// Takes a leg out of its room.
    pub async fn leave(&self, leg: u64) -> Result<(), MediaError> {
        self.tell(leg, Cmd::Leave(leg)).await
    }

    /// Records leg `leg` (what it says and hears) into `spec.sink` until
    /// it ends: its last piece says why. A recording already running on
    /// the leg ends first (`Stopped`).
    pub async fn record(&self, leg: u64, spec: RecordSpec) -> Result<(), MediaError> {
        self.tell(leg, Cmd::Record(leg, spec)).await
    }

    /// Ends leg `leg`'s recording (`Stopped`).
    pub async fn stop_record(&self, leg: u64) -> Result<(), MediaError> {
        self.tell(leg, Cmd::StopRecord(leg)).await
    }

    /// Pauses (keeps nothing) or resumes leg `leg`'s recording.
    pub async fn pause_record(&self, leg: u64, paused: bool) -> Result<(), MediaError> {
        self.tell(leg, Cmd::PauseRecord(leg, paused)).await
    }

    /// Stops the tone playing into a leg (no `PlayDone`).
    pub async fn stop_play(&self, leg: u64) -> Result<(), MediaError> {
        self.tell(leg, Cmd::StopPlay(leg)).await
    }

    /// The leg's statistics so far.
    pub async fn stats(&self, leg: u64) -> Result<LegStats, MediaError> {
        let (tx, rx) = oneshot::channel();
        self.worker_of(leg)?
            .send(Cmd::Stats(leg, tx))
            .await
            .map_err(|_| MediaError::Stopped)?;
        rx.await
            .map_err(|_| MediaError::Stopped)?
            .ok_or(MediaError::NoLeg)
    }

    /// Closes a leg and frees its ports.
    pub async fn close(&self, leg: u64) -> Result<(), MediaError> {
        let worker = self.worker_of(leg)?.clone();
        self.legs.lock().recover().remove(&leg);
        worker
            .send(Cmd::Close(leg))
            .await
            .map_err(|_| MediaError::Stopped)
    }

    /// Ports in use (two per leg).
    pub fn ports_in_use(&self) -> usize {
        self.ports.lock().recover().used.len() * 2
    }
}

/// One leg's state, owned by its worker.
struct Leg {
    setup: LegSetup,
    socket: Rc<UdpSocket>,
    port: u16,
    /// Where media goes now (the SDP's address until latched).
    remote: SocketAddr,
    latched: bool,
    rx: Option<Srtp>,
    tx: Option<Srtp>,
    out: Rewriter,
    detector: Detector,
    peer: Option<u64>,
    /// The conference room the leg is in, what it said waiting for the
    /// room's mixer (a jitter buffer: reordered, bounded), and the rest
    /// of a packet longer than one frame, decoded.
    room: Option<u64>,
    inbox: Jitter,
    pending: std::collections::VecDeque<[i16; FRAME]>,
    /// Bumped to stop a running tone.
    play_gen: u64,
    /// The leg's recording, if one runs.
    recorder: Option<Recorder>,
    task: tokio::task::JoinHandle<()>,
    /// RTCP: our socket (RTP port + 1), where reports go (latched like
    /// RTP), its receive task, and the statistics both ways.
    rtcp_socket: Rc<UdpSocket>,
    rtcp_remote: SocketAddr,
    rtcp_task: tokio::task::JoinHandle<()>,
    reception: Reception,
    /// SSRC of the peer's stream, once seen.
    peer_ssrc: Option<u32>,
    sent_packets: u32,
    sent_octets: u32,
    /// Payload bytes of authentic packets received.
    received_octets: u64,
    last_sent_ts: u32,
    peer_report: Option<Block>,
}

impl Leg {
    /// The next 20 ms of what this conference member said, in sequence
    /// order, decoded; `None` (silence) when it is lost, late or not yet
    /// there.
    fn next_room_frame(&mut self) -> Option<[i16; FRAME]> {
        if self.pending.is_empty()
            && let super::jitter::Frame::Audio(payload) = self.inbox.pop()
        {
            let decode = if self.setup.payload_type == 8 {
                g711::alaw_to_linear
            } else {
                g711::ulaw_to_linear
            };
            for chunk in payload.chunks(FRAME) {
                let mut frame = [0i16; FRAME];
                for (s, c) in frame.iter_mut().zip(chunk) {
                    *s = decode(*c);
                }
                self.pending.push_back(frame);
            }
        }
        self.pending.pop_front()
    }

    /// Forgets what waited for a room's mixer (joining or leaving one).
    fn clear_inbox(&mut self) {
        self.inbox = Jitter::new(ROOM_DEPTH);
        self.pending.clear();
    }

    /// Counts a packet sent with `payload` bytes at RTP time `ts`.
    fn sent(&mut self, payload: usize, ts: u32) {
        self.sent_packets = self.sent_packets.wrapping_add(1);
        self.sent_octets = self.sent_octets.wrapping_add(payload as u32);
        self.last_sent_ts = ts;
    }

    /// Sends one frame the host makes itself (a tone, a prompt, a room's
    /// mix) on the leg's own stream: renumbered, protected, counted. A
    /// frame that cannot be protected or sent is dropped.
    fn send_own(&mut self, packet: &mut Vec<u8>, payload: &[u8]) {
        let (seq, ts) = self.out.next_own(FRAME as u32);
        rtp::write(
            packet,
            false,
            self.setup.payload_type,
            seq,
            ts,
            self.out.ssrc(),
            payload,
        );
        if let Some(tx) = self.tx.as_mut()
            && tx.protect_rtp(packet).is_err()
        {
            return;
        }
        if self.socket.try_send_to(packet, self.remote).is_ok() {
            self.sent(FRAME, ts);
        }
        if let Some(r) = self.recorder.as_mut() {
            r.near(payload, self.setup.payload_type == 8);
        }
    }

    fn stats(&self) -> LegStats {
        let (expected, received) = self.reception.counts();
        LegStats {
            sent_packets: self.sent_packets,
            sent_octets: self.sent_octets,
            expected,
            received,
            received_octets: self.received_octets,
            jitter_ms: self.reception.jitter() / 8,
            peer_fraction_lost: self.peer_report.map(|b| b.fraction_lost),
            peer_jitter_ms: self.peer_report.map(|b| b.jitter / 8),
        }
    }
}

type Legs = Rc<RefCell<HashMap<u64, Leg>>>;

struct Worker {
    /// RTCP report period, and the clock reception statistics use.
    interval: Duration,
    epoch: std::time::Instant,
    bind: IpAddr,
    events: mpsc::Sender<MediaEvent>,
    counters: Arc<Counters>,
    ports: Arc<Mutex<Ports>>,
    legs: Legs,
    /// Conference rooms: their members, in join order.
    rooms: RefCell<HashMap<u64, Vec<u64>>>,
}

impl Worker {
    fn run(self, mut commands: mpsc::Receiver<Cmd>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start a media worker");
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        let me = Rc::new(self);
        local.block_on(&runtime, async move {
            tokio::task::spawn_local(reports(me.clone()));
            while let Some(cmd) = commands.recv().await {
                me.command(cmd).await;
            }
        });
    }

    fn emit(&self, event: MediaEvent) {
        if self.events.try_send(event).is_err() {
            self.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn command(self: &Rc<Self>, cmd: Cmd) {
        match cmd {
            Cmd::Open(setup, id, reply) => {
                let _ = reply.send(self.open(*setup, id).await);
            }
            Cmd::Stats(leg, reply) => {
                let _ = reply.send(self.legs.borrow().get(&leg).map(Leg::stats));
            }
            Cmd::Bridge(a, b, reply) => {
                let _ = reply.send(self.bridge(a, b));
            }
            Cmd::Unbridge(leg) => {
                let mut legs = self.legs.borrow_mut();
                let peer = legs.get_mut(&leg).and_then(|l| l.peer.take());
                if let Some(p) = peer.and_then(|p| legs.get_mut(&p)) {
                    p.peer = None;
                }
            }
            Cmd::Play(leg, sound, tag) => self.play(leg, sound, tag),
            Cmd::StopPlay(leg) => {
                if let Some(l) = self.legs.borrow_mut().get_mut(&leg) {
                    l.play_gen += 1;
                }
            }
            Cmd::Join(leg, room, reply) => {
                let _ = reply.send(self.join(leg, room));
            }
            Cmd::Leave(leg) => self.leave(leg),
            Cmd::Retarget(leg, setup) => {
                if let Some(l) = self.legs.borrow_mut().get_mut(&leg) {
                    l.remote = setup.remote;
                    l.rtcp_remote =
                        SocketAddr::new(setup.remote.ip(), setup.remote.port().wrapping_add(1));
                    l.latched = false;
                    // The far end keeping its key (a hold, a new address)
                    // keeps our receive context: its replay window and
                    // rollover count go on, so old packets stay refused.
                    let same_rx = matches!(
                        (&l.setup.srtp, &setup.srtp),
                        (Some((s0, k0, _)), Some((s1, k1, _))) if s0 == s1 && k0.same_as(k1)
                    );
                    let rx = l.rx.take();
                    (l.rx, l.tx) = match &setup.srtp {
                        Some((suite, theirs, ours)) => (
                            if same_rx {
                                rx
                            } else {
                                Some(Srtp::new(*suite, theirs))
                            },
                            Some(Srtp::new(*suite, ours)),
                        ),
                        None => (None, None),
                    };
                    l.setup = LegSetup {
                        group: l.setup.group,
                        ..*setup
                    };
                }
            }
            Cmd::Record(leg, spec) => self.record(leg, spec),
            Cmd::StopRecord(leg) => {
                if let Some(mut r) = self
                    .legs
                    .borrow_mut()
                    .get_mut(&leg)
                    .and_then(|l| l.recorder.take())
                {
                    r.finish(RecordEnd::Stopped);
                }
            }
            Cmd::PauseRecord(leg, paused) => {
                if let Some(r) = self
                    .legs
                    .borrow_mut()
                    .get_mut(&leg)
                    .and_then(|l| l.recorder.as_mut())
                {
                    r.pause(paused);
                }
            }
            Cmd::Close(leg) => {
                self.leave(leg);
                let mut legs = self.legs.borrow_mut();
                if let Some(mut r) = legs.get_mut(&leg).and_then(|l| l.recorder.take()) {
                    r.finish(RecordEnd::Closed);
                }
                if let Some(l) = legs.remove(&leg) {
                    l.task.abort();
                    l.rtcp_task.abort();
                    self.ports.lock().recover().used.remove(&l.port);
                    if let Some(p) = l.peer.and_then(|p| legs.get_mut(&p)) {
                        p.peer = None;
                    }
                }
            }
        }
    }

    async fn open(self: &Rc<Self>, setup: LegSetup, id: u64) -> Result<SocketAddr, MediaError> {
        let mut tries = 0;
        let (socket, rtcp_socket, port) = loop {
            let port = self
                .ports
                .lock()
                .recover()
                .take()
                .ok_or_else(|| MediaError::NoPorts("the media port range".into()))?;
            let pair = async {
                let rtp = UdpSocket::bind(SocketAddr::new(self.bind, port)).await?;
                let rtcp = UdpSocket::bind(SocketAddr::new(self.bind, port + 1)).await?;
                Ok::<_, std::io::Error>((rtp, rtcp))
            };
            match pair.await {
                Ok((rtp, rtcp)) => break (rtp, rtcp, port),
                Err(e) => {
                    // Taken by someone else: leave it marked and try another.
                    tries += 1;
                    if tries > 16 {
                        return Err(MediaError::Socket(e.to_string()));
                    }
                }
            }
        };
        let local = socket
            .local_addr()
            .map_err(|e| MediaError::Socket(e.to_string()))?;
        let socket = Rc::new(socket);
        let (rx, tx) = match &setup.srtp {
            Some((suite, theirs, ours)) => (
                Some(Srtp::new(*suite, theirs)),
                Some(Srtp::new(*suite, ours)),
            ),
            None => (None, None),
        };
        let mut seed = [0u8; 10];
        getrandom::fill(&mut seed)
            .map_err(|e| MediaError::Socket(format!("no randomness: {e}")))?;
        let out = Rewriter::new(
            u32::from_be_bytes([seed[0], seed[1], seed[2], seed[3]]),
            u16::from_be_bytes([seed[4], seed[5]]),
            u32::from_be_bytes([seed[6], seed[7], seed[8], seed[9]]),
        );
        let task = tokio::task::spawn_local(receive(self.clone(), id, socket.clone()));
        let rtcp_socket = Rc::new(rtcp_socket);
        let rtcp_task =
            tokio::task::spawn_local(receive_rtcp(self.clone(), id, rtcp_socket.clone()));
        let rtcp_remote = SocketAddr::new(setup.remote.ip(), setup.remote.port().wrapping_add(1));
        self.legs.borrow_mut().insert(
            id,
            Leg {
                rtcp_socket,
                rtcp_remote,
                rtcp_task,
                reception: Reception::default(),
                peer_ssrc: None,
                sent_packets: 0,
                sent_octets: 0,
                received_octets: 0,
                last_sent_ts: 0,
                peer_report: None,
                remote: setup.remote,
                room: None,
                inbox: Jitter::new(ROOM_DEPTH),
                pending: std::collections::VecDeque::new(),
                setup,
                socket,
                port,
                latched: false,
                rx,
                tx,
                out,
                detector: Detector::default(),
                peer: None,
                play_gen: 0,
                recorder: None,
                task,
            },
        );
        Ok(local)
    }

    fn join(self: &Rc<Self>, leg: u64, room: u64) -> Result<(), MediaError> {
        {
            let legs = self.legs.borrow();
            let l = legs.get(&leg).ok_or(MediaError::NoLeg)?;
            if !matches!(l.setup.payload_type, 0 | 8) {
                return Err(MediaError::Codec(l.setup.payload_type));
            }
            if l.room == Some(room) {
                return Ok(());
            }
        }
        let full = self
            .rooms
            .borrow()
            .get(&room)
            .is_some_and(|m| m.len() >= MAX_ROOM_MEMBERS);
        if full {
            return Err(MediaError::RoomFull);
        }
        self.leave(leg);
        {
            let mut legs = self.legs.borrow_mut();
            let peer = legs.get_mut(&leg).and_then(|l| l.peer.take());
            if let Some(p) = peer.and_then(|p| legs.get_mut(&p)) {
                p.peer = None;
            }
            if let Some(l) = legs.get_mut(&leg) {
                l.room = Some(room);
                l.clear_inbox();
                l.play_gen += 1;
            }
        }
        let mut rooms = self.rooms.borrow_mut();
        let members = rooms.entry(room).or_default();
        members.push(leg);
        if members.len() == 1 {
            tokio::task::spawn_local(mixer(self.clone(), room));
        }
        Ok(())
    }

    fn leave(&self, leg: u64) {
        let room = {
            let mut legs = self.legs.borrow_mut();
            let Some(l) = legs.get_mut(&leg) else { return };
            l.clear_inbox();
            l.room.take()
        };
        if let Some(room) = room {
            let mut rooms = self.rooms.borrow_mut();
            if let Some(members) = rooms.get_mut(&room) {
                members.retain(|m| *m != leg);
                if members.is_empty() {
                    rooms.remove(&room);
                }
            }
        }
    }

    fn bridge(&self, a: u64, b: u64) -> Result<(), MediaError> {
        let legs = self.legs.borrow();
        let (la, lb) = match (legs.get(&a), legs.get(&b)) {
            (Some(la), Some(lb)) if a != b => (la, lb),
            _ => return Err(MediaError::NoLeg),
        };
        if la.setup.group != lb.setup.group {
            return Err(MediaError::NotSameGroup);
        }
        for l in [la, lb] {
            if !matches!(l.setup.payload_type, 0 | 8) {
                return Err(MediaError::Codec(l.setup.payload_type));
            }
        }
        let in_rooms: Vec<u64> = [a, b]
            .into_iter()
            .filter(|id| legs.get(id).is_some_and(|l| l.room.is_some()))
            .collect();
        drop(legs);
        for id in in_rooms {
            self.leave(id);
        }
        let mut legs = self.legs.borrow_mut();
        for (leg, peer) in [(a, b), (b, a)] {
            if let Some(l) = legs.get_mut(&leg) {
                l.peer = Some(peer);
                l.play_gen += 1;
            }
        }
        Ok(())
    }

    fn record(self: &Rc<Self>, leg: u64, spec: RecordSpec) {
        let generation = {
            let mut legs = self.legs.borrow_mut();
            let Some(l) = legs.get_mut(&leg) else {
                // No leg: the recording ends before it starts.
                Recorder::new(spec, 0).finish(RecordEnd::Closed);
                return;
            };
            let generation = l.recorder.as_ref().map_or(1, |r| r.generation + 1);
            if let Some(mut old) = l.recorder.take() {
                old.finish(RecordEnd::Stopped);
            }
            l.recorder = Some(Recorder::new(spec, generation));
            generation
        };
        let me = self.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tick.tick().await;
                let mut legs = me.legs.borrow_mut();
                let Some(l) = legs.get_mut(&leg) else { return };
                let Some(r) = l.recorder.as_mut().filter(|r| r.generation == generation) else {
                    return;
                };
                if r.tick().is_some() || r.is_done() {
                    l.recorder = None;
                    return;
                }
            }
        });
    }

    fn play(self: &Rc<Self>, leg: u64, sound: Sound, tag: u64) {
        let generation = {
            let mut legs = self.legs.borrow_mut();
            let Some(l) = legs.get_mut(&leg) else { return };
            l.play_gen += 1;
            l.play_gen
        };
        let me = self.clone();
        tokio::task::spawn_local(async move {
            let (mut frames, count) = match &sound {
                Sound::Tone(tone, length) => {
                    (Some(tone.frames()), (length.as_millis() / 20).max(1))
                }
                Sound::Clip(_) | Sound::Audio(_) => (
                    None,
                    sound.ulaw().map_or(0, <[u8]>::len).div_ceil(FRAME) as u128,
                ),
            };
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut packet = Vec::with_capacity(rtp::HEADER + FRAME + 10);
            for i in 0..count {
                tick.tick().await;
                let mut legs = me.legs.borrow_mut();
                let Some(l) = legs.get_mut(&leg).filter(|l| l.play_gen == generation) else {
                    return;
                };
                let alaw = l.setup.payload_type == 8;
                let payload: Vec<u8> = match (&sound, frames.as_mut()) {
                    (Sound::Tone(..), Some(f)) => {
                        let pcm = f.next_frame();
                        if alaw {
                            pcm.iter().map(|s| g711::linear_to_alaw(*s)).collect()
                        } else {
                            pcm.iter().map(|s| g711::linear_to_ulaw(*s)).collect()
                        }
                    }
                    (Sound::Clip(_) | Sound::Audio(_), _) => {
                        let clip = sound.ulaw().unwrap_or_default();
                        let at = i as usize * FRAME;
                        let chunk = &clip[at..(at + FRAME).min(clip.len())];
                        // µ-law silence pads a short last frame.
                        let frame = chunk.iter().copied().chain(std::iter::repeat(0xFF));
                        if alaw {
                            frame.take(FRAME).map(g711::ulaw_to_alaw).collect()
                        } else {
                            frame.take(FRAME).collect()
                        }
                    }
                    (Sound::Tone(..), None) => return,
                };
                l.send_own(&mut packet, &payload);
            }
            me.emit(MediaEvent::PlayDone { leg, tag });
        });
    }
}

/// A leg's receive loop: every packet through the pipeline above.
async fn receive(worker: Rc<Worker>, id: u64, socket: Rc<UdpSocket>) {
    let mut buf = vec![0u8; rtp::MAX_PACKET + 64];
    let mut packet = Vec::with_capacity(rtp::MAX_PACKET + 64);
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        worker.counters.received.fetch_add(1, Ordering::Relaxed);
        packet.clear();
        packet.extend_from_slice(&buf[..n.min(buf.len())]);
        if let Err(e) = handle(&worker, id, from, &mut packet) {
            worker.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(leg = id, code = e.code(), "media packet dropped");
        }
    }
}

/// One received packet.
fn handle(
    worker: &Worker,
    id: u64,
    from: SocketAddr,
    packet: &mut Vec<u8>,
) -> Result<(), SrtpError> {
    if rtp::is_rtcp(packet) {
        // RTCP reports are not used yet; they are dropped unread.
        return Ok(());
    }
    let mut legs = worker.legs.borrow_mut();
    let Some(leg) = legs.get_mut(&id) else {
        return Ok(());
    };
    match leg.rx.as_mut() {
        Some(rx) => rx.unprotect_rtp(packet)?,
        // Plain RTP: only from the signalled address (anyone could send).
        None if from.ip() != leg.setup.remote.ip() => return Err(SrtpError::AuthFailed),
        None => {}
    }
    if !leg.latched || leg.remote != from {
        leg.latched = true;
        if leg.remote != from {
            leg.remote = from;
            worker.emit(MediaEvent::Latched { leg: id, to: from });
        }
    }
    let p = rtp::parse(packet).map_err(|_| SrtpError::Malformed)?;
    // Reception statistics follow the peer's current stream.
    if leg.peer_ssrc != Some(p.ssrc) {
        leg.peer_ssrc = Some(p.ssrc);
        leg.reception = Reception::default();
        // A new stream numbers afresh: a room's buffer starts over.
        leg.clear_inbox();
    }
    let arrival = (worker.epoch.elapsed().as_micros() / 125) as u32;
    leg.reception.packet(p.seq, p.timestamp, arrival);
    leg.received_octets = leg.received_octets.saturating_add(p.payload.len() as u64);
    if Some(p.payload_type) == leg.setup.dtmf
        && let Ok(Some(key)) = leg.detector.feed(p.timestamp, p.payload)
    {
        worker.emit(MediaEvent::Digit {
            leg: id,
            key: key.to_char(),
        });
    }
    if let Some(r) = leg.recorder.as_mut()
        && p.payload_type == leg.setup.payload_type
    {
        r.far(p.payload, leg.setup.payload_type == 8);
    }
    if leg.room.is_some() {
        // A conference member: its audio waits for the mixer in sequence
        // order (the jitter buffer).
        if p.payload_type == leg.setup.payload_type {
            leg.inbox.push(p.seq, p.payload);
            leg.inbox.trim(ROOM_MAX_WAITING);
        }
        return Ok(());
    }
    let Some(peer_id) = leg.peer else {
        return Ok(());
    };
    let (leg_codec, leg_dtmf) = (leg.setup.payload_type, leg.setup.dtmf);
    let (payload_type, mut payload) = (p.payload_type, p.payload.to_vec());
    let Some(peer) = legs.get_mut(&peer_id) else {
        return Ok(());
    };
    // Audio in the leg's codec goes out in the peer's: relayed as is when
    // they match, transcoded code by code (µ-law ↔ A-law) when not. Events
    // keep their payload under the peer's event type, or are dropped if the
    // peer has none.
    let payload_type = if Some(payload_type) == leg_dtmf {
        match peer.setup.dtmf {
            Some(pt) => pt,
            None => return Ok(()),
        }
    } else if payload_type == leg_codec {
        match (leg_codec, peer.setup.payload_type) {
            (0, 8) => g711::ulaw_to_alaw_in_place(&mut payload),
            (8, 0) => g711::alaw_to_ulaw_in_place(&mut payload),
            _ => {}
        }
        peer.setup.payload_type
    } else {
        // Neither the agreed codec nor events (comfort noise, …).
        return Ok(());
    };
    if payload_type == peer.setup.payload_type
        && let Some(r) = peer.recorder.as_mut()
    {
        r.near(&payload, payload_type == 8);
    }
    let Some((marker, seq, ts)) = peer.out.map(&p) else {
        return Ok(());
    };
    rtp::write(
        packet,
        marker,
        payload_type,
        seq,
        ts,
        peer.out.ssrc(),
        &payload,
    );
    if let Some(tx) = peer.tx.as_mut() {
        tx.protect_rtp(packet)?;
    }
    if peer.socket.try_send_to(packet, peer.remote).is_ok() {
        peer.sent(payload.len(), ts);
        worker.counters.relayed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// A conference room's mixer: every 20 ms, one frame from each member (or
/// silence), and to each member the sum of the others in its own codec,
/// numbered and protected as its own stream. Ends when the room empties.
async fn mixer(worker: Rc<Worker>, room: u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut outs: Vec<Vec<i16>> = Vec::new();
    let mut packet = Vec::with_capacity(rtp::HEADER + FRAME + 16);
    let mut payload = Vec::with_capacity(FRAME);
    loop {
        tick.tick().await;
        let Some(members) = worker.rooms.borrow().get(&room).cloned() else {
            return;
        };
        let mut legs = worker.legs.borrow_mut();
        let frames: Vec<[i16; FRAME]> = members
            .iter()
            .map(|m| {
                legs.get_mut(m)
                    .and_then(Leg::next_room_frame)
                    .unwrap_or([0; FRAME])
            })
            .collect();
        let inputs: Vec<&[i16]> = frames.iter().map(|f| &f[..]).collect();
        mix::mix_minus(&inputs, &mut outs);
        for (m, pcm) in members.iter().zip(&outs) {
            let Some(l) = legs.get_mut(m) else { continue };
            payload.clear();
            match l.setup.payload_type {
                8 => payload.extend(pcm.iter().map(|s| g711::linear_to_alaw(*s))),
                _ => payload.extend(pcm.iter().map(|s| g711::linear_to_ulaw(*s))),
            }
            l.send_own(&mut packet, &payload);
        }
    }
}

/// A leg's RTCP receive loop: authentic reports update what the peer says
/// of our stream and latch where reports go.
async fn receive_rtcp(worker: Rc<Worker>, id: u64, socket: Rc<UdpSocket>) {
    let mut buf = vec![0u8; rtcp::MAX_PACKET + 64];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let mut packet = buf[..n.min(buf.len())].to_vec();
        let mut legs = worker.legs.borrow_mut();
        let Some(leg) = legs.get_mut(&id) else {
            return;
        };
        let authentic = match leg.rx.as_mut() {
            Some(rx) => rx.unprotect_rtcp(&mut packet).is_ok(),
            None => from.ip() == leg.setup.remote.ip(),
        };
        let reports = authentic.then(|| rtcp::parse(&packet).ok()).flatten();
        let Some(reports) = reports else {
            worker.counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        leg.rtcp_remote = from;
        let ours = leg.out.ssrc();
        if let Some(b) = reports.blocks.iter().find(|b| b.ssrc == ours) {
            leg.peer_report = Some(*b);
        }
    }
}

/// Every report interval, an SR (or RR, before we sent anything) from each
/// leg, with a block on what its peer sends.
async fn reports(worker: Rc<Worker>) {
    let mut tick = tokio::time::interval(worker.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ntp = ntp_now();
        let mut legs = worker.legs.borrow_mut();
        for leg in legs.values_mut() {
            let ssrc = leg.out.ssrc();
            let block = leg.peer_ssrc.map(|peer| leg.reception.block(peer, 0, 0));
            let mut packet = if leg.sent_packets > 0 {
                rtcp::sender_report(
                    ssrc,
                    ntp,
                    leg.last_sent_ts,
                    leg.sent_packets,
                    leg.sent_octets,
                    block.as_ref(),
                )
            } else if let Some(b) = block {
                rtcp::receiver_report(ssrc, &b)
            } else {
                continue;
            };
            if let Some(tx) = leg.tx.as_mut()
                && tx.protect_rtcp(&mut packet).is_err()
            {
                continue;
            }
            let _ = leg.rtcp_socket.try_send_to(&packet, leg.rtcp_remote);
        }
    }
}

/// Sets a media thread's nice value; refused, it runs at 0 and says so.
fn set_nice(nice: i32) {
    if let Err(error) = crate::support::thread::set_nice(nice) {
        tracing::warn!(nice, %error, "the media threads keep their priority (raising it needs CAP_SYS_NICE)");
    }
}

/// Wall-clock time as a 64-bit NTP timestamp.
fn ntp_now() -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE: Suite = Suite::AesCm128HmacSha1_80;

    /// A test phone: a socket and its own SRTP contexts.
    struct Phone {
        socket: UdpSocket,
        tx: Option<Srtp>,
        rx: Option<Srtp>,
    }

    impl Phone {
        async fn at(ip: &str, keys: Option<(&MasterKey, &MasterKey)>) -> Phone {
            Phone {
                socket: UdpSocket::bind(format!("{ip}:0")).await.unwrap(),
                tx: keys.map(|(send, _)| Srtp::new(SUITE, send)),
                rx: keys.map(|(_, recv)| Srtp::new(SUITE, recv)),
            }
        }

        async fn send(&mut self, to: SocketAddr, pt: u8, seq: u16, ts: u32, payload: &[u8]) {
            let mut p = Vec::new();
            rtp::write(&mut p, false, pt, seq, ts, 0xaaaa_0001, payload);
            if let Some(tx) = self.tx.as_mut() {
                tx.protect_rtp(&mut p).unwrap();
            }
            self.socket.send_to(&p, to).await.unwrap();
        }

        /// The next packet, decrypted: (seq, ssrc, pt, payload).
        async fn recv(&mut self) -> Option<(u16, u32, u8, Vec<u8>)> {
            let mut buf = vec![0u8; 2048];
            let got =
                tokio::time::timeout(Duration::from_secs(2), self.socket.recv_from(&mut buf)).await;
            let (n, _) = got.ok()?.ok()?;
            let mut p = buf[..n].to_vec();
            if let Some(rx) = self.rx.as_mut() {
                rx.unprotect_rtp(&mut p).ok()?;
            }
            let parsed = rtp::parse(&p).ok()?;
            Some((
                parsed.seq,
                parsed.ssrc,
                parsed.payload_type,
                parsed.payload.to_vec(),
            ))
        }
    }

    fn engine(ports: std::ops::RangeInclusive<u16>) -> (Engine, mpsc::Receiver<MediaEvent>) {
        Engine::start(MediaConfig {
            nice: 0,
            workers: 2,
            bind: "127.0.0.1".parse().unwrap(),
            ports,
            report_interval: Duration::from_millis(200),
            cpus: Vec::new(),
            realtime: None,
        })
        .unwrap()
    }

    async fn next_event(
        events: &mut mpsc::Receiver<MediaEvent>,
        want: impl Fn(&MediaEvent) -> bool,
    ) -> MediaEvent {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(2), events.recv())
                .await
                .expect("no event in time")
                .expect("engine stopped");
            if want(&e) {
                return e;
            }
        }
    }

    /// Two SRTP phones bridged: audio arrives byte-identical, renumbered
    /// under the other leg's SSRC and key; digits are reported; forged
    /// packets neither pass nor move the leg.
    #[tokio::test]
    async fn t2_a_bridge_relays_srtp_byte_identical_and_reports_digits() {
        let (engine, mut events) = engine(41_000..=41_199);
        let keys: Vec<MasterKey> = (0..4).map(|_| MasterKey::generate().unwrap()).collect();
        // Phone A sends with keys[0], receives with keys[1]; B with 2 and 3.
        let mut a = Phone::at("127.0.0.1", Some((&keys[0], &keys[1]))).await;
        let mut b = Phone::at("127.0.0.1", Some((&keys[2], &keys[3]))).await;
        let setup = |phone: &Phone, theirs: &MasterKey, ours: &MasterKey| LegSetup {
            group: 7,
            remote: phone.socket.local_addr().unwrap(),
            payload_type: 0,
            dtmf: Some(101),
            srtp: Some((SUITE, theirs.clone(), ours.clone())),
        };
        let (leg_a, addr_a) = engine.open(setup(&a, &keys[0], &keys[1])).await.unwrap();
        let (leg_b, addr_b) = engine.open(setup(&b, &keys[2], &keys[3])).await.unwrap();
        engine.bridge(leg_a, leg_b).await.unwrap();

        let frames: Vec<Vec<u8>> = (0..50u8)
            .map(|n| (0..160u8).map(|i| i.wrapping_mul(n)).collect())
            .collect();
        let mut got = Vec::new();
        for (n, f) in frames.iter().enumerate() {
            a.send(addr_a, 0, 60_000 + n as u16, n as u32 * 160, f)
                .await;
            got.push(b.recv().await.expect("relayed packet"));
        }
        let payloads: Vec<Vec<u8>> = got.iter().map(|g| g.3.clone()).collect();
        assert_eq!(payloads, frames, "byte-identical µ-law");
        assert!(
            got.iter().all(|g| g.1 != 0xaaaa_0001),
            "B sees our SSRC, not A's"
        );
        assert!(
            got.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1)),
            "contiguous"
        );

        // Digits from B are reported on B's leg (and relayed to A).
        for (marker_ts, payload) in
            super::super::dtmf::press(super::super::dtmf::Key::from_char('5').unwrap(), 60, 10)
                .into_iter()
                .enumerate()
        {
            b.send(addr_b, 101, 500 + marker_ts as u16, 8_000, &payload.1)
                .await;
        }
        let digit = next_event(&mut events, |e| matches!(e, MediaEvent::Digit { .. })).await;
        assert_eq!(
            digit,
            MediaEvent::Digit {
                leg: leg_b,
                key: '5'
            }
        );

        // A forger with the wrong key: refused, counted, nothing latched.
        let refused = engine.counters.refused.load(Ordering::Relaxed);
        let mut forger = Phone::at("127.0.0.1", Some((&keys[3], &keys[3]))).await;
        for n in 0..20u16 {
            forger.send(addr_a, 0, 61_000 + n, 0, &[1; 160]).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(engine.counters.refused.load(Ordering::Relaxed) >= refused + 20);
        // B's audio still reaches A, not the forger.
        while a.recv().await.is_some_and(|p| p.2 == 101) {}
        b.send(addr_b, 0, 600, 9_000, &[7; 160]).await;
        let back = a.recv().await.expect("B to A");
        assert_eq!(back.3, vec![7; 160]);

        // A tone into A: 10 packets of audible µ-law, then PlayDone.
        engine.unbridge(leg_a).await.unwrap();
        engine
            .play(
                leg_a,
                Sound::Tone(Tone::dtmf('1').unwrap(), Duration::from_millis(200)),
                7,
            )
            .await
            .unwrap();
        let mut tone = Vec::new();
        for _ in 0..10 {
            tone.push(a.recv().await.expect("tone packet"));
        }
        assert!(tone.iter().all(|p| p.3.iter().any(|c| *c != 0xff)));
        next_event(&mut events, |e| {
            *e == MediaEvent::PlayDone { leg: leg_a, tag: 7 }
        })
        .await;

        assert_eq!(engine.ports_in_use(), 4);
        engine.close(leg_a).await.unwrap();
        engine.close(leg_b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(engine.ports_in_use(), 0);
        assert_eq!(engine.bridge(leg_a, leg_b).await, Err(MediaError::NoLeg));
    }

    /// Plain RTP (a trunk the admin allowed): only from the signalled IP;
    /// a leg of another call cannot be bridged in; a codec mismatch is
    /// refused until transcoding exists.
    #[tokio::test]
    async fn plain_rtp_only_from_the_signalled_address_and_bridges_stay_in_their_call() {
        let (engine, _events) = engine(41_200..=41_399);
        let mut trunk = Phone::at("127.0.0.1", None).await;
        let mut other = Phone::at("127.0.0.1", None).await;
        let plain = |phone: &Phone, group: u64, payload_type: u8| LegSetup {
            group,
            remote: phone.socket.local_addr().unwrap(),
            payload_type,
            dtmf: None,
            srtp: None,
        };
        let (t, addr_t) = engine.open(plain(&trunk, 1, 0)).await.unwrap();
        let (o, _) = engine.open(plain(&other, 1, 0)).await.unwrap();
        let (elsewhere, _) = engine.open(plain(&other, 2, 0)).await.unwrap();
        assert_eq!(
            engine.bridge(t, elsewhere).await,
            Err(MediaError::NotSameGroup)
        );
        let (opus, _) = engine.open(plain(&other, 1, 111)).await.unwrap();
        assert_eq!(engine.bridge(t, opus).await, Err(MediaError::Codec(111)));
        assert_eq!(engine.bridge(t, t).await, Err(MediaError::NoLeg));
        engine.bridge(t, o).await.unwrap();
        // From another address: dropped.
        let mut spoof = Phone::at("127.0.0.2", None).await;
        spoof.send(addr_t, 0, 1, 0, &[9; 160]).await;
        trunk.send(addr_t, 0, 2, 160, &[3; 160]).await;
        let p = other.recv().await.expect("the trunk's packet");
        assert_eq!(
            p.3,
            vec![3; 160],
            "the spoofed packet was not relayed first"
        );
        assert!(engine.counters.refused.load(Ordering::Relaxed) >= 1);
    }

    /// A µ-law phone bridged to an A-law phone: each hears the other's
    /// audio transcoded code by code; payload types are each leg's own;
    /// events keep their payload under the peer's event type.
    #[tokio::test]
    async fn a_bridge_transcodes_between_mu_law_and_a_law() {
        let (engine, _events) = engine(41_400..=41_599);
        let mut mu = Phone::at("127.0.0.1", None).await;
        let mut a = Phone::at("127.0.0.1", None).await;
        let plain = |phone: &Phone, payload_type: u8, dtmf: u8| LegSetup {
            group: 3,
            remote: phone.socket.local_addr().unwrap(),
            payload_type,
            dtmf: Some(dtmf),
            srtp: None,
        };
        let (leg_mu, addr_mu) = engine.open(plain(&mu, 0, 101)).await.unwrap();
        let (leg_a, addr_a) = engine.open(plain(&a, 8, 96)).await.unwrap();
        engine.bridge(leg_mu, leg_a).await.unwrap();
        let speech: Vec<u8> = (0..=255u8).collect();
        mu.send(addr_mu, 0, 10, 0, &speech[..160]).await;
        let got = a.recv().await.expect("transcoded to A-law");
        assert_eq!(got.2, 8);
        let want: Vec<u8> = speech[..160]
            .iter()
            .map(|c| g711::ulaw_to_alaw(*c))
            .collect();
        assert_eq!(got.3, want);
        a.send(addr_a, 8, 20, 0, &speech[96..]).await;
        let got = mu.recv().await.expect("transcoded to µ-law");
        assert_eq!(got.2, 0);
        let want: Vec<u8> = speech[96..]
            .iter()
            .map(|c| g711::alaw_to_ulaw(*c))
            .collect();
        assert_eq!(got.3, want);
        // An event: same payload, the A-law leg's event type.
        mu.send(addr_mu, 101, 11, 160, &[5, 0x0a, 0, 160]).await;
        let got = a.recv().await.expect("event relayed");
        assert_eq!((got.2, got.3), (96, vec![5, 0x0a, 0, 160]));
        // Anything else (comfort noise, PT 13) is not relayed.
        mu.send(addr_mu, 13, 12, 320, &[40]).await;
        mu.send(addr_mu, 0, 13, 480, &[0xff; 160]).await;
        assert_eq!(
            a.recv().await.expect("audio").2,
            8,
            "the CN packet was skipped"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_room_mixes_each_member_the_others_in_its_own_codec() {
        let (engine, _events) = engine(41_600..=41_799);
        let mut phones = Vec::new();
        let mut legs = Vec::new();
        for pt in [0u8, 0, 8] {
            let phone = Phone::at("127.0.0.1", None).await;
            let (leg, addr) = engine
                .open(LegSetup {
                    group: 5,
                    remote: phone.socket.local_addr().unwrap(),
                    payload_type: pt,
                    dtmf: None,
                    srtp: None,
                })
                .await
                .unwrap();
            engine.join(leg, 77).await.unwrap();
            phones.push((phone, addr));
            legs.push(leg);
        }
        // A says 1000, B says 3000 (steady µ-law), C (A-law) is silent.
        let loud = |v: i16| vec![g711::linear_to_ulaw(v); FRAME];
        for n in 0..25u16 {
            for (i, v) in [(0usize, 1000i16), (1, 3000)] {
                let (phone, addr) = &mut phones[i];
                let addr = *addr;
                phone.send(addr, 0, n, u32::from(n) * 160, &loud(v)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What each hears, decoded in its codec, past the first frames.
        let mut heard = Vec::new();
        for (i, (phone, _)) in phones.iter_mut().enumerate() {
            let mut peak = Vec::new();
            // The mixer sends every 20 ms for as long as the room lives:
            // what came during the talk (the socket kept it), and no more.
            for _ in 0..25 {
                let Some(p) = phone.recv().await else { break };
                let decode = if p.2 == 8 {
                    g711::alaw_to_linear
                } else {
                    g711::ulaw_to_linear
                };
                assert_eq!(p.2, if i == 2 { 8 } else { 0 }, "own codec");
                peak.push(p.3.iter().map(|c| decode(*c)).max().unwrap_or(0));
            }
            peak.sort_unstable();
            heard.push(peak[peak.len() / 2]);
        }
        let near = |got: i16, want: i16| (got - want).abs() <= want / 16;
        assert!(near(heard[0], 3000), "A hears B: {heard:?}");
        assert!(near(heard[1], 1000), "B hears A: {heard:?}");
        assert!(near(heard[2], 4000), "C hears both: {heard:?}");
        // A bridge takes two members out; the last one leaves alone.
        engine.bridge(legs[0], legs[1]).await.unwrap();
        engine.leave(legs[2]).await.unwrap();
        let (phone, addr) = &mut phones[0];
        let addr = *addr;
        phone.send(addr, 0, 100, 16_000, &loud(1000)).await;
        let got = phones[1].0.recv().await.expect("relayed over the bridge");
        assert_eq!(got.3, loud(1000), "relayed as is, not mixed");
        engine.join(legs[2], 77).await.unwrap();
        assert_eq!(
            engine.join(legs[2], 77).await,
            Ok(()),
            "joining twice is no change"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_room_mixes_a_members_reordered_packets_in_sequence_order() {
        let (engine, _events) = engine(42_000..=42_199);
        let mut phones = Vec::new();
        for _ in 0..2 {
            let phone = Phone::at("127.0.0.1", None).await;
            let (leg, addr) = engine
                .open(LegSetup {
                    group: 9,
                    remote: phone.socket.local_addr().unwrap(),
                    payload_type: 0,
                    dtmf: None,
                    srtp: None,
                })
                .await
                .unwrap();
            engine.join(leg, 78).await.unwrap();
            phones.push((phone, addr));
        }
        // A says a rising level, one step a frame, but its packets arrive
        // in swapped pairs (1, 0, 3, 2, …): B hears the steps in order.
        let level =
            |n: u16| vec![g711::linear_to_ulaw(300 * (i16::try_from(n).unwrap() + 1)); FRAME];
        for pair in 0..8u16 {
            for n in [2 * pair + 1, 2 * pair] {
                let (phone, addr) = &mut phones[0];
                let addr = *addr;
                phone.send(addr, 0, n, u32::from(n) * 160, &level(n)).await;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let mut heard = Vec::new();
        for _ in 0..30 {
            let Some(p) = phones[1].0.recv().await else {
                break;
            };
            let peak =
                p.3.iter()
                    .map(|c| g711::ulaw_to_linear(*c))
                    .max()
                    .unwrap_or(0);
            if peak > 100 {
                heard.push(peak);
            }
        }
        assert!(heard.len() >= 12, "B heard A: {heard:?}");
        assert!(
            heard.windows(2).all(|w| w[0] < w[1]),
            "in sequence order, not arrival order: {heard:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_library_clip_plays_frame_by_frame_and_transcoded_for_a_law() {
        let (engine, mut events) = engine(41_800..=41_999);
        let mut a = Phone::at("127.0.0.1", None).await;
        let (leg, _) = engine
            .open(LegSetup {
                group: 1,
                remote: a.socket.local_addr().unwrap(),
                payload_type: 8,
                dtmf: None,
                srtp: None,
            })
            .await
            .unwrap();
        let clip = super::super::prompts::get("digit-7").unwrap();
        engine.play(leg, Sound::Clip(clip), 3).await.unwrap();
        let mut heard = Vec::new();
        while heard.len() < clip.len() {
            let p = a.recv().await.expect("a frame");
            assert_eq!(p.2, 8);
            heard.extend(p.3);
        }
        let want: Vec<u8> = clip.iter().map(|c| g711::ulaw_to_alaw(*c)).collect();
        assert_eq!(heard, want);
        next_event(&mut events, |e| *e == MediaEvent::PlayDone { leg, tag: 3 }).await;
    }

    /// A phone with an RTCP socket on its RTP port + 1.
    async fn phone_with_rtcp(keys: (&MasterKey, &MasterKey)) -> (Phone, UdpSocket) {
        for _ in 0..50 {
            let phone = Phone::at("127.0.0.1", Some(keys)).await;
            let port = phone.socket.local_addr().unwrap().port();
            if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port.wrapping_add(1))).await {
                return (phone, rtcp);
            }
        }
        panic!("no free port pair");
    }

    /// Loss and jitter counted from what a phone sends, SRTCP reports sent
    /// to the phone with them, and the phone's own report taken in.
    #[tokio::test]
    async fn statistics_and_srtcp_reports_flow_both_ways() {
        let (engine, mut events) = engine(41_600..=41_799);
        let keys: Vec<MasterKey> = (0..2).map(|_| MasterKey::generate().unwrap()).collect();
        let (mut phone, rtcp) = phone_with_rtcp((&keys[0], &keys[1])).await;
        let setup = LegSetup {
            group: 9,
            remote: phone.socket.local_addr().unwrap(),
            payload_type: 0,
            dtmf: None,
            srtp: Some((SUITE, keys[0].clone(), keys[1].clone())),
        };
        let (leg, addr) = engine.open(setup).await.unwrap();
        // 20 packets with 5 missing (seq 3, 6, 9, 12, 15).
        for seq in (0..20u16).filter(|s| *s == 0 || s % 3 != 0) {
            phone
                .send(addr, 0, seq, u32::from(seq) * 160, &[0xff; 160])
                .await;
        }
        engine
            .play(
                leg,
                Sound::Tone(Tone::BUSY_US, Duration::from_millis(100)),
                1,
            )
            .await
            .unwrap();
        next_event(&mut events, |e| *e == MediaEvent::PlayDone { leg, tag: 1 }).await;
        // Wait (bounded) until the engine has read all 14 packets.
        let mut stats = engine.stats(leg).await.unwrap();
        for _ in 0..100 {
            if stats.received >= 14 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            stats = engine.stats(leg).await.unwrap();
        }
        assert_eq!((stats.expected, stats.received), (20, 14));
        assert_eq!(stats.sent_packets, 5, "five 20 ms tone frames");
        assert_eq!(stats.sent_octets, 5 * 160);
        // The leg's SRTCP sender report reaches the phone's RTCP port and
        // reports the phone's loss.
        // (A receiver report may come first, from before the tone.)
        let mut rx = Srtp::new(SUITE, &keys[1]);
        let mut buf = vec![0u8; 1500];
        let mut parsed = rtcp::Reports::default();
        for _ in 0..10 {
            let (n, _) = tokio::time::timeout(Duration::from_secs(2), rtcp.recv_from(&mut buf))
                .await
                .expect("a report in time")
                .unwrap();
            let mut report = buf[..n].to_vec();
            rx.unprotect_rtcp(&mut report).unwrap();
            parsed = rtcp::parse(&report).unwrap();
            if parsed.ntp.is_some() {
                break;
            }
        }
        assert!(parsed.ntp.is_some(), "a sender report");
        let block = parsed
            .blocks
            .first()
            .expect("a block on the phone's stream");
        assert_eq!(block.ssrc, 0xaaaa_0001);
        assert_eq!(block.cumulative_lost, 6);
        // The phone's receiver report on our stream is taken in.
        let ours = parsed.sender.unwrap();
        let mut tx = Srtp::new(SUITE, &keys[0]);
        let mut rr = rtcp::receiver_report(
            0xaaaa_0001,
            &Block {
                ssrc: ours,
                fraction_lost: 64,
                cumulative_lost: 2,
                highest_seq: 5,
                jitter: 80,
                last_sr: 0,
                delay_since_last_sr: 0,
            },
        );
        tx.protect_rtcp(&mut rr).unwrap();
        let rtcp_addr = SocketAddr::new(addr.ip(), addr.port() + 1);
        rtcp.send_to(&rr, rtcp_addr).await.unwrap();
        // A forged report (wrong key) is not.
        let mut forged = rtcp::receiver_report(
            1,
            &Block {
                fraction_lost: 255,
                ..*block
            },
        );
        Srtp::new(SUITE, &keys[1])
            .protect_rtcp(&mut forged)
            .unwrap();
        rtcp.send_to(&forged, rtcp_addr).await.unwrap();
        let mut stats = engine.stats(leg).await.unwrap();
        for _ in 0..100 {
            if stats.peer_fraction_lost.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            stats = engine.stats(leg).await.unwrap();
        }
        // Give the forged report time to arrive too, then look again.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = engine.stats(leg).await.unwrap();
        assert_eq!(stats.peer_fraction_lost, Some(64));
        assert_eq!(stats.peer_jitter_ms, Some(10));
    }

    #[test]
    fn the_port_pool_hands_out_even_pairs_and_runs_dry() {
        let mut ports = Ports {
            range: 10_001..=10_008,
            used: BTreeSet::new(),
            next: 0,
        };
        let got: Vec<u16> = std::iter::from_fn(|| ports.take()).collect();
        assert_eq!(got, vec![10_002, 10_004, 10_006]);
        ports.used.remove(&10_004);
        assert_eq!(ports.take(), Some(10_004));
        assert_eq!(ports.take(), None);
    }
}
