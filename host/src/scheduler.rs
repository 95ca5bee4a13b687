//! The host's clock- and signal-driven work, started by `server.rs` beside
//! the doors: delivering due timers (woken early by commits that change the
//! timer queue), delivering call-leg events (woken by call control), telling plugins when users come online and go offline
//! (host events from the event hub), and storage maintenance (audit
//! checkpoints, event backlogs, the retention sweep, reclaiming deleted
//! blobs). It decides *when*; what each step does belongs to the host
//! (`Runtime::fire_due_timers`, `host_event`, `sweep_retention`,
//! `reclaim_blobs`). The loops hold the host weakly and stop when it goes.

use std::time::Duration;

use crate::runtime::{Runtime, WeakRuntime};
use crate::support::clock::now_ms;

/// How often the timer queue is looked at when nothing wakes the loop.
const TIMER_POLL: Duration = Duration::from_millis(250);
/// How often storage maintenance runs (the retention sweep runs at its own,
/// longer interval).
const MAINTENANCE_TICK: Duration = Duration::from_secs(60);
/// Pause before presence deliveries that a plugin refused are retried.
const PRESENCE_RETRY: Duration = Duration::from_secs(1);

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How often expired blobs are swept (retention classes).
    pub retention_sweep_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            retention_sweep_interval: Duration::from_secs(3600),
        }
    }
}

/// The running loops. They stop when the host goes or when this handle is
/// dropped, whichever comes first.
#[must_use = "dropping the scheduler stops its loops"]
pub struct Scheduler {
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Scheduler {
    /// Spawns the loops on the current tokio runtime.
    pub fn start(rt: &Runtime, config: SchedulerConfig) -> Scheduler {
        Scheduler {
            loops: vec![
                tokio::spawn(timer_loop(rt.downgrade())),
                tokio::spawn(call_event_loop(rt.downgrade())),
                tokio::spawn(presence_loop(rt.downgrade())),
                tokio::spawn(maintenance_loop(
                    rt.downgrade(),
                    config.retention_sweep_interval,
                )),
            ],
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        for task in &self.loops {
            task.abort();
        }
    }
}

/// How often call-leg events are looked for when nothing wakes the loop
/// (a re-delivery after backoff is found this way).
const CALL_EVENT_POLL: Duration = Duration::from_millis(50);

async fn call_event_loop(weak: WeakRuntime) {
    loop {
        let Some(rt) = weak.upgrade() else { return };
        rt.deliver_call_events();
        let wake = rt.telephony().ready();
        drop(rt);
        tokio::select! {
            _ = tokio::time::sleep(CALL_EVENT_POLL) => {}
            _ = wake.notified() => {}
        }
    }
}

async fn timer_loop(weak: WeakRuntime) {
    loop {
        let Some(rt) = weak.upgrade() else { return };
        rt.fire_due_timers().await;
        let wake = rt.timer_wake();
        drop(rt);
        tokio::select! {
            _ = tokio::time::sleep(TIMER_POLL) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Tells plugins when users come online (their first event stream opened)
/// and go offline (their last one closed), as host events on `on-event`
/// (SPEC C6): kind `presence.changed`, data `{"user", "online", "boot"}`,
/// to every enabled plugin of the user's tenant granted `events`. At start
/// each such plugin first gets `presence.reset` (`{"boot"}`): nobody is
/// connected to a process that just started, whatever a plugin stored.
async fn presence_loop(weak: WeakRuntime) {
    let boot = match weak.upgrade() {
        Some(rt) => rt.events().boot_id(),
        None => return,
    };
    let reset = serde_json::json!({ "boot": boot }).to_string();
    if let Some(rt) = weak.upgrade() {
        for t in rt.tenants() {
            rt.host_event(&t.id, "presence.reset", reset.as_bytes())
                .await;
        }
    }
    loop {
        let hub = match weak.upgrade() {
            Some(rt) => rt.events().clone(),
            None => return,
        };
        hub.presence_changed().await;
        let Some(rt) = weak.upgrade() else { return };
        let mut failed = false;
        for (tenant, user, online) in hub.take_presence() {
            let data = serde_json::json!({ "user": user, "online": online, "boot": boot });
            if !rt
                .host_event(&tenant, "presence.changed", data.to_string().as_bytes())
                .await
            {
                // Busy or failing plugin: try again shortly, unless a newer
                // transition of this user arrives first.
                hub.retry_presence(&tenant, &user, online);
                failed = true;
            }
        }
        drop(rt);
        if failed {
            tokio::time::sleep(PRESENCE_RETRY).await;
        }
    }
}

async fn maintenance_loop(weak: WeakRuntime, interval: Duration) {
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(MAINTENANCE_TICK.min(interval)).await;
        let Some(rt) = weak.upgrade() else { return };
        let sweep = last_sweep.elapsed() >= interval;
        // Sign whatever the trails gained since the last minute.
        if let Err(e) = rt.audit_log().checkpoint_all() {
            tracing::error!(error = %e, "cannot sign audit checkpoints");
        }
        // Forget event backlogs nobody can resume any more.
        rt.events().sweep();
        let result = if sweep {
            rt.sweep_retention(now_ms()).await.map(|r| {
                if r.deleted > 0 {
                    tracing::info!(
                        deleted = r.deleted,
                        held = r.held_objects,
                        "retention sweep"
                    );
                }
            })
        } else {
            rt.reclaim_blobs().await.map(|_| ())
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "storage maintenance failed; retrying later");
        }
        if sweep {
            last_sweep = tokio::time::Instant::now();
        }
    }
}
