//! `switchboard serve`: opens the runtime on the data folder, starts the
//! background work (epoch ticker, timer scheduler, backups) and runs the
//! gateway (`crate::gateway`) on a TLS listener until Ctrl-C or SIGTERM,
//! then drains in-flight requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use std::sync::Arc;
use std::time::Duration;

use crate::gateway::tls::TlsIdentity;
use crate::gateway::{Gateway, GatewayConfig};
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
    /// Listen address (default `127.0.0.1:8443`).
    pub listen: Option<SocketAddr>,
    /// Calls running at once across all tenants.
    pub max_concurrent_calls: Option<u32>,
    /// Threads running plugin code, apart from the network's (default:
    /// one per core).
    pub plugin_workers: Option<usize>,
    /// Their nice value, 0-19 (default 10: the network threads go first).
    pub plugin_nice: Option<i32>,
    /// The CPUs they run on (Linux; default: any), e.g. all but `[sip]
    /// media_cpus`.
    pub plugin_cpus: Option<Vec<usize>>,
    /// The time slice of plugin calls in microseconds (100-10000).
    pub epoch_tick_us: Option<u64>,
    /// Largest linear memory one plugin instance may use, in bytes.
    pub max_memory_bytes: Option<u64>,
    /// Limits of tenants created without their own.
    pub default_limits: Option<Limits>,
    /// Whether to trust this build's first-party bundle key (default true).
    pub trust_bundled: Option<bool>,
    /// Plugins enabled for every new tenant, in order (default
    /// `DEFAULT_PLUGINS`; `[]` for none).
    pub default_plugins: Option<Vec<String>>,
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
    /// The certificate and key (default: self-signed in `{data}/tls`).
    pub tls: TlsConfig,
    /// Limits, timeouts and rate limits of the front door.
    pub gateway: GatewayConfig,
    /// Event streams: queues and the resume window.
    pub events: crate::events::EventsConfig,
    /// What plugins may reach through `http-client`.
    pub http_client: crate::capability::http_client::HttpClientConfig,
    /// The SIP door: devices, their domain, media addresses (SPEC T2).
    pub sip: crate::sip::SipConfig,
}

/// The first-party plugins a new tenant has enabled unless the operator
/// says otherwise (`default_plugins`); meetings needs the other two.
pub const DEFAULT_PLUGINS: [&str; 3] = ["chat", "recording", "meetings"];

/// `[tls]`: PEM files; both or neither.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
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
        config
            .sip
            .validate()
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        if let Some(cpus) = &config.plugin_cpus {
            crate::support::thread::check_cpus("plugin_cpus", cpus)
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        }
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
        if let Some(n) = self.plugin_workers {
            rc.plugin_workers = n;
        }
        if let Some(n) = self.plugin_nice {
            rc.plugin_nice = n;
        }
        if let Some(c) = &self.plugin_cpus {
            rc.plugin_cpus = c.clone();
        }
        if let Some(us) = self.epoch_tick_us {
            rc.epoch_tick = std::time::Duration::from_micros(us);
        }
        if let Some(m) = self.max_memory_bytes {
            rc.max_memory_bytes = m;
        }
        if let Some(l) = &self.default_limits {
            rc.default_limits = l.clone();
        }
        rc.default_plugins = self
            .default_plugins
            .clone()
            .unwrap_or_else(|| DEFAULT_PLUGINS.iter().map(|p| p.to_string()).collect());
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
        rc.events = self.events.clone();
        rc.http_client = self.http_client.clone();
        rc.telephony.sip_domain = self.sip.domain.to_ascii_lowercase();
        rc.telephony.region = self.sip.region.to_ascii_uppercase();
        rc.telephony.media.bind = self.sip.media_bind;
        rc.telephony.media.nice = self.sip.media_nice;
        rc.telephony.media.cpus = self.sip.media_cpus.clone();
        rc.telephony.media.realtime = self.sip.media_realtime;
        rc.telephony.media.ports = self.sip.media_ports[0]..=self.sip.media_ports[1];
        rc
    }
}

/// First run (SPEC K1): with no operator yet, a one-time secret that
/// creates the first one. On a terminal it is printed; otherwise (a
/// service, whose output goes to a journal others may read) it is written
/// to `{data}/bootstrap.secret`, mode 0600, and only the file is named.
/// The store keeps its hash; the file goes when the secret is used or an
/// operator exists.
async fn print_bootstrap(runtime: &Runtime, local: SocketAddr, cert: &std::path::Path) {
    use std::io::IsTerminal as _;
    let file = runtime
        .data_dir()
        .join(crate::identity::bootstrap::SECRET_FILE);
    let b = match runtime.identity().bootstrap_secret().await {
        Ok(Some(b)) => b,
        Ok(None) => {
            let _ = std::fs::remove_file(&file);
            return;
        }
        Err(e) => {
            tracing::error!(code = e.code(), error = %e, "cannot issue the bootstrap secret");
            return;
        }
    };
    let until = crate::audit::rfc3339(b.expires_ms);
    let how = format!(
        "create the first operator with it (then sign in, change the welcome password, enrol TOTP):\n    curl --cacert {} -X POST https://{local}/api/v1/auth/bootstrap -H 'content-type: application/json' -d '{{\"secret\": \"SECRET\", \"username\": \"admin\"}}'\n  or on this machine: switchboard user create --role operator admin",
        cert.display()
    );
    if std::io::stdout().is_terminal() {
        let _ = std::fs::remove_file(&file);
        println!(
            "switchboard: no operator exists yet. One-time bootstrap secret, valid until {until} or until an operator exists (shown only now):\n\n    {}\n\n  {how}",
            b.secret
        );
        return;
    }
    // A new secret replaces the last one's file.
    let _ = std::fs::remove_file(&file);
    match crate::support::fsutil::write_secret(&file, format!("{}\n", b.secret).as_bytes()) {
        Ok(()) => println!(
            "switchboard: no operator exists yet. A one-time bootstrap secret, valid until {until} or until an operator exists, is in {} (mode 0600)\n  {how}",
            file.display()
        ),
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot write the bootstrap secret")
        }
    }
}

/// Scheduler ticks between polls for I/O. Plugin calls run in slices of
/// one epoch tick (5 ms); with tokio's default of 61, a flood of busy calls
/// from one tenant would leave other tenants' sockets unpolled for up to
/// 61 slices. Polling every other tick keeps the front door responsive
/// while costing one non-blocking `epoll_wait` per two task polls.
pub const EVENT_INTERVAL: u32 = 2;

/// The async runtime `serve` runs on (and benchmarks measure).
pub fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build()
}

/// Runs the server until Ctrl-C or SIGTERM, then drains in-flight
/// requests.
pub async fn serve(
    runtime: Runtime,
    file: &ServerConfig,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let tls = match (&file.tls.cert_file, &file.tls.key_file) {
        (Some(cert), Some(key)) => TlsIdentity::load(cert, key)?,
        (None, None) => {
            let mut names = Vec::new();
            if let Some(url) = &file.public_url
                && let Ok(uri) = url.parse::<hyper::Uri>()
                && let Some(host) = uri.host()
            {
                names.push(host.trim_matches(|c| c == '[' || c == ']').to_string());
            }
            TlsIdentity::load_or_generate(&runtime.data_dir().join("tls"), &names)?
        }
        _ => anyhow::bail!("[tls] needs both cert_file and key_file, or neither (self-signed)"),
    };
    let _scheduler = crate::scheduler::Scheduler::start(&runtime, Default::default());
    crate::control::start(&runtime)?;
    if file.backup.enabled {
        tokio::spawn(backup_loop(runtime.clone(), file.backup.clone()));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen}; is another server running there? pass --listen")
        })?;
    let local = listener.local_addr()?;
    if let Some(redirect) = file.gateway.redirect_listen {
        let plain = tokio::net::TcpListener::bind(redirect)
            .await
            .with_context(|| format!("cannot listen on {redirect} ([gateway] redirect_listen)"))?;
        tokio::spawn(redirect_loop(runtime.clone(), plain));
        println!("switchboard: plain HTTP on {redirect} redirects to HTTPS");
    }
    println!(
        "switchboard: serving on https://{local} (data folder {})",
        runtime.data_dir().display()
    );
    println!(
        "switchboard: TLS certificate {}{} SHA-256 {}",
        tls.cert_file.display(),
        if tls.generated {
            " (self-signed, generated now)"
        } else {
            ""
        },
        tls.fingerprint
    );
    println!(
        "switchboard: health at https://{local}/healthz, status at /status, API under /api/v1/"
    );
    if file.sip.enabled {
        let sip = tokio::net::TcpListener::bind(file.sip.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for SIP on {}; set [sip] listen, or enabled = false",
                    file.sip.listen
                )
            })?;
        println!(
            "switchboard: SIP over TLS on {} (tenant domains *.{})",
            sip.local_addr()?,
            file.sip.domain
        );
        let (trunk_udp, trunk_tcp) = match file.sip.trunk_listen {
            Some(addr) => {
                let socket = tokio::net::UdpSocket::bind(addr).await.with_context(|| {
                    format!("cannot listen for SIP trunks on UDP {addr}; set [sip] trunk_listen")
                })?;
                let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen for SIP trunks on TCP {addr}; set [sip] trunk_listen")
                })?;
                println!(
                    "switchboard: SIP trunks over UDP and TCP on {} (allow-listed addresses only)",
                    socket.local_addr()?
                );
                (Some(socket), Some(tcp))
            }
            None => (None, None),
        };
        let trunk_tls = match file.sip.trunk_tls_listen {
            Some(addr) => {
                let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                    format!(
                        "cannot listen for SIP trunks over TLS on {addr}; set [sip] trunk_tls_listen"
                    )
                })?;
                println!(
                    "switchboard: SIP trunks over TLS on {} (allow-listed addresses only)",
                    tcp.local_addr()?
                );
                Some(tcp)
            }
            None => None,
        };
        let door = crate::sip::run(
            runtime.clone(),
            crate::sip::Listeners {
                tls: sip,
                trunk_udp,
                trunk_tcp,
                trunk_tls,
            },
            sip_tls(&tls),
            file.sip.clone(),
            file.identity.throttle.clone(),
            std::future::pending(),
        );
        tokio::spawn(async move {
            if let Err(e) = door.await {
                tracing::error!(error = %e, "the SIP door stopped");
            }
        });
    }
    print_bootstrap(&runtime, local, &tls.cert_file).await;
    run(
        runtime.clone(),
        listener,
        tls,
        file.gateway.clone(),
        shutdown_signal(),
    )
    .await;
    println!("switchboard: stopped");
    runtime.flush()?;
    Ok(())
}

/// The HTTPS certificate for the SIP door: the same identity, no ALPN
/// (SIP over TLS negotiates none).
pub fn sip_tls(tls: &TlsIdentity) -> Arc<rustls::ServerConfig> {
    let mut config = (*tls.config).clone();
    config.alpn_protocols.clear();
    Arc::new(config)
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Answers TLS connections on `listener` until `shutdown` completes, then
/// closes the event streams and waits (up to `drain_timeout_s`) for
/// in-flight requests. Tests and embedders start a server this way on a
/// loopback port.
pub async fn run(
    runtime: Runtime,
    listener: tokio::net::TcpListener,
    tls: TlsIdentity,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    if let Ok(local) = listener.local_addr()
        && runtime.public_url() == crate::runtime::DEFAULT_PUBLIC_URL
    {
        runtime.set_public_url(&format!("https://{local}"));
    }
    let gateway = Arc::new(Gateway::new(
        runtime.clone(),
        config.clone(),
        tls.fingerprint.clone(),
    ));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    let per_address = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_timeout_s.max(1)))
        .max_buf_size(config.max_header_bytes.max(8192))
        .max_headers(100);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.max_streams_per_connection)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let handshake_timeout = Duration::from_secs(config.handshake_timeout_s.max(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        // Out of file descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = crate::gateway::ConnectionSlot::take(
                    &connections,
                    &per_address,
                    peer.ip(),
                    config.max_connections_per_address,
                ) else {
                    crate::metrics::CONNECTIONS_REFUSED.inc();
                    drop(stream);
                    continue;
                };
                let slot = crate::gateway::OnConnection(Arc::new(slot));
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let gateway = gateway.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            crate::metrics::TLS_FAILURES.inc();
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            crate::metrics::TLS_FAILURES.inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        let gateway = gateway.clone();
                        req.extensions_mut().insert(slot.clone());
                        async move { Ok::<_, Infallible>(gateway.respond(req, peer).await) }
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    runtime.events().close_all();
    let drain = Duration::from_secs(config.drain_timeout_s);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(seconds = drain.as_secs(), "connections still open after the drain timeout; closing"),
    }
}

/// The plain-HTTP port: every request is redirected to the public HTTPS
/// URL (built from the configured public URL, never from the client's
/// `Host`, so it cannot be turned into an open redirect).
pub async fn redirect_loop(runtime: Runtime, listener: tokio::net::TcpListener) {
    let open = Arc::new(tokio::sync::Semaphore::new(1024));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            crate::metrics::CONNECTIONS_REFUSED.inc();
            continue;
        };
        let rt = runtime.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let base = rt.public_url();
                async move { Ok::<_, Infallible>(redirect(&base, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}

fn redirect(base: &str, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = format!("{}{path}", base.trim_end_matches('/'));
    let mut resp = Response::new(Full::new(Bytes::from_static(b"use HTTPS\n")));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = hyper::header::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(hyper::header::LOCATION, v);
    }
    resp
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
        let now = crate::support::clock::now_ms();
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
    fn sip_settings_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[sip]\nlisten = \"0.0.0.0:5061\"\ndomain = \"sip.example.com\"\nmedia_bind = \"0.0.0.0\"\nmedia_ports = [30000, 30999]\nmedia_nice = -5\nmedia_cpus = [0]\nmedia_realtime = 10\ndigest_algorithms = [\"MD5\"]\n",
        )
        .unwrap();
        let c = ServerConfig::load(&path).unwrap();
        assert_eq!(
            c.sip.digest_algorithms,
            [crate::identity::digest::Algorithm::Md5]
        );
        let rc = c.runtime_config(dir.path().into());
        assert_eq!(rc.telephony.sip_domain, "sip.example.com");
        assert_eq!(rc.telephony.media.ports, 30000..=30999);
        assert_eq!(rc.telephony.media.nice, -5);
        assert_eq!(rc.telephony.media.cpus, [0]);
        assert_eq!(rc.telephony.media.realtime, Some(10));
        assert_eq!(rc.telephony.region, "US", "the default region");
        for bad in [
            "[sip]\nmedia_cpus = [1, 1]\n",
            "[sip]\ndevice_udp = true\n",
            "[sip]\nregion = \"XX\"\n",
            "[sip]\nmedia_cpus = [5000]\n",
            "plugin_cpus = [1, 1]\n",
            "[sip]\nmedia_nice = -21\n",
            "[sip]\nmedia_nice = 20\n",
            "[sip]\nmedia_realtime = 0\n",
            "[sip]\nmedia_realtime = 100\n",
            "[sip]\nmedia_ports = [30000, 20000]\n",
            "[sip]\ndomain = \"a b\"\n",
            "[sip]\ndigest_algorithms = []\n",
            "[sip]\ndigest_algorithms = [\"SHA-1\"]\n",
            "[sip]\nlisten_port = 5061\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(ServerConfig::load(&path).is_err(), "{bad}");
        }
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
