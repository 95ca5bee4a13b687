//! `switchboard user …` and `switchboard session …`: accounts of a realm
//! and their sessions. Each verb turns into admin operations through the
//! control socket when the server runs, else on the data folder.

use anyhow::bail;
use clap::Subcommand;

use super::{DataArgs, RealmArgs, admin_op};
use crate::admin::Op;

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

/// A user id from an id or a login name.
pub(super) async fn resolve_user(
    data: &DataArgs,
    realm: &RealmArgs,
    user: &str,
) -> anyhow::Result<String> {
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

pub(super) async fn user_cmd(cmd: UserCmd) -> anyhow::Result<()> {
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

/// Runs a `SessionCmd` verb.
pub(super) async fn session(cmd: SessionCmd) -> anyhow::Result<()> {
    match cmd {
        SessionCmd::List { data, realm, user } => {
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
        SessionCmd::Revoke {
            data,
            realm,
            user,
            id,
        } => {
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
    }
}
