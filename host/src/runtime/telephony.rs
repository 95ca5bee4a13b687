//! What the host keeps about calls for admins: a tenant's dialing policy
//! (SPEC T1: its numbering plan and rules, kept in its record, checked
//! when set, applied by call control to every outbound leg) and its call
//! records (read by its admins; operators see counts only, SPEC I8).

use serde_json::{Value, json};

use super::Runtime;
use crate::audit::{Scope, outcome};
use crate::kernel::error::AdminError;
use crate::store::keys;
use crate::telephony::policy;
use crate::telephony::records::CallRecord;
use crate::tenant::{Dialing, Route, Trunk, TrunkTransport};
use switchboard_signing::Capability;

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

    /// Replaces a tenant's routes (SPEC T2), checked first: well-formed,
    /// each number once, and every plugin enabled for the tenant with the
    /// `calls` grant. Audited in the tenant's trail.
    pub async fn set_routes(&self, tenant: &str, routes: Vec<Route>) -> Result<(), AdminError> {
        Route::check_all(&routes).map_err(AdminError::InvalidRoutes)?;
        let t = self.inner.registry.tenant_or_err(tenant)?;
        for r in &routes {
            let granted = t
                .record
                .plugins
                .get(&r.plugin)
                .is_some_and(|e| e.grants.contains(&Capability::Calls));
            if !granted {
                return Err(AdminError::InvalidRoutes(format!(
                    "route {}: plugin {} is not enabled for this tenant with the calls grant",
                    r.number, r.plugin
                )));
            }
        }
        let summary = format!("{} routes", routes.len());
        self.inner
            .registry
            .update_tenant(
                tenant,
                |record| {
                    // A DID is one tenant's: its calls in and the caller id
                    // its calls out may show.
                    for other in self.inner.registry.states() {
                        if other.record.id == tenant {
                            continue;
                        }
                        if let Some(r) = routes.iter().find(|r| {
                            r.number.starts_with('+')
                                && other.record.routes.iter().any(|o| o.number == r.number)
                        }) {
                            return Err(AdminError::InvalidRoutes(format!(
                                "route {}: the number is another tenant's",
                                r.number
                            )));
                        }
                    }
                    record.routes = routes.clone();
                    Ok(())
                },
                |_| {
                    self.inner.trail.note(
                        &Scope::tenant(tenant),
                        "tenant.routes",
                        tenant,
                        outcome::SUCCESS,
                        &summary,
                    );
                },
            )
            .await
    }

    /// A tenant's trunks as admins see them: never a password, only
    /// whether one is set.
    pub fn trunks(&self, tenant: &str) -> Result<Vec<Value>, AdminError> {
        let t = self.inner.registry.tenant_or_err(tenant)?;
        let store = self.inner.store();
        let mut out = Vec::new();
        for trunk in &t.record.trunks {
            let has_password = store
                .get(&keys::trunk_password(tenant, &trunk.name))
                .map_err(AdminError::Store)?
                .is_some();
            let mut v = serde_json::to_value(trunk).unwrap_or_default();
            v["has_password"] = Value::Bool(has_password);
            if trunk.register {
                v["registration"] = self
                    .inner
                    .telephony
                    .trunk_state(tenant, &trunk.name, "registration")
                    .unwrap_or_else(|| json!({"state": "pending"}));
            }
            if trunk.proxy.is_some() && trunk.transport != TrunkTransport::Udp {
                v["connection"] = self
                    .inner
                    .telephony
                    .trunk_state(tenant, &trunk.name, "connection")
                    .unwrap_or_else(|| json!({"state": "pending"}));
            }
            out.push(v);
        }
        Ok(out)
    }

    /// Adds or replaces one of a tenant's trunks (by name), checked first.
    /// `password`: `Some("")` clears it, `None` keeps it. Only an operator
    /// (`by_operator`) sets a managed trunk or changes one
    /// (`trunk_managed`). Audited in the tenant's and the system's trail
    /// (never the password).
    pub async fn set_trunk(
        &self,
        tenant: &str,
        trunk: Trunk,
        password: Option<zeroize::Zeroizing<String>>,
        by_operator: bool,
    ) -> Result<(), AdminError> {
        if let Some(p) = &password
            && (p.len() > 128 || p.chars().any(char::is_control))
        {
            return Err(AdminError::InvalidTrunk(
                "password: at most 128 characters, no control characters".into(),
            ));
        }
        self.one_owner_per_provider(tenant, &trunk)?;
        if !by_operator {
            // The door connects to a trunk's proxy, and says how that
            // went: not to the host's own loopback or a link-local
            // address at a tenant admin's word (a port scanner).
            if let Some(p) = trunk.proxy
                && is_local_only(p.ip())
            {
                return Err(AdminError::InvalidTrunk(format!(
                    "trunk {}: proxy {p} is a loopback or link-local address (an operator may set one)",
                    trunk.name
                )));
            }
        }
        let name = trunk.name.clone();
        let summary = format!(
            "trunk {name}{}: addresses {}; proxy {}; password {}",
            if trunk.managed { " (managed)" } else { "" },
            trunk.addresses.join(", "),
            trunk.proxy.map_or("none".into(), |p| p.to_string()),
            match &password {
                None => "kept",
                Some(p) if p.is_empty() => "cleared",
                Some(_) => "set",
            }
        );
        let store = self.inner.store().clone();
        let seq = self
            .inner
            .registry
            .update_tenant(
                tenant,
                |record| {
                    managed_guard(&record.trunks, &name, trunk.managed, by_operator)?;
                    let mut trunks = record.trunks.clone();
                    // A password goes only where it was given for: a new
                    // proxy, user name or transport, or over TLS a new
                    // name to verify or CA to trust, without a new
                    // password clears it (else whoever may edit the trunk
                    // could aim the provider's credentials at a server of
                    // theirs, or send them in clear).
                    let mut moved = false;
                    match trunks.iter_mut().find(|t| t.name == name) {
                        Some(t) => {
                            moved = t.credential_scope() != trunk.credential_scope();
                            *t = trunk.clone();
                        }
                        None => trunks.push(trunk.clone()),
                    }
                    Trunk::check_all(&trunks).map_err(AdminError::InvalidTrunk)?;
                    record.trunks = trunks;
                    let key = keys::trunk_password(tenant, &name);
                    match &password {
                        None if moved => store
                            .apply(&[(key, None)])
                            .map(Some)
                            .map_err(AdminError::Store),
                        None => Ok(None),
                        Some(p) if p.is_empty() => store
                            .apply(&[(key, None)])
                            .map(Some)
                            .map_err(AdminError::Store),
                        Some(p) => {
                            let sealed = zeroize::Zeroizing::new(
                                format!("{}\n{}", trunk.credential_scope(), p.as_str())
                                    .into_bytes(),
                            );
                            store
                                .apply(&[(key, Some(sealed.to_vec()))])
                                .map(Some)
                                .map_err(AdminError::Store)
                        }
                    }
                },
                |_| self.note_trunk(tenant, &summary),
            )
            .await?;
        if let Some(seq) = seq {
            store.durable(seq).await.map_err(AdminError::Store)?;
        }
        Ok(())
    }

    /// A provider (a proxy, or addresses in common) the operator manages
    /// a trunk to is the operator's: every trunk to it, in any tenant, is
    /// managed. So a tenant's own trunk to it is refused (else calls over
    /// the operator's contract, IP-authenticated, would show caller ids
    /// of the tenant's choosing), and so is a managed trunk while others'
    /// unmanaged ones reach its provider (named, to be removed or taken
    /// over first). Read across tenants before the write, so two writes
    /// racing within one moment could both pass.
    fn one_owner_per_provider(&self, tenant: &str, trunk: &Trunk) -> Result<(), AdminError> {
        let mut clashes = Vec::new();
        for t in self.inner.registry.states() {
            for other in &t.record.trunks {
                let itself = t.record.id == tenant && other.name == trunk.name;
                if !itself && other.managed != trunk.managed && trunk.shares_provider(other) {
                    clashes.push(format!("{}/{}", t.record.id, other.name));
                }
            }
        }
        match (clashes.is_empty(), trunk.managed) {
            (true, _) => Ok(()),
            (false, false) => Err(AdminError::TrunkManaged(format!(
                "trunk {}: its proxy or addresses are those of a trunk the operator manages",
                trunk.name
            ))),
            (false, true) => Err(AdminError::TrunkManaged(format!(
                "trunk {}: unmanaged trunks reach the same provider; remove them or set them up managed first: {}",
                trunk.name,
                clashes.join(", ")
            ))),
        }
    }

    /// Removes one of a tenant's trunks and its password (`not_found` if
    /// it has none of that name; `trunk_managed` for a managed one unless
    /// `by_operator`). Audited like `set_trunk`.
    pub async fn remove_trunk(
        &self,
        tenant: &str,
        name: &str,
        by_operator: bool,
    ) -> Result<(), AdminError> {
        let store = self.inner.store().clone();
        let seq = self
            .inner
            .registry
            .update_tenant(
                tenant,
                |record| {
                    managed_guard(&record.trunks, name, false, by_operator)?;
                    let before = record.trunks.len();
                    record.trunks.retain(|t| t.name != name);
                    if record.trunks.len() == before {
                        return Err(AdminError::NotFound(format!(
                            "trunk {:?}",
                            name.chars().take(40).collect::<String>()
                        )));
                    }
                    store
                        .apply(&[(keys::trunk_password(tenant, name), None)])
                        .map_err(AdminError::Store)
                },
                |_| self.note_trunk(tenant, &format!("trunk {name}: removed")),
            )
            .await?;
        store.durable(seq).await.map_err(AdminError::Store)?;
        Ok(())
    }

    /// Audits a change to a tenant's trunks in its and the system's trail.
    fn note_trunk(&self, tenant: &str, summary: &str) {
        for scope in [Scope::System, Scope::tenant(tenant)] {
            self.inner
                .trail
                .note(&scope, "tenant.trunk", tenant, outcome::SUCCESS, summary);
        }
    }

    /// The trunks, of every tenant, that register with their provider:
    /// (tenant, trunk).
    pub fn registering_trunks(&self) -> Vec<(String, Trunk)> {
        let mut out = Vec::new();
        for t in self.inner.registry.states() {
            for trunk in t.record.trunks.iter().filter(|tr| tr.register) {
                out.push((t.record.id.clone(), trunk.clone()));
            }
        }
        out
    }

    /// The SIP door's report of a trunk's registration: kept for the
    /// trunk list, and audited (`trunk.register`) when its state changes
    /// (registered, failed, stopped), never on a refresh.
    pub fn note_registration(&self, tenant: &str, trunk: &str, state: Option<Value>) {
        self.note_trunk_state(tenant, trunk, "registration", state);
    }

    /// The SIP door's report of its connection to a TCP or TLS trunk's
    /// proxy: kept for the trunk list, audited (`trunk.connect`) when its
    /// state changes (up, down, stopped).
    pub fn note_connection(&self, tenant: &str, trunk: &str, state: Option<Value>) {
        self.note_trunk_state(tenant, trunk, "connection", state);
    }

    fn note_trunk_state(
        &self,
        tenant: &str,
        trunk: &str,
        aspect: &'static str,
        state: Option<Value>,
    ) {
        let name = |v: &Option<Value>| {
            v.as_ref()
                .and_then(|v| v["state"].as_str().map(str::to_string))
                .unwrap_or_else(|| "stopped".into())
        };
        let now = name(&state);
        let detail = state
            .as_ref()
            .map(|v| format!("trunk {trunk}: {v}"))
            .unwrap_or_else(|| format!("trunk {trunk}: no {aspect} any more"));
        let before = self
            .inner
            .telephony
            .note_trunk_state(tenant, trunk, aspect, state);
        if name(&before) != now {
            let action = match aspect {
                "registration" => "trunk.register",
                _ => "trunk.connect",
            };
            for scope in [Scope::System, Scope::tenant(tenant)] {
                self.inner.trail.note(&scope, action, tenant, &now, &detail);
            }
        }
    }

    /// A trunk's password, for answering its provider's challenges: only
    /// for `trunk` as it was when the password was given (its
    /// [`Trunk::credential_scope`]); `None` for any other form of it.
    pub fn trunk_password(
        &self,
        tenant: &str,
        trunk: &Trunk,
    ) -> Option<zeroize::Zeroizing<String>> {
        let bytes = zeroize::Zeroizing::new(
            self.inner
                .store()
                .get(&keys::trunk_password(tenant, &trunk.name))
                .ok()
                .flatten()?,
        );
        let text = std::str::from_utf8(&bytes).ok()?;
        match text.split_once('\n') {
            Some((scope, password)) => (scope == trunk.credential_scope())
                .then(|| zeroize::Zeroizing::new(password.to_string())),
            // Kept before scopes were (its trunk's changes cleared it since).
            None => Some(zeroize::Zeroizing::new(text.to_string())),
        }
    }

    /// The trunks, of any tenant, whose provider may send from `ip`:
    /// (tenant, trunk).
    pub fn trunks_allowing(&self, ip: std::net::IpAddr) -> Vec<(String, Trunk)> {
        let mut out = Vec::new();
        for t in self.inner.registry.states() {
            for trunk in t.record.trunks.iter().filter(|tr| tr.allows(ip)) {
                out.push((t.record.id.clone(), trunk.clone()));
            }
        }
        out
    }

    /// Whether any tenant's trunk over `transport` lets `ip` send (the
    /// door's first check on every datagram and connection of trunks).
    pub fn any_trunk_allows(&self, ip: std::net::IpAddr, transport: TrunkTransport) -> bool {
        self.inner.registry.states().iter().any(|t| {
            t.record
                .trunks
                .iter()
                .any(|tr| tr.transport == transport && tr.allows(ip))
        })
    }

    /// The trunks, of any tenant, the door keeps a connection to: TCP and
    /// TLS trunks with a proxy.
    pub fn linked_trunks(&self) -> Vec<(String, Trunk)> {
        let mut out = Vec::new();
        for t in self.inner.registry.states() {
            for trunk in t
                .record
                .trunks
                .iter()
                .filter(|tr| tr.proxy.is_some() && tr.transport != TrunkTransport::Udp)
            {
                out.push((t.record.id.clone(), trunk.clone()));
            }
        }
        out
    }

    /// The route of a number a trunk delivered, with the number as E.164:
    /// only DIDs (`+` routes) are reached from outside. `called` is the
    /// Request-URI's user part: `+4420…`, `4420…` (E.164 without its
    /// `+`, as many providers send it) or a national number of the
    /// tenant's region.
    pub fn did_route(&self, tenant: &str, called: &str) -> Option<(String, Route)> {
        let t = self.inner.registry.tenant(tenant)?;
        let digits: String = called
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let mut candidates = Vec::new();
        if digits.starts_with('+') {
            candidates.push(digits.clone());
        } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            candidates.push(format!("+{digits}"));
            if let Ok((plan, _)) =
                policy::from_dialing(&t.record.dialing, self.inner.telephony.default_region())
                && let Ok(d) = plan.read(&digits)
                && d.number.starts_with('+')
            {
                candidates.push(d.number);
            }
        }
        candidates.into_iter().find_map(|n| {
            t.record
                .routes
                .iter()
                .find(|r| r.number.starts_with('+') && r.number == n)
                .map(|r| (n.clone(), r.clone()))
        })
    }

    /// The number `user`'s calls out show, if the tenant set one.
    pub fn presentation(&self, tenant: &str, user: &str) -> Option<String> {
        let t = self.inner.registry.tenant(tenant)?;
        t.record.dialing.presentation.get(user).cloned()
    }

    /// Whether `number` is one of the tenant's own DIDs (a `+` route).
    pub fn is_did(&self, tenant: &str, number: &str) -> bool {
        number.starts_with('+')
            && self
                .inner
                .registry
                .tenant(tenant)
                .is_some_and(|t| t.record.routes.iter().any(|r| r.number == number))
    }

    /// A tenant's trunks that place calls (with a proxy), in order.
    pub fn outbound_trunks(&self, tenant: &str, to: &policy::Dialled) -> Vec<Trunk> {
        let Some(t) = self.inner.registry.tenant(tenant) else {
            return Vec::new();
        };
        let emergency = to.class == policy::Class::Emergency;
        let mut ranked: Vec<(usize, &Trunk)> = t
            .record
            .trunks
            .iter()
            .filter(|tr| tr.proxy.is_some())
            .filter_map(|tr| match tr.rank(&to.number) {
                Some(rank) => Some((rank + 1, tr)),
                // An emergency call may go over any trunk, after those
                // meant for it: it must never find none.
                None => emergency.then_some((0, tr)),
            })
            .collect();
        // The longest prefix first; the list's order among equals.
        ranked.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
        ranked.into_iter().map(|(_, tr)| tr.clone()).collect()
    }

    /// One of a tenant's trunks.
    pub fn trunk(&self, tenant: &str, name: &str) -> Option<Trunk> {
        let t = self.inner.registry.tenant(tenant)?;
        t.record.trunks.iter().find(|tr| tr.name == name).cloned()
    }

    /// Whether tenant `tenant` exists (`tenant_not_found` if not).
    pub fn tenant_exists(&self, tenant: &str) -> Result<(), AdminError> {
        self.inner.registry.tenant_or_err(tenant).map(|_| ())
    }

    /// A tenant's SIP domain, which is also its devices' digest realm.
    pub fn sip_realm(&self, tenant: &str) -> String {
        format!("{tenant}.{}", self.inner.telephony.sip_domain())
    }

    /// The tenant whose SIP domain is `host`, if it exists.
    pub fn tenant_of_sip_domain(&self, host: &str) -> Option<String> {
        let host = host.to_ascii_lowercase();
        let tenant = host
            .strip_suffix(self.inner.telephony.sip_domain())?
            .strip_suffix('.')?;
        self.inner
            .registry
            .tenant(tenant)
            .map(|_| tenant.to_string())
    }

    /// The message-waiting counts (new, old) a plugin set for `user`;
    /// (0, 0) if none or unreadable.
    pub fn mwi_counts(&self, tenant: &str, user: &str) -> (u32, u32) {
        let Ok(Some(bytes)) = self.inner.store().get(&keys::mwi(tenant, user)) else {
            return (0, 0);
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let n = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .map_or(0, |x| u32::try_from(x).unwrap_or(u32::MAX))
        };
        (n("new"), n("old"))
    }

    /// A tenant's routes.
    pub fn routes(&self, tenant: &str) -> Result<Vec<Route>, AdminError> {
        Ok(self
            .inner
            .registry
            .tenant_or_err(tenant)?
            .record
            .routes
            .clone())
    }

    /// The route a device of `tenant` reaches by dialling `number`: the
    /// route of that number, else the first pattern it matches.
    pub fn route(&self, tenant: &str, number: &str) -> Option<Route> {
        let t = self.inner.registry.tenant(tenant)?;
        t.record.route_for(number).cloned()
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
                "max_outbound_calls": set.max_outbound_calls,
                "max_outbound_minutes_per_day": set.max_outbound_minutes_per_day,
                "restrictions": set.restrictions,
                "users": set.users,
                "devices": set.devices,
                "default_restriction": set.default_restriction,
                "account_code_classes": set.account_code_classes,
            },
        }))
    }
}

/// Most call records one page answers.
pub const MAX_RECORDS_PAGE: usize = 1000;

/// A page of call records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordPage {
    pub records: Vec<CallRecord>,
    /// Pass as `after` for the next page; `None` at the end.
    pub next: Option<String>,
}

impl Runtime {
    /// A tenant's call records that ended in `[from_ms, to_ms)`, oldest
    /// first, at most `limit` (≤ 1000), after the cursor `after`.
    pub fn call_records(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RecordPage, AdminError> {
        self.inner.registry.tenant_or_err(tenant)?;
        let limit = limit.clamp(1, MAX_RECORDS_PAGE);
        let prefix = keys::call_record_prefix(tenant);
        let start = match after {
            Some(cursor) => {
                let valid = cursor.len() <= 64
                    && cursor.bytes().all(|b| b.is_ascii_hexdigit() || b == b'/');
                if !valid {
                    return Err(AdminError::NotFound(format!("cursor {cursor:?}")));
                }
                let mut k = prefix.clone();
                k.extend_from_slice(cursor.as_bytes());
                k
            }
            None => {
                // Just before the first key at `from_ms`.
                let mut k = keys::call_record(tenant, from_ms, "");
                k.pop();
                k
            }
        };
        let store = self.inner.store();
        let page = store
            .scan_raw(&prefix, Some(&start), limit + 1)
            .map_err(AdminError::Store)?;
        let mut records = Vec::new();
        let mut next = None;
        // A full scan window may have more beyond it even when some keys
        // were skipped.
        let mut more = page.len() > limit;
        for (key, _) in page {
            let rest = &key[prefix.len()..];
            let Some(ended) = keys::parse_call_record(rest) else {
                continue;
            };
            if ended >= to_ms {
                more = false;
                break;
            }
            if records.len() == limit {
                more = true;
                break;
            }
            // The cursor moves past every key read, readable or not, so a
            // damaged record never ends a listing early.
            next = Some(String::from_utf8_lossy(rest).into_owned());
            if ended < from_ms {
                continue;
            }
            let raw = store.get(&key).map_err(AdminError::Store)?;
            match raw.and_then(|v| serde_json::from_slice::<CallRecord>(&v).ok()) {
                Some(r) => records.push(r),
                None => {
                    tracing::warn!(tenant, key = %String::from_utf8_lossy(&key), "an unreadable call record was skipped")
                }
            }
        }
        if !more {
            next = None;
        }
        Ok(RecordPage { records, next })
    }

    /// Counts of a tenant's calls per UTC day in `[from_ms, to_ms)`: legs,
    /// answered legs and talk minutes, no numbers (what an operator may
    /// see of a tenant's calls, SPEC I8).
    pub fn call_counts(&self, tenant: &str, from_ms: u64, to_ms: u64) -> Result<Value, AdminError> {
        const DAY_MS: u64 = 86_400_000;
        let mut days: std::collections::BTreeMap<u64, (u64, u64, u64)> = Default::default();
        let mut after: Option<String> = None;
        loop {
            let page =
                self.call_records(tenant, from_ms, to_ms, after.as_deref(), MAX_RECORDS_PAGE)?;
            for r in &page.records {
                let d = days.entry(r.ended_ms / DAY_MS).or_default();
                d.0 += 1;
                d.1 += u64::from(r.answered_ms.is_some());
                d.2 += r.talk_ms;
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let list: Vec<Value> = days
            .into_iter()
            .map(|(day, (legs, answered, talk))| {
                json!({
                    "day_start_ms": day * DAY_MS,
                    "legs": legs,
                    "answered": answered,
                    "talk_minutes": talk.div_ceil(60_000),
                })
            })
            .collect();
        Ok(json!({ "days": list }))
    }
}

/// Refuses a change to trunk `name` that only an operator may make: one
/// to a managed trunk, or one that makes a trunk managed.
fn managed_guard(
    trunks: &[Trunk],
    name: &str,
    makes_managed: bool,
    by_operator: bool,
) -> Result<(), AdminError> {
    if by_operator {
        return Ok(());
    }
    if trunks.iter().any(|t| t.name == name && t.managed) {
        return Err(AdminError::TrunkManaged(format!(
            "trunk {name} is managed by the operator; ask them to change it"
        )));
    }
    if makes_managed {
        return Err(AdminError::TrunkManaged(
            "only an operator sets up a managed trunk".into(),
        ));
    }
    Ok(())
}

/// Loopback and link-local addresses (IPv4-mapped ones read as IPv4).
fn is_local_only(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_loopback() || v4.is_link_local(),
            None => v6.is_loopback() || (v6.segments()[0] & 0xffc0) == 0xfe80,
        },
    }
}
