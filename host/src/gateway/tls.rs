//! The server's TLS identity (SPEC D1): TLS 1.2 and 1.3 only, HTTP/2 and
//! HTTP/1.1 offered by ALPN, a certificate and key from the configuration
//! or, on a first run without one, a self-signed certificate generated into
//! `{data}/tls/` whose SHA-256 fingerprint the operator can pin.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

/// A loaded certificate chain and key, ready to accept connections.
#[derive(Clone)]
pub struct TlsIdentity {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate, colon-separated upper-case hex.
    pub fingerprint: String,
    /// Where the certificate came from (for the start-up banner).
    pub cert_file: PathBuf,
    /// Whether this run generated it.
    pub generated: bool,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint)
            .field("cert_file", &self.cert_file)
            .finish()
    }
}

/// The colon-separated SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A TLS client configuration that accepts exactly the server certificate
/// with SHA-256 `fingerprint` (as `serve` prints it): how an operator's
/// script talks to a server with a self-signed certificate without
/// turning verification off.
pub fn pinned_client(fingerprint: &str) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            fingerprint: fingerprint.to_ascii_uppercase(),
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl TlsIdentity {
    /// Loads `cert_file` (PEM chain, leaf first) and `key_file` (PEM
    /// PKCS#8, PKCS#1 or SEC1 key).
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<TlsIdentity> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
            .map_err(|e| anyhow::anyhow!("cannot read certificate {}: {e}", cert_file.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("certificate {}: {e}", cert_file.display()))?;
        let leaf = certs.first().ok_or_else(|| {
            anyhow::anyhow!(
                "certificate file {} holds no certificate",
                cert_file.display()
            )
        })?;
        let fingerprint = fingerprint(leaf);
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| anyhow::anyhow!("cannot read private key {}: {e}", key_file.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                anyhow::anyhow!(
                    "certificate {} and key {} do not form a usable pair: {e}",
                    cert_file.display(),
                    key_file.display()
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsIdentity {
            config: Arc::new(config),
            fingerprint,
            cert_file: cert_file.to_path_buf(),
            generated: false,
        })
    }

    /// Loads `{dir}/cert.pem` and `{dir}/key.pem`, generating a self-signed
    /// pair for `names` (DNS names or IP addresses) when they are missing.
    pub fn load_or_generate(dir: &Path, names: &[String]) -> anyhow::Result<TlsIdentity> {
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        let mut generated = false;
        if !cert_file.exists() && !key_file.exists() {
            generate(dir, names)?;
            generated = true;
        }
        let mut id = TlsIdentity::load(&cert_file, &key_file)?;
        id.generated = generated;
        Ok(id)
    }
}

/// Writes a self-signed certificate for `names` (plus `localhost`,
/// 127.0.0.1 and ::1) into `dir`; the key file is readable by the owner
/// only.
fn generate(dir: &Path, names: &[String]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for n in names {
        if !n.is_empty() && !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Switchboard (self-signed)");
    // From yesterday (clock skew) for 397 days: browsers cap leaf
    // validity at 398.
    let day = 86_400_000u64;
    let today = crate::support::clock::now_ms();
    let (y, m, d) = ymd(today - day);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = ymd(today + 397 * day);
    params.not_after = rcgen::date_time_ymd(y, m, d);
    let cert = params.self_signed(&key)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::support::fsutil::write_secret(&dir.join("key.pem"), key.serialize_pem().as_bytes())?;
    crate::support::fsutil::write_secret(&dir.join("cert.pem"), cert.pem().as_bytes())?;
    Ok(())
}

/// The UTC calendar day (year, month, day) of `time_ms`.
fn ymd(time_ms: u64) -> (i32, u8, u8) {
    let stamp = crate::audit::rfc3339(time_ms);
    let num = |r: std::ops::Range<usize>| stamp[r].parse::<i32>().unwrap_or(1);
    (num(0..4), num(5..7) as u8, num(8..10) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_run_generates_a_certificate_and_later_runs_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = TlsIdentity::load_or_generate(dir.path(), &["uc.example".into()]).unwrap();
        assert!(a.generated);
        assert_eq!(a.fingerprint.len(), 32 * 3 - 1);
        let b = TlsIdentity::load_or_generate(dir.path(), &[]).unwrap();
        assert!(!b.generated);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(
            b.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key is private");
        }
    }

    #[test]
    fn broken_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let err = TlsIdentity::load(&cert, &key).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let err = TlsIdentity::load(&dir.path().join("missing.pem"), &key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read certificate"), "{err}");
        // A certificate with another key's private half.
        TlsIdentity::load_or_generate(dir.path(), &[]).unwrap();
        let other = tempfile::tempdir().unwrap();
        TlsIdentity::load_or_generate(other.path(), &[]).unwrap();
        let err = TlsIdentity::load(&dir.path().join("cert.pem"), &other.path().join("key.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("usable pair"), "{err}");
    }
}
