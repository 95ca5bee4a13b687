//! Plugins and trust (SPEC S2, K1): the trust store, the plugin catalogue,
//! enabling and disabling per tenant, plugin settings.
//!
//! This area's part of the one admin vocabulary (`admin::Op`): which ops
//! are its own, their names and realms for the audit trail, who may run
//! them (given the caller), and running them.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use switchboard_signing::Capability;

use super::{Op, Runner, Who, deny, misrouted};
use crate::audit::Scope;
use crate::error::ApiError;

/// Whether `op` is one of this area's.
pub(super) fn owns(op: &Op) -> bool {
    matches!(
        op,
        Op::TrustList
            | Op::TrustAdd { .. }
            | Op::TrustRevoke { .. }
            | Op::PluginList
            | Op::PluginInstall { .. }
            | Op::PluginEnable { .. }
            | Op::PluginDisable { .. }
            | Op::PluginConfigShow { .. }
            | Op::PluginConfigSet { .. }
    )
}

/// The op's name in the audit trail.
pub(super) fn op_name(op: &Op) -> &'static str {
    use Op::*;
    match op {
        TrustList => "trust-list",
        TrustAdd { .. } => "trust-add",
        TrustRevoke { .. } => "trust-revoke",
        PluginList => "plugin-list",
        PluginInstall { .. } => "plugin-install",
        PluginEnable { .. } => "plugin-enable",
        PluginDisable { .. } => "plugin-disable",
        PluginConfigShow { .. } => "plugin-config-show",
        PluginConfigSet { .. } => "plugin-config-set",
        _ => "unknown",
    }
}

/// The realm the op aims at (where a refusal is audited).
pub(super) fn op_realm(op: &Op) -> Option<Scope> {
    use Op::*;
    match op {
        PluginEnable { tenant, .. }
        | PluginDisable { tenant, .. }
        | PluginConfigShow { tenant, .. }
        | PluginConfigSet { tenant, .. } => Scope::parse(tenant),
        _ => None,
    }
}

/// Whether the signed-in caller may run `op`.
pub(super) fn authorize(who: &Who<'_>, op: &Op) -> Result<(), ApiError> {
    use Op::*;
    match op {
        TrustAdd { .. } | TrustRevoke { .. } | PluginInstall { .. } => {
            if who.operator {
                Ok(())
            } else {
                deny("manage the trust store or install plugins")
            }
        }
        PluginEnable {
            allow_rollback: true,
            ..
        } if !who.operator => deny("roll a tenant back to an older plugin version"),
        TrustList | PluginList => who.may_see_catalogue(),
        PluginEnable { tenant, .. }
        | PluginDisable { tenant, .. }
        | PluginConfigShow { tenant, .. }
        | PluginConfigSet { tenant, .. } => {
            if who.operator || who.own_tenant(tenant) || who.assigned(tenant) {
                Ok(())
            } else {
                deny("configure this tenant's plugins")
            }
        }
        _ => Err(misrouted(op)),
    }
}

/// Runs `op` (already authorised).
pub(super) async fn run(r: &Runner<'_>, op: Op) -> Result<Value, ApiError> {
    let rt = r.rt;
    use Op::*;
    Ok(match op {
        TrustList => json!({ "keys": rt.trusted_keys() }),
        TrustAdd { public_key, label } => {
            let key = switchboard_signing::keys::parse_publisher_key(&public_key)
                .map_err(|e| ApiError::new(400, "key_malformed", e.to_string()))?;
            let id = rt.trust_add(&key, &label).await?;
            json!({ "key_id": id.to_string() })
        }
        TrustRevoke { key_id } => {
            let id: switchboard_signing::KeyId = key_id.parse().map_err(|_| {
                ApiError::new(
                    400,
                    "key_malformed",
                    format!("{key_id:?} is not a key id (32 hex digits)"),
                )
            })?;
            let disabled = rt.trust_revoke(&id).await?;
            json!({ "revoked": key_id, "disabled": disabled.iter().map(|(n, v)| format!("{n}@{v}")).collect::<Vec<_>>() })
        }
        PluginList => {
            let list: Vec<Value> = rt
                .plugins()
                .into_iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "version": p.version.to_string(),
                        "digest": p.digest,
                        "publisher": p.publisher,
                        "revoked": p.revoked,
                        "capabilities": p.capabilities.iter().map(|c| c.interface()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({ "plugins": list })
        }
        PluginInstall { package } => {
            let info = rt.install_package(&package.0).await?;
            json!({
                "name": info.name,
                "version": info.version.to_string(),
                "digest": info.digest,
                "publisher": info.publisher,
                "capabilities": info.capabilities.iter().map(|c| c.interface()).collect::<Vec<_>>(),
            })
        }
        PluginEnable {
            tenant,
            name,
            version,
            grants,
            config,
            allow_rollback,
        } => {
            let version = semver::Version::parse(&version)
                .map_err(|e| ApiError::bad(format!("version {version:?}: {e}")))?;
            let grants = match grants {
                Some(list) => Some(
                    list.iter()
                        .map(|g| {
                            Capability::from_interface(g)
                                .ok_or_else(|| ApiError::bad(format!("unknown capability {g:?}")))
                        })
                        .collect::<Result<BTreeSet<_>, _>>()?,
                ),
                None => None,
            };
            let config = config.unwrap_or_default();
            if allow_rollback {
                rt.enable_plugin_overriding_rollback(&tenant, &name, &version, grants, config)
                    .await?;
            } else {
                rt.enable_plugin(&tenant, &name, &version, grants, config)
                    .await?;
            }
            json!({ "enabled": name, "version": version.to_string() })
        }
        PluginDisable { tenant, name } => {
            rt.disable_plugin(&tenant, &name).await?;
            json!({ "disabled": name })
        }
        PluginConfigShow { tenant, name } => {
            json!({ "plugin": name, "config": rt.plugin_config(&tenant, &name)? })
        }
        PluginConfigSet {
            tenant,
            name,
            config,
        } => {
            rt.set_config(&tenant, &name, config).await?;
            json!({ "plugin": name, "config": rt.plugin_config(&tenant, &name)? })
        }
        other => return Err(misrouted(&other)),
    })
}
