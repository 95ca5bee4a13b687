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

use crate::admin::Op;
use crate::runtime::Runtime;
use crate::server::{self, ServerConfig};

/// Switchboard: a unified-communications server built as a WebAssembly
/// microkernel.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version)]
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
    /// response (offline).
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
    /// Show a plugin's settings for a tenant, or change some (`--set
    /// key=value`, the value as JSON or else as a string); online through
    /// the control socket when the server runs.
    Config {
        #[command(flatten)]
        data: DataArgs,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long = "set")]
        set: Vec<String>,
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

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create an account; prints its welcome password, which must be
    /// changed at first sign-in.
    Create {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        username: String,
        /// operator or partner (system realm); tenant-admin or user.
        #[arg(long)]
        role: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        /// Tenants a partner manages (repeat).
        #[arg(long = "assign")]
        tenants: Vec<String>,
    },
    /// List accounts.
    List {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
    },
    /// Change an account's role, state or profile.
    Update {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        /// User id or login name.
        user: String,
        #[arg(long)]
        role: Option<String>,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        email: Option<String>,
    },
    /// Delete an account and end its sessions.
    Delete {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        user: String,
        #[arg(long)]
        yes: bool,
    },
    /// Set a new welcome password (printed) and end the sessions.
    ResetPassword {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        user: String,
    },
    /// Lift a lock after failed sign-ins.
    Unlock {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        user: String,
    },
    /// Remove the second factor (the user enrols again).
    ResetMfa {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// A user's live sessions.
    List {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        user: String,
    },
    /// End one session (`--id`) or all of a user's.
    Revoke {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        user: String,
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check a trail (or every trail with --all), or an exported file
    /// with --file; exits non-zero when anything does not hold.
    Verify {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        /// Verify every trail: the system's and each tenant's.
        #[arg(long, conflicts_with = "file")]
        all: bool,
        /// An export to verify instead of the store.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The audit public key (hex) to check checkpoints against; by
        /// default the key named in the export.
        #[arg(long, requires = "file")]
        public_key: Option<String>,
    },
    /// Write a trail as JSON lines (header, entries, checkpoints).
    Export {
        #[command(flatten)]
        data: DataArgs,
        #[command(flatten)]
        realm: RealmArgs,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public key that signs checkpoints.
    Key {
        #[command(flatten)]
        data: DataArgs,
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
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
            let runtime = Runtime::open(file.runtime_config(data))?;
            if let Some(url) = &file.public_url {
                runtime.set_public_url(url);
            }
            crate::bundle::install(&runtime, file.trust_bundled.unwrap_or(true)).await;
            server::serve(runtime, &file, listen).await
        }
        Command::User(cmd) => user_cmd(cmd).await,
        Command::Session(SessionCmd::List { data, realm, user }) => {
            let user = resolve_user(&data, &realm, &user).await?;
            let v = admin_op(
                &data,
                Op::SessionList {
                    realm: realm.name(),
                    user,
                },
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Session(SessionCmd::Revoke {
            data,
            realm,
            user,
            id,
        }) => {
            let user = resolve_user(&data, &realm, &user).await?;
            let v = admin_op(
                &data,
                Op::SessionRevoke {
                    realm: realm.name(),
                    user,
                    session: id,
                },
            )
            .await?;
            println!("sessions revoked: {}", v["revoked"]);
            Ok(())
        }
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
        Command::Audit(cmd) => audit_cmd(cmd).await,
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
        Command::Plugin(PluginCmd::Config {
            data,
            tenant,
            name,
            set,
        }) => {
            let current = admin_op(
                &data,
                Op::PluginConfigShow {
                    tenant: tenant.clone(),
                    name: name.clone(),
                },
            )
            .await?;
            let mut config = match current.get("config") {
                Some(serde_json::Value::Object(m)) => m.clone(),
                _ => serde_json::Map::new(),
            };
            let shown = if set.is_empty() {
                current
            } else {
                for pair in &set {
                    let Some((key, value)) = pair.split_once('=') else {
                        bail!("--set takes key=value, not {pair:?}");
                    };
                    let value = serde_json::from_str(value)
                        .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
                    config.insert(key.to_string(), value);
                }
                admin_op(
                    &data,
                    Op::PluginConfigSet {
                        tenant,
                        name,
                        config,
                    },
                )
                .await?
            };
            println!("{}", serde_json::to_string_pretty(&shown)?);
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
    let req = crate::control::ControlRequest::Admin { admin: op.clone() };
    if let Some(answer) = crate::control::send(&folder, &req).await {
        let answer = answer?;
        if !answer.ok {
            bail!("{} ({})", answer.message, answer.code);
        }
        return Ok(serde_json::from_str(&answer.message)?);
    }
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

/// A user id from an id or a login name.
async fn resolve_user(data: &DataArgs, realm: &RealmArgs, user: &str) -> anyhow::Result<String> {
    let list = admin_op(
        data,
        Op::UserList {
            realm: realm.name(),
        },
    )
    .await?;
    let users = list["users"].as_array().cloned().unwrap_or_default();
    let wanted = user.to_lowercase();
    users
        .iter()
        .find(|u| u["id"] == user || u["username"] == wanted.as_str())
        .and_then(|u| u["id"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("no user {user:?} in {} (not_found)", realm.name()))
}

async fn user_cmd(cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Create {
            data,
            realm,
            username,
            role,
            display_name,
            email,
            tenants,
        } => {
            let account = crate::identity::NewAccount {
                username,
                display_name,
                email,
                role,
                password: None,
                tenants,
            };
            let v = admin_op(
                &data,
                Op::UserCreate {
                    realm: realm.name(),
                    account,
                },
            )
            .await?;
            println!(
                "user {} ({}) created in {}",
                v["user"]["username"].as_str().unwrap_or_default(),
                v["user"]["id"].as_str().unwrap_or_default(),
                realm.name()
            );
            println!(
                "welcome password (must be changed at first sign-in): {}",
                v["welcome_password"].as_str().unwrap_or_default()
            );
        }
        UserCmd::List { data, realm } => {
            let v = admin_op(
                &data,
                Op::UserList {
                    realm: realm.name(),
                },
            )
            .await?;
            for u in v["users"].as_array().cloned().unwrap_or_default() {
                println!(
                    "{}  {:<24} {:<13} {}{}{}",
                    u["id"].as_str().unwrap_or_default(),
                    u["username"].as_str().unwrap_or_default(),
                    u["role"].as_str().unwrap_or_default(),
                    if u["active"] == true {
                        "active"
                    } else {
                        "disabled"
                    },
                    if u["locked"] == true { ", locked" } else { "" },
                    if u["mfa"] == true { ", mfa" } else { "" },
                );
            }
        }
        UserCmd::Update {
            data,
            realm,
            user,
            role,
            disable,
            enable,
            display_name,
            email,
        } => {
            let id = resolve_user(&data, &realm, &user).await?;
            let change = crate::identity::AccountChange {
                display_name,
                email,
                role,
                active: if disable {
                    Some(false)
                } else if enable {
                    Some(true)
                } else {
                    None
                },
                tenants: None,
            };
            let v = admin_op(
                &data,
                Op::UserUpdate {
                    realm: realm.name(),
                    user: id,
                    change,
                },
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        UserCmd::Delete {
            data,
            realm,
            user,
            yes,
        } => {
            if !yes {
                bail!("deleting user {user} cannot be undone; pass --yes");
            }
            let id = resolve_user(&data, &realm, &user).await?;
            admin_op(
                &data,
                Op::UserDelete {
                    realm: realm.name(),
                    user: id,
                },
            )
            .await?;
            println!("user {user} deleted");
        }
        UserCmd::ResetPassword { data, realm, user } => {
            let id = resolve_user(&data, &realm, &user).await?;
            let v = admin_op(
                &data,
                Op::UserResetPassword {
                    realm: realm.name(),
                    user: id,
                },
            )
            .await?;
            println!(
                "welcome password (must be changed at first sign-in): {}",
                v["welcome_password"].as_str().unwrap_or_default()
            );
        }
        UserCmd::Unlock { data, realm, user } => {
            let id = resolve_user(&data, &realm, &user).await?;
            admin_op(
                &data,
                Op::UserUnlock {
                    realm: realm.name(),
                    user: id,
                },
            )
            .await?;
            println!("user {user} unlocked");
        }
        UserCmd::ResetMfa { data, realm, user } => {
            let id = resolve_user(&data, &realm, &user).await?;
            admin_op(
                &data,
                Op::UserResetMfa {
                    realm: realm.name(),
                    user: id,
                },
            )
            .await?;
            println!("second factor of {user} removed; sessions ended");
        }
    }
    Ok(())
}

fn print_report(r: &crate::audit::Report) -> bool {
    if r.is_intact() {
        println!(
            "{}: intact: {} entries ({}-{}), {} signed checkpoints, last at {}",
            r.scope,
            r.entries,
            r.first_seq.unwrap_or(0),
            r.last_seq.unwrap_or(0),
            r.checkpoints,
            r.last_checkpoint.map_or("none".into(), |c| c.to_string())
        );
        true
    } else {
        println!("{}: TAMPERED ({} problems)", r.scope, r.problems.len());
        for p in &r.problems {
            println!("  entry {}: {:?}: {}", p.seq, p.kind, p.message);
        }
        false
    }
}

async fn audit_cmd(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify {
            data,
            realm,
            all,
            file,
            public_key,
        } => {
            let intact = if let Some(file) = file {
                let key = public_key
                    .map(|k| crate::audit::parse_public_key(&k))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!(e))?;
                let f = std::fs::File::open(&file)
                    .with_context(|| format!("cannot open {}", file.display()))?;
                let report = crate::audit::verify_export(std::io::BufReader::new(f), key)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                print_report(&report)
            } else {
                let realms: Vec<String> = if all {
                    let v = admin_op(&data, Op::TenantList).await?;
                    std::iter::once("system".to_string())
                        .chain(
                            v["tenants"]
                                .as_array()
                                .cloned()
                                .unwrap_or_default()
                                .iter()
                                .filter_map(|t| t["id"].as_str().map(str::to_string)),
                        )
                        .collect()
                } else {
                    vec![realm.name()]
                };
                let mut ok = true;
                for r in realms {
                    let v = admin_op(&data, Op::AuditVerify { realm: r }).await?;
                    let report: crate::audit::Report = serde_json::from_value(v)?;
                    ok &= print_report(&report);
                }
                ok
            };
            if !intact {
                bail!("the audit trail does not verify (audit_tampered)");
            }
            Ok(())
        }
        AuditCmd::Export { data, realm, out } => {
            // The server writes the file itself (same machine, console
            // only), so a long trail never passes through memory.
            let scratch;
            let path = match &out {
                Some(p) => std::path::absolute(p)?,
                None => {
                    scratch = tempfile::Builder::new().prefix("sb-audit-").tempdir()?;
                    scratch.path().join("export.jsonl")
                }
            };
            let v = admin_op(
                &data,
                Op::AuditWrite {
                    realm: realm.name(),
                    path: path.clone(),
                },
            )
            .await?;
            match &out {
                Some(p) => eprintln!("{} entries written to {}", v["entries"], p.display()),
                None => {
                    let mut f = std::fs::File::open(&path)?;
                    std::io::copy(&mut f, &mut std::io::stdout().lock())?;
                }
            }
            Ok(())
        }
        AuditCmd::Key { data } => {
            let v = admin_op(&data, Op::AuditKey).await?;
            println!(
                "{} (key id {})",
                v["public_key"].as_str().unwrap_or_default(),
                v["key_id"].as_str().unwrap_or_default()
            );
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
