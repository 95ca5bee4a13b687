//! The command line: `serve` and offline administration of a data folder
//! (tenants, plugins, one-off calls). The binary's `main` only parses and
//! dispatches here.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use switchboard_signing::package::Trust;
use switchboard_signing::{Capability, KeyId, Package, PackageError, keys};

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
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Manage tenants (offline: the server must not be running).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Sign, verify and manage plugins (offline: the server must not be
    /// running).
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// The operator's trust store of publisher keys (offline).
    #[command(subcommand)]
    Trust(TrustCmd),
    /// Backups: create (online through a running server, or offline),
    /// verify, restore.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Master key management.
    #[command(subcommand)]
    Keys(KeysCmd),
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
pub enum BackupCmd {
    /// Make a backup. Talks to the running server when there is one (the
    /// backup is then online: calls go on), else opens the folder.
    Create {
        #[command(flatten)]
        data: DataArgs,
        /// Destination folder (default `{data}/backups`).
        #[arg(long)]
        to: Option<PathBuf>,
        /// `full` or `incremental` (default: incremental when a previous
        /// backup is in the destination).
        #[arg(long)]
        kind: Option<String>,
    },
    /// Authenticate a backup and its chain and replay them into a scratch
    /// folder, comparing the result with the recorded digest.
    Verify {
        file: PathBuf,
        /// The backup key file (default `{data}/keys/backup.key`).
        #[arg(long)]
        backup_key: Option<PathBuf>,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Restore a backup (and its chain) into a fresh data folder.
    Restore {
        file: PathBuf,
        /// The backup key file of the server that made it.
        #[arg(long)]
        backup_key: PathBuf,
        /// The fresh data folder to restore into.
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Rotate the master key: every tenant key is rewrapped, no data is
    /// rewritten. Online through a running server, or offline.
    RotateMaster {
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        #[command(flatten)]
        data: DataArgs,
        id: String,
        /// Region to store it in (default: the server's first region).
        #[arg(long)]
        region: Option<String>,
    },
    /// Delete a tenant: its key is destroyed at once (crypto-shredding).
    Delete {
        #[command(flatten)]
        data: DataArgs,
        id: String,
        /// Confirms the deletion (it cannot be undone).
        #[arg(long)]
        yes: bool,
    },
    /// Set or release a legal hold on a tenant, or on one blob with
    /// --plugin and --blob.
    Hold {
        #[command(flatten)]
        data: DataArgs,
        id: String,
        #[arg(long)]
        release: bool,
        #[arg(long, requires = "blob")]
        plugin: Option<String>,
        #[arg(long, requires = "plugin")]
        blob: Option<String>,
    },
    /// Set how long a content class is kept (`--days N` or `--keep`), or
    /// show the policy when neither is given.
    Retention {
        #[command(flatten)]
        data: DataArgs,
        id: String,
        #[arg(long, requires = "class")]
        days: Option<u32>,
        #[arg(long, requires = "class", conflicts_with = "days")]
        keep: bool,
        #[arg(long)]
        class: Option<String>,
    },
    /// Show a tenant's storage use.
    Usage {
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
    /// Generate a publisher key pair: KEY (mode 0600) and KEY.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Seal the secret key with the passphrase in this environment
        /// variable (argon2id + AES-256-GCM).
        #[arg(long)]
        passphrase_env: Option<String>,
    },
    /// Build and sign a package from a manifest and a component.
    Sign {
        #[arg(long)]
        key: PathBuf,
        /// Environment variable holding the key's passphrase, if sealed.
        #[arg(long)]
        passphrase_env: Option<String>,
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        component: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a package against a publisher's public key.
    Verify {
        package: PathBuf,
        /// The publisher's KEY.pub.
        #[arg(long)]
        trust: PathBuf,
    },
    /// Print a package's manifest, signers and digest as JSON.
    Inspect { package: PathBuf },
    /// Install a signed package (its publisher must be trusted).
    Install {
        #[command(flatten)]
        data: DataArgs,
        package: PathBuf,
    },
    /// List installed plugins.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Enable (or upgrade, or roll back) a plugin version for a tenant.
    Enable {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: semver::Version,
        /// Capability to grant (repeat). Default: on first enable all the
        /// manifest requests; on upgrade the grants already given.
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Settings as a JSON object (default: keep the current ones).
        #[arg(long, default_value = "{}")]
        config: String,
        /// Operator override: allow a version lower than the tenant has run.
        #[arg(long)]
        allow_rollback: bool,
    },
    /// Disable a plugin for a tenant (its data is kept).
    Disable {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrustCmd {
    /// Trust a publisher key (KEY.pub).
    Add {
        #[command(flatten)]
        data: DataArgs,
        key: PathBuf,
        /// A label for the publisher.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List trusted and revoked keys.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
    /// Revoke a key: its packages stop running and new ones are refused.
    Revoke {
        #[command(flatten)]
        data: DataArgs,
        key_id: String,
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
            crate::bundle::install(&runtime, file.trust_bundled.unwrap_or(true)).await;
            server::serve(runtime, listen, file.backup.clone()).await
        }
        Command::Tenant(TenantCmd::Create { data, id, region }) => {
            let rt = open(&data)?;
            rt.create_tenant_in(&id, region.as_deref(), None)
                .await
                .map_err(admin)?;
            println!("tenant {id} created");
            Ok(())
        }
        Command::Tenant(TenantCmd::Delete { data, id, yes }) => {
            if !yes {
                bail!("deleting tenant {id} destroys its key and cannot be undone; pass --yes");
            }
            let rt = open(&data)?;
            rt.delete_tenant(&id).await.map_err(admin)?;
            println!("tenant {id} deleted; its key is destroyed");
            Ok(())
        }
        Command::Tenant(TenantCmd::Hold {
            data,
            id,
            release,
            plugin,
            blob,
        }) => {
            let rt = open(&data)?;
            match (plugin, blob) {
                (Some(p), Some(b)) => rt.set_blob_hold(&id, &p, &b, !release).await,
                _ => rt.set_legal_hold(&id, !release).await,
            }
            .map_err(admin)?;
            println!("legal hold {}", if release { "released" } else { "set" });
            Ok(())
        }
        Command::Tenant(TenantCmd::Retention {
            data,
            id,
            days,
            keep,
            class,
        }) => {
            let rt = open(&data)?;
            if let Some(class) = class {
                if days.is_none() && !keep {
                    bail!("give --days N or --keep for class {class}");
                }
                rt.set_retention(&id, &class, days).await.map_err(admin)?;
            }
            let (policy, hold) = rt.retention_policy(&id).map_err(admin)?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"days": policy, "legal_hold": hold})
                )?
            );
            Ok(())
        }
        Command::Tenant(TenantCmd::Usage { data, id }) => {
            let rt = open(&data)?;
            let u = rt.storage_usage(&id).map_err(admin)?;
            println!("{} of {} bytes", u.bytes, u.quota_bytes);
            Ok(())
        }
        Command::Backup(BackupCmd::Create { data, to, kind }) => {
            let kind = match kind.as_deref() {
                None => None,
                Some("full") => Some(crate::backup::Kind::Full),
                Some("incremental") => Some(crate::backup::Kind::Incremental),
                Some(other) => bail!("--kind must be full or incremental, not {other:?}"),
            };
            let folder = data.dir()?;
            let dir = to.unwrap_or_else(|| folder.join("backups"));
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let req = crate::control::ControlRequest::Backup {
                dir: dir.clone(),
                kind,
            };
            if let Some(answer) = crate::control::send(&folder, &req).await {
                return control_answer(answer?);
            }
            let rt = open(&data)?;
            let info = rt
                .backup(&dir, kind)
                .await
                .map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))?;
            println!("{}", crate::control::describe_backup(&info));
            Ok(())
        }
        Command::Backup(BackupCmd::Verify {
            file,
            backup_key,
            data,
        }) => {
            let key = load_backup_key(backup_key.as_deref(), &data.dir()?)?;
            let r = crate::backup::verify(&file, &key).map_err(backup_err)?;
            println!(
                "ok: {} backup(s) authenticated and replayed; {} entries, digest {}",
                r.chain.len(),
                r.live,
                r.digest
            );
            Ok(())
        }
        Command::Backup(BackupCmd::Restore {
            file,
            backup_key,
            data,
        }) => {
            let key = load_backup_key(Some(&backup_key), &data)?;
            let r = crate::backup::restore(&file, &key, &data).map_err(backup_err)?;
            // The restored folder uses the same backup key for its backups.
            let target = data.join("keys").join("backup.key");
            if !target.exists() {
                crate::store::crypt::write_key_file(&target, &key)?;
            }
            println!(
                "restored {} backup(s) into {}: {} entries, digest {} verified; master key {}",
                r.chain.len(),
                data.display(),
                r.live,
                r.digest,
                r.master_key_id
            );
            Ok(())
        }
        Command::Keys(KeysCmd::RotateMaster { data }) => {
            let req = crate::control::ControlRequest::RotateMaster;
            if let Some(answer) = crate::control::send(&data.dir()?, &req).await {
                return control_answer(answer?);
            }
            let rt = open(&data)?;
            let id = rt.rotate_master_key(None).await.map_err(admin)?;
            println!("master key rotated; new key id {id}");
            Ok(())
        }
        Command::Tenant(TenantCmd::List { data }) => {
            let rt = open(&data)?;
            println!("{}", serde_json::to_string_pretty(&rt.tenants())?);
            Ok(())
        }
        Command::Plugin(PluginCmd::Keygen {
            out,
            passphrase_env,
        }) => {
            let passphrase = passphrase(passphrase_env.as_deref())?;
            let key = keys::generate().map_err(key_err)?;
            keys::write_key_pair_sealed(&key, &out, passphrase.as_deref()).map_err(key_err)?;
            println!(
                "wrote {} (secret, mode 0600) and {}.pub; key id {}",
                out.display(),
                out.display(),
                KeyId::of(&key.verifying_key())
            );
            Ok(())
        }
        Command::Plugin(PluginCmd::Sign {
            key,
            passphrase_env,
            manifest,
            component,
            out,
        }) => {
            let passphrase = passphrase(passphrase_env.as_deref())?;
            let key = keys::read_secret_sealed(&key, passphrase.as_deref()).map_err(key_err)?;
            let m = read(&manifest)?;
            let c = read(&component)?;
            let bytes = crate::harness::sign(&key, &m, &c).map_err(admin)?;
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {} ({} bytes), signed by {}",
                out.display(),
                bytes.len(),
                KeyId::of(&key.verifying_key())
            );
            Ok(())
        }
        Command::Plugin(PluginCmd::Verify { package, trust }) => {
            let public = keys::read_public(&trust).map_err(key_err)?;
            let pkg = Package::parse(&read(&package)?).map_err(pkg_err)?;
            let id = pkg
                .verify(|id| {
                    if *id == KeyId::of(&public) {
                        Trust::Trusted(public)
                    } else {
                        Trust::Unknown
                    }
                })
                .map_err(pkg_err)?;
            let m = pkg.manifest();
            println!(
                "ok: {} {} signed by {id}, sha256 {}",
                m.name,
                m.version,
                pkg.digest()
            );
            Ok(())
        }
        Command::Plugin(PluginCmd::Inspect { package }) => {
            let pkg = Package::parse(&read(&package)?).map_err(pkg_err)?;
            let signers: Vec<String> = pkg.signers().iter().map(ToString::to_string).collect();
            let out = serde_json::json!({
                "manifest": pkg.manifest(),
                "component_sha256": pkg.digest(),
                "component_bytes": pkg.component().len(),
                "signers": signers,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Plugin(PluginCmd::Install { data, package }) => {
            let rt = open(&data)?;
            let info = rt.install_package(&read(&package)?).await.map_err(admin)?;
            println!(
                "installed {} {} (sha256 {}, publisher {})",
                info.name, info.version, info.digest, info.publisher
            );
            Ok(())
        }
        Command::Plugin(PluginCmd::List { data }) => {
            let rt = open(&data)?;
            for p in rt.plugins() {
                let caps: Vec<String> = p.capabilities.iter().map(ToString::to_string).collect();
                let state = if p.revoked { " REVOKED" } else { "" };
                println!(
                    "{} {} sha256:{} publisher:{} [{}]{state}",
                    p.name,
                    p.version,
                    p.digest,
                    p.publisher,
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
            allow_rollback,
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
            if allow_rollback {
                rt.enable_plugin_overriding_rollback(&tenant, &name, &version, grants, config)
                    .await
                    .map_err(admin)?;
            } else {
                rt.enable_plugin(&tenant, &name, &version, grants, config)
                    .await
                    .map_err(admin)?;
            }
            println!("{name} {version} enabled for {tenant}");
            Ok(())
        }
        Command::Plugin(PluginCmd::Disable { data, tenant, name }) => {
            let rt = open(&data)?;
            rt.disable_plugin(&tenant, &name).await.map_err(admin)?;
            println!("{name} disabled for {tenant}");
            Ok(())
        }
        Command::Trust(TrustCmd::Add { data, key, label }) => {
            let rt = open(&data)?;
            let public = keys::read_public(&key).map_err(key_err)?;
            let id = rt.trust_add(&public, &label).await.map_err(admin)?;
            println!("trusted key {id}");
            Ok(())
        }
        Command::Trust(TrustCmd::List { data }) => {
            let rt = open(&data)?;
            println!("{}", serde_json::to_string_pretty(&rt.trusted_keys())?);
            Ok(())
        }
        Command::Trust(TrustCmd::Revoke { data, key_id }) => {
            let rt = open(&data)?;
            let id: KeyId = key_id.parse()?;
            let disabled = rt.trust_revoke(&id).await.map_err(admin)?;
            println!("revoked {id}; packages disabled: {}", disabled.len());
            for (n, v) in disabled {
                println!("  {n} {v}");
            }
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

fn backup_err(e: crate::backup::BackupError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}

fn load_backup_key(
    file: Option<&std::path::Path>,
    data: &std::path::Path,
) -> anyhow::Result<crate::store::crypt::MasterKey> {
    let default = data.join("keys").join("backup.key");
    let path = file.unwrap_or(&default);
    crate::store::crypt::load_key_file(path, false).map_err(|e| {
        anyhow::anyhow!("{e}; pass --backup-key with the key of the server that made the backup")
    })
}

fn admin(e: crate::runtime::AdminError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}

fn key_err(e: keys::KeyError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}

/// The passphrase in environment variable `var`, if one was named.
fn passphrase(var: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(var) = var else { return Ok(None) };
    match std::env::var(var) {
        Ok(p) if p.len() >= 8 => Ok(Some(p)),
        Ok(_) => bail!("the passphrase in ${var} is shorter than 8 characters"),
        Err(_) => bail!("environment variable {var} is not set (or not UTF-8)"),
    }
}

fn pkg_err(e: PackageError) -> anyhow::Error {
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
}
