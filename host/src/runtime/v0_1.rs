//! Adapter for plugin API `switchboard:plugin@0.1.0`: the generated
//! bindings stay private here; this module links the granted interfaces,
//! converts between the generated types and the runtime's own
//! (`call::types`), and forwards each host call to its capability
//! module. A later API version gets a sibling module that does the same, so
//! plugins of both versions run side by side (SPEC K8).

use std::collections::BTreeSet;

use switchboard_signing::Capability;
use wasmtime::Store;
use wasmtime::component::{HasSelf, Linker};

use super::state::HostState;
use crate::call::types::{self as rt, Invocation, Outcome};
use crate::capability::{self, CapError};

pub(super) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "switchboard:plugin/feature",
        imports: {
            "switchboard:host/plugins.call": async | trappable,
            "switchboard:host/http-client.send": async | trappable,
            default: trappable,
        },
        exports: { default: async },
    });
}

use bindings::switchboard::host as wit;

/// The API version this adapter serves.
pub const API_VERSION: &str = "0.1.0";

/// A component linked for one grant set, ready to instantiate.
pub type Pre = bindings::FeaturePre<HostState>;

/// Adds the granted (and implemented) `switchboard:host@0.1.0` interfaces
/// to `linker`. Interfaces not granted are simply absent: a component that
/// imports one fails to link.
pub fn add_to_linker(
    linker: &mut Linker<HostState>,
    grants: &BTreeSet<Capability>,
) -> wasmtime::Result<()> {
    wit::types::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    for cap in grants {
        match cap {
            Capability::Kv => {
                wit::kv::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::Log => {
                wit::log::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::Config => {
                wit::config::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::Timers => {
                wit::timers::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::Plugins => {
                wit::plugins::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::Blobs => {
                wit::blobs::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::Crypto => {
                wit::crypto::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::Identity => {
                wit::identity::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::Audit => {
                wit::audit::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::Events => {
                wit::events::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            Capability::HttpClient => {
                wit::http_client::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?
            }
            // Not implemented: never linked (install refuses importers).
            _ => {}
        }
    }
    Ok(())
}

/// Checks the component's exports against the world and wraps it.
pub fn pre(instance_pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Pre> {
    bindings::FeaturePre::new(instance_pre)
}

/// Instantiates `pre` in `store` and runs one invocation through the
/// generated bindings at `$b` (a `bindgen!` module of some plugin API
/// version). `$describe` answers `Invocation::Describe` given the instance
/// (`$feature`), since only newer worlds export `describe`.
macro_rules! invoke_feature {
    ($b:path, $pre:expr, $store:expr, $invocation:expr, |$feature:ident, $st:ident| $describe:expr) => {{
        use $b as b;
        let $st = $store;
        let $feature = $pre
            .instantiate_async(&mut *$st)
            .await
            .map_err(Stage::Instantiate)?;
        let result = match $invocation {
            Invocation::Handle(request) => $feature
                .call_handle(&mut *$st, &request.into())
                .await
                .map(|r| Ok(Outcome::Response(r.into()))),
            Invocation::Init => $feature
                .call_init(&mut *$st)
                .await
                .map(|r| r.map(|()| Outcome::Done)),
            Invocation::Migrate(from) => $feature
                .call_migrate(&mut *$st, &from)
                .await
                .map(|r| r.map(|()| Outcome::Done)),
            Invocation::Event(e) => $feature
                .call_on_event(
                    &mut *$st,
                    &b::Event {
                        source: e.source,
                        kind: e.kind,
                        data: e.data,
                    },
                )
                .await
                .map(|r| r.map(|()| Outcome::Done)),
            Invocation::Timer { id, name, payload } => $feature
                .call_on_timer(&mut *$st, &b::TimerEvent { id, name, payload })
                .await
                .map(|r| r.map(|()| Outcome::Done)),
            Invocation::Describe => $describe,
        };
        result.map_err(Stage::Call)
    }};
}
pub(crate) use invoke_feature;

/// Instantiates and runs one invocation.
pub async fn invoke(
    pre: &Pre,
    store: &mut Store<HostState>,
    invocation: Invocation,
) -> Result<Result<Outcome, String>, Stage> {
    invoke_feature!(bindings, pre, store, invocation, |_feature, _store| {
        // API 0.1.0 has no `describe` export.
        Ok(Ok(Outcome::Description(None)))
    })
}

/// Where a failed invocation failed.
pub enum Stage {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
}

// ---- conversions -------------------------------------------------------

impl From<rt::Request> for wit::types::Request {
    fn from(r: rt::Request) -> Self {
        wit::types::Request {
            method: r.method.into(),
            path: r.path,
            query: r.query,
            headers: r.headers,
            body: r.body,
            principal: r.principal.into(),
            caller_plugin: r.caller_plugin,
            request_id: r.request_id,
        }
    }
}

impl From<wit::types::Response> for rt::Response {
    fn from(r: wit::types::Response) -> Self {
        rt::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<rt::Principal> for wit::types::Principal {
    fn from(p: rt::Principal) -> Self {
        use wit::types::{PrincipalKind as K, Role as R};
        wit::types::Principal {
            tenant: p.tenant,
            user: p.user,
            role: match p.role {
                rt::Role::Operator => R::Operator,
                rt::Role::Partner => R::Partner,
                rt::Role::TenantAdmin => R::TenantAdmin,
                rt::Role::User => R::User,
                rt::Role::Guest => R::Guest,
                rt::Role::Anonymous => R::Anonymous,
                rt::Role::System => R::System,
            },
            kind: match p.kind {
                rt::Kind::Registered => K::Registered,
                rt::Kind::Guest => K::Guest,
                rt::Kind::Pstn => K::Pstn,
                rt::Kind::Service => K::Service,
                rt::Kind::Anonymous => K::Anonymous,
            },
        }
    }
}

impl From<rt::Method> for wit::types::Method {
    fn from(m: rt::Method) -> Self {
        use wit::types::Method as M;
        match m {
            rt::Method::Get => M::Get,
            rt::Method::Head => M::Head,
            rt::Method::Post => M::Post,
            rt::Method::Put => M::Put,
            rt::Method::Patch => M::Patch,
            rt::Method::Delete => M::Delete,
            rt::Method::Options => M::Options,
        }
    }
}

impl From<wit::types::Method> for rt::Method {
    fn from(m: wit::types::Method) -> Self {
        use wit::types::Method as M;
        match m {
            M::Get => rt::Method::Get,
            M::Head => rt::Method::Head,
            M::Post => rt::Method::Post,
            M::Put => rt::Method::Put,
            M::Patch => rt::Method::Patch,
            M::Delete => rt::Method::Delete,
            M::Options => rt::Method::Options,
        }
    }
}

fn wit_error(e: CapError) -> wit::types::Error {
    use wit::types::Error as E;
    match e {
        CapError::InvalidArgument(m) => E::InvalidArgument(m),
        CapError::TooLarge(m) => E::TooLarge(m),
        CapError::Denied(m) => E::Denied(m),
        CapError::NotFound(m) => E::NotFound(m),
        CapError::QuotaExceeded(m) => E::QuotaExceeded(m),
        CapError::Conflict => E::Conflict,
        CapError::Timeout => E::Timeout,
        CapError::Internal(m) => E::Internal(m),
    }
}

type WitResult<T> = wasmtime::Result<Result<T, wit::types::Error>>;

fn wrap<T>(r: Result<T, CapError>) -> WitResult<T> {
    Ok(r.map_err(wit_error))
}

// ---- host interfaces ---------------------------------------------------

impl wit::types::Host for HostState {}

impl wit::kv::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> WitResult<Option<Vec<u8>>> {
        wrap(capability::kv::get(&mut self.call, &key))
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> WitResult<()> {
        wrap(capability::kv::set(&mut self.call, &key, value))
    }

    fn delete(&mut self, key: Vec<u8>) -> WitResult<bool> {
        wrap(capability::kv::delete(&mut self.call, &key))
    }

    fn scan(
        &mut self,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> WitResult<wit::kv::Page> {
        wrap(
            capability::kv::scan(&mut self.call, &prefix, start_after.as_deref(), limit).map(
                |page| wit::kv::Page {
                    entries: page
                        .entries
                        .into_iter()
                        .map(|(key, value)| wit::kv::Entry { key, value })
                        .collect(),
                    next: page.next,
                },
            ),
        )
    }
}

impl wit::log::Host for HostState {
    fn log(&mut self, level: wit::log::Level, message: String) -> wasmtime::Result<()> {
        use capability::log::Level as L;
        use wit::log::Level as W;
        let level = match level {
            W::Trace => L::Trace,
            W::Debug => L::Debug,
            W::Info => L::Info,
            W::Warn => L::Warn,
            W::Error => L::Error,
        };
        capability::log::log(&mut self.call, level, &message);
        Ok(())
    }
}

impl wit::config::Host for HostState {
    fn get(&mut self, key: String) -> WitResult<Option<String>> {
        wrap(capability::config::get(&mut self.call, &key))
    }

    fn all(&mut self) -> wasmtime::Result<String> {
        Ok(capability::config::all(&self.call))
    }
}

impl wit::timers::Host for HostState {
    fn schedule(&mut self, delay_ms: u64, name: String, payload: Vec<u8>) -> WitResult<String> {
        wrap(capability::timers::schedule(
            &mut self.call,
            &self.caps.timers,
            delay_ms,
            &name,
            &payload,
        ))
    }

    fn cancel(&mut self, id: String) -> WitResult<bool> {
        wrap(capability::timers::cancel(
            &mut self.call,
            &self.caps.timers,
            &id,
        ))
    }
}

impl wit::plugins::Host for HostState {
    async fn call(
        &mut self,
        plugin: String,
        request: wit::types::Request,
    ) -> WitResult<wit::types::Response> {
        let ctx = &mut self.call;
        let callee = match capability::plugins::resolve(ctx, &plugin) {
            Ok(c) => c,
            Err(e) => return wrap(Err(e)),
        };
        let request = rt::Request {
            method: request.method.into(),
            path: request.path,
            query: request.query,
            // Host headers (client address, guest scope) are the top-level
            // request's, never what the calling plugin wrote.
            headers: request
                .headers
                .into_iter()
                .filter(|(k, _)| !crate::call::types::is_host_header(k))
                .chain(ctx.host_headers.iter().cloned())
                .collect(),
            body: request.body,
            // The callee sees who really called, never what the caller wrote.
            principal: ctx.principal.clone(),
            caller_plugin: Some(ctx.plugin_name().to_string()),
            request_id: ctx.request_id.clone(),
        };
        if let Err(e) = ctx.charge(request.size_bytes()) {
            return wrap(Err(e));
        }
        let result = capability::plugins::call(ctx, callee, request).await;
        wrap(result.map(|r| wit::types::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }))
    }
}

impl wit::blobs::Host for HostState {
    fn create(&mut self, owner: Option<String>, retention_class: String) -> WitResult<String> {
        wrap(capability::blobs::create(
            &mut self.call,
            owner.as_deref(),
            &retention_class,
        ))
    }

    fn append(&mut self, id: String, chunk: Vec<u8>) -> WitResult<u64> {
        wrap(capability::blobs::append(&mut self.call, &id, &chunk))
    }

    fn read(&mut self, id: String, offset: u64, len: u32) -> WitResult<Vec<u8>> {
        wrap(capability::blobs::read(&mut self.call, &id, offset, len))
    }

    fn size(&mut self, id: String) -> WitResult<u64> {
        wrap(capability::blobs::size(&mut self.call, &id))
    }

    fn delete(&mut self, id: String) -> WitResult<bool> {
        wrap(capability::blobs::delete(&mut self.call, &id))
    }
}

impl wit::identity::Host for HostState {
    fn lookup_user(&mut self, id: String) -> WitResult<Option<wit::identity::UserInfo>> {
        wrap(
            capability::identity::lookup_user(&mut self.call, &id).map(|found| {
                found.map(|u| wit::identity::UserInfo {
                    id: u.id,
                    display_name: u.display_name,
                    email: u.email,
                    active: u.active,
                })
            }),
        )
    }

    fn create_guest_session(
        &mut self,
        display_name: String,
        scope: String,
        ttl_ms: u64,
    ) -> WitResult<String> {
        wrap(capability::identity::create_guest_session(
            &mut self.call,
            &self.caps.audit,
            &display_name,
            &scope,
            ttl_ms,
        ))
    }
}

impl wit::audit::Host for HostState {
    fn append(
        &mut self,
        action: String,
        target: String,
        outcome: String,
        details: String,
    ) -> WitResult<()> {
        wrap(capability::audit::append(
            &mut self.call,
            &self.caps.audit,
            &action,
            &target,
            &outcome,
            &details,
        ))
    }
}

impl wit::events::Host for HostState {
    fn publish(
        &mut self,
        audience: wit::events::Audience,
        kind: String,
        data: Vec<u8>,
    ) -> WitResult<()> {
        let audience = match audience {
            wit::events::Audience::Users(u) => crate::events::Audience::Users(u),
            wit::events::Audience::Group(g) => crate::events::Audience::Group(g),
        };
        wrap(capability::events::publish(
            &mut self.call,
            &self.caps.events,
            audience,
            &kind,
            data,
        ))
    }

    fn join_group(&mut self, group: String, user: String) -> WitResult<()> {
        wrap(capability::events::join_group(
            &mut self.call,
            &group,
            &user,
        ))
    }

    fn leave_group(&mut self, group: String, user: String) -> WitResult<()> {
        wrap(capability::events::leave_group(
            &mut self.call,
            &group,
            &user,
        ))
    }
}

impl wit::http_client::Host for HostState {
    async fn send(
        &mut self,
        request: wit::http_client::Outgoing,
    ) -> WitResult<wit::http_client::Incoming> {
        let method = rt::Method::from(request.method).as_str();
        let outgoing = capability::http_client::Outgoing {
            method,
            url: request.url,
            headers: request.headers,
            body: request.body,
            timeout_ms: request.timeout_ms,
        };
        wrap(
            capability::http_client::send(&mut self.call, &self.caps.http_client, outgoing)
                .await
                .map(|r| wit::http_client::Incoming {
                    status: r.status,
                    headers: r.headers,
                    body: r.body,
                }),
        )
    }
}

impl wit::crypto::Host for HostState {
    fn random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        // The interface has no error case: a budget or entropy failure is
        // fatal to the call.
        capability::crypto::random_bytes(&mut self.call, len).map_err(wasmtime::Error::msg)
    }

    fn sha256(&mut self, data: Vec<u8>) -> wasmtime::Result<Vec<u8>> {
        capability::crypto::sha256(&mut self.call, &data).map_err(wasmtime::Error::msg)
    }

    fn hmac_sha256(&mut self, key_name: String, data: Vec<u8>) -> WitResult<Vec<u8>> {
        wrap(capability::crypto::hmac_sha256(
            &mut self.call,
            &key_name,
            &data,
        ))
    }

    fn sign(&mut self, key_name: String, data: Vec<u8>) -> WitResult<Vec<u8>> {
        wrap(capability::crypto::sign(&mut self.call, &key_name, &data))
    }

    fn verify(&mut self, key_name: String, data: Vec<u8>, signature: Vec<u8>) -> WitResult<bool> {
        wrap(capability::crypto::verify(
            &mut self.call,
            &key_name,
            &data,
            &signature,
        ))
    }

    fn public_key(&mut self, key_name: String) -> WitResult<Vec<u8>> {
        wrap(capability::crypto::public_key(&mut self.call, &key_name))
    }

    fn seal(&mut self, key_name: String, plaintext: Vec<u8>, aad: Vec<u8>) -> WitResult<Vec<u8>> {
        wrap(capability::crypto::seal(
            &mut self.call,
            &key_name,
            &plaintext,
            &aad,
        ))
    }

    fn open(&mut self, key_name: String, sealed: Vec<u8>, aad: Vec<u8>) -> WitResult<Vec<u8>> {
        wrap(capability::crypto::open(
            &mut self.call,
            &key_name,
            &sealed,
            &aad,
        ))
    }
}
