//! `switchboard audit …`: verify and export a realm's trail, the signing
//! key. Each verb turns into admin operations through the control socket
//! when the server runs, else on the data folder.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::{DataArgs, RealmArgs, admin_op};
use crate::admin::Op;

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

pub(super) fn print_report(r: &crate::audit::Report) -> bool {
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

pub(super) async fn audit_cmd(cmd: AuditCmd) -> anyhow::Result<()> {
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
