//! `switchboard serve`: opens the runtime on the data folder, starts the
//! background work (epoch ticker, timer scheduler) and answers health
//! checks. The HTTPS/WebSocket gateway that routes to plugins is built by
//! its own issue; until then this listener serves `/healthz` only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::crypt::MasterKeySource;
use crate::tenant::Limits;

/// The server configuration file (`--config FILE`, TOML). Every field is
/// optional; the embedded defaults apply to what is left out.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Data folder (default `./switchboard-data`).
    pub data: Option<PathBuf>,
    /// Listen address (default `127.0.0.1:8080`).
    pub listen: Option<SocketAddr>,
    /// Calls running at once across all tenants.
    pub max_concurrent_calls: Option<u32>,
    /// Largest linear memory one plugin instance may use, in bytes.
    pub max_memory_bytes: Option<u64>,
    /// Limits of tenants created without their own.
    pub default_limits: Option<Limits>,
    /// Whether to trust this build's first-party bundle key (default true).
    pub trust_bundled: Option<bool>,
    /// Regions, each its own database (default `["local"]`); the first is
    /// where tenants go unless told otherwise.
    pub regions: Option<Vec<String>>,
    /// Environment variable holding the master key (64 hex digits) instead
    /// of the key file `keys/master.key`.
    pub master_key_env: Option<String>,
    /// Command printing the master key (e.g. a KMS client), instead of the
    /// key file.
    pub master_key_command: Option<String>,
    /// Scheduled backups.
    pub backup: BackupSchedule,
    /// The URL clients reach this server at (OpenID Connect issuers, SSO
    /// callbacks); default `http://{listen}`.
    pub public_url: Option<String>,
    /// Sign-in throttling and locking (SPEC I3).
    pub identity: crate::identity::IdentityConfig,
}

/// When `serve` makes backups (SPEC D5): by default an incremental every
/// day and a full one every week, into `{data}/backups`, keeping four
/// weekly chains.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSchedule {
    pub enabled: bool,
    /// Destination folder (default `{data}/backups`).
    pub dir: Option<PathBuf>,
    /// Hours between backups.
    pub every_hours: u64,
    /// Days between full backups.
    pub full_every_days: u64,
    /// Full backups (with their incrementals) to keep.
    pub keep_full: usize,
}

impl Default for BackupSchedule {
    fn default() -> Self {
        BackupSchedule {
            enabled: true,
            dir: None,
            every_hours: 24,
            full_every_days: 7,
            keep_full: 4,
        }
    }
}

impl ServerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<ServerConfig> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let config: ServerConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))?;
        if config.master_key_env.is_some() && config.master_key_command.is_some() {
            anyhow::bail!(
                "config file {}: set master_key_env or master_key_command, not both",
                path.display()
            );
        }
        Ok(config)
    }

    /// The runtime configuration this file describes, rooted at `data`.
    pub fn runtime_config(&self, data: PathBuf) -> RuntimeConfig {
        let mut rc = RuntimeConfig::new(data);
        if let Some(n) = self.max_concurrent_calls {
            rc.max_concurrent_calls = n;
        }
        if let Some(m) = self.max_memory_bytes {
            rc.max_memory_bytes = m;
        }
        if let Some(l) = &self.default_limits {
            rc.default_limits = l.clone();
        }
        if let Some(r) = &self.regions {
            rc.regions = r.clone();
        }
        if let Some(var) = &self.master_key_env {
            rc.master_key = MasterKeySource::Env(var.clone());
        } else if let Some(cmd) = &self.master_key_command {
            rc.master_key = MasterKeySource::Command(cmd.clone());
        }
        rc.track_changes = self.backup.enabled;
        rc.identity = self.identity.clone();
        rc
    }
}

/// Runs the server until Ctrl-C.
pub async fn serve(
    runtime: Runtime,
    listen: SocketAddr,
    schedule: BackupSchedule,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    runtime.start_background();
    crate::control::start(&runtime)?;
    if schedule.enabled {
        tokio::spawn(backup_loop(runtime.clone(), schedule));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen}; is another server running there? pass --listen")
        })?;
    let local = listener.local_addr()?;
    println!(
        "switchboard: serving on http://{local} (data folder {})",
        runtime.data_dir().display()
    );
    println!("switchboard: health at http://{local}/healthz, API under http://{local}/api/v1/");
    run(runtime.clone(), listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    println!("switchboard: shutting down");
    runtime.flush()?;
    Ok(())
}

/// Answers connections on `listener` until `shutdown` completes. Tests
/// and embedders start a server this way on a loopback port.
pub async fn run(
    runtime: Runtime,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if let Ok(local) = listener.local_addr()
        && runtime.public_url() == "http://127.0.0.1:8080"
    {
        runtime.set_public_url(&format!("http://{local}"));
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                };
                let rt = runtime.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let service = hyper::service::service_fn(move |req| {
                        let rt = rt.clone();
                        async move { Ok::<_, Infallible>(respond(&rt, req, peer).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(io, service);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
}

async fn respond(
    runtime: &Runtime,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    match crate::api::route(runtime, req, peer.into()).await {
        Some(resp) => resp,
        None => crate::api::error_response(&crate::admin::ApiError::new(
            StatusCode::NOT_FOUND.as_u16(),
            "not_found",
            "no such route",
        )),
    }
}

/// Whether a backup is due at `now` (ms) given when the last one and the
/// last full one were made: `Some(Some(Full))` for a full one, `Some(None)`
/// for an incremental (or a full one when no chain can be extended).
fn due(
    schedule: &BackupSchedule,
    now: u64,
    last: u64,
    last_full: u64,
) -> Option<Option<crate::backup::Kind>> {
    let hour = 3_600_000u64;
    if now.saturating_sub(last) < schedule.every_hours.max(1) * hour {
        return None;
    }
    let full_due = now.saturating_sub(last_full) >= schedule.full_every_days.max(1) * 24 * hour;
    Some(full_due.then_some(crate::backup::Kind::Full))
}

/// Makes scheduled backups: checks every few minutes whether one is due.
async fn backup_loop(runtime: Runtime, schedule: BackupSchedule) {
    let dir = schedule
        .dir
        .clone()
        .unwrap_or_else(|| runtime.data_dir().join("backups"));
    loop {
        let now = crate::capability::timers::now_ms();
        let (last, last_full) = runtime.last_backup_times().unwrap_or((0, 0));
        if let Some(kind) = due(&schedule, now, last, last_full) {
            match runtime.backup(&dir, kind).await {
                Ok(info) => {
                    tracing::info!(file = %info.file.display(), kind = ?info.header.kind, "scheduled backup made");
                    if let Err(e) = crate::backup::prune(&dir, schedule.keep_full) {
                        tracing::warn!(error = %e, "pruning old backups failed");
                    }
                }
                Err(e) => {
                    tracing::error!(code = e.code(), error = %e, "scheduled backup failed; retrying later")
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Kind;

    #[test]
    fn the_default_schedule_is_daily_incremental_and_weekly_full() {
        let s = BackupSchedule::default();
        let h = 3_600_000u64;
        let t0 = 1_000 * 24 * h;
        // Never backed up: a full one.
        assert_eq!(due(&s, t0, 0, 0), Some(Some(Kind::Full)));
        // An hour after a full one: nothing.
        assert_eq!(due(&s, t0 + h, t0, t0), None);
        // A day later: an incremental.
        assert_eq!(due(&s, t0 + 24 * h, t0, t0), Some(None));
        // A week after the full one: a full one again.
        assert_eq!(
            due(&s, t0 + 7 * 24 * h, t0 + 6 * 24 * h, t0),
            Some(Some(Kind::Full))
        );
        // A clock that went backwards does not trigger anything.
        assert_eq!(due(&s, t0 - h, t0, t0), None);
    }

    #[test]
    fn identity_settings_are_read_and_typos_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "public_url = \"https://uc.example\"\n[identity]\nallow_loopback_idp = true\n[identity.throttle]\nlock_after = 5\n",
        )
        .unwrap();
        let c = ServerConfig::load(&path).unwrap();
        assert!(c.identity.allow_loopback_idp);
        assert_eq!(c.identity.throttle.lock_after, 5);
        assert_eq!(
            c.identity.throttle.lock_minutes, 15,
            "defaults fill the rest"
        );
        let rc = c.runtime_config(dir.path().into());
        assert_eq!(rc.identity.throttle.lock_after, 5);
        std::fs::write(&path, "[identity.throttle]\nlock_afterr = 5\n").unwrap();
        assert!(ServerConfig::load(&path).is_err());
    }

    #[test]
    fn config_files_with_two_master_key_sources_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "master_key_env = \"K\"\nmaster_key_command = \"cat k\"\n",
        )
        .unwrap();
        let err = ServerConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        std::fs::write(&path, "[backup]\nevery_hours = \"daily\"\n").unwrap();
        assert!(ServerConfig::load(&path).is_err());
    }
}
