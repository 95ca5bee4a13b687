//! The command line: `serve` and offline administration of a data folder
//! (tenants, plugins, one-off calls). The binary's `main` only parses and
//! dispatches here.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use switchboard_signing::Capability;

use crate::runtime::{Method, Principal, Request, Runtime};
use crate::server::{self, ServerConfig};

/// Switchboard: a unified-communications server built as a WebAssembly
/// microkernel.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options every verb that opens a data folder takes.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// Data folder (store, compile cache, host keys).
    #[arg(long, default_value = "switchboard-data")]
    pub data: PathBuf,
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
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage tenants (offline: the server must not be running).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage plugins (offline: the server must not be running).
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// Call a plugin route once, as a user of a tenant, and print the
    /// response (offline).
    Call {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        plugin: String,
        /// User id the call is made as.
        #[arg(long, default_value = "cli")]
        user: String,
        /// HTTP method.
        method: String,
        /// Path below the plugin, e.g. `/counter/hits`.
        path: String,
        /// Request body.
        #[arg(long, default_value = "")]
        body: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        #[command(flatten)]
        data: DataArgs,
        id: String,
    },
    /// List tenants and what they enabled.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCmd {
    /// Install a plugin version (unsigned development install; signed
    /// packages come with the trust-chain work).
    Install {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        component: PathBuf,
    },
    /// List installed plugins.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Enable a plugin version for a tenant.
    Enable {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: semver::Version,
        /// Capability to grant (repeat); default: all the manifest requests.
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Settings as a JSON object.
        #[arg(long, default_value = "{}")]
        config: String,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            data,
            listen,
            config,
        } => {
            let file = match &config {
                Some(path) => ServerConfig::load(path)?,
                None => ServerConfig::default(),
            };
            let data = data
                .or(file.data.clone())
                .unwrap_or_else(|| PathBuf::from("switchboard-data"));
            let listen = listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
            let runtime = Runtime::open(file.runtime_config(data))?;
            server::serve(runtime, listen).await
        }
        Command::Tenant(TenantCmd::Create { data, id }) => {
            let rt = open(&data)?;
            rt.create_tenant(&id, None).await.map_err(admin)?;
            println!("tenant {id} created");
            Ok(())
        }
        Command::Tenant(TenantCmd::List { data }) => {
            let rt = open(&data)?;
            println!("{}", serde_json::to_string_pretty(&rt.tenants())?);
            Ok(())
        }
        Command::Plugin(PluginCmd::Install {
            data,
            manifest,
            component,
        }) => {
            let rt = open(&data)?;
            let m = std::fs::read(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let c = std::fs::read(&component)
                .with_context(|| format!("cannot read {}", component.display()))?;
            let info = rt.install_plugin(&m, &c).await.map_err(admin)?;
            println!(
                "installed {} {} (sha256 {})",
                info.name, info.version, info.digest
            );
            Ok(())
        }
        Command::Plugin(PluginCmd::List { data }) => {
            let rt = open(&data)?;
            for p in rt.plugins() {
                let caps: Vec<String> = p.capabilities.iter().map(ToString::to_string).collect();
                println!(
                    "{} {} sha256:{} [{}]",
                    p.name,
                    p.version,
                    p.digest,
                    caps.join(", ")
                );
            }
            Ok(())
        }
        Command::Plugin(PluginCmd::Enable {
            data,
            tenant,
            name,
            version,
            grants,
            config,
        }) => {
            let rt = open(&data)?;
            let grants = if grants.is_empty() {
                None
            } else {
                let mut set = BTreeSet::new();
                for g in &grants {
                    let cap = Capability::from_interface(g)
                        .with_context(|| format!("unknown capability {g:?}"))?;
                    set.insert(cap);
                }
                Some(set)
            };
            let config: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&config).context("--config must be a JSON object")?;
            rt.enable_plugin(&tenant, &name, &version, grants, config)
                .await
                .map_err(admin)?;
            println!("{name} {version} enabled for {tenant}");
            Ok(())
        }
        Command::Call {
            data,
            tenant,
            plugin,
            user,
            method,
            path,
            body,
        } => {
            let rt = open(&data)?;
            let method: Method = method.parse().map_err(anyhow::Error::msg)?;
            if !path.starts_with('/') {
                bail!("the path must start with '/'");
            }
            let req = Request::new(method, &path, Principal::user(&tenant, &user))
                .with_body(body.into_bytes());
            let resp = rt
                .handle(&tenant, &plugin, req)
                .await
                .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
            println!("{}", resp.status);
            println!("{}", resp.text());
            rt.flush()?;
            Ok(())
        }
    }
}

fn open(data: &DataArgs) -> anyhow::Result<Runtime> {
    let mut config = crate::runtime::RuntimeConfig::new(&data.data);
    // One-off commands need few slots.
    config.max_concurrent_calls = 16;
    Runtime::open(config)
}

fn admin(e: crate::runtime::AdminError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}
