//! `types`: the interface every plugin world imports (requests, responses,
//! principals, errors). Nothing to serve; what lives here is the conversion
//! between its generated types and the host's own (`call::types`), used by
//! the plugin-world adapters and the `plugins` capability.

use wasmtime::component::Linker;

use super::{CapHost, View, ViewOf, wit};
use crate::call::types;

/// Links the `types` interface (no functions, only types).
pub(crate) fn add_to_linker<T: CapHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::types::add_to_linker::<T, ViewOf<()>>(linker, |t| View {
        call: t.parts().0,
        state: &(),
    })
}

impl wit::types::Host for View<'_, ()> {}

impl From<types::Request> for wit::types::Request {
    fn from(r: types::Request) -> Self {
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

impl From<wit::types::Response> for types::Response {
    fn from(r: wit::types::Response) -> Self {
        types::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        }
    }
}

impl From<types::Principal> for wit::types::Principal {
    fn from(p: types::Principal) -> Self {
        use wit::types::{PrincipalKind as K, Role as R};
        wit::types::Principal {
            tenant: p.tenant,
            user: p.user,
            role: match p.role {
                types::Role::Operator => R::Operator,
                types::Role::Partner => R::Partner,
                types::Role::TenantAdmin => R::TenantAdmin,
                types::Role::User => R::User,
                types::Role::Guest => R::Guest,
                types::Role::Anonymous => R::Anonymous,
                types::Role::System => R::System,
            },
            kind: match p.kind {
                types::Kind::Registered => K::Registered,
                types::Kind::Guest => K::Guest,
                types::Kind::Pstn => K::Pstn,
                types::Kind::Service => K::Service,
                types::Kind::Anonymous => K::Anonymous,
            },
        }
    }
}

impl From<types::Method> for wit::types::Method {
    fn from(m: types::Method) -> Self {
        use wit::types::Method as M;
        match m {
            types::Method::Get => M::Get,
            types::Method::Head => M::Head,
            types::Method::Post => M::Post,
            types::Method::Put => M::Put,
            types::Method::Patch => M::Patch,
            types::Method::Delete => M::Delete,
            types::Method::Options => M::Options,
        }
    }
}

impl From<wit::types::Method> for types::Method {
    fn from(m: wit::types::Method) -> Self {
        use wit::types::Method as M;
        match m {
            M::Get => types::Method::Get,
            M::Head => types::Method::Head,
            M::Post => types::Method::Post,
            M::Put => types::Method::Put,
            M::Patch => types::Method::Patch,
            M::Delete => types::Method::Delete,
            M::Options => types::Method::Options,
        }
    }
}
