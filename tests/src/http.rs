//! A minimal HTTP/1.1 client over TLS and an in-process server on a
//! loopback port, so black-box tests talk to the real gateway over real
//! sockets and real TLS. One test certificate authority per test process
//! signs the servers' certificate (`localhost`, 127.0.0.1); clients trust
//! it, and so can the server's own outbound client (`test_pki().ca_file`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use switchboard::Runtime;
use switchboard::gateway::GatewayConfig;
use switchboard::gateway::tls::TlsIdentity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test PKI: a CA and a server certificate it signed.
pub struct TestPki {
    /// The CA certificate (PEM), for clients and `idp_ca_file`.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

/// The process-wide test PKI, generated on first use.
pub fn test_pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("switchboard-test-pki")
            .tempdir()
            .unwrap()
            .keep();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Switchboard test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let pki = TestPki {
            ca_file: dir.join("ca.pem"),
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            client: Arc::new(client_config(&[ca.der().to_vec()])),
        };
        std::fs::write(&pki.ca_file, ca.pem()).unwrap();
        std::fs::write(&pki.cert_file, leaf.pem()).unwrap();
        std::fs::write(&pki.key_file, leaf_key.serialize_pem()).unwrap();
        pki
    })
}

/// A TLS client configuration trusting `roots` (DER), offering HTTP/1.1.
pub fn client_config(roots: &[Vec<u8>]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(r.clone()))
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// A TLS connection to a test server (trusting the test CA).
pub async fn tls_connect(
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(test_pki().client.clone());
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    connector.connect(name, tcp).await.unwrap()
}

/// The TLS handshake on a connected `tcp` to a test server.
pub async fn tls_handshake(
    addr: SocketAddr,
    tcp: tokio::net::TcpStream,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    try_tls_handshake(addr, tcp).await.expect("a TLS handshake")
}

/// [`tls_handshake`], `None` when the server refuses or drops it.
pub async fn try_tls_handshake(
    addr: SocketAddr,
    tcp: tokio::net::TcpStream,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(test_pki().client.clone());
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    connector.connect(name, tcp).await.ok()
}

/// A plain HTTP response body, as test services answer.
pub type Body = http_body_util::Full<hyper::body::Bytes>;

/// Serves `handler` over TLS (the test certificate; HTTP/1.1, or h2 by
/// ALPN) on a loopback port: a stand-in for services a server talks to.
pub async fn serve_tls<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let pki = test_pki();
    let tls = TlsIdentity::load(&pki.cert_file, &pki.key_file).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}

/// The gateway settings tests run with: the defaults, but without the
/// per-address limits (every test client is 127.0.0.1).
pub fn test_gateway() -> GatewayConfig {
    GatewayConfig {
        per_address_rps: 1_000_000,
        per_address_burst: 1_000_000,
        max_connections_per_address: 100_000,
        ..GatewayConfig::default()
    }
}

/// A running server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    /// Serves `runtime` on 127.0.0.1 (a free port) with the test gateway
    /// settings.
    pub async fn start(runtime: Runtime) -> Server {
        Server::start_with(runtime, test_gateway()).await
    }

    /// Serves `runtime` with `config`.
    pub async fn start_with(runtime: Runtime, config: GatewayConfig) -> Server {
        let pki = test_pki();
        Server::start_tls(runtime, config, &pki.cert_file, &pki.key_file).await
    }

    /// Serves `runtime` with `config` and the certificate in `cert_file`
    /// (e.g. another process's `test_pki`).
    pub async fn start_tls(
        runtime: Runtime,
        config: GatewayConfig,
        cert_file: &std::path::Path,
        key_file: &std::path::Path,
    ) -> Server {
        let tls = TlsIdentity::load(cert_file, key_file).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(switchboard::server::run(
            runtime,
            listener,
            tls,
            config,
            async move {
                let _ = rx.await;
            },
        ));
        Server {
            addr,
            stop: Some(tx),
        }
    }

    /// `https://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// A request to this server.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(t) = token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        request(self.addr, method, path, &headers, &body).await
    }

    /// A request with a raw body and extra headers, as `token`.
    pub async fn raw(
        &self,
        token: &str,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
        headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        request(self.addr, method, path, &headers, body).await
    }

    /// A JSON request to `plugin`'s API in `tenant`
    /// (`/api/v1/t/{tenant}/p/{plugin}{path}`) as `token`.
    pub async fn plugin_call(
        &self,
        tenant: &str,
        plugin: &str,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let path = format!("/api/v1/t/{tenant}/p/{plugin}{path}");
        self.call(method, &path, Some(token), body).await
    }

    /// Stops accepting and drains (what SIGTERM does).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The error code of an error response.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Reply {
    let mut stream = tls_connect(addr).await;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer and close before it reads a body it refuses
    // (e.g. an upload by someone who may not upload): read its answer.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        stream.read_to_end(&mut raw),
    )
    .await
    .expect("response within 60 s")
    // A peer closing without close_notify after a full response is fine.
    .or_else(|e| if raw.is_empty() { Err(e) } else { Ok(0) })
    .unwrap();
    parse_response(&raw)
}

/// Parses an HTTP/1.1 response (content-length or chunked).
pub fn parse_response(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 4 + n..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body,
    }
}
