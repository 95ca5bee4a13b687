//! The command line: `serve`, one-off plugin calls and administration of
//! a data folder. Every verb that reads or changes what a server holds goes
//! through the running server's control socket when there is one, and
//! opens the folder itself only when no server runs. The binary's `main` only parses and dispatches here; the verbs
//! of each area live in their own file (`tenant`, `plugin` with `trust`,
//! `accounts` with `session`, `audit`, `backup` with `keys`), as the admin
//! vocabulary does.

mod accounts;
mod audit;
mod backup;
mod dev;
mod plugin;
mod tenant;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

pub use self::accounts::{SessionCmd, UserCmd};
pub use self::audit::AuditCmd;
pub use self::backup::{BackupCmd, KeysCmd};
pub use self::plugin::{PluginCmd, TrustCmd};
pub use self::tenant::TenantCmd;
use crate::admin::Op;
use crate::runtime::Runtime;
use crate::server::{self, ServerConfig};

/// Switchboard: a unified-communications server built as a WebAssembly
/// microkernel.
/// `--version`: the version, then how this binary was built.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\n",
    include_str!(concat!(env!("OUT_DIR"), "/build_info.txt")),
    "\nplugin APIs: 0.1.0, 0.2.0, 0.3.0"
);

#[derive(Debug, Parser)]
#[command(name = "switchboard", version, long_version = LONG_VERSION)]
pub struct Cli {
    /// Log format on stderr: `text` for people, `json` (one object per
    /// line) for log collectors. The level comes from `RUST_LOG`.
    #[arg(long = "log-format", global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every verb that opens a data folder takes.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// Data folder (store, compile cache, host keys); default: the config
    /// file's `data`, else `./switchboard-data`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The server's config file (as `serve --config`), for its regions and
    /// master key source.
    #[arg(long = "server-config")]
    pub server_config: Option<PathBuf>,
}

impl DataArgs {
    fn file(&self) -> anyhow::Result<ServerConfig> {
        match &self.server_config {
            Some(path) => ServerConfig::load(path),
            None => Ok(ServerConfig::default()),
        }
    }

    /// The data folder.
    pub fn dir(&self) -> anyhow::Result<PathBuf> {
        Ok(self
            .data
            .clone()
            .or(self.file()?.data)
            .unwrap_or_else(|| PathBuf::from("switchboard-data")))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server on the data folder (created on first run).
    Serve {
        /// Data folder; overrides the config file.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address to listen on; overrides the config file.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address for SIP over TLS; overrides the config file's `[sip]
        /// listen` (default 127.0.0.1:5061).
        #[arg(long)]
        sip_listen: Option<SocketAddr>,
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage tenants. Online through a running server, or offline.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Sign, verify and inspect packages (local files); install, list,
    /// enable, disable and configure plugins online through a running
    /// server, or offline.
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// The operator's trust store of publisher keys. Online through a
    /// running server, or offline.
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Backups: create (online through a running server, or offline),
    /// verify, restore.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Master key management.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Accounts of the system realm (operators, partners) or a tenant
    /// (admins, users). Online through a running server, or offline.
    #[command(subcommand)]
    User(UserCmd),
    /// A user's sessions.
    #[command(subcommand)]
    Session(SessionCmd),
    /// A tenant's sign-in policy (MFA, session lifetimes).
    Policy {
        #[command(flatten)]
        data: DataArgs,
        /// Tenant id.
        tenant: String,
        /// Who must use a second factor: optional, admins or all.
        #[arg(long)]
        mfa: Option<String>,
        #[arg(long)]
        idle_minutes: Option<u32>,
        #[arg(long)]
        absolute_hours: Option<u32>,
    },
    /// The audit trails: verify, export, the checkpoint key.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Call a plugin route once, as a user of a tenant, and print the
    /// response. Online through a running server, or offline.
    Call {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        plugin: String,
        /// User id the call is made as.
        #[arg(long, default_value = "cli", conflicts_with = "system")]
        user: String,
        /// Call as the host itself (role system: what an admin may do).
        #[arg(long)]
        system: bool,
        /// Repeat the call with `cursor=` while the JSON answer says
        /// `"done": false` and carries a `cursor` (long verifications).
        #[arg(long)]
        follow: bool,
        /// HTTP method.
        method: String,
        /// Path below the plugin, e.g. `/counter/hits`.
        path: String,
        /// Request body.
        #[arg(long, default_value = "")]
        body: String,
    },
}

/// Options naming a realm: `--tenant ID`, or the system realm.
#[derive(Debug, clap::Args)]
pub struct RealmArgs {
    /// The tenant; without it, the system realm (operators, partners).
    #[arg(long)]
    pub tenant: Option<String>,
}

impl RealmArgs {
    fn name(&self) -> String {
        self.tenant.clone().unwrap_or_else(|| "system".into())
    }
}

/// Sends `tracing` output to stderr as text or JSON (`--log-format`), at
/// the level `RUST_LOG` names (default `info`).
pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().with_current_span(false).init();
    } else {
        logs.init();
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            data,
            listen,
            sip_listen,
            config,
        } => {
            let mut file = match &config {
                Some(path) => ServerConfig::load(path)?,
                None => ServerConfig::default(),
            };
            if let Some(sip) = sip_listen {
                file.sip.listen = sip;
            }
            let data = data
                .or(file.data.clone())
                .unwrap_or_else(|| PathBuf::from("switchboard-data"));
            let listen = listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
            let runtime = Runtime::open(file.runtime_config(data))?;
            if let Some(url) = &file.public_url {
                runtime.set_public_url(url);
            }
            crate::bundle::install(&runtime, file.trust_bundled.unwrap_or(true)).await;
            server::serve(runtime, &file, listen).await
        }
        Command::User(cmd) => accounts::user_cmd(cmd).await,
        Command::Policy {
            data,
            tenant,
            mfa,
            idle_minutes,
            absolute_hours,
        } => {
            let current = admin_op(
                &data,
                Op::PolicyShow {
                    realm: tenant.clone(),
                },
            )
            .await?;
            let mut policy: crate::identity::Policy = serde_json::from_value(current)?;
            let changed = mfa.is_some() || idle_minutes.is_some() || absolute_hours.is_some();
            if let Some(m) = mfa {
                policy.mfa = match m.as_str() {
                    "optional" | "off" => crate::identity::MfaPolicy::Optional,
                    "admins" => crate::identity::MfaPolicy::Admins,
                    "all" => crate::identity::MfaPolicy::All,
                    other => bail!("--mfa must be optional, admins or all, not {other:?}"),
                };
            }
            if let Some(m) = idle_minutes {
                policy.session_idle_minutes = m;
            }
            if let Some(h) = absolute_hours {
                policy.session_absolute_hours = h;
            }
            if changed {
                admin_op(
                    &data,
                    Op::PolicySet {
                        realm: tenant,
                        policy: policy.clone(),
                    },
                )
                .await?;
            }
            println!("{}", serde_json::to_string_pretty(&policy)?);
            Ok(())
        }
        Command::Audit(cmd) => audit::audit_cmd(cmd).await,
        Command::Call {
            data,
            tenant,
            plugin,
            user,
            system,
            follow,
            method,
            path,
            body,
        } => {
            let user = (!system).then_some(user);
            let folder = data.dir()?;
            let mut offline: Option<Runtime> = None;
            let mut path = path;
            for _ in 0..1_000_000 {
                let req = crate::control::ControlRequest::Call {
                    tenant: tenant.clone(),
                    plugin: plugin.clone(),
                    user: user.clone(),
                    method: method.clone(),
                    path: path.clone(),
                    body: body.clone(),
                };
                let (status, text) = match crate::control::send(&folder, &req).await {
                    Some(answer) => {
                        let answer = answer?;
                        if !answer.ok {
                            bail!("{} ({})", answer.message, answer.code);
                        }
                        let v: serde_json::Value = serde_json::from_str(&answer.message)?;
                        (
                            v["status"].as_u64().unwrap_or(0) as u16,
                            v["body"].as_str().unwrap_or_default().to_string(),
                        )
                    }
                    None => {
                        if offline.is_none() {
                            offline = Some(open(&data)?);
                        }
                        let rt = offline.as_ref().context("runtime")?;
                        crate::control::call_plugin(
                            rt,
                            &tenant,
                            &plugin,
                            user.as_deref(),
                            &method,
                            &path,
                            body.clone(),
                        )
                        .await
                        .map_err(|(code, message)| anyhow::anyhow!("{message} ({code})"))?
                    }
                };
                let cursor = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .filter(|v| follow && status == 200 && v["done"] == false)
                    .and_then(|v| v["cursor"].as_str().map(str::to_string));
                match cursor {
                    Some(c) => path = with_query(&path, "cursor", &c),
                    None => {
                        println!("{status}");
                        println!("{text}");
                        if let Some(rt) = &offline {
                            rt.flush()?;
                        }
                        if status >= 400 {
                            bail!("the plugin answered {status}");
                        }
                        return Ok(());
                    }
                }
            }
            bail!("--follow gave up after a million calls")
        }
        Command::Session(cmd) => accounts::session(cmd).await,
        Command::Tenant(cmd) => tenant::run(cmd).await,
        Command::Backup(cmd) => backup::run(cmd).await,
        Command::Keys(cmd) => backup::keys(cmd).await,
        Command::Plugin(cmd) => plugin::run(cmd).await,
        Command::Trust(cmd) => plugin::trust(cmd).await,
    }
}

/// `path` with query parameter `name` set to `value` (replacing it).
fn with_query(path: &str, name: &str, value: &str) -> String {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with(&format!("{name}=")))
        .map(str::to_string)
        .collect();
    pairs.push(format!("{name}={value}"));
    format!("{base}?{}", pairs.join("&"))
}

/// Runs an administrative operation as the console: through the running
/// server's control socket when there is one, else on the folder itself.
async fn admin_op(data: &DataArgs, op: Op) -> anyhow::Result<serde_json::Value> {
    let folder = data.dir()?;
    let req = crate::control::ControlRequest::Admin { admin: op };
    if let Some(answer) = crate::control::send(&folder, &req).await {
        let answer = answer?;
        if !answer.ok {
            bail!("{} ({})", answer.message, answer.code);
        }
        return Ok(serde_json::from_str(&answer.message)?);
    }
    let crate::control::ControlRequest::Admin { admin: op } = req else {
        unreachable!("built as Admin above")
    };
    let rt = open(data)?;
    let value = crate::audit::with_context(
        crate::audit::Context::console(),
        crate::admin::execute(&rt, &crate::admin::Actor::Console, op),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code))?;
    rt.flush()?;
    Ok(value)
}

fn open(data: &DataArgs) -> anyhow::Result<Runtime> {
    // The same regions and master key source as the server.
    let mut config = data.file()?.runtime_config(data.dir()?);
    // One-off commands need few slots.
    config.max_concurrent_calls = 16;
    Runtime::open(config)
}

fn control_answer(answer: crate::control::ControlResponse) -> anyhow::Result<()> {
    if answer.ok {
        println!("{}", answer.message);
        Ok(())
    } else {
        bail!("{} ({})", answer.message, answer.code)
    }
}

/// A key file's error with its code.
fn key_err(e: switchboard_signing::keys::KeyError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}

fn admin(e: crate::runtime::AdminError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn the_plugin_apis_named_in_the_version_are_the_supported_ones() {
        let listed = super::LONG_VERSION
            .lines()
            .find_map(|l| l.strip_prefix("plugin APIs: "))
            .unwrap();
        assert_eq!(
            listed,
            crate::kernel::link::SUPPORTED_API_VERSIONS.join(", ")
        );
    }

    /// Every verb works with the server running (through the control
    /// socket) or never touches a server; no help text may claim a verb
    /// needs the server stopped.
    #[test]
    fn no_verb_claims_it_needs_the_server_stopped() {
        use clap::CommandFactory as _;
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
            let help = format!(
                "{} {}",
                cmd.get_about().map(|a| a.to_string()).unwrap_or_default(),
                cmd.get_long_about()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            for claim in [
                "must not be running",
                "(offline)",
                "offline:",
                "stop the server",
            ] {
                if help.contains(claim) {
                    out.push(format!("{path}: {claim:?}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut wrong = Vec::new();
        walk(&super::Cli::command(), "switchboard", &mut wrong);
        assert!(wrong.is_empty(), "{wrong:?}");
    }
}
