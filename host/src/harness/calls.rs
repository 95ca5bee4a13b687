//! Synthetic calls for plugin tests (SPEC P3): phones that are real UDP
//! sockets on loopback speaking plain RTP (G.711 µ-law, RFC 4733 keys),
//! and a signalling side that stands in for SIP. A test rings a plugin
//! with [`CallRig::ring`], presses keys and listens on the [`Phone`];
//! numbers the plugin dials are answered by the phones registered with
//! [`CallRig::directory`]. Call events reach the plugin through the same
//! delivery path as in the server (`Runtime::deliver_call_events`).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::call::legs::Cause;
use crate::media::dtmf::{self, Key};
use crate::media::rtp;
use crate::runtime::{Runtime, WeakRuntime};
use crate::support::sync::Recover as _;
use crate::telephony::Telephony;
use crate::telephony::signalling::{Inbound, MediaOffer, Outbound, Signalling};

/// RFC 4733 payload type the phones use.
pub const DTMF_PT: u8 = 101;
/// How often the rig's delivery loop looks for call events when nothing
/// wakes it (re-deliveries after a backoff).
const POLL: Duration = Duration::from_millis(50);

/// What the signalling side was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Answered(String),
    Ended(String, Cause),
    /// A call was placed to a number (as the policy read it).
    Dialled(String, String),
    /// The phone of a leg heard its transfer failed (declined, or not
    /// settled in time).
    TransferFailed(String, Cause),
}

/// A test phone: a UDP socket on loopback.
pub struct Phone {
    socket: UdpSocket,
    host: Option<SocketAddr>,
    seq: u16,
    ts: u32,
    ssrc: u32,
}

impl Phone {
    /// A phone on a free loopback port.
    pub fn new() -> std::io::Result<Phone> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(Phone {
            socket,
            host: None,
            seq: 1000,
            ts: 160_000,
            ssrc: u32::from_str_radix(&crate::support::encoding::random_hex(4), 16).unwrap_or(1),
        })
    }

    /// The phone's media as its SDP would offer it: µ-law, RFC 4733, plain.
    pub fn offer(&self) -> std::io::Result<MediaOffer> {
        Ok(MediaOffer {
            remote: self.socket.local_addr()?,
            payload_type: 0,
            dtmf: Some(DTMF_PT),
            srtp: None,
        })
    }

    /// Where the host takes this phone's media.
    pub fn connect(&mut self, host: SocketAddr) {
        self.host = Some(host);
    }

    fn send(&mut self, marker: bool, pt: u8, ts: u32, payload: &[u8]) -> std::io::Result<()> {
        let host = self
            .host
            .ok_or_else(|| std::io::Error::other("the phone is not connected"))?;
        let mut packet = Vec::with_capacity(rtp::HEADER + payload.len());
        rtp::write(&mut packet, marker, pt, self.seq, ts, self.ssrc, payload);
        self.seq = self.seq.wrapping_add(1);
        self.socket.send_to(&packet, host)?;
        Ok(())
    }

    /// Sends 20 ms of µ-law audio.
    pub fn send_audio(&mut self, payload: &[u8]) -> std::io::Result<()> {
        let ts = self.ts;
        self.ts = self.ts.wrapping_add(160);
        self.send(false, 0, ts, payload)
    }

    /// Presses `key` for 100 ms (RFC 4733 packets, end sent three times).
    pub fn press(&mut self, key: char) -> std::io::Result<()> {
        let key = Key::from_char(key)
            .ok_or_else(|| std::io::Error::other(format!("{key:?} is not a key")))?;
        let ts = self.ts;
        for (i, (_end, payload)) in dtmf::press(key, 100, 10).into_iter().enumerate() {
            self.send(i == 0, DTMF_PT, ts, &payload)?;
        }
        self.ts = self.ts.wrapping_add(800);
        Ok(())
    }

    /// Presses each key of `keys`, 150 ms apart.
    pub fn dial_keys(&mut self, keys: &str) -> std::io::Result<()> {
        for k in keys.chars() {
            self.press(k)?;
            std::thread::sleep(Duration::from_millis(150));
        }
        Ok(())
    }

    /// Waits (blocking, up to `limit`) for the next RTP payload of
    /// `payload_type`.
    pub fn next_audio(&self, limit: Duration, payload_type: u8) -> Option<Vec<u8>> {
        let end = Instant::now() + limit;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf)
                && let Ok(p) = rtp::parse(&buf[..n])
                && p.payload_type == payload_type
            {
                return Some(p.payload.to_vec());
            }
        }
        None
    }

    /// The RTP payloads (of `payload_type`) received within `window`.
    pub fn listen(&self, window: Duration, payload_type: u8) -> Vec<Vec<u8>> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if let Ok((n, _)) = self.socket.recv_from(&mut buf)
                && let Ok(p) = rtp::parse(&buf[..n])
                && p.payload_type == payload_type
            {
                out.push(p.payload.to_vec());
            }
        }
        out
    }
}

/// Synthetic signalling and a delivery loop for one harness.
pub struct CallRig {
    telephony: Arc<Telephony>,
    side: Arc<Side>,
    loop_task: tokio::task::JoinHandle<()>,
}

struct Side {
    telephony: Weak<Telephony>,
    directory: Mutex<HashMap<String, MediaOffer>>,
    /// Where the host takes media of legs the directory answered.
    answered: Arc<Mutex<HashMap<String, SocketAddr>>>,
    signals: Mutex<Vec<Signal>>,
    /// Woken at every new signal.
    signalled: tokio::sync::Notify,
}

impl Side {
    fn signal(&self, s: Signal) {
        self.signals.lock().recover().push(s);
        self.signalled.notify_waiters();
    }
}

impl Signalling for Side {
    fn answer(&self, leg: &str) {
        self.signal(Signal::Answered(leg.to_string()));
    }

    fn end(&self, leg: &str, cause: Cause) {
        self.signal(Signal::Ended(leg.to_string(), cause));
    }

    fn transfer_failed(&self, leg: &str, cause: Cause) {
        self.signal(Signal::TransferFailed(leg.to_string(), cause));
    }

    fn originate(&self, call: Outbound) {
        self.signal(Signal::Dialled(call.leg.clone(), call.to.number.clone()));
        let Some(t) = self.telephony.upgrade() else {
            return;
        };
        let Some(offer) = self
            .directory
            .lock()
            .recover()
            .get(&call.to.number)
            .cloned()
        else {
            t.ended(&call.leg, Cause::Unavailable);
            return;
        };
        let me = self.telephony.clone();
        let answered = self.answered.clone();
        // Runs on call control's thread, which is inside its runtime.
        tokio::spawn(async move {
            let Some(t) = me.upgrade() else { return };
            t.ringing(&call.leg);
            if let Ok(addr) = t.answered(&call.leg, offer, Default::default()).await {
                answered.lock().recover().insert(call.leg, addr);
            }
        });
    }
}

impl CallRig {
    /// Installs synthetic signalling in `rt` and starts delivering call
    /// events to plugins (until the rig is dropped).
    pub fn start(rt: &Runtime) -> CallRig {
        let telephony = rt.telephony().clone();
        let side = Arc::new(Side {
            telephony: Arc::downgrade(&telephony),
            directory: Mutex::default(),
            answered: Arc::default(),
            signals: Mutex::default(),
            signalled: tokio::sync::Notify::new(),
        });
        telephony.set_signalling(side.clone());
        let loop_task = tokio::spawn(deliver(rt.downgrade()));
        CallRig {
            telephony,
            side,
            loop_task,
        }
    }

    /// Makes `number` answered by `phone` when a plugin dials it.
    pub fn directory(&self, number: &str, phone: &Phone) -> std::io::Result<()> {
        self.side
            .directory
            .lock()
            .recover()
            .insert(number.to_string(), phone.offer()?);
        Ok(())
    }

    /// Rings `tenant`'s `plugin` from `phone`; returns the leg and connects
    /// the phone to the host's media address.
    pub async fn ring(
        &self,
        tenant: &str,
        plugin: &str,
        caller: &str,
        callee: &str,
        args: &[u8],
        phone: &mut Phone,
    ) -> anyhow::Result<String> {
        self.ring_from(None, tenant, plugin, caller, callee, args, phone)
            .await
    }

    /// [`CallRig::ring`] from the phone of user `user` (the leg's
    /// `user`, as a registered device's call has; `caller` is then the
    /// device's name), or from no user.
    #[allow(clippy::too_many_arguments)]
    pub async fn ring_from(
        &self,
        user: Option<&str>,
        tenant: &str,
        plugin: &str,
        caller: &str,
        callee: &str,
        args: &[u8],
        phone: &mut Phone,
    ) -> anyhow::Result<String> {
        let (leg, addr) = self
            .telephony
            .offer(Inbound {
                tenant: tenant.to_string(),
                plugin: plugin.to_string(),
                args: args.to_vec(),
                caller: caller.to_string(),
                callee: callee.to_string(),
                user: user.map(str::to_string),
                // A user's phone shows its device name as the caller.
                device: user.map(|_| caller.to_string()),
                media: phone.offer()?,
                trunk: None,
            })
            .await?;
        phone.connect(addr);
        Ok(leg)
    }

    /// The phone of leg `leg` asks to transfer its call to `to` (as a
    /// REFER does): `transfer` goes to the plugin.
    pub async fn transfer(&self, leg: &str, to: &str) -> anyhow::Result<()> {
        Ok(self.telephony.transfer(leg, to).await?)
    }

    /// The phone of leg `leg` asks to connect its other party with that of
    /// its other call `other` (as a REFER with Replaces does).
    pub async fn transfer_attended(&self, leg: &str, other: &str) -> anyhow::Result<()> {
        Ok(self.telephony.transfer_attended(leg, other).await?)
    }

    /// The far end of leg `leg` puts it on hold, or takes it off.
    pub fn hold(&self, leg: &str, on_hold: bool) {
        self.telephony.hold(leg, on_hold);
    }

    /// The far end of leg `id` hangs up.
    pub fn hang_up(&self, leg: &str) {
        self.telephony.ended(leg, Cause::Normal);
    }

    /// Where the host takes media of an outbound leg the directory
    /// answered.
    pub fn host_media_of(&self, leg: &str) -> Option<SocketAddr> {
        self.side.answered.lock().recover().get(leg).copied()
    }

    /// What the signalling side was told so far.
    pub fn signals(&self) -> Vec<Signal> {
        self.side.signals.lock().recover().clone()
    }

    /// Waits (up to `limit`) until `pred` holds of the signals.
    pub async fn wait_for(
        &self,
        limit: Duration,
        pred: impl Fn(&[Signal]) -> bool,
    ) -> anyhow::Result<Vec<Signal>> {
        let end = Instant::now() + limit;
        loop {
            let woken = self.side.signalled.notified();
            let signals = self.signals();
            if pred(&signals) {
                return Ok(signals);
            }
            let now = Instant::now();
            if now >= end {
                anyhow::bail!("signals after {limit:?}: {signals:?}");
            }
            // Woken by the next signal (or a short poll, in case one came
            // between the look and the wait).
            let _ = tokio::time::timeout((end - now).min(Duration::from_millis(50)), woken).await;
        }
    }

    /// Live legs in call control.
    pub fn live_legs(&self) -> usize {
        self.telephony.legs()
    }
}

impl Drop for CallRig {
    fn drop(&mut self) {
        self.loop_task.abort();
    }
}

/// The scheduler's call-event loop, for a harness without a scheduler:
/// woken by call control, with a short poll for re-deliveries.
async fn deliver(weak: WeakRuntime) {
    loop {
        let Some(rt) = weak.upgrade() else { return };
        rt.deliver_call_events();
        let wake = rt.telephony().ready();
        drop(rt);
        let _ = tokio::time::timeout(POLL, wake.notified()).await;
    }
}
