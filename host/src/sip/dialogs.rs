//! The B2BUA's SIP dialogs (RFC 3261 §12-15): each call leg the door
//! carries is one dialog with a device, kept here by leg id and by the
//! device's (Call-ID, tag). Call control owns the leg; this table only
//! knows what the dialog has said so far, and writes the messages that
//! move it on: the final answer to the INVITE, the BYE that ends it.
//!
//! Over TLS nothing is retransmitted (the transport is reliable); a 2xx
//! that gets no ACK within [`ACK_TIMEOUT`] ends the leg (RFC 3261
//! §13.3.1.4, Timer H's span).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use super::message::{Message, NameAddr, Start};
use crate::call::legs::Cause;
use crate::support::encoding::random_hex;
use crate::support::sync::Recover as _;

/// How long an answered dialog waits for the ACK of its 200.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(32);

/// Where a dialog is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The INVITE has no final answer yet.
    Offered,
    /// 200 sent; `acked` once the ACK came.
    Answered { acked: bool },
}

/// One dialog with a device: the UAS side of the device's INVITE, or
/// the UAC side of ours.
#[derive(Debug, Clone)]
pub struct Dialog {
    pub leg: String,
    pub tenant: String,
    pub device: String,
    pub flow: u64,
    /// The device's INVITE, to answer it (UAS dialogs only).
    pub invite: Option<Message>,
    pub call_id: String,
    /// The device's tag and ours.
    pub their_tag: String,
    pub tag: String,
    /// Our side and the device's, as written in our requests' From and
    /// To (with their tags).
    pub local: String,
    pub remote: String,
    /// Where our requests in the dialog go (the device's Contact).
    pub target: String,
    pub state: State,
    /// Our SDP answer, sent with the 200 (UAS dialogs).
    pub answer: String,
    /// Our Contact URI (without brackets).
    pub contact: String,
    /// Our CSeq for requests we send in the dialog.
    pub cseq: u32,
    /// The media address our SDP names, and our SDP's session id and
    /// version (a re-INVITE's answer keeps the address, raises the
    /// version).
    pub sdp_addr: std::net::SocketAddr,
    pub session: (u64, u64),
    /// The highest CSeq the device's requests carried (a re-INVITE must
    /// go higher).
    pub their_cseq: u32,
    /// The CSeq of the device's REFER whose transfer is pending (its
    /// NOTIFYs name it in `Event: refer;id=`).
    pub refer: Option<u32>,
    /// Its media is SRTP (it began over TLS, or on an SRTP trunk): a
    /// re-INVITE keeps it so, whatever flow it comes over.
    pub secure: bool,
}

impl Dialog {
    /// The UAS dialog of the device's `invite`, with our new `tag`.
    #[allow(clippy::too_many_arguments)]
    pub fn uas(
        leg: String,
        tenant: String,
        device: String,
        flow: u64,
        invite: &Message,
        tag: String,
        answer: String,
        contact: String,
    ) -> Dialog {
        let mut local = invite.header("To").unwrap_or_default().to_string();
        let _ = write!(local, ";tag={tag}");
        Dialog {
            leg,
            tenant,
            device,
            flow,
            call_id: invite.call_id().to_string(),
            their_tag: invite.from().ok().and_then(|f| f.tag()).unwrap_or_default(),
            tag,
            local,
            remote: invite.header("From").unwrap_or_default().to_string(),
            target: contact_uri(invite).unwrap_or_default(),
            invite: Some(invite.clone()),
            state: State::Offered,
            answer,
            contact,
            cseq: 0,
            sdp_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            session: (0, 1),
            their_cseq: invite.cseq().map(|(n, _)| n).unwrap_or(0),
            refer: None,
            secure: false,
        }
    }

    /// A response to the device's INVITE (`None` for our own dialogs).
    pub fn response(&self, code: u16, reason: &str) -> Option<Message> {
        let mut r = self
            .invite
            .as_ref()?
            .response(code, reason, Some(&self.tag));
        if (101..300).contains(&code) {
            r.push("Contact", format!("<{}>", self.contact));
        }
        Some(r)
    }

    /// The 200 OK with our SDP.
    pub fn ok(&self) -> Option<Message> {
        let mut r = self.response(200, "OK")?;
        r.push("Allow", super::ALLOW);
        r.push("Content-Type", "application/sdp");
        r.body = self.answer.clone().into_bytes();
        Some(r)
    }

    /// A request of ours in the dialog, with the next CSeq.
    fn in_dialog(&mut self, method: &str, via: &str) -> Message {
        self.cseq += 1;
        let mut m = request(method, &self.target, via);
        m.push("From", self.local.clone());
        m.push("To", self.remote.clone());
        m.push("Call-ID", self.call_id.clone());
        m.push("CSeq", format!("{} {method}", self.cseq));
        m
    }

    /// A BYE to the device.
    pub fn bye(&mut self, via: &str) -> Message {
        self.in_dialog("BYE", via)
    }

    /// A NOTIFY of the pending REFER's progress (RFC 3515 §2.4.4): the
    /// status line of the transfer as a `message/sipfrag`; `done` ends
    /// the implicit subscription (and forgets the REFER). `None` if no
    /// REFER is pending.
    pub fn refer_notify(&mut self, via: &str, status: &str, done: bool) -> Option<Message> {
        let id = self.refer?;
        if done {
            self.refer = None;
        }
        let mut m = self.in_dialog("NOTIFY", via);
        m.push("Contact", format!("<{}>", self.contact));
        m.push("Event", format!("refer;id={id}"));
        m.push(
            "Subscription-State",
            if done {
                "terminated;reason=noresource"
            } else {
                "active;expires=60"
            },
        );
        m.push("Content-Type", "message/sipfrag;version=2.0");
        m.body = format!("SIP/2.0 {status}\r\n").into_bytes();
        Some(m)
    }
}

/// The Contact URI of a message.
pub fn contact_uri(m: &Message) -> Option<String> {
    m.header("Contact")
        .and_then(|c| NameAddr::parse(c).ok())
        .map(|c| c.uri_text)
}

/// A request of ours to `uri` with a fresh Via branch (`via`: protocol
/// and sent-by, `Flow::via`) and Max-Forwards; the caller adds From, To,
/// Call-ID and CSeq.
pub fn request(method: &str, uri: &str, via: &str) -> Message {
    let mut m = Message {
        start: Start::Request {
            method: method.into(),
            uri: uri.into(),
        },
        headers: Vec::new(),
        body: Vec::new(),
    };
    m.push("Via", format!("{via};branch=z9hG4bK{}", random_hex(12)));
    m.push("Max-Forwards", "70");
    m
}

/// The SIP status that refuses an offered leg ended for `cause`.
pub fn refusal(cause: Cause) -> (u16, &'static str) {
    match cause {
        Cause::Busy => (486, "Busy Here"),
        Cause::Rejected => (603, "Decline"),
        Cause::Restricted => (403, "Forbidden"),
        Cause::Timeout => (408, "Request Timeout"),
        Cause::Failed => (500, "Server Internal Error"),
        Cause::Normal | Cause::NoAnswer | Cause::Unavailable => (480, "Temporarily Unavailable"),
    }
}

/// What call control asked of a leg whose dialog is not filed yet (the
/// plugin acted between the offer and the filing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Early {
    Answer,
    End(Cause),
}

/// Requests kept for legs without a dialog, at most, and for how long
/// (legs ended by the device are never filed again; their late requests
/// age out).
const MAX_UNFILED: usize = 10_000;
const UNFILED_FOR: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Table {
    by_leg: HashMap<String, Dialog>,
    by_key: HashMap<(String, String), String>,
    /// What call control asked of legs without a dialog, and when.
    unfiled: HashMap<String, (Early, std::time::Instant)>,
}

/// The door's dialogs.
#[derive(Default)]
pub struct Dialogs {
    table: Mutex<Table>,
}

impl Dialogs {
    /// Keeps `what` for a leg that has no dialog yet (call control may
    /// act on a leg in the moment between its offer and its filing);
    /// `false` if the leg has its dialog.
    pub fn early(&self, leg: &str, what: Early) -> bool {
        let mut t = self.table.lock().recover();
        if t.by_leg.contains_key(leg) {
            return false;
        }
        let now = std::time::Instant::now();
        if t.unfiled.len() >= MAX_UNFILED {
            t.unfiled
                .retain(|_, (_, at)| now.duration_since(*at) < UNFILED_FOR);
        }
        if t.unfiled.len() < MAX_UNFILED {
            let slot = t.unfiled.entry(leg.to_string()).or_insert((what, now));
            // An end overrides an answer; the first end wins.
            if !matches!(slot.0, Early::End(_)) {
                slot.0 = what;
            }
        }
        true
    }

    /// What call control asked of `leg` before it had a dialog, once.
    pub fn take_early(&self, leg: &str) -> Option<Early> {
        self.table
            .lock()
            .recover()
            .unfiled
            .remove(leg)
            .map(|(e, _)| e)
    }

    /// Adds the dialog of an offered leg; returns what call control
    /// asked of it before.
    pub fn insert(&self, d: Dialog) -> Option<Early> {
        let mut t = self.table.lock().recover();
        let early = t.unfiled.remove(&d.leg).map(|(e, _)| e);
        t.by_key
            .insert((d.call_id.clone(), d.their_tag.clone()), d.leg.clone());
        t.by_leg.insert(d.leg.clone(), d);
        early
    }

    /// The leg of the device's dialog `(call_id, tag)`.
    pub fn leg_of(&self, call_id: &str, tag: &str) -> Option<String> {
        self.table
            .lock()
            .recover()
            .by_key
            .get(&(call_id.to_string(), tag.to_string()))
            .cloned()
    }

    /// Runs `f` on leg `leg`'s dialog.
    pub fn with<T>(&self, leg: &str, f: impl FnOnce(&mut Dialog) -> T) -> Option<T> {
        self.table.lock().recover().by_leg.get_mut(leg).map(f)
    }

    /// Removes leg `leg`'s dialog.
    pub fn remove(&self, leg: &str) -> Option<Dialog> {
        self.remove_if(leg, |_| true)
    }

    /// Removes leg `leg`'s dialog if `pred` holds of it, in one step (so
    /// nothing changes it between the check and the removal).
    pub fn remove_if(&self, leg: &str, pred: impl FnOnce(&Dialog) -> bool) -> Option<Dialog> {
        let mut t = self.table.lock().recover();
        if !t.by_leg.get(leg).is_some_and(pred) {
            return None;
        }
        let d = t.by_leg.remove(leg)?;
        let key = (d.call_id.clone(), d.their_tag.clone());
        if t.by_key.get(&key).is_some_and(|l| l == leg) {
            t.by_key.remove(&key);
        }
        Some(d)
    }

    /// Live dialogs of one device.
    pub fn count_of(&self, tenant: &str, device: &str) -> usize {
        self.table
            .lock()
            .recover()
            .by_leg
            .values()
            .filter(|d| d.tenant == tenant && d.device == device)
            .count()
    }

    /// The legs of one device's dialogs.
    pub fn legs_of(&self, tenant: &str, device: &str) -> Vec<String> {
        self.table
            .lock()
            .recover()
            .by_leg
            .values()
            .filter(|d| d.tenant == tenant && d.device == device)
            .map(|d| d.leg.clone())
            .collect()
    }

    /// The legs whose dialogs run over `flow`.
    pub fn on_flow(&self, flow: u64) -> Vec<(String, State)> {
        self.table
            .lock()
            .recover()
            .by_leg
            .values()
            .filter(|d| d.flow == flow)
            .map(|d| (d.leg.clone(), d.state))
            .collect()
    }
}
