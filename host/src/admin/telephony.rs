//! Telephony (SPEC T2): a tenant's routes (which plugin takes the calls
//! to which number) and its SIP devices (each with its own credentials,
//! the password shown once). Both are the tenant's: its admins (and the
//! console) manage them; operators see neither (the directory of who has
//! which phone is tenant content, SPEC I8).
//!
//! This area's part of the one admin vocabulary (`admin::Op`).

use serde_json::{Value, json};

use super::{Actor, Op, Runner, Who, deny, misrouted};
use crate::audit::Scope;
use crate::error::ApiError;

/// Whether `op` is one of this area's.
pub(super) fn owns(op: &Op) -> bool {
    matches!(
        op,
        Op::RoutesShow { .. }
            | Op::RoutesSet { .. }
            | Op::DeviceList { .. }
            | Op::DeviceAdd { .. }
            | Op::DeviceRemove { .. }
            | Op::DevicePassword { .. }
            | Op::DeviceUdp { .. }
            | Op::TrunkList { .. }
            | Op::TrunkSet { .. }
            | Op::TrunkRemove { .. }
    )
}

/// The op's name in the audit trail.
pub(super) fn op_name(op: &Op) -> &'static str {
    match op {
        Op::RoutesShow { .. } => "routes-show",
        Op::RoutesSet { .. } => "routes-set",
        Op::DeviceList { .. } => "device-list",
        Op::DeviceAdd { .. } => "device-add",
        Op::DeviceRemove { .. } => "device-remove",
        Op::DevicePassword { .. } => "device-password",
        Op::DeviceUdp { .. } => "device-udp",
        Op::TrunkList { .. } => "trunk-list",
        Op::TrunkSet { .. } => "trunk-set",
        Op::TrunkRemove { .. } => "trunk-remove",
        _ => "unknown",
    }
}

/// The realm the op aims at (where a refusal is audited).
pub(super) fn op_realm(op: &Op) -> Option<Scope> {
    match op {
        Op::RoutesShow { tenant }
        | Op::RoutesSet { tenant, .. }
        | Op::DeviceList { tenant, .. }
        | Op::DeviceAdd { tenant, .. }
        | Op::DeviceRemove { tenant, .. }
        | Op::DevicePassword { tenant, .. }
        | Op::DeviceUdp { tenant, .. }
        | Op::TrunkList { tenant }
        | Op::TrunkSet { tenant, .. }
        | Op::TrunkRemove { tenant, .. } => Scope::parse(tenant),
        _ => None,
    }
}

/// Whether the signed-in caller may run `op`: the tenant's own admins;
/// trunks also operators (who carry the provider contracts), though no
/// one reads a trunk's password back.
pub(super) fn authorize(who: &Who<'_>, op: &Op) -> Result<(), ApiError> {
    let Some(Scope::Tenant(tenant)) = op_realm(op) else {
        return Err(misrouted(op));
    };
    let trunks = matches!(
        op,
        Op::TrunkList { .. } | Op::TrunkSet { .. } | Op::TrunkRemove { .. }
    );
    if trunks {
        return if who.operator || who.own_tenant(&tenant) {
            Ok(())
        } else {
            deny("manage this tenant's trunks (its admins and operators may)")
        };
    }
    if who.own_tenant(&tenant) {
        Ok(())
    } else {
        deny("manage this tenant's routes and devices (its admins may)")
    }
}

/// Runs `op` (already authorised).
pub(super) async fn run(r: &Runner<'_>, op: Op) -> Result<Value, ApiError> {
    let rt = r.rt;
    Ok(match op {
        Op::RoutesShow { tenant } => json!({ "routes": rt.routes(&tenant)? }),
        Op::RoutesSet { tenant, routes } => {
            rt.set_routes(&tenant, routes).await?;
            json!({ "routes": rt.routes(&tenant)? })
        }
        Op::DeviceList { tenant, user } => {
            rt.tenant_exists(&tenant)?;
            json!({ "devices": rt.identity().devices(&tenant, user.as_deref())? })
        }
        Op::DeviceAdd {
            tenant,
            name,
            user,
            udp,
        } => {
            rt.tenant_exists(&tenant)?;
            let realm = rt.sip_realm(&tenant);
            let (device, password) = rt
                .identity()
                .add_device(&tenant, &name, &user, &realm, udp)
                .await?;
            json!({
                "device": device,
                "password": password.as_str(),
                "register": register_hint(&realm, &device.name),
            })
        }
        Op::DeviceRemove { tenant, name } => {
            rt.tenant_exists(&tenant)?;
            rt.identity().remove_device(&tenant, &name).await?;
            rt.telephony().device_changed(&tenant, &name);
            json!({ "removed": name })
        }
        Op::DevicePassword { tenant, name } => {
            rt.tenant_exists(&tenant)?;
            let realm = rt.sip_realm(&tenant);
            let password = rt
                .identity()
                .reset_device_password(&tenant, &name, &realm)
                .await?;
            rt.telephony().device_changed(&tenant, &name);
            json!({
                "name": name,
                "password": password.as_str(),
                "register": register_hint(&realm, &name),
            })
        }
        Op::DeviceUdp { tenant, name, udp } => {
            rt.tenant_exists(&tenant)?;
            let device = rt.identity().set_device_udp(&tenant, &name, udp).await?;
            if !udp {
                // What it holds over UDP/TCP ends now (registrations,
                // calls); over TLS it goes on.
                rt.telephony().device_plain_off(&tenant, &name);
            }
            json!({ "device": device })
        }
        Op::TrunkList { tenant } => json!({ "trunks": rt.trunks(&tenant)? }),
        Op::TrunkSet {
            tenant,
            trunk,
            password,
        } => {
            let name = trunk.name.clone();
            let password = password.map(|p| zeroize::Zeroizing::new(p.0.clone()));
            rt.set_trunk(&tenant, trunk, password, operator(r)).await?;
            let trunks = rt.trunks(&tenant)?;
            json!({ "trunk": trunks.into_iter().find(|t| t["name"] == name.as_str()) })
        }
        Op::TrunkRemove { tenant, name } => {
            rt.remove_trunk(&tenant, &name, operator(r)).await?;
            json!({ "removed": name })
        }
        other => return Err(misrouted(&other)),
    })
}

/// Whether the actor is the operator (the console, or an operator signed
/// in, with a just-in-time grant or not): managed trunks are theirs.
fn operator(r: &Runner<'_>) -> bool {
    match r.actor {
        Actor::Console => true,
        Actor::Caller(c) => c.role == crate::identity::Role::Operator,
    }
}

/// How a phone is set up for this device.
fn register_hint(realm: &str, name: &str) -> Value {
    json!({
        "aor": format!("sips:{name}@{realm}"),
        "username": name,
        "realm": realm,
        "transport": "tls",
    })
}
