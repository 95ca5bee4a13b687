//! The telephony service: the leg table, the media engine and the
//! signalling side, driven by one thread of its own (`sb-telephony`), apart
//! from the network runtime, the plugin executor and the media workers.
//! Plugins' commands (after their calls commit), media events, signalling
//! and a 100 ms watchdog tick arrive there as messages, in order; the
//! table decides, and the thread carries out its actions. Reads (a
//! snapshot for a capability's check, the dispatcher's ready events) take
//! the table's lock briefly and never wait on I/O.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::legs::{Action, Command, Delivery, StartRecording, Table};
use super::policy::{self, Class, Dialled, Refusal};
use super::records::CallRecord;
use super::signalling::{Inbound, MediaOffer, Signalling, Unreachable};
use crate::audit::{AuditLog, Scope};
use crate::call::Services;
use crate::call::blob::HostBlob;
use crate::call::legs::{Cause, LegSnapshot, OpEnd};
use crate::media::engine::{Engine, LegSetup, MediaConfig, MediaEvent};
use crate::media::record::{Piece, RecordEnd, RecordSpec};
use crate::metrics;
use crate::store::keys;
use crate::support::clock::now_ms;
use crate::support::sync::Recover as _;
use crate::tenant::Dialing;

/// The watchdog's period.
const TICK: Duration = Duration::from_millis(100);
pub use super::legs::MAX_LEGS_PER_TENANT;

/// Why telephony refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TelephonyError {
    /// The media engine could not give the leg its media.
    #[error("media: {0}")]
    Media(String),
    /// The leg is gone or not waiting for this.
    #[error("no such leg waiting")]
    NoLeg,
    /// A tenant's leg limit.
    #[error("the tenant has {MAX_LEGS_PER_TENANT} live legs")]
    TooManyLegs,
    /// Call control is not running (its thread could not start).
    #[error("call control is unavailable: {0}")]
    Unavailable(String),
}

/// A day in ms (the outbound-minutes cap counts per UTC day).
const DAY_MS: u64 = 86_400_000;

/// Telephony settings.
#[derive(Debug, Clone)]
pub struct TelephonyConfig {
    pub media: MediaConfig,
    /// The region of tenants that set none (ISO 3166, e.g. `US`).
    pub region: String,
    /// The SIP domain under which each tenant has its own,
    /// `{tenant}.{sip_domain}` (also the digest realm of its devices).
    pub sip_domain: String,
}

impl Default for TelephonyConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        TelephonyConfig {
            media: MediaConfig {
                workers: (cores / 2).max(1),
                bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                ports: 20000..=29999,
                report_interval: Duration::from_secs(5),
                nice: 0,
                cpus: Vec::new(),
                realtime: None,
            },
            region: "US".into(),
            sip_domain: "localhost".into(),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Dials the policy refused (SPEC T1).
    pub restricted: AtomicU64,
    pub legs_started: AtomicU64,
    /// Legs ended because their plugin failed their events.
    pub legs_failed: AtomicU64,
}

enum Msg {
    Command(String, String, Box<Command>),
    Offer(
        Box<Inbound>,
        oneshot::Sender<Result<(String, SocketAddr), TelephonyError>>,
    ),
    Ringing(String),
    Answered(
        String,
        Box<(MediaOffer, policy::Account)>,
        oneshot::Sender<Result<SocketAddr, TelephonyError>>,
    ),
    Prepare(
        String,
        Box<MediaOffer>,
        oneshot::Sender<Result<SocketAddr, TelephonyError>>,
    ),
    Remedia(
        String,
        Box<MediaOffer>,
        oneshot::Sender<Result<(), TelephonyError>>,
    ),
    Ended(String, Cause),
    Delivered(String, u64, bool),
    Transfer(String, String, oneshot::Sender<Result<(), TelephonyError>>),
    TransferAttended(String, String, oneshot::Sender<Result<(), TelephonyError>>),
    Hold(String, bool),
    /// A recording is written: (leg, op, ms kept, how it ended, whether
    /// its blob holds anything).
    Recorded(String, String, u64, OpEnd, bool),
    /// More of a recording is stored: (leg, op, blob, offset, len).
    RecordingChunk(String, String, String, u64, u64),
    /// A recording's blob is refused more (quota): stop its media.
    StopRecording(u64),
}

/// Call control.
pub struct Telephony {
    config: TelephonyConfig,
    table: Mutex<Table>,
    /// Wakes the event dispatcher.
    ready: Arc<Notify>,
    control: OnceLock<Result<mpsc::UnboundedSender<Msg>, String>>,
    signalling: RwLock<Option<Arc<dyn Signalling>>>,
    audit: Arc<AuditLog>,
    /// The store, for call records (set once the host's services exist).
    services: OnceLock<Arc<Services>>,
    /// The live tenants, to check a recording's tenant and plugin before
    /// each write.
    tenants: OnceLock<Arc<crate::call::Tenants>>,
    me: Weak<Telephony>,
    /// Live legs as the control thread last counted them.
    live: AtomicU64,
    /// Per tenant: (UTC day, talk ms of calls out of the tenant).
    minutes: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// What the SIP door last reported of trunks (registrations,
    /// connections to their proxies), by (tenant, trunk, aspect).
    trunk_states:
        Mutex<std::collections::HashMap<(String, String, &'static str), serde_json::Value>>,
    pub counters: Counters,
}

impl Telephony {
    /// Call control for a host; its thread and media start on first use.
    pub fn new(config: TelephonyConfig, audit: Arc<AuditLog>) -> Arc<Telephony> {
        Arc::new_cyclic(|me| Telephony {
            config,
            table: Mutex::default(),
            ready: Arc::new(Notify::new()),
            control: OnceLock::new(),
            signalling: RwLock::new(None),
            audit,
            services: OnceLock::new(),
            tenants: OnceLock::new(),
            me: me.clone(),
            live: AtomicU64::new(0),
            minutes: Mutex::default(),
            trunk_states: Mutex::default(),
            counters: Counters::default(),
        })
    }

    /// Makes `signalling` the side that answers, ends and places calls.
    pub fn set_signalling(&self, signalling: Arc<dyn Signalling>) {
        *self.signalling.write().recover() = Some(signalling);
    }

    fn signalling(&self) -> Arc<dyn Signalling> {
        match &*self.signalling.read().recover() {
            Some(s) => s.clone(),
            None => Arc::new(Unreachable(self.me.clone())),
        }
    }

    /// Writes a call record to the tenant's store, off call control's
    /// thread (a slow disk never holds up calls); a failure is logged.
    fn write_record(&self, tenant: String, record: CallRecord) {
        let Some(services) = self.services.get().cloned() else {
            return;
        };
        let key = keys::call_record(&tenant, record.ended_ms, &record.leg);
        let Ok(value) = serde_json::to_vec(&record) else {
            return;
        };
        let me = self.me.clone();
        tokio::task::spawn_blocking(move || {
            // Counted before it is stored (a first count of the day reads
            // the day's stored records, which must not hold this one yet).
            if let Some(t) = me.upgrade() {
                t.count_minutes(&tenant, &record);
            }
            services.apply_logged(&tenant, vec![(key, Some(value))])
        });
    }

    /// Gives call control the store, for call records.
    pub(crate) fn set_services(&self, services: Arc<Services>) {
        let _ = self.services.set(services);
    }

    /// Gives call control the live tenants (recordings write only while
    /// their tenant and plugin are still there).
    pub(crate) fn set_tenants(&self, tenants: Arc<crate::call::Tenants>) {
        let _ = self.tenants.set(tenants);
    }

    /// The SIP domain under which each tenant has its own.
    pub fn sip_domain(&self) -> &str {
        &self.config.sip_domain
    }

    /// The region of tenants that set none.
    pub fn default_region(&self) -> &str {
        &self.config.region
    }

    /// Keeps what the SIP door reports of one `aspect` of a trunk (its
    /// `registration`, its `connection`; `None`: no longer); returns the
    /// state it had before.
    pub fn note_trunk_state(
        &self,
        tenant: &str,
        trunk: &str,
        aspect: &'static str,
        state: Option<serde_json::Value>,
    ) -> Option<serde_json::Value> {
        let key = (tenant.to_string(), trunk.to_string(), aspect);
        let mut all = self.trunk_states.lock().recover();
        match state {
            Some(s) => all.insert(key, s),
            None => all.remove(&key),
        }
    }

    /// One aspect of a trunk as last reported.
    pub fn trunk_state(
        &self,
        tenant: &str,
        trunk: &str,
        aspect: &'static str,
    ) -> Option<serde_json::Value> {
        self.trunk_states
            .lock()
            .recover()
            .get(&(tenant.to_string(), trunk.to_string(), aspect))
            .cloned()
    }

    /// Whether the class of service of everyone a leg is for lets it
    /// into conference rooms (an unusable policy: no): the user and
    /// device whose phone it is, if a phone of the tenant (a caller from
    /// a trunk holds no restriction), and, for a leg a plugin placed,
    /// the user and device it was placed for (for no one: the tenant's
    /// default restriction, as for the dial itself).
    pub fn may_conference(
        &self,
        dialing: &Dialing,
        phone: &policy::Account,
        placed_for: Option<&policy::Account>,
    ) -> bool {
        let is_phone = phone.user.is_some() || phone.device.is_some();
        policy::from_dialing(dialing, &self.config.region).is_ok_and(|(_, rules)| {
            is_phone
                .then_some(phone)
                .into_iter()
                .chain(placed_for)
                .all(|a| {
                    rules
                        .cor_of(a.user.as_deref(), a.device.as_deref())
                        .conference
                })
        })
    }

    /// Whether `to` reads as an emergency number in the tenant's plan.
    pub fn is_emergency(&self, dialing: &Dialing, to: &str) -> bool {
        policy::from_dialing(dialing, &self.config.region)
            .ok()
            .and_then(|(plan, _)| plan.read(to).ok())
            .is_some_and(|d| d.class == Class::Emergency)
    }

    /// SPEC T1: reads `to` in the tenant's plan and decides by its rules
    /// (`dialing`, from its record). A refusal is counted and audited
    /// (`call.dial`, outcome `restricted`).
    pub fn check_dial(
        &self,
        tenant: &str,
        plugin: &str,
        dialing: &Dialing,
        to: &str,
        asking: policy::Asking<'_>,
    ) -> Result<Dialled, Refusal> {
        let decided = match policy::from_dialing(dialing, &self.config.region) {
            Ok((plan, rules)) => plan
                .read(to)
                .and_then(|d| rules.decide_for(&d, asking).map(|()| d)),
            // Checked when set; a record that no longer reads refuses all.
            Err(e) => Err(Refusal {
                reason: format!("the tenant's dialing policy is unusable: {e}"),
                class: None,
            }),
        };
        if let Err(refusal) = &decided {
            self.counters.restricted.fetch_add(1, Ordering::Relaxed);
            let class = refusal.class.map_or("unreadable", Class::name);
            metrics::CALLS_RESTRICTED.inc(&[tenant, class]);
            self.audit.note(
                &Scope::tenant(tenant),
                "call.dial",
                to,
                Refusal::CODE,
                &format!("plugin {plugin}; class {class}; {}", refusal.reason),
            );
        }
        decided
    }

    /// Whether a recording runs on leg `id`.
    pub fn recording_on(&self, id: &str) -> bool {
        self.table.lock().recover().recording_on(id)
    }

    /// Whether leg `id`'s phone asked for a transfer not yet settled.
    pub fn transfer_pending(&self, id: &str) -> bool {
        self.table.lock().recover().transfer_pending(id)
    }

    /// The leg `id` if `tenant`'s `plugin` owns it (else `None`, as for an
    /// unknown id).
    pub fn lookup(&self, tenant: &str, plugin: &str, id: &str) -> Option<LegSnapshot> {
        self.table.lock().recover().lookup(tenant, plugin, id)
    }

    /// The leg of operation `op` if `tenant`'s `plugin` owns it.
    pub fn lookup_op(&self, tenant: &str, plugin: &str, op: &str) -> Option<LegSnapshot> {
        self.table.lock().recover().lookup_op(tenant, plugin, op)
    }

    /// Outbound legs of `tenant` ringing or answered.
    pub fn outbound_live(&self, tenant: &str) -> usize {
        self.table.lock().recover().outbound_live(tenant)
    }

    /// Talk time (ms) of the tenant's calls out of it (to E.164 numbers)
    /// that ended today (UTC): counted as legs end, seeded from the day's
    /// stored records the first time it is asked (so a restart forgets
    /// nothing).
    pub fn outbound_ms_today(&self, tenant: &str) -> u64 {
        let day = crate::support::clock::now_ms() / DAY_MS;
        if let Some((d, ms)) = self.minutes.lock().recover().get(tenant)
            && *d == day
        {
            return *ms;
        }
        let seeded = self.stored_outbound_ms(tenant, day);
        let mut minutes = self.minutes.lock().recover();
        let entry = minutes.entry(tenant.to_string()).or_insert((day, 0));
        if entry.0 != day {
            *entry = (day, seeded);
        } else {
            entry.1 = entry.1.max(seeded);
        }
        entry.1
    }

    fn stored_outbound_ms(&self, tenant: &str, day: u64) -> u64 {
        let Some(services) = self.services.get() else {
            return 0;
        };
        let prefix = keys::call_record_prefix(tenant);
        let mut start = keys::call_record(tenant, day * DAY_MS, "");
        start.pop();
        let mut total = 0;
        loop {
            let Ok(page) = services.store.scan(&prefix, Some(&start), 1000) else {
                return total;
            };
            let Some((last, _)) = page.last() else {
                return total;
            };
            start = last.clone();
            let full = page.len() == 1000;
            for (_, value) in page {
                let Ok(r) = serde_json::from_slice::<CallRecord>(&value) else {
                    continue;
                };
                if r.is_outside() && r.ended_ms / DAY_MS == day {
                    total += r.talk_ms;
                }
            }
            if !full {
                return total;
            }
        }
    }

    /// Counts a finished leg's talk time towards its tenant's day.
    fn count_minutes(&self, tenant: &str, record: &CallRecord) {
        if !record.is_outside() || record.talk_ms == 0 {
            return;
        }
        let day = record.ended_ms / DAY_MS;
        // Seeded first (from what is stored, which this record is not
        // yet), then counted.
        self.outbound_ms_today(tenant);
        let mut minutes = self.minutes.lock().recover();
        if let Some((d, ms)) = minutes.get_mut(tenant)
            && *d == day
        {
            *ms += record.talk_ms;
        }
    }

    /// Counts and audits a dial refused for the tenant's outbound minutes
    /// a day.
    pub fn refuse_over_minutes(&self, tenant: &str, plugin: &str, to: &str, cap: u32) {
        self.counters.restricted.fetch_add(1, Ordering::Relaxed);
        metrics::CALLS_RESTRICTED.inc(&[tenant, "over-minutes"]);
        self.audit.note(
            &Scope::tenant(tenant),
            "call.dial",
            to,
            "over_minutes",
            &format!("plugin {plugin}; the {cap} outbound minutes for today are used up"),
        );
    }

    /// Counts and audits a dial refused for the tenant's cap on
    /// concurrent outbound calls.
    pub fn refuse_over_cap(&self, tenant: &str, plugin: &str, to: &str, cap: u32) {
        self.counters.restricted.fetch_add(1, Ordering::Relaxed);
        metrics::CALLS_RESTRICTED.inc(&[tenant, "over-cap"]);
        self.audit.note(
            &Scope::tenant(tenant),
            "call.dial",
            to,
            "over_cap",
            &format!("plugin {plugin}; {cap} concurrent outbound calls in use"),
        );
    }

    /// Members of a plugin's conference room.
    pub fn room_members(&self, tenant: &str, plugin: &str, room: &str) -> usize {
        self.table
            .lock()
            .recover()
            .room_members(tenant, plugin, room)
    }

    /// Whether `tenant` may have another leg.
    pub fn has_room(&self, tenant: &str) -> bool {
        self.legs_of(tenant) < MAX_LEGS_PER_TENANT
    }

    /// Live legs of `tenant`.
    pub fn legs_of(&self, tenant: &str) -> usize {
        self.table.lock().recover().count(tenant)
    }

    /// Live legs of every tenant.
    pub fn legs(&self) -> usize {
        self.table.lock().recover().len()
    }

    /// What wakes the event dispatcher.
    pub fn ready(&self) -> Arc<Notify> {
        self.ready.clone()
    }

    /// Events to deliver now (marked in flight until `delivered`).
    pub fn take_ready(&self, max: usize) -> Vec<Delivery> {
        self.table.lock().recover().take_ready(now_ms(), max)
    }

    /// How a delivery went.
    pub fn delivered(&self, leg: &str, seq: u64, ok: bool) {
        self.send(Msg::Delivered(leg.to_string(), seq, ok));
    }

    /// Queues a plugin's committed command.
    pub fn submit(&self, tenant: &str, plugin: &str, cmd: Command) {
        self.send(Msg::Command(
            tenant.to_string(),
            plugin.to_string(),
            Box::new(cmd),
        ));
    }

    /// A call arrives for a plugin: its media opens and `offered` goes to
    /// the plugin. Returns the leg and the local media address (for SDP).
    pub async fn offer(&self, inbound: Inbound) -> Result<(String, SocketAddr), TelephonyError> {
        if !self.has_room(&inbound.tenant) {
            return Err(TelephonyError::TooManyLegs);
        }
        self.ask(|tx| Msg::Offer(Box::new(inbound), tx)).await
    }

    /// An outbound leg rings at the far end.
    pub fn ringing(&self, leg: &str) {
        self.send(Msg::Ringing(leg.to_string()));
    }

    /// An outbound leg was answered with `media` by `phone` (the device
    /// and its owner, when a phone of the tenant answered: their class of
    /// restriction and of service follow the leg); returns the local
    /// media address.
    pub async fn answered(
        &self,
        leg: &str,
        media: MediaOffer,
        phone: policy::Account,
    ) -> Result<SocketAddr, TelephonyError> {
        self.ask(|tx| Msg::Answered(leg.to_string(), Box::new((media, phone)), tx))
            .await
    }

    /// Opens the media of an outbound leg before its answer, so the
    /// signalling side can offer its address (SIP: the INVITE's SDP);
    /// `media` holds our key, and a placeholder for the far end's until
    /// `answered` names it. Returns the local media address.
    pub async fn prepare(
        &self,
        leg: &str,
        media: MediaOffer,
    ) -> Result<SocketAddr, TelephonyError> {
        self.ask(|tx| Msg::Prepare(leg.to_string(), Box::new(media), tx))
            .await
    }

    /// Whom leg `id` of `tenant`'s `plugin` is for (`Table::accounts`).
    pub fn accounts(
        &self,
        tenant: &str,
        plugin: &str,
        id: &str,
    ) -> Option<(policy::Account, Option<policy::Account>)> {
        self.table.lock().recover().accounts(tenant, plugin, id)
    }

    /// Notes the trunk an outbound leg goes out over (for its record).
    pub fn via_trunk(&self, leg: &str, trunk: &str) {
        self.table.lock().recover().set_trunk(leg, trunk);
    }

    /// The far end of an answered leg changed its media (SIP: a
    /// re-INVITE, e.g. hold or a new address): its media follows `media`
    /// (the far end's address and key, and a fresh key of ours), on the
    /// same local port, in the same bridge or room.
    pub async fn remedia(&self, leg: &str, media: MediaOffer) -> Result<(), TelephonyError> {
        self.ask(|tx| Msg::Remedia(leg.to_string(), Box::new(media), tx))
            .await
    }

    /// The phone of an answered leg asks to transfer its call to `to`
    /// (SIP: REFER): `transfer` goes to the leg's plugin. `NoLeg` unless
    /// the leg is answered and has no transfer pending.
    pub async fn transfer(&self, leg: &str, to: &str) -> Result<(), TelephonyError> {
        self.ask(|tx| Msg::Transfer(leg.to_string(), to.to_string(), tx))
            .await
    }

    /// The phone of an answered leg asks to connect its other party with
    /// the other party of its other call `other` (SIP: REFER with
    /// Replaces). `NoLeg` unless both are answered legs of one plugin.
    pub async fn transfer_attended(&self, leg: &str, other: &str) -> Result<(), TelephonyError> {
        self.ask(|tx| Msg::TransferAttended(leg.to_string(), other.to_string(), tx))
            .await
    }

    /// The far end put a leg on hold or took it off (SIP: the direction
    /// of a re-INVITE's offer).
    pub fn hold(&self, leg: &str, on_hold: bool) {
        self.send(Msg::Hold(leg.to_string(), on_hold));
    }

    /// Sends call control the message `msg` makes around a reply channel
    /// and waits for the reply.
    async fn ask<T>(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<T, TelephonyError>>) -> Msg,
    ) -> Result<T, TelephonyError> {
        let (tx, rx) = oneshot::channel();
        self.control()?
            .send(msg(tx))
            .map_err(|_| TelephonyError::Unavailable("call control stopped".into()))?;
        rx.await
            .map_err(|_| TelephonyError::Unavailable("call control stopped".into()))?
    }

    /// A plugin's `set-mwi` committed: the signalling side tells the
    /// user's devices (returns at once).
    pub fn mwi_changed(&self, tenant: &str, user: &str) {
        self.signalling().mwi_changed(tenant, user);
    }

    /// A device was removed or got a new password (returns at once).
    pub fn device_changed(&self, tenant: &str, device: &str) {
        self.signalling().device_changed(tenant, device);
    }

    /// A device may no longer use UDP/TCP (returns at once).
    pub fn device_plain_off(&self, tenant: &str, device: &str) {
        self.signalling().device_plain_off(tenant, device);
    }

    /// The far end ended a leg.
    pub fn ended(&self, leg: &str, cause: Cause) {
        self.send(Msg::Ended(leg.to_string(), cause));
    }

    fn send(&self, msg: Msg) {
        match self.control() {
            Ok(tx) => {
                let _ = tx.send(msg);
            }
            Err(e) => tracing::error!(error = %e, "call control is unavailable; message dropped"),
        }
    }

    /// The control thread's queue, starting the thread on first use.
    fn control(&self) -> Result<&mpsc::UnboundedSender<Msg>, TelephonyError> {
        self.control
            .get_or_init(|| self.start())
            .as_ref()
            .map_err(|e| TelephonyError::Unavailable(e.clone()))
    }

    fn start(&self) -> Result<mpsc::UnboundedSender<Msg>, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = self.me.clone();
        let media = self.config.media.clone();
        std::thread::Builder::new()
            .name("sb-telephony".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "call control cannot start its runtime");
                        return;
                    }
                };
                rt.block_on(run(me, media, rx));
            })
            .map_err(|e| format!("cannot start the call control thread: {e}"))?;
        Ok(tx)
    }
}

/// The control thread's loop; ends when the service is dropped.
async fn run(me: Weak<Telephony>, media: MediaConfig, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let (engine, mut media_events) = match Engine::start(media) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e, "the media engine cannot start; calls are unavailable");
            return;
        }
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let step = tokio::select! {
            msg = rx.recv() => Step::Msg(msg),
            Some(e) = media_events.recv() => Step::Media(e),
            _ = tick.tick() => Step::Tick,
        };
        let Some(t) = me.upgrade() else { return };
        let now = now_ms();
        let actions = match step {
            Step::Msg(None) => return,
            Step::Msg(Some(msg)) => match msg {
                Msg::Command(tenant, plugin, cmd) => t
                    .table
                    .lock()
                    .recover()
                    .command(&tenant, &plugin, *cmd, now),
                Msg::Offer(inbound, reply) => {
                    if t.table.lock().recover().count(&inbound.tenant) >= MAX_LEGS_PER_TENANT {
                        let _ = reply.send(Err(TelephonyError::TooManyLegs));
                        carry_out(&t, &engine, Vec::new()).await;
                        continue;
                    }
                    let opened = open(&engine, &inbound.media, group_of(&inbound.tenant)).await;
                    let _ = reply.send(match opened {
                        Ok((media, addr)) => {
                            let id = crate::support::encoding::random_hex(16);
                            t.table
                                .lock()
                                .recover()
                                .offer(id.clone(), &inbound, media, now);
                            t.counters.legs_started.fetch_add(1, Ordering::Relaxed);
                            metrics::CALL_LEGS.inc(&[&inbound.tenant, "inbound"]);
                            Ok((id, addr))
                        }
                        Err(e) => Err(e),
                    });
                    Vec::new()
                }
                Msg::Ringing(leg) => {
                    t.table.lock().recover().ringing(&leg, now);
                    Vec::new()
                }
                Msg::Prepare(leg, offer, reply) => {
                    let tenant = t.table.lock().recover().ringing_without_media(&leg);
                    let result = match tenant {
                        Some(tenant) => match open(&engine, &offer, group_of(&tenant)).await {
                            Ok((media, addr)) => {
                                if t.table.lock().recover().prepared(&leg, media) {
                                    Ok(addr)
                                } else {
                                    let _ = engine.close(media).await;
                                    Err(TelephonyError::NoLeg)
                                }
                            }
                            Err(e) => Err(e),
                        },
                        None => Err(TelephonyError::NoLeg),
                    };
                    let _ = reply.send(result);
                    Vec::new()
                }
                Msg::Answered(leg, answer, reply) => {
                    let (offer, phone) = *answer;
                    let (tenant, prepared, ringing) = {
                        let table = t.table.lock().recover();
                        (
                            table.tenant_of(&leg).unwrap_or_default(),
                            table.media_of(&leg),
                            table.is_ringing(&leg),
                        )
                    };
                    // Only a leg still ringing takes an answer (a second
                    // one must not move the first's media).
                    if !ringing {
                        let _ = reply.send(Err(TelephonyError::NoLeg));
                        continue;
                    }
                    let opened = match prepared {
                        Some(media) => engine
                            .retarget(media, setup(&offer, group_of(&tenant)))
                            .await
                            .map(|()| (media, None))
                            .map_err(|e| TelephonyError::Media(e.to_string())),
                        None => open(&engine, &offer, group_of(&tenant))
                            .await
                            .map(|(m, a)| (m, Some(a))),
                    };
                    let result = match opened {
                        Ok((media, addr)) => {
                            let taken = {
                                let mut table = t.table.lock().recover();
                                let taken = table.answered(
                                    &leg,
                                    media,
                                    offer.payload_type,
                                    offer.srtp.is_some(),
                                    now,
                                );
                                if taken {
                                    table.answered_on(&leg, phone);
                                }
                                taken
                            };
                            if taken {
                                t.counters.legs_started.fetch_add(1, Ordering::Relaxed);
                                metrics::CALL_LEGS.inc(&[&tenant, "outbound"]);
                                Ok(addr.unwrap_or(offer.remote))
                            } else {
                                if addr.is_some() {
                                    let _ = engine.close(media).await;
                                }
                                Err(TelephonyError::NoLeg)
                            }
                        }
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(result);
                    Vec::new()
                }
                Msg::Remedia(leg, offer, reply) => {
                    let (tenant, media, answered) = {
                        let table = t.table.lock().recover();
                        (
                            table.tenant_of(&leg).unwrap_or_default(),
                            table.media_of(&leg),
                            table.is_answered(&leg),
                        )
                    };
                    let result = match media {
                        Some(media) if answered => engine
                            .retarget(media, setup(&offer, group_of(&tenant)))
                            .await
                            .map_err(|e| TelephonyError::Media(e.to_string())),
                        _ => Err(TelephonyError::NoLeg),
                    };
                    let _ = reply.send(result);
                    Vec::new()
                }
                Msg::Ended(leg, cause) => t.table.lock().recover().ended(&leg, cause, now),
                Msg::Transfer(leg, to, reply) => {
                    let taken = t.table.lock().recover().transfer(&leg, &to, now);
                    let _ = reply.send(if taken {
                        Ok(())
                    } else {
                        Err(TelephonyError::NoLeg)
                    });
                    Vec::new()
                }
                Msg::TransferAttended(leg, other, reply) => {
                    let taken = t
                        .table
                        .lock()
                        .recover()
                        .transfer_attended(&leg, &other, now);
                    let _ = reply.send(if taken {
                        Ok(())
                    } else {
                        Err(TelephonyError::NoLeg)
                    });
                    Vec::new()
                }
                Msg::Hold(leg, on_hold) => {
                    t.table.lock().recover().hold(&leg, on_hold, now);
                    Vec::new()
                }
                Msg::Recorded(leg, op, ms, end, stored) => {
                    let ms = if stored { ms } else { 0 };
                    t.table
                        .lock()
                        .recover()
                        .recorded(&leg, &op, ms, end, stored, now);
                    Vec::new()
                }
                Msg::RecordingChunk(leg, op, blob, offset, len) => {
                    t.table
                        .lock()
                        .recover()
                        .recording_chunk(&leg, &op, blob, offset, len, now);
                    Vec::new()
                }
                Msg::StopRecording(media) => vec![Action::StopRecording(media)],
                Msg::Delivered(leg, seq, ok) => {
                    let mut table = t.table.lock().recover();
                    let owner = table.owner_of(&leg);
                    let actions = table.delivered(&leg, seq, ok, now);
                    drop(table);
                    let failed = actions
                        .iter()
                        .any(|a| matches!(a, Action::End(_, Cause::Failed)));
                    if failed {
                        t.counters.legs_failed.fetch_add(1, Ordering::Relaxed);
                        if let Some((tenant, plugin)) = owner {
                            metrics::CALL_LEGS_FAILED.inc(&[&tenant, &plugin]);
                        }
                    }
                    actions
                }
            },
            Step::Media(MediaEvent::Digit { leg, key }) => {
                t.table.lock().recover().digit(leg, key, now)
            }
            Step::Media(MediaEvent::PlayDone { leg, tag }) => {
                t.table.lock().recover().play_done(leg, tag, now)
            }
            Step::Media(MediaEvent::Latched { .. }) => Vec::new(),
            Step::Tick => t.table.lock().recover().tick(now),
        };
        carry_out(&t, &engine, actions).await;
        let table = t.table.lock().recover();
        let (ready, live) = (table.has_ready(), table.len());
        drop(table);
        // The process-wide gauge moves by this host's change.
        let old = t.live.swap(live as u64, Ordering::Relaxed);
        if live as u64 >= old {
            metrics::LIVE_CALL_LEGS.fetch_add(live as u64 - old, Ordering::Relaxed);
        } else {
            metrics::LIVE_CALL_LEGS.fetch_sub(old - live as u64, Ordering::Relaxed);
        }
        if ready {
            t.ready.notify_one();
        }
    }
}

enum Step {
    Msg(Option<Msg>),
    Media(MediaEvent),
    Tick,
}

/// Writes a recording's pieces into its blob as they come (the store's
/// work off call control's thread), then tells call control it is done.
/// A blob the tenant's or owner's quota refuses keeps what fit, and the
/// recording stops (`stopped`).
async fn write_recording(
    me: Weak<Telephony>,
    start: StartRecording,
    mut pieces: mpsc::UnboundedReceiver<Piece>,
) {
    let services = me.upgrade().and_then(|t| t.services.get().cloned());
    // Each write checks that the tenant (the same incarnation) still has
    // the plugin enabled: a deleted tenant's call never writes into a
    // new tenant of the same id, nor a removed plugin into its old space.
    let tenants = me.upgrade().and_then(|t| t.tenants.get().cloned());
    let (tenant, plugin, incarnation) = (
        start.tenant.clone(),
        start.plugin.clone(),
        start.incarnation.clone(),
    );
    let still_valid: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(move || {
        tenants
            .as_ref()
            .and_then(|ts| ts.get(&tenant))
            .is_some_and(|s| s.record.incarnation == incarnation && s.enabled.contains_key(&plugin))
    });
    let blob = services.as_ref().and_then(|_| {
        HostBlob::new(
            &start.tenant,
            &start.plugin,
            &start.blob,
            start.opts.owner.clone(),
            &start.opts.class,
            start.quota,
        )
        .ok()
    });
    let (mut blob, mut refused) = (blob, false);
    let mut outcome = (RecordEnd::Closed, 0u64);
    // The WAV header's place, written over when the length is known.
    let mut header = Some(vec![0u8; 44]);
    // Bytes told to the plugin so far (`chunk-ms`), after the header.
    let chunk_bytes = u64::from(start.opts.chunk_ms) * 16;
    let mut told = 44u64;
    let mut named = false;
    while let Some(piece) = pieces.recv().await {
        let mut bytes = header.take().unwrap_or_default();
        bytes.extend_from_slice(&piece.pcm);
        if !refused && let (Some(b), Some(services)) = (blob.take(), services.clone()) {
            let valid = still_valid.clone();
            let appended = tokio::task::spawn_blocking(move || {
                let mut b = b;
                let r = b.append(&services, &bytes, &*valid);
                (b, r)
            })
            .await;
            let Ok((b, written)) = appended else {
                // The store's thread is gone (shutting down).
                break;
            };
            if let Err(e) = written {
                tracing::info!(tenant = %start.tenant, plugin = %start.plugin, error = %e, "a call recording's blob is full");
                refused = true;
                if let Some(t) = me.upgrade() {
                    t.send(Msg::StopRecording(start.media));
                }
            }
            // What is stored now (whole pieces) may be read: told in
            // `chunk-ms` steps, before the end, which `recorded` tells;
            // the blob itself at once (an empty first chunk), so a plugin
            // knows where its audio is should the server stop.
            let now_stored = b.stored_len();
            let first = chunk_bytes > 0 && !named;
            named = true;
            if (first || (chunk_bytes > 0 && now_stored >= told + chunk_bytes))
                && let Some(t) = me.upgrade()
            {
                let len = if now_stored >= told + chunk_bytes {
                    now_stored - told
                } else {
                    0
                };
                t.send(Msg::RecordingChunk(
                    start.leg.clone(),
                    start.op.clone(),
                    start.blob.clone(),
                    told,
                    len,
                ));
                told += len;
            }
            blob = Some(b);
        }
        if let Some(end) = piece.end {
            outcome = end;
            break;
        }
    }
    let mut stored = false;
    let mut kept_bytes = 0u64;
    // Nothing came (the media never started): no blob at all.
    let blob = blob.filter(|b| !b.is_empty());
    if let (Some(mut b), Some(services)) = (blob, services) {
        // The header names what the blob will hold: all of it, or, if the
        // quota refuses the rest, what was stored already.
        let all = b.len().saturating_sub(44);
        let head = crate::media::record::wav_header(u32::try_from(all).unwrap_or(u32::MAX));
        let valid = still_valid.clone();
        let done = tokio::task::spawn_blocking(move || {
            let r = b.finish(&services, &head, &*valid);
            (b, r, services)
        })
        .await;
        if let Ok((mut b, r, services)) = done {
            kept_bytes = b.stored_len().saturating_sub(44);
            stored = match r {
                Ok(_) => true,
                Err(_) if b.stored_len() > 0 => {
                    refused = true;
                    let kept = b.stored_len().saturating_sub(44);
                    let head =
                        crate::media::record::wav_header(u32::try_from(kept).unwrap_or(u32::MAX));
                    let valid = still_valid.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || b.restamp(&services, &head, &*valid))
                            .await;
                    true
                }
                Err(_) => false,
            };
        }
    }
    let end = match (refused, outcome.0) {
        (true, _) | (false, RecordEnd::Stopped) => OpEnd::Stopped,
        (false, RecordEnd::Full) => OpEnd::Done,
        (false, RecordEnd::Silence) => OpEnd::Timeout,
        (false, RecordEnd::Closed) => OpEnd::Hangup,
    };
    if let Some(t) = me.upgrade() {
        // 16 bytes a millisecond (8 kHz, 16-bit): what the blob holds.
        t.send(Msg::Recorded(
            start.leg,
            start.op,
            kept_bytes / 16,
            end,
            stored,
        ));
    }
}

/// The media group of a tenant's legs: every leg of a tenant runs on one
/// media worker, so any two of them can be bridged.
fn group_of(tenant: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tenant.hash(&mut h);
    h.finish()
}

fn setup(offer: &MediaOffer, group: u64) -> LegSetup {
    LegSetup {
        group,
        remote: offer.remote,
        payload_type: offer.payload_type,
        dtmf: offer.dtmf,
        srtp: offer.srtp.clone(),
    }
}

async fn open(
    engine: &Engine,
    offer: &MediaOffer,
    group: u64,
) -> Result<(u64, SocketAddr), TelephonyError> {
    engine
        .open(setup(offer, group))
        .await
        .map_err(|e| TelephonyError::Media(e.to_string()))
}

async fn carry_out(t: &Telephony, engine: &Engine, actions: Vec<Action>) {
    let mut queue: std::collections::VecDeque<Action> = actions.into();
    while let Some(action) = queue.pop_front() {
        let result = match action {
            Action::Play { media, sound, tag } => engine.play(media, sound, tag).await,
            Action::StopPlay(media) => engine.stop_play(media).await,
            Action::Bridge { a, b, media } => {
                let ok = engine.bridge(media.0, media.1).await.is_ok();
                t.table.lock().recover().bridge_done(&a, &b, ok, now_ms());
                Ok(())
            }
            Action::Unbridge(media) => engine.unbridge(media).await,
            Action::Join { leg, media, room } => {
                let ok = engine.join(media, room).await.is_ok();
                t.table.lock().recover().join_done(&leg, ok, now_ms());
                Ok(())
            }
            Action::Leave(media) => engine.leave(media).await,
            Action::Record {
                tenant,
                record,
                media,
            } => {
                let record = match media {
                    Some(m) => match engine.stats(m).await {
                        Ok(st) => record.with_stats(&st),
                        Err(_) => *record,
                    },
                    None => *record,
                };
                t.write_record(tenant, record);
                Ok(())
            }
            Action::RefusedOverCap {
                tenant,
                plugin,
                to,
                cap,
            } => {
                t.refuse_over_cap(&tenant, &plugin, &to, cap);
                Ok(())
            }
            Action::Close(media) => engine.close(media).await,
            Action::Answer(leg) => {
                t.signalling().answer(&leg);
                Ok(())
            }
            Action::End(leg, cause) => {
                t.signalling().end(&leg, cause);
                Ok(())
            }
            Action::Originate(call) => {
                t.signalling().originate(call);
                Ok(())
            }
            Action::TransferFailed(leg, cause) => {
                t.signalling().transfer_failed(&leg, cause);
                Ok(())
            }
            Action::StartRecording(start) => {
                let (sink, pieces) = mpsc::unbounded_channel();
                let spec = RecordSpec {
                    max_frames: u64::from(start.opts.max_ms).div_ceil(20),
                    silence_frames: u64::from(start.opts.silence_ms).div_ceil(20),
                    sink,
                };
                let media = start.media;
                tokio::spawn(write_recording(t.me.clone(), *start, pieces));
                engine.record(media, spec).await
            }
            Action::StopRecording(media) => engine.stop_record(media).await,
            Action::PauseRecording(media, paused) => engine.pause_record(media, paused).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "a media action found its leg gone");
        }
    }
}
