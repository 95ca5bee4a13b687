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
}

impl ServerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &std::path::Path) -> anyhow::Result<ServerConfig> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))
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
        rc
    }
}

/// Runs the server until Ctrl-C.
pub async fn serve(runtime: Runtime, listen: SocketAddr) -> anyhow::Result<()> {
    use anyhow::Context as _;
    runtime.start_background();
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
    println!("switchboard: health at http://{local}/healthz");
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                };
                let rt = runtime.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let service = hyper::service::service_fn(move |req| health(rt.clone(), req));
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
    println!("switchboard: shutting down");
    runtime.flush()?;
    Ok(())
}

async fn health(
    runtime: Runtime,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/healthz" => (
            StatusCode::OK,
            serde_json::json!({
                "status": "ok",
                "tenants": runtime.tenants().len(),
                "plugins": runtime.plugins().len(),
            }),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            serde_json::json!({"code": "not_found", "message": "only /healthz is served until the gateway lands"}),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
