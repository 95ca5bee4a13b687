//! A tenant's dialing policy (SPEC T1): its numbering plan and rules, kept
//! in its record, checked when set, applied by call control to every
//! outbound leg.

use serde_json::{Value, json};

use super::Runtime;
use crate::audit::{Scope, outcome};
use crate::kernel::error::AdminError;
use crate::telephony::policy;
use crate::tenant::Dialing;

impl Runtime {
    /// Replaces a tenant's dialing policy, checked first (a policy that
    /// does not read changes nothing); audited in the tenant's and the
    /// system's trail.
    pub async fn set_dialing(&self, tenant: &str, dialing: Dialing) -> Result<(), AdminError> {
        policy::from_dialing(&dialing, self.inner.telephony.default_region())
            .map_err(|e| AdminError::InvalidDialing(e.to_string()))?;
        let summary = serde_json::to_string(&dialing).unwrap_or_default();
        self.inner
            .registry
            .update_tenant(
                tenant,
                |record| {
                    record.dialing = dialing.clone();
                    Ok(())
                },
                |_| {
                    for scope in [Scope::System, Scope::tenant(tenant)] {
                        self.inner.trail.note(
                            &scope,
                            "tenant.dialing",
                            tenant,
                            outcome::SUCCESS,
                            &summary,
                        );
                    }
                },
            )
            .await
    }

    /// A tenant's dialing policy as set, and as it applies (defaults
    /// filled in: the region, the classes anyone may dial).
    pub fn dialing(&self, tenant: &str) -> Result<Value, AdminError> {
        let t = self.inner.registry.tenant_or_err(tenant)?;
        let set = &t.record.dialing;
        let (plan, rules) = policy::from_dialing(set, self.inner.telephony.default_region())
            .map_err(|e| AdminError::InvalidDialing(e.to_string()))?;
        let classes: Vec<&str> = rules.classes.iter().map(|c| c.name()).collect();
        Ok(json!({
            "set": set,
            "effective": {
                "region": plan.region,
                "outside_line": plan.outside_line,
                "extension_digits": [plan.extension_digits.start(), plan.extension_digits.end()],
                "classes": classes,
                "allow": set.allow,
                "deny": set.deny,
            },
        }))
    }
}
