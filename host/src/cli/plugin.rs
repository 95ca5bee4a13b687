//! `switchboard plugin …` and `switchboard trust …`: publisher keys,
//! signing and verifying packages, installing, listing, enabling, disabling
//! and configuring plugins, and the trust store.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use switchboard_signing::package::Trust;
use switchboard_signing::{Capability, KeyId, Package, PackageError, keys};

use super::{DataArgs, admin, admin_op, key_err, read};
use crate::admin::Op;
use crate::support::encoding::Base64Bytes;

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
    /// Scaffold a plugin crate NAME (manifest, a router with two routes, a
    /// harness test, a README naming the next command); refuses an
    /// existing folder.
    New {
        name: String,
        /// The folder to create it in (default: the current one).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The SDK as a path: the `sdk/` folder of a Switchboard checkout
        /// (default: the one this binary was built from).
        #[arg(long, conflicts_with = "sdk_git")]
        sdk: Option<PathBuf>,
        /// The SDK from a git repository instead.
        #[arg(long)]
        sdk_git: Option<String>,
    },
    /// In a plugin crate: build it for wasm32-wasip2, sign it with your
    /// development key, install it into the running server as a dev build
    /// (`VERSION-dev.N`), enable it for a tenant and print its URL.
    Dev {
        #[command(flatten)]
        data: DataArgs,
        /// The tenant to enable it for.
        #[arg(long)]
        tenant: String,
        /// The plugin crate (default: the current folder).
        #[arg(long, default_value = ".")]
        path: PathBuf,
        /// The development key (default: ~/.config/switchboard/dev.key,
        /// created 0600 on first use).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Trust the development key on the server if it does not yet (the
        /// operator's consent; audited).
        #[arg(long)]
        trust_dev_key: bool,
        /// Cargo's target folder for the build.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
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

pub(super) fn pkg_err(e: PackageError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}

/// The passphrase in environment variable `var`, if one was named.
pub(super) fn passphrase(var: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(var) = var else { return Ok(None) };
    match std::env::var(var) {
        Ok(p) if p.len() >= 8 => Ok(Some(p)),
        Ok(_) => bail!("the passphrase in ${var} is shorter than 8 characters"),
        Err(_) => bail!("environment variable {var} is not set (or not UTF-8)"),
    }
}

/// Runs a `PluginCmd` verb.
pub(super) async fn run(cmd: PluginCmd) -> anyhow::Result<()> {
    match cmd {
        PluginCmd::Keygen {
            out,
            passphrase_env,
        } => {
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
        PluginCmd::Sign {
            key,
            passphrase_env,
            manifest,
            component,
            out,
        } => {
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
        PluginCmd::Verify { package, trust } => {
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
        PluginCmd::Inspect { package } => {
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
        PluginCmd::New {
            name,
            dir,
            sdk,
            sdk_git,
        } => {
            let source = match (sdk, sdk_git) {
                (Some(p), _) => Some(super::dev::SdkSource::Path(p)),
                (None, Some(url)) => Some(super::dev::SdkSource::Git(url)),
                (None, None) => None,
            };
            super::dev::new_plugin(&name, &dir, source)
        }
        PluginCmd::Dev {
            data,
            tenant,
            path,
            key,
            trust_dev_key,
            target_dir,
        } => {
            super::dev::dev(super::dev::DevArgs {
                data,
                path,
                tenant,
                key,
                trust_dev_key,
                target_dir,
            })
            .await
        }
        PluginCmd::Install { data, package } => {
            let bytes = read(&package)?;
            let limit = switchboard_signing::package::MAX_PACKAGE_BYTES;
            if bytes.len() > limit {
                bail!(
                    "{} has {} bytes; a package has at most {limit} (package_too_large)",
                    package.display(),
                    bytes.len()
                );
            }
            let op = Op::PluginInstall {
                package: Base64Bytes(bytes),
            };
            let v = admin_op(&data, op).await?;
            println!(
                "installed {} {} (sha256 {}, publisher {})",
                text(&v["name"]),
                text(&v["version"]),
                text(&v["digest"]),
                text(&v["publisher"])
            );
            Ok(())
        }
        PluginCmd::List { data } => {
            let v = admin_op(&data, Op::PluginList).await?;
            for p in v["plugins"].as_array().into_iter().flatten() {
                let caps: Vec<&str> = p["capabilities"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str())
                    .collect();
                let state = if p["revoked"] == true { " REVOKED" } else { "" };
                println!(
                    "{} {} sha256:{} publisher:{} [{}]{state}",
                    text(&p["name"]),
                    text(&p["version"]),
                    text(&p["digest"]),
                    text(&p["publisher"]),
                    caps.join(", ")
                );
            }
            Ok(())
        }
        PluginCmd::Enable {
            data,
            tenant,
            name,
            version,
            grants,
            config,
            allow_rollback,
        } => {
            for g in &grants {
                if Capability::from_interface(g).is_none() {
                    bail!("unknown capability {g:?}");
                }
            }
            let config: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&config).context("--config must be a JSON object")?;
            let op = Op::PluginEnable {
                tenant: tenant.clone(),
                name: name.clone(),
                version: version.to_string(),
                grants: (!grants.is_empty()).then_some(grants),
                config: (!config.is_empty()).then_some(config),
                allow_rollback,
            };
            admin_op(&data, op).await?;
            println!("{name} {version} enabled for {tenant}");
            Ok(())
        }
        PluginCmd::Config {
            data,
            tenant,
            name,
            set,
        } => {
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
        PluginCmd::Disable { data, tenant, name } => {
            let op = Op::PluginDisable {
                tenant: tenant.clone(),
                name: name.clone(),
            };
            admin_op(&data, op).await?;
            println!("{name} disabled for {tenant}");
            Ok(())
        }
    }
}

/// A JSON value as plain text (strings without quotes).
fn text(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// Runs a `TrustCmd` verb.
pub(super) async fn trust(cmd: TrustCmd) -> anyhow::Result<()> {
    match cmd {
        TrustCmd::Add { data, key, label } => {
            // The file goes as it was handed over; the server parses it.
            let public_key = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            let v = admin_op(&data, Op::TrustAdd { public_key, label }).await?;
            println!("trusted key {}", text(&v["key_id"]));
            Ok(())
        }
        TrustCmd::List { data } => {
            let v = admin_op(&data, Op::TrustList).await?;
            println!("{}", serde_json::to_string_pretty(&v["keys"])?);
            Ok(())
        }
        TrustCmd::Revoke { data, key_id } => {
            let v = admin_op(&data, Op::TrustRevoke { key_id }).await?;
            let disabled = v["disabled"].as_array().cloned().unwrap_or_default();
            println!(
                "revoked {}; packages disabled: {}",
                text(&v["revoked"]),
                disabled.len()
            );
            for p in disabled {
                // "name@version", printed as "name version".
                println!("  {}", text(&p).replacen('@', " ", 1));
            }
            Ok(())
        }
    }
}
