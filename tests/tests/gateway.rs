//! The network gateway through real sockets and real TLS: protocol
//! versions and ALPN, routing to plugins with sessions and public routes,
//! header hygiene, limits (bodies, heads, slow clients, rates), malformed
//! HTTP, health, metrics, status, the HTTPS redirect and graceful drain.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::gateway::GatewayConfig;
use switchboard::harness::Harness;
use switchboard::tenant::Limits;
use switchboard_tests::accounts::{activate, create_user};
use switchboard_tests::http::{Server, request, test_gateway, test_pki, tls_connect};
use switchboard_tests::{component, manifest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server with tenants `acme` and `globex` running `relay`, and a
/// signed-in user in each: (harness, server, acme token, globex token).
async fn setup(config: GatewayConfig, acme_limits: Limits) -> (Harness, Server, String, String) {
    let h = Harness::new().unwrap();
    h.install(&manifest("relay"), &component("relay"))
        .await
        .unwrap();
    h.tenant_with_limits("acme", acme_limits).await.unwrap();
    h.tenant("globex").await.unwrap();
    for t in ["acme", "globex"] {
        h.enable(t, "relay").await.unwrap();
    }
    let s = Server::start_with(h.runtime().clone(), config).await;
    let (_, w) = create_user(&h, "acme", "alice", "user").await;
    let alice = activate(&s, Some("acme"), "alice", &w).await;
    let (_, w) = create_user(&h, "globex", "gina", "user").await;
    let gina = activate(&s, Some("globex"), "gina", &w).await;
    (h, s, alice, gina)
}

async fn default_setup() -> (Harness, Server, String, String) {
    setup(test_gateway(), Limits::default()).await
}

fn client_for(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&test_pki().ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    c
}

use rustls::pki_types::pem::PemObject as _;

/// A TLS 1.1 ClientHello (no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    // Suites rustls would take with TLS 1.2: only the version is wrong.
    body.extend_from_slice(&[0x00, 0x06, 0xc0, 0x2b, 0xc0, 0x2f, 0x13, 0x01]);
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

#[tokio::test]
async fn d1_tls_1_1_is_refused_and_1_2_and_1_3_are_served_with_h2_by_alpn() {
    let (_h, s, _, _) = default_setup().await;
    // TLS 1.1: no ServerHello, an alert (or a closed connection).
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        n == 0 || answer[0] == 0x15,
        "TLS 1.1 got {:?}",
        &answer[..n]
    );
    if n >= 7 {
        // protocol_version, or handshake_failure from older rustls paths.
        assert!(
            [70, 40].contains(&answer[6]),
            "fatal alert, got {}",
            answer[6]
        );
    }
    // TLS 1.2 and 1.3 each work on their own.
    for (version, name) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(client_for(&[version], &[b"http/1.1"])));
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let mut tls = connector
            .connect(
                rustls::pki_types::ServerName::IpAddress(s.addr.ip().into()),
                tcp,
            )
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(name));
        tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        let reply = switchboard_tests::http::parse_response(&raw);
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .header("strict-transport-security")
                .unwrap()
                .starts_with("max-age="),
            "HSTS on every answer"
        );
    }
    // HTTP/2 by ALPN.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_for(
        &[&rustls::version::TLS13],
        &[b"h2"],
    )));
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::IpAddress(s.addr.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("https://{}/healthz", s.addr))
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    // Plain HTTP on the TLS port gets nothing served.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw)).await;
    assert!(!String::from_utf8_lossy(&raw).contains("200 OK"), "{raw:?}");
}

#[tokio::test]
async fn n1_plugin_routes_carry_the_session_principal_and_refuse_everyone_else() {
    let (h, s, alice, gina) = default_setup().await;
    let r = s
        .call("GET", "/api/v1/t/acme/p/relay/hello", Some(&alice), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let who = r.json();
    assert_eq!(who["tenant"], "acme");
    assert_eq!(who["role"], "Role::User");
    assert_eq!(who["kind"], "PrincipalKind::Registered");
    assert!(r.header("x-request-id").is_some());
    // Public routes need no session and see an anonymous principal.
    let r = s
        .call("GET", "/api/v1/t/acme/p/relay/public/hello", None, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["role"], "Role::Anonymous");
    assert_eq!(r.json()["user"], Value::Null);
    // A public GET does not make the same path public for POST.
    let r = s
        .call("POST", "/api/v1/t/acme/p/relay/public/hello", None, None)
        .await;
    assert_eq!((r.status, r.code().as_str()), (401, "unauthenticated"));
    // Refusals, one error shape each.
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "GET",
            "/api/v1/t/acme/p/relay/hello",
            None,
            401,
            "unauthenticated",
        ),
        (
            "GET",
            "/api/v1/t/acme/p/relay/hello",
            Some("sb1.acme.forged"),
            401,
            "unauthenticated",
        ),
        (
            "GET",
            "/api/v1/t/acme/p/relay/hello",
            Some(&gina),
            403,
            "wrong_tenant",
        ),
        (
            "GET",
            "/api/v1/t/globex/p/relay/hello",
            Some(&alice),
            403,
            "wrong_tenant",
        ),
        (
            "GET",
            "/api/v1/t/nosuch/p/relay/hello",
            Some(&alice),
            404,
            "tenant_not_found",
        ),
        (
            "GET",
            "/api/v1/t/acme/p/nosuch/hello",
            Some(&alice),
            404,
            "plugin_not_enabled",
        ),
        (
            "GET",
            "/api/v1/t/acme/x/relay/hello",
            Some(&alice),
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/v1/t/ACME/p/relay/hello",
            Some(&alice),
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/v1/t/acme/p/relay/no-such-route",
            Some(&alice),
            404,
            "not_found",
        ),
        (
            "TRACE",
            "/api/v1/t/acme/p/relay/hello",
            Some(&alice),
            405,
            "method_not_allowed",
        ),
        ("GET", "/nowhere", None, 404, "not_found"),
    ];
    for (method, path, token, status, code) in cases {
        let r = s.call(method, path, token, None).await;
        assert_eq!(
            (r.status, r.code()),
            (status, code.to_string()),
            "{method} {path}: {}",
            r.text()
        );
        assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Operators administer; they do not use tenants' plugins.
    let (_, w) = create_user(&h, "system", "root", "operator").await;
    let restricted = activate(&s, None, "root", &w).await;
    let r = s
        .call(
            "GET",
            "/api/v1/t/acme/p/relay/hello",
            Some(&restricted),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A disabled plugin is gone at once.
    h.runtime().disable_plugin("acme", "relay").await.unwrap();
    let r = s
        .call("GET", "/api/v1/t/acme/p/relay/hello", Some(&alice), None)
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "plugin_not_enabled"));
    // A signed-out session is refused.
    let r = s
        .call("POST", "/api/v1/auth/logout", Some(&gina), None)
        .await;
    assert!(r.status < 300, "{}", r.text());
    let r = s
        .call("GET", "/api/v1/t/globex/p/relay/hello", Some(&gina), None)
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn n1_credentials_stay_with_the_host_and_plugins_cannot_set_cookies_or_hsts() {
    let (_h, s, alice, _) = default_setup().await;
    let headers = vec![
        ("authorization".to_string(), format!("Bearer {alice}")),
        ("cookie".to_string(), "sb_oidc=secret".to_string()),
        (
            "x-switchboard-guest-resource".to_string(),
            "forged".to_string(),
        ),
        ("x-custom".to_string(), "kept".to_string()),
    ];
    let r = request(
        s.addr,
        "GET",
        "/api/v1/t/acme/p/relay/headers",
        &headers,
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: Vec<(String, String)> = serde_json::from_slice(&r.body).unwrap();
    let get = |k: &str| seen.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(
        get("authorization"),
        None,
        "the session token never reaches a plugin"
    );
    assert_eq!(get("cookie"), None);
    assert_eq!(
        get("x-switchboard-guest-resource"),
        None,
        "host headers cannot be forged"
    );
    assert_eq!(get("x-custom").as_deref(), Some("kept"));
    assert_eq!(
        get("x-switchboard-source-address").as_deref(),
        Some("127.0.0.1")
    );
    let r = s
        .call("GET", "/api/v1/t/acme/p/relay/cookie", Some(&alice), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("set-cookie"), None);
    assert_eq!(r.header("x-plugin"), Some("yes"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("content-security-policy"),
        Some("sandbox"),
        "plugin content never runs with the shared origin"
    );
    assert_ne!(r.header("strict-transport-security"), Some("max-age=0"));
}

#[tokio::test]
async fn n1_guests_reach_only_the_plugin_that_invited_them_and_learn_their_scope() {
    let (h, s, alice, _) = default_setup().await;
    h.install(&manifest("directory"), &component("directory"))
        .await
        .unwrap();
    h.enable("acme", "directory").await.unwrap();
    let r = s
        .call(
            "POST",
            "/api/v1/t/acme/p/relay/guests?name=Gus&resource=meeting:7",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let guest = r.json().as_str().unwrap().to_string();
    let r = s
        .call("GET", "/api/v1/t/acme/p/relay/headers", Some(&guest), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: Vec<(String, String)> = serde_json::from_slice(&r.body).unwrap();
    assert!(seen.contains(&("x-switchboard-guest-resource".into(), "meeting:7".into())));
    assert!(seen.contains(&("x-switchboard-guest-name".into(), "Gus".into())));
    let r = s
        .call("GET", "/api/v1/t/acme/p/relay/hello", Some(&guest), None)
        .await;
    assert_eq!(r.json()["role"], "Role::Guest");
    let r = s
        .call(
            "GET",
            "/api/v1/t/acme/p/directory/whoami",
            Some(&guest),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "guest_scope"),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn k5_bodies_heads_and_slow_clients_are_bounded_and_others_keep_being_served() {
    let config = GatewayConfig {
        max_body_bytes: 1024,
        header_timeout_s: 1,
        body_timeout_s: 1,
        ..test_gateway()
    };
    let (_h, s, alice, _) = setup(config, Limits::default()).await;
    let auth = vec![("authorization".to_string(), format!("Bearer {alice}"))];
    // Oversized body.
    let r = request(
        s.addr,
        "POST",
        "/api/v1/t/acme/p/relay/kv/k",
        &auth,
        &[b'a'; 4096],
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (413, "body_too_large"));
    let r = request(
        s.addr,
        "POST",
        "/api/v1/t/acme/p/relay/kv/k",
        &auth,
        &[b'a'; 1000],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Oversized head.
    let huge = vec![("x-big".to_string(), "b".repeat(40_000))];
    let mut tls = tls_connect(s.addr).await;
    let mut head = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\n");
    for (k, v) in &huge {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = tls.write_all(head.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    // Slowloris: a head that never finishes is cut off.
    let mut tls = tls_connect(s.addr).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut buf)).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the server hung up on the slow head"
    );
    // A body that never finishes: 408.
    let mut tls = tls_connect(s.addr).await;
    let head = format!(
        "POST /api/v1/t/acme/p/relay/kv/slow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {alice}\r\ncontent-length: 500\r\n\r\nonly-a-little"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut raw = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let reply = switchboard_tests::http::parse_response(&raw[..n]);
    assert_eq!(reply.status, 408, "{}", reply.text());
    // Malformed HTTP: 400 and the connection closed.
    for garbage in [
        &b"NOT-HTTP\r\n\r\n"[..],
        b"GET /\xff\xfe HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ] {
        let mut tls = tls_connect(s.addr).await;
        tls.write_all(garbage).await.unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 505"),
            "{text}"
        );
    }
    // Everyone else is still served.
    let r = s
        .call("GET", "/api/v1/t/acme/p/relay/hello", Some(&alice), None)
        .await;
    assert_eq!(r.status, 200);
    // Nothing of the refused writes was stored.
    let r = s
        .call("GET", "/api/v1/t/acme/p/relay/hello", Some(&alice), None)
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn k5_rate_limits_answer_429_with_retry_after_per_address_and_per_tenant() {
    // Per tenant: acme may make 2 requests a second (bursts of 4); globex
    // is not slowed down by acme's flood.
    let limits = Limits {
        requests_per_second: 2,
        ..Limits::default()
    };
    let (_h, s, alice, gina) = setup(test_gateway(), limits).await;
    let mut limited = None;
    for i in 0..20 {
        let r = s
            .call("GET", "/api/v1/t/acme/p/relay/hello", Some(&alice), None)
            .await;
        if r.status == 429 {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (i, r) = limited.expect("acme was limited");
    assert!(
        (3..=6).contains(&i),
        "limited after the burst, at request {i}"
    );
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    for _ in 0..10 {
        let r = s
            .call("GET", "/api/v1/t/globex/p/relay/hello", Some(&gina), None)
            .await;
        assert_eq!(r.status, 200, "globex is unaffected: {}", r.text());
    }
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = s
        .call("GET", "/api/v1/t/acme/p/relay/hello", Some(&alice), None)
        .await;
    assert_eq!(r.status, 200, "after Retry-After acme is served again");
    // Per address.
    let config = GatewayConfig {
        per_address_rps: 1,
        per_address_burst: 5,
        ..test_gateway()
    };
    let h = Harness::new().unwrap();
    let s = Server::start_with(h.runtime().clone(), config).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(s.call("GET", "/status", None, None).await.status);
    }
    assert_eq!(&statuses[..5], &[200; 5]);
    assert!(statuses[5..].iter().all(|st| *st == 429), "{statuses:?}");
    // Health checks are never limited.
    assert_eq!(s.call("GET", "/healthz", None, None).await.status, 200);
    // /metrics is limited too: wait for a token.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let text = s.call("GET", "/metrics", None, None).await.text();
    assert!(
        text.contains("switchboard_rate_limited_total{limit=\"address\""),
        "{text}"
    );
}

#[tokio::test]
async fn n3_metrics_status_and_health_describe_the_server() {
    let (h, s, alice, _) = default_setup().await;
    for _ in 0..3 {
        s.call("GET", "/api/v1/t/acme/p/relay/hello", Some(&alice), None)
            .await;
    }
    let text = s.call("GET", "/metrics", None, None).await.text();
    for needle in [
        "switchboard_http_request_duration_seconds_bucket{route=\"plugin\"",
        "switchboard_http_requests_total{route=\"plugin\",status=\"2xx\"}",
        "switchboard_tenant_requests_total{tenant=\"acme\",plugin=\"relay\"}",
        "switchboard_websockets_active",
        "switchboard_auth_logins_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    let r = s.call("GET", "/healthz", None, None).await;
    assert_eq!(r.json()["status"], "ok");
    // Status: JSON on request, HTML otherwise; anonymous callers see
    // services only.
    let headers = vec![("accept".to_string(), "application/json".to_string())];
    let r = request(s.addr, "GET", "/status", &headers, b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["status"], "ok");
    let names: Vec<&str> = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"storage") && names.contains(&"events"),
        "{names:?}"
    );
    assert!(
        doc.get("plugins").is_none(),
        "anonymous callers do not see what runs"
    );
    let r = request(s.addr, "GET", "/status", &[], b"").await;
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(
        r.text().contains("<h1>Switchboard: ok</h1>"),
        "{}",
        r.text()
    );
    // A tenant admin sees their tenant's plugins.
    let (_, w) = create_user(&h, "acme", "boss", "tenant-admin").await;
    let boss = activate(&s, Some("acme"), "boss", &w).await;
    let mut headers = headers.clone();
    headers.push(("authorization".into(), format!("Bearer {boss}")));
    let doc = request(s.addr, "GET", "/status", &headers, b"")
        .await
        .json();
    assert_eq!(doc["tenant"], "acme");
    assert_eq!(doc["plugins"][0]["name"], "relay");
    assert_eq!(doc["plugins"][0]["state"], "enabled");
}

#[tokio::test]
async fn n1_the_plain_http_port_only_redirects_to_the_public_https_url() {
    let h = Harness::new().unwrap();
    h.runtime().set_public_url("https://uc.example.com");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(switchboard::server::redirect_loop(
        h.runtime().clone(),
        listener,
    ));
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /api/v1/t/acme/p/chat/x?y=1 HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let r = switchboard_tests::http::parse_response(&raw);
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://uc.example.com/api/v1/t/acme/p/chat/x?y=1"),
        "built from the public URL, never the Host header"
    );
}

#[tokio::test]
async fn n3_shutdown_drains_requests_in_flight() {
    let (_h, mut s, alice, _) = default_setup().await;
    let addr = s.addr;
    let token = alice.clone();
    let slow = tokio::spawn(async move {
        let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
        request(
            addr,
            "GET",
            "/api/v1/t/acme/p/relay/busy?ms=700",
            &headers,
            b"",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.stop();
    let r = slow.await.unwrap();
    assert_eq!(
        r.status,
        200,
        "the request in flight completed: {}",
        r.text()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn d1_serve_on_defaults_generates_a_certificate_prints_its_fingerprint_and_stops_on_sigterm()
{
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sb"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--sip-listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut fingerprint) = (None, None);
    while addr.is_none() || fingerprint.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("banner within 60 s")
            .unwrap()
            .expect("the server printed its banner");
        if let Some(rest) = line.strip_prefix("switchboard: serving on https://") {
            addr = rest
                .split_whitespace()
                .next()
                .map(|a| a.parse::<std::net::SocketAddr>().unwrap());
        }
        if line.contains("self-signed, generated now") {
            fingerprint = line.rsplit(' ').next().map(str::to_string);
        }
    }
    let (addr, fingerprint) = (addr.unwrap(), fingerprint.unwrap());
    assert!(dir.path().join("data/tls/key.pem").exists());
    // First run: no operator, so a one-time bootstrap secret is issued;
    // output that is not a terminal gets it in a 0600 file, named.
    let secret_file = dir.path().join("data/bootstrap.secret");
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("bootstrap notice within 60 s")
            .unwrap()
            .expect("the server named its bootstrap secret");
        if line.contains("bootstrap secret") {
            assert!(line.contains(&secret_file.display().to_string()), "{line}");
            break;
        }
    }
    let secret = std::fs::read_to_string(&secret_file)
        .unwrap()
        .trim()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let pinned = |method: &'static str, path: &'static str, body: String| {
        let fingerprint = fingerprint.clone();
        async move {
            let config = switchboard::gateway::tls::pinned_client(&fingerprint).unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(
                    rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                    tcp,
                )
                .await
                .unwrap();
            let head = format!(
                "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            tls.write_all(head.as_bytes()).await.unwrap();
            tls.write_all(body.as_bytes()).await.unwrap();
            let mut raw = Vec::new();
            let _ = tls.read_to_end(&mut raw).await;
            switchboard_tests::http::parse_response(&raw)
        }
    };
    assert_eq!(pinned("GET", "/healthz", String::new()).await.status, 200);
    let use_secret = |secret: &str| json!({"secret": secret, "username": "admin"}).to_string();
    let r = pinned("POST", "/api/v1/auth/bootstrap", use_secret("guessed")).await;
    assert_eq!((r.status, r.code().as_str()), (403, "bootstrap_refused"));
    let r = pinned("POST", "/api/v1/auth/bootstrap", use_secret(&secret)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let welcome = r.json()["welcome_password"].as_str().unwrap().to_string();
    assert!(!secret_file.exists(), "the used secret's file is gone");
    // Used once: refused the second time, with the same answer as a guess.
    let r = pinned("POST", "/api/v1/auth/bootstrap", use_secret(&secret)).await;
    assert_eq!((r.status, r.code().as_str()), (403, "bootstrap_refused"));
    // The first operator signs in, and must change the password first.
    let login = json!({"username": "admin", "password": welcome}).to_string();
    let r = pinned("POST", "/api/v1/auth/login", login).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_string();
    assert!(!token.is_empty());
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("stopped within 60 s")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Ok(Some(l)) = lines.next_line().await {
        rest.push(l);
    }
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    // Logs were one JSON object per line.
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    let first = logs.lines().next().expect("some log lines");
    let v: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(v["level"].is_string() && v["fields"].is_object(), "{first}");
    assert!(!logs.contains(&secret), "the secret is never logged");
    assert!(
        !rest.iter().any(|l| l.contains(&secret)),
        "never printed to a service's output"
    );
}

#[tokio::test]
async fn k5_one_address_cannot_hold_every_connection() {
    let config = GatewayConfig {
        max_connections_per_address: 3,
        ..test_gateway()
    };
    let h = Harness::new().unwrap();
    let s = Server::start_with(h.runtime().clone(), config).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connect(s.addr).await);
    }
    // The fourth is closed before its handshake completes.
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_for(
        &[&rustls::version::TLS13],
        &[b"http/1.1"],
    )));
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(
            rustls::pki_types::ServerName::IpAddress(s.addr.ip().into()),
            tcp,
        ),
    )
    .await
    .unwrap();
    assert!(
        refused.is_err(),
        "a fourth connection from the address is refused"
    );
    // Closing one frees its place.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.call("GET", "/healthz", None, None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = s.call("GET", "/metrics", None, None).await.text();
    assert!(
        !metrics.contains("switchboard_connections_refused_total 0"),
        "{metrics}"
    );
}
