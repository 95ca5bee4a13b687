//! The signalling side of legs, as call control sees it: SIP in the
//! server, a synthetic peer in the test harness. Call control tells it to
//! answer, end and place calls; it tells call control what the far ends do
//! (`Telephony::{offer, ringing, answered, ended}`), so neither side holds
//! the other's types.

use std::net::SocketAddr;

use super::policy::Dialled;
use crate::call::legs::Cause;
use crate::media::srtp::{MasterKey, Suite};

/// What the far end agreed for a leg's media (from its SDP).
#[derive(Debug, Clone)]
pub struct MediaOffer {
    /// Where the far end takes media.
    pub remote: SocketAddr,
    /// 0 PCMU or 8 PCMA.
    pub payload_type: u8,
    /// RFC 4733 payload type, if agreed.
    pub dtmf: Option<u8>,
    /// (suite, the far end's key, ours), or plain RTP.
    pub srtp: Option<(Suite, MasterKey, MasterKey)>,
}

/// A call arriving for a plugin.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub tenant: String,
    /// The plugin the route chose, and the route's arguments for it.
    pub plugin: String,
    pub args: Vec<u8>,
    pub caller: String,
    pub callee: String,
    /// The user whose phone placed the call (none from trunks).
    pub user: Option<String>,
    /// The device (name) that placed it (none from trunks).
    pub device: Option<String>,
    pub media: MediaOffer,
    /// The trunk it came in over (for its call record).
    pub trunk: Option<String>,
}

/// A call call control asks the signalling side to place.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub leg: String,
    pub tenant: String,
    /// Who the call shows as calling.
    pub caller: String,
    /// The user it is placed for (their presentation number, if the
    /// caller shown is none the network may see).
    pub user: Option<String>,
    /// The number as the dialing policy read and allowed it.
    pub to: Dialled,
}

/// What call control asks of the signalling side. Every method returns at
/// once (it runs on call control's thread); outcomes come back through
/// `Telephony`.
pub trait Signalling: Send + Sync + 'static {
    /// Accepts an offered inbound leg (SIP: 200 OK with our SDP).
    fn answer(&self, leg: &str);
    /// Ends a leg: rejects an offered one, cancels a ringing one, hangs up
    /// an answered one.
    fn end(&self, leg: &str, cause: Cause);
    /// Places a call the dialing policy allowed; `ringing`, `answered` or
    /// `ended` follow.
    fn originate(&self, call: Outbound);
    /// The plugin declined the transfer a leg's phone asked for, or left
    /// it unsettled too long (SIP: a final NOTIFY with the failure; the
    /// call goes on). Nothing by default.
    fn transfer_failed(&self, _leg: &str, _cause: Cause) {}
    /// A plugin changed the message-waiting counts of `user` (SIP: NOTIFY
    /// their devices' subscriptions). Nothing by default.
    fn mwi_changed(&self, _tenant: &str, _user: &str) {}
    /// A device was removed or its password changed: what it holds under
    /// its old credentials ends (SIP: registrations, subscriptions,
    /// calls). Nothing by default.
    fn device_changed(&self, _tenant: &str, _device: &str) {}
    /// A device may no longer use UDP/TCP: what it holds over them ends
    /// (its TLS registrations and calls go on). Nothing by default.
    fn device_plain_off(&self, _tenant: &str, _device: &str) {}
}

/// The signalling of a host with no SIP door: nothing can be dialled.
pub struct Unreachable(pub std::sync::Weak<super::Telephony>);

impl Signalling for Unreachable {
    fn answer(&self, _leg: &str) {}

    fn end(&self, _leg: &str, _cause: Cause) {}

    fn originate(&self, call: Outbound) {
        if let Some(t) = self.0.upgrade() {
            t.ended(&call.leg, Cause::Unavailable);
        }
    }
}
