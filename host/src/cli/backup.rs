//! `switchboard backup …` and `switchboard keys …`: online backups,
//! verification, restore, and the master key. Each verb turns into admin
//! operations through the control socket when the server runs, else on the
//! data folder.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;

use super::{DataArgs, admin, control_answer, open};

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

pub(super) fn backup_err(e: crate::backup::BackupError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}

pub(super) fn load_backup_key(
    file: Option<&std::path::Path>,
    data: &std::path::Path,
) -> anyhow::Result<crate::store::crypt::MasterKey> {
    let default = data.join("keys").join("backup.key");
    let path = file.unwrap_or(&default);
    crate::store::crypt::load_key_file(path, false).map_err(|e| {
        anyhow::anyhow!("{e}; pass --backup-key with the key of the server that made the backup")
    })
}

/// Runs a `BackupCmd` verb.
pub(super) async fn run(cmd: BackupCmd) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Create { data, to, kind } => {
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
        BackupCmd::Verify {
            file,
            backup_key,
            data,
        } => {
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
        BackupCmd::Restore {
            file,
            backup_key,
            data,
        } => {
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
    }
}

/// Runs a `KeysCmd` verb.
pub(super) async fn keys(cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::RotateMaster { data } => {
            let req = crate::control::ControlRequest::RotateMaster;
            if let Some(answer) = crate::control::send(&data.dir()?, &req).await {
                return control_answer(answer?);
            }
            let rt = open(&data)?;
            let id = rt.rotate_master_key(None).await.map_err(admin)?;
            println!("master key rotated; new key id {id}");
            Ok(())
        }
    }
}
