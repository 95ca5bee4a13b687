//! First-party plugins bundled into the binary (SPEC K1; issue 3 item 7).
//! `build.rs` built and signed them with a key generated for this build;
//! only its public half is here. `serve` trusts that key — unless the
//! operator set `trust_bundled = false` or revoked it — and installs the
//! packages through the same verification as any other.

use ed25519_dalek::VerifyingKey;

use crate::runtime::{AdminError, PluginInfo, Runtime};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/bundle.rs"));
}

pub use generated::{BUNDLE_KEY, PACKAGES};

/// The bundle signer's public key.
pub fn key() -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&BUNDLE_KEY).ok()
}

/// Trusts this build's bundle key (when `trust`) and installs every
/// bundled package. Returns each package's outcome; failures are also
/// logged, and never stop the server.
pub async fn install(
    rt: &Runtime,
    trust: bool,
) -> Vec<(&'static str, Result<PluginInfo, AdminError>)> {
    if trust {
        match key() {
            Some(k) => {
                if let Err(e) = rt.trust_add(&k, "first-party bundle").await {
                    tracing::warn!(code = e.code(), error = %e, "bundle key not trusted; bundled plugins stay uninstalled");
                }
            }
            None => tracing::error!("the bundle key compiled into this binary is invalid"),
        }
    }
    let mut out = Vec::new();
    for (name, package) in PACKAGES {
        let result = rt.install_package(package).await;
        match &result {
            Ok(info) => {
                tracing::info!(plugin = name, version = %info.version, "bundled plugin available")
            }
            // A newer build of the same version was installed earlier.
            Err(AdminError::AlreadyInstalled { .. }) => {}
            Err(e) => {
                tracing::warn!(plugin = name, code = e.code(), error = %e, "bundled plugin not installed")
            }
        }
        out.push((*name, result));
    }
    out
}

#[cfg(test)]
mod tests {
    use switchboard_signing::package::Trust;
    use switchboard_signing::{KeyId, Package};

    use super::*;

    #[test]
    fn bundled_packages_are_signed_by_the_bundle_key() {
        let key = key().unwrap();
        assert!(!PACKAGES.is_empty());
        for (name, bytes) in PACKAGES {
            let p = Package::parse(bytes).unwrap();
            assert_eq!(p.manifest().name, *name);
            let id = p
                .verify(|id| {
                    if *id == KeyId::of(&key) {
                        Trust::Trusted(key)
                    } else {
                        Trust::Unknown
                    }
                })
                .unwrap();
            assert_eq!(id, KeyId::of(&key));
        }
    }
}
