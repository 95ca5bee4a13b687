//! The event hub (SPEC N2, issue 6): what plugins publish through the
//! `events` capability reaches the WebSocket streams of the users (and
//! guests) it names, or of the members of a group, once the publishing
//! call has committed.
//!
//! Every delivered event gets an id, increasing across the whole process
//! and across restarts (ids start from the boot time in microseconds).
//! Each (tenant, user) keeps a backlog of its recent events for
//! `resume_window` so a client that reconnects with the last id it saw gets
//! what it missed; if the backlog no longer reaches back that far (or the
//! server restarted), the client is told with a `reset` frame and should
//! reload its state.
//!
//! Each connected stream has a bounded queue. A consumer that does not keep
//! up is cut off (its queue is dropped and the connection closed with
//! 1013 "try again later") instead of being buffered without bound; it can
//! reconnect and resume from its last id.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use crate::support::clock::now_ms;
use crate::support::sync::Recover as _;

/// Tuning of the hub (`[events]` in the server config).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Events one connection may have queued before it is cut off.
    pub queue: usize,
    /// How long missed events are kept for a reconnecting client (s).
    pub resume_window_s: u64,
    /// Events kept per user for resuming, at most.
    pub backlog: usize,
    /// Streams one user may have open at once (tabs, devices).
    pub streams_per_user: usize,
    /// Largest frame a client may send (pings, closes), bytes.
    pub max_client_frame: usize,
    /// How often an open stream re-checks its session (expiry, sign-out,
    /// revocation), seconds.
    pub recheck_s: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            queue: 256,
            resume_window_s: 120,
            backlog: 512,
            streams_per_user: 16,
            max_client_frame: 4096,
            recheck_s: 30,
        }
    }
}

/// Largest `data` of one event.
pub const MAX_EVENT_BYTES: usize = 64 << 10;
/// Events one call may publish.
pub const MAX_PUBLISHES_PER_CALL: usize = 256;
/// Users the publishes of one call may name, together.
pub const MAX_AUDIENCE: usize = 10_000;
/// Members one group may have.
pub const MAX_GROUP_MEMBERS: usize = 10_000;

/// Who an event is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    Users(Vec<String>),
    /// A group of the publishing plugin.
    Group(String),
}

/// An event a call asked to publish; sent only if the call commits.
#[derive(Debug, Clone)]
pub struct EventDraft {
    pub plugin: String,
    pub audience: Audience,
    pub kind: String,
    pub data: Vec<u8>,
}

/// One event as it goes out: already serialised once for every receiver.
#[derive(Debug)]
pub struct Delivered {
    pub id: u64,
    pub frame: String,
}

/// Why a stream was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    TooManyStreams(usize),
}

/// A connected stream: its queue and what it must send first.
pub struct Subscription {
    pub id: u64,
    pub rx: mpsc::Receiver<Arc<Delivered>>,
    /// Missed events to send before anything from `rx`.
    pub replay: Vec<Arc<Delivered>>,
    /// Whether the client asked to resume but some events were lost.
    pub gap: bool,
}

struct Stream {
    id: u64,
    tx: mpsc::Sender<Arc<Delivered>>,
}

#[derive(Default)]
struct UserStreams {
    streams: Vec<Stream>,
    backlog: VecDeque<(u64, Arc<Delivered>)>,
    /// Highest id dropped from the backlog (or the boot id).
    dropped_through: u64,
}

/// The hub. One per runtime. Entries exist only for users who have a
/// stream open or closed one within the resume window, so memory follows
/// connections, not what plugins publish.
pub struct EventHub {
    config: EventsConfig,
    boot_id: u64,
    /// Highest id that may have been dropped with a forgotten entry: a new
    /// entry cannot vouch for anything before it.
    forgotten_through: AtomicU64,
    next_id: AtomicU64,
    next_stream: AtomicU64,
    users: Mutex<HashMap<(String, String), UserStreams>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Users whose first stream opened or last stream closed since the
    /// presence loop last looked: (tenant, user) -> online. Only the latest
    /// state of a user is kept, so flapping connections coalesce.
    presence: Mutex<HashMap<(String, String), bool>>,
    presence_changed: tokio::sync::Notify,
}

impl EventHub {
    pub fn new(config: EventsConfig) -> EventHub {
        let boot_id = now_ms().saturating_mul(1000);
        EventHub {
            config,
            boot_id,
            forgotten_through: AtomicU64::new(boot_id),
            next_id: AtomicU64::new(boot_id + 1),
            next_stream: AtomicU64::new(1),
            users: Mutex::new(HashMap::new()),
            shutdown: tokio::sync::watch::channel(false).0,
            presence: Mutex::new(HashMap::new()),
            presence_changed: tokio::sync::Notify::new(),
        }
    }

    pub fn config(&self) -> &EventsConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), UserStreams>> {
        self.users.lock().recover()
    }

    /// A receiver that turns true when the server shuts down.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tells every stream to close (server shutdown).
    pub fn close_all(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Opens a stream for `user` of `tenant`, resuming after `last_id` when
    /// given.
    pub fn subscribe(
        &self,
        tenant: &str,
        user: &str,
        last_id: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        let (tx, rx) = mpsc::channel(self.config.queue.max(1));
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let mut users = self.lock();
        let floor = self.forgotten_through.load(Ordering::Relaxed);
        let entry = users
            .entry((tenant.to_string(), user.to_string()))
            .or_insert_with(|| UserStreams {
                dropped_through: floor,
                ..UserStreams::default()
            });
        self.expire(entry);
        if entry.streams.len() >= self.config.streams_per_user {
            return Err(SubscribeError::TooManyStreams(self.config.streams_per_user));
        }
        let (replay, gap) = match last_id {
            None => (Vec::new(), false),
            Some(last) => {
                let replay = entry
                    .backlog
                    .iter()
                    .filter(|(eid, _)| *eid > last)
                    .map(|(_, d)| d.clone())
                    .collect();
                (replay, last < entry.dropped_through)
            }
        };
        if entry.streams.is_empty() {
            self.note_presence(tenant, user, true);
        }
        entry.streams.push(Stream { id, tx });
        crate::metrics::ACTIVE_STREAMS.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            id,
            rx,
            replay,
            gap,
        })
    }

    /// Forgets stream `id` of `user` (its connection ended).
    pub fn unsubscribe(&self, tenant: &str, user: &str, id: u64) {
        let mut users = self.lock();
        let key = (tenant.to_string(), user.to_string());
        if let Some(entry) = users.get_mut(&key) {
            let before = entry.streams.len();
            entry.streams.retain(|s| s.id != id);
            let removed = before - entry.streams.len();
            crate::metrics::ACTIVE_STREAMS.fetch_sub(removed as u64, Ordering::Relaxed);
            if removed > 0 && entry.streams.is_empty() {
                self.note_presence(tenant, user, false);
            }
            self.expire(entry);
            if entry.streams.is_empty() && entry.backlog.is_empty() {
                users.remove(&key);
                self.forget();
            }
        }
    }

    /// Records that `user` went online (first stream) or offline (last
    /// stream closed). Called with the users lock held, so the order of
    /// notes matches the order of the transitions.
    fn note_presence(&self, tenant: &str, user: &str, online: bool) {
        self.presence
            .lock()
            .recover()
            .insert((tenant.to_string(), user.to_string()), online);
        self.presence_changed.notify_one();
    }

    /// Puts back a transition whose delivery failed, unless a newer one
    /// was noted meanwhile.
    pub fn retry_presence(&self, tenant: &str, user: &str, online: bool) {
        self.presence
            .lock()
            .recover()
            .entry((tenant.to_string(), user.to_string()))
            .or_insert(online);
        self.presence_changed.notify_one();
    }

    /// Takes the presence transitions noted since the last call: (tenant,
    /// user, online), the latest state per user.
    pub fn take_presence(&self) -> Vec<(String, String, bool)> {
        let mut pending = self.presence.lock().recover();
        pending
            .drain()
            .map(|((tenant, user), online)| (tenant, user, online))
            .collect()
    }

    /// Resolves when a presence transition was noted (or already had been
    /// since the last `take_presence`).
    pub async fn presence_changed(&self) {
        self.presence_changed.notified().await
    }

    /// Records that an entry was forgotten: ids up to now may be missing
    /// from any entry created later.
    fn forget(&self) {
        let through = self.next_id.load(Ordering::Relaxed).saturating_sub(1);
        self.forgotten_through.fetch_max(through, Ordering::Relaxed);
    }

    /// Whether `user` of `tenant` has a stream open.
    pub fn connected(&self, tenant: &str, user: &str) -> bool {
        self.lock()
            .get(&(tenant.to_string(), user.to_string()))
            .is_some_and(|e| !e.streams.is_empty())
    }

    /// Drops backlog entries older than the resume window.
    fn expire(&self, entry: &mut UserStreams) {
        let horizon = now_ms()
            .saturating_sub(self.config.resume_window_s * 1000)
            .saturating_mul(1000);
        while let Some((id, _)) = entry.backlog.front() {
            if *id >= horizon && entry.backlog.len() <= self.config.backlog {
                break;
            }
            entry.dropped_through = entry.dropped_through.max(*id);
            entry.backlog.pop_front();
        }
    }

    /// Delivers one event from `plugin` to `users` of `tenant`. Returns how
    /// many streams it was queued on.
    pub fn deliver(
        &self,
        tenant: &str,
        plugin: &str,
        users: &[String],
        kind: &str,
        data: &[u8],
    ) -> usize {
        let mut users_map = self.lock();
        // Ids grow with time as well as with count, so they stay ahead of
        // any id handed out before a restart. (Assigned under the lock, so
        // every backlog is in id order.)
        let floor = now_ms().saturating_mul(1000);
        let id = self.next_id.load(Ordering::Relaxed).max(floor);
        self.next_id.store(id + 1, Ordering::Relaxed);
        let frame = frame(id, plugin, kind, data);
        let event = Arc::new(Delivered { id, frame });
        let mut queued = 0;
        let mut seen = std::collections::HashSet::new();
        for user in users {
            if !seen.insert(user.as_str()) {
                continue;
            }
            // Users without a stream (now or within the resume window)
            // have nothing to resume: no entry is made for them.
            let key = (tenant.to_string(), user.clone());
            let Some(entry) = users_map.get_mut(&key) else {
                continue;
            };
            entry.backlog.push_back((id, event.clone()));
            self.expire(entry);
            let had_streams = !entry.streams.is_empty();
            entry
                .streams
                .retain(|s| match s.tx.try_send(event.clone()) {
                    Ok(()) => {
                        queued += 1;
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Dropping the sender ends the stream: the connection
                        // closes with "try again later" and may resume.
                        crate::metrics::SLOW_CONSUMERS.inc();
                        crate::metrics::ACTIVE_STREAMS.fetch_sub(1, Ordering::Relaxed);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        crate::metrics::ACTIVE_STREAMS.fetch_sub(1, Ordering::Relaxed);
                        false
                    }
                });
            // Cutting off the last stream here is going offline: the
            // stream's own unsubscribe will find nothing left to remove.
            if had_streams && entry.streams.is_empty() {
                self.note_presence(tenant, user, false);
            }
        }
        crate::metrics::EVENTS_DELIVERED.add(queued as u64);
        queued
    }

    /// Drops backlogs nobody can resume any more (called periodically).
    pub fn sweep(&self) {
        let mut users = self.lock();
        let before = users.len();
        users.retain(|_, entry| {
            self.expire(entry);
            !(entry.streams.is_empty() && entry.backlog.is_empty())
        });
        if users.len() < before {
            self.forget();
        }
    }

    /// Entries held (connected users and recently disconnected ones).
    pub fn entries(&self) -> usize {
        self.lock().len()
    }

    /// The id of events delivered before this process started: a client
    /// resuming from an earlier id gets a `reset`.
    pub fn boot_id(&self) -> u64 {
        self.boot_id
    }

    /// Time between session re-checks of open streams.
    pub fn recheck_every(&self) -> Duration {
        Duration::from_secs(self.config.recheck_s.max(1))
    }
}

/// The JSON text frame of one event. `data` is embedded as JSON when it is
/// JSON, else as a string when it is UTF-8, else base64 (`data_base64`).
fn frame(id: u64, plugin: &str, kind: &str, data: &[u8]) -> String {
    use base64::Engine as _;
    let mut obj = serde_json::json!({
        "type": "event",
        "id": id.to_string(),
        "plugin": plugin,
        "kind": kind,
    });
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        obj["data"] = v;
    } else if let Ok(s) = std::str::from_utf8(data) {
        obj["data"] = serde_json::Value::String(s.to_string());
    } else {
        obj["data_base64"] =
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(data));
    }
    obj.to_string()
}

/// Checks an event kind: `[a-z0-9._-]{1,64}`.
pub fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Checks a group name: `[A-Za-z0-9._:-]{1,128}`.
pub fn valid_group(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= 128
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Checks a user id as plugins name them: `[A-Za-z0-9._-]{1,64}`.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn events_reach_the_named_users_of_the_tenant_only() {
        let hub = EventHub::new(EventsConfig::default());
        let mut a = hub.subscribe("t1", "alice", None).unwrap();
        let mut other = hub.subscribe("t2", "alice", None).unwrap();
        assert_eq!(
            hub.deliver("t1", "chat", &users(&["alice", "bob"]), "x", b"{\"n\":1}"),
            1
        );
        let got = a.rx.recv().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&got.frame).unwrap();
        assert_eq!(v["data"]["n"], 1);
        assert_eq!(v["plugin"], "chat");
        assert!(
            other.rx.try_recv().is_err(),
            "another tenant's alice got nothing"
        );
    }

    #[tokio::test]
    async fn a_reconnecting_client_gets_what_it_missed_or_a_reset() {
        let hub = EventHub::new(EventsConfig::default());
        let s = hub.subscribe("t", "u", None).unwrap();
        hub.deliver("t", "p", &users(&["u"]), "a", b"1");
        let first = hub.lock()[&("t".into(), "u".into())].backlog[0].0;
        hub.unsubscribe("t", "u", s.id);
        hub.deliver("t", "p", &users(&["u"]), "b", b"2");
        hub.deliver("t", "p", &users(&["u"]), "c", b"3");
        let again = hub.subscribe("t", "u", Some(first)).unwrap();
        assert!(!again.gap);
        assert_eq!(again.replay.len(), 2);
        assert!(again.replay[0].frame.contains("\"b\""));
        // An id from before this process started: a reset.
        let old = hub.subscribe("t", "u", Some(hub.boot_id() - 5)).unwrap();
        assert!(old.gap);
    }

    #[tokio::test]
    async fn publishing_to_users_who_never_connected_holds_no_memory() {
        let hub = EventHub::new(EventsConfig::default());
        let many: Vec<String> = (0..10_000).map(|i| format!("u{i}")).collect();
        assert_eq!(hub.deliver("t", "p", &many, "k", b"x"), 0);
        assert_eq!(hub.entries(), 0);
        // Duplicates reach a stream once.
        let mut s = hub.subscribe("t", "u1", None).unwrap();
        let twice = users(&["u1", "u1"]);
        assert_eq!(hub.deliver("t", "p", &twice, "k", b"x"), 1);
        assert!(s.rx.try_recv().is_ok());
        assert!(s.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_forgotten_entry_cannot_claim_a_gap_free_resume() {
        let hub = EventHub::new(EventsConfig::default());
        let a = hub.subscribe("t", "u", None).unwrap();
        hub.deliver("t", "p", &users(&["u"]), "k", b"1");
        let first = hub.lock()[&("t".into(), "u".into())].backlog[0].0;
        hub.deliver("t", "p", &users(&["u"]), "k", b"2");
        // The entry goes away (window passed, swept), then someone
        // resumes from before the second event.
        hub.unsubscribe("t", "u", a.id);
        hub.lock().clear();
        hub.forget();
        let again = hub.subscribe("t", "u", Some(first)).unwrap();
        assert!(again.gap, "events after {first} may be lost: reset");
    }

    #[tokio::test]
    async fn presence_notes_the_first_stream_and_the_last_only() {
        let hub = EventHub::new(EventsConfig::default());
        let a = hub.subscribe("t", "u1", None).unwrap();
        let b = hub.subscribe("t", "u1", None).unwrap();
        assert_eq!(hub.take_presence(), vec![("t".into(), "u1".into(), true)]);
        hub.unsubscribe("t", "u1", a.id);
        assert!(hub.take_presence().is_empty(), "one stream is still open");
        hub.unsubscribe("t", "u1", b.id);
        hub.unsubscribe("t", "u1", b.id);
        assert_eq!(hub.take_presence(), vec![("t".into(), "u1".into(), false)]);
        // Flapping between two looks coalesces to the latest state.
        let c = hub.subscribe("t", "u2", None).unwrap();
        hub.unsubscribe("t", "u2", c.id);
        let _d = hub.subscribe("t", "u2", None).unwrap();
        assert_eq!(hub.take_presence(), vec![("t".into(), "u2".into(), true)]);
        // The notification is kept for a waiter that arrives later.
        tokio::time::timeout(Duration::from_secs(1), hub.presence_changed())
            .await
            .unwrap();
        // A last stream cut off as a slow consumer is going offline too.
        let slow = EventHub::new(EventsConfig {
            queue: 1,
            ..EventsConfig::default()
        });
        let s = slow.subscribe("t", "u3", None).unwrap();
        slow.take_presence();
        let users = vec!["u3".to_string()];
        slow.deliver("t", "p", &users, "k", b"1");
        slow.deliver("t", "p", &users, "k", b"2");
        assert_eq!(slow.take_presence(), vec![("t".into(), "u3".into(), false)]);
        slow.unsubscribe("t", "u3", s.id);
        assert!(slow.take_presence().is_empty());
        // A failed delivery is put back unless something newer came.
        slow.retry_presence("t", "u3", false);
        let _again = slow.subscribe("t", "u3", None).unwrap();
        slow.retry_presence("t", "u3", false);
        assert_eq!(slow.take_presence(), vec![("t".into(), "u3".into(), true)]);
    }

    #[tokio::test]
    async fn a_slow_consumer_is_cut_off_not_buffered() {
        let hub = EventHub::new(EventsConfig {
            queue: 4,
            ..EventsConfig::default()
        });
        let mut slow = hub.subscribe("t", "u", None).unwrap();
        for _ in 0..10 {
            hub.deliver("t", "p", &users(&["u"]), "k", b"x");
        }
        assert!(!hub.connected("t", "u"), "the stream was dropped");
        let mut n = 0;
        while slow.rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 4, "what was queued drains, then the stream ends");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_kind("message.new"));
        assert!(!valid_kind("Message"));
        assert!(!valid_kind(""));
        assert!(valid_group("meeting:42"));
        assert!(!valid_group("a/b"));
        assert!(valid_user("g0123abcd"));
        assert!(!valid_user("a b"));
    }

    #[test]
    fn binary_data_is_base64() {
        let f = frame(7, "p", "k", &[0xff, 0x00]);
        assert!(f.contains("data_base64"), "{f}");
        let f = frame(7, "p", "k", b"plain");
        assert!(f.contains("\"data\":\"plain\""), "{f}");
    }
}
