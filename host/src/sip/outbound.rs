//! Calls the host places to devices (the B2BUA's outbound legs): a plugin
//! dials `user:{name}` (every registered device of the user rings) or
//! `device:{name}`, the dialing policy allowed it, and call control asks
//! the door to originate. Each device gets its own INVITE over the flow
//! it registered on, with its own fresh SRTP key; the first to answer
//! wins and the others are cancelled (RFC 3261 §9; a 200 that crosses
//! our CANCEL is acknowledged and hung up). Media opens before the
//! INVITEs go out (the offer names its port) and is pointed at the winner
//! by its answer.
//!
//! A number outside the tenant (the dialing policy read it as E.164 or
//! an emergency number, and allowed it) goes out over the tenant's first
//! trunk with a proxy: one INVITE over the trunk's transport (UDP, or
//! the link to its proxy) with plain RTP, or SRTP over TLS, the caller
//! id the trunk's rules allow, and an answer to the provider's digest
//! challenge with the trunk's credentials (once per call).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::dialogs::{self, Dialog, State};
use super::message::Message;
use super::transport::Flow;
use super::{Door, sdp};
use crate::audit::Scope;
use crate::call::legs::Cause;
use crate::media::srtp::{MasterKey, Suite};
use crate::support::encoding::random_hex;
use crate::telephony::policy::Class;
use crate::telephony::signalling::{MediaOffer, Outbound};

/// The suite we offer devices.
const SUITE: Suite = Suite::AesCm128HmacSha1_80;

/// One device (or trunk) being rung.
pub(super) struct Branch {
    /// The device's name, or `trunk:{name}`.
    device: String,
    flow: u64,
    invite: Message,
    /// Our key for what we send, if this device answers (`None`: plain
    /// RTP, a trunk's).
    key: Option<MasterKey>,
    /// A trunk's digest challenge was answered (once per call).
    authenticated: bool,
    /// The media address our offer named.
    offered: SocketAddr,
    /// Its final status, once it gave one.
    done: Option<u16>,
}

/// An outbound leg ringing one or more devices.
pub(super) struct Fork {
    leg: String,
    tenant: String,
    branches: Vec<Branch>,
    /// A device answered (its dialog is filed).
    answered: bool,
    /// Answered or given up: a later 2xx is hung up.
    settled: bool,
    /// A device's 200 is being taken (call control asked); an end of the
    /// leg meanwhile waits for the dialog (`Early::End`).
    answering: bool,
    rang: bool,
    /// Our offers' SDP session id.
    session_id: u64,
    /// A trunk call's other trunks, tried in turn when this one fails
    /// (see [`FAILOVER`]).
    next: Option<Box<Failover>>,
}

/// Final answers from a trunk that send a call on to the tenant's next
/// trunk: the provider, not the number, failed (no answer at all, server
/// errors, overload).
pub(super) const FAILOVER: [u16; 5] = [408, 500, 502, 503, 504];

/// What a trunk call needs to go on over the next trunk.
pub(super) struct Failover {
    call: Outbound,
    trunks: Vec<crate::tenant::Trunk>,
    /// The next trunk to try.
    index: usize,
    /// Our media address and SDP session, prepared once.
    offered: SocketAddr,
    session_id: u64,
}

/// Completes an INVITE of ours after its From: To `to`, a fresh Call-ID
/// at `host`, CSeq 1, our Contact on `flow`, and the SDP `offer`.
fn complete_invite(m: &mut Message, to: String, host: &str, flow: &Flow, offer: String) {
    m.push("To", to);
    m.push("Call-ID", format!("{}@{host}", random_hex(16)));
    m.push("CSeq", "1 INVITE");
    m.push("Contact", format!("<{}>", flow.our_uri("switchboard")));
    m.push("Allow", super::ALLOW);
    m.push("Content-Type", "application/sdp");
    m.body = offer.into_bytes();
}

/// A fresh key for an SRTP offer (`srtp`), or none for plain RTP; `Err`
/// without randomness (that branch is not rung).
fn offer_key(srtp: bool) -> Result<Option<MasterKey>, crate::media::srtp::SrtpError> {
    srtp.then(MasterKey::generate).transpose()
}

/// Forks by leg, and each branch's Call-ID to (leg, branch).
#[derive(Default)]
pub(super) struct Forks {
    by_leg: HashMap<String, Fork>,
    by_call: HashMap<String, (String, usize)>,
}

impl Door {
    /// Places `call` (on the door's runtime; call control does not wait).
    pub(super) fn originate(self: &Arc<Self>, call: Outbound) {
        let door = self.clone();
        self.tokio.spawn(async move {
            if !door.ring(&call).await {
                door.rt.telephony().ended(&call.leg, Cause::Unavailable);
            }
        });
    }

    /// The devices `to` names in `tenant`.
    fn devices_of(&self, tenant: &str, to: &str) -> Vec<String> {
        let identity = self.rt.identity();
        match to.split_once(':') {
            Some(("device", name)) => identity
                .device_secret(tenant, name)
                .ok()
                .flatten()
                .map(|_| vec![name.to_string()])
                .unwrap_or_default(),
            Some(("user", name)) => {
                let realm = Scope::tenant(tenant);
                let user = identity
                    .user(&realm, name)
                    .ok()
                    .flatten()
                    .or_else(|| identity.user_by_name(&realm, name).ok().flatten());
                match user {
                    Some(u) => identity
                        .devices(tenant, Some(&u.id))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|d| d.name)
                        .collect(),
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        }
    }

    /// Sends the INVITEs; `false` if no device could be rung.
    async fn ring(&self, call: &Outbound) -> bool {
        let n = &call.to.number;
        if !n.starts_with("user:") && !n.starts_with("device:") {
            // Only numbers of the network go out: E.164 as the policy read
            // them, and emergency numbers as dialled. A short number the
            // policy took for an extension (a premium short code, an
            // emergency look-alike) never reaches a trunk (T1).
            let outside = n.starts_with('+') || call.to.class == Class::Emergency;
            return outside && self.ring_trunk(call).await;
        }
        let mut targets: Vec<(String, Arc<Flow>, String)> = Vec::new();
        for device in self.devices_of(&call.tenant, &call.to.number) {
            for b in self.registrar.lookup(&call.tenant, &device) {
                if let Some(flow) = self.flows.get(b.flow) {
                    targets.push((device.clone(), flow, b.contact));
                }
            }
        }
        if targets.is_empty() {
            return false;
        }
        // Media first: the offers name its port. The far end's key is a
        // stand-in until the answer names it.
        let (Ok(stand_in), Ok(ours)) = (MasterKey::generate(), MasterKey::generate()) else {
            return false;
        };
        let prepared = self
            .rt
            .telephony()
            .prepare(
                &call.leg,
                MediaOffer {
                    remote: SocketAddr::from(([0, 0, 0, 0], 9)),
                    payload_type: 0,
                    dtmf: Some(sdp::DTMF_PT),
                    srtp: Some((SUITE, stand_in, ours)),
                },
            )
            .await;
        let Ok(media) = prepared else {
            return false;
        };
        let realm = self.rt.sip_realm(&call.tenant);
        let mut fork = Fork {
            leg: call.leg.clone(),
            tenant: call.tenant.clone(),
            branches: Vec::new(),
            answered: false,
            settled: false,
            answering: false,
            rang: false,
            session_id: 0,
            next: None,
        };
        // Who calls, as the device shows it: the caller's user part if it
        // has one that SIP can carry, else anonymous (RFC 3323).
        let user: String = call
            .caller
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "+-._".contains(*c))
            .take(64)
            .collect();
        let caller = if user.is_empty() {
            format!("\"Anonymous\" <sip:anonymous@{realm}>")
        } else {
            format!("\"{user}\" <sip:{user}@{realm}>")
        };
        let mut ids = [0u8; 8];
        let _ = getrandom::fill(&mut ids);
        let session_id = u64::from_be_bytes(ids) >> 1;
        fork.session_id = session_id;
        for (device, flow, contact) in targets {
            // SRTP with a key of this device's own over TLS; plain RTP to
            // a device registered over UDP/TCP (keys never in clear).
            let Ok(key) = offer_key(flow.is_tls()) else {
                continue;
            };
            // Each device is offered the address it reaches us at.
            let offered = SocketAddr::new(self.media_ip(media, &flow), media.port());
            let offer = sdp::offer(
                sdp::Local {
                    addr: offered,
                    session_id,
                    session_version: 1,
                },
                key.as_ref().map(|k| (SUITE, k)),
            );
            let mut m = dialogs::request("INVITE", &contact, &flow.via());
            m.push("From", format!("{caller};tag={}", random_hex(8)));
            complete_invite(
                &mut m,
                format!("<sip:{device}@{realm}>"),
                &realm,
                &flow,
                offer,
            );
            if flow.send(&m) {
                fork.branches.push(Branch {
                    device,
                    flow: flow.id,
                    invite: m,
                    key,
                    authenticated: false,
                    offered,
                    done: None,
                });
            }
        }
        self.file_fork(fork)
    }

    /// Files a fork whose INVITEs went out; `false` if none did.
    fn file_fork(&self, fork: Fork) -> bool {
        if fork.branches.is_empty() {
            return false;
        }
        let leg = fork.leg.clone();
        let mut forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
        for (i, b) in fork.branches.iter().enumerate() {
            forks
                .by_call
                .insert(b.invite.call_id().to_string(), (leg.clone(), i));
        }
        forks.by_leg.insert(leg.clone(), fork);
        drop(forks);
        // Call control may have ended the leg while the INVITEs went out.
        if let Some(super::Early::End(_)) = self.dialogs.take_early(&leg) {
            self.cancel_fork(&leg);
        }
        true
    }

    /// A number outside the tenant, over the first of its trunks with a
    /// proxy that can take it; the others, in order, if that one fails
    /// (see [`FAILOVER`]).
    async fn ring_trunk(&self, call: &Outbound) -> bool {
        let trunks = self.rt.outbound_trunks(&call.tenant, &call.to);
        // Media first (the offer names its port, at the address the first
        // trunk that can be reached reaches us at), once for every trunk
        // tried; its keys, if any, come with each trunk's offer and answer.
        let Some(flow) = trunks.iter().find_map(|t| self.trunk_flow(&call.tenant, t)) else {
            return false;
        };
        let prepared = self
            .rt
            .telephony()
            .prepare(
                &call.leg,
                MediaOffer {
                    remote: SocketAddr::from(([0, 0, 0, 0], 9)),
                    payload_type: 0,
                    dtmf: Some(sdp::DTMF_PT),
                    srtp: None,
                },
            )
            .await;
        let Ok(media) = prepared else {
            return false;
        };
        let mut ids = [0u8; 8];
        let _ = getrandom::fill(&mut ids);
        let next = Failover {
            call: call.clone(),
            trunks,
            index: 0,
            offered: SocketAddr::new(self.media_ip(media, &flow), media.port()),
            session_id: u64::from_be_bytes(ids) >> 1,
        };
        self.ring_via(next)
    }

    /// Sends the INVITE of `next` to the first of its trunks from its
    /// index on that can take it; false if none can.
    pub(super) fn ring_via(&self, mut next: Failover) -> bool {
        while let Some(trunk) = next.trunks.get(next.index).cloned() {
            next.index += 1;
            let Some(proxy) = trunk.proxy else { continue };
            let call = &next.call;
            let party = super::trunk_party(&trunk.name);
            // An emergency call is never turned away for a full trunk.
            if call.to.class != Class::Emergency
                && self.calls_of(&call.tenant, &party) >= trunk.max_calls as usize
            {
                crate::metrics::SIP_DROPPED.inc(&["trunk_busy"]);
                continue;
            }
            let Some(flow) = self.trunk_flow(&call.tenant, &trunk) else {
                continue;
            };
            // SRTP for a trunk that wants it (over TLS only), with a key
            // of this offer's own; plain RTP otherwise.
            let Ok(key) = offer_key(trunk.secure_media() && flow.is_tls()) else {
                continue;
            };
            let offer = sdp::offer(
                sdp::Local {
                    addr: next.offered,
                    session_id: next.session_id,
                    session_version: 1,
                },
                key.as_ref().map(|k| (SUITE, k)),
            );
            let host = flow.local.to_string();
            // The provider's domain names the call when the trunk has one.
            let target = trunk.domain.clone().unwrap_or_else(|| proxy.to_string());
            let mut m = dialogs::request(
                "INVITE",
                &format!("sip:{}@{target}", call.to.number),
                &flow.via(),
            );
            match self.caller_id(&call.tenant, &trunk, &call.caller, call.user.as_deref()) {
                Some(number) => m.push(
                    "From",
                    format!("<sip:{number}@{host}>;tag={}", random_hex(8)),
                ),
                None => {
                    m.push(
                        "From",
                        format!(
                            "\"Anonymous\" <sip:anonymous@anonymous.invalid>;tag={}",
                            random_hex(8)
                        ),
                    );
                    m.push("Privacy", "id");
                }
            }
            let to = format!("<sip:{}@{target}>", call.to.number);
            complete_invite(&mut m, to, &host, &flow, offer);
            if !flow.send(&m) {
                continue;
            }
            self.rt.telephony().via_trunk(&call.leg, &trunk.name);
            let (leg, tenant, offered, session_id) = (
                call.leg.clone(),
                call.tenant.clone(),
                next.offered,
                next.session_id,
            );
            return self.file_fork(Fork {
                leg,
                tenant,
                branches: vec![Branch {
                    device: party,
                    flow: flow.id,
                    invite: m,
                    key,
                    authenticated: false,
                    offered,
                    done: None,
                }],
                answered: false,
                settled: false,
                answering: false,
                rang: false,
                session_id,
                next: (next.index < next.trunks.len()).then(|| Box::new(next)),
            });
        }
        false
    }

    /// The number a call out over `trunk` shows (caller-id rules): the
    /// caller's own if the trunk allows it or (unless the trunk is
    /// managed) it is one of the tenant's DIDs, else the trunk's
    /// `caller_id`, else none (anonymous). A caller never shows a number
    /// the tenant does not hold (spoofing).
    fn caller_id(
        &self,
        tenant: &str,
        trunk: &crate::tenant::Trunk,
        caller: &str,
        user: Option<&str>,
    ) -> Option<String> {
        // A managed trunk's numbers are the operator's to allow: a `+`
        // route the tenant's admins wrote proves nothing there.
        let may = |n: &str| {
            crate::tenant::is_e164(n)
                && (trunk.may_show(n) || (!trunk.managed && self.rt.is_did(tenant, n)))
        };
        if may(caller) {
            return Some(caller.to_string());
        }
        // The user's own number, if the tenant gave them one it holds.
        user.and_then(|u| self.rt.presentation(tenant, u))
            .filter(|n| may(n))
            .or_else(|| trunk.caller_id.clone())
    }

    /// Whether any fork rings on flow `id`.
    pub(super) fn forks_on(&self, id: u64) -> bool {
        self.forks_on_count(id) > 0
    }

    fn forks_on_count(&self, id: u64) -> usize {
        let forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
        forks
            .by_leg
            .values()
            .flat_map(|f| &f.branches)
            .filter(|b| b.flow == id)
            .count()
    }

    /// Branches still ringing on `party` (a device or `trunk:{name}`).
    pub(super) fn ringing_on(&self, tenant: &str, party: &str) -> usize {
        let forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
        forks
            .by_leg
            .values()
            .filter(|f| f.tenant == tenant && !f.answered)
            .flat_map(|f| &f.branches)
            .filter(|b| b.device == party && b.done.is_none())
            .count()
    }

    /// A trunk's provider challenged our INVITE: sent again once with
    /// the trunk's credentials (same Call-ID and tags, next CSeq, new
    /// branch). `false` if it cannot be answered (no credentials, a
    /// second challenge, a malformed one).
    fn answer_challenge(&self, flow: &Flow, leg: &str, i: usize, challenge: &Message) -> bool {
        let Some(Some((party, invite, authenticated))) = self.with_fork(leg, |f| {
            f.branches
                .get(i)
                .map(|b| (b.device.clone(), b.invite.clone(), b.authenticated))
        }) else {
            return false;
        };
        let (header, reply) = match challenge.status() {
            Some(401) => ("WWW-Authenticate", "Authorization"),
            _ => ("Proxy-Authenticate", "Proxy-Authorization"),
        };
        let Some(name) = party.strip_prefix(super::TRUNK_PARTY) else {
            return false;
        };
        if authenticated {
            return false;
        }
        let tenant = self
            .with_fork(leg, |f| f.tenant.clone())
            .unwrap_or_default();
        let Some(trunk) = self.rt.trunk(&tenant, name) else {
            return false;
        };
        // Only the trunk's own flow now (a call placed before its proxy
        // changed still rings the old one), and only the password given
        // for the trunk as it is.
        if self
            .trunk_flow(&tenant, &trunk)
            .is_none_or(|f| f.id != flow.id)
        {
            return false;
        }
        let Some(password) = self.rt.trunk_password(&tenant, &trunk) else {
            return false;
        };
        let Some(user) = trunk.username else {
            return false;
        };
        let uri = invite.uri().unwrap_or_default().to_string();
        let Some(Ok(auth)) = challenge
            .header(header)
            .map(|c| crate::identity::digest::client_answer(c, "INVITE", &uri, &user, &password))
        else {
            return false;
        };
        let mut again = dialogs::request("INVITE", &uri, &flow.via());
        for name in ["From", "To", "Call-ID"] {
            again.push(name, invite.header(name).unwrap_or_default());
        }
        let (cseq, _) = invite.cseq().unwrap_or_default();
        again.push("CSeq", format!("{} INVITE", cseq + 1));
        again.push(reply, auth);
        for name in ["Contact", "Allow", "Privacy", "Content-Type"] {
            if let Some(v) = invite.header(name) {
                again.push(name, v);
            }
        }
        again.body = invite.body.clone();
        let sent = flow.send(&again);
        self.with_fork(leg, |f| {
            if let Some(b) = f.branches.get_mut(i) {
                b.invite = again;
                b.authenticated = true;
            }
        });
        sent
    }

    /// The address our SDP names for media on `flow`.
    pub(super) fn media_ip(&self, media: SocketAddr, flow: &Flow) -> std::net::IpAddr {
        match (self.config.media_address, media.ip()) {
            (Some(a), _) => a,
            (None, ip) if ip.is_unspecified() => flow.local.ip(),
            (None, ip) => ip,
        }
    }

    /// A response from a device to a request of ours.
    pub(super) async fn response(&self, flow: &Arc<Flow>, m: Message) {
        let Some(status) = m.status() else { return };
        let Ok((_, method)) = m.cseq() else { return };
        if method == "NOTIFY" {
            return self.notify_answered(flow, &m);
        }
        if method == "REGISTER" {
            return self.registration_answered(flow, m);
        }
        if method != "INVITE" {
            return; // 200s to our BYEs and CANCELs.
        }
        // Found, and for a 2xx the answer claimed at once (one winner,
        // however the 200s interleave).
        let found = {
            let mut forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
            let at = forks.by_call.get(m.call_id()).cloned();
            at.and_then(|(leg, i)| {
                let fork = forks.by_leg.get_mut(&leg)?;
                let b = fork.branches.get(i)?;
                if b.flow != flow.id {
                    return None;
                }
                // A branch already given up on (cancelled: its device was
                // removed or went off UDP) cannot answer any more.
                let settled = fork.settled || b.done.is_some();
                if (200..300).contains(&status) && !settled {
                    fork.settled = true;
                    fork.answering = true;
                }
                Some((leg, i, b.invite.clone(), settled, fork.rang))
            })
        };
        let Some((leg, i, invite, settled, rang)) = found else {
            // A 2xx to an INVITE we gave up on and forgot: acknowledged
            // and hung up at once, built from the response alone. Not
            // over UDP, where the source may be forged (the transaction
            // layer re-acknowledges our own late 2xx answers).
            if (200..300).contains(&status) && !flow.is_udp() {
                let via = flow.via();
                flow.send(&ack_or_bye_from(&m, "ACK", 1, &via));
                flow.send(&ack_or_bye_from(&m, "BYE", 2, &via));
            }
            return;
        };
        match status {
            100 => {}
            101..=199 => {
                if !rang {
                    self.with_fork(&leg, |f| f.rang = true);
                    self.rt.telephony().ringing(&leg);
                }
            }
            200..=299 => {
                let ack = ack_2xx(&invite, &m, &flow.via());
                flow.send(&ack);
                if settled {
                    self.hang_up_branch(flow, &invite, &m);
                    let given_up = self
                        .with_fork(&leg, |f| {
                            f.branches.get(i).is_some_and(|b| b.done.is_some())
                        })
                        .unwrap_or(true);
                    if !given_up {
                        self.finish_branch(&leg, i, 200);
                    }
                    return;
                }
                self.answered_branch(flow, &leg, i, &invite, &m).await;
            }
            _ => {
                flow.send(&ack_failure(&invite, &m));
                // A response to an earlier INVITE of a re-sent branch is
                // old news.
                if m.cseq().map(|(n, _)| n) != invite.cseq().map(|(n, _)| n) {
                    return;
                }
                if matches!(status, 401 | 407)
                    && !settled
                    && self.answer_challenge(flow, &leg, i, &m)
                {
                    return;
                }
                self.finish_branch(&leg, i, status);
            }
        }
    }

    fn with_fork<T>(&self, leg: &str, f: impl FnOnce(&mut Fork) -> T) -> Option<T> {
        let mut forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
        forks.by_leg.get_mut(leg).map(f)
    }

    /// A device answered first: its SDP names where media goes.
    async fn answered_branch(
        &self,
        flow: &Arc<Flow>,
        leg: &str,
        i: usize,
        invite: &Message,
        ok: &Message,
    ) {
        let key = self.with_fork(leg, |f| {
            f.branches
                .get(i)
                .map(|b| (b.key.clone(), b.device.clone(), b.offered, f.session_id))
        });
        let Some(Some((key, device, offered, session_id))) = key else {
            return;
        };
        let policy = self.sdp_policy(key.is_some(), flow);
        let agreed = std::str::from_utf8(&ok.body)
            .map_err(|_| sdp::SdpError::Malformed("not UTF-8".into()))
            .and_then(sdp::parse)
            .and_then(|a| sdp::read_answer(&a, &policy, key.as_ref().map(|_| SUITE), key.as_ref()))
            .and_then(|a| self.not_ours(flow, a.remote).map(|()| a));
        let offer = agreed.map(|a| super::media_offer(&a));
        // The phone that answered: its class of restriction and of service
        // (and its owner's) follow the leg.
        let phone = if device.starts_with("trunk:") {
            crate::telephony::policy::Account::default()
        } else {
            let tenant = self
                .with_fork(leg, |f| f.tenant.clone())
                .unwrap_or_default();
            crate::telephony::policy::Account {
                user: self
                    .rt
                    .identity()
                    .device_secret(&tenant, &device)
                    .ok()
                    .flatten()
                    .map(|d| d.user),
                device: Some(device.clone()),
            }
        };
        let taken = match offer {
            Ok(offer) => match self.rt.telephony().answered(leg, offer, phone).await {
                Ok(_) => Ok(()),
                // The leg ended meanwhile (the caller hung up).
                Err(_) => Err(true),
            },
            Err(e) => {
                crate::metrics::SIP_DROPPED.inc(&[e.code()]);
                Err(false)
            }
        };
        if let Err(leg_gone) = taken {
            self.hang_up_branch(flow, invite, ok);
            if leg_gone {
                // Nothing waits for this leg any more: the others stop
                // ringing too.
                self.dialogs.take_early(leg);
                let pending = self
                    .with_fork(leg, |f| {
                        f.answering = false;
                        f.branches
                            .iter()
                            .filter(|b| b.done.is_none())
                            .map(|b| (b.flow, b.invite.clone()))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                for (flow_id, inv) in pending {
                    if let Some(f) = self.flows.get(flow_id) {
                        f.send(&cancel(&inv));
                    }
                }
                self.forget_fork_later(leg);
            } else {
                // An answer we cannot use: the other devices ring on.
                self.with_fork(leg, |f| {
                    f.settled = false;
                    f.answering = false;
                });
                self.finish_branch(leg, i, 488);
            }
            return;
        }
        // The others stop ringing.
        let (tenant, others) = self
            .with_fork(leg, |f| {
                let others: Vec<(u64, Message)> = f
                    .branches
                    .iter()
                    .enumerate()
                    .filter(|(j, b)| *j != i && b.done.is_none())
                    .map(|(_, b)| (b.flow, b.invite.clone()))
                    .collect();
                f.answered = true;
                f.answering = false;
                (f.tenant.clone(), others)
            })
            .unwrap_or_default();
        for (flow_id, inv) in others {
            if let Some(f) = self.flows.get(flow_id) {
                f.send(&cancel(&inv));
            }
        }
        let our_tag = invite.from().ok().and_then(|f| f.tag()).unwrap_or_default();
        let their_tag = ok.to().ok().and_then(|t| t.tag()).unwrap_or_default();
        let early = self.dialogs.insert(Dialog {
            leg: leg.to_string(),
            tenant,
            device,
            flow: flow.id,
            invite: None,
            call_id: invite.call_id().to_string(),
            their_tag,
            tag: our_tag,
            local: invite.header("From").unwrap_or_default().to_string(),
            remote: ok.header("To").unwrap_or_default().to_string(),
            target: dialogs::contact_uri(ok)
                .unwrap_or_else(|| invite.uri().unwrap_or_default().to_string()),
            state: State::Answered { acked: true },
            answer: String::new(),
            contact: flow.our_uri("switchboard"),
            cseq: invite.cseq().map(|(n, _)| n).unwrap_or(1),
            sdp_addr: offered,
            session: (session_id, 1),
            their_cseq: 0,
            refer: None,
            secure: key.is_some(),
        });
        // The cancelled devices' final answers still find the fork for
        // their ACKs for a while.
        self.forget_fork_later(leg);
        if let Some(super::Early::End(cause)) = early {
            self.end_leg(leg, cause);
        }
    }

    /// Acknowledged a 2xx we do not want: hang it up.
    fn hang_up_branch(&self, flow: &Flow, invite: &Message, ok: &Message) {
        let mut bye = dialogs::request(
            "BYE",
            &dialogs::contact_uri(ok).unwrap_or_else(|| invite.uri().unwrap_or_default().into()),
            &flow.via(),
        );
        bye.push("From", invite.header("From").unwrap_or_default());
        bye.push("To", ok.header("To").unwrap_or_default());
        bye.push("Call-ID", invite.call_id());
        let (cseq, _) = invite.cseq().unwrap_or_default();
        bye.push("CSeq", format!("{} BYE", cseq + 1));
        flow.send(&bye);
    }

    /// A device gave its final answer; when all have and none answered,
    /// the leg ends with the most telling cause.
    fn finish_branch(&self, leg: &str, i: usize, status: u16) {
        let ended = self
            .with_fork(leg, |f| {
                if let Some(b) = f.branches.get_mut(i) {
                    b.done = Some(status);
                }
                let all = f.branches.iter().all(|b| b.done.is_some());
                (all && !f.settled).then(|| {
                    f.settled = true;
                    let codes: Vec<u16> = f.branches.iter().filter_map(|b| b.done).collect();
                    // A trunk that failed as a provider (before it rang:
                    // after, a 408 or 5xx may be the callee's no-answer,
                    // and a second trunk would ring them again): the next.
                    // An emergency call goes on over the next whatever
                    // the failure (a lost link included): it must get
                    // through if any trunk can carry it.
                    let next = f.next.take().filter(|n| {
                        (FAILOVER.contains(&status) && !f.rang)
                            || n.call.to.class == Class::Emergency
                    });
                    (cause_of(&codes), next)
                })
            })
            .flatten();
        if let Some((cause, next)) = ended {
            match next {
                // The next trunk's fork takes the leg's place.
                Some(next) => {
                    self.forget_fork(leg);
                    if self.ring_via(*next) {
                        return;
                    }
                }
                // Kept (settled) a while: a late answer still finds its
                // branch, and is acknowledged and hung up, whatever the
                // transport; a late refusal is acknowledged.
                None => self.forget_fork_later(leg),
            }
            self.rt.telephony().ended(leg, cause);
        }
    }

    fn forget_fork(&self, leg: &str) {
        let mut forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = forks.by_leg.remove(leg) {
            for b in f.branches {
                forks.by_call.remove(b.invite.call_id());
            }
        }
    }

    /// Call control ended a leg still ringing: every device still
    /// ringing gets a CANCEL. `false` if the leg is no fork.
    pub(super) fn cancel_fork(&self, leg: &str) -> bool {
        let pending = self
            .with_fork(leg, |f| {
                if f.answered || f.answering {
                    return None; // Its dialog ends it (an early end waits for it).
                }
                let first = !f.settled;
                f.settled = true;
                Some(if first {
                    f.branches
                        .iter()
                        .filter(|b| b.done.is_none())
                        .map(|b| (b.flow, b.invite.clone()))
                        .collect::<Vec<_>>()
                } else {
                    Vec::new()
                })
            })
            .flatten();
        let Some(pending) = pending else {
            return false;
        };
        for (flow_id, inv) in pending {
            if let Some(flow) = self.flows.get(flow_id) {
                flow.send(&cancel(&inv));
            }
        }
        self.forget_fork_later(leg);
        true
    }

    /// Forgets a settled fork once late final answers (acknowledged
    /// meanwhile) have had their time.
    fn forget_fork_later(&self, leg: &str) {
        let me = self.me.clone();
        let leg = leg.to_string();
        self.tokio.spawn(async move {
            tokio::time::sleep(dialogs::ACK_TIMEOUT).await;
            if let Some(door) = me.upgrade() {
                door.forget_fork(&leg);
            }
        });
    }

    /// `tenant`'s `device` may no longer be reached over the flows `off`
    /// picks (its UDP/TCP was turned off): its branches still ringing over
    /// one get a CANCEL and fail (487), as if it had declined.
    pub(super) fn cancel_branches_of(&self, tenant: &str, device: &str, off: impl Fn(u64) -> bool) {
        // Which flows are off is asked first (it takes the flows' lock);
        // the branches are marked given up under the forks' lock, so an
        // answer racing the CANCEL finds them done (and is hung up).
        let candidates: Vec<u64> = {
            let forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
            forks
                .by_leg
                .values()
                .filter(|f| f.tenant == tenant)
                .flat_map(|f| {
                    f.branches
                        .iter()
                        .filter(|b| b.device == device)
                        .map(|b| b.flow)
                })
                .collect()
        };
        let off: std::collections::HashSet<u64> =
            candidates.into_iter().filter(|f| off(*f)).collect();
        let ringing: Vec<(String, usize, u64, Message)> = {
            let mut forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
            forks
                .by_leg
                .values_mut()
                .filter(|f| f.tenant == tenant && !f.answered && !f.answering && !f.settled)
                .flat_map(|f| {
                    let leg = f.leg.clone();
                    f.branches
                        .iter_mut()
                        .enumerate()
                        .filter(|(_, b)| {
                            b.device == device && b.done.is_none() && off.contains(&b.flow)
                        })
                        .map(|(i, b)| {
                            b.done = Some(487);
                            (leg.clone(), i, b.flow, b.invite.clone())
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (leg, i, flow, invite) in ringing {
            if let Some(flow) = self.flows.get(flow) {
                flow.send(&cancel(&invite));
            }
            self.finish_branch(&leg, i, 487);
        }
    }

    /// A flow closed: its branches fail.
    pub(super) fn flow_gone(&self, flow: u64) {
        let hit: Vec<(String, usize)> = {
            let forks = self.forks.lock().unwrap_or_else(|p| p.into_inner());
            forks
                .by_leg
                .values()
                .flat_map(|f| {
                    f.branches
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| b.flow == flow && b.done.is_none())
                        .map(|(i, _)| (f.leg.clone(), i))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (leg, i) in hit {
            self.finish_branch(&leg, i, 480);
        }
    }
}

/// The cause of a leg none of whose devices answered.
fn cause_of(codes: &[u16]) -> Cause {
    if codes.iter().any(|c| matches!(c, 486 | 600)) {
        Cause::Busy
    } else if codes.iter().any(|c| matches!(c, 603)) {
        Cause::Rejected
    } else if codes.iter().any(|c| matches!(c, 408 | 480 | 487)) {
        Cause::NoAnswer
    } else {
        Cause::Unavailable
    }
}

/// The ACK of a non-2xx final answer: part of the INVITE's transaction
/// (same Via branch, RFC 3261 §17.1.1.3).
fn ack_failure(invite: &Message, response: &Message) -> Message {
    in_transaction(invite, "ACK", response.header("To").unwrap_or_default())
}

/// A request in one of our INVITE's own transaction: same Request-URI,
/// Via (branch), From, Call-ID and CSeq number, with `to`.
fn in_transaction(invite: &Message, method: &str, to: &str) -> Message {
    let mut m = Message {
        start: super::message::Start::Request {
            method: method.into(),
            uri: invite.uri().unwrap_or_default().into(),
        },
        headers: Vec::new(),
        body: Vec::new(),
    };
    if let Some(via) = invite.via().first() {
        m.push("Via", *via);
    }
    m.push("Max-Forwards", "70");
    m.push("From", invite.header("From").unwrap_or_default());
    m.push("To", to);
    m.push("Call-ID", invite.call_id());
    let (cseq, _) = invite.cseq().unwrap_or_default();
    m.push("CSeq", format!("{cseq} {method}"));
    m
}

/// An ACK or BYE for a 2xx whose INVITE we no longer keep: everything
/// from the response (our From, its To with its tag, the Call-ID).
fn ack_or_bye_from(ok: &Message, method: &str, cseq: u32, via: &str) -> Message {
    let target = dialogs::contact_uri(ok)
        .or_else(|| ok.to().ok().map(|t| t.uri_text))
        .unwrap_or_default();
    let mut m = dialogs::request(method, &target, via);
    m.push("From", ok.header("From").unwrap_or_default());
    m.push("To", ok.header("To").unwrap_or_default());
    m.push("Call-ID", ok.call_id());
    m.push("CSeq", format!("{cseq} {method}"));
    m
}

/// The ACK of a 2xx: its own transaction, to the device's Contact.
fn ack_2xx(invite: &Message, ok: &Message, via: &str) -> Message {
    let target =
        dialogs::contact_uri(ok).unwrap_or_else(|| invite.uri().unwrap_or_default().into());
    let mut m = dialogs::request("ACK", &target, via);
    m.push("From", invite.header("From").unwrap_or_default());
    m.push("To", ok.header("To").unwrap_or_default());
    m.push("Call-ID", invite.call_id());
    let (cseq, _) = invite.cseq().unwrap_or_default();
    m.push("CSeq", format!("{cseq} ACK"));
    m
}

/// The CANCEL of one of our INVITEs (same Via branch, RFC 3261 §9.1).
fn cancel(invite: &Message) -> Message {
    in_transaction(invite, "CANCEL", invite.header("To").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_telling_cause_wins() {
        assert_eq!(cause_of(&[480, 486]), Cause::Busy);
        assert_eq!(cause_of(&[603, 480]), Cause::Rejected);
        assert_eq!(cause_of(&[487, 500]), Cause::NoAnswer);
        assert_eq!(cause_of(&[500]), Cause::Unavailable);
    }

    #[test]
    fn acks_and_cancels_keep_to_the_invite() {
        let invite = Message::parse(
            b"INVITE sip:d@10.0.0.2:5061;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKabc\r\n\
              From: <sip:a@acme.localhost>;tag=1\r\nTo: <sip:d@acme.localhost>\r\nCall-ID: c@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let busy = Message::parse(
            b"SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKabc\r\n\
              From: <sip:a@acme.localhost>;tag=1\r\nTo: <sip:d@acme.localhost>;tag=9\r\nCall-ID: c@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let ack = ack_failure(&invite, &busy);
        assert_eq!(ack.branch(), invite.branch());
        assert_eq!(ack.to().unwrap().tag().as_deref(), Some("9"));
        let c = cancel(&invite);
        assert_eq!(c.branch(), invite.branch());
        assert_eq!(c.cseq().unwrap(), (1, "CANCEL".into()));
        assert_eq!(c.to().unwrap().tag(), None);
        // Both parse back as valid requests.
        Message::parse(&ack.to_bytes()).unwrap();
        Message::parse(&c.to_bytes()).unwrap();
    }
}
