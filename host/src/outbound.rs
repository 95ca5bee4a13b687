//! Outbound HTTP(S) for host services (single sign-on talks to a tenant's
//! identity provider) and for plugins (the `http-client` capability). One
//! request per connection, bounded in time and size. The policy sits here,
//! in front of the client:
//! - `https://` to hosts whose every address is public, verified against
//!   Mozilla's roots (plus an operator-supplied CA file), TLS 1.2/1.3;
//! - loopback (`http://` or `https://`) only when the operator allows it
//!   (`[identity] allow_loopback_idp`, `[http_client] allow_loopback`);
//! - private and link-local addresses only when the operator allows them
//!   for plugins (`[http_client] allow_private`), never for SSO; cloud
//!   metadata (169.254.169.254), unspecified, broadcast and multicast
//!   addresses never. The client connects to the very address it checked,
//!   so DNS cannot swap in another between check and connect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

/// Largest response body read.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// Time allowed for one request, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutboundError(pub String);

/// Where a URL points.
#[derive(Debug, Clone)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

/// Which non-public targets an operator allows.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub allow_loopback: bool,
    pub allow_private: bool,
    /// The setting to name when a loopback target is refused.
    pub loopback_setting: &'static str,
}

/// The outbound client and its policy.
pub struct Outbound {
    tls: tokio_rustls::TlsConnector,
    policy: Policy,
}

/// A response with its headers.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a request failed, by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Denied(String),
    #[error("no answer in time")]
    Timeout,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Failed(String),
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`) and 6to4 (`2002:aabb:ccdd::`). The IPv4 rules
/// apply to those, so no encoding smuggles a private address through.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        Some(v4)
    } else if (s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1))
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        Some(tail())
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    }
}

/// Addresses that are never reachable, whatever the operator allows:
/// cloud metadata endpoints, unspecified, broadcast, multicast.
fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.octets() == [169, 254, 169, 254]
                || v4.octets() == [100, 100, 100, 200]
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_multicast()
                || v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]
                || embedded_v4(v6).is_some_and(|v4| is_forbidden(IpAddr::V4(v4)))
        }
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 0.0.0.0/8 "this network".
                || o[0] == 0
                // 100.64.0.0/10, carrier-grade NAT.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // 192.0.0.0/24 protocol assignments.
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                // 198.18.0.0/15 benchmarking.
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                // 240.0.0.0/4 reserved.
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if let Some(v4) = embedded_v4(v6) {
                return is_public(IpAddr::V4(v4));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link local
                || (first & 0xffc0) == 0xfec0 // site local (deprecated)
                // 64:ff9b:1::/48, local-use NAT64.
                || v6.segments()[..3] == [0x64, 0xff9b, 1])
        }
    }
}

impl Outbound {
    /// A client trusting Mozilla's roots and the certificates in
    /// `extra_ca` (PEM), allowing loopback targets when `allow_loopback`.
    pub fn new(extra_ca: Option<&Path>, allow_loopback: bool) -> Result<Outbound, OutboundError> {
        Outbound::with_policy(
            extra_ca,
            Policy {
                allow_loopback,
                allow_private: false,
                loopback_setting: "[identity] allow_loopback_idp",
            },
        )
    }

    /// A client with an explicit policy.
    pub fn with_policy(extra_ca: Option<&Path>, policy: Policy) -> Result<Outbound, OutboundError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                OutboundError(format!("cannot read the CA file {}: {e}", path.display()))
            })?;
            let mut n = 0;
            for cert in certs {
                let cert = cert.map_err(|e| OutboundError(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| OutboundError(format!("{}: {e}", path.display())))?;
                n += 1;
            }
            if n == 0 {
                return Err(OutboundError(format!(
                    "{} holds no certificate",
                    path.display()
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| OutboundError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Outbound {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            policy,
        })
    }

    fn parse(&self, url: &str) -> Result<Target, OutboundError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| OutboundError(format!("{url:?} is not an absolute URL")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(OutboundError(format!("{url:?}: use an https:// URL"))),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| OutboundError(format!("{url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into());
        Ok(Target {
            tls,
            host,
            port,
            path,
        })
    }

    /// Checks `url` against the policy without connecting (host names are
    /// checked again, after resolution, by `send`).
    pub fn check(&self, url: &str) -> Result<(), OutboundError> {
        let t = self.parse(url)?;
        let literal: Option<IpAddr> = if t.host == "localhost" {
            Some(IpAddr::from([127, 0, 0, 1]))
        } else {
            t.host.parse().ok()
        };
        if let Some(ip) = literal {
            self.allowed(ip, url)?;
        }
        if !t.tls && literal.is_none_or(|ip| !(ip.is_loopback() && self.policy.allow_loopback)) {
            return Err(OutboundError(format!(
                "{url:?}: use https:// (plain http only to loopback)"
            )));
        }
        Ok(())
    }

    fn allowed(&self, ip: IpAddr, url: &str) -> Result<(), OutboundError> {
        if is_forbidden(ip) {
            Err(OutboundError(format!(
                "{url:?} resolves to a non-public address ({ip}) that is never reachable from this server"
            )))
        } else if is_public(ip)
            || (self.policy.allow_loopback && ip.is_loopback())
            || (self.policy.allow_private && !ip.is_loopback())
        {
            Ok(())
        } else if ip.is_loopback() {
            Err(OutboundError(format!(
                "{url:?} is on this machine's loopback interface, which the operator has not allowed ({})",
                self.policy.loopback_setting
            )))
        } else {
            Err(OutboundError(format!(
                "{url:?} resolves to a non-public address ({ip})"
            )))
        }
    }

    /// Sends one request (for host services: 10 s, 1 MiB answers).
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Reply, OutboundError> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.request(method, url, &headers, body, TIMEOUT, MAX_RESPONSE_BYTES)
            .await
            .map(|r| Reply {
                status: r.status,
                body: r.body,
            })
            .map_err(|e| match e {
                RequestError::Timeout => {
                    OutboundError(format!("{url}: no answer within {} s", TIMEOUT.as_secs()))
                }
                other => OutboundError(other.to_string()),
            })
    }

    /// Sends one request within `timeout`, reading at most `max_body`
    /// bytes of the answer.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response, RequestError> {
        self.check(url).map_err(|e| RequestError::Denied(e.0))?;
        let t = self.parse(url).map_err(|e| RequestError::Denied(e.0))?;
        let work = async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((t.host.as_str(), t.port))
                .await
                .map_err(|e| RequestError::Failed(format!("cannot resolve {}: {e}", t.host)))?
                .collect();
            // Every address must pass, so DNS cannot smuggle an internal one.
            for a in &addrs {
                self.allowed(a.ip(), url)
                    .map_err(|e| RequestError::Denied(e.0))?;
            }
            let addr = *addrs
                .first()
                .ok_or_else(|| RequestError::Failed(format!("{} has no address", t.host)))?;
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| RequestError::Failed(format!("cannot connect to {addr}: {e}")))?;
            if t.tls {
                let name = ServerName::try_from(t.host.clone()).map_err(|_| {
                    RequestError::Failed(format!("{:?} is not a valid server name", t.host))
                })?;
                let tls = self
                    .tls
                    .connect(name, stream)
                    .await
                    .map_err(|e| RequestError::Failed(format!("TLS with {}: {e}", t.host)))?;
                exchange(tls, &t, method, headers, body, max_body).await
            } else {
                exchange(stream, &t, method, headers, body, max_body).await
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| RequestError::Timeout)?
    }
}

async fn exchange<S>(
    stream: S,
    t: &Target,
    method: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    max_body: usize,
) -> Result<Response, RequestError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| RequestError::Failed(format!("HTTP handshake with {} failed: {e}", t.host)))?;
    tokio::spawn(conn);
    let host = if (t.tls && t.port == 443) || (!t.tls && t.port == 80) {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(t.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "switchboard");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| RequestError::Failed(format!("bad request: {e}")))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| RequestError::Failed(format!("request to {} failed: {e}", t.host)))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = match Limited::new(resp.into_body(), max_body).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(RequestError::TooLarge(format!(
                "the answer from {} exceeds {max_body} bytes",
                t.host
            )));
        }
        Err(e) => {
            return Err(RequestError::Failed(format!(
                "reading the response from {} failed: {e}",
                t.host
            )));
        }
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_public_https_and_opt_in_loopback_only() {
        let strict = Outbound::new(None, false).unwrap();
        assert!(strict.check("https://idp.example.com/x").is_ok());
        assert!(strict.check("https://8.8.8.8/x").is_ok());
        for bad in [
            "http://idp.example.com/",
            "https://127.0.0.1/",
            "https://localhost/",
            "https://10.0.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://100.64.0.1/",
            "ftp://idp.example.com/",
            "nonsense",
        ] {
            assert!(strict.check(bad).is_err(), "{bad}");
        }
        let lenient = Outbound::new(None, true).unwrap();
        assert!(lenient.check("http://127.0.0.1:8080/x").is_ok());
        assert!(lenient.check("https://localhost:8443/x").is_ok());
        assert!(lenient.check("http://10.0.0.1/").is_err());
        assert!(lenient.check("http://idp.example.com/").is_err());
    }

    #[test]
    fn private_targets_need_their_own_switch_and_metadata_never_passes() {
        let intranet = Outbound::with_policy(
            None,
            Policy {
                allow_loopback: false,
                allow_private: true,
                loopback_setting: "x",
            },
        )
        .unwrap();
        assert!(intranet.check("https://10.0.0.1/hook").is_ok());
        assert!(intranet.check("https://127.0.0.1/").is_err());
        assert!(intranet.check("https://169.254.169.254/latest").is_err());
        assert!(intranet.check("https://[::ffff:169.254.169.254]/").is_err());
        assert!(intranet.check("https://0.0.0.0/").is_err());
        // Encodings of private and metadata addresses inside IPv6.
        let strict = Outbound::new(None, false).unwrap();
        for bad in [
            "https://[64:ff9b::a00:5]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:a00:1::1]/",
            "https://[::10.0.0.1]/",
            "https://[fec0::1]/",
            "https://[64:ff9b:1::1]/",
            "https://0.1.2.3/",
            "https://198.18.0.1/",
            "https://240.0.0.1/",
            "https://192.0.0.8/",
        ] {
            assert!(strict.check(bad).is_err(), "{bad}");
        }
        assert!(
            strict.check("https://[64:ff9b::808:808]/").is_ok(),
            "NAT64 of a public address"
        );
        assert!(strict.check("https://[2606:4700::1111]/").is_ok());
        assert!(
            intranet.check("http://10.0.0.1/").is_err(),
            "plain http stays loopback-only"
        );
    }

    #[test]
    fn a_bad_ca_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let err = Outbound::new(Some(&path), false).err().unwrap();
        assert!(err.0.contains("no certificate"), "{err}");
        assert!(Outbound::new(Some(&dir.path().join("missing.pem")), false).is_err());
    }
}
