//! The `http-client` capability through a real plugin and a real TLS
//! server on loopback: the manifest's allow-list, the operator's address
//! policy, the tenant's grant, forbidden headers, timeouts and size caps.

use std::collections::BTreeSet;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use switchboard::harness::Harness;
use switchboard_tests::accounts::{activate, create_user};
use switchboard_tests::http::{Server, serve_tls, test_pki};
use switchboard_tests::{component, manifest};

/// A TLS web service on 127.0.0.1 with the test certificate: `/echo`
/// answers what it got, `/big` 2 MiB, `/slow` after 5 s.
async fn web_service() -> u16 {
    let addr = serve_tls(|req: hyper::Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_string();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (host, custom) = (header("host"), header("x-k"));
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let out = match path.as_str() {
            "/big" => vec![b'z'; 2 << 20],
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                b"late".to_vec()
            }
            _ => format!(
                "host={host} x-k={custom} body={}",
                String::from_utf8_lossy(&body)
            )
            .into_bytes(),
        };
        let mut resp = hyper::Response::new(Full::new(Bytes::from(out)));
        resp.headers_mut()
            .insert("x-served-by", "test".parse().unwrap());
        resp
    })
    .await;
    addr.port()
}

async fn world(allow_loopback: bool) -> (Harness, Server, String) {
    let h = Harness::with_config(|c| {
        c.http_client.allow_loopback = allow_loopback;
        c.http_client.ca_file = Some(test_pki().ca_file.clone());
        c.http_client.max_response_bytes = 1 << 20;
    })
    .unwrap();
    h.install(&manifest("relay"), &component("relay"))
        .await
        .unwrap();
    h.tenant("acme").await.unwrap();
    h.enable("acme", "relay").await.unwrap();
    let s = Server::start(h.runtime().clone()).await;
    let (_, w) = create_user(&h, "acme", "alice", "user").await;
    let token = activate(&s, Some("acme"), "alice", &w).await;
    (h, s, token)
}

async fn fetch(s: &Server, token: &str, query: &str) -> switchboard_tests::http::Reply {
    s.call(
        "POST",
        &format!("/api/v1/t/acme/p/relay/fetch?{query}"),
        Some(token),
        None,
    )
    .await
}

#[tokio::test]
async fn n2_plugins_reach_the_hosts_their_manifest_allows_and_nothing_else() {
    let port = web_service().await;
    let (_h, s, alice) = world(true).await;
    let r = fetch(
        &s,
        &alice,
        &format!("url=https://localhost:{port}/echo&header=x-k:v1"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], format!("host=localhost:{port} x-k=v1 body="));
    assert!(
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-served-by")
    );
    // Not in the manifest: the same server by address, another port of an
    // allowed name, a look-alike name.
    for url in [
        format!("https://127.0.0.1:{port}/echo"),
        "https://api.example.com:444/".to_string(),
        "https://api.example.com.evil.test/".to_string(),
    ] {
        let r = fetch(&s, &alice, &format!("url={url}")).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (403, "denied"),
            "{url}: {}",
            r.text()
        );
    }
    // Framing headers are the host's.
    let r = fetch(
        &s,
        &alice,
        &format!("url=https://localhost:{port}/echo&header=host:evil"),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "invalid_argument"),
        "{}",
        r.text()
    );
    // Answers over the operator's cap, and servers that do not answer.
    let r = fetch(&s, &alice, &format!("url=https://localhost:{port}/big")).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (413, "too_large"),
        "{}",
        r.text()
    );
    let r = fetch(
        &s,
        &alice,
        &format!("url=https://localhost:{port}/slow&timeout_ms=300"),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (504, "timeout"),
        "{}",
        r.text()
    );
    // Plain http and other schemes.
    let r = fetch(&s, &alice, "url=ftp://localhost/x").await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn n2_loopback_needs_the_operator_and_private_ranges_stay_closed() {
    let port = web_service().await;
    let (_h, s, alice) = world(false).await;
    let r = fetch(&s, &alice, &format!("url=https://localhost:{port}/echo")).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "denied"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("allow_loopback"), "{}", r.text());
}

#[tokio::test]
async fn n2_a_tenant_that_does_not_grant_http_client_cannot_enable_a_plugin_that_needs_it() {
    let h = Harness::new().unwrap();
    h.install(&manifest("relay"), &component("relay"))
        .await
        .unwrap();
    h.tenant("acme").await.unwrap();
    let grants: BTreeSet<switchboard_signing::Capability> = [
        switchboard_signing::Capability::Kv,
        switchboard_signing::Capability::Events,
        switchboard_signing::Capability::Identity,
    ]
    .into();
    let err = h
        .runtime()
        .enable_plugin(
            "acme",
            "relay",
            &semver::Version::new(0, 1, 0),
            Some(grants),
            serde_json::Map::new(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("http-client"), "{err}");
}
