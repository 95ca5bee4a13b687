//! `switchboard tenant …`: create, delete, list, legal holds, retention,
//! dialing policy, call records and usage of tenants. Each verb turns into admin operations through the
//! control socket when the server runs, else on the data folder.

use anyhow::bail;
use clap::Subcommand;

use super::{DataArgs, admin_op};
use crate::admin::Op;

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
    /// Show a tenant's limits, or change some of them online with
    /// `--set name=value` (e.g. `--set cpu_share=200 --set concurrency=8`).
    Limits {
        #[command(flatten)]
        data: DataArgs,
        id: String,
        /// A limit to change, as `name=value` (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
    },
    /// Show a tenant's dialing policy, or replace it with `--set` and a
    /// JSON policy (`{"region": "GB", "outside_line": "9", "classes":
    /// [...], "allow": ["+4420*"], "deny": [...]}`; docs/telephony.md).
    Dialing {
        #[command(flatten)]
        data: DataArgs,
        id: String,
        /// The whole policy, as JSON.
        #[arg(long, value_name = "JSON")]
        set: Option<String>,
    },
    /// Show a tenant's routes (numbers and the plugins that take their
    /// calls), or replace them with `--set` and a JSON list
    /// (`[{"number": "100", "plugin": "pbx", "args": ""}]`).
    Routes {
        #[command(flatten)]
        data: DataArgs,
        id: String,
        /// Every route, as a JSON list.
        #[arg(long, value_name = "JSON")]
        set: Option<String>,
    },
    /// A tenant's SIP devices: list, add (the password is printed once),
    /// remove, or give one a new password.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// A tenant's SIP trunks: list, set one (JSON), remove one.
    #[command(subcommand)]
    Trunk(TrunkCmd),
    /// Export a tenant's call records (every page), or with --counts the
    /// calls per day without numbers (what an operator may see).
    Calls {
        #[command(flatten)]
        data: DataArgs,
        id: String,
        /// Records that ended at or after this time (ms since the epoch).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Records that ended before this time (ms since the epoch).
        #[arg(long)]
        to: Option<u64>,
        /// `json` (one array), `jsonl` (one record a line) or `csv`.
        #[arg(long, default_value = "json", value_parser = ["json", "jsonl", "csv"])]
        format: String,
        /// Counts per day instead of records.
        #[arg(long)]
        counts: bool,
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

/// `switchboard tenant trunk ...`.
#[derive(Debug, Subcommand)]
pub enum TrunkCmd {
    /// List the tenant's trunks (passwords are never shown).
    List {
        #[command(flatten)]
        data: DataArgs,
        tenant: String,
    },
    /// Add or replace a trunk, given as JSON (`{"name": "itsp",
    /// "addresses": ["203.0.113.0/28"], "proxy": "203.0.113.5:5060",
    /// "username": "...", "caller_id": "+44..."}`; docs/telephony.md).
    Set {
        #[command(flatten)]
        data: DataArgs,
        tenant: String,
        /// The trunk, as JSON.
        json: String,
        /// Read the provider's password from the first line of standard
        /// input (never from the command line, where `ps` shows it).
        #[arg(long, conflicts_with = "clear_password")]
        password_stdin: bool,
        /// Forget the trunk's password.
        #[arg(long)]
        clear_password: bool,
    },
    /// Remove a trunk and its password.
    Remove {
        #[command(flatten)]
        data: DataArgs,
        tenant: String,
        name: String,
    },
}

/// `switchboard tenant device ...`.
#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// List the tenant's devices (of one user id with `--user`).
    List {
        #[command(flatten)]
        data: DataArgs,
        tenant: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// Add device NAME (its SIP user name) for a user (login name or id).
    Add {
        #[command(flatten)]
        data: DataArgs,
        tenant: String,
        name: String,
        #[arg(long)]
        user: String,
        /// Also allow SIP over UDP/TCP for it (default: TLS only).
        #[arg(long)]
        udp: bool,
    },
    /// Remove device NAME.
    Remove {
        #[command(flatten)]
        data: DataArgs,
        tenant: String,
        name: String,
    },
    /// Give device NAME a new password (printed once; the old one stops
    /// working at once).
    Password {
        #[command(flatten)]
        data: DataArgs,
        tenant: String,
        name: String,
    },
    /// Turn SIP over UDP/TCP on or off for device NAME (`--udp true` or
    /// `--udp false`; TLS always works).
    Udp {
        #[command(flatten)]
        data: DataArgs,
        tenant: String,
        name: String,
        #[arg(long, action = clap::ArgAction::Set)]
        udp: bool,
    },
}

/// Runs a `TenantCmd` verb.
pub(super) async fn run(cmd: TenantCmd) -> anyhow::Result<()> {
    let (data, op) = match cmd {
        TenantCmd::Create { data, id, region } => (data, Op::TenantCreate { id, region }),
        TenantCmd::Delete { data, id, yes } => {
            if !yes {
                bail!("deleting tenant {id} destroys its key and cannot be undone; pass --yes");
            }
            (data, Op::TenantDelete { id })
        }
        TenantCmd::Hold {
            data,
            id,
            release,
            plugin,
            blob,
        } => (
            data,
            Op::HoldSet {
                tenant: id,
                on: !release,
                plugin,
                blob,
            },
        ),
        TenantCmd::Retention {
            data,
            id,
            days,
            keep,
            class,
        } => match class {
            Some(class) => {
                if days.is_none() && !keep {
                    bail!("give --days N or --keep for class {class}");
                }
                let op = Op::RetentionSet {
                    tenant: id,
                    class,
                    days,
                };
                (data, op)
            }
            None => (data, Op::RetentionShow { tenant: id }),
        },
        TenantCmd::Limits { data, id, set } => {
            let op = if set.is_empty() {
                Op::TenantLimits { id }
            } else {
                Op::TenantLimitsSet {
                    id,
                    set: limit_changes(&set)?,
                }
            };
            (data, op)
        }
        TenantCmd::Dialing { data, id, set } => match set {
            Some(json) => {
                let dialing = serde_json::from_str(&json)
                    .map_err(|e| anyhow::anyhow!("--set is not a dialing policy: {e}"))?;
                (
                    data,
                    Op::DialingSet {
                        tenant: id,
                        dialing,
                    },
                )
            }
            None => (data, Op::DialingShow { tenant: id }),
        },
        TenantCmd::Routes { data, id, set } => match set {
            Some(json) => {
                let routes = serde_json::from_str(&json)
                    .map_err(|e| anyhow::anyhow!("--set is not a list of routes: {e}"))?;
                (data, Op::RoutesSet { tenant: id, routes })
            }
            None => (data, Op::RoutesShow { tenant: id }),
        },
        TenantCmd::Device(cmd) => match cmd {
            DeviceCmd::List { data, tenant, user } => (data, Op::DeviceList { tenant, user }),
            DeviceCmd::Add {
                data,
                tenant,
                name,
                user,
                udp,
            } => (
                data,
                Op::DeviceAdd {
                    tenant,
                    name,
                    user,
                    udp,
                },
            ),
            DeviceCmd::Remove { data, tenant, name } => (data, Op::DeviceRemove { tenant, name }),
            DeviceCmd::Password { data, tenant, name } => {
                (data, Op::DevicePassword { tenant, name })
            }
            DeviceCmd::Udp {
                data,
                tenant,
                name,
                udp,
            } => (data, Op::DeviceUdp { tenant, name, udp }),
        },
        TenantCmd::Trunk(cmd) => match cmd {
            TrunkCmd::List { data, tenant } => (data, Op::TrunkList { tenant }),
            TrunkCmd::Set {
                data,
                tenant,
                json,
                password_stdin,
                clear_password,
            } => {
                let trunk = serde_json::from_str(&json)
                    .map_err(|e| anyhow::anyhow!("the trunk is not valid JSON for a trunk: {e}"))?;
                let password = if password_stdin {
                    let mut line = zeroize::Zeroizing::new(String::new());
                    std::io::stdin().read_line(&mut line)?;
                    Some(crate::admin::TrunkPassword(
                        line.trim_end_matches(['\r', '\n']).to_string(),
                    ))
                } else if clear_password {
                    Some(crate::admin::TrunkPassword(String::new()))
                } else {
                    None
                };
                (
                    data,
                    Op::TrunkSet {
                        tenant,
                        trunk,
                        password,
                    },
                )
            }
            TrunkCmd::Remove { data, tenant, name } => (data, Op::TrunkRemove { tenant, name }),
        },
        TenantCmd::Calls {
            data,
            id,
            from,
            to,
            format,
            counts,
        } => {
            if counts {
                let op = Op::CallCounts {
                    tenant: id,
                    from_ms: from,
                    to_ms: to,
                };
                (data, op)
            } else {
                return export_calls(&data, &id, from, to, &format).await;
            }
        }
        TenantCmd::Usage { data, id } => (data, Op::TenantUsage { id }),
        TenantCmd::List { data } => (data, Op::TenantList),
    };
    let answer = admin_op(&data, op).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// `name=value` pairs as a JSON object; values are JSON (numbers), or
/// strings when they do not parse as JSON.
fn limit_changes(pairs: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut out = serde_json::Map::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--set takes name=value, not {pair:?}");
        };
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        out.insert(name.trim().to_string(), value);
    }
    Ok(out)
}

/// Prints every call record of `tenant` in `[from, to)`, page by page.
async fn export_calls(
    data: &DataArgs,
    tenant: &str,
    from: u64,
    to: Option<u64>,
    format: &str,
) -> anyhow::Result<()> {
    use crate::telephony::records::{CSV_HEADER, CallRecord};
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let mut after: Option<String> = None;
    let mut all = Vec::new();
    if format == "csv" {
        writeln!(out, "{CSV_HEADER}")?;
    }
    loop {
        let page = admin_op(
            data,
            Op::CallRecords {
                tenant: tenant.to_string(),
                from_ms: from,
                to_ms: to,
                after: after.clone(),
                limit: None,
            },
        )
        .await?;
        let records: Vec<CallRecord> = serde_json::from_value(page["records"].clone())?;
        for r in records {
            match format {
                "csv" => writeln!(out, "{}", r.csv_row())?,
                "jsonl" => writeln!(out, "{}", serde_json::to_string(&r)?)?,
                _ => all.push(r),
            }
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    if format == "json" {
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
    }
    Ok(())
}
