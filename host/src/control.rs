//! The local control socket of a running server: `{data}/control.sock`,
//! mode 0600, so only the operator's account can use it. The CLI sends one
//! JSON request per connection for every verb that changes or reads what
//! the server holds (tenants, plugins and their packages, trust, accounts,
//! backups, the master key) and gets one JSON answer.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::runtime::Runtime;

/// A request on the control socket.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    Backup {
        dir: PathBuf,
        kind: Option<crate::backup::Kind>,
    },
    RotateMaster,
    /// A call to a plugin of a tenant, as `user` or (none) as the host.
    Call {
        tenant: String,
        plugin: String,
        user: Option<String>,
        method: String,
        path: String,
        body: String,
    },
    /// An administrative operation, run as the console.
    Admin {
        admin: crate::admin::Op,
    },
    /// The URL clients reach this server at (its answer's message).
    Info,
}

/// The answer: `ok` with a message, or an error code and message.
#[derive(Debug, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    pub code: String,
    pub message: String,
}

/// The longest request line: a package at its largest, in base64, and
/// room for the rest of the request.
const MAX_REQUEST_BYTES: u64 =
    (switchboard_signing::package::MAX_PACKAGE_BYTES as u64).div_ceil(3) * 4 + (64 << 10);

/// The socket's path in a data folder.
pub fn socket_path(data: &Path) -> PathBuf {
    data.join("control.sock")
}

/// Starts listening (replacing a stale socket file).
pub fn start(runtime: &Runtime) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let path = socket_path(runtime.data_dir());
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot create the control socket {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let rt = runtime.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let rt = rt.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES);
                let response = match reader.read_line(&mut line).await {
                    Ok(_) => match serde_json::from_str::<ControlRequest>(&line) {
                        Ok(req) => handle(&rt, req).await,
                        Err(e) => fail("bad_request", format!("malformed control request: {e}")),
                    },
                    Err(e) => fail("bad_request", e.to_string()),
                };
                let mut out = serde_json::to_vec(&response).unwrap_or_default();
                out.push(b'\n');
                let _ = write.write_all(&out).await;
            });
        }
    });
    Ok(())
}

fn fail(code: &str, message: String) -> ControlResponse {
    ControlResponse {
        ok: false,
        code: code.into(),
        message,
    }
}

async fn handle(rt: &Runtime, req: ControlRequest) -> ControlResponse {
    match req {
        ControlRequest::Backup { dir, kind } => match rt.backup(&dir, kind).await {
            Ok(info) => ControlResponse {
                ok: true,
                code: "ok".into(),
                message: describe_backup(&info),
            },
            Err(e) => fail(e.code(), e.to_string()),
        },
        ControlRequest::Admin { admin: op } => {
            let actor = crate::admin::Actor::Console;
            let ctx = crate::audit::Context::console();
            match crate::audit::with_context(ctx, crate::admin::execute(rt, &actor, op)).await {
                Ok(v) => ControlResponse {
                    ok: true,
                    code: "ok".into(),
                    message: v.to_string(),
                },
                Err(e) => fail(&e.code, e.message),
            }
        }
        ControlRequest::Call {
            tenant,
            plugin,
            user,
            method,
            path,
            body,
        } => match call_plugin(rt, &tenant, &plugin, user.as_deref(), &method, &path, body).await {
            Ok((status, text)) => ControlResponse {
                ok: true,
                code: "ok".into(),
                message: serde_json::json!({ "status": status, "body": text }).to_string(),
            },
            Err((code, message)) => fail(&code, message),
        },
        ControlRequest::Info => ControlResponse {
            ok: true,
            code: "ok".into(),
            message: rt.public_url(),
        },
        ControlRequest::RotateMaster => match rt.rotate_master_key(None).await {
            Ok(id) => ControlResponse {
                ok: true,
                code: "ok".into(),
                message: format!("master key rotated; new key id {id}"),
            },
            Err(e) => fail(e.code(), e.to_string()),
        },
    }
}

/// Calls `plugin` of `tenant` as `user` (or as the host when `None`);
/// returns the answer's status and body, or an error code and message.
pub async fn call_plugin(
    rt: &Runtime,
    tenant: &str,
    plugin: &str,
    user: Option<&str>,
    method: &str,
    path: &str,
    body: String,
) -> Result<(u16, String), (String, String)> {
    use crate::runtime::{Method, Principal, Request};
    let method: Method = method
        .parse()
        .map_err(|e: String| ("bad_request".to_string(), e))?;
    if !path.starts_with('/') {
        return Err(("bad_request".into(), "the path must start with '/'".into()));
    }
    let principal = match user {
        Some(u) => Principal::user(tenant, u),
        None => Principal::system(tenant),
    };
    let req = Request::new(method, path, principal).with_body(body.into_bytes());
    match rt.handle(tenant, plugin, req).await {
        Ok(resp) => Ok((resp.status, resp.text())),
        Err(e) => Err((e.code().to_string(), e.to_string())),
    }
}

/// One line describing a backup.
pub fn describe_backup(info: &crate::backup::BackupInfo) -> String {
    format!(
        "{:?} backup {} written to {}: {} entries, {} deletions, {} bytes; store digest {}",
        info.header.kind,
        info.header.id,
        info.file.display(),
        info.trailer.puts,
        info.trailer.deletes,
        info.bytes,
        info.trailer.digest
    )
}

/// Sends `req` to the server running on `data`, if one is.
pub async fn send(data: &Path, req: &ControlRequest) -> Option<anyhow::Result<ControlResponse>> {
    let stream = tokio::net::UnixStream::connect(socket_path(data))
        .await
        .ok()?;
    Some(
        async {
            let (read, mut write) = stream.into_split();
            let mut line = serde_json::to_vec(req)?;
            line.push(b'\n');
            write.write_all(&line).await?;
            let mut answer = String::new();
            BufReader::new(read).read_line(&mut answer).await?;
            Ok(serde_json::from_str(&answer)?)
        }
        .await,
    )
}
